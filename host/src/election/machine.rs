//! The election state machine: the one place where leadership changes.
//!
//! One task owns the ZooKeeper session and walks the states of
//! [`ElectionState`]. Every transition goes through [`Machine::set_state`]
//! and every event through [`Machine::emit`]; the lease that callers check
//! before leader work is granted in [`Machine::grant`] and revoked in
//! [`Machine::revoke`], always before the matching event is sent, so a caller
//! can never see an event and still hold a stale lease.
//!
//! This file holds the transitions and the session; each phase of one node's
//! life has its own module: [`join`] (create or find the node), [`follow`]
//! (wait in line), [`lead`] (hold the lease). Connection-state changes have
//! one owner, [`Link`].

mod follow;
mod join;
mod lead;

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};
use zookeeper_client as zk;

use super::clock_rate::RateEstimator;
use super::link::Link;
use super::node::{self, Protection};
use super::sighting::FirstSeen;
use super::timing::{Backoff, Timing};
use super::{
    Command, DemoteReason, ElectionConfig, ElectionState, Fence, LeadershipEvent, Lease, Shared, Term,
};
use crate::clock::{self, Stamp};

/// How long a shutting-down participant waits between deleting its node and
/// closing its session.
const CLOSE_LINGER: Duration = Duration::from_millis(50);

/// A session that lived this long resets the reconnect backoff.
const STABLE_SESSION: Duration = Duration::from_secs(60);

/// Why the machine left a session.
enum Exit {
    /// The session is gone or must not be used any more: start a new one.
    SessionLost,
    /// Asked to leave the election.
    Shutdown(Option<oneshot::Sender<()>>),
}

/// What to do after the election node of this session is given up.
enum Rejoin {
    /// Create a new node at once (ours vanished).
    Now,
    /// Stay out for a while (resigned), then create a new node.
    After(Duration),
}

/// One established ZooKeeper session.
struct Session {
    client: zk::Client,
    /// What our election node holds.
    data: Vec<u8>,
    /// The one owner of connection-state changes (see `link.rs`).
    link: Link,
    id: i64,
    timing: Timing,
    started: Instant,
}

/// This participant's election node.
#[derive(Clone, Debug)]
struct OwnNode {
    name: String,
    path: String,
    sequence: i64,
    term: Term,
}

impl OwnNode {
    /// Where this node keeps its lease when it leads.
    fn lease_path(&self) -> String {
        let parent = self.path.rsplit_once('/').map(|(p, _)| p).unwrap_or("");
        format!("{parent}/{}", node::lease_name(&self.name).expect("our node names have a sequence"))
    }
}

type WatchFuture = Pin<Box<dyn Future<Output = zk::WatchedEvent> + Send>>;

pub(super) struct Machine {
    config: ElectionConfig,
    shared: Arc<Shared>,
    events: mpsc::UnboundedSender<LeadershipEvent>,
    commands: mpsc::UnboundedReceiver<Command>,
    /// The protected prefix of the current join: fresh for every join, kept
    /// across retries of its create, so no node name (and so no fencing
    /// path) is ever used twice, even where sequences restart.
    protection: Protection,
    /// The prefixes of recent earlier joins, to clean up their nodes.
    earlier: VecDeque<Protection>,
    reconnect: Backoff,
    /// A resign asked for while not leading, handled at the next look.
    resign_pending: Option<(Duration, oneshot::Sender<()>)>,
    /// Whether the election's ACL was looked at (warned about once).
    acl_checked: bool,
    /// Whether the lease asked for is cut to a shorter session timeout now
    /// (warned about when it starts to be).
    lease_cut: bool,
    /// Whether a leader's lease differing from ours was logged (once).
    lease_mismatch_logged: bool,
    /// When each lease node version was first seen: takeover timers count
    /// from there, across re-reads and reconnects.
    first_seen: FirstSeen,
    /// How long to stay out after giving up the head of the line (our
    /// writes came back too late to lead on); reset once we lead.
    lead_backoff: Backoff,
    /// The leader's clock rate against ours, from its renewals.
    clock_rate: RateEstimator,
    /// Whether a clock-rate skew was logged (once per process).
    clock_skew_logged: bool,
}

impl Machine {
    pub(super) fn new(
        config: ElectionConfig,
        shared: Arc<Shared>,
        events: mpsc::UnboundedSender<LeadershipEvent>,
        commands: mpsc::UnboundedReceiver<Command>,
    ) -> Machine {
        Machine {
            config,
            shared,
            events,
            commands,
            protection: Protection::new(),
            earlier: VecDeque::new(),
            reconnect: Backoff::new(Duration::from_millis(200), Duration::from_secs(5)),
            resign_pending: None,
            acl_checked: false,
            lease_cut: false,
            lease_mismatch_logged: false,
            first_seen: FirstSeen::new(),
            lead_backoff: Backoff::new(Duration::from_millis(500), Duration::from_secs(30)),
            clock_rate: RateEstimator::new(),
            clock_skew_logged: false,
        }
    }

    /// Runs until shut down: session after session, node after node.
    pub(super) async fn run(mut self) {
        let done = loop {
            self.set_state(ElectionState::Joining);
            let mut session = match self.connect().await {
                Ok(session) => session,
                Err(done) => break done,
            };
            match self.participate(&mut session).await {
                Exit::SessionLost => {
                    if session.started.elapsed() >= STABLE_SESSION {
                        self.reconnect.reset();
                    }
                    self.close(session).await;
                    let delay = self.reconnect.next_delay();
                    info!(
                        event = "rejoining",
                        delay_ms = delay.as_millis() as u64,
                        "starting a new session after a jittered backoff"
                    );
                    if let Err(done) = self.pause(delay).await {
                        break done;
                    }
                }
                Exit::Shutdown(done) => {
                    // The node is gone already (deleted on the way out). A
                    // session close right behind the delete would sit in the
                    // ensemble's commit pipeline while the successor reads
                    // the election, so leave a moment before closing.
                    tokio::time::sleep(CLOSE_LINGER).await;
                    self.close(session).await;
                    break done;
                }
            }
        };
        self.set_state(ElectionState::Stopped);
        if let Some(done) = done {
            let _ = done.send(());
        }
        if let Some((_, done)) = self.resign_pending.take() {
            let _ = done.send(());
        }
        // Out of the election for good: answer whatever else is asked.
        while let Some(command) = self.commands.recv().await {
            match command {
                Command::Resign { done, .. } | Command::Shutdown { done } => {
                    let _ = done.send(());
                }
            }
        }
    }

    fn set_state(&self, state: ElectionState) {
        self.shared.state.send_if_modified(|current| {
            let changed = *current != state;
            *current = state;
            changed
        });
    }

    fn emit(&self, event: LeadershipEvent) {
        // `mono_ns`: when it happened on the machine-wide clock, so tests
        // can order the events of several participants without trusting
        // when they read them.
        debug!(?event, mono_ns = clock::monotonic_ns(), "leadership event");
        let _ = self.events.send(event);
    }

    /// Records a fresh proof: leader work may run until the lease ends.
    fn grant(&self, session: &Session, node: &OwnNode, proof: Stamp) {
        let lease = Lease { term: node.term, expires: session.timing.lease_end(proof) };
        *self.shared.lease.lock().unwrap() = Some(lease);
        // What this host now believes it may do, on the machine-wide clock:
        // the chaos checker holds a killed or frozen leader to these.
        debug!(
            event = "lease",
            term = node.term.0,
            proof_ns = proof.monotonic_ns(),
            lease_end_ns = lease.expires.monotonic_ns(),
            deadline_ns = session.timing.demote_at(proof).monotonic_ns(),
            mono_ns = clock::monotonic_ns(),
            "lease granted"
        );
        let mut fence = self.shared.fence.lock().unwrap();
        if fence.as_ref().map(|f| f.term) != Some(node.term) {
            *fence = Some(Fence {
                client: session.client.clone(),
                node_path: node.path.clone(),
                term: node.term,
                acl: self.config.access.acl.clone(),
            });
        }
    }

    /// Withdraws the lease (and, unless merely suspended, the fence).
    fn revoke(&self, keep_fence: bool) {
        *self.shared.lease.lock().unwrap() = None;
        if !keep_fence {
            *self.shared.fence.lock().unwrap() = None;
        }
    }

    fn elect(&self, session: &Session, node: &OwnNode, proof: Stamp) {
        self.grant(session, node, proof);
        self.set_state(ElectionState::Leader { term: node.term });
        self.emit(LeadershipEvent::Elected { term: node.term });
    }

    fn suspend(&self, term: Term, why: &str) {
        self.revoke(true);
        self.set_state(ElectionState::Suspended { term });
        debug!(term = term.0, why, "leadership suspended");
        self.emit(LeadershipEvent::Suspended { term });
    }

    fn resume(&self, session: &Session, node: &OwnNode, proof: Stamp) {
        self.grant(session, node, proof);
        self.set_state(ElectionState::Leader { term: node.term });
        self.emit(LeadershipEvent::Resumed { term: node.term });
    }

    fn demote(&self, term: Term, reason: DemoteReason) {
        self.revoke(false);
        self.set_state(ElectionState::Joining);
        self.emit(LeadershipEvent::Demoted { term, reason });
    }

    /// Establishes a session, retrying with backoff until it works or we are
    /// told to stop.
    async fn connect(&mut self) -> Result<Session, Option<oneshot::Sender<()>>> {
        let servers = self.config.connect.servers_string();
        let requested = self.config.session_timeout;
        loop {
            let connector = zk::Client::connector().with_session_timeout(requested).with_fail_eagerly();
            let attempt = self.config.access.connect(connector, &servers);
            let result = tokio::select! {
                result = attempt => result,
                command = self.commands.recv() => match command {
                    None => return Err(None),
                    Some(Command::Shutdown { done }) => return Err(Some(done)),
                    Some(Command::Resign { done, .. }) => {
                        let _ = done.send(());
                        continue;
                    }
                },
            };
            let (failure, cause) = match result {
                Ok(client) => match self.open(client).await {
                    Ok(session) => return Ok(session),
                    Err(err) => (err, None),
                },
                // The library says only that no host was available: ask
                // the sockets why (refused, timed out, name not found).
                Err(err) => (err, Some(self.config.connect.probe(Duration::from_secs(1)).await)),
            };
            let delay = self.reconnect.next_delay().max(Duration::from_millis(50));
            // A TLS failure looks like an unreachable ensemble to the client
            // library; a handshake of our own says which (now and then: it
            // takes a moment).
            let diagnosis = match self.reconnect.attempts() % 10 {
                1 => self.config.access.diagnose(&self.config.connect).await,
                _ => None,
            };
            warn!(
                event = "zk_unreachable",
                zk = %self.config.connect,
                error = %diagnosis.unwrap_or_else(|| failure.to_string()),
                cause,
                attempt = self.reconnect.attempts(),
                retry_in_ms = delay.as_millis() as u64,
                "cannot reach the ZooKeeper ensemble; retrying"
            );
            self.pause(delay).await?;
        }
    }

    /// Finishes setting up a connected client: timeout check and chroot.
    async fn open(&mut self, client: zk::Client) -> Result<Session, zk::Error> {
        let requested = self.config.session_timeout;
        let negotiated = client.session_timeout();
        if negotiated != requested {
            warn!(
                event = "session_timeout_clamped",
                requested_ms = requested.as_millis() as u64,
                negotiated_ms = negotiated.as_millis() as u64,
                "the ensemble granted a different session timeout than requested (servers clamp it to 2-20 x tickTime); leases follow the granted one"
            );
        }
        let client = match &self.config.connect.chroot {
            None => client,
            Some(chroot) => {
                client.mkdir(chroot, &self.config.access.acl.persistent()).await?;
                client.chroot(chroot.as_str()).map_err(|_| zk::Error::BadArguments(&"bad chroot"))?
            }
        };
        let timing = self.derive_timing(negotiated);
        self.publish_timing(timing);
        self.shared.counters.sessions.fetch_add(1, Ordering::Relaxed);
        let id = client.session_id().0;
        info!(
            event = "session",
            session = format_args!("{id:#x}"),
            timeout_ms = negotiated.as_millis() as u64,
            lease_period_ms = timing.period.as_millis() as u64,
            "ZooKeeper session established"
        );
        let link = Link::new(client.state_watcher(), self.shared.clone());
        let data = self.config.participant.to_bytes();
        Ok(Session { client, data, link, id, timing, started: Instant::now() })
    }

    /// Follows the session timeout the ensemble renegotiated at a reconnect
    /// (a server with a lower `maxSessionTimeout` grants less to the same
    /// session). Returns whether the timing changed; the caller publishes
    /// it (after revoking a lease the new timing may not cover).
    fn retime(&mut self, session: &mut Session) -> bool {
        let negotiated = session.client.negotiated_session_timeout();
        if negotiated.is_zero() || negotiated == session.timing.session_timeout {
            return false;
        }
        warn!(
            event = "session_timeout_renegotiated",
            previous_ms = session.timing.session_timeout.as_millis() as u64,
            negotiated_ms = negotiated.as_millis() as u64,
            "the ensemble renegotiated the session timeout on reconnect; leases follow the new one"
        );
        session.timing = self.derive_timing(negotiated);
        true
    }

    /// The timing under the session timeout `negotiated`: from the lease
    /// asked for, or from `negotiated` when the lease does not fit in it
    /// (warned about when that starts: takeovers then follow the session
    /// timeout until a longer one is granted again).
    fn derive_timing(&mut self, negotiated: Duration) -> Timing {
        let asked = self.config.lease;
        let timing = Timing::with_lease(negotiated, asked);
        let cut = timing.cut(asked);
        if cut && !self.lease_cut {
            warn!(
                event = "lease_cut",
                lease_ms = asked.unwrap_or_default().as_millis() as u64,
                session_timeout_ms = negotiated.as_millis() as u64,
                "the lease asked for is not shorter than the session timeout the ensemble granted; leases and takeovers follow the session timeout instead"
            );
        }
        self.lease_cut = cut;
        timing
    }

    /// Shows `timing` to [`super::Election::timing`].
    fn publish_timing(&self, timing: Timing) {
        *self.shared.timing.lock().unwrap() = Some(timing);
    }

    /// Closes a session (which deletes any ephemeral node left). The library
    /// closes it once the last client handle is dropped; wait briefly for
    /// that so nothing lingers until the session would expire.
    async fn close(&mut self, session: Session) {
        self.revoke(false);
        let Session { client, link, .. } = session;
        let mut states = link.into_watcher();
        drop(client);
        let closing = async {
            while !states.peek_state().is_terminated() {
                states.changed().await;
            }
        };
        if tokio::time::timeout(Duration::from_secs(2), closing).await.is_err() {
            debug!("session did not confirm its close in time; it will expire on its own");
        }
    }

    /// Sleeps, while answering commands; `Err` if told to shut down.
    async fn pause(&mut self, delay: Duration) -> Result<(), Option<oneshot::Sender<()>>> {
        let until = tokio::time::Instant::now() + delay;
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(until) => return Ok(()),
                command = self.commands.recv() => match command {
                    None => return Err(None),
                    Some(Command::Shutdown { done }) => return Err(Some(done)),
                    Some(Command::Resign { done, .. }) => { let _ = done.send(()); }
                },
            }
        }
    }

    /// Waits out a ZooKeeper error: reconnection for a lost connection,
    /// `Exit` for a lost session.
    async fn recover(&mut self, session: &mut Session, err: zk::Error) -> Result<(), Exit> {
        match err {
            zk::Error::ConnectionLoss => self.await_connected(session).await,
            zk::Error::SessionExpired
            | zk::Error::ClientClosed
            | zk::Error::AuthFailed
            | zk::Error::SessionMoved => Err(Exit::SessionLost),
            zk::Error::NoAuth => {
                warn!(
                    event = "zk_no_auth",
                    zk_access = %self.config.access.describe(),
                    "ZooKeeper refused a request: the election's ACL does not grant this identity (check --zk-auth, and the identity the other participants use); retrying"
                );
                self.pause(Duration::from_secs(1)).await.map_err(Exit::Shutdown)
            }
            other => {
                warn!(error = %other, "unexpected ZooKeeper error; retrying");
                self.pause(Duration::from_millis(200)).await.map_err(Exit::Shutdown)
            }
        }
    }

    async fn await_connected(&mut self, session: &mut Session) -> Result<(), Exit> {
        loop {
            match session.link.state() {
                zk::SessionState::SyncConnected | zk::SessionState::ConnectedReadOnly => return Ok(()),
                state if state.is_terminated() => return Err(Exit::SessionLost),
                _ => {}
            }
            tokio::select! {
                _ = session.link.changed() => {}
                command = self.commands.recv() => self.defer(command)?,
            }
        }
    }

    /// Handles a command that arrives while not leading.
    fn defer(&mut self, command: Option<Command>) -> Result<(), Exit> {
        match command {
            None => Err(Exit::Shutdown(None)),
            Some(Command::Shutdown { done }) => Err(Exit::Shutdown(Some(done))),
            Some(Command::Resign { rejoin_after, done }) => {
                if let Some((_, earlier)) = self.resign_pending.replace((rejoin_after, done)) {
                    let _ = earlier.send(());
                }
                Ok(())
            }
        }
    }

    /// Takes part in the election for as long as the session lives.
    async fn participate(&mut self, session: &mut Session) -> Exit {
        loop {
            let node = match self.join(session).await {
                Ok(node) => node,
                Err(exit) => return exit,
            };
            self.emit(LeadershipEvent::Joined {
                node: node.name.clone(),
                sequence: node.sequence,
                session: session.id,
            });
            match self.contend(session, &node).await {
                Ok(Rejoin::Now) => {}
                Ok(Rejoin::After(delay)) => {
                    self.set_state(ElectionState::Stopped);
                    if let Err(done) = self.pause(delay).await {
                        return Exit::Shutdown(done);
                    }
                }
                Err(exit) => return exit,
            }
        }
    }

    /// Deletes our election node, riding out connection loss for as long as
    /// the session could still be alive.
    /// A leader deletes its lease node in the same transaction, so that the
    /// successor waits on one write.
    async fn delete_own(&mut self, session: &mut Session, node: &OwnNode, leading: bool) -> Result<(), Exit> {
        let started = Instant::now();
        let give_up = started + session.timing.session_deadline();
        let mut with_lease = leading;
        loop {
            let deleted = if with_lease {
                let mut multi = session.client.new_multi_writer();
                let lease = node.lease_path();
                match multi.add_delete(&node.path, None).and_then(|()| multi.add_delete(&lease, None)) {
                    Ok(()) => match multi.commit().await {
                        Ok(_) => Ok(()),
                        // Our node is gone already (an operator, a takeover):
                        // its lease node must not outlive it, or the next in
                        // line waits on a lease known to be dead.
                        Err(zk::MultiWriteError::OperationFailed { index: 0, source: zk::Error::NoNode }) => {
                            debug!(node = %node.name, "our election node was gone already; deleting our lease node");
                            return self.delete_lease(session, node).await;
                        }
                        // No lease node after all: delete the node alone.
                        Err(zk::MultiWriteError::OperationFailed { index: 1, .. }) => {
                            with_lease = false;
                            continue;
                        }
                        Err(err) => Err(zk::Error::from(err)),
                    },
                    Err(err) => Err(err),
                }
            } else {
                session.client.delete(&node.path, None).await
            };
            match deleted {
                Ok(()) | Err(zk::Error::NoNode) => {
                    debug!(node = %node.name, took_us = started.elapsed().as_micros() as u64, mono_ns = crate::clock::monotonic_ns(), "deleted our election node");
                    return Ok(());
                }
                Err(zk::Error::ConnectionLoss) if Instant::now() < give_up => {
                    let wait = tokio::time::timeout_at(give_up.into(), self.await_connected(session)).await;
                    match wait {
                        Ok(result) => result?,
                        Err(_) => return Err(Exit::SessionLost),
                    }
                }
                // The session is gone, and its ephemeral node with it.
                Err(_) => return Err(Exit::SessionLost),
            }
        }
    }
}

/// Our election node vanished under a live session (an operator): join again.
fn own_node_gone(node: &OwnNode) -> Rejoin {
    info!(node = %node.name, "our election node is gone; rejoining");
    Rejoin::Now
}

/// The event of a watch that has fired already, without waiting.
fn ready_now(watch: &mut WatchFuture) -> Option<zk::WatchedEvent> {
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match watch.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(event) => Some(event),
        std::task::Poll::Pending => None,
    }
}

/// Watches our own node for deletion; `None` if it is already gone.
async fn watch_own(client: &zk::Client, path: &str) -> Result<Option<WatchFuture>, zk::Error> {
    match client.check_and_watch_stat(path).await? {
        (Some(_), watcher) => Ok(Some(Box::pin(watcher.changed()))),
        (None, _) => Ok(None),
    }
}
