//! `scripts/demo.sh`: a local 3-server ensemble, three zkrun participants
//! running the `heartbeat` plugin, and the failovers zkrun exists for.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use zkrun_tests::process::run_to_end;
use zkrun_tests::{Ensemble, Event, Process, paths};

const SESSION: &str = "4s";
const ELECTION: &str = "/zkrun/demo";

fn say(text: &str) {
    println!("\n\x1b[1m== {text}\x1b[0m");
}

/// Prints the interesting events of one participant as they happen.
fn follow(process: &Process, start: Instant, running: Arc<AtomicBool>) {
    let log = process.log().clone();
    let id = process.id.clone();
    std::thread::spawn(move || {
        let mut next = 0;
        while running.load(Ordering::Relaxed) {
            let events = log.all();
            for event in &events[next..] {
                if let Some(line) = describe(event) {
                    println!("  {:>6.2}s  [{id}] {line}", start.elapsed().as_secs_f64());
                }
            }
            next = events.len();
            std::thread::sleep(Duration::from_millis(50));
        }
    });
}

fn describe(event: &Event) -> Option<String> {
    let term = event.term().map(|t| format!(" term {t}")).unwrap_or_default();
    match event.kind() {
        "joined" => Some(format!("joined the election as {}", event.str("node"))),
        "elected" => Some(format!("\x1b[32melected\x1b[0m{term}")),
        "suspended" => Some(format!("\x1b[33msuspended\x1b[0m{term}: connection in doubt, job paused")),
        "resumed" => Some(format!("\x1b[32mresumed\x1b[0m{term}: same session, same term")),
        "demoted" => Some(format!("\x1b[31mdemoted\x1b[0m{term} ({})", event.reason())),
        "plugin_log" => Some(format!("plugin: {}", event.message())),
        "shutdown" => Some("SIGTERM: handing over".into()),
        "plugin_failed" | "zk_unreachable" => Some(format!("{}: {}", event.kind(), event.message())),
        _ => None,
    }
}

/// Participants whose latest leadership event says they lead.
fn leaders(processes: &[Process]) -> Vec<usize> {
    (0..processes.len())
        .filter(|&i| {
            let events = processes[i].events();
            let last = events
                .iter()
                .rev()
                .find(|e| matches!(e.kind(), "elected" | "resumed" | "demoted" | "suspended" | "stopped"));
            last.is_some_and(|e| matches!(e.kind(), "elected" | "resumed"))
        })
        .collect()
}

/// Waits for a leader among the participants not in `gone`.
fn wait_leader(processes: &[Process], gone: &[usize], timeout: Duration) -> usize {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(&i) = leaders(processes).iter().find(|i| !gone.contains(i)) {
            return i;
        }
        assert!(Instant::now() < deadline, "no leader within {timeout:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn status(ensemble: &Ensemble) {
    let output = run_to_end(
        &["status", "--zk", &ensemble.connect_string(), "--election", ELECTION],
        Duration::from_secs(30),
    );
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        println!("    {line}");
    }
}

fn main() {
    let start = Instant::now();
    let running = Arc::new(AtomicBool::new(true));
    let heartbeat = paths::plugin("heartbeat");

    say("Starting a 3-server ZooKeeper ensemble on 127.0.0.1 (Debian's zookeeper package)");
    let mut ensemble = Ensemble::start();
    println!("    servers: {}", ensemble.connect_string());

    say("Starting three zkrun participants with the heartbeat plugin");
    let mut processes = Vec::new();
    for id in ["edge-1", "edge-2", "edge-3"] {
        let p = Process::zkrun(
            id,
            &[
                "--plugin".as_ref(),
                heartbeat.as_os_str(),
                "--zk".as_ref(),
                ensemble.connect_string().as_ref(),
                "--election".as_ref(),
                ELECTION.as_ref(),
                "--tick".as_ref(),
                "500ms".as_ref(),
                "--session-timeout".as_ref(),
                SESSION.as_ref(),
            ],
        );
        follow(&p, start, running.clone());
        p.wait_event("joined", Duration::from_secs(30), |e| e.kind() == "joined");
        processes.push(p);
    }
    let first = wait_leader(&processes, &[], Duration::from_secs(30));
    std::thread::sleep(Duration::from_secs(2));
    say("zkrun status");
    status(&ensemble);

    say(&format!(
        "Killing the leader, {} (SIGKILL): the next takes over once its lease deadline has passed (session timeout {SESSION})",
        processes[first].id
    ));
    let killed = Instant::now();
    processes[first].kill();
    let second = wait_leader(&processes, &[first], Duration::from_secs(60));
    println!("    {} took over {:.1}s after the kill", processes[second].id, killed.elapsed().as_secs_f64());
    std::thread::sleep(Duration::from_secs(2));

    let zk_leader = ensemble.leader().expect("the ensemble has a leader");
    say(&format!("Stopping ZooKeeper server {} (the ensemble's own leader)", zk_leader + 1));
    let before = processes[second].events().len();
    ensemble.kill(zk_leader);
    std::thread::sleep(Duration::from_secs(4));
    let ticks = processes[second].events()[before..].iter().filter(|e| e.is_heartbeat_tick()).count();
    let still = leaders(&processes).contains(&second);
    println!(
        "    {} is {} and ticked {ticks} times since the server stopped",
        processes[second].id,
        if still { "still the leader, same term," } else { "no longer leading" }
    );
    ensemble.restart(zk_leader);

    say(&format!("Stopping the leader, {} (SIGTERM): it hands over at once", processes[second].id));
    let stopped_at = zkrun_tests::monotonic_ns();
    processes[second].signal(libc::SIGTERM);
    let third = wait_leader(&processes, &[first, second], Duration::from_secs(30));
    let elected = processes[third].wait_event("elected", Duration::from_secs(30), |e| e.kind() == "elected");
    let status_code = processes[second].wait_exit(Duration::from_secs(30));
    if let Some(at) = elected.mono_ns() {
        println!(
            "    {} elected {:.1} ms after the SIGTERM; {} exited with {:?}",
            processes[third].id,
            (at.saturating_sub(stopped_at)) as f64 / 1e6,
            processes[second].id,
            status_code.and_then(|s| s.code())
        );
    }
    std::thread::sleep(Duration::from_secs(2));
    say("zkrun status");
    status(&ensemble);

    say("Cleaning up: stopping zkrun and the ensemble");
    for p in &processes {
        p.signal(libc::SIGTERM);
    }
    for p in &mut processes {
        p.wait_exit(Duration::from_secs(15));
    }
    running.store(false, Ordering::Relaxed);
    drop(processes);
    drop(ensemble);
    println!("    done in {:.0}s", start.elapsed().as_secs_f64());
}
