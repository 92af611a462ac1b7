//! The election core against a real 3-server ensemble.

use std::time::{Duration, Instant};

use zkrun::election::{DemoteReason, ElectionState, LeadershipEvent, Term};
use zkrun_tests::{Ensemble, Peer, Process, Proxy, monotonic_ns};
use zookeeper_client as zk;

const SESSION: Duration = Duration::from_secs(4);
/// Generous bound for anything that should take a round trip or two.
const SOON: Duration = Duration::from_secs(20);

fn is_elected(e: &LeadershipEvent) -> bool {
    matches!(e, LeadershipEvent::Elected { .. })
}

/// Starts `n` peers one after another, so their sequence follows their index.
async fn peers(connect: &str, path: &str, n: usize, timeout: Duration) -> Vec<Peer> {
    let mut peers = Vec::new();
    for i in 0..n {
        let mut peer = Peer::join(connect, path, &format!("p{i}"), timeout);
        peer.wait_event("Joined", SOON, |e| matches!(e, LeadershipEvent::Joined { .. })).await;
        peers.push(peer);
    }
    peers
}

fn leaders(peers: &[Peer]) -> Vec<usize> {
    (0..peers.len()).filter(|&i| peers[i].election.confirmed().is_some()).collect()
}

async fn operator(ensemble: &Ensemble) -> zk::Client {
    zk::Client::connect(&ensemble.connect_string()).await.expect("operator session")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_leader_and_handover_in_sequence_order() {
    let ensemble = Ensemble::start();
    let mut peers = peers(&ensemble.connect_string(), "/zkrun/e/order", 5, SESSION).await;

    let mut terms: Vec<Term> = Vec::new();
    terms.push(peers[0].wait_elected(SOON).await);
    // Everyone else is a follower watching the node just ahead.
    for (i, peer) in peers.iter().enumerate().skip(1) {
        zkrun_tests::wait_for(&format!("p{i} to follow at position {i}"), SOON, || {
            matches!(peer.election.state(), ElectionState::Follower { position, .. } if position == i)
                .then_some(())
        });
    }
    assert_eq!(leaders(&peers), vec![0]);

    // Resign passes the lead to the next in line.
    peers[0].election.resign(Duration::from_secs(3600)).await;
    terms.push(peers[1].wait_elected(SOON).await);
    assert_eq!(leaders(&peers), vec![1]);

    // A late joiner queues at the back; it never preempts the leader.
    let mut late = Peer::join(&ensemble.connect_string(), "/zkrun/e/order", "late", SESSION);
    late.wait_event("Joined", SOON, |e| matches!(e, LeadershipEvent::Joined { .. })).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(late.election.confirmed().is_none());
    assert_eq!(leaders(&peers), vec![1]);

    // Closing passes the lead on, too, in order.
    for next in 2..5 {
        peers[next - 1].election.shutdown().await;
        assert_eq!(peers[next - 1].election.state(), ElectionState::Stopped);
        terms.push(peers[next].wait_elected(SOON).await);
        assert_eq!(leaders(&peers), vec![next]);
    }
    peers[4].election.shutdown().await;
    let last = late.wait_elected(SOON).await;
    terms.push(last);

    assert!(terms.windows(2).all(|w| w[0] < w[1]), "terms must strictly increase: {terms:?}");
    for peer in &mut peers {
        peer.drain();
    }
    // Nobody but the ones handed the lead was ever elected, and each once.
    for (i, peer) in peers.iter().enumerate() {
        let elected = peer.events_seen().iter().filter(|e| is_elected(e)).count();
        assert_eq!(elected, 1, "p{i} elected {elected} times: {:?}", peer.events_seen());
    }
}

/// Waits until the leader's session shows up on a server, then kills that
/// server and checks the leader rides it out.
async fn leader_rides_out_server_loss(pick: impl Fn(&Ensemble, usize) -> usize) {
    let mut ensemble = Ensemble::start();
    let mut peers = peers(&ensemble.connect_string(), "/zkrun/e/failover", 3, SESSION).await;
    let term = peers[0].wait_elected(SOON).await;
    let session = peers[0].session().unwrap();
    let connected_to = ensemble.wait_server_of_session(session, SOON);
    let victim = pick(&ensemble, connected_to);
    ensemble.kill(victim);

    let leader = &mut peers[0];
    if victim == connected_to {
        leader.wait_event("Suspended", SOON, |e| matches!(e, LeadershipEvent::Suspended { .. })).await;
    }
    // Back with the same session and term, without demote/elect churn.
    let mut resumed = false;
    let deadline = Instant::now() + SOON;
    while Instant::now() < deadline {
        leader.drain();
        if leader
            .events_seen()
            .iter()
            .any(|e| matches!(e, LeadershipEvent::Resumed { term: t } if *t == term))
        {
            resumed = true;
            break;
        }
        if victim != connected_to
            && leader.election.confirmed().is_some_and(|l| l.term == term)
            && !leader.events_seen().iter().any(|e| matches!(e, LeadershipEvent::Suspended { .. }))
        {
            // Its own server stayed up; it may never have been in doubt.
            tokio::time::sleep(Duration::from_secs(2)).await;
            leader.drain();
            if !leader.events_seen().iter().any(|e| matches!(e, LeadershipEvent::Suspended { .. })) {
                resumed = true;
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(resumed, "leader did not resume: {:?}", leader.events_seen());
    assert_eq!(leader.election.confirmed().map(|l| l.term), Some(term));
    assert_eq!(leader.election.stats().sessions, 1, "the session must survive");
    assert_eq!(leader.session(), Some(session));

    // Give the others time to misbehave, then check nobody else was elected.
    tokio::time::sleep(SESSION).await;
    for peer in &mut peers {
        peer.drain();
    }
    assert!(
        !peers[0].events_seen().iter().any(|e| matches!(e, LeadershipEvent::Demoted { .. })),
        "{:?}",
        peers[0].events_seen()
    );
    for peer in &peers[1..] {
        assert!(!peer.was_elected(), "{} was elected: {:?}", peer.id, peer.events_seen());
    }
    assert_eq!(leaders(&peers), vec![0]);
    eprintln!("victim {victim} (leader's server {connected_to}): leader saw {:?}", peers[0].history);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_survives_losing_its_server() {
    leader_rides_out_server_loss(|_, connected_to| connected_to).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_survives_losing_the_ensemble_leader() {
    leader_rides_out_server_loss(|ensemble, _| ensemble.leader().expect("ensemble has a leader")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quorum_loss_demotes_before_expiry_then_one_leader() {
    let mut ensemble = Ensemble::start();
    let mut peers = peers(&ensemble.connect_string(), "/zkrun/e/quorum", 3, SESSION).await;
    let term = peers[0].wait_elected(SOON).await;

    let cut = Instant::now();
    let keep = ensemble.leader().map(|l| (l + 1) % 3).unwrap_or(0);
    for i in 0..3 {
        if i != keep {
            ensemble.kill(i);
        }
    }
    peers[0].wait_event("Suspended", SOON, |e| matches!(e, LeadershipEvent::Suspended { .. })).await;
    let demoted =
        peers[0].wait_event("Demoted", SOON, |e| matches!(e, LeadershipEvent::Demoted { .. })).await;
    let after = cut.elapsed();
    assert_eq!(demoted, LeadershipEvent::Demoted { term, reason: DemoteReason::ConnectionLost });
    // It demoted itself on its deadline, with no quorum to tell it anything
    // (none is back yet: the order holds by construction). The bound only
    // says it did not hang: its deadline plus a whole session timeout of
    // slack for a busy machine.
    let deadline = peers[0].election.timing().expect("a session was established").deadline;
    assert!(after < deadline + SESSION, "demoted {after:?} after quorum loss; deadline {deadline:?}");
    assert!(peers[0].election.confirmed().is_none());

    for i in 0..3 {
        ensemble.restart(i);
    }
    ensemble.wait_serving(Duration::from_secs(60));
    // Exactly one leader again, with a higher term.
    let deadline = Instant::now() + Duration::from_secs(60);
    let leader = loop {
        let now = leaders(&peers);
        if now.len() == 1 {
            break now[0];
        }
        assert!(now.len() <= 1, "two leaders: {now:?}");
        assert!(Instant::now() < deadline, "no leader after quorum returned");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let new_term = peers[leader].election.confirmed().unwrap().term;
    assert!(new_term > term, "{new_term} must exceed {term}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(leaders(&peers), vec![leader]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitioned_leader_is_demoted_and_a_successor_leads_with_a_higher_term() {
    let ensemble = Ensemble::start();
    let path = "/zkrun/e/partition";
    let cut_off = Proxy::start(&ensemble.client_addrs());
    let mut old = Peer::join(&cut_off.connect_string(), path, "old", SESSION);
    let term = old.wait_elected(SOON).await;
    let mut next = Peer::join(&ensemble.connect_string(), path, "next", SESSION);
    next.wait_event("Joined", SOON, |e| matches!(e, LeadershipEvent::Joined { .. })).await;

    cut_off.partition();
    // The successor leads once the old leader stopped renewing past its
    // deadline (or its session expired). What matters is the order: by
    // then the old leader must already have demoted itself. So wait for
    // the successor first, and look at what the old leader had emitted by
    // that moment (its events are queued as they happen; nothing here
    // depends on when this test got around to reading them).
    let new_term = next.wait_elected(SOON).await;
    old.drain();
    assert!(
        old.election.confirmed().is_none() && !matches!(old.election.state(), ElectionState::Leader { .. }),
        "the old leader still leads as its successor is elected: {:?}",
        old.election.state()
    );
    let seen = old.events_seen();
    let demoted = seen.iter().find(|e| matches!(e, LeadershipEvent::Demoted { .. }));
    assert!(
        matches!(demoted, Some(LeadershipEvent::Demoted { term: t, reason: DemoteReason::ConnectionLost }) if *t == term),
        "the successor was elected before the old leader demoted itself; old leader saw {seen:?}"
    );
    let suspended = seen.iter().position(|e| matches!(e, LeadershipEvent::Suspended { .. }));
    let demoted_at = seen.iter().position(|e| matches!(e, LeadershipEvent::Demoted { .. }));
    assert!(suspended < demoted_at, "suspended before demoted: {seen:?}");
    assert!(new_term > term);
    // It did not wait for the old session to expire: the old leader stopped
    // renewing its lease, so past its deadline the next took over.
    assert_eq!(next.election.stats().takeovers, 1);
    assert!(old.election.confirmed().is_none());

    // After healing, the old leader rejoins with a new session and follows.
    cut_off.heal();
    zkrun_tests::wait_for_async("old leader to rejoin", SOON, || {
        let stats = old.election.stats();
        let state = old.election.state();
        async move { (stats.sessions >= 2 && matches!(state, ElectionState::Follower { .. })).then_some(()) }
    })
    .await;
    assert_eq!(next.election.confirmed().map(|l| l.term), Some(new_term));

    // Only one node of the old participant is left, owned by its new session.
    old.drain();
    let client = operator(&ensemble).await;
    let children = client.list_children(path).await.unwrap();
    let mut mine = Vec::new();
    for child in &children {
        let (data, stat) = client.get_data(&format!("{path}/{child}")).await.unwrap();
        if String::from_utf8_lossy(&data).contains("\"old\"") {
            mine.push(stat.ephemeral_owner);
        }
    }
    assert_eq!(mine, vec![old.session().unwrap()], "children: {children:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handover_touches_only_the_next_two_in_line() {
    let ensemble = Ensemble::start();
    let path = "/zkrun/e/herd";
    let mut peers = peers(&ensemble.connect_string(), path, 20, SESSION).await;
    peers[0].wait_elected(SOON).await;
    zkrun_tests::wait_for("every follower in line", SOON, || {
        peers[1..].iter().all(|p| matches!(p.election.state(), ElectionState::Follower { .. })).then_some(())
    });
    // Two watches per follower: its predecessor's node, and that node's
    // lease node (which appears when it leads); one more for the next in
    // line (its own node) and one for the leader (its own node). Nobody
    // watches the children of the election.
    let watches = zkrun_tests::wait_for("watches to settle", SOON, || {
        let n = ensemble.watch_count();
        (n == 2 * (peers.len() - 1) + 2).then_some(n)
    });
    assert_eq!(watches, 40);

    let before: Vec<_> = peers.iter().map(|p| p.election.stats()).collect();
    peers[0].election.shutdown().await;
    peers[1].wait_elected(SOON).await;
    // Let any herd arrive before counting.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after: Vec<_> = peers.iter().map(|p| p.election.stats()).collect();

    // Only the successor wakes up to its predecessor's deletion, and it
    // leads on its warm proof without reading anything. The one after it
    // looks at the election once, when the new leader's lease node appears
    // (so that it follows that lease, ready to take over). Nobody else does
    // anything: O(1) per handover.
    let woken: Vec<usize> = (1..peers.len()).filter(|&i| after[i].wakeups > before[i].wakeups).collect();
    let read: Vec<usize> = (1..peers.len()).filter(|&i| after[i].reads > before[i].reads).collect();
    assert_eq!(woken, vec![1], "only the successor may wake up");
    assert_eq!(read, vec![2], "only the new next in line may look at the election");
    assert_eq!(after[1].wakeups - before[1].wakeups, 1);
    assert_eq!(after[2].reads - before[2].reads, 1);
}

/// The next in line leads on a warm proof without reading anything back,
/// trusting that its own node outlived the leader's. An operator who deletes
/// its node first, then the leader's, must not fool it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_next_in_line_never_leads_on_a_node_it_lost() {
    let ensemble = Ensemble::start();
    let path = "/zkrun/e/lost";
    let mut peers = peers(&ensemble.connect_string(), path, 3, SESSION).await;
    peers[0].wait_elected(SOON).await;
    // Let the next in line settle with its warm proof and its own watch.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (leader_node, next_node) = (peers[0].node().unwrap(), peers[1].node().unwrap());

    let client = operator(&ensemble).await;
    client.delete(&format!("{path}/{next_node}"), None).await.unwrap();
    client.delete(&format!("{path}/{leader_node}"), None).await.unwrap();

    // The third in line takes over; the old next in line rejoins behind it.
    peers[2].wait_elected(SOON).await;
    peers[1].wait_event("Joined again", SOON, |e| matches!(e, LeadershipEvent::Joined { .. })).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    for peer in &mut peers {
        peer.drain();
    }
    assert!(!peers[1].was_elected(), "led on a deleted node: {:?}", peers[1].events_seen());
    assert_eq!(leaders(&peers), vec![2]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_election_path_is_recreated() {
    let ensemble = Ensemble::start();
    let path = "/zkrun/e/deleted";
    let mut peers = peers(&ensemble.connect_string(), path, 3, SESSION).await;
    let term = peers[0].wait_elected(SOON).await;

    // An operator removes the whole election (children first, as deleteall does).
    let client = operator(&ensemble).await;
    for child in client.list_children(path).await.unwrap() {
        let _ = client.delete(&format!("{path}/{child}"), None).await;
    }
    let _ = client.delete(path, None).await;

    let demoted =
        peers[0].wait_event("Demoted", SOON, |e| matches!(e, LeadershipEvent::Demoted { .. })).await;
    assert_eq!(demoted, LeadershipEvent::Demoted { term, reason: DemoteReason::NodeDeleted });
    // Everyone rejoins the recreated election, each with exactly one node.
    // (While the operator's deletes land one by one, the next in line may
    // lead briefly on its old node; never two at once.)
    let deadline = Instant::now() + SOON;
    loop {
        assert!(leaders(&peers).len() <= 1, "two leaders: {:?}", leaders(&peers));
        let participants =
            client.list_children(path).await.map(|c| c.iter().filter(|n| n.contains("-latch-")).count());
        let rejoined = participants == Ok(3);
        let states: Vec<ElectionState> = peers.iter().map(|p| p.election.state()).collect();
        let settled = states.iter().filter(|s| matches!(s, ElectionState::Leader { .. })).count() == 1
            && states.iter().filter(|s| matches!(s, ElectionState::Follower { .. })).count() == 2;
        if rejoined && settled {
            break;
        }
        assert!(Instant::now() < deadline, "the recreated election did not settle: {states:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let now = leaders(&peers);
    assert_eq!(now.len(), 1, "{now:?}");
    assert!(peers[now[0]].election.confirmed().unwrap().term > term);
    assert!(client.check_stat(path).await.unwrap().is_some());
}

/// A process that cannot run (here: its only runtime thread is blocked, as
/// in a SIGSTOP or a long GC pause) learns it lost the lead from the lease
/// alone, before it could act, without a round trip.
#[test]
fn frozen_leader_knows_its_lease_ran_out() {
    let ensemble = Ensemble::start();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let timeout = Duration::from_secs(2);
    let mut peer = runtime.block_on(async {
        let mut peer = Peer::join(&ensemble.connect_string(), "/zkrun/e/frozen", "frozen", timeout);
        peer.wait_elected(SOON).await;
        peer
    });
    assert!(peer.election.confirmed().is_some());
    // Nothing on the runtime runs while this thread sleeps.
    std::thread::sleep(timeout + Duration::from_millis(500));
    assert!(peer.election.confirmed().is_none(), "a frozen leader must not trust an old proof");
    // Once it runs again it is demoted, and rejoins with a new session.
    runtime.block_on(async {
        peer.wait_event("Demoted", SOON, |e| matches!(e, LeadershipEvent::Demoted { .. })).await;
        peer.wait_elected(SOON).await;
    });
    assert!(peer.election.stats().sessions >= 2);
}

/// One participant's lease as it logged it: grants (`lease` events) and
/// revocations (`Suspended`/`Demoted` events), on the machine-wide clock.
#[derive(Clone, Copy, Debug)]
enum LeaseMark {
    /// Leader work allowed from `at` until `until` (or the next mark).
    Granted { at: u64, until: u64 },
    /// Leader work stopped at `at`.
    Revoked { at: u64 },
}

impl LeaseMark {
    fn at(&self) -> u64 {
        match *self {
            LeaseMark::Granted { at, .. } | LeaseMark::Revoked { at } => at,
        }
    }
}

fn field_u64(record: &zkrun_tests::capture::Record, name: &str) -> Option<u64> {
    record.get(name).parse().ok()
}

/// The lease marks of `term`, in the order they were logged.
fn lease_marks(records: &[zkrun_tests::capture::Record], term: Term) -> Vec<LeaseMark> {
    let revoked = [format!("Suspended {{ term: {term:?} }}"), format!("Demoted {{ term: {term:?},")];
    let mut marks: Vec<LeaseMark> = records
        .iter()
        .filter_map(|r| {
            let at = field_u64(r, "mono_ns")?;
            if r.get("event") == "lease" && field_u64(r, "term") == Some(term.0) {
                return Some(LeaseMark::Granted { at, until: field_u64(r, "lease_end_ns")? });
            }
            let event = r.get("event");
            revoked
                .iter()
                .any(|prefix| event.starts_with(prefix.as_str()))
                .then_some(LeaseMark::Revoked { at })
        })
        .collect();
    marks.sort_by_key(LeaseMark::at);
    marks
}

/// When the lease of `term` last allowed leader work, per its own marks.
fn lease_over_at(marks: &[LeaseMark]) -> u64 {
    let mut over = 0;
    for (i, mark) in marks.iter().enumerate() {
        if let LeaseMark::Granted { until, .. } = *mark {
            let next = marks.get(i + 1).map_or(u64::MAX, LeaseMark::at);
            over = over.max(until.min(next));
        }
    }
    over
}

/// Issue 12, item 1. The leader hears of everything 600 ms late (its
/// renewals still commit) and an operator deletes its election node. The
/// next in line must not lead until the old leader has stood down (removed
/// its lease node) or its lease deadline has passed: the old lease, as the
/// old leader itself logged it, ends before the new one starts.
#[test]
fn a_slow_hearing_leader_stops_before_its_successor_starts() {
    let ensemble = Ensemble::start();
    let path = "/zkrun/e/slow-hearing";
    let proxy = Proxy::start(&ensemble.client_addrs());
    // Everything runs on this thread, so the capture sees both participants.
    let (logs, _guard) = zkrun_tests::capture::capture();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let (old_term, new_term) = runtime.block_on(async {
        let mut slow = Peer::join(&proxy.connect_string(), path, "slow", SESSION);
        let old_term = slow.wait_elected(SOON).await;
        let mut next = Peer::join(&ensemble.connect_string(), path, "next", SESSION);
        next.wait_event("Joined", SOON, |e| matches!(e, LeadershipEvent::Joined { .. })).await;
        wait_for_state(&next, SOON, |s| matches!(s, ElectionState::Follower { position: 1, .. })).await;

        proxy.delay_downstream(Duration::from_millis(600));
        // Renewals still commit: the slow leader keeps leading.
        tokio::time::sleep(SESSION / 2).await;
        slow.drain();
        assert!(slow.election.confirmed().is_some(), "{:?}", slow.events_seen());
        assert!(!slow.events_seen().iter().any(|e| matches!(e, LeadershipEvent::Demoted { .. })));

        let client = operator(&ensemble).await;
        client.delete(&format!("{path}/{}", slow.node().unwrap()), None).await.unwrap();
        let new_term = next.wait_elected(SOON).await;
        let demoted =
            slow.wait_event("Demoted", SOON, |e| matches!(e, LeadershipEvent::Demoted { .. })).await;
        assert_eq!(demoted, LeadershipEvent::Demoted { term: old_term, reason: DemoteReason::NodeDeleted });
        // Having stood down, the old leader removes its lease node too.
        let old_node = slow.node().unwrap();
        let old_lease = format!("{path}/zkrun-lease-{}", old_node.rsplit_once("latch-").unwrap().1);
        zkrun_tests::wait_for_async("the old lease node to go", SOON, || {
            let exists = client.check_stat(&old_lease);
            async move { exists.await.unwrap().is_none().then_some(()) }
        })
        .await;
        (old_term, new_term)
    });
    let records = logs.events();
    let old = lease_marks(&records, old_term);
    let new = lease_marks(&records, new_term);
    let new_start = new.first().map(LeaseMark::at).expect("the new leader logged its lease");
    let old_over = lease_over_at(&old);
    assert!(
        old_over <= new_start,
        "two leaders for {} ms: the old lease ran until {old_over}, the new one began at {new_start}\nold: {old:?}",
        (old_over - new_start) / 1_000_000
    );
}

async fn wait_for_state(peer: &Peer, timeout: Duration, pred: impl Fn(&ElectionState) -> bool) {
    zkrun_tests::wait_for_async("a state", timeout, || {
        let ok = pred(&peer.election.state());
        async move { ok.then_some(()) }
    })
    .await;
}

/// Issue 12, item 5. Sequence numbers restart when the election path is
/// re-created; node names must not, or an old term's in-flight fenced write
/// (checked against its node's path) could pass against a new node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejoin_never_reuses_a_node_name() {
    let ensemble = Ensemble::start();
    let path = "/zkrun/e/names";
    let mut solo = Peer::join(&ensemble.connect_string(), path, "solo", SESSION);
    solo.wait_elected(SOON).await;
    let first = solo.node().unwrap();

    // Children and path in one transaction, so the rejoin cannot land in between.
    let client = operator(&ensemble).await;
    let mut multi = client.new_multi_writer();
    for child in client.list_children(path).await.unwrap() {
        multi.add_delete(&format!("{path}/{child}"), None).unwrap();
    }
    multi.add_delete(path, None).unwrap();
    multi.commit().await.unwrap();
    solo.wait_event("Demoted", SOON, |e| matches!(e, LeadershipEvent::Demoted { .. })).await;
    let rejoined =
        solo.wait_event("Joined again", SOON, |e| matches!(e, LeadershipEvent::Joined { .. })).await;
    let LeadershipEvent::Joined { node: second, .. } = rejoined else { unreachable!() };
    // Same sequence (the path was re-created), different name.
    assert_eq!(second.rsplit_once("latch-").unwrap().1, first.rsplit_once("latch-").unwrap().1);
    assert_ne!(second, first);
}

/// Issue 12, item 2. A session keeps its id across a reconnect but not
/// necessarily its timeout: a server with a lower `maxSessionTimeout`
/// renegotiates it. The leader must follow: a lease no longer than half the
/// new timeout, and no leading on the old one in between.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renegotiated_session_timeout_shortens_the_lease() {
    use zkrun::clock::{Clock, SystemClock};
    let mut ensemble = Ensemble::start();
    let path = "/zkrun/e/renegotiated";
    // The leader talks to server 0 only, so it reconnects to that server.
    let only_first = Proxy::start(&ensemble.client_addrs()[..1]);
    let long = Duration::from_secs(20);
    let mut leader = Peer::join(&only_first.connect_string(), path, "leader", long);
    let term = leader.wait_elected(SOON).await;
    assert_eq!(leader.election.timing().unwrap().session_timeout, long);
    let session = leader.session().unwrap();

    // Short enough to renegotiate, long enough that the restart of the
    // server (seconds on a loaded machine) leaves the lease under the new
    // timing (a deadline of 2T/3 = 6.7 s after the last proof) standing.
    let short = Duration::from_secs(10);
    ensemble.restart_with_max_session_timeout(0, Some(short));
    ensemble.wait_serving(Duration::from_secs(60));
    zkrun_tests::wait_for_async("the timing to follow the renegotiated timeout", SOON, || {
        let timing = leader.election.timing();
        async move { (timing.map(|t| t.session_timeout) == Some(short)).then_some(()) }
    })
    .await;
    // Same session and term; leading again once a renewal under the new
    // timing went through, with a lease of at most T/2 = 5 s.
    let lease = zkrun_tests::wait_for_async("leadership confirmed again", SOON, || {
        let lease = leader.election.confirmed();
        async move { lease }
    })
    .await;
    leader.drain();
    assert_eq!(lease.term, term, "{:?}", leader.events_seen());
    let left = lease.expires.remaining(SystemClock.now());
    assert!(left <= short / 2, "a lease of {left:?} under a {short:?} session timeout");
    leader.drain();
    assert_eq!(leader.session(), Some(session), "{:?}", leader.events_seen());
    assert!(!leader.events_seen().iter().any(|e| matches!(e, LeadershipEvent::Demoted { .. })));
}

/// Issue 16. A lease asked for (`--lease`) must stay shorter than the
/// session timeout: renegotiated below it, the lease is cut to the session
/// timeout (the timing it derives is the default one), and the leader
/// leads on only after a renewal under that timing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_longer_than_a_renegotiated_session_timeout_is_cut_to_it() {
    use zkrun::clock::{Clock, SystemClock};
    use zkrun::election::Timing;
    let mut ensemble = Ensemble::start();
    let path = "/zkrun/e/lease-cut";
    let only_first = Proxy::start(&ensemble.client_addrs()[..1]);
    let (long, asked) = (Duration::from_secs(20), Duration::from_secs(16));
    let mut leader = Peer::join_with_lease(&only_first.connect_string(), path, "leader", long, Some(asked));
    let term = leader.wait_elected(SOON).await;
    let timing = leader.election.timing().unwrap();
    assert_eq!((timing.session_timeout, timing.period), (long, asked));
    assert_eq!(timing.lease, asked / 2);

    // Below the asked lease, and long enough that the server's restart
    // (seconds on a loaded machine) leaves the new timing's deadline standing.
    let short = Duration::from_secs(10);
    ensemble.restart_with_max_session_timeout(0, Some(short));
    ensemble.wait_serving(Duration::from_secs(60));
    zkrun_tests::wait_for_async("the timing to follow the renegotiated timeout", SOON, || {
        let timing = leader.election.timing();
        async move { (timing.map(|t| t.session_timeout) == Some(short)).then_some(()) }
    })
    .await;
    assert_eq!(leader.election.timing(), Some(Timing::new(short)));
    let lease = zkrun_tests::wait_for_async("leadership confirmed again", SOON, || {
        let lease = leader.election.confirmed();
        async move { lease }
    })
    .await;
    leader.drain();
    assert_eq!(lease.term, term, "{:?}", leader.events_seen());
    let left = lease.expires.remaining(SystemClock.now());
    assert!(left <= short / 2, "a lease of {left:?} under a {short:?} session timeout");
    leader.drain();
    assert!(!leader.events_seen().iter().any(|e| matches!(e, LeadershipEvent::Demoted { .. })));
}

/// Issue 12, item 6. After a long outage of the whole ensemble, a
/// disconnected participant must be trying again soon after quorum returns,
/// not still backing off until it declares its own session expired (which
/// the ensemble had kept). The client library's backoff used to double per
/// cycle through the servers: attempts about 10 s and 20 s into an outage,
/// then none before its own expiry deadline at 1.4 T.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_keeps_its_session_through_a_long_outage() {
    let mut ensemble = Ensemble::start();
    let path = "/zkrun/e/outage";
    let session_timeout = Duration::from_secs(20);
    let mut leader = Peer::join(&ensemble.connect_string(), path, "leader", session_timeout);
    leader.wait_elected(SOON).await;
    let mut follower = Peer::join(&ensemble.connect_string(), path, "follower", session_timeout);
    follower.wait_event("Joined", SOON, |e| matches!(e, LeadershipEvent::Joined { .. })).await;
    let session = follower.session().unwrap();
    zkrun_tests::wait_for("the follower to settle", SOON, || {
        matches!(follower.election.state(), ElectionState::Follower { .. }).then_some(())
    });
    let reads = follower.election.stats().reads;

    for i in 0..ensemble.size() {
        ensemble.kill(i);
    }
    tokio::time::sleep(Duration::from_millis(20_500)).await;
    for i in 0..ensemble.size() {
        ensemble.restart(i);
    }
    ensemble.wait_serving(Duration::from_secs(60));
    // Its first look after the outage must be in the same session: it lost
    // neither its session nor its place.
    zkrun_tests::wait_for_async("the follower to look again", Duration::from_secs(60), || {
        let looked = follower.election.stats().reads > reads;
        async move { looked.then_some(()) }
    })
    .await;
    follower.drain();
    assert_eq!(follower.election.stats().sessions, 1, "{:?}", follower.events_seen());
    assert_eq!(follower.session(), Some(session));
}

/// Issue 12, as done: real `zkrun` processes running the heartbeat plugin
/// (a tick every 100 ms). The leader hears everything 600 ms late and an
/// operator deletes its node: it never ticks after its successor is elected,
/// by the events' own clock.
#[test]
fn a_slow_hearing_zkrun_leader_never_ticks_after_its_successor_is_elected() {
    let ensemble = Ensemble::start();
    let path = "/zkrun/e/slow-ticks";
    let proxy = Proxy::start(&ensemble.client_addrs());
    let heartbeat = zkrun_tests::paths::plugin("heartbeat");
    let args = |connect: String| -> Vec<std::ffi::OsString> {
        let session = format!("{}ms", SESSION.as_millis());
        ["--plugin", heartbeat.to_str().unwrap(), "--zk", &connect, "--election", path]
            .into_iter()
            .chain(["--tick", "100ms", "--session-timeout", &session])
            .map(Into::into)
            .collect()
    };
    let slow = Process::zkrun("slow", &args(proxy.connect_string()));
    let joined = slow.wait_event("joined", SOON, |e| e.kind() == "joined");
    let term = slow.wait_event("elected", SOON, |e| e.kind() == "elected").term().unwrap();
    let next = Process::zkrun("next", &args(ensemble.connect_string()));
    next.wait_event("joined", SOON, |e| e.kind() == "joined");
    // Let the next in line settle (warm proof, watches), then slow the link.
    std::thread::sleep(Duration::from_secs(1));
    proxy.delay_downstream(Duration::from_millis(600));
    std::thread::sleep(SESSION / 2);
    let ticking = monotonic_ns();
    slow.wait_event("a tick on the slow link", SOON, |e| {
        e.is_heartbeat_tick() && e.mono_ns().unwrap_or(0) > ticking
    });

    let node = format!("{path}/{}", joined.str("node"));
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async { operator(&ensemble).await.delete(&node, None).await.unwrap() });
    let elected = next.wait_event("elected", SOON, |e| e.kind() == "elected");
    slow.wait_event("demoted", SOON, |e| e.kind() == "demoted");
    // Anything the slow leader still had in flight has landed by now.
    std::thread::sleep(Duration::from_secs(1));
    let elected_at = elected.mono_ns().unwrap();
    let late: Vec<u64> = slow
        .events()
        .iter()
        .filter(|e| e.is_heartbeat_tick() && e.term() == Some(term))
        .filter_map(|e| e.mono_ns())
        .filter(|&at| at > elected_at)
        .collect();
    assert!(
        late.is_empty(),
        "the old leader ticked {} times after its successor was elected\n{}",
        late.len(),
        slow.dump()
    );
}

/// `zkrun run` arguments for a heartbeat participant (a tick every 100 ms)
/// of `path` on `connect`, with `extra` flags.
fn heartbeat_args(connect: &str, path: &str, session: &str, extra: &[&str]) -> Vec<std::ffi::OsString> {
    let heartbeat = zkrun_tests::paths::plugin("heartbeat");
    zkrun_tests::process::participant_args(connect, path, &heartbeat, "100ms", session, extra)
}

/// Deletes `node` under `path` as an operator would.
fn operator_delete(ensemble: &Ensemble, node: &str) {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async { operator(ensemble).await.delete(node, None).await.unwrap() });
}

/// The heartbeat ticks `process` logged in `term` after `after` (mono_ns).
fn ticks_after(process: &Process, term: u64, after: u64) -> Vec<u64> {
    process
        .events()
        .iter()
        .filter(|e| e.is_heartbeat_tick() && e.term() == Some(term))
        .filter_map(|e| e.mono_ns())
        .filter(|&at| at > after)
        .collect()
}

/// How the deposed leader of [`newcomer_case`] is cut off.
#[derive(Clone, Copy, Debug)]
enum Cut {
    /// It hears everything 2 s late; its writes still commit.
    Delay,
    /// Its proxy forwards nothing, either way.
    Partition,
}

/// Issue 22, item 1: one rule for leading, on every path. An operator
/// deletes leader A's node while A is cut off (`cut`); B, next in line,
/// waits on A's lease node; C joins and its look shows
/// `[B, C, zkrun-lease-A]`; B leaves. C must not lead on its warm proof
/// (the shortcut) while A's lease node stands: A does no work after C's
/// election. (On the code before `decide` was wired in, C led about a
/// second after the deletion while A ticked on.) Each case runs under its
/// own election path of `ensemble`, with `lease` (`None`: the default).
fn newcomer_case(ensemble: &Ensemble, run: &str, cut: Cut, lease: Option<&str>) {
    let path = format!("/zkrun/e/one-rule-{run}");
    let path = path.as_str();
    let proxy = Proxy::start(&ensemble.client_addrs());
    let direct = ensemble.connect_string();
    let extra: Vec<&str> = lease.map(|l| vec!["--lease", l]).unwrap_or_default();
    let a = Process::zkrun("a", &heartbeat_args(&proxy.connect_string(), path, "10s", &extra));
    let joined = a.wait_event("joined", SOON, |e| e.kind() == "joined");
    let term = a.wait_event("elected", SOON, |e| e.kind() == "elected").term().unwrap();
    let mut b = Process::zkrun("b", &heartbeat_args(&direct, path, "10s", &extra));
    b.wait_event("joined", SOON, |e| e.kind() == "joined");
    std::thread::sleep(Duration::from_secs(1));
    match cut {
        Cut::Delay => {
            // A hears of everything 2 s late; its renewals still commit.
            // With a 10 s session (a 5 s lease) it keeps working; with
            // `--lease 1s` no proof comes back within L/2, so it stops on
            // its own and the case checks that nothing else goes wrong.
            proxy.delay_downstream(Duration::from_secs(2));
            std::thread::sleep(Duration::from_secs(3));
            if lease.is_none() {
                let slowed = monotonic_ns();
                a.wait_event("a tick on the slow link", SOON, |e| {
                    e.is_heartbeat_tick() && e.mono_ns().unwrap_or(0) > slowed
                });
            }
        }
        Cut::Partition => proxy.partition(),
    }

    let deleted = monotonic_ns();
    operator_delete(ensemble, &format!("{path}/{}", joined.str("node")));
    b.wait_event("B waiting on A's lease node", SOON, |e| e.kind() == "awaiting_stand_down");
    let c = Process::zkrun("c", &heartbeat_args(&direct, path, "10s", &extra));
    c.wait_event("joined", SOON, |e| e.kind() == "joined");
    // Let C look (`[B, C, zkrun-lease-A]`) and settle behind B.
    std::thread::sleep(Duration::from_millis(300));
    b.signal(libc::SIGTERM);
    assert_eq!(b.wait_exit(SOON).and_then(|s| s.code()), Some(0), "{}", b.dump());

    let elected = c.wait_event("elected", SOON, |e| e.kind() == "elected");
    a.wait_event("demoted", SOON, |e| e.kind() == "demoted");
    // Anything A still had in flight has landed by now.
    std::thread::sleep(Duration::from_secs(1));
    proxy.heal();
    let late = ticks_after(&a, term, elected.mono_ns().unwrap());
    assert!(
        late.is_empty(),
        "{run} ({cut:?}, lease {lease:?}): A ticked {} times after C was elected\nA:\n{}\nC:\n{}",
        late.len(),
        a.dump(),
        c.dump()
    );
    // C's decision to lead says how it was taken: not on the shortcut.
    let decision = c.wait_event("lead_decision", SOON, |e| e.kind() == "lead_decision");
    assert_ne!(decision.str("path"), "shortcut", "{}", c.dump());
    assert_eq!(decision.term(), elected.term());
    assert!(decision.json["generation"].is_u64() && !decision.str("why").is_empty(), "{}", decision.raw);
    eprintln!(
        "{run} ({cut:?}, lease {}): C elected {} ms after the deletion, on the {} path; A: no tick after it",
        lease.unwrap_or("default"),
        elected.mono_ns().unwrap().saturating_sub(deleted) / 1_000_000,
        decision.str("path")
    );
}

/// Issue 22, item 1, in the suite: A slowed at the default lease, and A
/// partitioned under `--lease 1s`. `ZKRUN_ONE_RULE_RUNS=10` runs these and
/// A partitioned at the default lease that many times each (the "10 of 10" measurement;
/// `docs/election.md` has the result).
#[test]
fn a_newcomer_never_leads_past_a_deposed_leaders_lease_node() {
    let ensemble = Ensemble::start();
    let runs: usize = std::env::var("ZKRUN_ONE_RULE_RUNS").ok().and_then(|n| n.parse().ok()).unwrap_or(0);
    if runs == 0 {
        newcomer_case(&ensemble, "delay", Cut::Delay, None);
        newcomer_case(&ensemble, "partition-1s", Cut::Partition, Some("1s"));
        return;
    }
    for i in 0..runs {
        // Not (Delay, 1s): with replies 2 s late and L/2 = 0.5 s, A never
        // holds a usable proof, abandons its own node, and the sequence
        // cannot be set up (the operator's delete finds no node).
        for (cut, lease) in [(Cut::Delay, None), (Cut::Partition, None), (Cut::Partition, Some("1s"))] {
            let run = format!("{i}-{cut:?}-{}", lease.unwrap_or("default")).to_lowercase();
            newcomer_case(&ensemble, &run, cut, lease);
        }
    }
    eprintln!("{} runs of each of 3 cases: A never worked after C's election", runs);
}

/// Issue 22, item 2: leading is bounded. The first in line hears
/// everything 400 ms late under `--lease 1s` (a write round trip past L/3),
/// so no write of its lease node ever comes back in time to lead on. It
/// must give up the head of the line (not stall it), and one SIGTERM must
/// end it, with exit code 0, within 5 s.
#[test]
fn a_slow_head_of_line_gives_way_and_exits_on_one_sigterm() {
    let ensemble = Ensemble::start();
    let path = "/zkrun/e/slow-head";
    let proxy = Proxy::start(&ensemble.client_addrs());
    proxy.delay_downstream(Duration::from_millis(400));
    let mut slow =
        Process::zkrun("slow", &heartbeat_args(&proxy.connect_string(), path, "10s", &["--lease", "1s"]));
    slow.wait_event("joined", SOON, |e| e.kind() == "joined");
    let healthy = Process::zkrun(
        "healthy",
        &heartbeat_args(&ensemble.connect_string(), path, "10s", &["--lease", "1s"]),
    );
    let joined = healthy.wait_event("joined", SOON, |e| e.kind() == "joined");
    let elected = healthy.wait_event("elected", SOON, |e| e.kind() == "elected");
    let took = elected.seen.duration_since(joined.seen);
    let slow_elected = slow.events().iter().any(|e| e.kind() == "elected");
    assert!(!slow_elected, "the slow participant led:\n{}", slow.dump());
    slow.wait_event("lead_abandoned", SOON, |e| e.kind() == "lead_abandoned");
    // Target: 2 L + the delay (2.4 s); generous here, measured in the log.
    eprintln!("the healthy participant led {} ms after it joined", took.as_millis());
    assert!(took < Duration::from_secs(10), "no leader for {took:?}");

    let stop = std::time::Instant::now();
    slow.signal(libc::SIGTERM);
    let status = slow
        .wait_exit(Duration::from_secs(5))
        .unwrap_or_else(|| panic!("no exit within 5 s of one SIGTERM\n{}", slow.dump()));
    assert_eq!(status.code(), Some(0), "{}", slow.dump());
    eprintln!("the slow participant exited {} ms after SIGTERM", stop.elapsed().as_millis());
}

/// Issue 22, item 3: a takeover timer counts from the first sight of a
/// lease version. With the leader frozen and the follower's connection
/// reset every 0.5 s, the follower re-reads the same lease version after
/// every reconnect; it must still take over about 0.77 L after the last
/// renewal (`--lease 1s`, session 10 s), not only when the session expires.
#[test]
fn a_takeover_timer_survives_reconnects() {
    let ensemble = Ensemble::start();
    let path = "/zkrun/e/first-sight";
    let proxy = Proxy::start(&ensemble.client_addrs());
    let leader = Process::zkrun(
        "leader",
        &heartbeat_args(&ensemble.connect_string(), path, "10s", &["--lease", "1s"]),
    );
    leader.wait_event("elected", SOON, |e| e.kind() == "elected");
    let follower =
        Process::zkrun("follower", &heartbeat_args(&proxy.connect_string(), path, "10s", &["--lease", "1s"]));
    follower.wait_event("joined", SOON, |e| e.kind() == "joined");
    std::thread::sleep(Duration::from_secs(1));

    leader.signal(libc::SIGSTOP);
    leader.wait_stopped();
    let frozen = std::time::Instant::now();
    let resets = std::sync::atomic::AtomicBool::new(true);
    let resetting = std::thread::scope(|scope| {
        let reset_loop = scope.spawn(|| {
            let mut n = 0;
            while resets.load(std::sync::atomic::Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(500));
                proxy.reset();
                n += 1;
            }
            n
        });
        let elected = follower.log().wait(SOON, |e| e.kind() == "elected");
        resets.store(false, std::sync::atomic::Ordering::Relaxed);
        (elected, reset_loop.join().unwrap())
    });
    let (elected, n) = resetting;
    let took = frozen.elapsed();
    leader.signal(libc::SIGCONT);
    assert!(elected.is_some(), "no takeover within {SOON:?}\n{}", follower.dump());
    eprintln!("takeover {} ms after the freeze, through {n} connection resets", took.as_millis());
    // Normal: 1.15 x 2L/3 = 0.77 s after the last renewal seen, plus a
    // reconnect. Restarting the timer at every reset would wait for the
    // leader's session to expire (10 s).
    assert!(n >= 2, "the connection was reset only {n} times");
    assert!(took < Duration::from_secs(4), "takeover took {took:?}\n{}", follower.dump());
}

/// Issue 22, item 5: a leader that resigns after its node was deleted
/// (here: before it heard of the deletion, its link 1 s slow) removes its
/// lease node too, instead of leaving it for the next in line to wait out.
/// (A shutdown does the same, but then closes its session, which removes
/// the lease node anyway, so only the resign can show it.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resigning_after_the_node_is_gone_removes_the_lease_node() {
    let ensemble = Ensemble::start();
    let path = "/zkrun/e/hygiene";
    let client = operator(&ensemble).await;
    let proxy = Proxy::start(&ensemble.client_addrs());
    let mut leader = Peer::join(&proxy.connect_string(), path, "leader", Duration::from_secs(10));
    leader.wait_elected(SOON).await;
    let node = leader.node().unwrap();
    let lease = format!("{path}/zkrun-lease-{}", node.rsplit_once("latch-").unwrap().1);
    assert!(client.check_stat(&lease).await.unwrap().is_some());
    proxy.delay_downstream(Duration::from_secs(1));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    client.delete(&format!("{path}/{node}"), None).await.unwrap();
    leader.election.resign(Duration::from_secs(60)).await;
    client.sync(path).await.unwrap();
    assert!(client.check_stat(&lease).await.unwrap().is_none(), "the lease node outlived its election node");
    leader.election.shutdown().await;
}

/// Issue 22, item 5: a participant that joins in a new session deletes the
/// election node an earlier session of its own left, and that node's lease
/// node with it (a partitioned leader gives up its session before the
/// ensemble expires it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_session_removes_the_lease_node_of_its_earlier_one() {
    let ensemble = Ensemble::start();
    let path = "/zkrun/e/earlier-lease";
    let client = operator(&ensemble).await;
    let proxy = Proxy::start(&ensemble.client_addrs());
    let session_timeout = Duration::from_secs(20);
    let mut leader = Peer::join_with_lease(
        &proxy.connect_string(),
        path,
        "leader",
        session_timeout,
        Some(Duration::from_secs(1)),
    );
    leader.wait_elected(SOON).await;
    let old = leader.node().unwrap();
    let old_lease = format!("{path}/zkrun-lease-{}", old.rsplit_once("latch-").unwrap().1);
    proxy.partition();
    leader.wait_event("Demoted", SOON, |e| matches!(e, LeadershipEvent::Demoted { .. })).await;
    // Past its own deadline it gives the session up; the ensemble keeps it
    // (and its nodes) for 20 s.
    tokio::time::sleep(Duration::from_secs(3)).await;
    proxy.heal();
    leader.wait_event("Joined again", SOON, |e| matches!(e, LeadershipEvent::Joined { .. })).await;
    // The join cleared both before it created the new node (without that,
    // the new node would wait ~0.77 L on the old lease node, then clear it).
    client.sync(path).await.unwrap();
    let children = client.list_children(path).await.unwrap();
    assert!(!children.contains(&old), "{children:?}");
    assert!(
        client.check_stat(&old_lease).await.unwrap().is_none(),
        "the earlier session's lease node stayed: {children:?}"
    );
    assert!(leader.election.stats().sessions >= 2);
    leader.wait_elected(SOON).await;
}
