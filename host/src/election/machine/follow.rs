//! Following: waiting in line behind the node just ahead; while next in
//! line, keeping a warm proof; taking over from a silent leader; and never
//! taking the lead before the previous leader has stood down.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::time::sleep_until;
use tracing::{debug, info, warn};
use zookeeper_client as zk;

use super::{Exit, Machine, OwnNode, Rejoin, Session, WatchFuture, own_node_gone, ready_now, watch_own};
use crate::clock::{self, Clock, Stamp};
use crate::election::ElectionState;
use crate::election::clock_rate::RateNews;
use crate::election::decide::{Basis, Decision, Knowledge, Warm, decide};
use crate::election::node::{self, LeaseRecord};
use crate::election::timing::Timing;

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
    /// The lease node's `czxid`: a node created again is another lease.
    czxid: i64,
    /// When we first learned of that version (kept across re-reads and
    /// reconnects, see `sighting.rs`). The renewal behind it was sent
    /// before, so the leader's deadline counts from earlier still.
    seen_at: Instant,
    /// The leader's deadline, from its lease record.
    deadline: Duration,
}

impl LeaderLease {
    /// When the leader has certainly demoted itself, if its clock runs at
    /// most `stretch` times slower than ours.
    fn takeover_at(&self, stretch: f64) -> Instant {
        // The leader's deadline, as its record says: derived from *its*
        // lease period (`--lease`) and session timeout, not ours, so a
        // takeover follows what the leader itself demotes on.
        // The margin covers the clocks of two hosts running at slightly
        // different rates, and the leader's demotion reaching its job.
        // A leader whose clock was measured slower than ours (the
        // clock-rate check) gets the wait stretched by that ratio.
        self.seen_at + (self.deadline + self.deadline * 3 / 20).mul_f64(stretch)
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
#[derive(Clone, Debug, PartialEq, Eq)]
enum LeaderLeft {
    /// Nothing new: look as usual.
    No,
    /// It may be gone (its lease node went): a plain read tells.
    Maybe,
    /// It is gone, and its lease node with it: their deletion was notified,
    /// or was our own takeover. [`decide`] says whether that is enough to
    /// lead on the warm proof without reading again.
    Certainly {
        /// The node that was ahead of us.
        departed: String,
        /// How we learned it: a notification, or our own takeover.
        path: LeadPath,
    },
}

/// Which path to the lead a `lead_decision` was taken on (its `path` field).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum LeadPath {
    /// The warm proof, after notifications said the node ahead and its
    /// lease node went: no read.
    Shortcut,
    /// A read of the election (behind a `sync`, or right after the
    /// notification that made us look).
    Full,
    /// The warm proof, after our own takeover of a silent leader.
    Takeover,
}

impl LeadPath {
    /// The `path` field's value.
    pub(super) fn as_str(self) -> &'static str {
        match self {
            LeadPath::Shortcut => "shortcut",
            LeadPath::Full => "full",
            LeadPath::Takeover => "takeover",
        }
    }
}

/// Logs the one structured event every decision to lead leaves behind
/// (`lead_decision`, fields `path`, `generation`, `proof_generation`, `why`,
/// `term`): the chaos checker reads it to tell which path a term began on,
/// and whether what it rested on was taken on the connection it led on.
fn log_lead_decision(path: LeadPath, generation: u64, proof_generation: u64, why: &str, node: &OwnNode) {
    info!(
        event = "lead_decision",
        path = path.as_str(),
        generation,
        proof_generation,
        why,
        term = node.term.0,
        mono_ns = clock::monotonic_ns(),
        "decided to lead"
    );
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

impl Machine {
    /// Waits in line, watching only the node just ahead, until we lead.
    ///
    /// The participant next in line (the one whose predecessor leads) keeps
    /// a *warm proof*: a `sync` + read of its own node every refresh, as a
    /// leader does, and a watch on its own node. When the leader's node is
    /// deleted (and its lease node with it: the leader stood down), it
    /// takes the lead on that proof without a read (see `docs/election.md`).
    /// Everyone else only waits.
    pub(super) async fn contend(&mut self, session: &mut Session, node: &OwnNode) -> Result<Rejoin, Exit> {
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
        // The children of the election path in the last look: what a warm
        // decision rests on.
        let mut seen: Vec<String> = Vec::new();
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
            // The plain read (no `sync`) after a notification is worth
            // taking only on the warm proof's connection, while it leaves
            // most of a lease: across a reconnect, notifications may have
            // been lost or reordered.
            let left = std::mem::replace(&mut leader_left, LeaderLeft::No);
            let generation = session.link.generation();
            let soon = self.shared.clock.now().after(timing.refresh);
            let mut fast = warm.filter(|proof| {
                left != LeaderLeft::No
                    && proof.generation == generation
                    && !timing.lease_end(proof.at).reached(soon)
            });
            if let (LeaderLeft::Certainly { departed, path }, Some(proof)) = (&left, warm) {
                // Whether our own node is quiet: the ensemble notifies one
                // connection in the order it applied changes, so if this
                // has not fired, our node outlived the departed one.
                let own_quiet = match own_watch.as_mut().map(ready_now) {
                    Some(None) => true,
                    Some(Some(event)) if event.event_type == zk::EventType::NodeDeleted => {
                        return Ok(own_node_gone(node));
                    }
                    // A session event: read instead, and watch again.
                    Some(Some(_)) => {
                        own_watch = None;
                        false
                    }
                    None => false,
                };
                let knowledge = Knowledge {
                    own: &node.name,
                    children: &seen,
                    basis: Basis::Warm(Warm {
                        departed,
                        proof_generation: proof.generation,
                        generation,
                        proof_fresh: !timing.lease_end(proof.at).reached(soon),
                        own_quiet,
                    }),
                };
                match decide(&knowledge) {
                    Decision::Lead => {
                        let why = match path {
                            LeadPath::Takeover => {
                                "took over a leader silent past its deadline; nothing else stood in the last look"
                            }
                            _ => {
                                "the node ahead and its lease node went; nothing else stood in the last look"
                            }
                        };
                        log_lead_decision(*path, generation, proof.generation, why, node);
                        return self.take_lead(session, node).await;
                    }
                    decision => {
                        // `Look` (or anything else the warm view cannot
                        // settle): sync, read, and decide again on that.
                        let why = match &decision {
                            Decision::Look { why } => *why,
                            _ => "the last look does not settle it",
                        };
                        debug!(
                            why,
                            decision = decision.name(),
                            "not leading on the warm proof; looking again"
                        );
                        fast = None;
                    }
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
            let decision =
                decide(&Knowledge { own: &node.name, children: &look.children, basis: Basis::Fresh });
            seen = look.children.clone();
            let (ahead, position) = match decision {
                Decision::Follow { ahead, position } => (ahead, position),
                Decision::Lead => {
                    log_lead_decision(
                        LeadPath::Full,
                        look.generation,
                        look.generation,
                        "first in line in a fresh look, and no other lease node stands",
                        node,
                    );
                    return self.take_lead(session, node).await;
                }
                // First in line; but a lease node of an earlier leader means
                // that leader has not stood down yet (it removes its lease
                // node only after it stopped its job).
                Decision::AwaitStandDown { lease } => {
                    self.await_stand_down(session, &parent, &lease).await?;
                    continue;
                }
                Decision::Rejoin => return Ok(Rejoin::Now),
                // Not on a fresh view; look again all the same.
                Decision::Look { .. } => continue,
            };
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
                match self.watch_lease(&session.client, &ahead_lease, timing).await {
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
            if let Some(lease) = &leader {
                self.note_leader_lease(&ahead, lease, timing);
            }
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
                let stretch = self.takeover_stretch();
                let takeover_at = leader.as_ref().map(|lease| lease.takeover_at(stretch));
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
                                    Some(_) => match self.watch_lease(&session.client, &ahead_lease, timing).await {
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
                                    AheadLease::Absent => {
                                        leader_left = LeaderLeft::Certainly { departed: ahead.clone(), path: LeadPath::Shortcut };
                                    }
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
                        if ahead_gone && event.event_type == zk::EventType::NodeDeleted {
                            // The leader stood down (its lease node went with
                            // or after its node): no need to read anything.
                            leader_left = LeaderLeft::Certainly { departed: ahead.clone(), path: LeadPath::Shortcut };
                            break;
                        }
                        // A renewal (or the lease's first write): note when.
                        match self.watch_lease(&session.client, &ahead_lease, timing).await {
                            Ok((watch, lease)) => {
                                lease_changed = watch;
                                leader = lease.held();
                                if ahead_gone && leader.is_none() {
                                    // The leader stood down.
                                    leader_left = LeaderLeft::Certainly { departed: ahead.clone(), path: LeadPath::Shortcut };
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
                            // Best effort: a read tells whether it went.
                            self.clear_stale_lease(session, &ahead_lease, &lease).await;
                            leader_left = LeaderLeft::Maybe;
                            break;
                        }
                        match self.take_over(session, node, &parent, &ahead_path, &ahead_lease, &lease).await? {
                            Takeover::Done => {
                                leader_left = LeaderLeft::Certainly { departed: ahead.clone(), path: LeadPath::Takeover };
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

    /// Watches the lease node of the node ahead. If it exists (the node
    /// ahead leads), also reads it: `Some` lease, and a watch that fires on
    /// the next renewal. If not, a watch that fires when it is created.
    /// Every version read feeds the takeover timer's first sights and the
    /// clock-rate check.
    async fn watch_lease(
        &mut self,
        client: &zk::Client,
        path: &str,
        timing: Timing,
    ) -> Result<(WatchFuture, AheadLease), zk::Error> {
        loop {
            match client.get_and_watch_data(path).await {
                Ok((data, stat, watcher)) => {
                    // A lease node we cannot read is still a lease node:
                    // assume a deadline as long as our own session timeout
                    // (never our own, maybe shorter, lease).
                    let record = LeaseRecord::from_bytes(&data);
                    let deadline = record
                        .as_ref()
                        .map_or(timing.session_timeout, |record| Duration::from_millis(record.deadline_ms));
                    let seen_at = self.first_seen.first_seen(path, stat.czxid, stat.version, Instant::now());
                    if let Some(record) = &record {
                        self.note_renewal(path, stat.czxid, stat.version, seen_at, record);
                    }
                    let lease = LeaderLease { version: stat.version, czxid: stat.czxid, seen_at, deadline };
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

    /// Feeds one lease version seen to the clock-rate check; logs a
    /// sustained skew once per process and publishes every estimate.
    fn note_renewal(&mut self, path: &str, czxid: i64, version: i32, seen_at: Instant, record: &LeaseRecord) {
        let refresh = Duration::from_millis(record.refresh_ms);
        let ratio = match self.clock_rate.saw(path, czxid, refresh, version, seen_at) {
            RateNews::Quiet => return,
            RateNews::Estimate(ratio) => ratio,
            RateNews::Skew(ratio) => {
                if !self.clock_skew_logged {
                    self.clock_skew_logged = true;
                    warn!(
                        event = "clock_rate_skew",
                        ratio,
                        leader = %record.node,
                        "the leader's renewals come at a rate that differs from its recorded refresh by more than 5% on our clock: the clocks of these hosts run at different rates, outside what the election assumes (see docs/election.md)"
                    );
                }
                ratio
            }
        };
        *self.shared.clock_rate.lock().unwrap() = Some(ratio);
    }

    /// How much longer than its own deadline says a leader may take to
    /// demote itself, by our clock: the measured clock-rate ratio, when the
    /// leader's clock runs slower than ours.
    fn takeover_stretch(&self) -> f64 {
        self.clock_rate.ratio().unwrap_or(1.0).max(1.0)
    }

    /// Logs, once per process, that the leader's lease (its deadline, as its
    /// record says) differs from the one we would hold: the hosts of this
    /// election are configured differently (`--lease`, `--session-timeout`)
    /// or were granted different session timeouts. Nothing else changes: a
    /// takeover always follows the leader's own record, which is what the
    /// leader itself demotes on, never our settings.
    fn note_leader_lease(&mut self, leader: &str, lease: &LeaderLease, timing: Timing) {
        let own_ms = timing.deadline.as_millis();
        if self.lease_mismatch_logged || lease.deadline.as_millis() == own_ms {
            return;
        }
        self.lease_mismatch_logged = true;
        info!(
            event = "lease_mismatch",
            node = leader,
            leader_deadline_ms = lease.deadline.as_millis() as u64,
            own_deadline_ms = own_ms as u64,
            "the leader's lease differs from ours (hosts configured differently?); a takeover of it follows its own deadline"
        );
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
        // Nothing new learned: the takeover timer keeps its first sight
        // (a retry comes right away, after a round trip).
        let unchanged = Takeover::Renewed(*lease);
        let sync = session.client.sync(parent);
        let read = session.client.check_stat(lease_path);
        let current = match (sync.await, read.await) {
            (Ok(()), Ok(stat)) => stat,
            (Err(err), _) | (_, Err(err)) => {
                self.recover(session, err).await?;
                return Ok(unchanged);
            }
        };
        let Some(stat) = current else { return Ok(Takeover::Gone) };
        if stat.version != lease.version || stat.czxid != lease.czxid {
            let seen_at = self.first_seen.first_seen(lease_path, stat.czxid, stat.version, Instant::now());
            return Ok(Takeover::Renewed(LeaderLease {
                version: stat.version,
                czxid: stat.czxid,
                seen_at,
                ..*lease
            }));
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
            return Ok(unchanged);
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
            // The next attempt reads the new version.
            Err(zk::MultiWriteError::OperationFailed { index: 0, source: zk::Error::BadVersion }) => {
                Ok(unchanged)
            }
            Err(zk::MultiWriteError::OperationFailed { index: 3, .. }) => Ok(Takeover::OwnGone),
            Err(zk::MultiWriteError::OperationFailed { .. }) => Ok(Takeover::Gone),
            Err(zk::MultiWriteError::RequestFailed { source }) => {
                self.recover(session, source).await?;
                Ok(unchanged)
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
        let (changed, held) = match self.watch_lease(&session.client, &path, session.timing).await {
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
        let takeover_at = held.takeover_at(self.takeover_stretch());
        tokio::select! {
            biased;
            state = session.link.changed() => {
                if state.is_terminated() {
                    return Err(Exit::SessionLost);
                }
            }
            command = self.commands.recv() => self.defer(command)?,
            _ = changed => {}
            _ = sleep_until(takeover_at.into()) => self.clear_stale_lease(session, &path, &held).await,
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
