//! What the README, `docs/` and `examples/` tell users to run, run as
//! written, and the operator paths around them (issue 26): credentials
//! without a scheme, `check | head`, `status` wording, JSON and exit codes,
//! the metrics format and the alert rules.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::Duration;

use zkrun_tests::ensemble::free_ports;
use zkrun_tests::process::{participant_args, run_to_end};
use zkrun_tests::{Ensemble, Process, paths};

const SOON: Duration = Duration::from_secs(30);

/// Runs a documented tool (`promtool`, `systemd-analyze`) in `dir`; fails
/// the test with the install hint if the tool is missing.
fn tool(program: &str, args: &[&str], dir: &std::path::Path) -> std::process::Output {
    Command::new(program)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e} (scripts/setup.sh installs it)"))
}

#[test]
fn credentials_without_a_scheme_are_a_usage_error_naming_it() {
    let heartbeat = paths::plugin("heartbeat");
    let closed = format!("127.0.0.1:{}", free_ports(1)[0]);
    let out = run_to_end(
        &["--zk-auth", "zkrun:s3cret", "--zk", &closed, "--plugin", heartbeat.to_str().unwrap()],
        SOON,
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("unknown scheme 'zkrun'") && err.contains("digest:zkrun:PASSWORD"), "{err}");
    assert!(!err.contains("s3cret"), "the secret shows: {err}");
    assert_eq!(err.lines().count(), 1, "{err}");
}

#[test]
fn check_into_a_closed_pipe_ends_quietly() {
    // `zkrun check plugin.wasm | head -0`: the reader is gone before zkrun
    // writes its report.
    let mut child = Command::new(paths::zkrun_binary())
        .args(["check", paths::plugin("heartbeat").to_str().unwrap()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let mut err = String::new();
    child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn status_errors_are_json_with_json_and_exit_4_when_unreachable() {
    let closed = format!("127.0.0.1:{}", free_ports(1)[0]);
    let out = run_to_end(&["status", "--json", "--zk", &closed, "--timeout", "2s"], SOON);
    assert_eq!(out.status.code(), Some(4));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)));
    assert_eq!(
        (json["error"].as_str(), json["exit_code"].as_u64()),
        (Some("unreachable"), Some(4)),
        "{json}"
    );
    assert!(json["message"].as_str().unwrap().contains(&closed), "{json}");
}

fn status(args: &[&str]) -> (Option<i32>, String, String) {
    let out = run_to_end(&[&["status"], args].concat(), SOON);
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn status_says_not_authorized_and_lapsed_and_watch_prints_timestamps_at_once() {
    let ensemble = Ensemble::start();
    let zk = ensemble.connect_string();
    let election = "/zkrun/docs/status";
    // Only its own identity may read what this participant creates.
    let extra = ["--zk-auth", "digest:ops:pw", "--zk-acl", "creator:all"];
    let args = participant_args(&zk, election, &paths::plugin("heartbeat"), "200ms", "10s", &extra);
    let mut leader = Process::zkrun("s0", &args);
    let term = leader.wait_event("elected", SOON, |e| e.kind() == "elected").term().unwrap();

    // Without the credentials: not authorized, exit 5, as JSON too.
    let (code, out, err) = status(&["--zk", &zk, "--election", election]);
    assert_eq!(code, Some(5), "{out}{err}");
    let (code, out, _) = status(&["--json", "--zk", &zk, "--election", election]);
    let json: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!((code, json["error"].as_str()), (Some(5), Some("not-authorized")), "{json}");

    let auth = ["--zk", zk.as_str(), "--election", election, "--zk-auth", "digest:ops:pw"];
    let (code, out, err) = status(&auth);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains(&format!("s0 leads with term {term}")), "{out}");

    // --watch says what it watches at once, then stamps every table.
    let mut command = Command::new(paths::zkrun_binary());
    command.arg("status").arg("--watch").args(auth);
    let mut watch = Process::spawn("watch", command);
    watch.wait_event("the first line", SOON, |e| e.raw.starts_with(&format!("watching {election} on ")));
    let table = watch.wait_event("a stamped table", SOON, |e| e.raw.contains("s0 leads with term"));
    let stamp = table.raw.split_whitespace().next().unwrap();
    assert!(stamp.len() == 20 && stamp.ends_with('Z') && stamp.as_bytes()[10] == b'T', "{}", table.raw);
    watch.kill();

    // A leader that dies: its nodes stay until its session expires (10 s),
    // its lease lapses at its deadline (6.7 s after its last renewal).
    // status says lapsed, whether it reads the lease before or after the
    // session expired under it, in text and in JSON.
    leader.kill();
    std::thread::sleep(Duration::from_millis(7500));
    let text = std::thread::scope(|s| {
        let text = s.spawn(|| status(&auth));
        let (code, out, err) = status(&[&auth[..], &["--json"]].concat());
        assert_eq!(code, Some(1), "{out}{err}");
        let json: serde_json::Value = serde_json::from_str(&out).unwrap();
        let first = &json["participants"][0];
        assert_eq!(first["lease"]["state"], "lapsed", "{json:#}");
        text.join().unwrap()
    });
    let (code, out, err) = text;
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(out.contains(&format!("nobody leads: s0's lease of term {term} lapsed")), "{out}");
}

/// `GET /metrics` on `addr` with `accept`: the content type and the body.
fn scrape(addr: &str, accept: Option<&str>) -> (String, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(SOON)).unwrap();
    let accept = accept.map(|a| format!("Accept: {a}\r\n")).unwrap_or_default();
    write!(stream, "GET /metrics HTTP/1.1\r\nHost: {addr}\r\n{accept}Connection: close\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    let content_type = head
        .lines()
        .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-type: ").map(str::to_string))
        .unwrap_or_default();
    (content_type, body.to_string())
}

#[test]
fn metrics_are_prometheus_text_unless_openmetrics_is_asked_for_and_pass_promtool() {
    let ensemble = Ensemble::start();
    let addr = format!("127.0.0.1:{}", free_ports(1)[0]);
    let args = participant_args(
        &ensemble.connect_string(),
        "/zkrun/docs/metrics",
        &paths::plugin("heartbeat"),
        "200ms",
        "4s",
        &["--metrics", &addr, "--lease", "1s"],
    );
    let leader = Process::zkrun("m0", &args);
    leader.wait_event("elected", SOON, |e| e.kind() == "elected");
    let (kind, text) = scrape(&addr, None);
    assert!(kind.starts_with("text/plain; version=0.0.4"), "{kind}");
    assert!(!text.contains("# EOF") && text.contains("# HELP zkrun_leadership_transitions_total "), "{text}");
    assert!(text.lines().any(|l| l == "zkrun_lease_seconds 0.5"), "{text}");
    // What Prometheus sends: OpenMetrics first.
    let (kind, om) = scrape(
        &addr,
        Some("application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"),
    );
    assert!(kind.starts_with("application/openmetrics-text"), "{kind}");
    assert!(om.ends_with("# EOF\n"), "{om}");

    let dir = zkrun_tests::TempDir::new("promtool");
    let mut check = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .current_dir(dir.path())
        .spawn()
        .unwrap_or_else(|e| panic!("promtool: {e} (scripts/setup.sh installs it)"));
    check.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = check.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics:\n{}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_alert_rules_pass_their_promtool_tests_as_documented() {
    // As examples/prometheus-alerts.test.yml says to run it.
    let out = tool("promtool", &["test", "rules", "examples/prometheus-alerts.test.yml"], &paths::root());
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && text.contains("SUCCESS"), "{text}");
    let out = tool("promtool", &["check", "rules", "examples/prometheus-alerts.yml"], &paths::root());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
}

/// POSTs `body` to the receiver at `port` with the fencing headers;
/// `chunked` frames it as Rust's wstd does. Returns the status code.
fn post(port: u16, election: &str, term: u64, body: &str, chunked: bool) -> u16 {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(SOON)).unwrap();
    let framing = if chunked {
        format!("transfer-encoding: chunked\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\n", body.len())
    } else {
        format!("content-length: {}\r\n\r\n{body}", body.len())
    };
    write!(
        stream,
        "POST /hook HTTP/1.1\r\nhost: 127.0.0.1\r\nzkrun-election: {election}\r\nzkrun-term: {term}\r\nconnection: close\r\n{framing}"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0)
}

#[test]
fn the_documented_fencing_receiver_fences_per_election_and_reads_chunked_bodies() {
    let ensemble = Ensemble::start();
    let zk = ensemble.connect_string();
    let port = free_ports(1)[0];
    // As docs/egress.md runs it.
    let mut command = Command::new("python3");
    command.current_dir(paths::root()).args(["examples/fencing-receiver.py", &port.to_string()]);
    let mut receiver = Process::spawn("receiver", command);
    receiver.wait_event("listening", SOON, |e| e.raw.starts_with("listening on"));
    let base = format!("http://127.0.0.1:{port}/");
    let url = format!("url={base}hook");
    let webhook = |id: &str, election: &str| {
        let extra = ["--plugin-config", &url, "--allow-http", &base];
        let p = Process::zkrun(
            id,
            &participant_args(&zk, election, &paths::plugin("webhook"), "200ms", "4s", &extra),
        );
        let term = p.wait_event("elected", SOON, |e| e.kind() == "elected").term().unwrap();
        (p, term)
    };
    // Two jobs share the receiver; the older election has the lower term.
    let (old, new) = ("/zkrun/docs/hook-old", "/zkrun/docs/hook-new");
    let (_old_job, old_term) = webhook("old", old);
    let (_new_job, new_term) = webhook("new", new);
    assert!(old_term < new_term);
    let accepted = |election: &str, term: u64| {
        receiver.events().iter().filter(|e| e.json["election"] == election && e.json["term"] == term).count()
    };
    let from = receiver.log().len();
    zkrun_tests::wait_for("both jobs' requests accepted after both were elected", SOON, || {
        let later = receiver.log().all()[from..].to_vec();
        let count = |election: &str| later.iter().filter(|e| e.json["election"] == election).count();
        (count(old) >= 3 && count(new) >= 3).then_some(())
    });
    assert!(accepted(old, old_term) >= 3 && accepted(new, new_term) >= 3);
    // The plugin's chunked bodies arrive whole: its JSON, with its term.
    for e in receiver.events().iter().filter(|e| e.json["election"] == old) {
        let body: serde_json::Value = serde_json::from_str(e.json["body"].as_str().unwrap())
            .unwrap_or_else(|err| panic!("{err}: {}", e.raw));
        assert_eq!(body["term"].as_u64(), Some(old_term), "{}", e.raw);
    }
    // A deposed leader of either job is refused; sized and chunked bodies
    // are read alike.
    assert_eq!(post(port, old, old_term - 1, "{\"stale\":1}", false), 409);
    assert_eq!(post(port, new, new_term - 1, "{\"stale\":2}", true), 409);
    assert_eq!(post(port, "/zkrun/docs/third", 7, "sized", false), 200);
    assert_eq!(post(port, "/zkrun/docs/third", 7, "chunked body", true), 200);
    zkrun_tests::wait_for("the direct requests' lines", SOON, || {
        (accepted("/zkrun/docs/third", 7) == 2).then_some(())
    });
    let third: Vec<String> = receiver
        .events()
        .iter()
        .filter(|e| e.json["election"] == "/zkrun/docs/third")
        .map(|e| e.json["body"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(third, ["sized", "chunked body"]);
    receiver.kill();
}

/// The `sh` block that follows `<!-- run by tests/suite/docs.rs: NAME -->`
/// in `file` (relative to the repository), unindented, with the
/// placeholder `path/to/zkrun` pointing at this checkout.
fn doc_block(file: &str, name: &str) -> String {
    let text = std::fs::read_to_string(paths::root().join(file)).unwrap();
    let marker = format!("<!-- run by tests/suite/docs.rs: {name} -->");
    let after = text.split_once(&marker).unwrap_or_else(|| panic!("{file}: no {marker}")).1;
    let block = after.split_once("```sh\n").unwrap().1.split_once("```").unwrap().0;
    let root = paths::root();
    block
        .lines()
        .map(|l| l.trim_start().replace("path/to/zkrun", root.to_str().unwrap()))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Runs a documented block with `sh -e` in `dir`.
fn run_block(block: &str, dir: &std::path::Path) {
    let out = Command::new("sh").arg("-ec").arg(block).current_dir(dir).output().unwrap();
    assert!(
        out.status.success(),
        "{block}\nfailed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_rust_template_copied_out_of_the_repository_builds_as_documented() {
    let dir = zkrun_tests::TempDir::new("template");
    run_block(&doc_block("plugins/README.md", "rust_template"), dir.path());
    let crate_dir = dir.path().join("my-job");
    // The rustup route where the target is installed, else Debian's.
    let rustup = Command::new("rustup").args(["target", "list", "--installed"]).output();
    let has_target =
        rustup.is_ok_and(|o| String::from_utf8_lossy(&o.stdout).lines().any(|l| l == "wasm32-wasip2"));
    let build = if has_target { "rust_build_rustup" } else { "rust_build_debian" };
    run_block(&doc_block("plugins/README.md", build), &crate_dir);
    let component = crate_dir.join("target/wasm32-wasip2/release/my_job.wasm");
    let out = run_to_end(&["check".as_ref(), component.as_os_str()], SOON);
    let report = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{report}{}", String::from_utf8_lossy(&out.stderr));
    assert!(report.starts_with("ok: ") && report.contains("zkrun:plugin/host"), "{report}");
}

/// The unit's `ExecStart=` command, with the installed paths of the docs
/// replaced by this build's binary and `config`.
fn unit_exec_start(unit: &str, config: &std::path::Path) -> Vec<String> {
    let line = unit.lines().find_map(|l| l.strip_prefix("ExecStart=")).expect("the unit has an ExecStart");
    line.split_whitespace()
        .map(|word| match word {
            "/usr/local/bin/zkrun" => paths::zkrun_binary().to_str().unwrap().to_string(),
            "/etc/zkrun/%i.toml" => config.to_str().unwrap().to_string(),
            other => other.to_string(),
        })
        .collect()
}

#[test]
fn the_systemd_unit_verifies_and_starts_zkrun_with_credentials_from_load_credential() {
    let unit = std::fs::read_to_string(paths::root().join("examples/zkrun@.service")).unwrap();
    // With its LoadCredential= lines in force, and the binary where this
    // build has it (verify checks that ExecStart is executable).
    let dir = zkrun_tests::TempDir::new("unit");
    let installed = unit
        .replace("/usr/local/bin/zkrun", paths::zkrun_binary().to_str().unwrap())
        .replace("#LoadCredential=", "LoadCredential=");
    std::fs::write(dir.path().join("zkrun@test.service"), &installed).unwrap();
    let out = tool("systemd-analyze", &["verify", "./zkrun@test.service"], dir.path());
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && said.trim().is_empty(), "systemd-analyze verify:\n{said}");
    assert!(unit.lines().any(|l| l == "TimeoutStartSec=infinity"), "no start timeout setting");

    // systemd is not PID 1 here: run the unit's ExecStart as systemd would,
    // with the credential layout LoadCredential= makes (a private,
    // read-only copy of the file in $CREDENTIALS_DIRECTORY).
    let ensemble = Ensemble::start();
    let credentials = dir.path().join("credentials");
    std::fs::create_dir(&credentials).unwrap();
    let auth = credentials.join("zk-auth");
    std::fs::write(&auth, "digest:unit:s3cret\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&auth, std::fs::Permissions::from_mode(0o400)).unwrap();
    let config = dir.path().join("test.toml");
    std::fs::write(
        &config,
        format!(
            "zk = \"{}\"\nelection = \"/zkrun/docs/unit\"\ntick = \"200ms\"\nsession-timeout = \"4s\"\nlog-format = \"json\"\n[plugin]\npath = \"{}\"\n",
            ensemble.connect_string(),
            paths::plugin("heartbeat").display()
        ),
    )
    .unwrap();
    let argv = unit_exec_start(&unit, &config);
    let mut command = Command::new(&argv[0]);
    command.args(&argv[1..]).env("CREDENTIALS_DIRECTORY", &credentials).env_remove("ZKRUN_ZK_AUTH");
    let mut zkrun = Process::spawn("unit", command);
    let starting = zkrun.wait_event("starting", SOON, |e| e.kind() == "starting");
    assert_eq!(starting.str("zk_access"), "auth digest:unit, tls off", "{}", starting.raw);
    zkrun.wait_event("elected", SOON, |e| e.kind() == "elected");
    zkrun.signal(libc::SIGTERM);
    assert_eq!(zkrun.wait_exit(SOON).and_then(|s| s.code()), Some(0));
}

#[test]
fn an_http_grant_a_plugin_cannot_use_is_pointed_out() {
    // heartbeat imports no wasi:http (like a JavaScript build with -d http).
    let heartbeat = paths::plugin("heartbeat");
    let out = run_to_end(&["check".as_ref(), heartbeat.as_os_str()], SOON);
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(report.contains("no outgoing HTTP"), "{report}");
    let out = run_to_end(&["check".as_ref(), paths::plugin("webhook").as_os_str()], SOON);
    assert!(String::from_utf8_lossy(&out.stdout).contains("needs grant: outgoing HTTP"));

    let closed = format!("127.0.0.1:{}", free_ports(1)[0]);
    let args = participant_args(
        &closed,
        "/zkrun/docs/unused",
        &heartbeat,
        "200ms",
        "4s",
        &["--allow-http", "http://127.0.0.1:1/"],
    );
    let mut p = Process::zkrun("unused", &args);
    let warning = p.wait_event("http_grant_unused", SOON, |e| e.kind() == "http_grant_unused");
    assert!(warning.message().contains("-d fetch-event"), "{}", warning.raw);
    p.kill();
}
