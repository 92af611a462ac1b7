//! Short seeded chaos runs (every kind of fault, no violation), and the
//! checker's own tests: it must catch each bug it exists for.

use std::time::Duration;

use zkrun_tests::chaos::{self, ChaosConfig, FaultKind};

/// Issue 24: 100 s of every kind of fault with the witness run once per
/// 2-second slot (`--every 2s`): no violation (property 16 included: no
/// slot started twice in one attempt, none lost without a record, the
/// ledger agreeing with the journals), and slots that really ran.
#[test]
fn a_short_scheduled_chaos_run_finds_no_violation() {
    let mut config = ChaosConfig::new(20261205, Duration::from_secs(100));
    config.every = Some(Duration::from_secs(2));
    config.verbose = true;
    let report = chaos::run(config);
    eprintln!("{report}");
    assert!(report.violations.is_empty(), "{report}");
    let slots = report.slots.as_ref().expect("a scheduled run tallies its slots");
    // Not vacuous: the run lasts over 100 s, so over 50 slots, most run.
    assert!(slots.outcomes.get("ok").copied().unwrap_or(0) > 25 && slots.starts > 25, "{report}");
}

/// Runs 100 s of faults with `seed` and asserts no violation, every kind of
/// fault, and a job that ran.
fn short_run(seed: u64) {
    let mut config = ChaosConfig::new(seed, Duration::from_secs(100));
    config.verbose = true;
    let report = chaos::run(config);
    eprintln!("{report}");
    assert!(report.violations.is_empty(), "seed {seed}:\n{report}");
    // Not vacuous: every kind of fault happened, and the job ran.
    for kind in FaultKind::ALL {
        assert!(report.faults.get(&kind).copied().unwrap_or(0) >= 1, "no {kind:?} in {report}");
    }
    assert!(report.ticks > 100 && report.handovers > 5 && report.commits > 100, "{report}");
    assert!(report.blind_puts > 100 && report.windows > 5, "{report}");
}

#[test]
fn a_short_chaos_run_finds_no_violation() {
    short_run(20261125);
}

/// The same with another seed each time (or `ZKRUN_CHAOS_SEED`), printed
/// first so that a failure can be replayed.
#[test]
fn a_chaos_run_with_a_random_seed_finds_no_violation() {
    let seed = std::env::var("ZKRUN_CHAOS_SEED")
        .ok()
        .map(|s| s.parse().expect("ZKRUN_CHAOS_SEED is a number"))
        .unwrap_or_else(rand::random);
    eprintln!(
        "chaos seed {seed}; replay: ZKRUN_CHAOS_SEED={seed} cargo nextest run --release -p zkrun-tests \
         -E 'test(random_seed)', or target/release/zkrun-chaos --duration 100s --seed {seed}"
    );
    short_run(seed);
}

/// Issue 22: a clock skew outside the documented assumption (every
/// participant's clocks at half speed, so a lease lasts twice as long in
/// real time as the host believes) must be reported. The harness puts the
/// logged times back on the real clock; the independent bounds
/// (property 11) then see every grant's deadline past `proof + 2L/3`. The
/// same run at ×1.05 is the `ClockSkew` fault of every chaos run.
#[test]
fn a_clock_at_half_speed_is_reported() {
    let mut config = ChaosConfig::new(20261203, Duration::from_secs(20));
    config.kinds = vec![FaultKind::StopParticipant, FaultKind::PauseShort];
    config.skew_all = Some(0.5);
    let report = chaos::run(config);
    eprintln!("{report}");
    let bounds = report.violations.iter().filter(|v| v.starts_with("lease bound:")).count();
    assert!(report.windows >= 1 && bounds >= 1, "the half-speed clocks went unreported:\n{report}");
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
        let history = chaos::History {
            events,
            counter: Some(Ok(stored)),
            session_timeout: std::time::Duration::from_secs(2),
            ..chaos::History::default()
        };
        chaos::check(&history, &mut report);
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

const MS: u64 = 1_000_000;

fn lease(id: &str, term: u64, at_ms: u64, session_timeout_ms: u64) -> (String, zkrun_tests::Event) {
    // As zkrun grants it: work until proof + T/2, demotion at proof + 2T/3.
    line(
        id,
        serde_json::json!({"event": "lease", "term": term, "mono_ns": at_ms * MS,
            "proof_ns": at_ms * MS,
            "lease_end_ns": (at_ms + session_timeout_ms / 2) * MS,
            "deadline_ns": (at_ms + session_timeout_ms * 2 / 3) * MS}),
    )
}

fn host(id: &str, kind: &str, term: u64, at_ms: u64) -> (String, zkrun_tests::Event) {
    line(id, serde_json::json!({"event": kind, "term": term, "mono_ns": at_ms * MS}))
}

fn journal(id: &str, message: String) -> (String, zkrun_tests::Event) {
    line(id, serde_json::json!({"event": "journal", "message": message}))
}

/// w0 leads term 10 from 1 s and shuts down at 3 s; w1 is elected at 3.1 s
/// with term 12. Each renews every T/6 and ticks every 100 ms.
fn clean_leadership() -> Vec<(String, zkrun_tests::Event)> {
    let mut events = vec![lease("w0", 10, 1000, 2000), host("w0", "elected", 10, 1000)];
    for k in 0..19 {
        let at = 1010 + k * 100;
        events.extend(tick("w0", 10, at * MS, Some((at + 5) * MS)));
        if k % 3 == 0 {
            events.push(lease("w0", 10, at + 50, 2000));
        }
    }
    events.push(host("w0", "shutdown", 10, 3000));
    events.push(lease("w1", 12, 3100, 2000));
    events.push(host("w1", "elected", 12, 3100));
    events.extend(tick("w1", 12, 3110 * MS, Some(3115 * MS)));
    events.push(host("w1", "shutdown", 12, 3200));
    events
}

fn violations(events: Vec<(String, zkrun_tests::Event)>, faults: Vec<chaos::FaultSpan>) -> Vec<String> {
    lease_violations(events, faults, None)
}

/// [`violations`], for participants that asked for a lease period `lease`.
fn lease_violations(
    events: Vec<(String, zkrun_tests::Event)>,
    faults: Vec<chaos::FaultSpan>,
    lease: Option<Duration>,
) -> Vec<String> {
    let mut report = chaos::Report::default();
    let history = chaos::History {
        events,
        faults,
        counter: None,
        session_timeout: Duration::from_secs(2),
        lease,
        ..chaos::History::default()
    };
    chaos::check(&history, &mut report);
    report.violations
}

/// Each timing bug the checker exists for, as the logs would show it: the
/// checker must report every one (and nothing in a clean history).
#[test]
fn the_checker_catches_leadership_timing_and_fencing_bugs() {
    assert_eq!(violations(clean_leadership(), vec![]), Vec::<String>::new());

    // Two leaders whose ticks interleave without overlapping: w1 is elected
    // at 1.5 s while w0 still holds its lease and ticks.
    let mut interleaved = vec![lease("w0", 10, 1000, 2000), host("w0", "elected", 10, 1000)];
    interleaved.push(lease("w1", 12, 1500, 2000));
    interleaved.push(host("w1", "elected", 12, 1500));
    for k in 0..8 {
        interleaved.extend(tick("w0", 10, (1010 + k * 100) * MS, Some((1015 + k * 100) * MS)));
        interleaved.extend(tick("w1", 12, (1560 + k * 100) * MS, Some((1565 + k * 100) * MS)));
    }
    let found = violations(interleaved, vec![]);
    assert!(!found.iter().any(|v| v.starts_with("overlap")), "ticks do not overlap: {found:?}");
    assert!(found.iter().any(|v| v.starts_with("windows overlap")), "{found:?}");
    assert!(found.iter().any(|v| v.starts_with("elected too early")), "{found:?}");

    // A late demotion: w0 is cut off at 1.2 s while leading and demotes
    // only at 3.4 s (its deadline counted as 1.1 T), after w1's election.
    let mut late = vec![lease("w0", 10, 1000, 2000), host("w0", "elected", 10, 1000)];
    late.push(lease("w0", 10, 1190, 2000));
    late.push(host("w0", "suspended", 10, 2190));
    late.push(host("w0", "demoted", 10, 3390));
    late.push(lease("w1", 12, 3300, 2000));
    late.push(host("w1", "elected", 12, 3300));
    let cut = chaos::FaultSpan {
        kind: chaos::FaultKind::PartitionLong,
        participant: Some("w0".into()),
        start_ns: 1200 * MS,
        end_ns: 5000 * MS,
    };
    let found = violations(late.clone(), vec![cut.clone()]);
    assert!(found.iter().any(|v| v.starts_with("late demotion")), "{found:?}");
    // Demoting at its real deadline (proof + 2T/3) is in time.
    let mut in_time = late;
    in_time.retain(|(id, e)| !(id == "w0" && e.kind() == "demoted"));
    in_time.push(host("w0", "demoted", 10, 1190 + 1333));
    let found = violations(in_time.clone(), vec![cut.clone()]);
    assert!(!found.iter().any(|v| v.starts_with("late demotion")), "{found:?}");
    // With a 1 s lease the deadline is 2/3 s after the last proof: the
    // same demotion, 1.32 s after the cut, is late (the bound is 5/6 s);
    // at the lease's own deadline it is in time.
    let found = lease_violations(in_time, vec![cut.clone()], Some(Duration::from_secs(1)));
    assert!(found.iter().any(|v| v.starts_with("late demotion")), "{found:?}");
    let mut short = vec![lease("w0", 10, 1000, 1000), host("w0", "elected", 10, 1000)];
    short.push(lease("w0", 10, 1190, 1000));
    short.push(host("w0", "suspended", 10, 1690));
    short.push(host("w0", "demoted", 10, 1190 + 667));
    let found = lease_violations(short, vec![cut], Some(Duration::from_secs(1)));
    assert!(!found.iter().any(|v| v.starts_with("late demotion")), "{found:?}");

    // An early takeover: w0 froze after its grant at 1 s (logs nothing
    // more); w1 takes over at 1.4 s, before w0's deadline at 2.33 s.
    let mut early = vec![lease("w0", 10, 1000, 2000), host("w0", "elected", 10, 1000)];
    early.extend(tick("w0", 10, 1010 * MS, Some(1015 * MS)));
    early.push(lease("w1", 12, 2400, 2000));
    early.push(host("w1", "elected", 12, 2400));
    assert!(!violations(early.clone(), vec![]).iter().any(|v| v.starts_with("elected too early")));
    early.retain(|(id, _)| id != "w1");
    early.push(lease("w1", 12, 1400, 2000));
    early.push(host("w1", "elected", 12, 1400));
    let found = violations(early, vec![]);
    assert!(found.iter().any(|v| v.starts_with("elected too early")), "{found:?}");

    // A tick that ran while suspended, refused from its first log line: it
    // shows only in the journal, which no permit guards.
    let mut refused = clean_leadership();
    refused.push(host("w1", "suspended", 12, 3150));
    refused.push(journal("w1", format!("start {} term 12", 3190 * MS)));
    let found = violations(refused, vec![]);
    assert!(found.iter().any(|v| v.starts_with("tick outside leadership")), "{found:?}");

    // A deposed leader's blind put landing after its successor's.
    let mut stale = clean_leadership();
    stale.push(journal("w0", "blind put term 10 seq 7 version 4".into()));
    stale.push(journal("w1", "blind put term 12 seq 1 version 5".into()));
    assert_eq!(violations(stale.clone(), vec![]), Vec::<String>::new());
    let mut seen_by_reader = stale.clone();
    stale.push(journal("w0", "blind put term 10 seq 9 version 6".into()));
    let found = violations(stale, vec![]);
    assert!(found.iter().any(|v| v.starts_with("stale write landed")), "{found:?}");
    // The same when its writer could not record it (cut off right after
    // the put) and only the successor's next read saw it.
    seen_by_reader.push(line(
        "w1",
        serde_json::json!({"event": "plugin_log", "message": "blind read term 10 seq 9 version 6", "mono_ns": 3120 * MS}),
    ));
    let found = violations(seen_by_reader, vec![]);
    assert!(found.iter().any(|v| v.starts_with("stale write landed")), "{found:?}");

    // A tick that kept working after its leadership was suspended (its
    // permit ignored): its log lines are stamped outside every window.
    let mut unpermitted = clean_leadership();
    unpermitted.push(host("w1", "suspended", 12, 3115));
    unpermitted.push(line(
        "w1",
        serde_json::json!({"event": "plugin_log", "message": "committed 3 under term 12 (version 2)", "mono_ns": 3150 * MS}),
    ));
    let found = violations(unpermitted, vec![]);
    assert!(found.iter().any(|v| v.starts_with("leader work outside leadership")), "{found:?}");
}

/// Runs the whole checker on `history` and returns the violations that
/// start with `prefix`.
fn found(history: &chaos::History, prefix: &str) -> Vec<String> {
    let mut report = chaos::Report::default();
    chaos::check(history, &mut report);
    report.violations.into_iter().filter(|v| v.starts_with(prefix)).collect()
}

fn history(events: Vec<(String, zkrun_tests::Event)>, lease: Option<Duration>) -> chaos::History {
    chaos::History { events, session_timeout: Duration::from_secs(2), lease, ..chaos::History::default() }
}

fn span(kind: FaultKind, participant: Option<&str>, start_ms: u64, end_ms: u64) -> chaos::FaultSpan {
    chaos::FaultSpan {
        kind,
        participant: participant.map(str::to_string),
        start_ns: start_ms * MS,
        end_ns: end_ms * MS,
    }
}

/// Property 10: the lease bounds come from T and L as configured, so a
/// host that derives its lease or deadline wrongly is caught on every
/// grant, even when no fault cuts it off.
#[test]
fn independent_bounds_flag_a_lease_derived_wrongly() {
    assert_eq!(found(&history(clean_leadership(), None), ""), Vec::<String>::new());
    // The deadline moved to 1.1 T after the proof (a mutant moves the
    // logged deadline with it: the checker does not trust it).
    let mut late = clean_leadership();
    late.push(line(
        "w0",
        serde_json::json!({"event": "lease", "term": 10, "mono_ns": 1500 * MS, "proof_ns": 1490 * MS,
            "lease_end_ns": 2490 * MS, "deadline_ns": (1490 + 2200) * MS}),
    ));
    let v = found(&history(late, None), "lease bound");
    assert!(v.len() == 1 && v[0].contains("2L/3") && v[0].contains("expiry"), "{v:?}");
    // With --lease 1s, a lease of T/2 (the host ignored the lease period).
    let v = found(&history(clean_leadership(), Some(Duration::from_secs(1))), "lease bound");
    assert!(!v.is_empty() && v.iter().all(|v| v.contains("more than L/2")), "{v:?}");
    // A proof in the host's future.
    let mut future = clean_leadership();
    future.push(line(
        "w0",
        serde_json::json!({"event": "lease", "term": 10, "mono_ns": 1500 * MS, "proof_ns": 1600 * MS,
            "lease_end_ns": 2600 * MS, "deadline_ns": 2933 * MS}),
    ));
    let v = found(&history(future, None), "lease bound");
    assert!(v.len() == 1 && v[0].contains("future"), "{v:?}");
}

fn arrival(term: u64, first_ms: u64, last_ms: u64, whole: bool) -> chaos::ByteArrival {
    chaos::ByteArrival {
        term,
        participant: None,
        first_byte_ns: first_ms * MS,
        last_byte_ns: last_ms * MS,
        chunks: 8,
        whole,
        slot: None,
    }
}

/// Property 11: no byte of a stamped request arrives after its sender's
/// window; a request cut off mid-body counts as much as a whole one.
#[test]
fn byte_level_egress_flags_a_byte_after_the_window() {
    // w0 leads term 10 until its shutdown at 3 s.
    let mut h = history(clean_leadership(), None);
    h.arrivals = vec![arrival(10, 2700, 2999, true), arrival(12, 3110, 3150, true)];
    assert_eq!(found(&h, "egress"), Vec::<String>::new());
    h.arrivals = vec![arrival(10, 2700, 3010, true)];
    let v = found(&h, "egress after leadership");
    assert!(v.len() == 1 && v[0].contains("whole"), "{v:?}");
    h.arrivals = vec![arrival(10, 2950, 3040, false)];
    let v = found(&h, "egress after leadership");
    assert!(v.len() == 1 && v[0].contains("cut off"), "{v:?}");
    // A request of a term that never led.
    h.arrivals = vec![arrival(11, 2000, 2001, true)];
    assert_eq!(found(&h, "egress outside leadership").len(), 1);
}

/// Property 12: a write refused for the quota never lands, and the stored
/// state stays under the byte quota.
#[test]
fn refused_quota_writes_never_land() {
    let mut events = clean_leadership();
    events.push(line(
        "w0",
        serde_json::json!({"event": "plugin_log", "mono_ns": 1500 * MS,
            "message": "quota refused burst-3 tag 10.5.0: quota exceeded: the state would hold 1100000 bytes"}),
    ));
    let mut h = history(events, None);
    h.state_max_bytes = Some(1 << 20);
    h.state =
        Some(vec![("burst-3".into(), b"tag 10.4.0 xxxx".to_vec()), ("counter".into(), b"7 10".to_vec())]);
    assert_eq!(found(&h, "quota"), Vec::<String>::new());
    let mut report = chaos::Report::default();
    chaos::check(&h, &mut report);
    assert_eq!(report.quota_refused, 1);
    // The refused write is what is stored.
    h.state = Some(vec![("burst-3".into(), b"tag 10.5.0 xxxx".to_vec())]);
    let v = found(&h, "quota");
    assert!(v.len() == 1 && v[0].contains("refused for the quota, but it is stored"), "{v:?}");
    // Over the byte quota (a quota that never refuses).
    h.state = Some((0..20).map(|k| (format!("burst-{k}"), vec![b'x'; 60 * 1024])).collect());
    let v = found(&h, "quota");
    assert!(v.len() == 1 && v[0].contains("over its 1048576-byte quota"), "{v:?}");

    // The byte rate: 60 KiB values, 2 a second, fit a 128 KiB/s bucket; 10
    // a second (a quota that never refuses) do not.
    let puts = |term: u64, n: u64, every_ms: u64| -> Vec<(String, zkrun_tests::Event)> {
        (0..n)
            .map(|k| {
                line(
                    "w0",
                    serde_json::json!({"event": "plugin_log", "term": term, "mono_ns": (1000 + k * every_ms) * MS,
                        "message": format!("quota put burst-{k} tag {term}.5.{k}.0 version 1")}),
                )
            })
            .collect()
    };
    let mut h = history(clean_leadership(), None);
    h.state_max_bytes_per_second = Some(128 * 1024);
    h.events.extend(puts(10, 8, 500));
    assert_eq!(found(&h, "quota"), Vec::<String>::new());
    h.events.extend(puts(13, 10, 100));
    let v = found(&h, "quota");
    assert!(v.len() == 1 && v[0].contains("w0 had") && v[0].contains("in term 13"), "{v:?}");
}

/// Property 13: slow graceful handovers, long gaps after a heal, a
/// stalled line and a late takeover are violations.
#[test]
fn liveness_flags_slow_handovers_long_gaps_and_stalls() {
    // Graceful: w0 stopped at 2.99 s, w1 elected at 3.1 s.
    let stop = span(FaultKind::StopParticipant, Some("w0"), 2990, 3500);
    let mut h = history(clean_leadership(), None);
    h.faults = vec![stop.clone()];
    assert_eq!(found(&h, ""), Vec::<String>::new());
    // The same handover taking 1.4 s (a crash handover).
    let mut slow: Vec<_> = clean_leadership().into_iter().filter(|(id, _)| id != "w1").collect();
    slow.push(lease("w1", 12, 4390, 2000));
    slow.push(host("w1", "elected", 12, 4390));
    slow.extend(tick("w1", 12, 4400 * MS, Some(4405 * MS)));
    let mut h = history(slow, None);
    h.faults = vec![stop.clone()];
    let v = found(&h, "slow graceful handover");
    assert!(v.len() == 1 && v[0].contains("1.4"), "{v:?}");
    // Not graceful when another fault ended less than T before.
    h.faults = vec![span(FaultKind::PartitionShort, Some("w2"), 1000, 1500), stop];
    assert_eq!(found(&h, "slow graceful handover"), Vec::<String>::new());

    // A gap after a heal: T + 8 s = 10 s for most faults, one more T after
    // the whole ensemble restarted.
    let mut events = vec![host("w0", "elected", 10, 15000), lease("w0", 10, 15000, 2000)];
    events.extend(tick("w0", 10, 16000 * MS, Some(16005 * MS)));
    let mut h = history(events, None);
    h.faults = vec![span(FaultKind::KillFollower, None, 4000, 5000)];
    let v = found(&h, "leaderless after heal");
    assert!(v.len() == 1 && v[0].contains("KillFollower"), "{v:?}");
    h.faults = vec![span(FaultKind::RestartAll, None, 4000, 5000)];
    assert_eq!(found(&h, "leaderless after heal"), Vec::<String>::new());
    h.faults = vec![span(FaultKind::RestartAll, None, 1000, 2000)];
    assert_eq!(found(&h, "leaderless after heal").len(), 1);

    // A stalled line: no tick within 3L + 1 s of the leader's stop.
    let mut h = history(clean_leadership(), None);
    h.faults = vec![span(FaultKind::SlowHeadOfLine, Some("w0"), 3000, 12000)];
    let v = found(&h, "stalled line");
    assert_eq!(v.len(), 0, "w1 ticked at 3.11 s: {v:?}");
    h.faults = vec![span(FaultKind::SlowHeadOfLine, Some("w0"), 3200, 12000)];
    assert_eq!(found(&h, "stalled line").len(), 1);

    // A late takeover: w0 frozen at 1.5 s (its follower's connection
    // reset), w1 elected only 3.5 s later; the bound is 1.15 L + 0.5 s.
    let mut events: Vec<_> = clean_leadership()
        .into_iter()
        .filter(|(id, e)| id != "w1" && e.mono_ns().is_none_or(|t| t < 1500 * MS))
        .collect();
    events.push(lease("w1", 12, 5000, 2000));
    events.push(host("w1", "elected", 12, 5000));
    let mut h = history(events.clone(), None);
    h.faults = vec![span(FaultKind::ResetWhileFrozen, Some("w0"), 1500, 6000)];
    let v = found(&h, "late takeover");
    assert_eq!(v.len(), 1, "{v:?}");
    events.retain(|(id, _)| id != "w1");
    events.push(lease("w1", 12, 3200, 2000));
    events.push(host("w1", "elected", 12, 3200));
    let mut h = history(events.clone(), None);
    h.faults = vec![span(FaultKind::ResetWhileFrozen, Some("w0"), 1500, 6000)];
    assert_eq!(found(&h, "late takeover"), Vec::<String>::new());
    // Events are grouped by participant: a later election listed first must
    // not hide the timely one (a false alarm the first chaos runs made).
    events.insert(0, host("w2", "elected", 13, 9000));
    let mut h = history(events, None);
    h.faults = vec![span(FaultKind::ResetWhileFrozen, Some("w0"), 1500, 6000)];
    assert_eq!(found(&h, "late takeover"), Vec::<String>::new());
}

fn decision(id: &str, path: &str, at_ms: u64) -> (String, zkrun_tests::Event) {
    decision_on(id, path, at_ms, 3)
}

/// A `lead_decision` whose proof was taken on connection `proof_generation`
/// (the decision itself on connection 3).
fn decision_on(id: &str, path: &str, at_ms: u64, proof_generation: u64) -> (String, zkrun_tests::Event) {
    line(
        id,
        serde_json::json!({"event": "lead_decision", "path": path, "generation": 3,
            "proof_generation": proof_generation, "why": "leader left", "term": 14, "mono_ns": at_ms * MS}),
    )
}

/// Property 15: a `lead_decision` on the shortcut path while another
/// participant's lease node stood is reported; other paths are counted.
#[test]
fn a_shortcut_past_a_standing_lease_is_flagged() {
    // w0 renews its lease until 2.86 s and shuts down at 3 s.
    let mut events = clean_leadership();
    events.push(decision("w2", "full", 2000));
    events.push(decision("w2", "shortcut", 3050));
    let mut report = chaos::Report::default();
    chaos::check(&history(events.clone(), None), &mut report);
    assert_eq!(report.violations, Vec::<String>::new());
    assert_eq!(report.decisions, chaos::Decisions { shortcut: 1, full: 1, takeover: 0 });
    // The issue-22 hole: a shortcut while w0 (deposed, hearing late) still
    // holds its lease node.
    events.push(decision("w2", "shortcut", 2000));
    let v = found(&history(events.clone(), None), "shortcut past a lease");
    assert!(v.len() == 1 && v[0].contains("w0's lease node"), "{v:?}");
    // A renewal that landed while w0 shut down, then its demotion (the
    // leadership event's debug line), then the shortcut: w0's lease node
    // went with its node (a false alarm of the first 30-minute soak).
    let mut stopping = clean_leadership();
    stopping.push(lease("w0", 10, 3010, 2000));
    stopping.push(line(
        "w0",
        serde_json::json!({"event": "Demoted { term: Term(10), reason: Shutdown }", "mono_ns": 3020 * MS}),
    ));
    stopping.push(decision("w2", "shortcut", 3050));
    assert_eq!(found(&history(stopping, None), "shortcut past a lease"), Vec::<String>::new());
    // An unknown path is a violation too (the parser must keep up).
    events.push(decision("w2", "guess", 3060));
    assert_eq!(found(&history(events, None), "lead_decision").len(), 1);
}

/// Property 15: a decision resting on a warm proof taken on an earlier
/// connection is reported (shortcut and takeover alike); a full read on a
/// new connection is not.
#[test]
fn a_warm_proof_across_a_reconnect_is_flagged() {
    let mut events = clean_leadership();
    events.push(decision_on("w2", "full", 3050, 2));
    events.push(decision_on("w2", "takeover", 3100, 3));
    assert_eq!(found(&history(events.clone(), None), "warm proof across"), Vec::<String>::new());
    events.push(decision_on("w2", "takeover", 3150, 2));
    events.push(decision_on("w2", "shortcut", 3200, 1));
    let v = found(&history(events, None), "warm proof across");
    assert_eq!(v.len(), 2, "{v:?}");
    assert!(v[0].contains("takeover path") && v[0].contains("connection 2 while on connection 3"), "{v:?}");
    assert!(v[1].contains("shortcut path"), "{v:?}");
}

/// Byte-level egress for one request, against a real ensemble and the real
/// witness: a body streamed in 30 chunks 40 ms apart is under way when the
/// leader is cut off from ZooKeeper (`--lease 1s`: work may run 500 ms past
/// the last proof). The request must be cut off, and its last byte must
/// reach the receiver no later than the host's last logged lease end (plus
/// the checker's 2 ms of slack): zkrun checks the permit on every write.
#[test]
fn no_byte_of_a_slow_request_arrives_after_its_lease_ended() {
    use zkrun_tests::process::participant_args;
    use zkrun_tests::properties::BYTE_SLACK_NS;
    use zkrun_tests::receiver::Receiver;
    use zkrun_tests::{Ensemble, EnsembleOptions, Process, Proxy, paths, wait_for};

    const SOON: Duration = Duration::from_secs(30);
    let ensemble = Ensemble::start_with(EnsembleOptions { servers: 1, ..EnsembleOptions::default() });
    let receiver = Receiver::start();
    let base = receiver.base_url();
    let proxy = Proxy::start(&ensemble.client_addrs());
    let url = format!("url={base}tick");
    let extra = [
        "--lease",
        "1s",
        "--log-level",
        "info,zkrun::election::machine=debug",
        "--plugin-config",
        &url,
        "--plugin-config",
        "slow-body=always",
        "--plugin-config",
        "slow-chunks=30",
        "--allow-http",
        &base,
        "--hook-timeout",
        "100s",
        "--http-timeout",
        "100s",
    ];
    let args = participant_args(
        &proxy.connect_string(),
        "/zkrun/proof/bytes",
        &paths::plugin("witness"),
        "100ms",
        "4s",
        &extra,
    );
    let leader = Process::zkrun("bytes", &args);
    leader.wait_event("elected", SOON, |e| e.kind() == "elected");
    let heads = receiver.heads();
    wait_for("a slow request under way", SOON, || (receiver.heads() > heads).then_some(()));
    std::thread::sleep(Duration::from_millis(40));
    proxy.partition();
    leader.wait_event("the lease lost", SOON, |e| matches!(e.kind(), "suspended" | "demoted"));
    // Long enough for any byte still let out to arrive.
    std::thread::sleep(Duration::from_secs(1));

    let lease_end = leader
        .events()
        .iter()
        .filter(|e| e.kind() == "lease")
        .filter_map(|e| e.json["lease_end_ns"].as_u64())
        .max()
        .expect("the host logged its leases");
    let cut = receiver.cut_off();
    assert!(!cut.is_empty(), "the slow request was not cut off; whole ones: {:?}", receiver.arrivals());
    for a in receiver.arrivals().iter().chain(&cut) {
        assert!(
            a.last_byte_ns <= lease_end + BYTE_SLACK_NS,
            "a byte of a request of term {:?} arrived {:?} after the lease ended ({} chunks)",
            a.term,
            Duration::from_nanos(a.last_byte_ns - lease_end),
            a.chunks
        );
    }
    let last = cut.iter().map(|a| a.last_byte_ns).max().unwrap_or(0);
    eprintln!(
        "cut-off request: {} chunks, its last byte {:?} before the lease end",
        cut[0].chunks,
        Duration::from_nanos(lease_end.saturating_sub(last))
    );
}

/// Property 14: a leader stopped by `ResetThenStop` (its successor's link
/// just reset) must still hand over within the graceful bound.
#[test]
fn a_slow_handover_after_a_reset_is_flagged() {
    let mut h = history(clean_leadership(), None);
    h.faults = vec![span(FaultKind::ResetThenStop, None, 2500, 3500)];
    assert_eq!(found(&h, "slow graceful"), Vec::<String>::new());
    // The successor leads only 1.6 s after w0's shutdown: a crash handover.
    let mut events: Vec<_> =
        clean_leadership().into_iter().filter(|(id, e)| !(id == "w1" && e.kind() == "elected")).collect();
    events.push(host("w1", "elected", 12, 4600));
    let mut h = history(events, None);
    h.faults = vec![span(FaultKind::ResetThenStop, None, 2500, 3500)];
    let v = found(&h, "slow graceful");
    assert!(v.len() == 1 && v[0].contains("w0 shut down at 3000000000"), "{v:?}");
}

fn slot_start(id: &str, slot: &str, attempt: u32, term: u64, at_ms: u64) -> (String, zkrun_tests::Event) {
    journal(id, format!("slot {slot} attempt {attempt} term {term} start {}", at_ms * MS))
}

/// A ledger record of the `--every 2s` slot due `k` periods after
/// 2026-12-05T00:00:00Z.
fn record(k: i64, outcome: &str, attempt: u32, term: u64) -> zkrun::schedule::ledger::Record {
    let at = jiff::Timestamp::from_second(1_764_892_800 + 2 * k).unwrap();
    serde_json::from_value(serde_json::json!({
        "slot": format!("f00d-{k}"),
        "at": at.to_string(),
        "outcome": outcome,
        "attempt": attempt,
        "term": term,
        "participant": "w0",
    }))
    .unwrap()
}

/// Property 16 (issue 24): a slot started twice in one attempt, a slot
/// lost without a record or left `running`, and a ledger that disagrees
/// with the journals are each reported; a clean scheduled history is not.
#[test]
fn the_slot_checker_catches_double_starts_lost_slots_and_a_lying_ledger() {
    let start_ms = 1_764_892_800_000;
    let run = |ledger: Vec<zkrun::schedule::ledger::Record>| zkrun_tests::slots::ScheduledRun {
        every: Duration::from_secs(2),
        first_leader_ms: start_ms,
        // Slots 0 to 4 were due long enough before the stop.
        stopped_ms: start_ms + 4 * 2000 + 3000,
        ledger,
    };
    let check = |events: Vec<(String, zkrun_tests::Event)>, ledger| {
        let mut h = history(events, None);
        h.schedule = Some(run(ledger));
        let mut report = chaos::Report::default();
        chaos::check(&h, &mut report);
        let v: Vec<String> = report.violations.into_iter().filter(|v| v.starts_with("slot")).collect();
        (v, report.slots.unwrap())
    };
    // Clean: slots 0-4 ran ok, slot 2 after an interrupted first attempt.
    let clean_events = vec![
        slot_start("w0#0", "f00d-0", 1, 10, 100),
        slot_start("w0#0", "f00d-1", 1, 10, 2100),
        slot_start("w0#0", "f00d-2", 1, 10, 4100),
        slot_start("w1#0", "f00d-2", 2, 12, 5000),
        slot_start("w1#0", "f00d-3", 1, 12, 6100),
        slot_start("w1#0", "f00d-4", 1, 12, 8100),
    ];
    let clean_ledger = || {
        vec![
            record(0, "ok", 1, 10),
            record(1, "ok", 1, 10),
            record(2, "ok", 2, 12),
            record(3, "ok", 1, 12),
            record(4, "ok", 1, 12),
        ]
    };
    let (v, tally) = check(clean_events.clone(), clean_ledger());
    assert!(v.is_empty(), "{v:?}");
    assert_eq!((tally.starts, tally.retries, tally.twice, tally.lost), (6, 1, 0, 0));

    // Started twice in one attempt (a second leader claimed attempt 2 too).
    let mut twice = clean_events.clone();
    twice.push(slot_start("w2#0", "f00d-2", 2, 14, 5100));
    let (v, _) = check(twice, clean_ledger());
    assert!(v.iter().any(|v| v.starts_with("slot started twice: f00d-2 attempt 2")), "{v:?}");

    // Lost: no record of slot 3, and slot 4 left running.
    let mut lost = clean_ledger();
    lost.remove(3);
    lost[3] = record(4, "running", 1, 12);
    let (v, tally) = check(clean_events.clone(), lost);
    assert_eq!(tally.lost, 2, "{v:?}");
    assert!(v.iter().any(|v| v.starts_with("slot lost: nothing recorded")), "{v:?}");
    assert!(v.iter().any(|v| v.contains("still `running`")), "{v:?}");

    // The ledger disagrees: slot 1 recorded ok under a term that never ran
    // it, slot 2's record stuck at attempt 1 though attempt 2 started.
    let mut lying = clean_ledger();
    lying[1] = record(1, "ok", 1, 11);
    lying[2] = record(2, "ok", 1, 10);
    let (v, _) = check(clean_events, lying);
    assert!(v.iter().any(|v| v.contains("no witness started that run")), "{v:?}");
    assert!(
        v.iter().any(|v| v.contains("under term 10, but the record of that attempt has term 11")),
        "{v:?}"
    );
    assert!(v.iter().any(|v| v.contains("as attempt 2 but the ledger's record is of attempt 1")), "{v:?}");
}
