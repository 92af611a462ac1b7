//! Chaos: a seeded schedule of faults against a real ensemble and real zkrun
//! processes running the `witness` plugin, and a checker that reads what
//! actually happened from their logs and from ZooKeeper.
//!
//! The checker's properties:
//! 1. no two ticks of different participants overlap in time (a tick spans
//!    from its start to its end, or to its start alone if it was cut off
//!    before logging an end: nothing it did after that was allowed out);
//! 2. the terms of successive elections strictly increase, and ticks never
//!    go back to an older term;
//! 3. once the last fault is healed, some participant ticks within the
//!    session timeout plus a bound;
//! 4. the fenced counter lost and duplicated no increment: its value is one
//!    more than its version (every committed write added exactly one), and
//!    no value was logged as committed twice.

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use crate::ensemble::EnsembleOptions;
use crate::{Ensemble, Event, Process, Proxy, monotonic_ns, paths};

const ELECTION: &str = "/zkrun/chaos";

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
    /// Tick interval of the participants.
    pub tick: Duration,
    /// Print each fault as it happens.
    pub verbose: bool,
}

impl ChaosConfig {
    /// The settings of the test suite's short run, with `seed` and `duration`.
    pub fn new(seed: u64, duration: Duration) -> ChaosConfig {
        ChaosConfig {
            seed,
            duration,
            servers: 3,
            participants: 5,
            session_timeout: Duration::from_secs(2),
            tick: Duration::from_millis(100),
            verbose: false,
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
}

impl FaultKind {
    /// Every kind of fault.
    pub const ALL: [FaultKind; 10] = [
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
    ];
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
    first: Vec<FaultKind>,
    session_timeout: Duration,
    participants: usize,
}

impl Schedule {
    /// The schedule for `config.seed`.
    pub fn new(config: &ChaosConfig) -> Schedule {
        let mut rng = StdRng::seed_from_u64(config.seed);
        let mut first = FaultKind::ALL.to_vec();
        first.shuffle(&mut rng);
        first.reverse();
        Schedule { rng, first, session_timeout: config.session_timeout, participants: config.participants }
    }
}

impl Iterator for Schedule {
    type Item = Fault;

    fn next(&mut self) -> Option<Fault> {
        let rng = &mut self.rng;
        let t = self.session_timeout;
        let kind =
            self.first.pop().unwrap_or_else(|| FaultKind::ALL[rng.random_range(0..FaultKind::ALL.len())]);
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
        };
        let gap = ms(500..3000, rng);
        Some(Fault { kind, target, gap, hold })
    }
}

/// What a run found.
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// The seed.
    pub seed: u64,
    /// Faults injected, by kind.
    pub faults: BTreeMap<FaultKind, usize>,
    /// Ticks that started.
    pub ticks: usize,
    /// Ticks cut off before they logged their end.
    pub cut_off: usize,
    /// Elections won.
    pub handovers: usize,
    /// Counter increments logged as committed.
    pub commits: usize,
    /// The counter's stored value at the end.
    pub counter: u64,
    /// Time from the last heal to the first tick.
    pub recovery: Option<Duration>,
    /// Wall time of the run.
    pub elapsed: Duration,
    /// Every property violated, with evidence.
    pub violations: Vec<String>,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "seed {} ran {:.0?}", self.seed, self.elapsed)?;
        let total: usize = self.faults.values().sum();
        writeln!(f, "faults: {total}")?;
        for (kind, n) in &self.faults {
            writeln!(f, "  {kind:?}: {n}")?;
        }
        writeln!(f, "ticks: {} ({} cut off by a lost lease)", self.ticks, self.cut_off)?;
        writeln!(f, "handovers (elections won): {}", self.handovers)?;
        writeln!(f, "counter: {} committed increments logged, {} stored", self.commits, self.counter)?;
        match self.recovery {
            Some(d) => writeln!(f, "first tick {d:.1?} after the last fault healed")?,
            None => writeln!(f, "no tick after the last fault healed")?,
        }
        writeln!(f, "violations: {}", self.violations.len())?;
        for v in &self.violations {
            writeln!(f, "  {v}")?;
        }
        Ok(())
    }
}

/// One participant slot: the process running now, and those that ran before.
struct Slot {
    id: String,
    proxy: Proxy,
    current: Option<Process>,
    past: Vec<Process>,
    paused: bool,
}

struct World {
    config: ChaosConfig,
    ensemble: Ensemble,
    slots: Vec<Slot>,
}

impl World {
    fn start_participant(&mut self, i: usize) {
        let slot = &mut self.slots[i];
        if slot.current.is_some() {
            return;
        }
        let args: Vec<std::ffi::OsString> = vec![
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
        ];
        slot.current = Some(Process::zkrun(&slot.id, &args));
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
            let Some(p) = &slot.current else { return false };
            let events = p.events();
            let last = events
                .iter()
                .rev()
                .find(|e| matches!(e.kind(), "elected" | "resumed" | "demoted" | "suspended" | "stopped"));
            last.is_some_and(|e| matches!(e.kind(), "elected" | "resumed"))
        })
    }

    fn resolve(&self, target: Target) -> usize {
        match target {
            Target::Leader => self.leader().unwrap_or(0),
            Target::Index(i) => i,
        }
    }

    fn signal(&self, i: usize, signal: i32) {
        if let Some(p) = &self.slots[i].current {
            p.signal(signal);
        }
    }

    fn majority(&self) -> usize {
        self.config.servers / 2 + 1
    }

    /// Injects `fault`, holds it, heals it.
    fn apply(&mut self, fault: &Fault, rng: &mut StdRng) {
        let target = self.resolve(fault.target);
        match fault.kind {
            FaultKind::KillParticipant => {
                if let Some(p) = &mut self.slots[target].current {
                    p.kill();
                }
                self.retire(target);
                std::thread::sleep(fault.hold);
                self.start_participant(target);
            }
            FaultKind::StopParticipant => {
                self.signal(target, libc::SIGTERM);
                if let Some(p) = &mut self.slots[target].current
                    && p.wait_exit(Duration::from_secs(20)).is_none()
                {
                    p.kill();
                }
                self.retire(target);
                std::thread::sleep(fault.hold);
                self.start_participant(target);
            }
            FaultKind::PauseShort | FaultKind::PauseLong => {
                self.signal(target, libc::SIGSTOP);
                self.slots[target].paused = true;
                std::thread::sleep(fault.hold);
                self.signal(target, libc::SIGCONT);
                self.slots[target].paused = false;
            }
            FaultKind::PartitionShort | FaultKind::PartitionLong => {
                self.slots[target].proxy.partition();
                std::thread::sleep(fault.hold);
                self.slots[target].proxy.heal();
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
            }
            FaultKind::RestartAll => {
                for i in 0..self.slots.len() {
                    if let Some(p) = &mut self.slots[i].current {
                        p.kill();
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
            }
        }
    }

    /// Makes sure nothing is left broken.
    fn heal_everything(&mut self) {
        for i in 0..self.slots.len() {
            if self.slots[i].paused {
                self.signal(i, libc::SIGCONT);
                self.slots[i].paused = false;
            }
            self.slots[i].proxy.heal();
            let exited =
                self.slots[i].current.as_mut().is_some_and(|p| p.wait_exit(Duration::ZERO).is_some());
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

    fn all_events(&self) -> Vec<(String, Event)> {
        self.slots
            .iter()
            .flat_map(|slot| {
                slot.past
                    .iter()
                    .chain(slot.current.iter())
                    .flat_map(|p| p.events())
                    .map(|e| (slot.id.clone(), e))
            })
            .collect()
    }
}

/// A tick as the witness logged it.
#[derive(Clone, Debug)]
struct Tick {
    id: String,
    term: u64,
    start: u64,
    end: Option<u64>,
}

fn number_after(message: &str, word: &str) -> Option<u64> {
    let mut words = message.split_whitespace();
    words.find(|w| *w == word)?;
    words.next()?.parse().ok()
}

/// Runs the chaos and checks what happened.
pub fn run(config: ChaosConfig) -> Report {
    let started = Instant::now();
    let faults = Schedule::new(&config);
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
    let mut world = World { config: config.clone(), ensemble, slots };
    for i in 0..config.participants {
        world.start_participant(i);
    }
    crate::wait_for("a first leader", Duration::from_secs(60), || world.leader());

    let mut report = Report { seed: config.seed, ..Report::default() };
    let deadline = Instant::now() + config.duration;
    for fault in faults {
        if Instant::now() >= deadline {
            break;
        }
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
    let bound = config.session_timeout + Duration::from_secs(8);
    let first_tick = crate::wait_for_opt(bound + Duration::from_secs(20), || {
        world.all_events().iter().filter_map(|(_, e)| witness_start(e)).filter(|&s| s > healed).min()
    });
    report.recovery = first_tick.map(|t| Duration::from_nanos(t - healed));
    match report.recovery {
        Some(d) if d <= bound => {}
        Some(d) => {
            report.violations.push(format!("first tick {d:?} after the last heal, more than {bound:?}"))
        }
        None => report.violations.push("no tick after the last heal".into()),
    }
    std::thread::sleep(Duration::from_secs(2));
    for i in 0..world.slots.len() {
        world.signal(i, libc::SIGTERM);
    }
    for slot in &mut world.slots {
        if let Some(p) = &mut slot.current
            && p.wait_exit(Duration::from_secs(20)).is_none()
        {
            p.kill();
        }
    }
    check(&world.all_events(), stored_counter(&world.ensemble), &mut report);
    report.elapsed = started.elapsed();
    report
}

fn witness_start(event: &Event) -> Option<u64> {
    (event.kind() == "plugin_log" && event.message().starts_with("witness start "))
        .then(|| number_after(event.message(), "start"))
        .flatten()
}

/// Checks the properties on what the participants logged (`events`: the
/// participant id and each of its log lines) and on the stored counter
/// (value and version), adding what it finds to `report`.
pub fn check(events: &[(String, Event)], stored: Result<(u64, i32), String>, report: &mut Report) {
    // Property 1: ticks of different participants never overlap.
    let mut ticks: BTreeMap<(String, u64), Tick> = BTreeMap::new();
    for (id, e) in events {
        if e.kind() != "plugin_log" {
            continue;
        }
        let m = e.message();
        if let Some(start) = witness_start(e) {
            let term = number_after(m, "term").unwrap_or(0);
            ticks.entry((id.clone(), start)).or_insert(Tick { id: id.clone(), term, start, end: None });
        } else if m.starts_with("witness end ") {
            let mut words = m.split_whitespace().skip(2);
            let start: u64 = words.next().and_then(|w| w.parse().ok()).unwrap_or(0);
            let end: u64 = words.next().and_then(|w| w.parse().ok()).unwrap_or(0);
            let term = number_after(m, "term").unwrap_or(0);
            ticks.entry((id.clone(), start)).or_insert(Tick { id: id.clone(), term, start, end: None }).end =
                Some(end);
        }
    }
    let mut ticks: Vec<Tick> = ticks.into_values().collect();
    ticks.sort_by_key(|t| t.start);
    report.ticks = ticks.len();
    report.cut_off = ticks.iter().filter(|t| t.end.is_none()).count();
    let mut reach: Option<&Tick> = None;
    for tick in &ticks {
        if let Some(before) = reach
            && before.id != tick.id
            && tick.start <= before.end.unwrap_or(before.start)
        {
            report.violations.push(format!(
                "overlap: {} ticked {}..{:?} (term {}) while {} started at {} (term {})",
                before.id, before.start, before.end, before.term, tick.id, tick.start, tick.term
            ));
        }
        let reaches_further = reach.is_none_or(|b| tick.end.unwrap_or(tick.start) > b.end.unwrap_or(b.start));
        if reaches_further {
            reach = Some(tick);
        }
    }

    // Property 2: successive elections have strictly increasing terms, and
    // ticks never go back to an older term.
    let mut elections: Vec<(u64, u64, String)> = events
        .iter()
        .filter(|(_, e)| e.kind() == "elected")
        .filter_map(|(id, e)| Some((e.mono_ns()?, e.term()?, id.clone())))
        .collect();
    elections.sort();
    report.handovers = elections.len();
    for pair in elections.windows(2) {
        if pair[1].1 <= pair[0].1 {
            report.violations.push(format!(
                "term did not increase: {} elected with {} after {} with {}",
                pair[1].2, pair[1].1, pair[0].2, pair[0].1
            ));
        }
    }
    for pair in ticks.windows(2) {
        if pair[1].term < pair[0].term {
            report.violations.push(format!(
                "tick went back from term {} ({}) to {} ({})",
                pair[0].term, pair[0].id, pair[1].term, pair[1].id
            ));
        }
    }

    // Property 4: the counter lost and duplicated nothing.
    let mut commits: Vec<(u64, u64, u64, String)> = events
        .iter()
        .filter(|(_, e)| e.kind() == "plugin_log" && e.message().starts_with("committed "))
        .filter_map(|(id, e)| {
            let n = number_after(e.message(), "committed")?;
            Some((e.mono_ns()?, n, number_after(e.message(), "term")?, id.clone()))
        })
        .collect();
    commits.sort();
    report.commits = commits.len();
    for pair in commits.windows(2) {
        if pair[1].1 <= pair[0].1 {
            report.violations.push(format!(
                "counter: {} committed {} after {} committed {}",
                pair[1].3, pair[1].1, pair[0].3, pair[0].1
            ));
        }
        if pair[1].2 < pair[0].2 {
            report.violations.push(format!("counter: term went back from {} to {}", pair[0].2, pair[1].2));
        }
    }
    match stored {
        Ok((value, version)) => {
            report.counter = value;
            if value != version as u64 + 1 {
                report.violations.push(format!(
                    "counter: value {value} at version {version}: an increment was lost or doubled"
                ));
            }
            if let Some(last) = commits.last()
                && last.1 > value
            {
                report
                    .violations
                    .push(format!("counter: {} was logged as committed, but {value} is stored", last.1));
            }
        }
        // No commit was ever logged: the counter may well not exist.
        Err(_) if report.commits == 0 => report.counter = 0,
        Err(e) => report.violations.push(format!("counter: cannot read it: {e}")),
    }
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
