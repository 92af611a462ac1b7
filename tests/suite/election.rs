//! The election core against a real 3-server ensemble.

use std::time::{Duration, Instant};

use zkrun::election::{DemoteReason, ElectionState, LeadershipEvent, Term};
use zkrun_tests::{Ensemble, Peer, Proxy};
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
