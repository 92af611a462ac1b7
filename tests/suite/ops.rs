//! What operators watch: metrics and health endpoints, `zkrun status` as a
//! check, plugin provenance, and the hygiene of what zkrun prints.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

use zkrun_tests::ensemble::free_ports;
use zkrun_tests::process::{participant_args, run_to_end};
use zkrun_tests::{Ensemble, Event, Process, paths, wait_for};

const SOON: Duration = Duration::from_secs(30);

/// `GET path` on `addr`: the status code and the body.
fn get(addr: &str, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(addr).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let code = response.split_whitespace().nth(1)?.parse().ok()?;
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    Some((code, body))
}

/// The value of the sample `name` (with its labels, as printed) in `text`.
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

fn is_elected(e: &Event) -> bool {
    e.kind() == "elected"
}

/// A heartbeat participant of `election` serving metrics on `addr`.
fn with_metrics(ensemble: &Ensemble, election: &str, id: &str, addr: &str) -> Process {
    let args = participant_args(
        &ensemble.connect_string(),
        election,
        &paths::plugin("heartbeat"),
        "200ms",
        "4s",
        &["--metrics", addr],
    );
    let p = Process::zkrun(id, &args);
    p.wait_event("joined", SOON, |e| e.kind() == "joined");
    p
}

#[test]
fn metrics_show_exactly_one_leader_with_its_term_and_both_are_healthy() {
    let ensemble = Ensemble::start();
    let ports = free_ports(2);
    let addrs: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let p = [
        with_metrics(&ensemble, "/zkrun/ops/metrics", "m0", &addrs[0]),
        with_metrics(&ensemble, "/zkrun/ops/metrics", "m1", &addrs[1]),
    ];
    let elected = p[0].wait_event("elected", SOON, is_elected);
    let term = elected.term().unwrap();
    let starting = p[0].wait_event("starting", SOON, |e| e.kind() == "starting");
    let sha256 = starting.str("sha256").to_string();
    assert_eq!(sha256.len(), 64, "{}", starting.raw);
    // Provenance: the elected event names the plugin that runs.
    assert_eq!(elected.str("sha256"), sha256);
    assert_eq!(elected.str("plugin"), "heartbeat");

    let scrapes: Vec<String> = wait_for("both to show one leader", SOON, || {
        let texts: Vec<String> =
            addrs.iter().map(|a| get(a, "/metrics")).map(|r| r.map(|(_, b)| b)).collect::<Option<_>>()?;
        let leaders: Vec<f64> = texts.iter().map(|t| sample(t, "zkrun_is_leader")).collect::<Option<_>>()?;
        // The follower reports `joined` before its first look puts it in line.
        let following = sample(&texts[1], "zkrun_state{state=\"follower\"}")? == 1.0;
        (leaders == vec![1.0, 0.0] && following).then_some(texts)
    });
    let (leader, follower) = (&scrapes[0], &scrapes[1]);
    assert_eq!(sample(leader, "zkrun_term"), Some(term as f64), "{leader}");
    assert_eq!(sample(follower, "zkrun_term"), Some(0.0), "{follower}");
    assert_eq!(sample(leader, "zkrun_state{state=\"leader\"}"), Some(1.0), "{leader}");
    assert_eq!(sample(follower, "zkrun_state{state=\"follower\"}"), Some(1.0), "{follower}");
    let lease = sample(leader, "zkrun_lease_remaining_seconds").unwrap();
    assert!(lease > 0.0 && lease <= 2.0, "a 4s session gives a 2s lease: {lease}");
    let info = format!("zkrun_plugin_info{{name=\"heartbeat\",sha256=\"{sha256}\"}}");
    for text in &scrapes {
        assert_eq!(sample(text, &info), Some(1.0), "{text}");
        assert_eq!(sample(text, "zkrun_zk_connected"), Some(1.0), "{text}");
        assert_eq!(sample(text, "zkrun_leadership_transitions_total{event=\"joined\"}"), Some(1.0), "{text}");
        assert!(text.contains("zkrun_zk_reconnects_total 0"), "{text}");
    }
    assert_eq!(sample(leader, "zkrun_leadership_transitions_total{event=\"elected\"}"), Some(1.0));
    wait_for("the leader's ticks to be timed", SOON, || {
        let text = get(&addrs[0], "/metrics")?.1;
        (sample(&text, "zkrun_hook_duration_seconds_count{hook=\"tick\"}")? >= 1.0).then_some(())
    });
    for addr in &addrs {
        assert_eq!(get(addr, "/healthz").map(|r| r.0), Some(200), "{addr}");
        assert_eq!(get(addr, "/readyz").map(|r| r.0), Some(200), "{addr}");
        assert_eq!(get(addr, "/nope").map(|r| r.0), Some(404), "{addr}");
    }

    // A handover moves the one `zkrun_is_leader 1` to the other host.
    let mut p = p;
    p[0].signal(libc::SIGTERM);
    p[0].wait_exit(SOON).expect("the leader exits");
    let new_term = p[1].wait_event("elected", SOON, is_elected).term().unwrap();
    wait_for("the new leader's metrics", SOON, || {
        let text = get(&addrs[1], "/metrics")?.1;
        (sample(&text, "zkrun_is_leader")? == 1.0 && sample(&text, "zkrun_term")? == new_term as f64)
            .then_some(())
    });

    // A reload: the old plugin hears on-demoted(reloading), timed like the
    // other hooks, and the metrics name the digest the reloaded event names.
    p[1].signal(libc::SIGHUP);
    let reloaded = p[1].wait_event("reloaded", SOON, |e| e.kind() == "reloaded");
    let info = format!("zkrun_plugin_info{{name=\"heartbeat\",sha256=\"{}\"}}", reloaded.str("sha256"));
    let text = get(&addrs[1], "/metrics").unwrap().1;
    assert_eq!(sample(&text, &info), Some(1.0), "{text}");
    let on_demoted = sample(&text, "zkrun_hook_duration_seconds_count{hook=\"on-demoted\"}");
    assert!(on_demoted.is_some_and(|n| n >= 1.0), "{text}");
}

#[test]
fn a_metrics_address_in_use_is_a_start_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let unreachable = format!("127.0.0.1:{}", free_ports(1)[0]);
    let heartbeat = paths::plugin("heartbeat");
    let out = run_to_end(
        &[
            "--plugin",
            heartbeat.to_str().unwrap(),
            "--zk",
            &unreachable,
            "--metrics",
            &addr,
            "--log-format",
            "json",
        ],
        SOON,
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot serve metrics"));
}

fn status(zk: &str, election: &str) -> (Option<i32>, serde_json::Value) {
    let out = run_to_end(&["status", "--zk", zk, "--election", election, "--json"], SOON);
    let json = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("status JSON: {}", String::from_utf8_lossy(&out.stderr)));
    (out.status.code(), json)
}

#[test]
fn status_shows_the_lease_and_the_plugin_and_exits_by_leadership() {
    let ensemble = Ensemble::start();
    let zk = ensemble.connect_string();
    let election = "/zkrun/ops/status";
    let args = participant_args(&zk, election, &paths::plugin("heartbeat"), "200ms", "10s", &[] as &[&str]);
    let mut leader = Process::zkrun("s0", &args);
    let term = leader.wait_event("elected", SOON, is_elected).term().unwrap();
    let sha256 = leader.wait_event("starting", SOON, |e| e.kind() == "starting").str("sha256").to_string();
    let follower = Process::zkrun("s1", &args);
    follower.wait_event("joined", SOON, |e| e.kind() == "joined");

    let (code, json) = status(&zk, election);
    assert_eq!(code, Some(0), "{json:#}");
    let members = json["participants"].as_array().unwrap();
    assert_eq!(members.len(), 2, "{json:#}");
    let first = &members[0];
    assert_eq!(
        (first["id"].as_str(), first["role"].as_str(), first["kind"].as_str()),
        (Some("s0"), Some("leader"), Some("zkrun"))
    );
    assert_eq!(first["term"].as_u64(), Some(term));
    assert_eq!(first["plugin"], "heartbeat");
    assert_eq!(first["sha256"].as_str(), Some(sha256.as_str()));
    assert!(first["version"].as_str().is_some_and(|v| !v.is_empty()), "{json:#}");
    let lease = &first["lease"];
    assert_eq!(lease["state"], "fresh", "{json:#}");
    // A 10 s session: a 6.67 s deadline, renewed every 1.67 s.
    assert_eq!(lease["deadline_ms"].as_u64(), Some(6666), "{json:#}");
    let age = lease["renewed_ms_ago"].as_u64().unwrap();
    assert!(age <= 6666, "{json:#}");
    assert_eq!(lease["deadline_in_ms"].as_i64(), Some(6666 - age as i64));
    assert!(members[1]["lease"].is_null() && members[1]["role"] == "follower", "{json:#}");
    assert_eq!(members[1]["sha256"].as_str(), Some(sha256.as_str()));
    let table = run_to_end(&["status", "--zk", &zk, "--election", election], SOON);
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(text.contains(&format!("s0 leads with term {term}, lease fresh: renewed")), "{text}");
    assert!(text.contains(&sha256[..12]), "{text}");

    // Nobody leads: no leader, exit 1.
    let mut follower = follower;
    follower.signal(libc::SIGTERM);
    follower.wait_exit(SOON).expect("the follower exits");
    leader.signal(libc::SIGTERM);
    leader.wait_exit(SOON).expect("the leader exits");
    let (code, json) = status(&zk, election);
    assert_eq!(code, Some(1), "{json:#}");
    assert!(json["participants"].as_array().unwrap().is_empty(), "{json:#}");
    let (code, json) = status(&zk, "/zkrun/ops/nobody");
    assert_eq!((code, json["exists"].as_bool()), (Some(1), Some(false)));

    // A frozen leader: its lease lapses while its node lives on; then its
    // session expires. Either way, nobody leads with a fresh lease.
    let frozen = Process::zkrun("s2", &args);
    frozen.wait_event("elected", SOON, is_elected);
    frozen.signal(libc::SIGSTOP);
    frozen.wait_stopped();
    // This host's clock 3 s behind the ensemble's makes the frozen leader's
    // last renewal look recent (2.5 s ago reads as 0.5 s ahead, inside the
    // slack for clocks): status must not call it fresh (issue 22).
    std::thread::sleep(Duration::from_millis(2500));
    let behind = Command::new("faketime")
        .args(["-f", "-3s"])
        .arg(paths::zkrun_binary())
        .args(["status", "--zk", &zk, "--election", election, "--json"])
        .env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
        .output()
        .expect("run zkrun status under faketime (scripts/setup.sh installs it)");
    let json: serde_json::Value = serde_json::from_slice(&behind.stdout)
        .unwrap_or_else(|_| panic!("status JSON: {}", String::from_utf8_lossy(&behind.stderr)));
    assert_eq!(behind.status.code(), Some(1), "{json:#}");
    assert_eq!(json["participants"][0]["lease"]["state"], "lapsed", "{json:#}");
    assert_eq!(json["participants"][0]["lease"]["observed"], true, "{json:#}");
    let (code, json) = wait_for("the frozen leader's lease to lapse", SOON, || {
        let (code, json) = status(&zk, election);
        (code != Some(0)).then_some((code, json))
    });
    assert_eq!(code, Some(1), "{json:#}");
    let first = &json["participants"][0];
    assert!(first.is_null() || first["lease"]["state"] != "fresh", "{json:#}");

    // Unreachable: exit 4, with the socket's reason.
    let closed = format!("127.0.0.1:{}", free_ports(1)[0]);
    let out = run_to_end(&["status", "--zk", &closed, "--timeout", "3s"], SOON);
    assert_eq!(out.status.code(), Some(4));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.to_lowercase().contains("refused"), "{err}");
}

#[test]
fn duplicate_ids_are_warned_and_text_logs_to_a_pipe_have_no_colour() {
    let ensemble = Ensemble::start();
    let zk = ensemble.connect_string();
    let args =
        participant_args(&zk, "/zkrun/ops/twins", &paths::plugin("heartbeat"), "200ms", "4s", &[] as &[&str]);
    let first = Process::zkrun("twin", &args);
    first.wait_event("joined", SOON, |e| e.kind() == "joined");
    let second = Process::zkrun("twin", &args);
    let warning = second.wait_event("duplicate_id", SOON, |e| e.kind() == "duplicate_id");
    assert_eq!(warning.json["other_pid"].as_i64(), Some(first.pid() as i64), "{}", warning.raw);
    assert_eq!(warning.str("level"), "WARN");

    // Text logs to a pipe: no ANSI colour codes. Nor with NO_COLOR.
    for no_color in [None, Some("1")] {
        let mut command = Command::new(paths::zkrun_binary());
        command.args(["run", "--id", "plain"]).args(&args);
        if let Some(v) = no_color {
            command.env("NO_COLOR", v);
        }
        let plain = Process::spawn("plain", command);
        let line = plain.wait_event("a text log line", SOON, |e| e.raw.contains("joined the election"));
        assert!(!plain.dump().contains('\u{1b}'), "colour in a pipe: {:?}", line.raw);
    }

    // An unreachable ensemble: the socket error, not only "no hosts".
    let closed = format!("127.0.0.1:{}", free_ports(1)[0]);
    let heartbeat = paths::plugin("heartbeat");
    let out = run_to_end(
        &[
            "--plugin",
            heartbeat.to_str().unwrap(),
            "--zk",
            &closed,
            "--connect-timeout",
            "2s",
            "--log-format",
            "json",
        ],
        SOON,
    );
    assert_eq!(out.status.code(), Some(4));
    let err = String::from_utf8_lossy(&out.stderr);
    let warning =
        err.lines().find(|l| l.contains("\"event\":\"zk_unreachable\"")).expect("a connect warning");
    let warning: serde_json::Value = serde_json::from_str(warning).unwrap();
    assert!(
        warning["cause"]
            .as_str()
            .is_some_and(|c| c.contains(&closed) && c.to_lowercase().contains("refused")),
        "{warning}"
    );
}

/// A Curator `LeaderLatch` participant (the benchmark peer, built by
/// `benches/peers/build-curator.sh`) of `election`.
fn curator(ensemble: &Ensemble, election: &str, id: &str) -> Process {
    let mut command = Command::new(paths::root().join("benches/peers/curator-participant.sh"));
    command.args(["--zk", &ensemble.connect_string(), "--election", election, "--id", id]);
    command.args(["--session-timeout-ms", "4000", "--tick-ms", "200"]);
    Process::spawn(id, command)
}

fn mono(e: &Event) -> u64 {
    e.mono_ns().unwrap_or_else(|| panic!("no mono_ns in {}", e.raw))
}

#[test]
fn curator_and_zkrun_share_an_election_and_hand_over_both_ways() {
    const JVM: Duration = Duration::from_secs(90);
    let ensemble = Ensemble::start();
    let zk = ensemble.connect_string();
    let election = "/zkrun/ops/curator";
    let mut first = curator(&ensemble, election, "curator-1");
    first.wait_event("the Curator peer elected", JVM, |e| e.kind() == "elected");
    let args = participant_args(&zk, election, &paths::plugin("heartbeat"), "200ms", "4s", &[] as &[&str]);
    let mut zkrun = Process::zkrun("z1", &args);
    zkrun.wait_event("joined", SOON, |e| e.kind() == "joined");

    // status tells the recipes apart; a Curator leader has no lease.
    let (code, json) = status(&zk, election);
    assert_eq!(code, Some(0), "{json:#}");
    let members = json["participants"].as_array().unwrap();
    assert_eq!(members.len(), 2, "{json:#}");
    assert_eq!(
        (members[0]["kind"].as_str(), members[0]["role"].as_str()),
        (Some("curator-leader-latch"), Some("leader"))
    );
    assert!(
        members[0]["term"].is_null() && members[0]["pid"].is_null() && members[0]["lease"].is_null(),
        "{json:#}"
    );
    assert_eq!((members[1]["kind"].as_str(), members[1]["id"].as_str()), (Some("zkrun"), Some("z1")));

    // Curator to zkrun: the Curator job stops before zkrun's starts.
    let since = zkrun.log().len();
    first.signal(libc::SIGTERM);
    let stopped = first.wait_event("the Curator peer's job stopped", JVM, |e| e.kind() == "demoted");
    let elected = zkrun.wait_event_from(since, "elected", SOON, is_elected);
    assert!(mono(&stopped) < mono(&elected), "zkrun led before Curator stopped:\n{}", first.dump());
    first.wait_exit(JVM).expect("the Curator peer exits");

    // zkrun to Curator: the Curator follower behind zkrun's node (and its
    // lease node, which it must not take for a participant) leads next.
    let second = curator(&ensemble, election, "curator-2");
    second.wait_event("the Curator peer joined", JVM, |e| e.kind() == "joined");
    let (code, json) = status(&zk, election);
    assert_eq!(code, Some(0), "{json:#}");
    assert_eq!(json["participants"][0]["lease"]["state"], "fresh", "{json:#}");
    assert_eq!(json["participants"][1]["kind"], "curator-leader-latch", "{json:#}");
    assert!(!second.events().iter().any(|e| e.kind() == "elected"), "{}", second.dump());
    zkrun.signal(libc::SIGTERM);
    // On shutdown, on-demoted runs before the node is deleted.
    let demoted = zkrun
        .wait_event("on-demoted", SOON, |e| e.kind() == "plugin_log" && e.message().starts_with("demoted:"));
    let elected = second.wait_event("the Curator peer elected", JVM, |e| e.kind() == "elected");
    assert!(mono(&demoted) < mono(&elected), "Curator led before zkrun stopped:\n{}", zkrun.dump());
    zkrun.wait_exit(SOON).expect("zkrun exits");
}

#[test]
fn status_watch_prints_again_when_the_lead_moves() {
    let ensemble = Ensemble::start();
    let zk = ensemble.connect_string();
    let election = "/zkrun/ops/watch";
    let args = participant_args(&zk, election, &paths::plugin("heartbeat"), "200ms", "4s", &[] as &[&str]);
    let mut first = Process::zkrun("w0", &args);
    first.wait_event("elected", SOON, is_elected);
    let second = Process::zkrun("w1", &args);
    second.wait_event("joined", SOON, |e| e.kind() == "joined");
    let mut command = Command::new(paths::zkrun_binary());
    command.args(["status", "--watch", "--zk", &zk, "--election", election]);
    let watch = Process::spawn("watch", command);
    watch.wait_event("the first table", SOON, |e| e.raw.contains("2 participant(s), w0 leads"));
    first.signal(libc::SIGTERM);
    first.wait_exit(SOON).expect("the leader exits");
    watch.wait_event("a table with the new leader", SOON, |e| e.raw.contains("1 participant(s), w1 leads"));
}

#[test]
fn systemd_hears_ready_status_watchdog_and_stopping() {
    use std::os::unix::net::UnixDatagram;
    let ensemble = Ensemble::start();
    let dir = zkrun_tests::TempDir::new("notify");
    let socket_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket.set_read_timeout(Some(SOON)).unwrap();
    let args = participant_args(
        &ensemble.connect_string(),
        "/zkrun/ops/notify",
        &paths::plugin("heartbeat"),
        "200ms",
        "4s",
        &[] as &[&str],
    );
    // systemd names the watched process in WATCHDOG_PID: the shell's pid,
    // which zkrun keeps through exec.
    let mut command = Command::new("sh");
    command.arg("-c").arg("WATCHDOG_PID=$$ exec \"$@\"").arg("sh").arg(paths::zkrun_binary());
    command.args(["run", "--log-format", "json", "--id", "unit"]).args(&args);
    command.env("NOTIFY_SOCKET", &socket_path).env("WATCHDOG_USEC", "30000000");
    let mut p = Process::spawn("unit", command);
    let term = p.wait_event("elected", SOON, is_elected).term().unwrap();
    let mut seen: Vec<String> = Vec::new();
    let mut buf = [0u8; 4096];
    let want = |seen: &[String], what: &str| seen.iter().any(|m| m.lines().any(|l| l == what));
    let leading = format!("STATUS=leading term {term}");
    while !(want(&seen, "READY=1") && want(&seen, &leading) && want(&seen, "WATCHDOG=1")) {
        let n = socket.recv(&mut buf).unwrap_or_else(|e| panic!("{e}: got only {seen:?}"));
        seen.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    // READY=1 comes once, after joining, never before.
    let ready = seen.iter().position(|m| m.trim() == "READY=1").unwrap();
    assert_eq!(seen.iter().filter(|m| m.trim() == "READY=1").count(), 1, "{seen:?}");
    assert!(!seen[..ready].iter().any(|m| m.starts_with("STATUS=leading")), "{seen:?}");
    p.signal(libc::SIGTERM);
    while !want(&seen, "STOPPING=1") {
        let n = socket.recv(&mut buf).unwrap_or_else(|e| panic!("{e}: got only {seen:?}"));
        seen.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    assert_eq!(p.wait_exit(SOON).and_then(|s| s.code()), Some(0));
}
