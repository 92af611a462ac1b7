//! The election core: one ZooKeeper session, one election node, and at every
//! moment an answer to "does this host lead?".
//!
//! It knows nothing of WebAssembly. It reports leadership as
//! [`LeadershipEvent`]s over a channel and answers [`Election::confirmed`]
//! for callers about to do leader work. Every state change goes through
//! `machine.rs` (its phases: `machine/join.rs`, `follow.rs`, `lead.rs`);
//! `link.rs` owns connection-state changes; `docs/election.md` explains the
//! states, the lease and the deadline.
//!
//! ```text
//!            connect + create node
//!  Joining ─────────────────────────▶ Follower ──(lowest node, proof)──▶ Leader
//!     ▲                                  ▲                               │   ▲
//!     │ session lost / node gone         │ resign (back of the line)     │   │ proof again
//!     │ (after jittered backoff)         └───────────────────────────────┤   │ (Resumed)
//!     │                                                                  ▼   │
//!     └──────────────── Demoted ◀──── deadline / expiry ────────────── Suspended
//! ```

pub mod clock_rate;
pub mod decide;
mod link;
mod machine;
pub mod node;
mod security;
mod sighting;
pub mod timing;

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::{mpsc, oneshot, watch};

pub use node::Participant;
pub use timing::Timing;

use crate::clock::{Clock, Stamp, SystemClock};
use crate::zkconnect::{NodeAcl, ZkAccess};
use crate::zkpath::ConnectString;

/// The fencing token of one leader's term.
///
/// It is the `czxid` of the leader's election node: the ZooKeeper transaction
/// id that created it. zxids are assigned by the ensemble in one total order
/// that survives restarts of every server and every client, and a successor's
/// node is always created after its predecessor's (a new node always gets a
/// higher sequence than every node alive, and leaders take turns in sequence
/// order), so the terms of successive leaders strictly increase, even across
/// session expiries, re-created election paths (where sequence numbers
/// restart but zxids do not) and restarts of every host. A leader keeps its
/// term while it is suspended and resumed, because its node lives on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Term(pub u64);

impl fmt::Display for Term {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Why a leader stopped leading.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum DemoteReason {
    /// The host is shutting down.
    Shutdown,
    /// Leadership was given up on purpose.
    Resigned,
    /// Leadership could not be confirmed again before the safe deadline.
    ConnectionLost,
    /// The ensemble expired the session.
    SessionExpired,
    /// The election node disappeared under a live session.
    NodeDeleted,
}

impl DemoteReason {
    /// The reason as it appears in logs: `connection-lost`, ...
    pub fn as_str(self) -> &'static str {
        match self {
            DemoteReason::Shutdown => "shutdown",
            DemoteReason::Resigned => "resigned",
            DemoteReason::ConnectionLost => "connection-lost",
            DemoteReason::SessionExpired => "session-expired",
            DemoteReason::NodeDeleted => "node-deleted",
        }
    }
}

impl fmt::Display for DemoteReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A change of leadership, in the order it happened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LeadershipEvent {
    /// This host has a node in the election (after every join or rejoin).
    Joined {
        /// The election node's name.
        node: String,
        /// Its sequence number.
        sequence: i64,
        /// The ZooKeeper session that owns it.
        session: i64,
    },
    /// This host leads, with a fresh proof from the ensemble.
    Elected {
        /// The fencing token of the new term.
        term: Term,
    },
    /// Leadership is in doubt: no leader work may start.
    Suspended {
        /// The term in doubt.
        term: Term,
    },
    /// The ensemble confirmed leadership again; same term.
    Resumed {
        /// The term that continues.
        term: Term,
    },
    /// The term is over.
    Demoted {
        /// The term that ended.
        term: Term,
        /// Why it ended.
        reason: DemoteReason,
    },
}

/// Where this participant stands in the election.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ElectionState {
    /// Connecting, creating or finding the election node.
    Joining,
    /// In line; watching only the node just ahead.
    Follower {
        /// The node just ahead of ours.
        ahead: String,
        /// Our place in line (0 would be the leader).
        position: usize,
    },
    /// Leading with a fresh proof.
    Leader {
        /// The fencing token.
        term: Term,
    },
    /// Leading until proven otherwise, but without recent proof.
    Suspended {
        /// The term in doubt.
        term: Term,
    },
    /// Out of the election (shut down, or resigned and waiting to rejoin).
    Stopped,
}

/// Recent proof that this host leads: leader work may run until `expires`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lease {
    /// The term the proof is for.
    pub term: Term,
    /// When the proof stops being good enough: reached when CLOCK_BOOTTIME
    /// (which counts suspend) or the wall clock gets there.
    pub expires: Stamp,
}

/// What a leader needs to make writes that fail once it no longer leads.
#[derive(Clone)]
pub struct Fence {
    /// The session that owns the election node.
    pub client: zookeeper_client::Client,
    /// The leader's election node; a write checked against it fails after
    /// the node is gone (session expired, resigned, deleted).
    pub node_path: String,
    /// The term the node stands for.
    pub term: Term,
    /// The ACL of the state nodes the leader creates.
    pub acl: NodeAcl,
}

impl fmt::Debug for Fence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Fence").field("node_path", &self.node_path).field("term", &self.term).finish()
    }
}

/// How to join an election.
#[derive(Clone, Debug)]
pub struct ElectionConfig {
    /// The ensemble to connect to.
    pub connect: ConnectString,
    /// The election path, e.g. `/zkrun/elections/nightly`.
    pub path: String,
    /// Who we are, as written into the election node.
    pub participant: Participant,
    /// The session timeout to ask the ensemble for.
    pub session_timeout: Duration,
    /// The lease period to derive leases and takeovers from (`--lease`),
    /// shorter than the session timeout and at least
    /// [`timing::MIN_LEASE`]; `None` derives them from the session timeout.
    /// Cut to the negotiated session timeout if that is shorter.
    pub lease: Option<Duration>,
    /// Credentials, TLS and the ACL of the nodes we create.
    pub access: ZkAccess,
}

/// Counters of the work this participant did, to show the election has no
/// herd effect.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ElectionStats {
    /// Deletions of the node ahead that woke this participant up.
    pub wakeups: u64,
    /// Full looks at the election (sync + list children + own node).
    pub reads: u64,
    /// Sessions established.
    pub sessions: u64,
    /// Silent leaders this participant took over from.
    pub takeovers: u64,
    /// Connections a session got back after losing one (to the same or
    /// another server); new sessions are counted in `sessions`.
    pub reconnects: u64,
}

#[derive(Default)]
struct Counters {
    wakeups: AtomicU64,
    reads: AtomicU64,
    sessions: AtomicU64,
    takeovers: AtomicU64,
    reconnects: AtomicU64,
}

/// State shared between the election task and its handles.
struct Shared {
    clock: Arc<dyn Clock>,
    lease: Mutex<Option<Lease>>,
    fence: Mutex<Option<Fence>>,
    timing: Mutex<Option<Timing>>,
    state: watch::Sender<ElectionState>,
    counters: Counters,
    /// Whether the session is connected to a server right now (kept by
    /// `link.rs`, the owner of connection-state changes).
    connected: AtomicBool,
    /// The last estimate of the leader's clock rate against ours, while
    /// next in line (see `clock_rate.rs`).
    clock_rate: Mutex<Option<f64>>,
}

enum Command {
    Resign { rejoin_after: Duration, done: oneshot::Sender<()> },
    Shutdown { done: oneshot::Sender<()> },
}

/// A handle to a running election. Cheap to clone.
#[derive(Clone)]
pub struct Election {
    shared: Arc<Shared>,
    commands: mpsc::UnboundedSender<Command>,
}

impl Election {
    /// Starts participating in the background; events arrive on the receiver.
    pub fn start(config: ElectionConfig) -> (Election, mpsc::UnboundedReceiver<LeadershipEvent>) {
        let (state, _) = watch::channel(ElectionState::Joining);
        let shared = Arc::new(Shared {
            clock: Arc::new(SystemClock),
            lease: Mutex::new(None),
            fence: Mutex::new(None),
            timing: Mutex::new(None),
            state,
            counters: Counters::default(),
            connected: AtomicBool::new(false),
            clock_rate: Mutex::new(None),
        });
        let (commands_tx, commands_rx) = mpsc::unbounded_channel();
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let machine = machine::Machine::new(config, shared.clone(), events_tx, commands_rx);
        tokio::spawn(machine.run());
        (Election { shared, commands: commands_tx }, events_rx)
    }

    /// Recent proof of leadership, if this host leads and the ensemble
    /// confirmed it within the lease. Ask right before running leader work:
    /// it costs no round trip, and it turns false by itself when proof ages,
    /// even in a process that was frozen, or a machine that was suspended or
    /// paused, and has not yet noticed.
    pub fn confirmed(&self) -> Option<Lease> {
        let lease = (*self.shared.lease.lock().unwrap())?;
        (!lease.expires.reached(self.shared.clock.now())).then_some(lease)
    }

    /// How many of our seconds one second of the leader's clock takes, as
    /// measured over its recent renewals while this participant was next
    /// in line; `None` until measured. Outside 1 ± 5%, the clocks are
    /// outside what the election assumes (`docs/election.md`).
    pub fn clock_rate_ratio(&self) -> Option<f64> {
        *self.shared.clock_rate.lock().unwrap()
    }

    /// The current state.
    pub fn state(&self) -> ElectionState {
        self.shared.state.borrow().clone()
    }

    /// A receiver that sees every state change.
    pub fn watch_state(&self) -> watch::Receiver<ElectionState> {
        self.shared.state.subscribe()
    }

    /// The lease and deadline in force, once a session is established.
    pub fn timing(&self) -> Option<Timing> {
        *self.shared.timing.lock().unwrap()
    }

    /// The leader's session and node, for fenced writes; `None` unless leading.
    pub fn fence(&self) -> Option<Fence> {
        self.shared.fence.lock().unwrap().clone()
    }

    /// Work counters (watch wake-ups, reads, sessions).
    pub fn stats(&self) -> ElectionStats {
        let c = &self.shared.counters;
        ElectionStats {
            wakeups: c.wakeups.load(Ordering::Relaxed),
            reads: c.reads.load(Ordering::Relaxed),
            sessions: c.sessions.load(Ordering::Relaxed),
            takeovers: c.takeovers.load(Ordering::Relaxed),
            reconnects: c.reconnects.load(Ordering::Relaxed),
        }
    }

    /// Whether the session is connected to a server right now.
    pub fn connected(&self) -> bool {
        self.shared.connected.load(Ordering::Relaxed)
    }

    /// Gives up the place in line (and leadership, if held) by deleting the
    /// election node, then joins again at the back after `rejoin_after`.
    /// Returns once the node is deleted.
    pub async fn resign(&self, rejoin_after: Duration) {
        let (done, wait) = oneshot::channel();
        if self.commands.send(Command::Resign { rejoin_after, done }).is_ok() {
            let _ = wait.await;
        }
    }

    /// Leaves the election: demotes if leading, deletes the node, closes the
    /// session. Returns when that is done (or was already).
    pub async fn shutdown(&self) {
        let (done, wait) = oneshot::channel();
        if self.commands.send(Command::Shutdown { done }).is_ok() {
            let _ = wait.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;

    /// A handle whose lease is read on `clock`, with no machine behind it.
    fn handle(clock: Arc<ManualClock>) -> Election {
        let (state, _) = watch::channel(ElectionState::Joining);
        let shared = Arc::new(Shared {
            clock,
            lease: Mutex::new(None),
            fence: Mutex::new(None),
            timing: Mutex::new(None),
            state,
            counters: Counters::default(),
            connected: AtomicBool::new(false),
            clock_rate: Mutex::new(None),
        });
        Election { shared, commands: mpsc::unbounded_channel().0 }
    }

    /// Grants a lease as the machine does: from a proof read on `clock`.
    fn grant(election: &Election, clock: &ManualClock, timing: &Timing) {
        let proof = clock.now();
        *election.shared.lease.lock().unwrap() =
            Some(Lease { term: Term(7), expires: timing.lease_end(proof) });
    }

    #[test]
    fn a_lease_lasts_half_the_session_timeout_from_its_proof() {
        let clock = Arc::new(ManualClock::new());
        let election = handle(clock.clone());
        let timing = Timing::new(Duration::from_secs(4));
        assert_eq!(election.confirmed(), None);
        grant(&election, &clock, &timing);
        clock.run(Duration::from_millis(1999));
        assert_eq!(election.confirmed().map(|l| l.term), Some(Term(7)));
        clock.run(Duration::from_millis(1));
        assert_eq!(election.confirmed(), None);
    }

    #[test]
    fn a_suspended_machine_wakes_with_its_lease_expired() {
        let clock = Arc::new(ManualClock::new());
        let election = handle(clock.clone());
        let timing = Timing::new(Duration::from_secs(4));
        grant(&election, &clock, &timing);
        clock.run(Duration::from_millis(500));
        // CLOCK_MONOTONIC does not move during suspend; CLOCK_BOOTTIME does.
        let before = clock.now().mono_ns;
        clock.suspend(Duration::from_secs(10));
        assert_eq!(clock.now().mono_ns, before);
        assert_eq!(election.confirmed(), None);
    }

    #[test]
    fn a_paused_vm_wakes_with_its_lease_expired() {
        let clock = Arc::new(ManualClock::new());
        let election = handle(clock.clone());
        let timing = Timing::new(Duration::from_secs(4));
        grant(&election, &clock, &timing);
        clock.run(Duration::from_millis(500));
        // The hypervisor paused the VM longer than the session timeout: the
        // guest's BOOTTIME missed it too; only the wall clock jumped.
        let before = clock.now().boot_ns;
        clock.pause_vm(Duration::from_secs(10));
        assert_eq!(clock.now().boot_ns, before);
        assert_eq!(election.confirmed(), None);
    }

    #[test]
    fn a_wall_clock_step_back_does_not_stretch_a_lease() {
        let clock = Arc::new(ManualClock::new());
        let election = handle(clock.clone());
        let timing = Timing::new(Duration::from_secs(4));
        grant(&election, &clock, &timing);
        // NTP steps the wall clock back an hour: BOOTTIME still ends the
        // lease on time.
        clock.step_wall_back(Duration::from_secs(3600));
        clock.run(Duration::from_millis(1999));
        assert!(election.confirmed().is_some());
        clock.run(Duration::from_millis(1));
        assert_eq!(election.confirmed(), None);
    }
}
