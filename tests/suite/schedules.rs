//! Schedules (issue 24) against a real ensemble: each slot starts at most
//! once per attempt fleet-wide, an interrupted slot is retried by the
//! successor, and missed slots follow the catch-up policy.

use std::collections::BTreeMap;
use std::time::Duration;

use zkrun::schedule::ledger::{self, Outcome, Record};
use zkrun_tests::process::{participant_args, run_to_end};
use zkrun_tests::receiver::Receiver;
use zkrun_tests::{Ensemble, Event, Process, paths, wait_for};
use zookeeper_client as zk;

const SOON: Duration = Duration::from_secs(30);

fn scheduled_args(
    ensemble: &Ensemble,
    election: &str,
    plugin: &str,
    extra: &[&str],
) -> Vec<std::ffi::OsString> {
    participant_args(&ensemble.connect_string(), election, &paths::plugin(plugin), "1s", "4s", extra)
}

/// The ledger's records by slot id, read as any client would.
async fn ledger(ensemble: &Ensemble, election: &str) -> BTreeMap<String, Record> {
    let client = zk::Client::connector().connect(&ensemble.connect_string()).await.expect("connect");
    let records = ledger::read(&client, &ledger::dir(election)).await.expect("read the ledger");
    records.into_iter().map(|(r, _)| (r.slot.clone(), r)).collect()
}

/// Every (slot, attempt) started, over the given processes' logs.
fn starts(processes: &[&Process]) -> Vec<(String, u64, String)> {
    let mut starts = Vec::new();
    for p in processes {
        for e in p.events().iter().filter(|e| e.kind() == "slot_started") {
            starts.push((
                e.str("slot").to_string(),
                e.json["attempt"].as_u64().unwrap_or(0),
                e.str("id").to_string(),
            ));
        }
    }
    starts
}

fn assert_no_slot_started_twice(processes: &[&Process]) {
    let all = starts(processes);
    let mut seen = std::collections::BTreeSet::new();
    for (slot, attempt, id) in &all {
        assert!(
            seen.insert((slot.clone(), *attempt)),
            "slot {slot} attempt {attempt} started twice ({id}): {all:?}"
        );
    }
}

#[test]
fn cron_syntax_errors_are_refused_at_start_with_their_position() {
    let out = run_to_end(&["schedule", "--schedule", "0 25 * * *"], SOON);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("column 3 (hour field \"25\")"), "{stderr}");
    // `run` refuses it too, before joining anything.
    let out = run_to_end(
        &["--plugin", paths::plugin("heartbeat").to_str().unwrap(), "--schedule", "*/5 * * JANX *"],
        SOON,
    );
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("column 9 (month field"), "{stderr}");
    // And `zkrun schedule` lists due instants in the zone.
    let out = run_to_end(
        &["schedule", "--schedule", "30 2 * * *", "--timezone", "Europe/Berlin", "--next", "3"],
        SOON,
    );
    assert_eq!(out.status.code(), Some(0));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(stdout.lines().filter(|l| l.contains(" 02:30:00 CE")).count(), 3, "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_cut_off_by_sigkill_is_retried_by_the_successor_as_attempt_2() {
    let ensemble = Ensemble::start();
    let election = "/zkrun/sched/sigkill";
    // The sleeper's tick blocks for an hour: every run is "mid-run" until
    // its host dies.
    let extra = ["--every", "2s", "--run-timeout", "10m", "--catch-up", "5m"];
    let mut p: Vec<Process> = (0..3)
        .map(|i| {
            let z = Process::zkrun(&format!("s{i}"), &scheduled_args(&ensemble, election, "sleeper", &extra));
            z.wait_event("joined", SOON, |e| e.kind() == "joined");
            z
        })
        .collect();
    let leader = wait_for("a leader", SOON, || {
        p.iter().position(|z| z.log().wait(Duration::ZERO, |e| e.kind() == "elected").is_some())
    });
    let started: Event = p[leader].wait_event("the first slot run", SOON, |e| e.kind() == "slot_started");
    let slot = started.str("slot").to_string();
    assert_eq!(started.json["attempt"].as_u64(), Some(1));
    // The claim is in the ledger, as running, under the leader's term.
    let record = ledger(&ensemble, election).await.remove(&slot).expect("the claim is recorded");
    assert_eq!((record.outcome, record.attempt), (Outcome::Running, 1));

    p[leader].kill();
    let retried = wait_for("the successor's retry", Duration::from_secs(60), || {
        p.iter().enumerate().filter(|(i, _)| *i != leader).find_map(|(_, z)| {
            z.log().wait(Duration::ZERO, |e| {
                e.kind() == "slot_started" && e.str("slot") == slot && e.json["attempt"].as_u64() == Some(2)
            })
        })
    });
    assert_eq!(retried.str("previous"), "interrupted");
    let record = ledger(&ensemble, election).await.remove(&slot).expect("the retry is recorded");
    assert_eq!((record.outcome, record.attempt), (Outcome::Running, 2));
    assert_ne!(record.term, started.term().unwrap(), "the retry runs under the successor's term");
    let others: Vec<&Process> = p.iter().collect();
    assert_no_slot_started_twice(&others);

    // `zkrun status` shows the schedule, the next slot and the retry.
    let zk = ensemble.connect_string();
    let out = run_to_end(&["status", "--zk", &zk, "--election", election, "--json"], SOON);
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status --json");
    let schedule = &status["schedule"];
    assert_eq!(schedule["schedule"], "every 2s", "{status}");
    assert!(schedule["next_due"]["slot"].as_str().is_some_and(|s| s > slot.as_str()), "{status}");
    let retry = schedule["recent"].as_array().and_then(|r| r.iter().find(|r| r["slot"] == slot.as_str()));
    let retry = retry.unwrap_or_else(|| panic!("the retried slot is not among the newest: {status}"));
    assert_eq!(
        (retry["outcome"].as_str(), retry["attempt"].as_u64()),
        (Some("running"), Some(2)),
        "{status}"
    );
    let out = run_to_end(&["status", "--zk", &zk, "--election", election], SOON);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("schedule: every 2s; next due "), "{table}");
    assert!(table.lines().any(|l| l.contains(&slot) && l.contains("running")), "{table}");
}

/// One participant runs a slot, all go down across three slots, one comes
/// back within the catch-up window: returns the slots due while down, by
/// outcome, and the processes.
async fn outage(policy: &str) -> (BTreeMap<String, Record>, Vec<String>, Vec<Process>) {
    let ensemble = Ensemble::start();
    let election = format!("/zkrun/sched/outage-{policy}");
    let extra = ["--every", "2s", "--catch-up", "60s", "--catch-up-policy", policy];
    let first = Process::zkrun("o1", &scheduled_args(&ensemble, &election, "heartbeat", &extra));
    let done =
        first.wait_event("a slot run", SOON, |e| e.kind() == "slot_finished" && e.str("outcome") == "ok");
    let last_before = done.str("slot").to_string();
    first.signal(libc::SIGTERM);
    let mut first = first;
    first.wait_exit(SOON).expect("exits on SIGTERM");
    // Down across three slots (2 s each).
    std::thread::sleep(Duration::from_millis(7_000));
    let second = Process::zkrun("o2", &scheduled_args(&ensemble, &election, "heartbeat", &extra));
    second.wait_event("elected", SOON, |e| e.kind() == "elected");
    // Wait until the ledger has closed every slot between the last run
    // before the outage and the first one after it.
    let records = wait_for_async_ledger(&ensemble, &election, &last_before).await;
    let starts: Vec<String> = starts(&[&first, &second]).into_iter().map(|(s, _, _)| s).collect();
    (records, starts, vec![first, second])
}

/// The records after `after`, once at least four more slots are closed.
async fn wait_for_async_ledger(ensemble: &Ensemble, election: &str, after: &str) -> BTreeMap<String, Record> {
    let deadline = std::time::Instant::now() + SOON;
    loop {
        let records = ledger(ensemble, election).await;
        let later: BTreeMap<String, Record> =
            records.into_iter().filter(|(id, _)| id.as_str() > after).collect();
        if later.values().filter(|r| r.outcome != Outcome::Running).count() >= 4 {
            return later;
        }
        assert!(std::time::Instant::now() < deadline, "the ledger did not fill: {later:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_down_across_three_slots_catch_up_all_runs_each_missed_slot() {
    let (records, starts, processes) = outage("all").await;
    // The first three slots after the last run fell in the outage: each ran.
    let missed: Vec<&Record> = records.values().take(3).collect();
    for record in &missed {
        assert_eq!(record.outcome, Outcome::Ok, "{records:?}");
        assert_eq!(starts.iter().filter(|s| **s == record.slot).count(), 1, "{starts:?}");
    }
    let refs: Vec<&Process> = processes.iter().collect();
    assert_no_slot_started_twice(&refs);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_down_across_three_slots_catch_up_latest_skips_all_but_the_latest() {
    let (records, starts, processes) = outage("latest").await;
    let outcomes: Vec<Outcome> = records.values().map(|r| r.outcome).collect();
    // Skipped slots first (never started), then slots that ran.
    let skipped: Vec<&Record> = records.values().filter(|r| r.outcome == Outcome::Skipped).collect();
    assert!(skipped.len() >= 2, "{outcomes:?}");
    for record in &skipped {
        assert!(!starts.contains(&record.slot), "skipped slot {} started", record.slot);
    }
    let first_ok = outcomes.iter().position(|o| *o == Outcome::Ok).expect("the latest slot ran");
    assert!(outcomes[..first_ok].iter().all(|o| *o == Outcome::Skipped), "{outcomes:?}");
    let refs: Vec<&Process> = processes.iter().collect();
    assert_no_slot_started_twice(&refs);
}

/// The `nightly` template: each scheduled run learns its slot through
/// `slots.current` (WIT 0.1.2) and POSTs a report naming it; the request
/// carries the same id in `zkrun-slot`, and the ledger records the run ok.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_nightly_template_reports_each_slot_it_runs_by_its_id() {
    let ensemble = Ensemble::start();
    let election = "/zkrun/sched/nightly";
    let receiver = Receiver::start();
    let base = receiver.base_url();
    let url = format!("url={base}nightly");
    let extra = ["--every", "2s", "--allow-http", base.as_str(), "--plugin-config", url.as_str()];
    let mut p = Process::zkrun("n1", &scheduled_args(&ensemble, election, "nightly", &extra));
    let reports = wait_for("three reports", SOON, || {
        let reports: Vec<_> = receiver.arrivals().into_iter().filter(|a| a.path == "/nightly").collect();
        (reports.len() >= 3).then_some(reports)
    });
    let started: Vec<Event> = p.events().into_iter().filter(|e| e.kind() == "slot_started").collect();
    let mut seen = Vec::new();
    for report in &reports {
        let body: serde_json::Value = serde_json::from_str(&report.body).expect("a JSON report");
        let slot = body["slot"].as_str().expect("the report names its slot").to_string();
        let header = report.headers.iter().find(|(k, _)| k == "zkrun-slot").map(|(_, v)| v.as_str());
        assert_eq!(header, Some(slot.as_str()), "{report:?}");
        assert_eq!(body["attempt"], 1, "{report:?}");
        assert_eq!(body["previous"], serde_json::Value::Null, "{report:?}");
        assert_eq!(Some(body["term"].as_u64().unwrap()), report.term, "{report:?}");
        // The due time is the slot's instant: a multiple of 2 s.
        assert_eq!(body["due_ms"].as_i64().unwrap() % 2000, 0, "{report:?}");
        let start = started.iter().find(|e| e.str("slot") == slot);
        assert!(start.is_some(), "a report for a slot zkrun did not start: {slot}\n{}", p.dump());
        assert!(!seen.contains(&slot), "two reports for {slot}");
        seen.push(slot);
    }
    for slot in &seen {
        p.wait_event("the run's end", SOON, |e| e.kind() == "slot_finished" && e.str("slot") == slot);
    }
    p.signal(libc::SIGTERM);
    assert_eq!(p.wait_exit(SOON).and_then(|s| s.code()), Some(0), "{}", p.dump());
    let records = ledger(&ensemble, election).await;
    for slot in &seen {
        assert_eq!(records.get(slot).map(|r| r.outcome), Some(Outcome::Ok), "{slot}: {records:?}");
    }
}

/// Issue 24's fleet run: `--schedule "*/1 * * * *"` with the nightly
/// template on three hosts runs each minute once, through a SIGKILL of the
/// leader in the middle of a run. The minute cut off is retried by the
/// successor as attempt 2 under its own term (the same slot id, so the
/// receiver keeps one report per minute); the next minute runs once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_minute_on_three_hosts_runs_once_through_a_sigkill_mid_run() {
    let ensemble = Ensemble::start();
    let election = "/zkrun/sched/minutely";
    let receiver = Receiver::start();
    let base = receiver.base_url();
    let url = format!("url={base}nightly");
    let extra = ["--schedule", "*/1 * * * *", "--allow-http", base.as_str(), "--plugin-config", url.as_str()];
    // The first report is left unanswered: its run is mid-way when its host dies.
    receiver.hold(Some(Duration::from_secs(120)));
    let mut p: Vec<Process> = (0..3)
        .map(|i| {
            let z = Process::zkrun(&format!("m{i}"), &scheduled_args(&ensemble, election, "nightly", &extra));
            z.wait_event("joined", SOON, |e| e.kind() == "joined");
            z
        })
        .collect();
    let reports = || -> Vec<(String, u64, u64, String)> {
        receiver
            .arrivals()
            .into_iter()
            .filter(|a| a.path == "/nightly")
            .map(|a| {
                let body: serde_json::Value = serde_json::from_str(&a.body).expect("a JSON report");
                let slot = body["slot"].as_str().unwrap().to_string();
                let header = a.headers.iter().find(|(k, _)| k == "zkrun-slot").map(|(_, v)| v.clone());
                assert_eq!(header.as_deref(), Some(slot.as_str()), "{a:?}");
                (slot, body["attempt"].as_u64().unwrap(), a.term.unwrap(), a.participant.clone().unwrap())
            })
            .collect()
    };
    let (cut, attempt, term, host) =
        wait_for("the first minute's report", Duration::from_secs(90), || reports().into_iter().next());
    assert_eq!(attempt, 1);
    let leader = p.iter().position(|z| z.id == host).expect("the report names a participant");
    p[leader].kill();
    receiver.hold(None);

    // The retry, and the next minute's run.
    let all = wait_for("the retry and the next minute", Duration::from_secs(100), || {
        let all = reports();
        let retried = all.iter().any(|(slot, attempt, _, _)| *slot == cut && *attempt == 2);
        let next = all.iter().any(|(slot, _, _, _)| *slot != cut);
        (retried && next).then_some(all)
    });
    let mut per_slot: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for (slot, attempt, report_term, participant) in &all {
        per_slot.entry(slot.clone()).or_default().push(*attempt);
        if *slot == cut && *attempt == 2 {
            assert!(
                *report_term > term && *participant != host,
                "the retry came from {participant}, term {report_term}"
            );
        }
    }
    for (slot, attempts) in &per_slot {
        let expected = if *slot == cut { vec![1, 2] } else { vec![1] };
        assert_eq!(attempts, &expected, "{slot}: {all:?}");
    }
    // The ledger closes both minutes ok, the cut-off one at attempt 2.
    let deadline = std::time::Instant::now() + SOON;
    loop {
        let records = ledger(&ensemble, election).await;
        let outcome = |slot: &str| records.get(slot).map(|r| (r.outcome, r.attempt));
        if per_slot.keys().all(|slot| outcome(slot).is_some_and(|(o, _)| o == Outcome::Ok)) {
            assert_eq!(outcome(&cut), Some((Outcome::Ok, 2)));
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the ledger did not close the runs: {records:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let all_processes: Vec<&Process> = p.iter().collect();
    assert_no_slot_started_twice(&all_processes);
}

/// The Python template on a schedule: each run names the slot it is for
/// (`slots.current`, WIT 0.1.2), the same slot zkrun claimed and started.
#[test]
fn the_python_heartbeat_names_the_slot_of_each_scheduled_run() {
    let ensemble = Ensemble::start();
    let election = "/zkrun/sched/python";
    let extra = ["--every", "2s"];
    let mut p = Process::zkrun("py", &scheduled_args(&ensemble, election, "heartbeat-py", &extra));
    // A cold start compiles the component for seconds first.
    let run = p.wait_event("a scheduled run", Duration::from_secs(120), |e| {
        e.is_heartbeat_tick() && e.message().contains(" slot ")
    });
    let started = p
        .events()
        .into_iter()
        .rfind(|e| e.kind() == "slot_started" && e.mono_ns() <= run.mono_ns())
        .expect("the run was started as a slot");
    let expected = format!(" slot {} attempt {}", started.str("slot"), started.json["attempt"]);
    assert!(run.message().ends_with(&expected), "{} vs {expected}", run.message());
    p.signal(libc::SIGTERM);
    assert_eq!(p.wait_exit(SOON).and_then(|s| s.code()), Some(0), "{}", p.dump());
}
