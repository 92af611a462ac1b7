//! Containment end to end: hostile plugins against the real `zkrun` binary
//! and a real ensemble. Each test states the limit from the hostile side:
//! the guest waits in a host call, floods what the host keeps for it, or
//! makes the host compile or allocate without end.

use std::path::Path;
use std::time::Duration;

use zkrun_tests::process::{participant_args, run_to_end};
use zkrun_tests::{Ensemble, EnsembleOptions, Event, Process, TempDir, hostile, paths};

const SOON: Duration = Duration::from_secs(30);

fn participant(ensemble: &Ensemble, election: &str, id: &str, plugin: &Path, extra: &[&str]) -> Process {
    let args = participant_args(&ensemble.connect_string(), election, plugin, "200ms", "4s", extra);
    let p = Process::zkrun(id, &args);
    p.wait_event("joined", SOON, |e| e.kind() == "joined");
    p
}

fn one_server() -> Ensemble {
    Ensemble::start_with(EnsembleOptions { servers: 1, ..EnsembleOptions::default() })
}

fn kind(kind: &'static str) -> impl Fn(&Event) -> bool {
    move |e| e.kind() == kind
}

fn plugin_says(text: &'static str) -> impl Fn(&Event) -> bool {
    move |e| e.kind() == "plugin_log" && e.message().contains(text)
}

/// Peak resident memory of a running process, from /proc.
fn peak_rss(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmHWM");
    kib * 1024
}

const MIB: u64 = 1 << 20;

#[test]
fn a_leader_blocked_in_a_host_call_gives_up_the_lead() {
    let ensemble = Ensemble::start();
    let election = "/zkrun/containment/blocked";
    let sleeper = paths::plugin("sleeper");
    let blocked = participant(&ensemble, election, "blocked", &sleeper, &["--hook-timeout", "1s"]);
    blocked.wait_event("elected", SOON, kind("elected"));
    let follower = participant(&ensemble, election, "follower", &paths::plugin("heartbeat"), &[]);
    blocked.wait_event("the tick blocking", SOON, plugin_says("blocking in tick"));
    let failed = blocked
        .wait_event("plugin_failed", SOON, |e| e.kind() == "plugin_failed" && e.str("kind") == "timeout");
    let elected = follower.wait_event("the follower elected", SOON, kind("elected"));
    // The blocked leader gave up first; the follower led after.
    assert!(failed.mono_ns() < elected.mono_ns(), "{failed:?} / {elected:?}");
    follower.wait_event("the follower ticking", SOON, Event::is_heartbeat_tick);
}

#[test]
fn one_sigterm_ends_a_host_whose_hook_is_blocked() {
    let ensemble = Ensemble::start();
    let sleeper = paths::plugin("sleeper");
    // Blocked in tick, an hour from its deadline: only shutdown can end it.
    for (hook, timeout) in [("tick", "1h"), ("on-elected", "1h"), ("on-demoted", "2s")] {
        let election = format!("/zkrun/containment/sigterm-{hook}");
        let config = format!("sleep-in={hook}");
        let mut blocked = participant(
            &ensemble,
            &election,
            hook,
            &sleeper,
            &["--hook-timeout", timeout, "--plugin-config", &config],
        );
        blocked.wait_event("elected", SOON, kind("elected"));
        let follower = participant(&ensemble, &election, "follower", &paths::plugin("heartbeat"), &[]);
        if hook != "on-demoted" {
            blocked.wait_event("the hook blocking", SOON, plugin_says("blocking in"));
        } else {
            blocked.wait_event("a tick", SOON, plugin_says("tick under term"));
        }
        blocked.signal(libc::SIGTERM);
        // Far less than the hour-long deadline; on-demoted may take its 2 s.
        let status = blocked.wait_exit(SOON).unwrap_or_else(|| panic!("{hook}: no exit\n{}", blocked.dump()));
        assert_eq!(status.code(), Some(0), "{hook}: {}", blocked.dump());
        let shutdown = blocked.wait_event("shutdown", SOON, kind("shutdown"));
        blocked.wait_event("stopped", SOON, kind("stopped"));
        let elected = follower.wait_event("the follower elected", SOON, kind("elected"));
        assert!(shutdown.mono_ns() < elected.mono_ns(), "{hook}");
    }
}

/// Runs `zkrun <args>` to the end and returns (exit code, stderr, peak RSS).
#[allow(clippy::zombie_processes, reason = "reaped by wait4, which also reports its peak RSS")]
fn run_measured(args: &[&str]) -> (Option<i32>, String, u64) {
    use std::process::{Command, Stdio};
    let mut command = Command::new(paths::zkrun_binary());
    command.args(args).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
    let mut child = command.spawn().expect("start zkrun");
    let mut stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut stderr, &mut text).unwrap();
        text
    });
    let mut status = 0;
    // SAFETY: an empty rusage for wait4 to fill; the pid is our child's.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
    let code = libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status));
    (code, reader.join().unwrap(), usage.ru_maxrss as u64 * 1024)
}

#[test]
fn check_bounds_start_code_compiling_size_and_tables() {
    let dir = TempDir::new("check-hostile");
    let one_line = |stderr: &str| {
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    };

    let blocking = hostile::blocking_start(dir.path());
    let out =
        run_to_end(&["check".as_ref(), "--hook-timeout".as_ref(), "1s".as_ref(), blocking.as_os_str()], SOON);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    one_line(&stderr);
    assert!(stderr.contains("instantiation timed out"), "{stderr}");

    let slow = hostile::slow_to_compile(dir.path(), 700);
    let out =
        run_to_end(&["check".as_ref(), "--compile-timeout".as_ref(), "2s".as_ref(), slow.as_os_str()], SOON);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    one_line(&stderr);
    assert!(stderr.contains("did not compile within the 2s compile time limit"), "{stderr}");

    // Refused before it is read, let alone compiled.
    let big = dir.path().join("big.wasm");
    let mut bytes = std::fs::read(paths::plugin("heartbeat")).unwrap();
    bytes.resize(2 << 20, 0);
    std::fs::write(&big, bytes).unwrap();
    let out = run_to_end(
        &["check".as_ref(), "--max-component-size".as_ref(), "1MiB".as_ref(), big.as_os_str()],
        SOON,
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("larger than the 1048576-byte component size limit"), "{stderr}");

    // 400 M table slots (3 GiB) across 4 instances, at the default cap.
    let hog = hostile::table_hog(dir.path(), 4, 100, 1_000_000);
    let (code, stderr, peak) = run_measured(&["check", hog.to_str().unwrap()]);
    assert_eq!(code, Some(3), "{stderr}");
    one_line(&stderr);
    assert!(stderr.contains("ran out of memory"), "{stderr}");
    eprintln!("check on the table hog: peak RSS {} MiB", peak / MIB);
    assert!(peak < 300 * MIB, "peak RSS {} MiB", peak / MIB);
}

#[test]
fn a_table_hog_in_run_stays_under_the_cap_and_the_host_keeps_serving() {
    let ensemble = one_server();
    let dir = TempDir::new("run-table-hog");
    let hog = hostile::table_hog(dir.path(), 4, 100, 1_000_000);
    let p = participant(&ensemble, "/zkrun/containment/tables", "hog", &hog, &[]);
    let failed = |e: &Event| e.kind() == "plugin_failed" && e.str("kind") == "out-of-memory";
    let first = p.wait_event("a failure", SOON, failed);
    let after = p.log().len();
    // It rejoins after a backoff and fails again: memory stays bounded throughout.
    p.wait_event_from(after, "a second failure", Duration::from_secs(60), failed);
    let peak = peak_rss(p.pid());
    eprintln!("run with the table hog: peak RSS {} MiB", peak / MIB);
    assert!(peak < 300 * MIB, "peak RSS {} MiB; {first:?}", peak / MIB);
}

#[test]
fn a_reload_compiling_for_long_neither_stalls_the_job_nor_a_sigterm() {
    let ensemble = one_server();
    let dir = TempDir::new("slow-reload");
    let plugin = dir.path().join("job.wasm");
    std::fs::copy(paths::plugin("heartbeat"), &plugin).unwrap();
    let mut p = participant(&ensemble, "/zkrun/containment/reload", "reloader", &plugin, &[]);
    p.wait_event("elected", SOON, kind("elected"));
    // Minutes of compiling, from a file of tens of kilobytes.
    let slow = hostile::slow_to_compile(dir.path(), 800);
    std::fs::rename(&slow, &plugin).unwrap();
    p.signal(libc::SIGHUP);
    let reloading = p.wait_event("reloading", SOON, kind("reloading"));
    let start = reloading.mono_ns().unwrap();
    // The old plugin keeps ticking while the new one compiles.
    zkrun_tests::wait_for("ticks during the compile", SOON, || {
        let ticks = p.events().iter().filter(|e| e.is_heartbeat_tick() && e.mono_ns() > Some(start)).count();
        (ticks >= 10).then_some(())
    });
    let compiler = children(p.pid());
    assert!(!compiler.is_empty(), "no compiler child while compiling");
    p.signal(libc::SIGTERM);
    let status = p.wait_exit(SOON).unwrap_or_else(|| panic!("no exit\n{}", p.dump()));
    assert_eq!(status.code(), Some(0), "{}", p.dump());
    assert!(!p.events().iter().any(|e| e.kind() == "reloaded"), "the compile cannot have finished");
    // The compiler died with zkrun.
    zkrun_tests::wait_for("the compiler to go", SOON, || {
        compiler.iter().all(|pid| !Path::new(&format!("/proc/{pid}")).exists()).then_some(())
    });
}

/// The pids of a process's children.
fn children(pid: i32) -> Vec<i32> {
    let mut found = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).into_iter().flatten().flatten() {
        let text = std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
        found.extend(text.split_whitespace().filter_map(|p| p.parse::<i32>().ok()));
    }
    found
}

#[test]
fn a_state_flood_stays_within_its_quota_and_the_ensemble_serves() {
    let ensemble = Ensemble::start();
    let flood = paths::plugin("flood");
    let p = participant(
        &ensemble,
        "/zkrun/containment/state",
        "flooder",
        &flood,
        &["--plugin-config", "flood=state"],
    );
    let elected = p.wait_event("elected", SOON, kind("elected"));
    let term = elected.term();
    // 15 s of 300 × 64 KiB puts per tick (about 100 MB/s asked for).
    std::thread::sleep(Duration::from_secs(15));
    for i in 0..ensemble.size() {
        assert_eq!(ensemble.four_letter(i, "ruok").as_deref(), Some("imok"), "server {i} is down");
        let mntr = ensemble.four_letter(i, "mntr").unwrap_or_default();
        let data: u64 = mntr
            .lines()
            .find_map(|l| l.strip_prefix("zk_approximate_data_size"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no data size in {mntr}"));
        eprintln!("server {i}: approximate data size {} KiB", data / 1024);
        assert!(data < 64 * MIB, "server {i} holds {data} bytes");
    }
    let summaries: Vec<Event> = p.events().into_iter().filter(plugin_says("flood: state")).collect();
    assert!(summaries.len() > 10, "{}", p.dump());
    assert!(
        summaries
            .iter()
            .all(|e| e.message().contains("QuotaExceeded") || e.message().contains("quota exceeded")),
        "{:?}",
        summaries.last()
    );
    // Logged once per term, not per refused write.
    let logged: Vec<Event> = p.events().into_iter().filter(|e| e.kind() == "state_quota_exceeded").collect();
    assert_eq!(logged.len(), 1, "{logged:?}");
    assert_eq!(logged[0].term(), term);
}

#[test]
fn a_giant_log_line_per_tick_keeps_zkrun_small_and_its_lines_short() {
    let ensemble = one_server();
    let flood = paths::plugin("flood");
    let p = participant(
        &ensemble,
        "/zkrun/containment/log",
        "talker",
        &flood,
        &["--plugin-config", "flood=log-giant"],
    );
    p.wait_event("elected", SOON, kind("elected"));
    zkrun_tests::wait_for("ten giant ticks", Duration::from_secs(60), || {
        let n = p
            .events()
            .iter()
            .filter(|e| e.kind() == "plugin_log" && e.message().starts_with("flood: log-giant"))
            .count();
        (n >= 10).then_some(())
    });
    let peak = peak_rss(p.pid());
    eprintln!("a 50 MB log() per tick: peak RSS {} MiB", peak / MIB);
    assert!(peak < 150 * MIB, "peak RSS {} MiB", peak / MIB);
    let longest = p.events().iter().map(|e| e.raw.len()).max().unwrap();
    assert!(longest < 64 * 1024, "a line of {longest} bytes");
    assert!(p.events().iter().any(|e| e.message().ends_with("… [truncated 49991808 bytes]")));
}

#[test]
fn precompiled_code_loads_only_when_trusted() {
    let dir = TempDir::new("precompiled");
    let cwasm = dir.path().join("heartbeat.cwasm");
    let heartbeat = paths::plugin("heartbeat");
    let out =
        run_to_end(&["compile".as_ref(), heartbeat.as_os_str(), "-o".as_ref(), cwasm.as_os_str()], SOON);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));

    let check = |path: &Path, trust: bool| {
        let mut args = vec!["check".as_ref(), path.as_os_str()];
        if trust {
            args.push("--trust-precompiled".as_ref());
        }
        let out = run_to_end(&args, SOON);
        (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let (code, stderr) = check(&cwasm, false);
    assert_eq!(code, Some(3), "{stderr}");
    assert!(stderr.contains("precompiled code") && stderr.contains("--trust-precompiled"), "{stderr}");
    assert_eq!(check(&cwasm, true).0, Some(0));

    // Damaged (or made by another zkrun): refused with a clear line.
    let damaged = dir.path().join("damaged.cwasm");
    let mut bytes = std::fs::read(&cwasm).unwrap();
    bytes.truncate(bytes.len() / 2);
    std::fs::write(&damaged, bytes).unwrap();
    let (code, stderr) = check(&damaged, true);
    assert_eq!(code, Some(3), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("compile it again with this zkrun"), "{stderr}");
}
