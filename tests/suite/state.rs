//! Fenced state: typed results, fencing at ZooKeeper, and a counter that
//! keeps counting across failovers.

use std::ffi::OsString;
use std::time::Duration;

use zkrun::election::LeadershipEvent;
use zkrun::state::zookeeper::{FencedStore, WRITE_DELAY_FAILPOINT};
use zkrun::state::{Entry, MAX_VALUE, StateError, StateStore};
use zkrun_tests::process::participant_args;
use zkrun_tests::{Ensemble, Event, Peer, Process, Proxy, paths};
use zookeeper_client as zk;

const SESSION: Duration = Duration::from_secs(4);
const SOON: Duration = Duration::from_secs(30);

async fn leader_store(ensemble: &Ensemble, path: &str) -> (Peer, FencedStore) {
    let mut peer = Peer::join(&ensemble.connect_string(), path, "writer", SESSION);
    peer.wait_elected(SOON).await;
    let fence = peer.election.fence().expect("a leader has a fence");
    let store = FencedStore::new(fence, path);
    (peer, store)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_operations_have_typed_results() {
    let ensemble = Ensemble::start();
    let (_peer, store) = leader_store(&ensemble, "/zkrun/s/ops").await;

    assert_eq!(store.get("missing").await, Ok(None));
    assert_eq!(store.delete("missing").await, Ok(false));
    assert_eq!(store.put("k", b"one".to_vec()).await, Ok(0));
    assert_eq!(store.put("k", b"two".to_vec()).await, Ok(1));
    assert_eq!(store.get("k").await, Ok(Some(Entry { value: b"two".to_vec(), version: 1 })));

    // Compare-and-set: only from the version read.
    assert_eq!(store.compare_and_set("k", Some(1), b"three".to_vec()).await, Ok(2));
    assert_eq!(store.compare_and_set("k", Some(1), b"stale".to_vec()).await, Err(StateError::Conflict));
    assert_eq!(store.compare_and_set("k", None, b"fresh".to_vec()).await, Err(StateError::Conflict));
    assert_eq!(store.compare_and_set("new", Some(0), b"x".to_vec()).await, Err(StateError::Conflict));
    assert_eq!(store.compare_and_set("new", None, b"x".to_vec()).await, Ok(0));
    assert_eq!(store.delete("new").await, Ok(true));
    assert_eq!(store.get("new").await, Ok(None));

    // Limits are checked before ZooKeeper is asked.
    assert_eq!(store.put("big", vec![7; MAX_VALUE]).await, Ok(0));
    assert_eq!(store.put("big", vec![7; MAX_VALUE + 1]).await, Err(StateError::TooLarge(MAX_VALUE + 1)));
    assert!(matches!(store.put("a/b", b"x".to_vec()).await, Err(StateError::BadKey(_))));
    assert!(matches!(store.get("").await, Err(StateError::BadKey(_))));

    // Concurrent compare-and-sets from one version: exactly one wins.
    let version = store.get("k").await.unwrap().unwrap().version;
    let store = std::sync::Arc::new(store);
    let racers: Vec<_> = (0..8)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                store.compare_and_set("k", Some(version), format!("racer {i}").into_bytes()).await
            })
        })
        .collect();
    let mut results = Vec::new();
    for racer in racers {
        results.push(racer.await.unwrap());
    }
    let winners = results.iter().filter(|r| r.is_ok()).count();
    let conflicts = results.iter().filter(|r| **r == Err(StateError::Conflict)).count();
    assert_eq!((winners, conflicts), (1, 7), "{results:?}");
    assert_eq!(store.get("k").await.unwrap().unwrap().version, version + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zookeeper_refuses_writes_once_the_election_node_is_gone() {
    let ensemble = Ensemble::start();
    let path = "/zkrun/s/fence";
    let (peer, store) = leader_store(&ensemble, path).await;
    assert_eq!(store.put("k", b"before".to_vec()).await, Ok(0));

    // Whatever this host believes, once its node is gone the ensemble
    // refuses its writes, in the same transaction as the check.
    let fence = peer.election.fence().unwrap();
    let operator = zk::Client::connect(&ensemble.connect_string()).await.unwrap();
    operator.delete(&fence.node_path, None).await.unwrap();
    assert_eq!(store.put("k", b"after".to_vec()).await, Err(StateError::NotLeader));
    assert_eq!(store.compare_and_set("k", Some(0), b"after".to_vec()).await, Err(StateError::NotLeader));
    assert_eq!(store.delete("k").await, Err(StateError::NotLeader));
    assert_eq!(store.put("other", b"after".to_vec()).await, Err(StateError::NotLeader));
    // Nothing changed.
    let (data, stat) = operator.get_data(&format!("{path}/state/k")).await.unwrap();
    assert_eq!((data.as_slice(), stat.version), (&b"before"[..], 0));
    assert_eq!(operator.check_stat(&format!("{path}/state/other")).await.unwrap(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_leaders_late_write_cannot_land() {
    let ensemble = Ensemble::start();
    let path = "/zkrun/s/late";
    let proxy = Proxy::start(&ensemble.client_addrs());
    let mut old = Peer::join(&proxy.connect_string(), path, "old", SESSION);
    old.wait_elected(SOON).await;
    let old_store = FencedStore::new(old.election.fence().unwrap(), path);
    assert_eq!(old_store.put("k", b"old".to_vec()).await, Ok(0));

    let (mut new, new_store) = {
        let mut new = Peer::join(&ensemble.connect_string(), path, "new", SESSION);
        new.wait_event("Joined", SOON, |e| matches!(e, LeadershipEvent::Joined { .. })).await;
        proxy.partition();
        new.wait_elected(SOON).await;
        let store = FencedStore::new(new.election.fence().unwrap(), path);
        (new, store)
    };
    assert_eq!(new_store.put("k", b"new".to_vec()).await, Ok(1));

    // The old leader's write arrives after the partition heals: refused.
    proxy.heal();
    let late = old_store.put("k", b"late".to_vec()).await;
    assert_eq!(late, Err(StateError::NotLeader));
    assert_eq!(new_store.get("k").await, Ok(Some(Entry { value: b"new".to_vec(), version: 1 })));
    new.drain();
    old.drain();
}

fn counter_args(
    ensemble: &Ensemble,
    election: &str,
    session: &str,
    tick: &str,
    extra: &[&str],
) -> Vec<OsString> {
    participant_args(&ensemble.connect_string(), election, &paths::plugin("counter"), tick, session, extra)
}

/// `committed N under term T` lines of one process: (N, T, mono_ns).
fn commits(p: &Process) -> Vec<(u64, u64, u64)> {
    p.events()
        .iter()
        .filter(|e| e.kind() == "plugin_log")
        .filter_map(|e| {
            let rest = e.message().strip_prefix("committed ")?;
            let mut words = rest.split_whitespace();
            let n = words.next()?.parse().ok()?;
            let term = words.nth(2)?.parse().ok()?;
            Some((n, term, e.mono_ns()?))
        })
        .collect()
}

async fn stored_counter(ensemble: &Ensemble, election: &str) -> (u64, u64, i32) {
    let client = zk::Client::connect(&ensemble.connect_string()).await.unwrap();
    let (data, stat) = client.get_data(&format!("{election}/state/counter")).await.unwrap();
    let text = String::from_utf8(data).unwrap();
    let mut parts = text.split_whitespace().map(|p| p.parse::<u64>().unwrap());
    (parts.next().unwrap(), parts.next().unwrap(), stat.version)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_counter_keeps_counting_across_sigterm_and_sigkill() {
    let ensemble = Ensemble::start();
    let election = "/zkrun/s/counter";
    let mut p: Vec<Process> = Vec::new();
    for i in 0..5 {
        let z = Process::zkrun(&format!("c{i}"), &counter_args(&ensemble, election, "2s", "50ms", &[]));
        z.wait_event("joined", SOON, |e| e.kind() == "joined");
        p.push(z);
    }
    let mut kills = 0;
    for (i, signal) in [libc::SIGTERM, libc::SIGKILL, libc::SIGTERM, libc::SIGKILL].into_iter().enumerate() {
        p[i].wait_event("elected", SOON, |e| e.kind() == "elected");
        zkrun_tests::wait_for("a few commits", SOON, || (commits(&p[i]).len() >= 5).then_some(()));
        if signal == libc::SIGKILL {
            p[i].kill();
            kills += 1;
        } else {
            p[i].signal(signal);
            p[i].wait_exit(SOON).expect("SIGTERM ends the process");
        }
    }
    p[4].wait_event("elected", SOON, |e| e.kind() == "elected");
    zkrun_tests::wait_for("the last leader's commits", SOON, || (commits(&p[4]).len() >= 5).then_some(()));
    p[4].signal(libc::SIGTERM);
    p[4].wait_exit(SOON).expect("SIGTERM ends the process");

    // Every increment the store holds was committed exactly once: the value
    // grows by one per successful compare-and-set, which bumps the version.
    let (value, last_term, version) = stored_counter(&ensemble, election).await;
    assert_eq!(
        value,
        version as u64 + 1,
        "value {value} at version {version}: an increment was lost or doubled"
    );

    // The logged commits, in time order: no duplicate, increasing values,
    // non-decreasing terms. A value may be missing from the logs only where
    // a leader was SIGKILLed between its commit and its log line.
    let mut all: Vec<(u64, u64, u64)> = p.iter().flat_map(commits).collect();
    all.sort_by_key(|&(_, _, at)| at);
    let values: Vec<u64> = all.iter().map(|c| c.0).collect();
    assert!(values.windows(2).all(|w| w[0] < w[1]), "values out of order or duplicated: {values:?}");
    assert!(all.windows(2).all(|w| w[0].1 <= w[1].1), "terms went backwards: {all:?}");
    let gaps: u64 = values.windows(2).map(|w| w[1] - w[0] - 1).sum();
    assert!(gaps <= kills, "{gaps} values missing from the logs, but only {kills} kills: {values:?}");
    assert_eq!(values.first(), Some(&1));
    assert_eq!(*values.last().unwrap(), value, "the last logged commit is what is stored");
    assert_eq!(all.last().unwrap().1, last_term);
}

/// A deposed leader whose session is still alive sends a write it decided
/// on while it led: only the fence (its election node, deleted when the
/// successor took over) can refuse it. The session must stay alive, or the
/// write would be refused for the session's expiry instead, which says
/// nothing about the fence.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deposed_leaders_paused_write_is_refused_by_the_fence_alone() {
    let ensemble = Ensemble::start();
    let election = "/zkrun/s/deposed";
    // T = 6 s: the successor takes over at the old leader's deadline plus
    // 15% (about 0.77 T after its last renewal), more than a second before
    // the old session could expire (T after its last contact), which leaves
    // room to heal the partition and reconnect.
    let session = "6s";
    let proxy = Proxy::start(&ensemble.client_addrs());
    let mut old_args = counter_args(
        &ensemble,
        election,
        session,
        "200ms",
        &["--hook-timeout", "60s", "--plugin-config", "write=put"],
    );
    old_args[3] = proxy.connect_string().into();
    // The old leader pauses between deciding to write and sending the write
    // (as in a long GC pause), longer than it takes to depose it.
    let mut command = std::process::Command::new(paths::zkrun_binary());
    command
        .args(["run", "--log-format", "json", "--id", "old"])
        .args(old_args)
        .env(WRITE_DELAY_FAILPOINT, "8s");
    let old = Process::spawn("old", command);
    old.wait_event("joined", SOON, |e| e.kind() == "joined");
    let successor = Process::zkrun("successor", &counter_args(&ensemble, election, session, "50ms", &[]));
    successor.wait_event("joined", SOON, |e| e.kind() == "joined");

    let first = old.wait_event("first commit", SOON, |e| e.message().starts_with("committed 1 "));
    let after_first = old.events().iter().position(|e| e.message().starts_with("committed 1 ")).unwrap();
    // The next tick passed its lease check and is pausing before its write:
    // cut the old leader off right there, until its successor has taken
    // over, then let it reconnect on its still-open session.
    old.wait_event_from(after_first, "the next write's pause", SOON, |e| e.kind() == "failpoint_delay");
    proxy.partition();
    let took_over = successor.wait_event("successor elected", SOON, |e| e.kind() == "elected");
    proxy.heal();
    assert!(took_over.term() > first.term());
    assert!(
        successor.events().iter().any(|e| e.kind() == "took_over"),
        "the successor must have deposed a live session: {}",
        successor.dump()
    );
    zkrun_tests::wait_for("successor commits", SOON, || (commits(&successor).len() >= 3).then_some(()));

    // The old leader's blind `put` goes out late, on its live session.
    // Unfenced, it would overwrite the successor's counter with
    // "2 <old term>". The fence refuses it: ZooKeeper answers that the old
    // leader's election node is gone (`write_fenced`). Nothing else counts:
    // an expired session or a lost connection is not the fence at work.
    let fate = old.wait_event("the late write's fate", SOON, |e: &Event| {
        matches!(e.kind(), "write_fenced" | "write_outcome_unknown")
    });
    assert_eq!(fate.kind(), "write_fenced", "{}", old.dump());
    assert_eq!(fate.str("key"), "counter");
    assert_eq!(fate.term(), first.term());
    let sessions: std::collections::BTreeSet<String> =
        old.events().iter().filter(|e| e.kind() == "joined").map(|e| e.str("session").to_string()).collect();
    assert_eq!(sessions.len(), 1, "the old leader's session lived on: {}", old.dump());
    assert_eq!(commits(&old).len(), 1, "{}", old.dump());
    std::thread::sleep(Duration::from_millis(500));
    // Nothing of the old leader's landed: the stored value is the new
    // leader's, every write since the first was one of its increments, and
    // it picked up right after the old leader's last acknowledged commit.
    let (value, term, version) = stored_counter(&ensemble, election).await;
    assert_eq!(Some(term), took_over.term(), "the stored value is the new leader's");
    assert_eq!(value, version as u64 + 1);
    let successor_commits = commits(&successor);
    assert_eq!(successor_commits.first().map(|c| c.0), Some(2), "{}", successor.dump());
    assert!(successor_commits.iter().any(|&(n, _, _)| n == value));
}

#[test]
fn reads_work_in_every_hook_and_writes_only_while_leading() {
    let ensemble = Ensemble::start();
    let mut p = Process::zkrun(
        "prober",
        &[
            "--plugin".as_ref(),
            paths::plugin("probe").as_os_str(),
            "--zk".as_ref(),
            ensemble.connect_string().as_ref(),
            "--election".as_ref(),
            "/zkrun/s/probe".as_ref(),
            "--plugin-config".as_ref(),
            "state=yes".as_ref(),
        ],
    );
    p.wait_event("tick put", SOON, |e| e.message() == "state tick put: Ok(0)");
    p.wait_event("tick get", SOON, |e| e.message() == "state tick get: Ok(Some(\"written in tick\"))");
    p.signal(libc::SIGTERM);
    p.wait_event("on-demoted put", SOON, |e| {
        e.message() == "state on-demoted put: Err(StateError::NotLeader)"
    });
    p.wait_event("on-demoted get", SOON, |e| {
        e.message().starts_with("state on-demoted get: Ok(Some(\"written in tick\"))")
    });
    assert_eq!(p.wait_exit(SOON).and_then(|s| s.code()), Some(0));
}

/// A plugin built against `zkrun:plugin@0.1.1` (fenced state, before
/// `slots`) runs unchanged on this host, its state writes fenced as ever.
#[test]
fn a_plugin_built_for_0_1_1_keeps_counting_in_fenced_state_on_this_host() {
    let ensemble = Ensemble::start();
    let args = participant_args(
        &ensemble.connect_string(),
        "/zkrun/state/legacy",
        &paths::plugin("legacy-state"),
        "200ms",
        "4s",
        &[] as &[&str],
    );
    let mut p = Process::zkrun("legacy", &args);
    let term = p.wait_event("elected", SOON, |e| e.kind() == "elected").term().unwrap();
    let tick = p.wait_event("the third counted tick", SOON, |e| {
        e.kind() == "plugin_log" && e.message().starts_with("legacy tick 3:")
    });
    assert!(tick.message().ends_with(&format!("term {term}")), "{}", tick.raw);
    p.signal(libc::SIGTERM);
    assert_eq!(p.wait_exit(SOON).and_then(|s| s.code()), Some(0), "{}", p.dump());
}
