//! Containment of what a plugin makes zkrun print, elect and write on its
//! behalf: hook errors and resign reasons through the one door, resigns
//! that back off like failures, state rates that belong to the election,
//! node data and file names escaped for operators, and a trap told with
//! the guest's own last words. Hostile plugins against the real `zkrun`
//! binary and a real ensemble.

use std::ffi::OsString;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use zkrun_tests::ensemble::free_ports;
use zkrun_tests::process::{participant_args, run_to_end};
use zkrun_tests::{Ensemble, EnsembleOptions, Event, Process, TempDir, paths, wait_for};
use zookeeper_client as zk;

const SOON: Duration = Duration::from_secs(30);
const KIB: usize = 1024;

fn one_server() -> Ensemble {
    Ensemble::start_with(EnsembleOptions { servers: 1, ..EnsembleOptions::default() })
}

/// `zkrun run` in the given log format, running `plugin` with `extra`.
fn zkrun(
    ensemble: &Ensemble,
    format: &str,
    election: &str,
    id: &str,
    plugin: &Path,
    extra: &[&str],
) -> Process {
    let args = participant_args(&ensemble.connect_string(), election, plugin, "200ms", "4s", extra);
    let mut command = Command::new(paths::zkrun_binary());
    command.args(["run", "--log-format", format, "--id", id]).args(&args);
    Process::spawn(id, command)
}

/// Lines that mention `word` (raw, whatever the format).
fn lines_with(p: &Process, word: &str) -> usize {
    p.events().iter().filter(|e| e.raw.contains(word)).count()
}

#[test]
fn a_giant_hook_error_or_resign_reason_is_cut_escaped_and_charged() {
    let ensemble = one_server();
    let flood = paths::plugin("flood");
    let mut runs = Vec::new();
    for format in ["json", "text"] {
        for (mode, word) in [("err-giant", "plugin_failed"), ("resign-giant", "resigning")] {
            let election = format!("/zkrun/containment/text-{format}-{mode}");
            let config = format!("flood={mode}");
            let id = format!("{format}-{mode}");
            let p = zkrun(&ensemble, format, &election, &id, &flood, &["--plugin-config", &config]);
            runs.push((p, format, mode, word, Instant::now()));
        }
    }
    for (p, format, mode, word, started) in &runs {
        // Each failure or resign backs off: three take a few seconds.
        wait_for(&format!("{format}/{mode}: three {word} lines"), Duration::from_secs(60), || {
            (lines_with(p, word) >= 3).then_some(())
        });
        let lines = p.events();
        let bytes: usize = lines.iter().map(|e| e.raw.len() + 1).sum();
        let longest = lines.iter().map(|e| e.raw.len()).max().unwrap_or(0);
        let seconds = started.elapsed().as_secs_f64();
        eprintln!("{format}/{mode}: {bytes} bytes of log in {seconds:.1} s, longest line {longest} bytes");
        assert!(longest < 64 * KIB, "{format}/{mode}: a line of {longest} bytes");
        // The output budget (256 KiB/s by default) holds, with room for
        // zkrun's own lines; unbounded, this was 20 MB a line.
        assert!(
            bytes < 256 * KIB * (seconds as usize + 2),
            "{format}/{mode}: {bytes} bytes in {seconds:.1} s"
        );
        for line in &lines {
            let raw = &line.raw;
            assert!(
                !raw.contains('\u{1b}') && !raw.contains('\u{7}'),
                "{format}/{mode}: a raw control: {raw:.200}"
            );
            // The forged line only ever appears inside the escaped text.
            if raw.contains("victim") {
                assert!(raw.contains("boom\\"), "{format}/{mode}: a forged line: {raw:.200}");
            }
        }
        let told =
            lines.iter().find(|e| e.raw.contains(word) && e.raw.contains("boom")).expect("the text told");
        assert!(told.raw.contains("[truncated "), "{format}/{mode}: {:.300}", told.raw);
    }
}

#[test]
fn a_plugin_that_resigns_in_every_term_makes_few_terms_a_minute() {
    let ensemble = one_server();
    let p = zkrun(
        &ensemble,
        "json",
        "/zkrun/containment/resign-churn",
        "churner",
        &paths::plugin("flood"),
        &["--plugin-config", "flood=resign-elected"],
    );
    let first = p.wait_event("elected", SOON, |e| e.kind() == "elected");
    let window = Duration::from_secs(30);
    std::thread::sleep(window);
    let from = first.mono_ns().unwrap();
    let to = from + window.as_nanos() as u64;
    let terms =
        p.events().iter().filter(|e| e.kind() == "elected" && e.mono_ns().is_some_and(|t| t <= to)).count();
    let resigns = p.events().iter().filter(|e| e.kind() == "resigning").count();
    eprintln!("resigning in every on-elected: {terms} terms in {window:?} ({resigns} resigns)");
    assert!(resigns >= 2, "it did resign: {}", p.dump());
    // The backoff's floors (0.5, 1, 2, 4, 8, 16 s) allow 6 terms in 30 s;
    // without it this was 63 terms a second.
    assert!(terms <= 7, "{terms} terms in {window:?}");
}

/// Writes and bytes that reached each state node of `election`: a node at
/// version v was written v + 1 times, each time with its current size.
async fn state_written(connect: &str, election: &str) -> (u64, u64) {
    let client = zk::Client::connect(connect).await.expect("connect to the ensemble");
    let dir = format!("{election}/state");
    let keys = client.list_children(&dir).await.unwrap_or_default();
    let (mut writes, mut bytes) = (0u64, 0u64);
    for key in keys {
        let stat = client.check_stat(&format!("{dir}/{key}")).await.unwrap().expect("the node exists");
        writes += stat.version as u64 + 1;
        bytes += (stat.version as u64 + 1) * stat.data_length as u64;
    }
    (writes, bytes)
}

#[test]
fn resign_churn_writes_no_faster_than_the_elections_state_rates() {
    let ensemble = Ensemble::start();
    let election = "/zkrun/containment/state-churn";
    let mut p = zkrun(
        &ensemble,
        "json",
        election,
        "churner",
        &paths::plugin("flood"),
        &[
            "--plugin-config",
            "flood=churn",
            "--state-max-writes",
            "20",
            "--state-max-bytes-per-second",
            "256KiB",
        ],
    );
    let first = p.wait_event("elected", SOON, |e| e.kind() == "elected");
    // Terms come and go (each writes 100 × 64 KiB, then resigns).
    wait_for("four terms", Duration::from_secs(60), || {
        (p.events().iter().filter(|e| e.kind() == "resigning").count() >= 4).then_some(())
    });
    p.signal(libc::SIGTERM);
    assert_eq!(p.wait_exit(SOON).and_then(|s| s.code()), Some(0), "{}", p.dump());
    let seconds = (zkrun_tests::monotonic_ns() - first.mono_ns().unwrap()) as f64 / 1e9;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let (writes, bytes) = runtime.block_on(state_written(&ensemble.connect_string(), election));
    eprintln!("resign churn: {writes} writes, {} KiB reached ZooKeeper in {seconds:.1} s", bytes / 1024);
    assert!(writes > 0, "nothing was written: {}", p.dump());
    // One second's burst, then the rates, across every term.
    let max_bytes = 256.0 * KIB as f64 * (seconds + 1.0);
    let max_writes = 20.0 * (seconds + 1.0);
    assert!((bytes as f64) <= max_bytes, "{bytes} bytes in {seconds:.1} s, over {max_bytes}");
    assert!((writes as f64) <= max_writes, "{writes} writes in {seconds:.1} s, over {max_writes}");
    // Later terms were refused by the rate the earlier ones used.
    let refused = p
        .events()
        .iter()
        .filter(|e| e.kind() == "plugin_log" && e.message().contains("quota exceeded"))
        .count();
    assert!(refused >= 1, "{}", p.dump());
}

/// `GET /metrics` on `addr`: the body's bytes.
fn scrape(addr: &str) -> Option<Vec<u8>> {
    let mut stream = TcpStream::connect(addr).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(stream, "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").ok()?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).ok()?;
    let at = response.windows(4).position(|w| w == b"\r\n\r\n")?;
    Some(response[at + 4..].to_vec())
}

/// Whether `bytes` hold a control character other than a newline.
fn has_controls(bytes: &[u8]) -> bool {
    String::from_utf8_lossy(bytes).chars().any(|c| c.is_control() && c != '\n')
}

#[test]
fn a_plugin_file_name_cannot_forge_a_metric() {
    let ensemble = one_server();
    let dir = TempDir::new("forged-name");
    let plugin = dir.path().join("evil\"} 1\nzkrun_is_leader{forged=\"1\u{1b}.wasm");
    std::fs::copy(paths::plugin("heartbeat"), &plugin).unwrap();
    let addr = format!("127.0.0.1:{}", free_ports(1)[0]);
    let args = participant_args(
        &ensemble.connect_string(),
        "/zkrun/containment/metrics-name",
        &plugin,
        "200ms",
        "4s",
        &["--metrics", addr.as_str()],
    );
    let p = Process::zkrun("named", &args);
    p.wait_event("elected", SOON, |e| e.kind() == "elected");
    let body = wait_for("metrics", SOON, || scrape(&addr));
    assert!(!has_controls(&body), "{}", String::from_utf8_lossy(&body));
    let text = String::from_utf8(body).unwrap();
    assert!(!text.lines().any(|l| l.starts_with("zkrun_is_leader{")), "{text}");
    let info = text.lines().find(|l| l.starts_with("zkrun_plugin_info{")).expect("plugin_info");
    assert!(info.contains(r#"name="evil\"} 1\\nzkrun_is_leader{forged=\"1\\u{1b}""#), "{info}");
    // The log names it the same way, escaped.
    let elected = p.events().into_iter().find(|e| e.kind() == "elected").unwrap();
    assert_eq!(elected.str("plugin"), "evil\"} 1\\nzkrun_is_leader{forged=\"1\\u{1b}");
}

#[test]
fn status_and_watch_escape_node_data_from_other_clients() {
    let ensemble = one_server();
    let zk = ensemble.connect_string();
    let election = "/zkrun/containment/status-forged";
    let forged = b"evil\x1b[2K\r  0  leader    zkrun  victim\x07\nsecond row";
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    // Another client joins as a Curator latch would, with hostile data.
    let client = runtime.block_on(async {
        let client = zk::Client::connect(&zk).await.expect("connect");
        let persistent = zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all());
        let mut path = String::new();
        for part in election.trim_start_matches('/').split('/') {
            path.push('/');
            path.push_str(part);
            let _ = client.create(&path, b"", &persistent).await;
        }
        let ephemeral = zk::CreateMode::EphemeralSequential.with_acls(zk::Acls::anyone_all());
        let latch = format!("{election}/_c_0f0e0d0c-0b0a-0908-0706-050403020100-latch-");
        client.create(&latch, forged, &ephemeral).await.expect("create the latch node");
        client
    });
    let out = run_to_end(&["status", "--zk", &zk, "--election", election], SOON);
    let stdout = out.stdout.clone();
    assert!(!has_controls(&stdout), "{:?}", String::from_utf8_lossy(&stdout));
    let text = String::from_utf8(stdout).unwrap();
    // The heading, the column names, one row: nothing forged.
    assert_eq!(text.lines().count(), 3, "{text}");
    assert!(text.contains("evil\\u{1b}[2K\\r"), "{text}");

    // --watch prints the same table, escaped the same way.
    let args: Vec<OsString> =
        ["status", "--zk", &zk, "--election", election, "--watch"].iter().map(OsString::from).collect();
    let mut command = Command::new(paths::zkrun_binary());
    command.args(&args);
    let mut watch = Process::spawn("watch", command);
    wait_for("the watched table", SOON, || (watch.events().len() >= 3).then_some(()));
    std::thread::sleep(Duration::from_millis(1500));
    watch.kill();
    let lines = watch.events();
    assert!(lines.iter().all(|e| !has_controls(e.raw.as_bytes())), "{lines:?}");
    assert!(lines.iter().all(|e: &Event| !e.raw.starts_with("second row")), "{lines:?}");
    drop(client);
}

#[test]
fn plugin_failed_carries_the_guests_own_panic_message() {
    let ensemble = one_server();
    let p =
        zkrun(&ensemble, "json", "/zkrun/containment/last-words", "panicky", &paths::plugin("panic"), &[]);
    let failed =
        p.wait_event("plugin_failed", SOON, |e| e.kind() == "plugin_failed" && e.str("kind") == "trap");
    let error = failed.str("error");
    assert!(error.contains("refusing term") && error.contains("on purpose"), "{error}");
    assert!(error.contains("panicked at"), "{error}");
    assert!(!error.contains('\n'), "{error}");
}
