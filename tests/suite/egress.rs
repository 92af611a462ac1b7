//! Fenced egress end to end: the `webhook` example plugin, the real `zkrun`
//! binary, a real ensemble and a loopback HTTP receiver. What leaves is
//! stamped with the term; nothing leaves without a grant; a request in
//! flight is cut off when leadership is in doubt, the hook's deadline
//! passes or zkrun shuts down.

use std::time::Duration;

use zkrun_tests::process::participant_args;
use zkrun_tests::receiver::Receiver;
use zkrun_tests::{Ensemble, EnsembleOptions, Event, Process, Proxy, paths, wait_for};

const SOON: Duration = Duration::from_secs(30);

fn one_server() -> Ensemble {
    Ensemble::start_with(EnsembleOptions { servers: 1, ..EnsembleOptions::default() })
}

fn webhook(connect: &str, election: &str, id: &str, url: &str, extra: &[&str]) -> Process {
    let mut args = vec!["--plugin-config".to_string(), format!("url={url}")];
    args.extend(extra.iter().map(|a| a.to_string()));
    let p = Process::zkrun(
        id,
        &participant_args(connect, election, &paths::plugin("webhook"), "200ms", "4s", &args),
    );
    p.wait_event("joined", SOON, kind("joined"));
    p
}

fn kind(kind: &'static str) -> impl Fn(&Event) -> bool {
    move |e| e.kind() == kind
}

fn plugin_says(text: &'static str) -> impl Fn(&Event) -> bool {
    move |e| e.kind() == "plugin_log" && e.message().contains(text)
}

fn count(p: &Process, pred: impl Fn(&Event) -> bool) -> usize {
    p.events().iter().filter(|e| pred(e)).count()
}

#[test]
fn a_granted_webhook_delivers_requests_stamped_with_its_term_and_nothing_else_leaves() {
    let ensemble = one_server();
    let zk = ensemble.connect_string();
    let receiver = Receiver::start();
    let base = receiver.base_url();

    // Granted: every request arrives stamped with the elected term.
    let election = "/zkrun/egress/granted";
    let mut leader = webhook(&zk, election, "granted", &format!("{base}hook"), &["--allow-http", &base]);
    let term = leader.wait_event("elected", SOON, kind("elected")).term().expect("elected has a term");
    let arrivals = wait_for("three requests", SOON, || {
        let arrivals: Vec<_> = receiver.arrivals().into_iter().filter(|a| a.path == "/hook").collect();
        (arrivals.len() >= 3).then_some(arrivals)
    });
    for arrival in &arrivals {
        assert_eq!(arrival.term, Some(term), "{arrival:?}");
        assert_eq!(arrival.participant.as_deref(), Some("granted"), "{arrival:?}");
        assert_eq!(arrival.election.as_deref(), Some(election), "{arrival:?}");
        assert!(arrival.body.contains(&format!("\"term\":{term}")), "{arrival:?}");
    }
    leader.signal(libc::SIGTERM);
    assert_eq!(leader.wait_exit(SOON).and_then(|s| s.code()), Some(0));

    // No grant: the plugin's requests fail in the guest, each with a log line,
    // and none reaches the server.
    let mut ungranted =
        webhook(&zk, "/zkrun/egress/ungranted", "ungranted", &format!("{base}ungranted"), &[]);
    ungranted.wait_event("the start-up warning", SOON, kind("http_not_granted"));
    ungranted.wait_event("elected", SOON, kind("elected"));
    wait_for("three refused ticks", SOON, || (count(&ungranted, plugin_says("failed")) >= 3).then_some(()));
    let refusal = ungranted.wait_event("http_refused", SOON, kind("http_refused"));
    assert!(refusal.message().contains("--allow-http"), "{refusal:?}");

    // A grant for another path, and one for another port: the URL is
    // outside both, refused the same way.
    let other_port = base.replace(&receiver.port().to_string(), &(receiver.port() + 1).to_string());
    let mut outside = webhook(
        &zk,
        "/zkrun/egress/outside",
        "outside",
        &format!("{base}outside"),
        &["--allow-http", &format!("{base}allowed/"), "--allow-http", &other_port],
    );
    outside.wait_event("elected", SOON, kind("elected"));
    wait_for("three refused ticks", SOON, || (count(&outside, plugin_says("failed")) >= 3).then_some(()));
    let refusal = outside.wait_event("http_refused", SOON, kind("http_refused"));
    assert!(refusal.message().contains("not under any --allow-http prefix"), "{refusal:?}");

    for p in [&mut ungranted, &mut outside] {
        p.signal(libc::SIGTERM);
        assert_eq!(p.wait_exit(SOON).and_then(|s| s.code()), Some(0));
    }
    let strays: Vec<_> = receiver.arrivals().into_iter().filter(|a| a.path != "/hook").collect();
    assert!(strays.is_empty(), "requests arrived without a grant: {strays:?}");
}

#[test]
fn a_request_in_flight_is_cut_off_when_leadership_is_in_doubt_at_the_deadline_and_at_shutdown() {
    let ensemble = one_server();
    let receiver = Receiver::start();
    let base = receiver.base_url();
    // The receiver answers nothing: every request stays in flight until the
    // client drops it.
    receiver.hold(Some(Duration::from_secs(120)));
    let url = format!("{base}hook");
    let generous = ["--allow-http", &base, "--hook-timeout", "100s", "--http-timeout", "100s"];

    // Leadership in doubt: the leader's link to ZooKeeper goes silent.
    let proxy = Proxy::start(&ensemble.client_addrs());
    let cut_off = webhook(&proxy.connect_string(), "/zkrun/egress/doubt", "doubt", &url, &generous);
    cut_off.wait_event("elected", SOON, kind("elected"));
    wait_for("the request in flight", SOON, || (!receiver.arrivals().is_empty()).then_some(()));
    proxy.partition();
    cut_off.wait_event("the request aborted", SOON, kind("http_aborted"));
    wait_for("the connection dropped", SOON, || (receiver.dropped() >= 1).then_some(()));
    drop(cut_off);
    drop(proxy);

    // The hook's deadline: the request dies with the hook.
    let before = receiver.arrivals().len();
    let slow = webhook(
        &ensemble.connect_string(),
        "/zkrun/egress/deadline",
        "deadline",
        &url,
        &["--allow-http", &base, "--hook-timeout", "1s", "--http-timeout", "100s"],
    );
    wait_for("the request in flight", SOON, || (receiver.arrivals().len() > before).then_some(()));
    slow.wait_event("the tick timing out", SOON, |e| {
        e.kind() == "plugin_failed" && e.str("kind") == "timeout"
    });
    slow.wait_event("the request aborted", SOON, kind("http_aborted"));
    wait_for("the connection dropped", SOON, || (receiver.dropped() >= 2).then_some(()));
    drop(slow);

    // Shutdown: one SIGTERM ends zkrun and the request with it.
    let before = receiver.arrivals().len();
    let mut stopping =
        webhook(&ensemble.connect_string(), "/zkrun/egress/shutdown", "shutdown", &url, &generous);
    wait_for("the request in flight", SOON, || (receiver.arrivals().len() > before).then_some(()));
    stopping.signal(libc::SIGTERM);
    assert_eq!(stopping.wait_exit(SOON).and_then(|s| s.code()), Some(0), "{}", stopping.dump());
    assert_eq!(count(&stopping, kind("http_aborted")), 1, "{}", stopping.dump());
    wait_for("the connection dropped", SOON, || (receiver.dropped() >= 3).then_some(()));
}
