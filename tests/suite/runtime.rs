//! The plugin runtime, with real components built from `plugins/`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use zkrun::plugin::{
    DemoteReason, DirGrant, Facts, Grants, Hook, HookFailure, LoadError, Permit, Runtime, RuntimeConfig,
};
use zkrun_tests::TempDir;
use zkrun_tests::capture::capture;
use zkrun_tests::paths::plugin;

fn runtime_with(f: impl FnOnce(&mut RuntimeConfig)) -> Runtime {
    let mut config = RuntimeConfig { participant: "p1".into(), ..RuntimeConfig::default() };
    f(&mut config);
    Runtime::new(config).expect("runtime")
}

fn runtime() -> Runtime {
    runtime_with(|_| {})
}

fn facts(term: u64) -> Facts {
    Facts { term, participant: "p1".into(), election: "/zkrun/e/runtime".into() }
}

fn always() -> Arc<dyn Permit> {
    Arc::new(|| true)
}

/// A permit that always holds and counts how often it was asked: once when
/// a hook starts, then at every epoch tick while wasm runs and at every
/// watchdog tick while the guest waits in a host call.
fn counting() -> (Arc<dyn Permit>, Arc<AtomicUsize>) {
    let (permit, checks, _lease) = leased();
    (permit, checks)
}

/// Like [`counting`], but the permit holds only while the returned lease
/// flag is set: clearing it is leadership lapsing.
fn leased() -> (Arc<dyn Permit>, Arc<AtomicUsize>, Arc<AtomicBool>) {
    let (checks, lease) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicBool::new(true)));
    let (seen, held) = (checks.clone(), lease.clone());
    let permit: Arc<dyn Permit> = Arc::new(move || {
        seen.fetch_add(1, Ordering::SeqCst);
        held.load(Ordering::SeqCst)
    });
    (permit, checks, lease)
}

/// Waits (at most a minute) until the permit was asked `n` times.
async fn wait_until_checked(checks: &AtomicUsize, n: usize) {
    let waited = tokio::time::timeout(Duration::from_secs(60), async {
        while checks.load(Ordering::SeqCst) < n {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    });
    waited.await.expect("the hook started");
}

/// The sleeper plugin, blocking in `hook` by `how` (`sleep` or `poll`).
fn sleeper(hook: &str, how: &str, timeout: Duration) -> (Runtime, zkrun::plugin::Plugin) {
    let runtime = runtime_with(|c| {
        c.hook_timeout = timeout;
        c.config.insert("sleep-in".into(), hook.into());
        c.config.insert("how".into(), how.into());
    });
    let sleeper = runtime.load(&plugin("sleeper")).unwrap();
    (runtime, sleeper)
}

/// Fails the test instead of hanging it when containment is broken.
async fn within_a_minute<T>(what: &str, future: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(60), future).await.unwrap_or_else(|_| panic!("{what} hung"))
}

#[tokio::test(flavor = "current_thread")]
async fn hooks_run_in_order_with_the_right_facts() {
    let (logs, _guard) = capture();
    let runtime = runtime();
    let heartbeat = runtime.load(&plugin("heartbeat")).expect("heartbeat loads");
    let mut instance = runtime.instantiate(&heartbeat, Some(7), None).await.unwrap();
    instance.on_elected(&facts(7), always()).await.unwrap();
    for _ in 0..3 {
        instance.tick(&facts(7), always()).await.unwrap();
    }
    instance.on_demoted(DemoteReason::Resigned).await.unwrap();

    assert_eq!(
        logs.plugin_lines(),
        vec![
            "elected: term 7 id p1 (ticks before this term in this instance: 0)",
            "heartbeat: leading /zkrun/e/runtime with term 7",
            "I am Leader: term 7 id p1 tick 1",
            "I am Leader: term 7 id p1 tick 2",
            "I am Leader: term 7 id p1 tick 3",
            "demoted: resigned after 3 ticks",
        ]
    );
    // Each line is tagged with the plugin, participant, term and stream.
    let events: Vec<_> = logs.events().into_iter().filter(|r| r.get("event") == "plugin_log").collect();
    assert!(events.iter().all(|r| r.get("plugin") == "heartbeat" && r.get("id") == "p1"));
    assert!(events.iter().all(|r| r.get("term") == "7"), "{events:?}");
    assert_eq!(events[1].get("stream"), "stdout", "println! reaches the log as stdout");
    assert_eq!(events[0].get("stream"), "log");
}

#[tokio::test(flavor = "current_thread")]
async fn every_term_gets_a_fresh_instance() {
    let (logs, _guard) = capture();
    let runtime = runtime();
    let heartbeat = runtime.load(&plugin("heartbeat")).unwrap();
    for term in [10, 11] {
        let mut instance = runtime.instantiate(&heartbeat, Some(term), None).await.unwrap();
        instance.on_elected(&facts(term), always()).await.unwrap();
        instance.tick(&facts(term), always()).await.unwrap();
        instance.tick(&facts(term), always()).await.unwrap();
        instance.on_demoted(DemoteReason::Shutdown).await.unwrap();
    }
    let lines = logs.plugin_lines();
    // The instance counter starts at zero again: no memory survives a term.
    let elected: Vec<&String> = lines.iter().filter(|l| l.starts_with("elected")).collect();
    assert_eq!(
        elected,
        vec![
            "elected: term 10 id p1 (ticks before this term in this instance: 0)",
            "elected: term 11 id p1 (ticks before this term in this instance: 0)",
        ]
    );
    assert!(lines.contains(&"I am Leader: term 11 id p1 tick 1".to_string()));
}

/// After a failure the runtime still serves: a fresh instance works.
async fn still_serves(runtime: &Runtime) {
    let heartbeat = runtime.load(&plugin("heartbeat")).unwrap();
    let mut next = runtime.instantiate(&heartbeat, Some(99), None).await.unwrap();
    next.on_elected(&facts(99), always()).await.unwrap();
    next.tick(&facts(99), always()).await.unwrap();
}

#[tokio::test(flavor = "current_thread")]
async fn a_plugin_that_loops_is_stopped_at_its_deadline() {
    let runtime = runtime_with(|c| c.hook_timeout = Duration::from_millis(300));
    let spin = runtime.load(&plugin("spin")).unwrap();
    let mut instance = runtime.instantiate(&spin, Some(1), None).await.unwrap();
    instance.on_elected(&facts(1), always()).await.unwrap();
    let failure = instance.tick(&facts(1), always()).await.unwrap_err();
    assert!(matches!(failure, HookFailure::TimedOut { hook: Hook::Tick, .. }), "{failure}");
    assert!(failure.is_plugin_fault());
    assert!(failure.to_string().contains("300ms"), "{failure}");
    assert!(!instance.is_healthy());
    // The trapped instance is not called again.
    let again = instance.tick(&facts(1), always()).await.unwrap_err();
    assert_eq!(again, HookFailure::Unusable { hook: Hook::Tick });
    // on-demoted goes to a fresh instance.
    let mut fresh = runtime.instantiate(&spin, Some(1), None).await.unwrap();
    fresh.on_demoted(DemoteReason::PluginFailed).await.unwrap();
    still_serves(&runtime).await;
}

#[tokio::test(flavor = "current_thread")]
async fn a_plugin_that_allocates_without_end_hits_the_memory_cap() {
    let runtime = runtime_with(|c| c.memory_limit = 16 << 20);
    let hog = runtime.load(&plugin("hog")).unwrap();
    let mut instance = runtime.instantiate(&hog, Some(1), None).await.unwrap();
    instance.on_elected(&facts(1), always()).await.unwrap();
    let failure = instance.tick(&facts(1), always()).await.unwrap_err();
    assert!(matches!(failure, HookFailure::OutOfMemory { hook: Hook::Tick, .. }), "{failure}");
    assert!(failure.to_string().contains("16 MiB cap"), "{failure}");
    still_serves(&runtime).await;
}

#[tokio::test(flavor = "current_thread")]
async fn a_panic_is_a_trap() {
    let runtime = runtime();
    let panic = runtime.load(&plugin("panic")).unwrap();
    let mut instance = runtime.instantiate(&panic, Some(3), None).await.unwrap();
    let failure = instance.on_elected(&facts(3), always()).await.unwrap_err();
    match &failure {
        HookFailure::Trapped { hook: Hook::OnElected, message } => {
            assert!(message.contains("unreachable"), "{message}")
        }
        other => panic!("expected a trap, got {other}"),
    }
    assert!(!instance.is_healthy());
    still_serves(&runtime).await;
}

#[tokio::test(flavor = "current_thread")]
async fn a_trap_on_purpose_is_reported_with_its_place() {
    let runtime = runtime_with(|c| {
        c.config.insert("trap-on-tick".into(), "2".into());
    });
    let trap = runtime.load(&plugin("trap")).unwrap();
    let mut instance = runtime.instantiate(&trap, Some(4), None).await.unwrap();
    instance.on_elected(&facts(4), always()).await.unwrap();
    instance.tick(&facts(4), always()).await.unwrap();
    let failure = instance.tick(&facts(4), always()).await.unwrap_err();
    match &failure {
        HookFailure::Trapped { hook: Hook::Tick, message } => {
            assert!(message.contains("unreachable"), "{message}")
        }
        other => panic!("expected a trap, got {other}"),
    }
    assert_eq!(failure.to_string().lines().count(), 1);
    still_serves(&runtime).await;
}

#[tokio::test(flavor = "current_thread")]
async fn a_returned_error_leaves_the_instance_intact() {
    let runtime = runtime_with(|c| {
        c.config.insert("ticks-per-term".into(), "zero".into());
    });
    let rotate = runtime.load(&plugin("rotate")).unwrap();
    let mut instance = runtime.instantiate(&rotate, Some(5), None).await.unwrap();
    let failure = instance.on_elected(&facts(5), always()).await.unwrap_err();
    match &failure {
        HookFailure::Returned { hook: Hook::OnElected, message } => {
            assert!(message.contains("ticks-per-term"))
        }
        other => panic!("expected a returned error, got {other}"),
    }
    assert!(failure.is_plugin_fault());
    assert!(instance.is_healthy());
}

#[tokio::test(flavor = "current_thread")]
async fn config_and_resign_reach_the_plugin() {
    let (logs, _guard) = capture();
    let runtime = runtime_with(|c| {
        c.config.insert("ticks-per-term".into(), "2".into());
        c.config.insert("message".into(), "compacting".into());
    });
    let rotate = runtime.load(&plugin("rotate")).unwrap();
    let mut instance = runtime.instantiate(&rotate, Some(6), None).await.unwrap();
    instance.on_elected(&facts(6), always()).await.unwrap();
    instance.tick(&facts(6), always()).await.unwrap();
    assert_eq!(instance.take_resignation(), None);
    instance.tick(&facts(6), always()).await.unwrap();
    assert_eq!(instance.take_resignation().as_deref(), Some("done 2 ticks in term 6"));
    let lines = logs.plugin_lines();
    assert_eq!(lines[0], "elected: term 6; will resign after 2 ticks (config keys: message, ticks-per-term)");
    assert_eq!(lines[1], "compacting: term 6 tick 1/2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_host_can_interrupt_a_running_hook() {
    let runtime = runtime_with(|c| c.hook_timeout = Duration::from_secs(120));
    let spin = runtime.load(&plugin("spin")).unwrap();
    let mut instance = runtime.instantiate(&spin, Some(1), None).await.unwrap();
    instance.on_elected(&facts(1), always()).await.unwrap();
    let interrupter = instance.interrupter();
    let (permit, checks) = counting();
    let running = tokio::spawn(async move {
        let result = instance.tick(&facts(1), permit).await;
        (instance, result)
    });
    // Interrupt once the guest runs (the epoch callback asks the permit).
    wait_until_checked(&checks, 3).await;
    interrupter.interrupt();
    let (instance, result) = running.await.unwrap();
    let failure = result.unwrap_err();
    assert_eq!(failure, HookFailure::Interrupted { hook: Hook::Tick });
    assert!(!failure.is_plugin_fault());
    // The interrupted instance is done; on-demoted runs on a fresh one.
    assert!(!instance.is_healthy());
    let mut fresh = runtime.instantiate(&spin, Some(1), None).await.unwrap();
    fresh.on_demoted(DemoteReason::ConnectionLost).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hook_stops_when_its_permit_is_withdrawn() {
    let runtime = runtime_with(|c| c.hook_timeout = Duration::from_secs(120));
    let spin = runtime.load(&plugin("spin")).unwrap();
    let mut instance = runtime.instantiate(&spin, Some(1), None).await.unwrap();
    let (permit, checks, lease) = leased();
    instance.on_elected(&facts(1), permit.clone()).await.unwrap();
    // Count only the tick's checks: it must be running when the lease goes.
    checks.store(0, Ordering::SeqCst);
    let running = tokio::spawn(async move { instance.tick(&facts(1), permit).await });
    wait_until_checked(&checks, 3).await;
    lease.store(false, Ordering::SeqCst);
    let failure = running.await.unwrap().unwrap_err();
    assert_eq!(failure, HookFailure::PermitLost { hook: Hook::Tick });
}

#[tokio::test(flavor = "current_thread")]
async fn no_host_call_is_served_without_a_permit() {
    let (logs, _guard) = capture();
    let runtime = runtime();
    let heartbeat = runtime.load(&plugin("heartbeat")).unwrap();
    let mut instance = runtime.instantiate(&heartbeat, Some(8), None).await.unwrap();
    instance.on_elected(&facts(8), always()).await.unwrap();
    logs.clear();
    let lost: Arc<dyn Permit> = Arc::new(|| false);
    let failure = instance.tick(&facts(8), lost).await.unwrap_err();
    assert_eq!(failure, HookFailure::PermitLost { hook: Hook::Tick });
    assert!(logs.plugin_lines().is_empty(), "a refused tick must have no effect: {:?}", logs.plugin_lines());
}

#[tokio::test(flavor = "current_thread")]
async fn the_sandbox_grants_nothing_by_default() {
    let (logs, _guard) = capture();
    let runtime = runtime_with(|c| {
        c.config.insert("file".into(), "/etc/hostname".into());
    });
    let probe = runtime.load(&plugin("probe")).unwrap();
    let mut instance = runtime.instantiate(&probe, Some(1), None).await.unwrap();
    instance.tick(&facts(1), always()).await.unwrap();
    let lines = logs.plugin_lines();
    assert_eq!(lines[0], "env: 0 variables []", "{lines:?}");
    assert!(lines[1].starts_with("file /etc/hostname: error"), "{lines:?}");
    assert!(lines[2].starts_with("tcp 127.0.0.1:2181: error"), "{lines:?}");
    assert!(std::env::vars().next().is_some(), "the host itself has an environment");
}

#[tokio::test(flavor = "current_thread")]
async fn explicit_grants_open_a_directory_and_variables() {
    let (logs, _guard) = capture();
    let dir = TempDir::new("grant");
    std::fs::write(dir.path().join("greeting.txt"), "hello from the host\n").unwrap();
    let runtime = runtime_with(|c| {
        c.grants = Grants {
            dirs: vec![DirGrant { host: dir.path().to_path_buf(), guest: "/data".into(), read_only: true }],
            env: vec![("REGION".into(), "eu-1".into())],
            ..Grants::default()
        };
        c.config = BTreeMap::from([("file".into(), "/data/greeting.txt".into())]);
    });
    let probe = runtime.load(&plugin("probe")).unwrap();
    let mut instance = runtime.instantiate(&probe, Some(1), None).await.unwrap();
    instance.tick(&facts(1), always()).await.unwrap();
    let lines = logs.plugin_lines();
    assert_eq!(lines[0], "env: 1 variables [REGION=eu-1]");
    assert_eq!(lines[1], "file /data/greeting.txt: read 20 bytes: hello from the host");
    // Network stays closed: there is no grant for it.
    assert!(lines[2].contains("error"), "{lines:?}");
}

fn load_error(name_or_path: &std::path::Path) -> LoadError {
    runtime().load(name_or_path).expect_err("must be rejected")
}

fn assert_one_line(error: &LoadError, needles: &[&str]) {
    let text = error.to_string();
    assert_eq!(text.lines().count(), 1, "{text}");
    for needle in needles {
        assert!(text.contains(needle), "{text:?} should mention {needle:?}");
    }
}

#[test]
fn each_bad_plugin_gets_a_clear_one_line_error() {
    let dir = TempDir::new("bad-plugins");

    let missing = dir.path().join("missing.wasm");
    let e = load_error(&missing);
    assert!(matches!(e, LoadError::NotFound(_)));
    assert_one_line(&e, &["missing.wasm", "does not exist"]);

    let text = dir.path().join("notes.wasm");
    std::fs::write(&text, "this is not wasm").unwrap();
    let e = load_error(&text);
    assert!(matches!(e, LoadError::NotWasm(_)));
    assert_one_line(&e, &["notes.wasm", "not a WebAssembly file"]);

    // A real core module (one exported function), not a component.
    let core = dir.path().join("core.wasm");
    let module: &[u8] = &[
        0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00, // magic, version 1
        0x01, 0x04, 0x01, 0x60, 0x00, 0x00, // type section: () -> ()
        0x03, 0x02, 0x01, 0x00, // function section
        0x07, 0x08, 0x01, 0x04, b't', b'i', b'c', b'k', 0x00, 0x00, // export "tick"
        0x0a, 0x04, 0x01, 0x02, 0x00, 0x0b, // code: empty body
    ];
    wasmtime::Module::new(&wasmtime::Engine::default(), module).expect("a valid core module");
    std::fs::write(&core, module).unwrap();
    let e = load_error(&core);
    assert!(matches!(e, LoadError::CoreModule(_)));
    assert_one_line(&e, &["core WebAssembly module", "wasm32-wasip2"]);

    let truncated = dir.path().join("truncated.wasm");
    let bytes = std::fs::read(plugin("heartbeat")).unwrap();
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let e = load_error(&truncated);
    assert!(matches!(e, LoadError::Invalid(..)));
    assert_one_line(&e, &["truncated.wasm", "not a valid WebAssembly component"]);

    let e = load_error(&plugin("wrong-version"));
    assert!(matches!(&e, LoadError::WrongVersion { found, .. } if found == "0.2.0"), "{e}");
    assert_one_line(&e, &["zkrun:plugin@0.2.0", "serves zkrun:plugin@0.1.x"]);

    let e = load_error(&plugin("unknown-import"));
    assert!(
        matches!(&e, LoadError::NotGranted { import, .. } if import == "acme:vault-job/secrets@0.1.0"),
        "{e}"
    );
    assert_one_line(&e, &["acme:vault-job/secrets@0.1.0", "does not grant"]);

    let e = load_error(&plugin("incomplete"));
    assert!(
        matches!(&e, LoadError::MissingExports { missing, .. } if missing == &["on-elected", "on-demoted"]),
        "{e}"
    );
    assert_one_line(&e, &["does not export on-elected, on-demoted", "zkrun:plugin/job"]);
}

#[test]
fn a_good_plugin_reports_what_it_imports_and_exports() {
    let heartbeat = runtime().load(&plugin("heartbeat")).unwrap();
    let interface = heartbeat.interface();
    assert!(interface.imports.iter().any(|i| i.starts_with("zkrun:plugin/host@0.1.2")), "{interface:?}");
    assert!(interface.imports.iter().any(|i| i.starts_with("wasi:cli/stdout@0.2")), "{interface:?}");
    for hook in ["on-elected (func)", "tick (func)", "on-demoted (func)"] {
        assert!(interface.exports.iter().any(|e| e == hook), "{interface:?}");
    }
    assert_eq!(heartbeat.name(), "heartbeat");
}

#[tokio::test(flavor = "current_thread")]
async fn a_plugin_built_for_0_1_0_still_loads_and_runs() {
    let (logs, _guard) = capture();
    let runtime = runtime();
    let legacy = runtime.load(&plugin("legacy")).expect("0.1.0 plugins keep loading");
    assert!(
        legacy.interface().imports.iter().any(|i| i.starts_with("zkrun:plugin/host@0.1.0")),
        "{legacy:?}"
    );
    let mut instance = runtime.instantiate(&legacy, Some(2), None).await.unwrap();
    instance.on_elected(&facts(2), always()).await.unwrap();
    instance.tick(&facts(2), always()).await.unwrap();
    instance.on_demoted(DemoteReason::Shutdown).await.unwrap();
    assert_eq!(
        logs.plugin_lines(),
        vec!["legacy 0.1.0 plugin elected: term 2", "legacy tick: term 2", "legacy demoted"]
    );
}

#[test]
fn plugins_import_state_only_if_they_use_it() {
    let runtime = runtime();
    let imports = |name: &str| runtime.load(&plugin(name)).unwrap().interface().imports.clone();
    assert!(!imports("heartbeat").iter().any(|i| i.starts_with("zkrun:plugin/state")));
    assert!(imports("counter").iter().any(|i| i.starts_with("zkrun:plugin/state@0.1.2")));
    // Built against 0.1.1 (see `state::a_plugin_built_for_0_1_1_…` for it running).
    let legacy = imports("legacy-state");
    assert!(legacy.iter().any(|i| i.starts_with("zkrun:plugin/state@0.1.1")), "{legacy:?}");
    assert!(!legacy.iter().any(|i| i.starts_with("zkrun:plugin/slots")), "{legacy:?}");
}

#[tokio::test(flavor = "current_thread")]
async fn a_hook_blocked_in_a_host_call_is_stopped_at_its_deadline() {
    for how in ["sleep", "poll"] {
        for (hook, name) in
            [(Hook::OnElected, "on-elected"), (Hook::Tick, "tick"), (Hook::OnDemoted, "on-demoted")]
        {
            let (runtime, sleeper) = sleeper(name, how, Duration::from_millis(300));
            let mut instance = runtime.instantiate(&sleeper, Some(1), None).await.unwrap();
            let failure = within_a_minute(name, async {
                instance.on_elected(&facts(1), always()).await?;
                instance.tick(&facts(1), always()).await?;
                instance.on_demoted(DemoteReason::Resigned).await
            })
            .await
            .unwrap_err();
            assert_eq!(
                failure,
                HookFailure::TimedOut {
                    hook,
                    stop: zkrun::plugin::Stop::TimedOut(Duration::from_millis(300))
                },
                "{how} in {name}"
            );
            assert!(failure.is_plugin_fault() && !instance.is_healthy());
            still_serves(&runtime).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupt_or_a_lapsed_permit_stops_a_hook_blocked_in_a_host_call() {
    for how in ["sleep", "poll"] {
        // The deadline is far away: only the interrupt can stop it in time.
        let (runtime, sleeper) = sleeper("tick", how, Duration::from_secs(3600));
        let mut instance = runtime.instantiate(&sleeper, Some(1), None).await.unwrap();
        instance.on_elected(&facts(1), always()).await.unwrap();
        let interrupter = instance.interrupter();
        let (permit, checks) = counting();
        let running = tokio::spawn(async move { instance.tick(&facts(1), permit).await });
        // The watchdog asks the permit every few milliseconds while the
        // guest waits in the host: it is blocked by now.
        wait_until_checked(&checks, 20).await;
        interrupter.interrupt();
        let failure = within_a_minute("the interrupted tick", running).await.unwrap().unwrap_err();
        assert_eq!(failure, HookFailure::Interrupted { hook: Hook::Tick }, "{how}");

        let mut instance = runtime.instantiate(&sleeper, Some(1), None).await.unwrap();
        let (permit, checks, lease) = leased();
        let running = tokio::spawn(async move { instance.tick(&facts(1), permit).await });
        wait_until_checked(&checks, 20).await;
        lease.store(false, Ordering::SeqCst);
        let failure = within_a_minute("the tick whose lease lapsed", running).await.unwrap().unwrap_err();
        assert_eq!(failure, HookFailure::PermitLost { hook: Hook::Tick }, "{how}");
    }
}

#[tokio::test(flavor = "current_thread")]
async fn an_interrupt_sent_before_a_hook_starts_is_not_lost() {
    let (logs, _guard) = capture();
    let runtime = runtime();
    let heartbeat = runtime.load(&plugin("heartbeat")).unwrap();
    let mut instance = runtime.instantiate(&heartbeat, Some(3), None).await.unwrap();
    instance.on_elected(&facts(3), always()).await.unwrap();
    logs.clear();
    instance.interrupter().interrupt();
    let failure = instance.tick(&facts(3), always()).await.unwrap_err();
    assert_eq!(failure, HookFailure::Interrupted { hook: Hook::Tick });
    assert!(logs.plugin_lines().is_empty(), "the refused tick ran: {:?}", logs.plugin_lines());
    // Refused before the guest ran: the instance is intact, and the
    // interrupt was spent on that tick.
    assert!(instance.is_healthy());
    instance.tick(&facts(3), always()).await.unwrap();
    assert_eq!(logs.plugin_lines(), ["I am Leader: term 3 id p1 tick 1"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_code_blocked_in_a_host_call_is_bounded_like_a_hook() {
    let dir = zkrun_tests::TempDir::new("blocking-start");
    let path = zkrun_tests::hostile::blocking_start(dir.path());
    let runtime = runtime_with(|c| c.hook_timeout = Duration::from_millis(300));
    let blocking = runtime.load(&path).unwrap();
    let failure =
        within_a_minute("instantiation", runtime.instantiate(&blocking, None, None)).await.err().unwrap();
    assert!(matches!(failure, HookFailure::TimedOut { hook: Hook::Instantiate, .. }), "{failure}");

    // A term's instantiation runs under its permit: an interrupt stops it.
    let runtime = runtime_with(|c| c.hook_timeout = Duration::from_secs(3600));
    let blocking = runtime.load(&path).unwrap();
    let interrupter = zkrun::plugin::Interrupter::new();
    let (permit, checks) = counting();
    let handle = interrupter.clone();
    let creating = tokio::spawn(async move {
        runtime.instantiate_for(&blocking, Some(1), None, Some(permit), handle).await.err()
    });
    wait_until_checked(&checks, 20).await;
    interrupter.interrupt();
    let failure = within_a_minute("the interrupted instantiation", creating).await.unwrap().unwrap();
    assert_eq!(failure, HookFailure::Interrupted { hook: Hook::Instantiate });
}

#[tokio::test(flavor = "current_thread")]
async fn tables_count_against_the_memory_cap() {
    let dir = zkrun_tests::TempDir::new("table-hog");
    let runtime = runtime();
    // 4 × 100 × 1 M slots: 3 GiB of tables in a file of a few kilobytes.
    let hog = runtime.load(&zkrun_tests::hostile::table_hog(dir.path(), 4, 100, 1_000_000)).unwrap();
    let failure = runtime.instantiate(&hog, Some(1), None).await.err().unwrap();
    assert!(matches!(failure, HookFailure::OutOfMemory { hook: Hook::Instantiate, .. }), "{failure}");
    assert!(failure.to_string().contains("64 MiB cap"), "{failure}");
    // Small tables within the cap are fine.
    let small = runtime.load(&zkrun_tests::hostile::table_hog(dir.path(), 2, 4, 1000)).unwrap();
    runtime.instantiate(&small, Some(1), None).await.unwrap();
    still_serves(&runtime).await;
}

#[tokio::test(flavor = "current_thread")]
async fn plugin_output_is_capped_rate_limited_and_escaped() {
    let (logs, _guard) = capture();
    let runtime = runtime_with(|c| {
        c.config.insert("flood".into(), "log-lines".into());
        c.memory_limit = 256 << 20;
    });
    let flood = runtime.load(&plugin("flood")).unwrap();
    let mut instance = runtime.instantiate(&flood, Some(1), None).await.unwrap();
    instance.tick(&facts(1), always()).await.unwrap();
    let events = logs.events();
    let lines = events.iter().filter(|e| e.get("event") == "plugin_log").count();
    // 20,000 lines of 1 KiB: one second's worth of bytes (256 KiB) gets out.
    assert!(lines > 10 && lines < 400, "{lines} lines got out");
    let dropped: Vec<_> = events.iter().filter(|e| e.get("event") == "plugin_output_dropped").collect();
    assert!(!dropped.is_empty(), "no plugin_output_dropped event");
    assert!(dropped[0].get("lines").parse::<u64>().unwrap() >= 1, "{:?}", dropped[0]);
    drop(instance);

    logs.clear();
    let runtime = runtime_with(|c| {
        c.config.insert("flood".into(), "log-giant".into());
        c.memory_limit = 256 << 20;
    });
    let flood = runtime.load(&plugin("flood")).unwrap();
    let mut instance = runtime.instantiate(&flood, Some(1), None).await.unwrap();
    instance.tick(&facts(1), always()).await.unwrap();
    let lines = logs.plugin_lines();
    let giant = lines.iter().find(|l| l.starts_with("ggg")).expect("the giant line, cut");
    assert!(
        giant.len() < 9 * 1024 && giant.ends_with("… [truncated 49991808 bytes]"),
        "{}",
        &giant[giant.len() - 40..]
    );
}

#[test]
fn compiled_code_is_cached_by_content_and_a_broken_entry_is_replaced() {
    use std::os::unix::fs::PermissionsExt;
    let dir = zkrun_tests::TempDir::new("cache");
    let cache = dir.path().join("cache");
    let runtime = runtime_with(|c| c.compile.cache = Some(cache.clone()));
    let first = runtime.load(&plugin("heartbeat")).unwrap();
    assert!(!first.from_cache());
    assert_eq!(first.sha256().len(), 64);
    let second = runtime.load(&plugin("heartbeat")).unwrap();
    assert!(second.from_cache(), "the second load compiles again");
    assert_eq!(second.sha256(), first.sha256());
    // Another component is another entry.
    assert!(!runtime.load(&plugin("counter")).unwrap().from_cache());

    // A corrupt entry is not trusted: it fails authentication (zkrun did
    // not write those bytes), is removed, compiled again and replaced.
    for entry in std::fs::read_dir(&cache).unwrap().flatten() {
        std::fs::write(entry.path(), b"not compiled code").unwrap();
    }
    let (logs, _guard) = capture();
    assert!(!runtime.load(&plugin("heartbeat")).unwrap().from_cache());
    assert!(logs.events().iter().any(|e| e.get("event") == "cache_entry_tampered"));
    assert!(runtime.load(&plugin("heartbeat")).unwrap().from_cache());

    // A directory others can write is not used at all.
    std::fs::set_permissions(&cache, std::fs::Permissions::from_mode(0o777)).unwrap();
    assert!(!runtime.load(&plugin("heartbeat")).unwrap().from_cache());
    assert!(logs.events().iter().any(|e| e.get("event") == "cache_unusable"));
}
