//! Plugins written in Python (componentize-py) and JavaScript
//! (componentize-js), built from `plugins/*-py` and `plugins/*-js` by
//! `scripts/build-plugins.sh`, leading real elections like the Rust ones.

use std::ffi::OsString;
use std::time::Duration;

use zkrun_tests::process::{participant_args, run_to_end};
use zkrun_tests::{Ensemble, Event, Process, paths};
use zookeeper_client as zk;

/// Generous: an 18 MB Python component takes seconds to compile, and more
/// on a busy machine.
const SOON: Duration = Duration::from_secs(120);

fn args(ensemble: &Ensemble, election: &str, plugin: &str, tick: &str) -> Vec<OsString> {
    // Several of these compile at once in the suite.
    let extra = ["--compile-timeout", "10m"];
    participant_args(&ensemble.connect_string(), election, &paths::plugin(plugin), tick, "4s", &extra)
}

#[test]
fn python_and_javascript_heartbeats_lead_a_real_election() {
    let ensemble = Ensemble::start();
    let mut leaders = Vec::new();
    for name in ["heartbeat-py", "heartbeat-js"] {
        let out = run_to_end(
            &[
                "check".as_ref(),
                "--compile-timeout".as_ref(),
                "10m".as_ref(),
                paths::plugin(name).as_os_str(),
            ],
            SOON,
        );
        assert_eq!(out.status.code(), Some(0), "{name}: {}", String::from_utf8_lossy(&out.stderr));
        let election = format!("/zkrun/guests/{name}");
        leaders.push((name, Process::zkrun(name, &args(&ensemble, &election, name, "200ms"))));
    }
    for (name, p) in &leaders {
        let term = p.wait_event("elected", SOON, |e| e.kind() == "elected").term().unwrap();
        zkrun_tests::wait_for(&format!("{name} ticking"), SOON, || {
            let ticks = p.events().iter().filter(|e| e.is_heartbeat_tick() && e.term() == Some(term)).count();
            (ticks >= 3).then_some(())
        });
        let first = p.events().into_iter().find(Event::is_heartbeat_tick).unwrap();
        assert_eq!(first.message(), format!("I am Leader: term {term} id {name} tick 1"), "{name}");
        assert_eq!(first.str("plugin"), *name);
    }
}

/// `committed N under term T` lines of one process: (N, mono_ns).
fn commits(p: &Process) -> Vec<(u64, u64)> {
    p.events()
        .iter()
        .filter(|e| e.kind() == "plugin_log")
        .filter_map(|e| {
            let n = e.message().strip_prefix("committed ")?.split_whitespace().next()?.parse().ok()?;
            Some((n, e.mono_ns()?))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_counter_keeps_counting_across_a_sigkill() {
    let ensemble = Ensemble::start();
    let election = "/zkrun/guests/counter-py";
    let mut first = Process::zkrun("first", &args(&ensemble, election, "counter-py", "100ms"));
    first.wait_event("elected", SOON, |e| e.kind() == "elected");
    let second = Process::zkrun("second", &args(&ensemble, election, "counter-py", "100ms"));
    second.wait_event("joined", SOON, |e| e.kind() == "joined");
    zkrun_tests::wait_for("a few commits", SOON, || (commits(&first).len() >= 5).then_some(()));
    first.kill();
    second.wait_event("elected", SOON, |e| e.kind() == "elected");
    zkrun_tests::wait_for("the successor's commits", SOON, || (commits(&second).len() >= 5).then_some(()));
    let mut second = second;
    second.signal(libc::SIGTERM);
    second.wait_exit(SOON).expect("SIGTERM ends the process");

    let client = zk::Client::connect(&ensemble.connect_string()).await.unwrap();
    let (data, stat) = client.get_data(&format!("{election}/state/counter")).await.unwrap();
    let stored: u64 = String::from_utf8(data).unwrap().split_whitespace().next().unwrap().parse().unwrap();
    // One increment per committed compare-and-set: nothing lost or doubled.
    assert_eq!(stored, stat.version as u64 + 1, "value {stored} at version {}", stat.version);
    // The successor went on from where the killed leader stopped: no gap
    // but the one the SIGKILL may have cost the logs.
    let mut all: Vec<(u64, u64)> = commits(&first).into_iter().chain(commits(&second)).collect();
    all.sort_by_key(|&(_, at)| at);
    let values: Vec<u64> = all.iter().map(|c| c.0).collect();
    assert_eq!(values.first(), Some(&1));
    assert!(values.windows(2).all(|w| w[0] < w[1] && w[1] - w[0] <= 2), "{values:?}");
    assert_eq!(*values.last().unwrap(), stored, "the last logged commit is what is stored");
}

#[test]
fn a_python_job_starts_from_the_compiled_code_cache_the_second_time() {
    let ensemble = Ensemble::start();
    let dir = zkrun_tests::TempDir::new("guest-cache");
    let cache = dir.path().join("cache");
    let mut extra: Vec<OsString> = args(&ensemble, "/zkrun/guests/cache", "heartbeat-py", "200ms");
    extra.extend(["--cache-dir".into(), cache.clone().into()]);
    let mut starts = Vec::new();
    for round in 0..2 {
        let mut p = Process::zkrun(&format!("round{round}"), &extra);
        starts.push(p.wait_event("starting", SOON, |e| e.kind() == "starting"));
        p.wait_event("elected", SOON, |e| e.kind() == "elected");
        p.signal(libc::SIGTERM);
        p.wait_exit(SOON).expect("SIGTERM ends the process");
    }
    assert_eq!(starts[0].json["cached"], false);
    assert_eq!(starts[1].json["cached"], true, "{:?}", starts[1]);
    assert_eq!(starts[0].str("sha256"), starts[1].str("sha256"));
    eprintln!(
        "heartbeat-py: compiled in {} ms, from the cache in {} ms",
        starts[0].json["compile_ms"], starts[1].json["compile_ms"]
    );
}
