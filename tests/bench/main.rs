//! `zkrun-bench`: failover and hook costs, zkrun side by side with Apache
//! Curator's `LeaderLatch`, kazoo's `Election` and a polling recipe, in one
//! run on one ZooKeeper ensemble. Writes a JSON file that
//! `benches/render.py` turns into `BENCHMARKS.md` and a plot.
//!
//! `scripts/bench.sh` sets everything up and runs it; `--smoke` runs a few
//! rounds of everything so the benchmark cannot rot (the test suite does).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use serde_json::{Value, json};
use zkrun::plugin::{Facts, Permit, Runtime, RuntimeConfig};
use zkrun_tests::ensemble::EnsembleOptions;
use zkrun_tests::{Ensemble, Event, Process, monotonic_ns, paths};
use zookeeper_client as zk;

#[derive(Debug, Parser)]
#[command(about = "Benchmarks zkrun against Curator, kazoo and polling on one ensemble")]
struct Options {
    /// A few rounds of everything, to check the benchmark works.
    #[arg(long)]
    smoke: bool,
    /// Where to write the results.
    #[arg(long, default_value = "target/bench/results.json")]
    out: PathBuf,
    /// Which peers to run.
    #[arg(long, value_delimiter = ',', default_value = "zkrun,curator,kazoo,polling")]
    peers: Vec<String>,
    /// Session timeout every peer asks for, in milliseconds.
    #[arg(long, default_value_t = 4000)]
    session_timeout_ms: u64,
    /// Rounds of graceful handover per peer (default: 60, smoke: 2).
    #[arg(long)]
    graceful_rounds: Option<usize>,
    /// Rounds of crash handover per peer (default: 10, smoke: 1).
    #[arg(long)]
    crash_rounds: Option<usize>,
    /// Rounds of ensemble failover per peer (default: 5, smoke: 1).
    #[arg(long)]
    failover_rounds: Option<usize>,
    /// Participants in the scale test (default: 100, smoke: 10).
    #[arg(long)]
    scale_participants: Option<usize>,
    /// Rounds of the scale test per peer (default: 3, smoke: 1).
    #[arg(long)]
    scale_rounds: Option<usize>,
    /// Measure only zkrun's start-up and memory (cold and cached starts,
    /// resident memory of a follower and a leader), print a Markdown table
    /// and exit.
    #[arg(long)]
    footprint: bool,
    /// Pass `--lease` to zkrun participants (e.g. 1s): crash takeover follows
    /// the lease instead of the session timeout.
    #[arg(long, value_name = "DURATION")]
    zkrun_lease: Option<String>,
    /// Rounds of each start-up measure in `--footprint`.
    #[arg(long, default_value_t = 5)]
    footprint_rounds: usize,
}

/// How long the job ticks between events, for every peer.
const TICK_MS: u64 = 10;
/// Pause between rounds, so every handover starts from a quiet ensemble.
const SETTLE: Duration = Duration::from_millis(300);
const WAIT: Duration = Duration::from_secs(60);

/// A participant implementation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Zkrun,
    Curator,
    Kazoo,
    Polling,
}

impl Kind {
    fn parse(name: &str) -> Kind {
        match name {
            "zkrun" => Kind::Zkrun,
            "curator" => Kind::Curator,
            "kazoo" => Kind::Kazoo,
            "polling" => Kind::Polling,
            other => panic!("unknown peer {other:?}: zkrun, curator, kazoo or polling"),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Kind::Zkrun => "zkrun",
            Kind::Curator => "curator",
            Kind::Kazoo => "kazoo",
            Kind::Polling => "polling",
        }
    }

    /// Whether one process can host many participants (`--count`).
    fn multi(self) -> bool {
        self != Kind::Zkrun
    }

    fn command(self, bench: &Bench, election: &str, id: &str, count: usize) -> Command {
        self.command_ticking(bench, election, id, count, TICK_MS)
    }

    fn command_ticking(self, bench: &Bench, election: &str, id: &str, count: usize, tick_ms: u64) -> Command {
        let root = paths::root();
        let session = bench.session_timeout.as_millis().to_string();
        let mut command = match self {
            Kind::Zkrun => {
                assert_eq!(count, 1, "one zkrun per process");
                let mut c = Command::new(paths::zkrun_binary());
                c.args(["run", "--log-format", "json", "--id", id, "--plugin"])
                    .arg(paths::plugin("heartbeat"))
                    .args(["--zk", &bench.zk, "--election", election])
                    .args(["--tick", &format!("{tick_ms}ms"), "--session-timeout", &format!("{session}ms")]);
                if let Some(lease) = &bench.zkrun_lease {
                    c.args(["--lease", lease]);
                }
                return c;
            }
            Kind::Curator => Command::new(root.join("benches/peers/curator-participant.sh")),
            Kind::Kazoo | Kind::Polling => {
                let mut c = Command::new(root.join("target/bench-venv/bin/python"));
                let script =
                    if self == Kind::Kazoo { "kazoo_participant.py" } else { "polling_participant.py" };
                c.arg(root.join("benches/peers").join(script));
                c
            }
        };
        command
            .args(["--zk", &bench.zk, "--election", election, "--id", id])
            .args(["--session-timeout-ms", &session, "--tick-ms", &tick_ms.to_string()])
            .args(["--count", &count.to_string()]);
        command
    }
}

/// What a participant said, whatever its implementation.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Said {
    Joined(i64),
    Elected,
    Tick,
    Demoted,
    Stopped,
}

/// Reads a line of any peer into (participant id, what, monotonic ns).
fn said(event: &Event) -> Option<(String, Said, u64)> {
    let mono = event.mono_ns()?;
    let id = event.str("id").to_string();
    let what = match event.kind() {
        "joined" => {
            let hex = event.str("session").trim_start_matches("0x");
            Said::Joined(i64::from_str_radix(hex, 16).ok()?)
        }
        "elected" => Said::Elected,
        "tick" => Said::Tick,
        "plugin_log" if event.message().starts_with("I am Leader") => Said::Tick,
        "demoted" => Said::Demoted,
        "stopped" => Said::Stopped,
        _ => return None,
    };
    Some((id, what, mono))
}

/// Everything the participants of one election said, in time order.
fn timeline(processes: &[&Process]) -> Vec<(String, Said, u64)> {
    let mut all: Vec<_> = processes.iter().flat_map(|p| p.events()).filter_map(|e| said(&e)).collect();
    all.sort_by_key(|(_, _, at)| *at);
    all
}

/// Waits for a participant other than `not` to be elected after `after`.
fn wait_elected(processes: &[&Process], not: Option<&str>, after: u64) -> (String, u64) {
    zkrun_tests::wait_for("a participant to be elected", WAIT, || {
        timeline(processes)
            .into_iter()
            .find(|(id, what, at)| *what == Said::Elected && *at > after && Some(id.as_str()) != not)
            .map(|(id, _, at)| (id, at))
    })
}

/// The id of the participant that leads now (latest `elected` without a later end).
fn current_leader(processes: &[&Process]) -> Option<String> {
    let mut leader = None;
    for (id, what, _) in timeline(processes) {
        match what {
            Said::Elected => leader = Some(id),
            Said::Demoted | Said::Stopped if leader.as_deref() == Some(&id) => leader = None,
            _ => {}
        }
    }
    leader
}

fn wait_joined(process: &Process, n: usize) {
    zkrun_tests::wait_for(&format!("{} to have {n} participants in line", process.id), WAIT, || {
        (process.events().iter().filter(|e| e.kind() == "joined").count() >= n).then_some(())
    });
}

fn ms(ns: u64) -> f64 {
    ns as f64 / 1e6
}

struct Bench {
    ensemble: Ensemble,
    zk: String,
    session_timeout: Duration,
    zkrun_lease: Option<String>,
    next_id: usize,
}

impl Bench {
    fn spawn(&mut self, kind: Kind, election: &str, count: usize) -> Process {
        self.next_id += 1;
        let id = format!("{}{}", kind.name(), self.next_id);
        let p = Process::spawn(&id, kind.command(self, election, &id, count));
        wait_joined(&p, count);
        p
    }

    /// Sum of a `mntr` counter over every running server.
    fn mntr(&self, key: &str) -> u64 {
        (0..self.ensemble.size())
            .filter_map(|i| self.ensemble.four_letter(i, "mntr"))
            .map(|text| {
                text.lines()
                    .find_map(|l| l.strip_prefix(key).and_then(|v| v.trim().parse::<u64>().ok()))
                    .unwrap_or(0)
            })
            .sum()
    }
}

fn stop_all(processes: &mut [Process]) {
    for p in processes.iter() {
        p.signal(libc::SIGTERM);
    }
    for p in processes.iter_mut() {
        if p.wait_exit(Duration::from_secs(20)).is_none() {
            p.kill();
        }
    }
}

/// Three participants of one peer in one election, handing the lead over
/// round after round: the leader gets SIGTERM (graceful) or SIGKILL (crash)
/// and is replaced by a fresh participant, so every round starts alike.
struct Fleet {
    kind: Kind,
    label: &'static str,
    election: String,
    processes: Vec<Process>,
    /// Rounds where the old leader's job ticked after the successor's started.
    overlaps: usize,
}

impl Fleet {
    fn start(bench: &mut Bench, kind: Kind, signal: i32) -> Fleet {
        let label = if signal == libc::SIGTERM { "graceful" } else { "crash" };
        let election = format!("/bench/{}/{label}", kind.name());
        let processes: Vec<Process> = (0..3).map(|_| bench.spawn(kind, &election, 1)).collect();
        wait_elected(&processes.iter().collect::<Vec<_>>(), None, 0);
        Fleet { kind, label, election, processes, overlaps: 0 }
    }

    /// One handover: the time (ms) from the signal to the successor's job
    /// starting.
    fn handover(&mut self, bench: &mut Bench, signal: i32, round: usize) -> f64 {
        let all: Vec<&Process> = self.processes.iter().collect();
        let leader_id = zkrun_tests::wait_for("a leader", WAIT, || current_leader(&all));
        let leader = self.processes.iter().position(|p| p.id == leader_id).expect("leader is one of ours");
        let t0 = monotonic_ns();
        self.processes[leader].signal(signal);
        let all: Vec<&Process> = self.processes.iter().collect();
        let (successor, t1) = wait_elected(&all, Some(&leader_id), t0);
        // The job must never run on two hosts at once.
        let last_old_tick = timeline(&[&self.processes[leader]])
            .iter()
            .filter(|(_, what, _)| *what == Said::Tick)
            .map(|(_, _, at)| *at)
            .max()
            .unwrap_or(0);
        if last_old_tick > t1 {
            self.overlaps += 1;
            eprintln!(
                "{} {} round {round}: {leader_id} ticked after {successor} started",
                self.kind.name(),
                self.label
            );
        }
        let mut old = self.processes.remove(leader);
        if old.wait_exit(Duration::from_secs(20)).is_none() {
            old.kill();
        }
        self.processes.push(bench.spawn(self.kind, &self.election, 1));
        ms(t1 - t0)
    }

    fn stop(mut self) -> usize {
        stop_all(&mut self.processes);
        self.overlaps
    }
}

/// The ZooKeeper floor's handover times: watched, and read.
type FloorSamples = (Vec<f64>, Vec<f64>);

/// Handovers of every peer, interleaved round by round (peer order rotating
/// each round), so that load drifting over the run hits every peer alike.
/// With `floor`, each round also measures the floor once, in the same run.
fn handovers(
    bench: &mut Bench,
    kinds: &[Kind],
    signal: i32,
    rounds: usize,
    mut floor_samples: Option<(&tokio::runtime::Runtime, &mut FloorSamples)>,
) -> (BTreeMap<&'static str, Vec<f64>>, BTreeMap<&'static str, usize>) {
    let mut fleets: Vec<Fleet> = kinds.iter().map(|&kind| Fleet::start(bench, kind, signal)).collect();
    let mut samples: BTreeMap<&'static str, Vec<f64>> = BTreeMap::new();
    for round in 0..rounds {
        if let Some((tokio, (watched, read))) = floor_samples.as_mut() {
            std::thread::sleep(SETTLE);
            let (w, r) = tokio.block_on(floor(&bench.zk, 1));
            watched.extend(w);
            read.extend(r);
        }
        let peers = fleets.len();
        for i in 0..peers {
            let fleet = &mut fleets[(round + i) % peers];
            std::thread::sleep(SETTLE);
            let sample = fleet.handover(bench, signal, round);
            eprintln!("  {} {} {}/{rounds}: {sample:.1} ms", fleet.kind.name(), fleet.label, round + 1);
            samples.entry(fleet.kind.name()).or_default().push(sample);
        }
    }
    let overlaps = fleets.into_iter().map(|f| (f.kind.name(), f.stop())).collect();
    (samples, overlaps)
}

fn failovers(bench: &mut Bench, kind: Kind, rounds: usize) -> (Vec<Value>, usize) {
    let election = format!("/bench/{}/failover", kind.name());
    let mut processes: Vec<Process> = (0..3).map(|_| bench.spawn(kind, &election, 1)).collect();
    wait_elected(&processes.iter().collect::<Vec<_>>(), None, 0);
    let mut results = Vec::new();
    let mut overlaps = 0;
    for round in 0..rounds {
        std::thread::sleep(Duration::from_secs(2));
        let all: Vec<&Process> = processes.iter().collect();
        let leader_id = zkrun_tests::wait_for("a leader", WAIT, || current_leader(&all));
        let session = timeline(&all)
            .into_iter()
            .filter(|(id, _, _)| *id == leader_id)
            .filter_map(|(_, what, _)| if let Said::Joined(s) = what { Some(s) } else { None })
            .next_back()
            .expect("the leader said its session");
        let server = bench.ensemble.wait_server_of_session(session, WAIT);
        // Killing the ensemble's own leader also stops the whole ensemble
        // until the other servers elect a new one: a longer pause for every
        // client, whatever its recipe.
        let ensemble_leader = bench.ensemble.leader() == Some(server);
        let t_kill = monotonic_ns();
        bench.ensemble.kill(server);
        std::thread::sleep(bench.session_timeout * 2);
        let ticks: Vec<(String, u64)> = timeline(&all)
            .into_iter()
            .filter(|(_, what, at)| *what == Said::Tick && *at > t_kill - 2_000_000_000)
            .map(|(id, _, at)| (id, at))
            .collect();
        // The pause: the longest gap between two ticks from the last one
        // before the kill on (a library may notice the dead server late).
        let from = ticks.iter().rposition(|(_, at)| *at <= t_kill);
        let (paused_ms, changed_hands) = match from {
            Some(i) if i + 1 < ticks.len() => {
                let gap = ticks[i..].windows(2).map(|w| w[1].1 - w[0].1).max().unwrap_or(0);
                (ms(gap), ticks.last().unwrap().0 != ticks[i].0)
            }
            // No tick resumed within two session timeouts.
            Some(i) => (ms(monotonic_ns() - ticks[i].1), true),
            None => (f64::NAN, true),
        };
        // Two participants' ticks interleaving means two jobs ran at once.
        let ids: Vec<&String> = ticks.iter().map(|(id, _)| id).collect();
        let switches = ids.windows(2).filter(|w| w[0] != w[1]).count();
        if switches > 1 {
            overlaps += 1;
        }
        eprintln!(
            "  {} failover {}/{rounds}: job paused {paused_ms:.1} ms, changed hands: {changed_hands}, killed the ensemble leader: {ensemble_leader}",
            kind.name(),
            round + 1
        );
        results.push(json!({
            "paused_ms": paused_ms,
            "changed_hands": changed_hands,
            "ensemble_leader": ensemble_leader,
        }));
        bench.ensemble.restart(server);
        bench.ensemble.wait_serving(WAIT);
    }
    stop_all(&mut processes);
    (results, overlaps)
}

/// One election of `n` participants: handover time and the extra requests
/// the ensemble receives for it (beyond the steady rate of pings).
fn scale(bench: &mut Bench, kind: Kind, n: usize, rounds: usize) -> Value {
    let mut handover = Vec::new();
    let mut packets = Vec::new();
    let mut sent = Vec::new();
    let mut steady = Vec::new();
    let mut watches = 0;
    for round in 0..rounds {
        let election = format!("/bench/{}/scale{round}", kind.name());
        let mut leader = bench.spawn(kind, &election, 1);
        wait_elected(&[&leader], None, 0);
        let mut others: Vec<Process> = if kind.multi() {
            vec![bench.spawn(kind, &election, n - 1)]
        } else {
            // One zkrun per host: start them all, then wait for all.
            let started: Vec<Process> = (0..n - 1)
                .map(|_| {
                    bench.next_id += 1;
                    let id = format!("{}{}", kind.name(), bench.next_id);
                    Process::spawn(&id, kind.command(bench, &election, &id, 1))
                })
                .collect();
            for p in &started {
                wait_joined(p, 1);
            }
            started
        };
        std::thread::sleep(Duration::from_secs(2));
        watches = bench.ensemble.watch_count();
        // Requests the ensemble receives in a quiet while (mostly pings,
        // and the polling recipe's polls), then in the second of a handover.
        // Packets sent are the replies plus the watch notifications.
        let (p0, s0) = (bench.mntr("zk_packets_received"), bench.mntr("zk_packets_sent"));
        // Longer than a ping period (3/10 of the session timeout), so every
        // idle connection's keep-alive is counted.
        let quiet = Instant::now();
        std::thread::sleep(bench.session_timeout.max(Duration::from_secs(1)));
        let (p1, s1) = (bench.mntr("zk_packets_received"), bench.mntr("zk_packets_sent"));
        let quiet = quiet.elapsed().as_secs_f64();
        let rate = (p1 - p0) as f64 / quiet;
        let sent_rate = (s1 - s0) as f64 / quiet;
        let t0 = monotonic_ns();
        let window = Instant::now();
        leader.signal(libc::SIGTERM);
        let refs: Vec<&Process> = others.iter().collect();
        let (_, t1) = wait_elected(&refs, Some(&leader.id), t0);
        std::thread::sleep(Duration::from_secs(1).saturating_sub(window.elapsed()));
        let (p2, s2) = (bench.mntr("zk_packets_received"), bench.mntr("zk_packets_sent"));
        let elapsed = window.elapsed().as_secs_f64();
        let extra = (p2 - p1) as f64 - rate * elapsed;
        let extra_sent = (s2 - s1) as f64 - sent_rate * elapsed;
        handover.push(ms(t1 - t0));
        packets.push(extra.round());
        sent.push(extra_sent.round());
        steady.push(rate.round());
        eprintln!(
            "  {} scale {}/{rounds}: {n} participants, handover {:.1} ms, {extra:.0} extra packets in, {extra_sent:.0} out, {rate:.0} packets/s steady",
            kind.name(),
            round + 1,
            ms(t1 - t0)
        );
        leader.wait_exit(Duration::from_secs(20));
        stop_all(&mut others);
    }
    json!({
        "participants": n,
        "handover_ms": handover,
        "packets_per_handover": packets,
        "sent_per_handover": sent,
        "steady_packets_per_s": steady,
        "watches": watches,
    })
}

/// The minimum a watch-based handover needs: one participant deletes its
/// node (a quorum write) and the next one's watch fires; recipes that read
/// the children after the notification (Curator, kazoo) add that read.
/// Returns (write → watch, write → watch → read) samples.
async fn floor(connect: &str, rounds: usize) -> (Vec<f64>, Vec<f64>) {
    let leaving = zk::Client::connect(connect).await.unwrap();
    let waiting = zk::Client::connect(connect).await.unwrap();
    let _ =
        leaving.mkdir("/bench/floor", &zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all())).await;
    let ephemeral = zk::CreateMode::EphemeralSequential.with_acls(zk::Acls::anyone_all());
    let (mut watched, mut read) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        let (_, seq) = leaving.create("/bench/floor/n-", b"", &ephemeral).await.unwrap();
        let path = format!("/bench/floor/n-{seq}");
        // The waiting client's server may not have applied the create yet:
        // catch up first, or the watch would fire on the creation.
        waiting.sync(&path).await.unwrap();
        let (stat, watch) = waiting.check_and_watch_stat(&path).await.unwrap();
        assert!(stat.is_some(), "{path} must exist once synced");
        tokio::time::sleep(SETTLE).await;
        let t0 = monotonic_ns();
        // The successor does not wait for the leaver's reply, only its watch.
        let delete = leaving.delete(&path, None);
        let (deleted, event) = tokio::join!(delete, watch.changed());
        deleted.unwrap();
        assert_eq!(event.event_type, zk::EventType::NodeDeleted);
        let t1 = monotonic_ns();
        waiting.list_children("/bench/floor").await.unwrap();
        let t2 = monotonic_ns();
        watched.push(ms(t1 - t0));
        read.push(ms(t2 - t0));
    }
    (watched, read)
}

/// zkrun on its own: hook costs in-process, memory and CPU of a real process.
fn zkrun_alone(bench: &mut Bench, smoke: bool) -> Value {
    let runtime =
        Runtime::new(RuntimeConfig { participant: "bench".into(), ..RuntimeConfig::default() }).unwrap();
    let path = paths::plugin("heartbeat");
    let started = Instant::now();
    let compiles = if smoke { 2 } else { 10 };
    for _ in 0..compiles {
        runtime.load(&path).unwrap();
    }
    let compile_ms = started.elapsed().as_secs_f64() * 1e3 / compiles as f64;
    let plugin = runtime.load(&path).unwrap();
    let tokio = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let instances = if smoke { 100 } else { 2000 };
    let started = Instant::now();
    for _ in 0..instances {
        tokio.block_on(runtime.instantiate(&plugin, Some(1), None)).unwrap();
    }
    let instantiate_us = started.elapsed().as_secs_f64() * 1e6 / instances as f64;
    let facts = Facts { term: 1, participant: "bench".into(), election: "/bench".into() };
    let permit: Arc<dyn Permit> = Arc::new(|| true);
    let mut instance = tokio.block_on(runtime.instantiate(&plugin, Some(1), None)).unwrap();
    tokio.block_on(instance.on_elected(&facts, permit.clone())).unwrap();
    let ticks = if smoke { 1000 } else { 100_000 };
    let started = Instant::now();
    for _ in 0..ticks {
        tokio.block_on(instance.tick(&facts, permit.clone())).unwrap();
    }
    let tick_call_us = started.elapsed().as_secs_f64() * 1e6 / ticks as f64;

    // A real process at a 1 ms tick, with plugin output filtered out of the
    // log so that we measure zkrun, not log formatting.
    bench.next_id += 1;
    let id = format!("alone{}", bench.next_id);
    let mut command = Kind::Zkrun.command_ticking(bench, "/bench/zkrun/alone", &id, 1, 1);
    command.args(["--log-level", "warn,zkrun::supervisor=info"]);
    let mut tick_1ms = Process::spawn(&id, command);
    tick_1ms.wait_event("elected", WAIT, |e| e.kind() == "elected");
    std::thread::sleep(Duration::from_secs(1));
    let window = if smoke { Duration::from_secs(2) } else { Duration::from_secs(10) };
    let cpu0 = cpu_ticks(tick_1ms.pid());
    std::thread::sleep(window);
    let cpu1 = cpu_ticks(tick_1ms.pid());
    let clock_ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let cpu_percent = (cpu1 - cpu0) as f64 / clock_ticks / window.as_secs_f64() * 100.0;
    stop_all(std::slice::from_mut(&mut tick_1ms));

    // Idle: a leader with the default 1 s tick.
    bench.next_id += 1;
    let id = format!("alone{}", bench.next_id);
    let command = Kind::Zkrun.command_ticking(bench, "/bench/zkrun/idle", &id, 1, 1000);
    let mut idle = Process::spawn(&id, command);
    idle.wait_event("elected", WAIT, |e| e.kind() == "elected");
    std::thread::sleep(Duration::from_secs(3));
    let rss_idle_mib = rss_kib(idle.pid()) as f64 / 1024.0;
    stop_all(std::slice::from_mut(&mut idle));
    json!({
        "compile_ms": compile_ms,
        "instantiate_us": instantiate_us,
        "tick_call_us": tick_call_us,
        "rss_idle_mib": rss_idle_mib,
        "cpu_1ms_tick_percent": cpu_percent,
    })
}

/// A zkrun running `plugin` alone in a fresh election, caching compiled
/// code in `cache`.
fn spawn_alone(bench: &mut Bench, plugin: &str, cache: &std::path::Path) -> Process {
    bench.next_id += 1;
    let id = format!("fp{}", bench.next_id);
    let mut command = Command::new(paths::zkrun_binary());
    command.args(["run", "--log-format", "json", "--id", &id, "--tick", "1s", "--session-timeout", "4s"]);
    command.arg("--plugin").arg(paths::plugin(plugin)).args(["--zk", &bench.zk]);
    command.args(["--election", &format!("/bench/footprint/{id}")]).arg("--cache-dir").arg(cache);
    Process::spawn(&id, command)
}

/// Milliseconds from spawning zkrun to its `elected` event.
fn start_to_elected(bench: &mut Bench, plugin: &str, cache: &std::path::Path) -> f64 {
    let spawned = monotonic_ns();
    let mut p = spawn_alone(bench, plugin, cache);
    let elected = p.wait_event("elected", WAIT, |e| e.kind() == "elected");
    let at = elected.mono_ns().expect("elected carries mono_ns");
    stop_all(std::slice::from_mut(&mut p));
    (at - spawned) as f64 / 1e6
}

/// Start-up and resident memory, as a Markdown table.
fn footprint(bench: &mut Bench, rounds: usize) -> String {
    let mut table = String::from("| measure | median | min | max |\n|---|---|---|---|\n");
    let mut row = |name: String, samples: &[f64], unit: &str| {
        let min = samples.iter().cloned().fold(f64::INFINITY, f64::min);
        let max = samples.iter().cloned().fold(0.0, f64::max);
        table += &format!("| {name} | {:.1} {unit} | {min:.1} | {max:.1} |\n", median(samples));
    };
    for plugin in ["heartbeat", "heartbeat-py"] {
        eprintln!("footprint: {plugin} start-up, {rounds} rounds cold and cached");
        let cold: Vec<f64> = (0..rounds)
            .map(|_| start_to_elected(bench, plugin, zkrun_tests::TempDir::new("cold").path()))
            .collect();
        let cache = zkrun_tests::TempDir::new("cache");
        start_to_elected(bench, plugin, cache.path());
        let cached: Vec<f64> = (0..rounds).map(|_| start_to_elected(bench, plugin, cache.path())).collect();
        row(format!("start to `elected`, {plugin}, nothing cached"), &cold, "ms");
        row(format!("start to `elected`, {plugin}, compiled code cached"), &cached, "ms");
    }
    eprintln!("footprint: resident memory");
    let cache = zkrun_tests::TempDir::new("cache");
    for plugin in ["heartbeat", "heartbeat-py"] {
        start_to_elected(bench, plugin, cache.path());
        let leader = spawn_alone(bench, plugin, cache.path());
        leader.wait_event("elected", WAIT, |e| e.kind() == "elected");
        // A follower of the same election: same plugin, never elected.
        let election = format!("/bench/footprint/{}", leader.id);
        bench.next_id += 1;
        let id = format!("fp{}", bench.next_id);
        let mut command = Command::new(paths::zkrun_binary());
        command.args(["run", "--log-format", "json", "--id", &id, "--tick", "1s", "--session-timeout", "4s"]);
        command.arg("--plugin").arg(paths::plugin(plugin)).args(["--zk", &bench.zk, "--election", &election]);
        command.arg("--cache-dir").arg(cache.path());
        let follower = Process::spawn(&id, command);
        follower.wait_event("following", WAIT, |e| e.kind() == "following" || e.kind() == "joined");
        std::thread::sleep(Duration::from_secs(5));
        let mib = |p: &Process| rss_kib(p.pid()) as f64 / 1024.0;
        row(format!("resident memory, leader, {plugin}, 1 s tick"), &[mib(&leader)], "MiB");
        row(format!("resident memory, follower, {plugin}"), &[mib(&follower)], "MiB");
        stop_all(&mut [leader, follower]);
    }
    table
}

fn cpu_ticks(pid: i32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> =
        stat.rsplit_once(") ").map(|(_, rest)| rest.split_whitespace().collect()).unwrap_or_default();
    // utime and stime are fields 14 and 15 of stat, 12 and 13 after the name.
    fields.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
        + fields.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
}

fn rss_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn first_line(command: &str, args: &[&str]) -> String {
    Command::new(command)
        .args(args)
        .output()
        .ok()
        .map(|o| {
            let text = if o.stdout.is_empty() { o.stderr } else { o.stdout };
            String::from_utf8_lossy(&text).lines().next().unwrap_or("").trim().to_string()
        })
        .unwrap_or_default()
}

fn machine() -> Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string());
    let cores = cpuinfo.lines().filter(|l| l.starts_with("processor")).count();
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_kib: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    let os = std::fs::read_to_string("/etc/os-release")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME=").map(|v| v.trim_matches('"').to_string()));
    json!({
        "cpu": cpu,
        "cores": cores,
        "memory_gib": (mem_kib as f64 / 1024.0 / 1024.0).round(),
        "kernel": first_line("uname", &["-sr"]),
        "os": os,
    })
}

fn versions() -> Value {
    let debian = |package: &str| first_line("dpkg-query", &["-W", "-f=${Version}", package]);
    let kazoo = first_line(
        paths::root().join("target/bench-venv/bin/python").to_str().unwrap(),
        &["-c", "import kazoo.version; print(kazoo.version.__version__)"],
    );
    json!({
        "zookeeper": debian("zookeeper"),
        "curator": debian("libcurator-recipes-java"),
        "kazoo": kazoo,
        "java": first_line("java", &["-version"]),
        "python": first_line(paths::root().join("target/bench-venv/bin/python").to_str().unwrap(), &["--version"]),
        "zkrun": env!("CARGO_PKG_VERSION"),
    })
}

fn main() {
    let options = Options::parse();
    let smoke = options.smoke;
    let graceful_rounds = options.graceful_rounds.unwrap_or(if smoke { 2 } else { 60 });
    let crash_rounds = options.crash_rounds.unwrap_or(if smoke { 1 } else { 10 });
    let failover_rounds = options.failover_rounds.unwrap_or(if smoke { 1 } else { 5 });
    let scale_n = options.scale_participants.unwrap_or(if smoke { 10 } else { 100 });
    let scale_rounds = options.scale_rounds.unwrap_or(if smoke { 1 } else { 3 });
    let kinds: Vec<Kind> = options.peers.iter().map(|p| Kind::parse(p)).collect();

    eprintln!("starting a 3-server ensemble (fsync on, full JIT)");
    let ensemble = Ensemble::start_with(EnsembleOptions {
        force_sync: true,
        fast_start: false,
        ..EnsembleOptions::default()
    });
    let zk = ensemble.connect_string();
    let mut bench = Bench {
        ensemble,
        zk,
        session_timeout: Duration::from_millis(options.session_timeout_ms),
        zkrun_lease: options.zkrun_lease.clone(),
        next_id: 0,
    };
    if options.footprint {
        println!("{}", footprint(&mut bench, options.footprint_rounds));
        return;
    }
    let tokio = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();

    // Warm the servers' JIT up before measuring anything.
    tokio.block_on(floor(&bench.zk, if smoke { 20 } else { 200 }));

    eprintln!("graceful handover, peers interleaved round by round, the floor measured each round");
    let mut floor_samples = (Vec::new(), Vec::new());
    let (graceful, o1) =
        handovers(&mut bench, &kinds, libc::SIGTERM, graceful_rounds, Some((&tokio, &mut floor_samples)));
    let (floor_watch, floor_read) = floor_samples;
    eprintln!(
        "floor: one quorum write and its watch: median {:.2} ms; and one read after it: {:.2} ms",
        median(&floor_watch),
        median(&floor_read)
    );
    eprintln!("crash handover, peers interleaved round by round");
    let (crash, o2) = handovers(&mut bench, &kinds, libc::SIGKILL, crash_rounds, None);

    let mut failover = BTreeMap::new();
    let mut scales = BTreeMap::new();
    let mut overlaps: BTreeMap<&str, usize> = BTreeMap::new();
    for &kind in &kinds {
        eprintln!("{}: ensemble failover", kind.name());
        let (rounds, o3) = failovers(&mut bench, kind, failover_rounds);
        failover.insert(kind.name(), rounds);
        eprintln!("{}: {scale_n} participants", kind.name());
        scales.insert(kind.name(), scale(&mut bench, kind, scale_n, scale_rounds));
        overlaps
            .insert(kind.name(), o1.get(kind.name()).unwrap_or(&0) + o2.get(kind.name()).unwrap_or(&0) + o3);
    }
    let alone = kinds.contains(&Kind::Zkrun).then(|| zkrun_alone(&mut bench, smoke));

    let results = json!({
        "date": humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        "mode": if smoke { "smoke" } else { "full" },
        "machine": machine(),
        "versions": versions(),
        "ensemble": { "servers": bench.ensemble.size(), "tick_ms": bench.ensemble.options().tick.as_millis() as u64, "force_sync": true },
        "session_timeout_ms": options.session_timeout_ms,
        "tick_ms": TICK_MS,
        "floor": { "write_then_watch_ms": floor_watch, "write_then_read_ms": floor_read },
        "graceful": graceful,
        "crash": crash,
        "failover": failover,
        "scale": scales,
        "overlaps": overlaps,
        "zkrun_alone": alone,
        "notes": [
            format!("Every peer runs the same trivial job: a tick every {TICK_MS} ms while it believes it leads; \"the job starts\" is its elected event."),
            "Handover times run from the signal to the successor's elected event, both on CLOCK_MONOTONIC.",
            "Failover kills (SIGKILL) the ZooKeeper server the leader's session is connected to; the pause is the longest gap between two ticks of the job, from the last tick before the server died until two session timeouts later.",
            "Scale: extra requests are the packets the ensemble received (`mntr` zk_packets_received, all servers) in the second after the SIGTERM, minus those of the quiet second before (mostly pings); extra replies and notifications are the same for zk_packets_sent. A herd effect would add one or more of each per participant.",
        ],
    });
    if let Some(dir) = options.out.parent() {
        std::fs::create_dir_all(dir).unwrap();
    }
    std::fs::write(&options.out, serde_json::to_string_pretty(&results).unwrap()).unwrap();
    eprintln!("wrote {}", options.out.display());
}

fn median(samples: &[f64]) -> f64 {
    let mut sorted = samples.to_vec();
    sorted.sort_by(|a, b| a.total_cmp(b));
    sorted.get(sorted.len() / 2).copied().unwrap_or(f64::NAN)
}
