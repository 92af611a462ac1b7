//! The one place where the election and the plugin meet.
//!
//! The election core says who leads; the plugin runtime runs hooks. The
//! supervisor turns one into the other:
//!
//! | election event | what the job sees                                                     |
//! |----------------|-----------------------------------------------------------------------|
//! | `Elected`      | fresh instance, `on-elected(term)`, then `tick` every interval         |
//! | `Suspended`    | the running hook (if any) is stopped at once; no hook starts          |
//! | `Resumed`      | ticks continue on the same instance, same term                         |
//! | `Demoted`      | running hook stopped; `on-demoted(reason)` on a healthy instance; drop |
//!
//! A tick starts only when the election confirms leadership (recent proof),
//! and runs under a permit that lapses with that proof. Ticks never overlap.
//! A plugin failure ends the term on this host: `on-demoted(plugin-failed)`
//! on a fresh instance, resign, rejoin after a backoff.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::sleep_until;
use tracing::{error, info, warn};

use crate::clock::monotonic_ns;
use crate::election::timing::Backoff;
use crate::election::{self, Election, LeadershipEvent, Term};
use crate::plugin::{self, Facts, Hook, HookFailure, Instance, Interrupter, Permit, Plugin, Runtime};
use crate::state::StateStore;
use crate::state::zookeeper::FencedStore;

/// What the process asks of the supervisor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    /// SIGTERM or SIGINT: hand over and exit.
    Shutdown,
    /// SIGHUP: reload the plugin from disk.
    Reload,
}

/// How the supervisor runs the job.
#[derive(Clone, Debug)]
pub struct JobSettings {
    /// Interval between ticks.
    pub tick: Duration,
    /// This participant's id.
    pub participant: String,
    /// The election path.
    pub election: String,
    /// Where the plugin is loaded from (again, on SIGHUP).
    pub plugin_path: PathBuf,
    /// Give up if no session is established this long after start.
    pub connect_timeout: Option<Duration>,
}

/// Why the supervisor stopped.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Shut down on request, after handing over.
    ShutDown,
    /// No ZooKeeper session within the connect timeout.
    Unreachable,
}

/// Where the job stands on this host.
#[allow(clippy::large_enum_variant, reason = "one per process")]
enum Job {
    /// Not leading: no instance exists.
    Idle,
    /// Leading a term.
    Leading(Lead),
}

struct Lead {
    term: Term,
    facts: Facts,
    /// The term's fenced state (writes fail once the term is over).
    state: Option<Arc<dyn StateStore>>,
    /// The term's instance; `None` while a hook holds it, or after a hook
    /// was cut off by a suspension.
    instance: Option<Instance>,
    suspended: bool,
    next_tick: Instant,
}

/// A hook running in its own task, so the supervisor stays responsive.
struct Running {
    hook: Hook,
    started: Instant,
    interrupter: Arc<Mutex<Option<Interrupter>>>,
    task: JoinHandle<(Option<Instance>, Result<(), HookFailure>)>,
}

impl Running {
    fn interrupt(&self) {
        if let Some(interrupter) = &*self.interrupter.lock().unwrap() {
            interrupter.interrupt();
        }
    }
}

enum Wake {
    Signal(Option<Signal>),
    Event(Option<LeadershipEvent>),
    HookDone(Hook, Instant, Option<Instance>, Result<(), HookFailure>),
    Tick,
    ConnectTimeout,
}

/// Drives the job from leadership events.
pub struct Supervisor {
    election: Election,
    events: mpsc::UnboundedReceiver<LeadershipEvent>,
    runtime: Arc<Runtime>,
    plugin: Plugin,
    settings: JobSettings,
    job: Job,
    running: Option<Running>,
    reload_pending: bool,
    joined: bool,
    failures: Backoff,
    started: Instant,
}

impl Supervisor {
    /// Wires a started election to a loaded plugin.
    pub fn new(
        election: Election,
        events: mpsc::UnboundedReceiver<LeadershipEvent>,
        runtime: Arc<Runtime>,
        plugin: Plugin,
        settings: JobSettings,
    ) -> Supervisor {
        Supervisor {
            election,
            events,
            runtime,
            plugin,
            settings,
            job: Job::Idle,
            running: None,
            reload_pending: false,
            joined: false,
            failures: Backoff::new(Duration::from_secs(1), Duration::from_secs(60)),
            started: Instant::now(),
        }
    }

    /// Runs until shut down.
    pub async fn run(mut self, mut signals: mpsc::UnboundedReceiver<Signal>) -> Outcome {
        loop {
            let tick_at = match &self.job {
                Job::Leading(lead)
                    if !lead.suspended && lead.instance.is_some() && self.running.is_none() =>
                {
                    Some(lead.next_tick)
                }
                _ => None,
            };
            let connect_by =
                (!self.joined).then(|| self.settings.connect_timeout.map(|t| self.started + t)).flatten();
            let wake = tokio::select! {
                biased;
                signal = signals.recv() => Wake::Signal(signal),
                event = self.events.recv() => Wake::Event(event),
                (hook, started, instance, result) = finished(&mut self.running) => Wake::HookDone(hook, started, instance, result),
                _ = sleep_until(tick_at.unwrap_or_else(Instant::now).into()), if tick_at.is_some() => Wake::Tick,
                _ = sleep_until(connect_by.unwrap_or_else(Instant::now).into()), if connect_by.is_some() => Wake::ConnectTimeout,
            };
            match wake {
                Wake::Signal(None | Some(Signal::Shutdown)) => {
                    self.shutdown().await;
                    return Outcome::ShutDown;
                }
                Wake::Signal(Some(Signal::Reload)) => self.reload().await,
                Wake::Event(Some(event)) => self.on_event(event).await,
                Wake::Event(None) => {
                    error!(event = "election_stopped", "the election task ended unexpectedly");
                    self.shutdown().await;
                    return Outcome::ShutDown;
                }
                Wake::HookDone(hook, started, instance, result) => {
                    self.running = None;
                    self.on_hook_done(hook, started, instance, result).await;
                }
                Wake::Tick => self.start_tick(),
                Wake::ConnectTimeout => {
                    error!(
                        event = "zk_unreachable",
                        timeout_ms = self.settings.connect_timeout.map(|t| t.as_millis() as u64),
                        "giving up: no ZooKeeper session within the connect timeout"
                    );
                    self.election.shutdown().await;
                    return Outcome::Unreachable;
                }
            }
        }
    }

    async fn on_event(&mut self, event: LeadershipEvent) {
        let id = self.settings.participant.as_str();
        let mono_ns = monotonic_ns();
        match event {
            LeadershipEvent::Joined { node, sequence, session } => {
                self.joined = true;
                info!(
                    event = "joined",
                    id,
                    node,
                    sequence,
                    session = format_args!("{session:#x}"),
                    mono_ns,
                    "joined the election"
                );
            }
            LeadershipEvent::Elected { term } => {
                info!(event = "elected", id, term = term.0, mono_ns, "elected leader");
                self.stop_term(plugin::DemoteReason::ConnectionLost).await;
                self.begin_term(term);
            }
            LeadershipEvent::Suspended { term } => {
                info!(event = "suspended", id, term = term.0, mono_ns, "leadership in doubt: job paused");
                if let Job::Leading(lead) = &mut self.job {
                    lead.suspended = true;
                }
                // The permit already refuses; this makes the stop immediate.
                if let Some(running) = &self.running {
                    running.interrupt();
                }
            }
            LeadershipEvent::Resumed { term } => {
                info!(
                    event = "resumed",
                    id,
                    term = term.0,
                    mono_ns,
                    "leadership confirmed again: job continues"
                );
                let replace = match &mut self.job {
                    Job::Leading(lead) => {
                        lead.suspended = false;
                        lead.next_tick = Instant::now();
                        lead.instance.is_none() && self.running.is_none()
                    }
                    Job::Idle => false,
                };
                if replace {
                    self.replace_instance(term).await;
                }
            }
            LeadershipEvent::Demoted { term, reason } => {
                info!(
                    event = "demoted",
                    id,
                    term = term.0,
                    reason = reason.as_str(),
                    mono_ns,
                    "no longer leader"
                );
                self.stop_term(job_reason(reason)).await;
            }
        }
    }

    /// Starts a term: a fresh instance and `on-elected`, in a hook task.
    fn begin_term(&mut self, term: Term) {
        let facts = Facts {
            term: term.0,
            participant: self.settings.participant.clone(),
            election: self.settings.election.clone(),
        };
        let state = self.term_state(term);
        self.job = Job::Leading(Lead {
            term,
            facts: facts.clone(),
            state: state.clone(),
            instance: None,
            suspended: false,
            next_tick: Instant::now(),
        });
        let runtime = self.runtime.clone();
        let plugin = self.plugin.clone();
        let permit = permit(self.election.clone(), term);
        let interrupter = Arc::new(Mutex::new(None));
        let slot = interrupter.clone();
        let task = tokio::spawn(async move {
            let mut instance = match runtime.instantiate(&plugin, Some(term.0), state).await {
                Ok(instance) => instance,
                Err(failure) => return (None, Err(failure)),
            };
            *slot.lock().unwrap() = Some(instance.interrupter());
            let result = instance.on_elected(&facts, permit).await;
            (Some(instance), result)
        });
        self.running = Some(Running { hook: Hook::OnElected, started: Instant::now(), interrupter, task });
    }

    /// The fenced state of `term`, while the election holds its fence.
    fn term_state(&self, term: Term) -> Option<Arc<dyn StateStore>> {
        let fence = self.election.fence().filter(|fence| fence.term == term)?;
        Some(Arc::new(FencedStore::new(fence, &self.settings.election)))
    }

    /// A hook was cut off while leadership was in doubt, so the term's
    /// instance is gone: close it out on a fresh instance and go on with
    /// another one, same term.
    async fn replace_instance(&mut self, term: Term) {
        let state = match &self.job {
            Job::Leading(lead) => lead.state.clone(),
            Job::Idle => None,
        };
        self.deliver_demoted(None, term, state, plugin::DemoteReason::ConnectionLost).await;
        info!(
            event = "instance_replaced",
            id = self.settings.participant,
            term = term.0,
            "a hook was cut off while leadership was in doubt; the term continues on a fresh instance"
        );
        self.begin_term(term);
    }

    /// Starts a tick if leadership is confirmed right now.
    fn start_tick(&mut self) {
        let election = self.election.clone();
        let Job::Leading(lead) = &mut self.job else { return };
        if self.election.confirmed().is_none_or(|lease| lease.term != lead.term) {
            // Proof is stale; a Suspended or Demoted event is on its way.
            lead.next_tick = Instant::now() + Duration::from_millis(10);
            return;
        }
        let Some(mut instance) = lead.instance.take() else { return };
        let facts = lead.facts.clone();
        let permit = permit(election, lead.term);
        let interrupter = Arc::new(Mutex::new(Some(instance.interrupter())));
        let task = tokio::spawn(async move {
            let result = instance.tick(&facts, permit).await;
            (Some(instance), result)
        });
        self.running = Some(Running { hook: Hook::Tick, started: Instant::now(), interrupter, task });
    }

    async fn on_hook_done(
        &mut self,
        hook: Hook,
        started: Instant,
        instance: Option<Instance>,
        result: Result<(), HookFailure>,
    ) {
        let Job::Leading(lead) = &mut self.job else {
            return;
        };
        match result {
            Ok(()) => {
                let mut instance = instance.expect("a hook that succeeded returns its instance");
                if hook == Hook::Tick {
                    self.failures.reset();
                }
                // The first tick follows on-elected at once; a slow tick
                // delays the next one, it never piles up.
                lead.next_tick = match hook {
                    Hook::Tick => (started + self.settings.tick).max(Instant::now()),
                    _ => Instant::now(),
                };
                if let Some(reason) = instance.take_resignation() {
                    let (term, state) = (lead.term, lead.state.clone());
                    info!(
                        event = "resigning",
                        id = self.settings.participant,
                        term = term.0,
                        reason,
                        "the plugin asked to give up leadership"
                    );
                    self.job = Job::Idle;
                    self.deliver_demoted(Some(instance), term, state, plugin::DemoteReason::Resigned).await;
                    self.election.resign(Duration::ZERO).await;
                    return;
                }
                lead.instance = Some(instance);
                if self.reload_pending {
                    self.reload().await;
                }
            }
            Err(failure) if failure.is_plugin_fault() => {
                let (term, state) = (lead.term, lead.state.clone());
                self.job = Job::Idle;
                self.plugin_failed(term, state, failure).await;
            }
            Err(failure) => {
                // Stopped by the host because leadership went into doubt.
                // (Demotion collects its hook itself.) The instance is gone:
                // if leadership is already confirmed again, the term goes on
                // with a fresh one now, otherwise `Resumed` does that.
                let term = lead.term;
                info!(event = "hook_stopped", id = self.settings.participant, term = term.0, hook = %hook, error = %failure, "hook stopped");
                lead.instance = instance.filter(Instance::is_healthy);
                let confirmed = self.election.confirmed().is_some_and(|lease| lease.term == term);
                if lead.instance.is_none() && !lead.suspended && confirmed {
                    self.replace_instance(term).await;
                }
            }
        }
    }

    /// Ends the current term, if any: stops a running hook, then delivers
    /// `on-demoted` on a healthy instance.
    async fn stop_term(&mut self, reason: plugin::DemoteReason) {
        let Job::Leading(lead) = std::mem::replace(&mut self.job, Job::Idle) else {
            return;
        };
        let mut instance = lead.instance;
        if let Some(running) = self.running.take() {
            running.interrupt();
            if let Ok((returned, _)) = running.task.await {
                instance = returned;
            }
        }
        self.deliver_demoted(instance, lead.term, lead.state, reason).await;
    }

    /// Calls `on-demoted` on `instance` if it is healthy, else on a fresh one
    /// (with the term's state: readable, but no longer writable).
    async fn deliver_demoted(
        &self,
        instance: Option<Instance>,
        term: Term,
        state: Option<Arc<dyn StateStore>>,
        reason: plugin::DemoteReason,
    ) {
        let mut instance = match instance.filter(Instance::is_healthy) {
            Some(instance) => instance,
            None => match self.runtime.instantiate(&self.plugin, Some(term.0), state).await {
                Ok(instance) => instance,
                Err(failure) => {
                    warn!(event = "plugin_failed", id = self.settings.participant, term = term.0, hook = "on-demoted", kind = failure.kind(), error = %failure, "could not deliver on-demoted");
                    return;
                }
            },
        };
        if let Err(failure) = instance.on_demoted(reason).await {
            warn!(event = "plugin_failed", id = self.settings.participant, term = term.0, hook = "on-demoted", kind = failure.kind(), error = %failure, "on-demoted failed");
        }
    }

    /// A broken job must not pin the lead to this host.
    async fn plugin_failed(&mut self, term: Term, state: Option<Arc<dyn StateStore>>, failure: HookFailure) {
        let rejoin_after = self.failures.next_delay().max(Duration::from_millis(500));
        error!(
            event = "plugin_failed",
            id = self.settings.participant,
            term = term.0,
            hook = failure.hook().map(|h| h.to_string()),
            kind = failure.kind(),
            error = %failure,
            rejoin_in_ms = rejoin_after.as_millis() as u64,
            mono_ns = monotonic_ns(),
            "plugin failed; resigning so another host can lead"
        );
        self.deliver_demoted(None, term, state, plugin::DemoteReason::PluginFailed).await;
        self.election.resign(rejoin_after).await;
    }

    /// SIGHUP: swap in the plugin from disk, keeping leadership.
    async fn reload(&mut self) {
        if self.running.is_some() {
            // Let the running hook finish first; then reload.
            self.reload_pending = true;
            return;
        }
        self.reload_pending = false;
        let path = self.settings.plugin_path.clone();
        let runtime = self.runtime.clone();
        let loaded = tokio::task::spawn_blocking(move || runtime.load(&path)).await;
        let plugin = match loaded {
            Ok(Ok(plugin)) => plugin,
            Ok(Err(error)) => {
                error!(event = "reload_rejected", id = self.settings.participant, error = %error, "reload rejected; the old plugin keeps running");
                return;
            }
            Err(join) => {
                error!(event = "reload_rejected", id = self.settings.participant, error = %join, "reload rejected; the old plugin keeps running");
                return;
            }
        };
        // The old version hears on-demoted(reloading) before the swap.
        let term = match std::mem::replace(&mut self.job, Job::Idle) {
            Job::Leading(lead) => {
                self.deliver_demoted(lead.instance, lead.term, lead.state, plugin::DemoteReason::Reloading)
                    .await;
                Some(lead.term)
            }
            Job::Idle => None,
        };
        let old = std::mem::replace(&mut self.plugin, plugin);
        info!(
            event = "reloaded",
            id = self.settings.participant,
            term = term.map(|t| t.0),
            plugin = self.plugin.name(),
            previous = old.name(),
            path = %self.plugin.path().display(),
            mono_ns = monotonic_ns(),
            "plugin reloaded"
        );
        if let Some(term) = term {
            if self.election.confirmed().is_some_and(|lease| lease.term == term) {
                self.begin_term(term);
            } else {
                // Leadership went into doubt meanwhile; Resumed restarts it.
                self.job = Job::Leading(Lead {
                    term,
                    facts: Facts {
                        term: term.0,
                        participant: self.settings.participant.clone(),
                        election: self.settings.election.clone(),
                    },
                    state: self.term_state(term),
                    instance: None,
                    suspended: true,
                    next_tick: Instant::now(),
                });
            }
        }
    }

    /// SIGTERM: stop the job, hand over, close the session.
    async fn shutdown(&mut self) {
        info!(event = "shutdown", id = self.settings.participant, mono_ns = monotonic_ns(), "shutting down");
        self.stop_term(plugin::DemoteReason::Shutdown).await;
        self.election.shutdown().await;
        info!(
            event = "stopped",
            id = self.settings.participant,
            mono_ns = monotonic_ns(),
            "left the election and closed the session"
        );
    }
}

/// The permit of a leader hook: valid while the election confirms `term`.
fn permit(election: Election, term: Term) -> Arc<dyn Permit> {
    Arc::new(move || election.confirmed().is_some_and(|lease| lease.term == term))
}

/// Resolves when the running hook's task finishes; never if none runs.
async fn finished(
    running: &mut Option<Running>,
) -> (Hook, Instant, Option<Instance>, Result<(), HookFailure>) {
    match running {
        None => std::future::pending().await,
        Some(running) => {
            let (hook, started) = (running.hook, running.started);
            match (&mut running.task).await {
                Ok((instance, result)) => (hook, started, instance, result),
                Err(join) => (
                    hook,
                    started,
                    None,
                    Err(HookFailure::Trapped { hook, message: format!("hook task failed: {join}") }),
                ),
            }
        }
    }
}

fn job_reason(reason: election::DemoteReason) -> plugin::DemoteReason {
    match reason {
        election::DemoteReason::Shutdown => plugin::DemoteReason::Shutdown,
        election::DemoteReason::Resigned => plugin::DemoteReason::Resigned,
        election::DemoteReason::ConnectionLost => plugin::DemoteReason::ConnectionLost,
        election::DemoteReason::SessionExpired => plugin::DemoteReason::SessionExpired,
        election::DemoteReason::NodeDeleted => plugin::DemoteReason::NodeDeleted,
    }
}
