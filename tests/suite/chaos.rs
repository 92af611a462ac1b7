//! A short seeded chaos run: every kind of fault, no violation.

use std::time::Duration;

use zkrun_tests::chaos::{self, ChaosConfig, FaultKind};

#[test]
fn a_short_chaos_run_finds_no_violation() {
    let mut config = ChaosConfig::new(20261125, Duration::from_secs(100));
    config.verbose = true;
    let report = chaos::run(config);
    eprintln!("{report}");
    assert!(report.violations.is_empty(), "{report}");
    // Not vacuous: every kind of fault happened, and the job ran.
    for kind in FaultKind::ALL {
        assert!(report.faults.get(&kind).copied().unwrap_or(0) >= 1, "no {kind:?} in {report}");
    }
    assert!(report.ticks > 100 && report.handovers > 5 && report.commits > 100, "{report}");
}

fn line(id: &str, json: serde_json::Value) -> (String, zkrun_tests::Event) {
    let log = zkrun_tests::EventLog::default();
    log.push(json.to_string());
    (id.to_string(), log.all().remove(0))
}

fn tick(id: &str, term: u64, start: u64, end: Option<u64>) -> Vec<(String, zkrun_tests::Event)> {
    let mut lines = vec![line(
        id,
        serde_json::json!({"event": "plugin_log", "message": format!("witness start {start} term {term}"), "mono_ns": start}),
    )];
    if let Some(end) = end {
        lines.push(line(
            id,
            serde_json::json!({"event": "plugin_log", "message": format!("witness end {start} {end} term {term}"), "mono_ns": end}),
        ));
    }
    lines
}

fn commit(id: &str, n: u64, term: u64, at: u64) -> (String, zkrun_tests::Event) {
    line(
        id,
        serde_json::json!({"event": "plugin_log", "message": format!("committed {n} under term {term} (version {})", n - 1), "mono_ns": at}),
    )
}

fn elected(id: &str, term: u64, at: u64) -> (String, zkrun_tests::Event) {
    line(id, serde_json::json!({"event": "elected", "term": term, "mono_ns": at}))
}

/// The checker is only worth something if it can fail: feed it histories
/// with each kind of violation.
#[test]
fn the_checker_catches_every_kind_of_violation() {
    let check = |events: Vec<(String, zkrun_tests::Event)>, stored: (u64, i32)| {
        let mut report = chaos::Report::default();
        chaos::check(&events, Ok(stored), &mut report);
        report.violations
    };

    // A clean history: w0 leads with term 10, then w1 with term 12.
    let mut clean = vec![elected("w0", 10, 100)];
    clean.extend(tick("w0", 10, 110, Some(120)));
    clean.push(commit("w0", 1, 10, 115));
    clean.push(elected("w1", 12, 200));
    clean.extend(tick("w1", 12, 210, Some(220)));
    clean.push(commit("w1", 2, 12, 215));
    assert_eq!(check(clean.clone(), (2, 1)), Vec::<String>::new());

    // Two ticks overlapping: w0's tick still running when w1's starts.
    let mut overlap = clean.clone();
    overlap.extend(tick("w0", 10, 205, Some(212)));
    assert!(check(overlap, (2, 1)).iter().any(|v| v.starts_with("overlap")));

    // A tick cut off without an end still counts from its start.
    let mut cut = clean.clone();
    cut.extend(tick("w0", 10, 212, None));
    let found = check(cut, (2, 1));
    assert!(found.iter().any(|v| v.starts_with("overlap")), "{found:?}");

    // A later election with a lower term.
    let mut stale = clean.clone();
    stale.push(elected("w2", 11, 300));
    assert!(check(stale, (2, 1)).iter().any(|v| v.starts_with("term did not increase")));

    // A duplicated increment, and a stored counter that lost one.
    let mut duplicate = clean.clone();
    duplicate.push(commit("w1", 2, 12, 218));
    assert!(check(duplicate, (2, 1)).iter().any(|v| v.starts_with("counter")));
    assert!(check(clean, (2, 2)).iter().any(|v| v.contains("lost or doubled")));
}
