//! Chaos: a seeded schedule of faults against a real ensemble and real zkrun
//! processes running the `witness` plugin; the checker ([`crate::checker`])
//! then reads what actually happened from their logs, their journals, the
//! faults as applied, and ZooKeeper.

use std::fmt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::seq::{IndexedRandom, SliceRandom};
use rand::{Rng, SeedableRng};

pub use crate::checker::{FaultSpan, History, Report, check};
use crate::checker::{HttpTally, tick_start};
use crate::ensemble::EnsembleOptions;
pub use crate::properties::{ByteArrival, Decisions};
use crate::receiver::Receiver;
use crate::slots::{LedgerWatch, ScheduledRun};
use crate::{Ensemble, Event, EventLog, Process, Proxy, TempDir, monotonic_ns, paths};

const ELECTION: &str = "/zkrun/chaos";

/// Every fenced write of a participant waits this long after its permit
/// check (zkrun's test failpoint), so that `PauseMidWrite` can freeze a
/// leader with a write in flight.
const WRITE_DELAY: &str = "25ms";

/// The state's byte quota the participants run with (zkrun's smallest):
/// the witness's quota bursts pass it.
pub const STATE_MAX_BYTES: usize = 1 << 20;

/// The write rate the participants run with: the witness's bursts pass it.
const STATE_MAX_WRITES: u32 = 20;

/// How to run the chaos.
#[derive(Clone, Debug)]
pub struct ChaosConfig {
    /// Seed of the fault schedule: the same seed, the same schedule.
    pub seed: u64,
    /// How long to inject faults for.
    pub duration: Duration,
    /// ZooKeeper servers (3 or 5).
    pub servers: usize,
    /// zkrun participants.
    pub participants: usize,
    /// Session timeout the participants ask for.
    pub session_timeout: Duration,
    /// Lease period the participants ask for (`--lease`); `None`: derived
    /// from the session timeout.
    pub lease: Option<Duration>,
    /// Tick interval of the participants.
    pub tick: Duration,
    /// The kinds of fault to draw from (all of them by default).
    pub kinds: Vec<FaultKind>,
    /// Print each fault as it happens.
    pub verbose: bool,
    /// Write every participant's log and journal lines here (`<id> <line>`),
    /// and the faults as applied, for reading a violation's evidence.
    pub save: Option<PathBuf>,
    /// Run every participant under libfaketime with its clocks at this
    /// rate (a check of the checker: outside the documented ±15%
    /// assumption, it must report what the skew breaks).
    pub skew_all: Option<f64>,
    /// Scheduled mode: run the witness once per slot of this period
    /// (`zkrun --every`) instead of every tick, and check the slot ledger.
    pub every: Option<Duration>,
}

impl ChaosConfig {
    /// The lease period `L` the participants derive their timing from.
    pub fn period(&self) -> Duration {
        self.lease.map_or(self.session_timeout, |lease| lease.min(self.session_timeout))
    }

    /// The settings of the test suite's short run, with `seed` and `duration`.
    pub fn new(seed: u64, duration: Duration) -> ChaosConfig {
        ChaosConfig {
            seed,
            duration,
            servers: 3,
            participants: 5,
            session_timeout: Duration::from_secs(2),
            lease: None,
            tick: Duration::from_millis(100),
            kinds: FaultKind::ALL.to_vec(),
            verbose: false,
            save: None,
            skew_all: None,
            every: None,
        }
    }
}

/// The faults the schedule draws from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FaultKind {
    /// SIGKILL a participant, restart it later.
    KillParticipant,
    /// SIGTERM a participant, restart it later.
    StopParticipant,
    /// SIGSTOP a participant for less than the session timeout.
    PauseShort,
    /// SIGSTOP a participant for longer than the session timeout.
    PauseLong,
    /// Cut a participant off from the ensemble, shortly.
    PartitionShort,
    /// Cut a participant off from the ensemble for longer than the session timeout.
    PartitionLong,
    /// Kill a ZooKeeper follower, restart it later.
    KillFollower,
    /// Kill the ensemble's leader server, restart it later.
    KillEnsembleLeader,
    /// Kill a majority of the servers, restart them later.
    QuorumLoss,
    /// Kill every server and every participant, start them all again.
    RestartAll,
    /// An outside client deletes a participant's election node.
    DeleteNode,
    /// Delay a participant's server-to-client bytes (100 ms to T).
    SlowLink,
    /// Restart a server with a lower `maxSessionTimeout` (T/2), later back.
    LowerMaxSession,
    /// Cut a participant off with its proxy refusing connections, long
    /// enough for its client's reconnect backoff to grow, then heal.
    ReconnectBackoff,
    /// Freeze the leader while a state write of its waits to be sent, past
    /// its deadline (so it is taken over) but not past its session.
    PauseMidWrite,
    /// Compound: slow the leader's inbound link (T/2 to T), then delete its
    /// node while the delay is still in force: it hears of the deletion late.
    SlowThenDelete,
    /// Compound: cut the leader off, then delete its node during the cut.
    PartitionThenDelete,
    /// The issue-22 sequence: with the leader's inbound link slow, delete
    /// its node; a participant joins; then the next in line leaves
    /// (SIGTERM). The joiner must not lead while the old leader may work.
    DeleteJoinLeave,
    /// Delete the leader's node, then, shortly after, the node of the
    /// participant that was next in line.
    DeleteTwice,
    /// SIGKILL a participant and start it again at once with the same id,
    /// while its old session (and node) still lives.
    RestartSameId,
    /// Slow the first in line's inbound link (between L/3 and L), then stop
    /// the leader: a healthy participant must lead within a bound.
    SlowHeadOfLine,
    /// Freeze the leader and reset the next in line's connection every
    /// 0.5 s: the takeover must still come in time.
    ResetWhileFrozen,
    /// Restart a participant under libfaketime with its clocks running at
    /// ×1.05 (inside the documented 15% assumption), later back to normal.
    ClockSkew,
    /// Reset the next in line's connections, then (0–100 ms later, once it
    /// reconnected) SIGTERM the leader: the departure is notified on the
    /// new connection, while the warm proof was taken on the old one. Done
    /// twice in a row, the second time on the new leader.
    ResetThenStop,
}

impl FaultKind {
    /// Every kind of fault.
    pub const ALL: [FaultKind; 24] = [
        FaultKind::KillParticipant,
        FaultKind::StopParticipant,
        FaultKind::PauseShort,
        FaultKind::PauseLong,
        FaultKind::PartitionShort,
        FaultKind::PartitionLong,
        FaultKind::KillFollower,
        FaultKind::KillEnsembleLeader,
        FaultKind::QuorumLoss,
        FaultKind::RestartAll,
        FaultKind::DeleteNode,
        FaultKind::SlowLink,
        FaultKind::LowerMaxSession,
        FaultKind::ReconnectBackoff,
        FaultKind::PauseMidWrite,
        FaultKind::SlowThenDelete,
        FaultKind::PartitionThenDelete,
        FaultKind::DeleteJoinLeave,
        FaultKind::DeleteTwice,
        FaultKind::RestartSameId,
        FaultKind::SlowHeadOfLine,
        FaultKind::ResetWhileFrozen,
        FaultKind::ClockSkew,
        FaultKind::ResetThenStop,
    ];

    /// Whether it is one of the compound kinds or operator sequences (more
    /// than one action, overlapping).
    pub fn is_compound(self) -> bool {
        matches!(
            self,
            FaultKind::SlowThenDelete
                | FaultKind::PartitionThenDelete
                | FaultKind::DeleteJoinLeave
                | FaultKind::DeleteTwice
                | FaultKind::SlowHeadOfLine
                | FaultKind::ResetWhileFrozen
                | FaultKind::ResetThenStop
        )
    }
}

/// Which participant a fault hits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Target {
    /// The one leading when the fault strikes.
    Leader,
    /// A participant by index.
    Index(usize),
}

/// One fault of the schedule.
#[derive(Clone, Debug)]
pub struct Fault {
    kind: FaultKind,
    target: Target,
    gap: Duration,
    hold: Duration,
    /// How strong, in 0..1 (the delay of a slow link).
    level: f64,
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?} ({:?}) for {:?} after {:?}", self.kind, self.target, self.hold, self.gap)
    }
}

/// The fault schedule of a seed: every kind once in a random order first,
/// so that even a short run sees all of them, then random draws, without
/// end. The same seed gives the same sequence of faults.
pub struct Schedule {
    rng: StdRng,
    kinds: Vec<FaultKind>,
    first: Vec<FaultKind>,
    session_timeout: Duration,
    /// The lease period `L` (the session timeout without `--lease`).
    period: Duration,
    participants: usize,
}

impl Schedule {
    /// The schedule for `config.seed`.
    pub fn new(config: &ChaosConfig) -> Schedule {
        let mut rng = StdRng::seed_from_u64(config.seed);
        let mut first = config.kinds.clone();
        first.shuffle(&mut rng);
        first.reverse();
        Schedule {
            rng,
            kinds: config.kinds.clone(),
            first,
            session_timeout: config.session_timeout,
            period: config.period(),
            participants: config.participants,
        }
    }
}

impl Schedule {
    /// Whether every kind has been drawn once.
    pub fn covered(&self) -> bool {
        self.first.is_empty()
    }
}

impl Iterator for Schedule {
    type Item = Fault;

    fn next(&mut self) -> Option<Fault> {
        let rng = &mut self.rng;
        let t = self.session_timeout;
        let kind = self.first.pop().unwrap_or_else(|| self.kinds[rng.random_range(0..self.kinds.len())]);
        let target = if rng.random_bool(0.5) {
            Target::Leader
        } else {
            Target::Index(rng.random_range(0..self.participants))
        };
        let ms =
            |range: std::ops::Range<u64>, rng: &mut StdRng| Duration::from_millis(rng.random_range(range));
        let hold = match kind {
            FaultKind::PauseShort | FaultKind::PartitionShort => t.mul_f64(rng.random_range(0.1..0.6)),
            FaultKind::PauseLong | FaultKind::PartitionLong => t.mul_f64(rng.random_range(1.3..2.5)),
            FaultKind::QuorumLoss => t.mul_f64(rng.random_range(0.3..2.0)),
            FaultKind::KillParticipant | FaultKind::StopParticipant => ms(200..2000, rng),
            FaultKind::KillFollower | FaultKind::KillEnsembleLeader | FaultKind::RestartAll => {
                ms(500..3000, rng)
            }
            FaultKind::DeleteNode => ms(500..1500, rng),
            FaultKind::SlowLink => ms(1000..4000, rng),
            FaultKind::LowerMaxSession => ms(2000..5000, rng),
            FaultKind::ReconnectBackoff => t.mul_f64(rng.random_range(1.5..3.0)),
            FaultKind::PauseMidWrite => t.mul_f64(rng.random_range(0.88..0.97)),
            FaultKind::SlowThenDelete | FaultKind::PartitionThenDelete => {
                t.mul_f64(rng.random_range(1.0..2.0))
            }
            FaultKind::DeleteJoinLeave => t.mul_f64(rng.random_range(1.5..2.5)),
            FaultKind::DeleteTwice => ms(500..1500, rng),
            FaultKind::RestartSameId => ms(0..200, rng),
            // Long enough for the bound on a healthy participant leading.
            FaultKind::SlowHeadOfLine => self.period.mul_f64(3.0) + ms(2000..3000, rng),
            FaultKind::ResetWhileFrozen => t.mul_f64(rng.random_range(1.3..2.0)),
            FaultKind::ClockSkew => ms(4000..8000, rng),
            FaultKind::ResetThenStop => ms(500..1500, rng),
        };
        let level = rng.random_range(0.0..1.0);
        let gap = ms(500..3000, rng);
        Some(Fault { kind, target, gap, hold, level })
    }
}

/// One run of a participant: its process and its journal.
struct Incarnation {
    /// `w0#2`: slot `w0`, its third process.
    id: String,
    process: Process,
    journal: PathBuf,
    /// Its clocks' rate under libfaketime, if skewed.
    skew: Option<Skew>,
}

/// A participant run under libfaketime at `rate`: its CLOCK_MONOTONIC reads
/// `origin + (real - origin) × rate`, where `origin` is when it started.
#[derive(Clone, Copy, Debug)]
struct Skew {
    origin_ns: u64,
    rate: f64,
}

impl Skew {
    /// The real CLOCK_MONOTONIC time of a time this participant logged.
    fn real(&self, faked: u64) -> u64 {
        if faked <= self.origin_ns {
            return faked;
        }
        self.origin_ns + ((faked - self.origin_ns) as f64 / self.rate) as u64
    }

    /// The line with every time in it (JSON fields and the witness's words)
    /// put back on the real clock, so the checker compares it with others.
    fn normalize(&self, raw: &str) -> String {
        let Ok(mut json) = serde_json::from_str::<serde_json::Value>(raw) else { return raw.to_string() };
        for field in ["mono_ns", "proof_ns", "lease_end_ns", "deadline_ns"] {
            if let Some(t) = json[field].as_u64() {
                json[field] = self.real(t).into();
            }
        }
        if let Some(message) = json["message"].as_str() {
            let times = ["witness ", "start ", "slot "].iter().any(|p| message.starts_with(p));
            if times {
                let words: Vec<String> = message
                    .split_whitespace()
                    .map(|w| match w.parse::<u64>() {
                        // Times are the only numbers this large in these lines.
                        Ok(t) if t > 1_000_000_000 => self.real(t).to_string(),
                        _ => w.to_string(),
                    })
                    .collect();
                json["message"] = words.join(" ").into();
            }
        }
        json.to_string()
    }
}

/// Where Debian's `faketime` package puts the library.
const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";

/// One participant slot: the process running now, and those that ran before.
struct Slot {
    id: String,
    proxy: Proxy,
    current: Option<Incarnation>,
    past: Vec<Incarnation>,
    paused: bool,
}

impl Slot {
    fn process(&self) -> Option<&Process> {
        self.current.as_ref().map(|c| &c.process)
    }
}

struct World {
    config: ChaosConfig,
    ensemble: Ensemble,
    /// Where every leader's witness POSTs each tick, fencing on the term.
    receiver: Receiver,
    slots: Vec<Slot>,
    journals: TempDir,
    spans: Vec<FaultSpan>,
}

impl World {
    fn start_participant(&mut self, i: usize) {
        self.start_participant_at(i, self.config.skew_all);
    }

    /// Starts participant `i`, its clocks running at `rate` if given.
    fn start_participant_at(&mut self, i: usize, rate: Option<f64>) {
        let slot = &mut self.slots[i];
        if slot.current.is_some() {
            return;
        }
        let id = format!("{}#{}", slot.id, slot.past.len());
        let journal = self.journals.path().join(&id);
        std::fs::create_dir_all(&journal).expect("journal dir");
        let mut args: Vec<std::ffi::OsString> = vec![
            "--plugin".into(),
            paths::plugin("witness").into(),
            "--zk".into(),
            slot.proxy.connect_string().into(),
            "--election".into(),
            ELECTION.into(),
            "--tick".into(),
            format!("{}ms", self.config.tick.as_millis()).into(),
            "--session-timeout".into(),
            format!("{}ms", self.config.session_timeout.as_millis()).into(),
            // Lease grants (lease end, deadline) are logged at debug level.
            "--log-level".into(),
            "info,zkrun::election::machine=debug".into(),
            "--plugin-config".into(),
            "blind=on".into(),
            "--plugin-config".into(),
            "slow-body=on".into(),
            "--plugin-config".into(),
            "quota=on".into(),
            "--state-max-bytes".into(),
            STATE_MAX_BYTES.to_string().into(),
            "--state-max-writes".into(),
            STATE_MAX_WRITES.to_string().into(),
            "--plugin-config".into(),
            format!("url={}tick", self.receiver.base_url()).into(),
            "--allow-http".into(),
            self.receiver.base_url().into(),
            "--grant-dir".into(),
            format!("{}:/journal", journal.display()).into(),
        ];
        if let Some(lease) = self.config.lease {
            args.extend(["--lease".into(), format!("{}ms", lease.as_millis()).into()]);
        }
        if let Some(every) = self.config.every {
            args.extend(["--every".into(), format!("{}ms", every.as_millis()).into()]);
        }
        let mut env =
            vec![(zkrun::state::zookeeper::WRITE_DELAY_FAILPOINT.to_string(), WRITE_DELAY.to_string())];
        let skew = rate.map(|rate| {
            assert!(
                std::path::Path::new(LIBFAKETIME).exists(),
                "ClockSkew needs libfaketime at {LIBFAKETIME}: install Debian's faketime (scripts/setup.sh)"
            );
            env.push(("LD_PRELOAD".into(), LIBFAKETIME.into()));
            env.push(("FAKETIME".into(), format!("+0 x{rate}")));
            Skew { origin_ns: monotonic_ns(), rate }
        });
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let process = Process::zkrun_with_env(&slot.id, &args, &env);
        slot.current = Some(Incarnation { id, process, journal, skew });
    }

    fn retire(&mut self, i: usize) {
        if let Some(p) = self.slots[i].current.take() {
            self.slots[i].past.push(p);
        }
        self.slots[i].paused = false;
    }

    /// The participant leading now, judged from its latest leadership event.
    fn leader(&self) -> Option<usize> {
        self.slots.iter().position(|slot| {
            let Some(p) = slot.process() else { return false };
            let events = p.events();
            let last = events
                .iter()
                .rev()
                .find(|e| matches!(e.kind(), "elected" | "resumed" | "demoted" | "suspended" | "stopped"));
            last.is_some_and(|e| matches!(e.kind(), "elected" | "resumed"))
        })
    }

    /// Participant `i`'s election node and its sequence, from its latest
    /// `joined` event.
    fn node(&self, i: usize) -> Option<(String, u64)> {
        let p = self.slots[i].process()?;
        let events = p.events();
        let joined = events.iter().rev().find(|e| e.kind() == "joined")?;
        let node = joined.str("node").to_string();
        let sequence = joined.json["sequence"].as_u64().or_else(|| {
            let digits: String = node.chars().rev().take_while(char::is_ascii_digit).collect();
            digits.chars().rev().collect::<String>().parse().ok()
        })?;
        Some((node, sequence))
    }

    /// The running participant whose node comes right after `leader`'s.
    fn next_in_line(&self, leader: usize) -> Option<usize> {
        let (_, ahead) = self.node(leader)?;
        (0..self.slots.len())
            .filter(|&i| i != leader)
            .filter_map(|i| self.node(i).map(|(_, seq)| (seq, i)))
            .filter(|&(seq, _)| seq > ahead)
            .min()
            .map(|(_, i)| i)
    }

    /// Deletes participant `i`'s election node as an outside client would.
    fn delete_node_of(&self, i: usize) {
        if let Some((node, _)) = self.node(i) {
            delete_node(&self.ensemble, &format!("{ELECTION}/{node}"));
        }
    }

    /// SIGTERMs participant `i` and waits for it to exit (SIGKILL after 20 s).
    fn stop(&mut self, i: usize) {
        self.signal(i, libc::SIGTERM);
        if let Some(c) = &mut self.slots[i].current
            && c.process.wait_exit(Duration::from_secs(20)).is_none()
        {
            c.process.kill();
        }
        self.retire(i);
    }

    /// The leader, waiting up to `within` for one.
    fn await_leader(&self, within: Duration) -> Option<usize> {
        let until = Instant::now() + within;
        loop {
            if let Some(leader) = self.leader() {
                return Some(leader);
            }
            if Instant::now() >= until {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn resolve(&self, target: Target) -> usize {
        match target {
            Target::Leader => self.leader().unwrap_or(0),
            Target::Index(i) => i,
        }
    }

    fn signal(&self, i: usize, signal: i32) {
        if let Some(p) = self.slots[i].process() {
            p.signal(signal);
        }
    }

    fn majority(&self) -> usize {
        self.config.servers / 2 + 1
    }

    /// Injects `fault`, holds it, heals it, and records when and to whom.
    fn apply(&mut self, fault: &Fault, rng: &mut StdRng) {
        if fault.kind == FaultKind::StopParticipant && matches!(fault.target, Target::Leader) {
            // A graceful handover for property 14 to judge: settle first,
            // so that nothing else has been broken for T.
            std::thread::sleep(self.config.session_timeout);
        }
        let target = match fault.kind {
            // Only a leader has a write to catch in flight; the compound
            // sequences are all about a leader and who comes after it.
            FaultKind::PauseMidWrite => self.resolve(Target::Leader),
            kind if kind.is_compound() => self.resolve(Target::Leader),
            _ => self.resolve(fault.target),
        };
        let participant = self.slots[target].current.as_ref().map(|c| c.id.clone());
        let start_ns = monotonic_ns();
        let hits_participant = self.hit(fault, target, rng);
        let end_ns = monotonic_ns();
        let participant = if hits_participant { participant } else { None };
        self.spans.push(FaultSpan { kind: fault.kind, participant, start_ns, end_ns });
    }

    /// Does the work of [`World::apply`]; says whether the fault hit
    /// participant `target` (rather than servers).
    fn hit(&mut self, fault: &Fault, target: usize, rng: &mut StdRng) -> bool {
        let t = self.config.session_timeout;
        match fault.kind {
            FaultKind::KillParticipant => {
                if let Some(c) = &mut self.slots[target].current {
                    c.process.kill();
                }
                self.retire(target);
                std::thread::sleep(fault.hold);
                self.start_participant(target);
            }
            FaultKind::StopParticipant => {
                self.signal(target, libc::SIGTERM);
                if let Some(c) = &mut self.slots[target].current
                    && c.process.wait_exit(Duration::from_secs(20)).is_none()
                {
                    c.process.kill();
                }
                self.retire(target);
                std::thread::sleep(fault.hold);
                self.start_participant(target);
            }
            FaultKind::PauseShort | FaultKind::PauseLong => self.pause(target, fault.hold),
            FaultKind::PauseMidWrite => {
                // Freeze right after the host logged that a blind put waits
                // (the failpoint): the write goes out when the process wakes.
                if let Some(p) = self.slots[target].process() {
                    let log = p.log().clone();
                    let from = log.len();
                    let _ = log.wait_from(from, Duration::from_secs(3), |e| {
                        e.kind() == "failpoint_delay" && e.str("key") == "blind"
                    });
                }
                self.pause(target, fault.hold);
            }
            FaultKind::PartitionShort | FaultKind::PartitionLong => {
                self.slots[target].proxy.partition();
                std::thread::sleep(fault.hold);
                self.slots[target].proxy.heal();
            }
            FaultKind::ReconnectBackoff => {
                self.slots[target].proxy.refuse();
                std::thread::sleep(fault.hold);
                self.slots[target].proxy.heal();
            }
            FaultKind::SlowLink => {
                let delay = Duration::from_millis(100)
                    + (t.saturating_sub(Duration::from_millis(100))).mul_f64(fault.level);
                self.slots[target].proxy.delay_downstream(delay);
                std::thread::sleep(fault.hold);
                self.slots[target].proxy.delay_downstream(Duration::ZERO);
            }
            FaultKind::DeleteNode => {
                let node = self.slots[target].process().and_then(|p| {
                    p.events().iter().rev().find(|e| e.kind() == "joined").map(|e| e.str("node").to_string())
                });
                if let Some(node) = node {
                    delete_node(&self.ensemble, &format!("{ELECTION}/{node}"));
                }
                std::thread::sleep(fault.hold);
            }
            FaultKind::SlowThenDelete => {
                // The delay is in force before the deletion lands, so the
                // leader hears of it only `delay` later.
                let delay = t.mul_f64(0.5 + 0.5 * fault.level);
                self.slots[target].proxy.delay_downstream(delay);
                std::thread::sleep(Duration::from_millis(100));
                self.delete_node_of(target);
                std::thread::sleep(fault.hold);
                self.slots[target].proxy.delay_downstream(Duration::ZERO);
            }
            FaultKind::PartitionThenDelete => {
                self.slots[target].proxy.partition();
                std::thread::sleep(Duration::from_millis(50 + (200.0 * fault.level) as u64));
                self.delete_node_of(target);
                std::thread::sleep(fault.hold);
                self.slots[target].proxy.heal();
            }
            FaultKind::DeleteJoinLeave => {
                let next = self.next_in_line(target);
                // The joiner: another participant, stopped first so that it
                // joins after the deletion (its look then shows the old
                // leader's lease node behind the next in line). Every other
                // participant is stopped too, so that the joiner's node is
                // the one just behind the next in line's: only then is the
                // next in line's departure the joiner's cue to lead, and
                // only then can a shortcut that skips the standing lease
                // node be seen.
                let others: Vec<usize> =
                    (0..self.slots.len()).filter(|&i| i != target && Some(i) != next).collect();
                let joiner = others.choose(rng).copied();
                for &i in &others {
                    self.stop(i);
                }
                self.slots[target].proxy.delay_downstream(t.mul_f64(0.75 + 0.25 * fault.level));
                std::thread::sleep(Duration::from_millis(100));
                self.delete_node_of(target);
                std::thread::sleep(Duration::from_millis(rng.random_range(100..300)));
                if let Some(c) = joiner {
                    self.start_participant(c);
                    if let Some(p) = self.slots[c].process() {
                        let _ = p.log().wait(Duration::from_secs(5), |e| e.kind() == "joined");
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
                if let Some(b) = next {
                    self.stop(b);
                }
                std::thread::sleep(fault.hold);
                self.slots[target].proxy.delay_downstream(Duration::ZERO);
                for i in next.into_iter().chain(others.into_iter().filter(|&i| Some(i) != joiner)) {
                    self.start_participant(i);
                }
            }
            FaultKind::DeleteTwice => {
                let next = self.next_in_line(target);
                self.delete_node_of(target);
                std::thread::sleep(Duration::from_millis(50 + (450.0 * fault.level) as u64));
                if let Some(b) = next {
                    self.delete_node_of(b);
                }
                std::thread::sleep(fault.hold);
            }
            FaultKind::RestartSameId => {
                if let Some(c) = &mut self.slots[target].current {
                    c.process.kill();
                }
                self.retire(target);
                std::thread::sleep(fault.hold);
                self.start_participant(target);
            }
            FaultKind::SlowHeadOfLine => {
                let period = self.config.period();
                let next = self.next_in_line(target);
                if let Some(b) = next {
                    let delay = period / 3 + (period - period / 3).mul_f64(fault.level);
                    self.slots[b].proxy.delay_downstream(delay);
                }
                std::thread::sleep(Duration::from_millis(200));
                self.stop(target);
                std::thread::sleep(fault.hold);
                if let Some(b) = next {
                    self.slots[b].proxy.delay_downstream(Duration::ZERO);
                }
                self.start_participant(target);
            }
            FaultKind::ResetWhileFrozen => {
                let next = self.next_in_line(target);
                self.signal(target, libc::SIGSTOP);
                self.slots[target].paused = true;
                let until = Instant::now() + fault.hold;
                while Instant::now() < until {
                    std::thread::sleep(Duration::from_millis(500).min(until - Instant::now()));
                    if let Some(b) = next {
                        self.slots[b].proxy.reset();
                    }
                }
                self.signal(target, libc::SIGCONT);
                self.slots[target].paused = false;
            }
            FaultKind::ResetThenStop => {
                // Settle first: the handovers below must be graceful ones
                // (property 14), so nothing else may be broken for T.
                std::thread::sleep(self.config.session_timeout);
                let mut stopped = Vec::new();
                for round in 0..2 {
                    // The second round stops whoever took over, however
                    // slowly (a slow first handover is what property 14
                    // looks for, and it must not spare the second).
                    let Some(leader) = self.await_leader(self.config.session_timeout * 3) else { break };
                    let Some(next) = self.next_in_line(leader) else { break };
                    self.slots[next].proxy.reset();
                    let wait = if round == 0 { fault.level } else { 1.0 - fault.level };
                    std::thread::sleep(Duration::from_millis((100.0 * wait) as u64));
                    self.stop(leader);
                    stopped.push(leader);
                    std::thread::sleep(fault.hold);
                }
                for i in stopped {
                    self.start_participant(i);
                }
            }
            FaultKind::ClockSkew => {
                self.stop(target);
                self.start_participant_at(target, Some(1.05));
                std::thread::sleep(fault.hold);
                self.stop(target);
                self.start_participant(target);
            }
            FaultKind::KillFollower | FaultKind::KillEnsembleLeader => {
                let leader = self.ensemble.leader();
                let server = if fault.kind == FaultKind::KillEnsembleLeader {
                    leader.unwrap_or(0)
                } else {
                    let followers: Vec<usize> =
                        (0..self.config.servers).filter(|&i| Some(i) != leader).collect();
                    followers[rng.random_range(0..followers.len())]
                };
                self.ensemble.kill(server);
                std::thread::sleep(fault.hold);
                self.ensemble.restart(server);
                self.ensemble.wait_serving(Duration::from_secs(120));
                return false;
            }
            FaultKind::LowerMaxSession => {
                let server = rng.random_range(0..self.config.servers);
                self.ensemble.restart_with_max_session_timeout(server, Some(t / 2));
                self.ensemble.wait_serving(Duration::from_secs(120));
                std::thread::sleep(fault.hold);
                self.ensemble.restart_with_max_session_timeout(server, None);
                self.ensemble.wait_serving(Duration::from_secs(120));
                return false;
            }
            FaultKind::QuorumLoss => {
                let mut servers: Vec<usize> = (0..self.config.servers).collect();
                servers.shuffle(rng);
                let victims = &servers[..self.majority()];
                for &s in victims {
                    self.ensemble.kill(s);
                }
                std::thread::sleep(fault.hold);
                for &s in victims {
                    self.ensemble.restart(s);
                }
                self.ensemble.wait_serving(Duration::from_secs(120));
                return false;
            }
            FaultKind::RestartAll => {
                for i in 0..self.slots.len() {
                    if let Some(c) = &mut self.slots[i].current {
                        c.process.kill();
                    }
                    self.retire(i);
                }
                for s in 0..self.config.servers {
                    self.ensemble.kill(s);
                }
                std::thread::sleep(fault.hold);
                for s in 0..self.config.servers {
                    self.ensemble.restart(s);
                }
                self.ensemble.wait_serving(Duration::from_secs(120));
                for i in 0..self.slots.len() {
                    self.start_participant(i);
                }
                return false;
            }
        }
        true
    }

    fn pause(&mut self, target: usize, hold: Duration) {
        self.signal(target, libc::SIGSTOP);
        self.slots[target].paused = true;
        std::thread::sleep(hold);
        self.signal(target, libc::SIGCONT);
        self.slots[target].paused = false;
    }

    /// Makes sure nothing is left broken.
    fn heal_everything(&mut self) {
        for i in 0..self.slots.len() {
            if self.slots[i].paused {
                self.signal(i, libc::SIGCONT);
                self.slots[i].paused = false;
            }
            self.slots[i].proxy.heal();
            self.slots[i].proxy.delay_downstream(Duration::ZERO);
            let exited =
                self.slots[i].current.as_mut().is_some_and(|c| c.process.wait_exit(Duration::ZERO).is_some());
            if exited {
                self.retire(i);
            }
            self.start_participant(i);
        }
        for s in 0..self.config.servers {
            self.ensemble.restart(s);
        }
        self.ensemble.wait_serving(Duration::from_secs(120));
    }

    /// Every participant's log lines, and its journal lines as `journal`
    /// events, each with the participant's incarnation id.
    fn all_events(&self) -> Vec<(String, Event)> {
        let mut out = Vec::new();
        for c in self.slots.iter().flat_map(|slot| slot.past.iter().chain(slot.current.iter())) {
            let lines = EventLog::default();
            for e in c.process.events() {
                lines.push(c.skew.map_or(e.raw.clone(), |skew| skew.normalize(&e.raw)));
            }
            let journal = std::fs::read_to_string(c.journal.join("ticks")).unwrap_or_default();
            for line in journal.lines() {
                let raw = serde_json::json!({ "event": "journal", "message": line }).to_string();
                lines.push(c.skew.map_or(raw.clone(), |skew| skew.normalize(&raw)));
            }
            out.extend(lines.all().into_iter().map(|e| (c.id.clone(), e)));
        }
        out
    }
}

/// Deletes `path` as an outside client would (an operator, a bad script).
fn delete_node(ensemble: &Ensemble, path: &str) {
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread().enable_all().build() else { return };
    let servers = ensemble.connect_string();
    runtime.block_on(async {
        let connect = zookeeper_client::Client::connector()
            .with_session_timeout(Duration::from_secs(4))
            .connect(&servers);
        if let Ok(Ok(client)) = tokio::time::timeout(Duration::from_secs(5), connect).await {
            let _ = tokio::time::timeout(Duration::from_secs(5), client.delete(path, None)).await;
        }
    });
}

/// Runs the chaos and checks what happened.
pub fn run(config: ChaosConfig) -> Report {
    let started = Instant::now();
    let mut faults = Schedule::new(&config);
    let mut rng = StdRng::seed_from_u64(config.seed ^ 0x5eed);
    let ensemble =
        Ensemble::start_with(EnsembleOptions { servers: config.servers, ..EnsembleOptions::default() });
    let slots = (0..config.participants)
        .map(|i| Slot {
            id: format!("w{i}"),
            proxy: Proxy::start(&ensemble.client_addrs()),
            current: None,
            past: Vec::new(),
            paused: false,
        })
        .collect();
    let mut world = World {
        config: config.clone(),
        ensemble,
        receiver: Receiver::start(),
        slots,
        journals: TempDir::new("journals"),
        spans: Vec::new(),
    };
    for i in 0..config.participants {
        world.start_participant(i);
    }
    crate::wait_for("a first leader", Duration::from_secs(60), || world.leader());
    let first_leader_ms = jiff::Timestamp::now().as_millisecond();
    let ledger = config.every.map(|_| LedgerWatch::start(world.ensemble.connect_string(), ELECTION));

    let mut report = Report { seed: config.seed, ..Report::default() };
    let deadline = Instant::now() + config.duration;
    // Every kind once even in a short run, then until the duration is up.
    while !faults.covered() || Instant::now() < deadline {
        let Some(fault) = faults.next() else { break };
        std::thread::sleep(fault.gap);
        if config.verbose {
            eprintln!("[{:>6.1}s] {fault}", started.elapsed().as_secs_f64());
        }
        world.apply(&fault, &mut rng);
        *report.faults.entry(fault.kind).or_default() += 1;
    }
    world.heal_everything();
    let healed = monotonic_ns();
    if config.verbose {
        eprintln!("[{:>6.1}s] all faults healed", started.elapsed().as_secs_f64());
    }

    // Property 3: someone ticks again soon. The bound covers the reconnect
    // backoff (up to 5 s) of participants whose sessions were lost.
    // A scheduled run's next tick is its next slot: up to one period more.
    let bound = config.session_timeout + Duration::from_secs(8) + config.every.unwrap_or_default();
    let first_tick = crate::wait_for_opt(bound + Duration::from_secs(20), || {
        world.all_events().iter().filter_map(|(_, e)| tick_start(e)).filter(|&s| s > healed).min()
    });
    report.recovery = first_tick.map(|t| Duration::from_nanos(t - healed));
    match report.recovery {
        Some(d) if d <= bound => {}
        Some(d) => {
            report.violations.push(format!("first tick {d:?} after the last heal, more than {bound:?}"))
        }
        None => report.violations.push("no tick after the last heal".into()),
    }
    // Long enough for a slot after the first tick, in a scheduled run.
    std::thread::sleep(Duration::from_secs(2) + config.every.unwrap_or_default());
    let stopped_ms = jiff::Timestamp::now().as_millisecond();
    for i in 0..world.slots.len() {
        world.signal(i, libc::SIGTERM);
    }
    for slot in &mut world.slots {
        if let Some(c) = &mut slot.current
            && c.process.wait_exit(Duration::from_secs(20)).is_none()
        {
            c.process.kill();
        }
    }
    let history = History {
        events: world.all_events(),
        faults: world.spans.clone(),
        counter: Some(stored_counter(&world.ensemble)),
        session_timeout: config.session_timeout,
        lease: config.lease,
        arrivals: byte_arrivals(&world.receiver),
        state: stored_state(&world.ensemble).ok(),
        state_max_bytes: Some(STATE_MAX_BYTES),
        // The participants run with the default byte rate.
        state_max_bytes_per_second: Some(zkrun::state::DEFAULT_STATE_BYTES_PER_SECOND),
        schedule: config.every.zip(ledger).map(|(every, watch)| ScheduledRun {
            every,
            first_leader_ms,
            stopped_ms,
            ledger: watch.finish(),
        }),
    };
    if let Some(path) = &config.save {
        save(path, &history);
    }
    check(&history, &mut report);
    tally_http(&world.receiver, &history, &mut report);
    report.elapsed = started.elapsed();
    report
}

/// Every stamped request the receiver saw, whole or cut off, with when
/// its first and last bytes arrived.
fn byte_arrivals(receiver: &Receiver) -> Vec<ByteArrival> {
    let whole = receiver.arrivals().into_iter().map(|a| (a, true));
    let cut = receiver.cut_off().into_iter().map(|a| (a, false));
    whole
        .chain(cut)
        .filter_map(|(a, whole)| {
            Some(ByteArrival {
                term: a.term?,
                participant: a.participant,
                first_byte_ns: a.first_byte_ns,
                last_byte_ns: a.last_byte_ns,
                chunks: a.chunks,
                whole,
                slot: a
                    .headers
                    .iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case("zkrun-slot"))
                    .map(|(_, v)| v.clone()),
            })
        })
        .collect()
}

/// The election's fenced state as stored: every key under `state/`.
fn stored_state(ensemble: &Ensemble) -> Result<Vec<(String, Vec<u8>)>, String> {
    let runtime =
        tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
    runtime.block_on(async {
        let client =
            zookeeper_client::Client::connect(&ensemble.connect_string()).await.map_err(|e| e.to_string())?;
        let dir = format!("{ELECTION}/state");
        let keys = client.list_children(&dir).await.map_err(|e| e.to_string())?;
        let mut out = Vec::new();
        for key in keys {
            if let Ok((data, _)) = client.get_data(&format!("{dir}/{key}")).await {
                out.push((key, data));
            }
        }
        Ok(out)
    })
}

/// Property: no stamped request arrives with a term lower than one that
/// arrived before it.
fn tally_http(receiver: &Receiver, history: &History, report: &mut Report) {
    let count = |kind: &str| history.events.iter().filter(|(_, e)| e.kind() == kind).count();
    let arrivals = receiver.arrivals();
    let tally = HttpTally {
        arrived: arrivals.len(),
        out_of_order: receiver.out_of_order(),
        refused_by_zkrun: count("http_refused"),
        cut_off_by_zkrun: count("http_aborted"),
    };
    for late in arrivals.iter().filter(|a| a.refused) {
        report.violations.push(format!(
            "an HTTP request of term {:?} from {:?} arrived after one of a higher term",
            late.term, late.participant
        ));
    }
    if tally.arrived == 0 {
        report.violations.push("no HTTP request arrived: the egress path did not run".into());
    }
    report.http = Some(tally);
}

/// Writes `history` as JSON lines: the session timeout (and lease), each
/// fault as applied, then `{"id": .., "line": ..}` for every log and
/// journal line.
fn save(path: &std::path::Path, history: &History) {
    use std::fmt::Write as _;
    let mut text = String::new();
    let timeout = serde_json::json!({
        "session_timeout_ms": history.session_timeout.as_millis() as u64,
        "lease_ms": history.lease.map(|lease| lease.as_millis() as u64),
    });
    let _ = writeln!(text, "{timeout}");
    if let Some(run) = &history.schedule {
        let schedule = serde_json::json!({
            "every_ms": run.every.as_millis() as u64,
            "first_leader_ms": run.first_leader_ms,
            "stopped_ms": run.stopped_ms,
        });
        let _ = writeln!(text, "{schedule}");
        for record in &run.ledger {
            let _ = writeln!(text, "{}", serde_json::json!({ "ledger": record }));
        }
    }
    for f in &history.faults {
        let fault = serde_json::json!({
            "fault": format!("{:?}", f.kind),
            "participant": f.participant,
            "start_ns": f.start_ns,
            "end_ns": f.end_ns,
        });
        let _ = writeln!(text, "{fault}");
    }
    for a in &history.arrivals {
        let arrival = serde_json::json!({
            "arrival_term": a.term,
            "participant": a.participant,
            "first_byte_ns": a.first_byte_ns,
            "last_byte_ns": a.last_byte_ns,
            "chunks": a.chunks,
            "whole": a.whole,
            "slot": a.slot,
        });
        let _ = writeln!(text, "{arrival}");
    }
    for (id, e) in &history.events {
        let _ = writeln!(text, "{}", serde_json::json!({ "id": id, "line": e.raw }));
    }
    if let Err(e) = std::fs::write(path, text) {
        eprintln!("chaos: cannot save the history to {}: {e}", path.display());
    }
}

/// Reads a history written by `--save` (the counter is not saved).
pub fn load(path: &std::path::Path) -> std::io::Result<History> {
    let text = std::fs::read_to_string(path)?;
    let mut history = History::default();
    let events = EventLog::default();
    let mut ids = Vec::new();
    for line in text.lines() {
        let Ok(json) = serde_json::from_str::<serde_json::Value>(line) else { continue };
        if let Some(ms) = json["session_timeout_ms"].as_u64() {
            history.session_timeout = Duration::from_millis(ms);
            history.lease = json["lease_ms"].as_u64().map(Duration::from_millis);
            // Every chaos run's participants write at the default byte rate.
            history.state_max_bytes_per_second = Some(zkrun::state::DEFAULT_STATE_BYTES_PER_SECOND);
        } else if let Some(kind) = json["fault"].as_str() {
            let Some(kind) = FaultKind::ALL.into_iter().find(|k| format!("{k:?}") == kind) else { continue };
            history.faults.push(FaultSpan {
                kind,
                participant: json["participant"].as_str().map(str::to_string),
                start_ns: json["start_ns"].as_u64().unwrap_or(0),
                end_ns: json["end_ns"].as_u64().unwrap_or(0),
            });
        } else if let Some(term) = json["arrival_term"].as_u64() {
            history.arrivals.push(ByteArrival {
                term,
                participant: json["participant"].as_str().map(str::to_string),
                first_byte_ns: json["first_byte_ns"].as_u64().unwrap_or(0),
                last_byte_ns: json["last_byte_ns"].as_u64().unwrap_or(0),
                chunks: json["chunks"].as_u64().unwrap_or(0) as usize,
                whole: json["whole"].as_bool().unwrap_or(true),
                slot: json["slot"].as_str().map(str::to_string),
            });
        } else if let Some(every) = json["every_ms"].as_u64() {
            let run = history.schedule.get_or_insert_with(ScheduledRun::default);
            run.every = Duration::from_millis(every);
            run.first_leader_ms = json["first_leader_ms"].as_i64().unwrap_or(0);
            run.stopped_ms = json["stopped_ms"].as_i64().unwrap_or(0);
        } else if json.get("ledger").is_some() {
            if let Ok(record) = serde_json::from_value(json["ledger"].clone()) {
                history.schedule.get_or_insert_with(ScheduledRun::default).ledger.push(record);
            }
        } else if let (Some(id), Some(raw)) = (json["id"].as_str(), json["line"].as_str()) {
            ids.push(id.to_string());
            events.push(raw.to_string());
        }
    }
    history.events = ids.into_iter().zip(events.all()).collect();
    Ok(history)
}

fn stored_counter(ensemble: &Ensemble) -> Result<(u64, i32), String> {
    let runtime =
        tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
    runtime.block_on(async {
        let client =
            zookeeper_client::Client::connect(&ensemble.connect_string()).await.map_err(|e| e.to_string())?;
        let (data, stat) =
            client.get_data(&format!("{ELECTION}/state/counter")).await.map_err(|e| e.to_string())?;
        let text = String::from_utf8_lossy(&data).into_owned();
        let value = text
            .split_whitespace()
            .next()
            .and_then(|v| v.parse().ok())
            .ok_or(format!("bad counter {text:?}"))?;
        Ok((value, stat.version))
    })
}
