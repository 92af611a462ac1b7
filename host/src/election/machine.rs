//! The election state machine: the one place where leadership changes.
//!
//! One task owns the ZooKeeper session and walks the states of
//! [`ElectionState`]. Every transition goes through [`Machine::set_state`]
//! and every event through [`Machine::emit`]; the lease that callers check
//! before leader work is granted in [`Machine::grant`] and revoked in
//! [`Machine::revoke`], always before the matching event is sent, so a caller
//! can never see an event and still hold a stale lease.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};
use tokio::time::sleep_until;
use tracing::{debug, info, warn};
use zookeeper_client as zk;

use super::link::Link;
use super::node::{self, LeaseRecord, Protection};
use super::timing::{Backoff, Timing};
use super::{
    Command, DemoteReason, ElectionConfig, ElectionState, Fence, LeadershipEvent, Lease, Shared, Term,
};
use crate::clock::{self, Clock, Stamp};

const PERSISTENT: zk::CreateOptions<'static> = zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all());
const EPHEMERAL: zk::CreateOptions<'static> = zk::CreateMode::Ephemeral.with_acls(zk::Acls::anyone_all());
const EPHEMERAL_SEQUENTIAL: zk::CreateOptions<'static> =
    zk::CreateMode::EphemeralSequential.with_acls(zk::Acls::anyone_all());

/// How long a shutting-down participant waits between deleting its node and
/// closing its session.
const CLOSE_LINGER: Duration = Duration::from_millis(50);

/// How many earlier joins' prefixes are remembered. Their nodes outlive a
/// join by at most a session timeout, a few joins at most.
const EARLIER_JOINS: usize = 16;

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

/// One consistent look at the election, taken right after a `sync`, so it is
/// as fresh as the ensemble's leader at `at` (when the sync was sent).
struct Look {
    at: Stamp,
    /// The connection generation the sync was sent in.
    generation: u64,
    children: Vec<String>,
    own: Option<zk::Stat>,
}

impl Look {
    /// The proof this look gives.
    fn proof(&self) -> Proof {
        Proof { at: self.at, generation: self.generation }
    }
}

/// A sync this host sent and the ensemble answered: the session was alive
/// at `at`, and reads behind it were current, on connection `generation`.
#[derive(Clone, Copy, Debug)]
struct Proof {
    at: Stamp,
    generation: u64,
}

type LookFuture = Pin<Box<dyn Future<Output = Result<Look, zk::Error>> + Send>>;

/// What the next in line knows of the leader's lease.
#[derive(Clone, Copy, Debug)]
struct LeaderLease {
    /// The lease node's version last seen: each renewal bumps it.
    version: i32,
    /// When we learned of that version. The renewal behind it was sent
    /// before, so the leader's deadline counts from earlier still.
    seen_at: Instant,
    /// The leader's deadline, from its lease record.
    deadline: Duration,
}

impl LeaderLease {
    /// When the leader has certainly demoted itself.
    fn takeover_at(&self) -> Instant {
        // The margin covers the clocks of two hosts running at slightly
        // different rates, and the leader's demotion reaching its job.
        self.seen_at + self.deadline + self.deadline * 3 / 20
    }
}

/// What a participant knows of the lease node of the node ahead of it.
#[derive(Clone, Copy, Debug)]
enum AheadLease {
    /// There is none. A zkrun participant creates its lease node before it
    /// leads, and removes it only after it stood down, so the node ahead
    /// does not lead (or is a Curator participant, which has no lease).
    Absent,
    /// There is one: the node ahead leads, or has not stood down yet.
    Held(LeaderLease),
}

impl AheadLease {
    fn held(self) -> Option<LeaderLease> {
        match self {
            AheadLease::Absent => None,
            AheadLease::Held(lease) => Some(lease),
        }
    }
}

/// What the next in line knows of the leader's node after waking up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum LeaderLeft {
    /// Nothing new: look as usual.
    No,
    /// It may be gone (its lease node went): a plain read tells.
    Maybe,
    /// It is gone: its deletion was notified, or was our own takeover.
    Certainly,
}

/// How a takeover attempt ended.
enum Takeover {
    /// We deleted the silent leader's node.
    Done,
    /// The leader renewed meanwhile (or we could not tell): keep following.
    Renewed(LeaderLease),
    /// The leader's node is gone already.
    Gone,
    /// Our own node is gone: we are not in line any more.
    OwnGone,
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

    // ----- transitions -------------------------------------------------

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
            lease_end_ns = lease.expires.monotonic_ns(),
            deadline_ns = session.timing.demote_at(proof).monotonic_ns(),
            mono_ns = clock::monotonic_ns(),
            "lease granted"
        );
        let mut fence = self.shared.fence.lock().unwrap();
        if fence.as_ref().map(|f| f.term) != Some(node.term) {
            *fence =
                Some(Fence { client: session.client.clone(), node_path: node.path.clone(), term: node.term });
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

    // ----- sessions ----------------------------------------------------

    /// Establishes a session, retrying with backoff until it works or we are
    /// told to stop.
    async fn connect(&mut self) -> Result<Session, Option<oneshot::Sender<()>>> {
        let servers = self.config.connect.servers_string();
        let requested = self.config.session_timeout;
        loop {
            let attempt =
                zk::Client::connector().with_session_timeout(requested).with_fail_eagerly().connect(&servers);
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
            let failure = match result {
                Ok(client) => match self.open(client).await {
                    Ok(session) => return Ok(session),
                    Err(err) => err,
                },
                Err(err) => err,
            };
            let delay = self.reconnect.next_delay().max(Duration::from_millis(50));
            warn!(
                event = "zk_unreachable",
                zk = %self.config.connect,
                error = %failure,
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
                client.mkdir(chroot, &PERSISTENT).await?;
                client.chroot(chroot.as_str()).map_err(|_| zk::Error::BadArguments(&"bad chroot"))?
            }
        };
        let timing = Timing::new(negotiated);
        self.publish_timing(timing);
        self.shared.counters.sessions.fetch_add(1, Ordering::Relaxed);
        let id = client.session_id().0;
        info!(
            event = "session",
            session = format_args!("{id:#x}"),
            timeout_ms = negotiated.as_millis() as u64,
            "ZooKeeper session established"
        );
        let link = Link::new(client.state_watcher());
        let data = self.config.participant.to_bytes();
        Ok(Session { client, data, link, id, timing, started: Instant::now() })
    }

    /// Follows the session timeout the ensemble renegotiated at a reconnect
    /// (a server with a lower `maxSessionTimeout` grants less to the same
    /// session). Returns whether the timing changed; the caller publishes
    /// it (after revoking a lease the new timing may not cover).
    fn retime(&self, session: &mut Session) -> bool {
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
        session.timing = Timing::new(negotiated);
        true
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

    // ----- the election ------------------------------------------------

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

    /// Creates the election path and its parents if absent.
    async fn ensure_parent(&mut self, session: &mut Session) -> Result<(), Exit> {
        loop {
            match session.client.mkdir(&self.config.path, &PERSISTENT).await {
                Ok(()) => return Ok(()),
                Err(err) => self.recover(session, err).await?,
            }
        }
    }

    /// Creates this join's node, or finds it again after an interrupted
    /// create.
    ///
    /// Every join has a fresh protected prefix. A node with an earlier
    /// join's prefix (or this join's, but another session's `ephemeralOwner`)
    /// is a leftover of ours: it would vanish under us, so it is deleted
    /// rather than adopted. Only one node of ours ever survives.
    async fn join(&mut self, session: &mut Session) -> Result<OwnNode, Exit> {
        let parent = self.config.path.clone();
        let data = session.data.clone();
        // The default is a fresh random prefix.
        let earlier = std::mem::take(&mut self.protection);
        self.earlier.push_back(earlier);
        if self.earlier.len() > EARLIER_JOINS {
            self.earlier.pop_front();
        }
        'attempt: loop {
            let children = match session.client.list_children(&parent).await {
                Ok(children) => children,
                Err(zk::Error::NoNode) => {
                    self.ensure_parent(session).await?;
                    continue;
                }
                Err(err) => {
                    self.recover(session, err).await?;
                    continue;
                }
            };
            let mut kept: Option<OwnNode> = None;
            let ours = node::in_order(&children)
                .into_iter()
                .filter(|(_, name)| self.protection.owns(name) || self.earlier.iter().any(|p| p.owns(name)));
            let ours: Vec<(i64, String)> = ours.map(|(seq, name)| (seq, name.to_string())).collect();
            for (sequence, name) in ours {
                let path = format!("{parent}/{name}");
                match session.client.check_stat(&path).await {
                    Ok(Some(stat))
                        if stat.ephemeral_owner == session.id
                            && kept.is_none()
                            && self.protection.owns(&name) =>
                    {
                        debug!(node = %name, "found our node from an interrupted create");
                        kept = Some(OwnNode { name, path, sequence, term: Term(stat.czxid as u64) });
                    }
                    Ok(Some(stat)) => {
                        info!(node = %name, owner = format_args!("{:#x}", stat.ephemeral_owner), "deleting an election node left by an earlier session of ours");
                        match session.client.delete(&path, None).await {
                            Ok(()) | Err(zk::Error::NoNode) => {}
                            Err(err) => {
                                self.recover(session, err).await?;
                                continue 'attempt;
                            }
                        }
                    }
                    Ok(None) => {}
                    Err(err) => {
                        self.recover(session, err).await?;
                        continue 'attempt;
                    }
                }
            }
            if let Some(node) = kept {
                return Ok(node);
            }
            let prefix = format!("{parent}/{}", self.protection.create_name());
            match session.client.create(&prefix, &data, &EPHEMERAL_SEQUENTIAL).await {
                Ok((stat, sequence)) => {
                    let name = format!("{}{sequence}", self.protection.create_name());
                    return Ok(OwnNode {
                        path: format!("{parent}/{name}"),
                        name,
                        sequence: sequence.into_i64(),
                        term: Term(stat.czxid as u64),
                    });
                }
                Err(zk::Error::NoNode) => self.ensure_parent(session).await?,
                // The create may have happened: the next attempt looks for it.
                Err(err) => self.recover(session, err).await?,
            }
        }
    }

    /// Waits in line, watching only the node just ahead, until we lead.
    ///
    /// The participant next in line (the one whose predecessor leads) keeps
    /// a *warm proof*: a `sync` + read of its own node every refresh, as a
    /// leader does, and a watch on its own node. When the leader's node is
    /// deleted (and its lease node with it: the leader stood down), it
    /// takes the lead on that proof without a read (see `docs/election.md`).
    /// Everyone else only waits.
    async fn contend(&mut self, session: &mut Session, node: &OwnNode) -> Result<Rejoin, Exit> {
        let parent = self.config.path.clone();
        let mut timing;
        // A proof (send time of a sync answered) while next in line.
        let mut warm: Option<Proof> = None;
        let mut leader_left = LeaderLeft::No;
        // While next in line: a watch on our own node. The ensemble notifies
        // changes in the order it applied them, on one connection, so if the
        // leader's node is gone and this has not fired, our node outlived it.
        let mut own_watch: Option<WatchFuture> = None;
        // Set after we looked again because the node ahead seemed to lead.
        let mut relooked = false;
        loop {
            if self.retime(session) {
                self.publish_timing(session.timing);
            }
            timing = session.timing;
            if let Some((rejoin_after, done)) = self.resign_pending.take() {
                self.delete_own(session, node, false).await?;
                let _ = done.send(());
                return Ok(Rejoin::After(rejoin_after));
            }
            // Act on the warm proof only while it leaves most of a lease,
            // and only on the connection it was taken on: across a
            // reconnect, notifications may have been lost or reordered.
            let left = std::mem::replace(&mut leader_left, LeaderLeft::No);
            let generation = session.link.generation();
            let soon = self.shared.clock.now().after(timing.refresh);
            let fast = warm.filter(|proof| {
                left != LeaderLeft::No
                    && proof.generation == generation
                    && !timing.lease_end(proof.at).reached(soon)
            });
            if let (Some(_), LeaderLeft::Certainly, Some(watch)) = (fast, left, own_watch.as_mut()) {
                match ready_now(watch) {
                    None => {
                        // Our last look showed only the leader ahead; nodes
                        // created since sort after ours. So we are first.
                        debug!(
                            mono_ns = crate::clock::monotonic_ns(),
                            "the leader's node went before ours; leading on the warm proof"
                        );
                        return self.take_lead(session, node).await;
                    }
                    Some(event) if event.event_type == zk::EventType::NodeDeleted => {
                        return Ok(own_node_gone(node));
                    }
                    // A session event: read instead, and watch again.
                    Some(_) => own_watch = None,
                }
            }
            let looked = match fast {
                Some(proof) => read_children(&session.client, proof, &parent, &node.path).await,
                None => {
                    look(&session.client, &*self.shared.clock, generation, &parent, &node.path, true).await
                }
            };
            let look = match looked {
                Ok(look) => {
                    debug!(
                        fast = fast.is_some(),
                        mono_ns = crate::clock::monotonic_ns(),
                        "looked at the election"
                    );
                    look
                }
                Err(zk::Error::NoNode) => return Ok(Rejoin::Now),
                Err(err) => {
                    warm = None;
                    self.recover(session, err).await?;
                    continue;
                }
            };
            self.shared.counters.reads.fetch_add(1, Ordering::Relaxed);
            match look.own {
                Some(stat) if stat.ephemeral_owner == session.id => {}
                _ => return Ok(own_node_gone(node)),
            }
            let order = node::in_order(&look.children);
            let Some(position) = order.iter().position(|(_, name)| *name == node.name) else {
                return Ok(Rejoin::Now);
            };
            if position == 0 {
                // First in line; but a lease node of an earlier leader means
                // that leader has not stood down yet (it removes its lease
                // node only after it stopped its job).
                if let Some(lease) = standing_lease(&look.children, node) {
                    self.await_stand_down(session, &parent, &lease).await?;
                    continue;
                }
                return self.take_lead(session, node).await;
            }
            let ahead = order[position - 1].1.to_string();
            let ahead_path = format!("{parent}/{ahead}");
            let ahead_lease =
                format!("{parent}/{}", node::lease_name(&ahead).expect("participant nodes have a sequence"));
            self.set_state(ElectionState::Follower { ahead: ahead.clone(), position });
            let next_in_line = position == 1;
            // Everyone watches the node ahead for its deletion, and its lease
            // node: it appears when the node ahead starts leading (so we are
            // next in line) and, for the next in line, changes with every
            // renewal of the leader's lease.
            let mut ahead_changed = match session.client.check_and_watch_stat(&ahead_path).await {
                Ok((Some(_), watcher)) => Box::pin(watcher.changed()) as WatchFuture,
                // Gone between listing and watching: look again, don't wait.
                Ok((None, _)) => continue,
                Err(err) => {
                    self.recover(session, err).await?;
                    continue;
                }
            };
            let (mut lease_changed, mut leader) =
                match watch_lease(&session.client, &ahead_lease, timing).await {
                    // The node ahead leads, but we did not see ourselves next in
                    // line: our look predates its election, so look again. (Once:
                    // a lease node can outlive a term whose node an operator
                    // deleted, until its leader hears of it.)
                    Ok((_, AheadLease::Held(_))) if !next_in_line && !relooked => {
                        relooked = true;
                        continue;
                    }
                    Ok((watch, lease)) => (watch, lease.held().filter(|_| next_in_line)),
                    Err(err) => {
                        self.recover(session, err).await?;
                        continue;
                    }
                };
            relooked = false;
            if next_in_line && own_watch.is_none() {
                match watch_own(&session.client, &node.path).await {
                    Ok(Some(watch)) => own_watch = Some(watch),
                    Ok(None) => return Ok(own_node_gone(node)),
                    Err(err) => {
                        self.recover(session, err).await?;
                        continue;
                    }
                }
            }
            warm = if next_in_line && fast.is_none() {
                Some(look.proof())
            } else {
                warm.filter(|_| next_in_line)
            };
            let mut refresh: Option<LookFuture> = None;
            // The leader's node is gone, but not (yet) its lease node.
            let mut ahead_gone = false;
            loop {
                let refresh_at = warm
                    .map(|proof| proof.at.after(timing.refresh).instant(&*self.shared.clock))
                    .unwrap_or_else(Instant::now);
                let takeover_at = leader.as_ref().map(LeaderLease::takeover_at);
                // Biased: a change of connection (after which notifications
                // may come out of order) and our own node's deletion are
                // seen before the leader's deletion that arrived with them.
                tokio::select! {
                    biased;
                    state = session.link.changed() => {
                        if state.is_terminated() {
                            return Err(Exit::SessionLost);
                        }
                        warm = None;
                        break;
                    }
                    event = async { own_watch.as_mut().unwrap().await }, if own_watch.is_some() => {
                        own_watch = None;
                        if event.event_type == zk::EventType::NodeDeleted {
                            return Ok(own_node_gone(node));
                        }
                        break;
                    }
                    event = &mut ahead_changed => {
                        debug!(node = %ahead, event = ?event.event_type, mono_ns = crate::clock::monotonic_ns(), "the node ahead changed");
                        if event.event_type == zk::EventType::NodeDeleted {
                            self.shared.counters.wakeups.fetch_add(1, Ordering::Relaxed);
                            if next_in_line {
                                // Did the leader stand down, or was its node
                                // deleted under it (an operator) while it
                                // still works? Its lease node tells: a
                                // leader removes it with its node, or right
                                // after it stopped its job. A change of it
                                // notified before this deletion is ready now.
                                let lease = match ready_now(&mut lease_changed) {
                                    None => leader.map_or(AheadLease::Absent, AheadLease::Held),
                                    Some(event) if event.event_type == zk::EventType::NodeDeleted => {
                                        lease_changed = Box::pin(std::future::pending());
                                        AheadLease::Absent
                                    }
                                    Some(_) => match watch_lease(&session.client, &ahead_lease, timing).await {
                                        Ok((watch, lease)) => {
                                            lease_changed = watch;
                                            lease
                                        }
                                        Err(err) => {
                                            self.recover(session, err).await?;
                                            warm = None;
                                            break;
                                        }
                                    },
                                };
                                match lease {
                                    AheadLease::Absent => leader_left = LeaderLeft::Certainly,
                                    AheadLease::Held(lease) => {
                                        info!(
                                            event = "awaiting_stand_down",
                                            node = %ahead,
                                            mono_ns = clock::monotonic_ns(),
                                            "the leader's node is gone but not its lease node: waiting until the lease node goes or the leader's deadline passes"
                                        );
                                        leader = Some(lease);
                                        ahead_gone = true;
                                        ahead_changed = Box::pin(std::future::pending());
                                        continue;
                                    }
                                }
                            }
                        }
                        break;
                    }
                    event = &mut lease_changed => {
                        if !next_in_line || event.event_type == zk::EventType::Session {
                            // The node ahead started leading: we are next now.
                            break;
                        }
                        // A renewal (or the lease's first write): note when.
                        match watch_lease(&session.client, &ahead_lease, timing).await {
                            Ok((watch, lease)) => {
                                lease_changed = watch;
                                leader = lease.held();
                                if ahead_gone && leader.is_none() {
                                    // The leader stood down.
                                    leader_left = LeaderLeft::Certainly;
                                    break;
                                }
                            }
                            Err(err) => {
                                self.recover(session, err).await?;
                                warm = None;
                                break;
                            }
                        }
                    }
                    command = self.commands.recv() => {
                        self.defer(command)?;
                        break;
                    }
                    result = async { refresh.as_mut().unwrap().await }, if refresh.is_some() => {
                        refresh = None;
                        warm = match result {
                            Ok(look) if look.own.is_some_and(|stat| stat.ephemeral_owner == session.id) => Some(look.proof()),
                            _ => None,
                        };
                    }
                    _ = sleep_until(refresh_at.into()), if next_in_line && refresh.is_none() => {
                        refresh = Some(start_look(&session.client, self.shared.clock.clone(), session.link.generation(), &parent, &node.path));
                    }
                    _ = sleep_until(takeover_at.unwrap_or_else(Instant::now).into()), if takeover_at.is_some() => {
                        let lease = leader.take().expect("a takeover needs the leader's lease");
                        if ahead_gone {
                            // Its node went long ago, and by now it has
                            // demoted itself: its lease node is litter.
                            self.clear_stale_lease(session, &ahead_lease, &lease).await;
                            leader_left = LeaderLeft::Certainly;
                            break;
                        }
                        match self.take_over(session, node, &parent, &ahead_path, &ahead_lease, &lease).await? {
                            Takeover::Done => {
                                leader_left = LeaderLeft::Certainly;
                                break;
                            }
                            // Its lease went; its node may not have: look.
                            Takeover::Gone => {
                                leader_left = LeaderLeft::Maybe;
                                break;
                            }
                            Takeover::Renewed(renewed) => leader = Some(renewed),
                            Takeover::OwnGone => return Ok(own_node_gone(node)),
                        }
                    }
                }
            }
        }
    }

    /// The leader ahead of us has renewed nothing for longer than its own
    /// deadline: by its own rules it stopped its job and demoted itself.
    /// Confirm through the ensemble's leader that no renewal landed in
    /// between, then delete its node, in one transaction with a check that
    /// its lease is still at the version last seen (so that a renewal landing
    /// meanwhile wins), and lead without waiting for its session to expire.
    async fn take_over(
        &mut self,
        session: &mut Session,
        own: &OwnNode,
        parent: &str,
        leader_path: &str,
        lease_path: &str,
        lease: &LeaderLease,
    ) -> Result<Takeover, Exit> {
        let renewed =
            |version: i32| Takeover::Renewed(LeaderLease { version, seen_at: Instant::now(), ..*lease });
        let sync = session.client.sync(parent);
        let read = session.client.check_stat(lease_path);
        let current = match (sync.await, read.await) {
            (Ok(()), Ok(stat)) => stat,
            (Err(err), _) | (_, Err(err)) => {
                self.recover(session, err).await?;
                return Ok(renewed(lease.version));
            }
        };
        let Some(stat) = current else { return Ok(Takeover::Gone) };
        if stat.version != lease.version {
            return Ok(renewed(stat.version));
        }
        let mut multi = session.client.new_multi_writer();
        // Last, a check that our own node is still there: a takeover on a
        // stale view (our node deleted meanwhile) must not delete anything.
        let built = multi
            .add_check_version(lease_path, lease.version)
            .and_then(|()| multi.add_delete(leader_path, None))
            .and_then(|()| multi.add_delete(lease_path, None))
            .and_then(|()| multi.add_check_version(&own.path, -1));
        if built.is_err() {
            return Ok(renewed(lease.version));
        }
        match multi.commit().await {
            Ok(_) => {
                self.shared.counters.takeovers.fetch_add(1, Ordering::Relaxed);
                warn!(
                    event = "took_over",
                    node = leader_path,
                    silent_ms = lease.seen_at.elapsed().as_millis() as u64,
                    mono_ns = crate::clock::monotonic_ns(),
                    "the leader renewed nothing past its deadline; deleted its election node to take over"
                );
                Ok(Takeover::Done)
            }
            // The lease moved on (or went): the leader lives, or left.
            Err(zk::MultiWriteError::OperationFailed { index: 0, source: zk::Error::BadVersion }) => {
                Ok(renewed(lease.version))
            }
            Err(zk::MultiWriteError::OperationFailed { index: 3, .. }) => Ok(Takeover::OwnGone),
            Err(zk::MultiWriteError::OperationFailed { .. }) => Ok(Takeover::Gone),
            Err(zk::MultiWriteError::RequestFailed { source }) => {
                self.recover(session, source).await?;
                Ok(renewed(lease.version))
            }
        }
    }

    /// First in line, and every earlier leader has stood down: create our
    /// lease node, then lead.
    ///
    /// The lease node comes first because it is how the next in line tells
    /// "the leader stood down" (no lease node) from "the leader's node was
    /// deleted under it" (a lease node left): a zkrun leader never leads
    /// without one. The create is checked against our own node, and as a
    /// quorum write answered it is a proof of its own.
    async fn take_lead(&mut self, session: &mut Session, node: &OwnNode) -> Result<Rejoin, Exit> {
        if self.retime(session) {
            self.publish_timing(session.timing);
        }
        let record = lease_record(node, &session.timing);
        let mut create = true;
        let proof = loop {
            match start_renewal(&session.client, self.shared.clock.clone(), node, &record, create).await {
                // A write stamped before it sat out a reconnect can come back
                // with its lease (nearly) spent: leading on it would mean
                // demoting at once and rejoining at the back, a needless
                // handover. Renew again instead.
                Ok(Renewal::Renewed(at)) if self.nearly_spent(session, at) => {
                    debug!("the lease node's write came back too late to lead on; renewing again");
                    create = false;
                }
                Ok(Renewal::Renewed(at)) => break at,
                // Created by an attempt whose answer was lost: write it.
                Ok(Renewal::Retry { create: again }) => create = again,
                Ok(Renewal::NodeGone) => {
                    self.delete_lease(session, node).await?;
                    return Ok(own_node_gone(node));
                }
                Err(err) => self.recover(session, err).await?,
            }
        };
        if let Some((rejoin_after, done)) = self.resign_pending.take() {
            self.delete_own(session, node, true).await?;
            let _ = done.send(());
            return Ok(Rejoin::After(rejoin_after));
        }
        self.lead(session, node, proof, record).await
    }

    /// Whether a lease counted from `proof` would end within a refresh
    /// period: too soon to start leader work on.
    fn nearly_spent(&self, session: &Session, proof: Stamp) -> bool {
        let timing = session.timing;
        timing.lease_end(proof).reached(self.shared.clock.now().after(timing.refresh))
    }

    /// Leads until the term ends; keeps the lease fresh and enforces the
    /// deadline. Returns how to rejoin, or why the session must go.
    async fn lead(
        &mut self,
        session: &mut Session,
        node: &OwnNode,
        proof: Stamp,
        mut record: Vec<u8>,
    ) -> Result<Rejoin, Exit> {
        let term = node.term;
        let mut timing = session.timing;
        let mut proof = proof;
        self.elect(session, node, proof);
        info!(
            event = "lease",
            term = term.0,
            lease_ms = timing.lease.as_millis() as u64,
            deadline_ms = timing.deadline.as_millis() as u64,
            "leading"
        );

        // Our lease node exists (take_lead created it): the one behind us
        // follows our renewals from now on.
        let mut create_lease = false;
        let mut refresh: Option<RenewalFuture> = None;
        // A watch on our own node; `None` while it could not be set (armed
        // again at the next reconnection; renewals check the node meanwhile).
        let mut own_watch = match watch_own(&session.client, &node.path).await {
            Ok(Some(watch)) => Some(watch),
            Ok(None) => return self.lost_node(session, node).await,
            Err(_) => None,
        };
        let mut suspended = false;
        let clock = self.shared.clock.clone();
        let mut next_refresh = proof.after(timing.refresh).instant(&*clock);
        // Timers sleep on CLOCK_MONOTONIC, which stops while the machine is
        // suspended; this wakes the loop often enough to notice, on
        // BOOTTIME and the wall clock, a lease or deadline passed meanwhile.
        let mut clock_check = timing.refresh.min(Duration::from_millis(100));

        loop {
            if self.retime(session) {
                // A shorter session timeout may already have outrun the
                // lease we hold: stop, and resume only on a renewal sent
                // under the new timing (its record carries the new deadline).
                timing = session.timing;
                record = lease_record(node, &timing);
                clock_check = timing.refresh.min(Duration::from_millis(100));
                if !suspended {
                    suspended = true;
                    self.suspend(term, "session timeout renegotiated");
                }
                self.publish_timing(timing);
                refresh = Some(start_renewal(&session.client, clock.clone(), node, &record, create_lease));
            }
            let lease_end = timing.lease_end(proof).instant(&*clock);
            let demote_at = timing.demote_at(proof).instant(&*clock);
            tokio::select! {
                biased;
                _ = sleep_until(demote_at.into()) => {
                    warn!(term = term.0, since_proof_ms = clock.now().boot_ns.saturating_sub(proof.boot_ns) / 1_000_000, "no proof of leadership before the deadline; demoting before the session can expire");
                    self.demote(term, DemoteReason::ConnectionLost);
                    return Err(Exit::SessionLost);
                }
                command = self.commands.recv() => {
                    drop(refresh);
                    return match command {
                        Some(Command::Resign { rejoin_after, done }) => {
                            self.demote(term, DemoteReason::Resigned);
                            self.delete_own(session, node, true).await?;
                            let _ = done.send(());
                            Ok(Rejoin::After(rejoin_after))
                        }
                        // Delete the node first: the successor waits on that
                        // write only. (Closing the session would delete it
                        // too, but a close is a slower transaction.)
                        Some(Command::Shutdown { done }) => {
                            self.demote(term, DemoteReason::Shutdown);
                            let _ = self.delete_own(session, node, true).await;
                            Err(Exit::Shutdown(Some(done)))
                        }
                        None => {
                            self.demote(term, DemoteReason::Shutdown);
                            Err(Exit::Shutdown(None))
                        }
                    };
                }
                state = session.link.changed() => match state {
                    zk::SessionState::Disconnected => {
                        refresh = None;
                        if !suspended {
                            suspended = true;
                            self.suspend(term, "connection lost");
                        }
                    }
                    zk::SessionState::SyncConnected | zk::SessionState::ConnectedReadOnly => {
                        if own_watch.is_none() {
                            own_watch = match watch_own(&session.client, &node.path).await {
                                Ok(Some(watch)) => Some(watch),
                                Ok(None) => return self.lost_node(session, node).await,
                                Err(_) => None,
                            };
                        }
                        // Same session, maybe another server: renew right away.
                        if refresh.is_none() {
                            refresh = Some(start_renewal(&session.client, self.shared.clock.clone(), node, &record, create_lease));
                        }
                    }
                    zk::SessionState::Expired => {
                        self.demote(term, DemoteReason::SessionExpired);
                        return Err(Exit::SessionLost);
                    }
                    _ => {
                        self.demote(term, DemoteReason::ConnectionLost);
                        return Err(Exit::SessionLost);
                    }
                },
                event = async { own_watch.as_mut().unwrap().await }, if own_watch.is_some() => match event.event_type {
                    zk::EventType::NodeDeleted => return self.lost_node(session, node).await,
                    // Session events are handled by the state watcher above.
                    zk::EventType::Session => own_watch = Some(Box::pin(std::future::pending())),
                    _ => {
                        own_watch = match watch_own(&session.client, &node.path).await {
                            Ok(Some(watch)) => Some(watch),
                            Ok(None) => return self.lost_node(session, node).await,
                            Err(_) => None,
                        };
                    }
                },
                result = async { refresh.as_mut().unwrap().await }, if refresh.is_some() => {
                    refresh = None;
                    match result {
                        Ok(Renewal::Renewed(at)) => {
                            create_lease = false;
                            proof = at;
                            next_refresh = proof.after(timing.refresh).instant(&*clock);
                            if suspended {
                                suspended = false;
                                self.resume(session, node, proof);
                            } else {
                                self.grant(session, node, proof);
                            }
                        }
                        Ok(Renewal::Retry { create }) => {
                            create_lease = create;
                            refresh = Some(start_renewal(&session.client, self.shared.clock.clone(), node, &record, create_lease));
                        }
                        Ok(Renewal::NodeGone) => return self.lost_node(session, node).await,
                        Err(zk::Error::SessionExpired) => {
                            self.demote(term, DemoteReason::SessionExpired);
                            return Err(Exit::SessionLost);
                        }
                        Err(err) => {
                            // Connection loss: the state watcher starts the
                            // next renewal on reconnect; otherwise retry soon.
                            debug!(error = %err, "lease renewal failed");
                            if !suspended && err == zk::Error::ConnectionLoss {
                                suspended = true;
                                self.suspend(term, "connection lost");
                            }
                            next_refresh = Instant::now() + timing.refresh.min(Duration::from_millis(100));
                        }
                    }
                }
                _ = sleep_until(lease_end.into()), if !suspended => {
                    suspended = true;
                    self.suspend(term, "lease ran out without a fresh proof");
                }
                _ = tokio::time::sleep(clock_check) => {}
                _ = sleep_until(next_refresh.into()), if refresh.is_none() => {
                    refresh = Some(start_renewal(&session.client, self.shared.clock.clone(), node, &record, create_lease));
                }
            }
        }
    }

    /// Our node was deleted under us while we led (an operator, or a
    /// takeover): stand down, and only then remove our lease node. Until it
    /// is gone the next in line holds back, since a lease node without its
    /// election node means a leader that may still be working.
    async fn lost_node(&mut self, session: &mut Session, node: &OwnNode) -> Result<Rejoin, Exit> {
        self.demote(node.term, DemoteReason::NodeDeleted);
        self.delete_lease(session, node).await?;
        Ok(own_node_gone(node))
    }

    /// Deletes our lease node (if any), riding out connection loss for as
    /// long as the session could still be alive.
    async fn delete_lease(&mut self, session: &mut Session, node: &OwnNode) -> Result<(), Exit> {
        let give_up = Instant::now() + session.timing.deadline;
        loop {
            match session.client.delete(&node.lease_path(), None).await {
                Ok(()) | Err(zk::Error::NoNode) => return Ok(()),
                Err(zk::Error::ConnectionLoss) if Instant::now() < give_up => {
                    match tokio::time::timeout_at(give_up.into(), self.await_connected(session)).await {
                        Ok(result) => result?,
                        Err(_) => return Err(Exit::SessionLost),
                    }
                }
                // The session is gone (or must go), and the lease node with it.
                Err(_) => return Err(Exit::SessionLost),
            }
        }
    }

    /// First in line, but the lease node `lease` of an earlier leader is
    /// still there: that leader has not stood down (or could not remove
    /// it). Waits until it goes, or until its holder's deadline has passed
    /// since its last renewal we saw (then removes it); the caller looks again.
    async fn await_stand_down(
        &mut self,
        session: &mut Session,
        parent: &str,
        lease: &str,
    ) -> Result<(), Exit> {
        let path = format!("{parent}/{lease}");
        let (changed, held) = match watch_lease(&session.client, &path, session.timing).await {
            Ok((changed, AheadLease::Held(held))) => (changed, held),
            Ok((_, AheadLease::Absent)) => return Ok(()),
            Err(err) => return self.recover(session, err).await,
        };
        info!(
            event = "awaiting_stand_down",
            lease,
            mono_ns = clock::monotonic_ns(),
            "first in line, but an earlier leader's lease node is still there: waiting until it goes or its deadline passes"
        );
        tokio::select! {
            biased;
            state = session.link.changed() => {
                if state.is_terminated() {
                    return Err(Exit::SessionLost);
                }
            }
            command = self.commands.recv() => self.defer(command)?,
            _ = changed => {}
            _ = sleep_until(held.takeover_at().into()) => self.clear_stale_lease(session, &path, &held).await,
        }
        Ok(())
    }

    /// Removes an earlier leader's lease node once its deadline has passed,
    /// so nobody waits on it again; a renewal since (the version moved)
    /// wins. Best effort: if it stays, the next look waits on it again.
    async fn clear_stale_lease(&mut self, session: &mut Session, path: &str, held: &LeaderLease) {
        match session.client.delete(path, Some(held.version)).await {
            Ok(()) => info!(
                event = "stale_lease_removed",
                lease = path,
                "removed the lease node of a leader past its deadline"
            ),
            Err(err) => debug!(lease = path, error = %err, "could not remove a stale lease node"),
        }
    }

    /// Deletes our election node, riding out connection loss for as long as
    /// the session could still be alive.
    /// A leader deletes its lease node in the same transaction, so that the
    /// successor waits on one write.
    async fn delete_own(&mut self, session: &mut Session, node: &OwnNode, leading: bool) -> Result<(), Exit> {
        let started = Instant::now();
        let give_up = started + session.timing.deadline;
        let mut with_lease = leading;
        loop {
            let deleted = if with_lease {
                let mut multi = session.client.new_multi_writer();
                let lease = node.lease_path();
                match multi.add_delete(&node.path, None).and_then(|()| multi.add_delete(&lease, None)) {
                    Ok(()) => match multi.commit().await {
                        Ok(_) => Ok(()),
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

/// Sends `sync`, then reads the children and our own node, pipelined on one
/// connection: the reads are served after the sync, so they reflect every
/// write the ensemble committed before `at`.
async fn look(
    client: &zk::Client,
    clock: &dyn Clock,
    generation: u64,
    parent: &str,
    own: &str,
    with_children: bool,
) -> Result<Look, zk::Error> {
    let at = clock.now();
    let sync = client.sync(parent);
    let children = with_children.then(|| client.list_children(parent));
    let own = client.check_stat(own);
    sync.await?;
    let children = match children {
        Some(children) => children.await?,
        None => Vec::new(),
    };
    let own = own.await?;
    Ok(Look { at, generation, children, own })
}

/// Reads the children and our own node, without a `sync`: for a participant
/// that holds a recent proof and was just told its predecessor is gone.
async fn read_children(
    client: &zk::Client,
    proof: Proof,
    parent: &str,
    own: &str,
) -> Result<Look, zk::Error> {
    let children = client.list_children(parent);
    let own = client.check_stat(own);
    let children = children.await?;
    let own = own.await?;
    Ok(Look { at: proof.at, generation: proof.generation, children, own })
}

fn start_look(
    client: &zk::Client,
    clock: Arc<dyn Clock>,
    generation: u64,
    parent: &str,
    own: &str,
) -> LookFuture {
    let client = client.clone();
    let (parent, own) = (parent.to_string(), own.to_string());
    Box::pin(async move { look(&client, &*clock, generation, &parent, &own, false).await })
}

/// Watches the lease node of the node ahead. If it exists (the node ahead
/// leads), also reads it: `Some` lease, and a watch that fires on the next
/// renewal. If not, a watch that fires when it is created.
async fn watch_lease(
    client: &zk::Client,
    path: &str,
    timing: Timing,
) -> Result<(WatchFuture, AheadLease), zk::Error> {
    loop {
        match client.get_and_watch_data(path).await {
            Ok((data, stat, watcher)) => {
                // A lease node we cannot read is still a lease node: assume
                // a deadline as long as our own session timeout.
                let deadline = LeaseRecord::from_bytes(&data)
                    .map_or(timing.session_timeout, |record| Duration::from_millis(record.deadline_ms));
                let lease = LeaderLease { version: stat.version, seen_at: Instant::now(), deadline };
                return Ok((Box::pin(watcher.changed()), AheadLease::Held(lease)));
            }
            Err(zk::Error::NoNode) => match client.check_and_watch_stat(path).await? {
                (None, watcher) => return Ok((Box::pin(watcher.changed()), AheadLease::Absent)),
                // Created in between: read it.
                (Some(_), _) => continue,
            },
            Err(err) => return Err(err),
        }
    }
}

/// How a lease renewal went.
enum Renewal {
    /// Renewed: the proof is when it was sent.
    Renewed(Stamp),
    /// Our election node is gone.
    NodeGone,
    /// The lease node was missing (renew by creating it) or already there
    /// (renew by writing it): try again the other way.
    Retry { create: bool },
}

type RenewalFuture = Pin<Box<dyn Future<Output = Result<Renewal, zk::Error>> + Send>>;

/// Renews the lease: one transaction that checks our election node exists
/// and writes our lease node (creating it at the first renewal). The
/// ensemble accepts it only from a live session; it bumps the lease node's
/// version, which tells the next in line.
fn start_renewal(
    client: &zk::Client,
    clock: Arc<dyn Clock>,
    node: &OwnNode,
    record: &[u8],
    create: bool,
) -> RenewalFuture {
    let client = client.clone();
    let (own, lease, record) = (node.path.clone(), node.lease_path(), record.to_vec());
    Box::pin(async move {
        let at = clock.now();
        let mut multi = client.new_multi_writer();
        multi.add_check_version(&own, -1)?;
        if create {
            multi.add_create(&lease, &record, &EPHEMERAL)?;
        } else {
            multi.add_set_data(&lease, &record, None)?;
        }
        match multi.commit().await {
            Ok(_) => Ok(Renewal::Renewed(at)),
            Err(zk::MultiWriteError::OperationFailed { index: 0, .. }) => Ok(Renewal::NodeGone),
            Err(zk::MultiWriteError::OperationFailed { source: zk::Error::NoNode, .. }) => {
                Ok(Renewal::Retry { create: true })
            }
            Err(zk::MultiWriteError::OperationFailed { source: zk::Error::NodeExists, .. }) => {
                Ok(Renewal::Retry { create: false })
            }
            Err(zk::MultiWriteError::OperationFailed { source, .. }) => Err(source),
            Err(zk::MultiWriteError::RequestFailed { source }) => Err(source),
        }
    })
}

/// The first lease node among `children` that is not `own`'s: an earlier
/// leader's, which has not stood down yet (or could not remove it).
fn standing_lease(children: &[String], own: &OwnNode) -> Option<String> {
    let ours = node::lease_name(&own.name);
    children.iter().find(|c| node::is_lease_name(c) && Some(c.as_str()) != ours.as_deref()).cloned()
}

/// What our lease node holds while we lead under `timing`.
fn lease_record(node: &OwnNode, timing: &Timing) -> Vec<u8> {
    LeaseRecord { node: node.name.clone(), deadline_ms: timing.deadline.as_millis() as u64 }.to_bytes()
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
