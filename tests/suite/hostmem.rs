//! What a plugin makes the host hold, compile and cache on its behalf
//! (issue 23, items 1, 2 and 5): hostile components against the real
//! `zkrun` binary and a real ensemble.

use std::path::Path;
use std::time::Duration;

use zkrun_tests::process::participant_args;
use zkrun_tests::{Ensemble, EnsembleOptions, Event, Process, paths};

const SOON: Duration = Duration::from_secs(30);
const MIB: u64 = 1 << 20;
/// zkrun at the default limits (64 MiB for the plugin, everything it makes
/// the host hold included) stays under this: 64 MiB + 64 MiB.
const RSS_CAP: u64 = 128 * MIB;

fn one_server() -> Ensemble {
    Ensemble::start_with(EnsembleOptions { servers: 1, ..EnsembleOptions::default() })
}

fn participant(ensemble: &Ensemble, election: &str, id: &str, plugin: &Path, extra: &[&str]) -> Process {
    let args = participant_args(&ensemble.connect_string(), election, plugin, "200ms", "4s", extra);
    let p = Process::zkrun(id, &args);
    p.wait_event("joined", SOON, |e| e.kind() == "joined");
    p
}

/// A value from /proc/PID/status, in bytes (`VmRSS`, `VmHWM`).
fn proc_status(pid: i32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix(field).and_then(|v| v.strip_prefix(':')))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {field} in {status}"));
    kib * 1024
}

fn hoard_summary(e: &Event) -> bool {
    e.kind() == "plugin_log" && e.message().starts_with("hoard: ")
}

fn out_of_host_memory(e: &Event) -> bool {
    e.kind() == "plugin_failed" && e.str("kind") == "out-of-memory" && e.raw.contains("wasi:http resources")
}

/// Waits for `n` events matching `pred`, then checks zkrun's peak RSS and
/// that it is still running.
fn hoards_within_the_cap(p: &mut Process, what: &str, n: usize, pred: fn(&Event) -> bool) -> Vec<Event> {
    let seen = zkrun_tests::wait_for_opt(Duration::from_secs(90), || {
        let found: Vec<Event> = p.events().into_iter().filter(|e| pred(e)).collect();
        (found.len() >= n).then_some(found)
    })
    .unwrap_or_else(|| panic!("{what}: fewer than {n} in time\n{}", p.dump()));
    let (peak, now) = (proc_status(p.pid(), "VmHWM"), proc_status(p.pid(), "VmRSS"));
    eprintln!("{what}: zkrun peak RSS {} MiB, now {} MiB", peak / MIB, now / MIB);
    assert!(peak < RSS_CAP, "{what}: peak RSS {} MiB\n{}", peak / MIB, p.dump());
    assert!(p.wait_exit(Duration::from_millis(100)).is_none(), "{what}: zkrun exited\n{}", p.dump());
    seen
}

#[test]
fn unsent_http_bodies_keep_zkrun_small_with_or_without_a_grant() {
    let ensemble = one_server();
    let hoard = paths::plugin("hoard");

    // No HTTP grant: the host buffers no request data at all, and the
    // plugin sees each body refused.
    let mut p = participant(
        &ensemble,
        "/zkrun/hostmem/bodies",
        "ungranted",
        &hoard,
        &["--plugin-config", "hoard=bodies"],
    );
    let ticks = hoards_within_the_cap(&mut p, "ungranted bodies", 3, hoard_summary);
    for tick in &ticks {
        assert!(
            tick.message().starts_with(
                "hoard: bodies made 0 holding 0 bytes refused 1000 (outgoing-request.body refused)"
            ),
            "{tick:?}"
        );
    }
    drop(p);

    // With a grant, bodies are buffered, within the instance's budget: the
    // tick traps at the budget, and the next term does it again.
    let mut p = participant(
        &ensemble,
        "/zkrun/hostmem/bodies-granted",
        "granted",
        &hoard,
        &["--plugin-config", "hoard=bodies", "--allow-http", "http://127.0.0.1:9/"],
    );
    let failures = hoards_within_the_cap(&mut p, "granted bodies", 2, out_of_host_memory);
    assert!(failures[0].raw.contains("past the 64 MiB cap"), "{:?}", failures[0]);
    assert!(!p.events().iter().any(hoard_summary), "a tick got past the budget\n{}", p.dump());
}

#[test]
fn eight_thousand_large_fields_keep_zkrun_small() {
    let ensemble = one_server();
    let mut p = participant(
        &ensemble,
        "/zkrun/hostmem/fields",
        "fields",
        &paths::plugin("hoard"),
        &["--plugin-config", "hoard=fields"],
    );
    let failures = hoards_within_the_cap(&mut p, "fields", 2, out_of_host_memory);
    assert!(failures[0].raw.contains("past the 64 MiB cap"), "{:?}", failures[0]);
    assert!(!p.events().iter().any(hoard_summary), "a tick got past the budget\n{}", p.dump());
}
