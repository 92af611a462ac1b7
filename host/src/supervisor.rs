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
//!
//! The loop never waits on the guest unboundedly: hooks run in their own
//! task and are stopped through their interrupter; the only hook it awaits
//! is `on-demoted`, within one hook timeout; reloads compile on another
//! thread while the old plugin keeps ticking.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::sleep_until;
use tracing::{error, info, warn};

use crate::clock::monotonic_ns;
use crate::election::timing::Backoff;
use crate::election::{self, Election, LeadershipEvent, Term};
use crate::metrics::{CountedStore, Metrics};
use crate::notify::Notifier;
use crate::plugin::{
    self, Facts, Hook, HookFailure, Instance, Interrupter, LoadError, Permit, Plugin, Runtime,
};
use crate::slots::SlotRunner;
use crate::state::zookeeper::FencedStore;
use crate::state::{StateQuota, StateStore, WriteRate};

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
    /// Limits on the election's fenced state.
    pub state_quota: StateQuota,
    /// Run the job on this schedule's slots instead of every tick.
    pub schedule: Option<crate::schedule::Schedule>,
    /// With `--plugin published`: reverts a published version that fails here.
    pub rollout: Option<Arc<crate::rollout::follow::Guard>>,
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
    /// When this term began on this host (a reload or a replaced instance
    /// keeps it): only a term that ran well for [`HEALTHY_TERM`] clears the
    /// backoff.
    since: Instant,
}

/// How long a term must run, ticking without failing or resigning, before
/// the rejoin backoff starts over: a plugin that resigns or fails early in
/// every term keeps backing off, whatever it did in between.
const HEALTHY_TERM: Duration = Duration::from_secs(30);
/// The first ceiling of the rejoin backoff after a failure or a resign.
const FIRST_REJOIN: Duration = Duration::from_secs(1);
/// The last ceiling of the rejoin backoff.
const MAX_REJOIN: Duration = Duration::from_secs(60);

/// A hook running in its own task, so the supervisor stays responsive.
struct Running {
    hook: Hook,
    started: Instant,
    /// Stops the hook (or the instantiation before it) wherever the guest is.
    interrupter: Interrupter,
    task: JoinHandle<(Option<Instance>, Result<(), HookFailure>)>,
}

/// What a reload compiled in the background, when it is done.
type Loading = oneshot::Receiver<Result<Plugin, LoadError>>;

enum Wake {
    Signal(Option<Signal>),
    Event(Option<LeadershipEvent>),
    HookDone(Hook, Instant, Option<Instance>, Result<(), HookFailure>),
    Loaded(Result<Plugin, LoadError>),
    Tick,
    ConnectTimeout,
    /// The loop's pulse, for health checks and systemd's watchdog.
    Beat,
}

/// How often the loop goes round when nothing else happens.
const BEAT: Duration = Duration::from_secs(1);

/// Drives the job from leadership events.
pub struct Supervisor {
    election: Election,
    events: mpsc::UnboundedReceiver<LeadershipEvent>,
    runtime: Arc<Runtime>,
    plugin: Plugin,
    settings: JobSettings,
    job: Job,
    running: Option<Running>,
    /// A reload compiling in the background.
    loading: Option<Loading>,
    /// Another SIGHUP came while compiling: load again when done.
    reload_again: bool,
    /// A compiled plugin waiting for the running hook to finish.
    reload_pending: Option<Plugin>,
    joined: bool,
    failures: Backoff,
    started: Instant,
    metrics: Arc<Metrics>,
    notifier: Notifier,
    /// The election's state write rates: one for the life of the process,
    /// so no resign, reload or failover refills them.
    state_rate: WriteRate,
    /// In schedule mode: runs slots in place of ticks.
    slots: Option<SlotRunner>,
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
        // The loop may legitimately wait on the guest for a hook timeout
        // twice in a row (an interrupted hook, then on-demoted).
        let metrics = Metrics::new(runtime.config().hook_timeout * 2 + Duration::from_secs(10));
        metrics.plugin_loaded(plugin.name(), plugin.sha256());
        let settings_quota = settings.state_quota;
        let slots = settings.schedule.clone().map(|schedule| {
            SlotRunner::new(
                schedule,
                settings.participant.clone(),
                settings.election.clone(),
                metrics.clone(),
            )
        });
        Supervisor {
            election,
            events,
            runtime,
            plugin,
            settings,
            job: Job::Idle,
            running: None,
            loading: None,
            reload_again: false,
            reload_pending: None,
            joined: false,
            failures: Backoff::new(FIRST_REJOIN, MAX_REJOIN),
            started: Instant::now(),
            metrics,
            notifier: Notifier::from_env(),
            state_rate: WriteRate::new(settings_quota),
            slots,
        }
    }

    /// What this supervisor reports to Prometheus.
    pub fn metrics(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }

    /// Runs until shut down.
    pub async fn run(mut self, mut signals: mpsc::UnboundedReceiver<Signal>) -> Outcome {
        let mut beat = tokio::time::interval(BEAT);
        beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
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
                loaded = compiled(&mut self.loading) => Wake::Loaded(loaded),
                _ = sleep_until(tick_at.unwrap_or_else(Instant::now).into()), if tick_at.is_some() => Wake::Tick,
                _ = sleep_until(connect_by.unwrap_or_else(Instant::now).into()), if connect_by.is_some() => Wake::ConnectTimeout,
                _ = beat.tick() => Wake::Beat,
            };
            match wake {
                Wake::Signal(None | Some(Signal::Shutdown)) => {
                    self.shutdown().await;
                    return Outcome::ShutDown;
                }
                Wake::Signal(Some(Signal::Reload)) => self.start_reload(),
                Wake::Loaded(loaded) => {
                    self.loading = None;
                    self.on_loaded(loaded).await;
                    if std::mem::take(&mut self.reload_again) {
                        self.start_reload();
                    }
                }
                Wake::Event(Some(event)) => self.on_event(event).await,
                Wake::Event(None) => {
                    error!(event = "election_stopped", "the election task ended unexpectedly");
                    self.shutdown().await;
                    return Outcome::ShutDown;
                }
                Wake::HookDone(hook, started, instance, result) => {
                    self.running = None;
                    self.on_hook_done(hook, started, instance, result).await;
                    // A reload that waited for this hook goes in now,
                    // whatever the hook's outcome (it may be the fix).
                    if self.running.is_none()
                        && let Some(plugin) = self.reload_pending.take()
                    {
                        self.swap_plugin(plugin).await;
                    }
                }
                Wake::Tick => self.start_tick(),
                Wake::Beat => {
                    self.metrics.beat();
                    self.notifier.alive();
                    self.notifier.state(&self.election.state());
                }
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
        self.metrics.leadership(&event);
        self.act_on(event).await;
        if self.joined {
            self.notifier.ready();
        }
        self.notifier.state(&self.election.state());
    }

    async fn act_on(&mut self, event: LeadershipEvent) {
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
                info!(
                    event = "elected",
                    id,
                    term = term.0,
                    plugin = self.plugin.name(),
                    sha256 = self.plugin.sha256(),
                    mono_ns,
                    "elected leader"
                );
                self.stop_term(plugin::DemoteReason::ConnectionLost).await;
                self.begin_term(term);
            }
            LeadershipEvent::Suspended { term } => {
                info!(event = "suspended", id, term = term.0, mono_ns, "leadership in doubt: job paused");
                if let Job::Leading(lead) = &mut self.job {
                    lead.suspended = true;
                }
                // The permit already refuses; this makes the stop immediate,
                // even for a guest waiting inside a host call.
                if let Some(running) = &self.running {
                    running.interrupter.interrupt();
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
                        if let Some(slots) = &self.slots {
                            slots.look_now();
                        }
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
        let since = match &self.job {
            Job::Leading(lead) if lead.term == term => lead.since,
            _ => Instant::now(),
        };
        if let Some(slots) = &mut self.slots {
            slots.begin_term();
        }
        self.job = Job::Leading(Lead {
            term,
            facts: facts.clone(),
            state: state.clone(),
            instance: None,
            suspended: false,
            next_tick: Instant::now(),
            since,
        });
        let runtime = self.runtime.clone();
        let plugin = self.plugin.clone();
        let permit = permit(self.election.clone(), term);
        // Made before the instance, so that a suspension during its start
        // code stops that too.
        let interrupter = Interrupter::new();
        let handle = interrupter.clone();
        let task = tokio::spawn(async move {
            let created = runtime.instantiate_for(&plugin, Some(term.0), state, Some(permit.clone()), handle);
            let mut instance = match created.await {
                Ok(instance) => instance,
                Err(failure) => return (None, Err(failure)),
            };
            let result = instance.on_elected(&facts, permit).await;
            (Some(instance), result)
        });
        self.running = Some(Running { hook: Hook::OnElected, started: Instant::now(), interrupter, task });
    }

    /// The fenced state of `term`, while the election holds its fence.
    fn term_state(&self, term: Term) -> Option<Arc<dyn StateStore>> {
        let fence = self.election.fence().filter(|fence| fence.term == term)?;
        let store = FencedStore::with_rate(
            fence,
            &self.settings.election,
            self.settings.state_quota,
            self.state_rate.clone(),
        );
        Some(CountedStore::wrap(Arc::new(store), self.metrics.clone()))
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
        if let Some(slots) = &self.slots {
            // Schedule mode: a slot instead of a tick, when one may be due.
            let fence = self.election.fence().filter(|fence| fence.term == lead.term);
            if !slots.due() || fence.is_none() {
                lead.next_tick = slots.next_wake();
                return;
            }
            let Some(instance) = lead.instance.take() else { return };
            let interrupter = instance.interrupter();
            let run =
                slots.run(instance, lead.facts.clone(), permit(election, lead.term), fence.expect("checked"));
            let task = tokio::spawn(run);
            self.running = Some(Running { hook: Hook::Tick, started: Instant::now(), interrupter, task });
            return;
        }
        let Some(mut instance) = lead.instance.take() else { return };
        let facts = lead.facts.clone();
        let permit = permit(election, lead.term);
        let interrupter = instance.interrupter();
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
        self.metrics.hook_finished(hook, started.elapsed());
        let Job::Leading(lead) = &mut self.job else {
            return;
        };
        match result {
            Ok(()) => {
                let mut instance = instance.expect("a hook that succeeded returns its instance");
                let resignation = instance.take_resignation();
                if hook == Hook::Tick && resignation.is_none() && lead.since.elapsed() >= HEALTHY_TERM {
                    self.failures.reset();
                }
                // The first tick follows on-elected at once; a slow tick
                // delays the next one, it never piles up.
                lead.next_tick = match (hook, &self.slots) {
                    (Hook::Tick, Some(slots)) => slots.next_wake(),
                    (Hook::Tick, None) => (started + self.settings.tick).max(Instant::now()),
                    _ => Instant::now(),
                };
                if let Some(reason) = resignation {
                    let (term, state) = (lead.term, lead.state.clone());
                    // Resigns back off like failures: a plugin that resigns
                    // in every term cannot make terms (and their ZooKeeper
                    // writes) as fast as the ensemble can elect.
                    let rejoin_after = self.rejoin_delay();
                    info!(
                        event = "resigning",
                        id = self.settings.participant,
                        term = term.0,
                        reason,
                        rejoin_in_ms = rejoin_after.as_millis() as u64,
                        "the plugin asked to give up leadership"
                    );
                    self.job = Job::Idle;
                    self.deliver_demoted(Some(instance), term, state, plugin::DemoteReason::Resigned).await;
                    self.election.resign(rejoin_after).await;
                    return;
                }
                lead.instance = Some(instance);
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
            running.interrupter.interrupt();
            // An interrupted hook ends within a watchdog tick wherever the
            // guest is; the bound is for a host bug, not for the guest.
            let mut task = running.task;
            match tokio::time::timeout(self.runtime.config().hook_timeout, &mut task).await {
                Ok(Ok((returned, _))) => instance = returned,
                Ok(Err(_)) => {}
                Err(_) => {
                    task.abort();
                    warn!(event = "hook_abandoned", id = self.settings.participant, term = lead.term.0, hook = %running.hook, "an interrupted hook did not stop; its task was aborted");
                }
            }
        }
        self.deliver_demoted(instance, lead.term, lead.state, reason).await;
    }

    /// Calls `on-demoted` on `instance` if it is healthy, else on a fresh one
    /// (with the term's state: readable, but no longer writable). Creating
    /// the instance and the hook together take at most one hook timeout.
    async fn deliver_demoted(
        &self,
        instance: Option<Instance>,
        term: Term,
        state: Option<Arc<dyn StateStore>>,
        reason: plugin::DemoteReason,
    ) {
        let limit = self.runtime.config().hook_timeout;
        let delivery = async {
            let mut instance = match instance.filter(Instance::is_healthy) {
                Some(instance) => instance,
                None => self.runtime.instantiate(&self.plugin, Some(term.0), state).await?,
            };
            instance.on_demoted(reason).await
        };
        let started = Instant::now();
        let delivered = tokio::time::timeout(limit, delivery).await;
        self.metrics.hook_finished(Hook::OnDemoted, started.elapsed());
        let failure = match delivered {
            Ok(Ok(())) => return,
            Ok(Err(failure)) => failure,
            Err(_) => HookFailure::TimedOut { hook: Hook::OnDemoted, stop: plugin::Stop::TimedOut(limit) },
        };
        self.metrics.plugin_failed(failure.kind());
        warn!(event = "plugin_failed", id = self.settings.participant, term = term.0, hook = "on-demoted", kind = failure.kind(), error = %failure, "on-demoted failed");
    }

    /// A broken job must not pin the lead to this host.
    async fn plugin_failed(&mut self, term: Term, state: Option<Arc<dyn StateStore>>, failure: HookFailure) {
        let rejoin_after = self.rejoin_delay();
        self.metrics.plugin_failed(failure.kind());
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
        // A published version that fails on the leader goes back to the
        // previous one while this host still holds the fence to say so.
        if let Some(guard) = &self.settings.rollout {
            let fence = self.election.fence().filter(|fence| fence.term == term);
            let why = failure.to_string();
            if guard.plugin_failed(fence, term, self.plugin.sha256(), &why).await.is_some() {
                self.metrics.rollout_reverted();
            }
        }
        self.deliver_demoted(None, term, state, plugin::DemoteReason::PluginFailed).await;
        self.election.resign(rejoin_after).await;
    }

    /// How long to stay out of the election after a failure or a resign:
    /// the backoff's jittered delay, but never less than half its ceiling,
    /// so that jitter cannot let churn through (at most 7 terms in the
    /// first minute of churn, then 2 a minute).
    fn rejoin_delay(&mut self) -> Duration {
        let ceiling = FIRST_REJOIN.saturating_mul(1 << self.failures.attempts().min(16)).min(MAX_REJOIN);
        self.failures.next_delay().max(ceiling / 2)
    }

    /// SIGHUP: compile the plugin from disk on another thread; the running
    /// job keeps ticking meanwhile, and signals are served at once.
    fn start_reload(&mut self) {
        if self.loading.is_some() {
            self.reload_again = true;
            return;
        }
        let path = self.settings.plugin_path.clone();
        let runtime = self.runtime.clone();
        let (done, loading) = oneshot::channel();
        info!(event = "reloading", id = self.settings.participant, path = %path.display(), mono_ns = monotonic_ns(), "compiling the plugin from disk; the running one carries on");
        // A plain thread, not the blocking pool: shutdown must not wait for
        // a compile (the compiler child dies with this process).
        let spawned = std::thread::Builder::new().name("zkrun-compile".into()).spawn(move || {
            let _ = done.send(runtime.load(&path));
        });
        match spawned {
            Ok(_) => self.loading = Some(loading),
            Err(e) => {
                error!(event = "reload_rejected", id = self.settings.participant, error = %e, "reload rejected: cannot start the compile thread; the old plugin keeps running")
            }
        }
    }

    /// A reload finished compiling: swap it in, or reject it.
    async fn on_loaded(&mut self, loaded: Result<Plugin, LoadError>) {
        let plugin = match loaded {
            Ok(plugin) => plugin,
            Err(error) => {
                error!(event = "reload_rejected", id = self.settings.participant, error = %error, "reload rejected; the old plugin keeps running");
                return;
            }
        };
        if self.running.is_some() {
            // Let the running hook finish first; then swap.
            self.reload_pending = Some(plugin);
            return;
        }
        self.swap_plugin(plugin).await;
    }

    /// Swaps in a compiled plugin, keeping leadership.
    async fn swap_plugin(&mut self, plugin: Plugin) {
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
        self.metrics.plugin_loaded(self.plugin.name(), self.plugin.sha256());
        info!(
            event = "reloaded",
            id = self.settings.participant,
            term = term.map(|t| t.0),
            plugin = self.plugin.name(),
            previous = old.name(),
            path = %self.plugin.path().display(),
            compile_ms = self.plugin.compile_time().as_millis() as u64,
            cached = self.plugin.from_cache(),
            sha256 = self.plugin.sha256(),
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
                    since: Instant::now(),
                });
            }
        }
    }

    /// SIGTERM: stop the job, hand over, close the session.
    async fn shutdown(&mut self) {
        info!(event = "shutdown", id = self.settings.participant, mono_ns = monotonic_ns(), "shutting down");
        self.notifier.stopping();
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

/// Resolves when the background compile is done; never if none runs.
async fn compiled(loading: &mut Option<Loading>) -> Result<Plugin, LoadError> {
    match loading {
        None => std::future::pending().await,
        Some(receiver) => match receiver.await {
            Ok(result) => result,
            Err(_) => {
                Err(LoadError::Compiler(PathBuf::new(), "the compile thread ended without an answer".into()))
            }
        },
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
