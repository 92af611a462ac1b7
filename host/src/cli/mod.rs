//! The `zkrun` command line: `run` (the default), `status` and `check`.

mod cache;
mod output;
pub mod security;
pub mod settings;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use tokio::sync::mpsc;
use tracing::{error, info, warn};

use crate::election::{Election, ElectionConfig, Participant};
use crate::plugin::{CompileLimits, Compiler, Runtime, RuntimeConfig};
use crate::supervisor::{JobSettings, Outcome, Signal, Supervisor};
use crate::zkpath::{self, ConnectString};
use crate::{health, logging, status};
pub use settings::{RunArgs, RunSettings};

/// Exit codes, as documented in the README and `--help`.
pub mod exit {
    /// Clean shutdown; `check` found the plugin usable.
    pub const OK: u8 = 0;
    /// An unexpected internal error.
    pub const FAILURE: u8 = 1;
    /// `status`: nobody leads, or the leader's lease has lapsed.
    pub const NO_LEADER: u8 = 1;
    /// Bad flags, configuration file, connect string or election path.
    pub const USAGE: u8 = 2;
    /// The plugin cannot be used (missing, not a component, wrong world...).
    pub const PLUGIN: u8 = 3;
    /// ZooKeeper could not be reached (`status`, or `run --connect-timeout`).
    pub const UNREACHABLE: u8 = 4;
    /// `status`: the ensemble refused the credentials, or the election's
    /// ACL does not let them read it.
    pub const NOT_AUTHORIZED: u8 = 5;
    /// A second SIGTERM/SIGINT cut the graceful shutdown short.
    pub const FORCED: u8 = 130;
}

const AFTER_HELP: &str = "\
Exit codes:
  0    clean shutdown (run), usable plugin (check), a leader holds a fresh lease (status)
  1    unexpected internal error; status: nobody leads, or the leader's lease lapsed
  2    bad flags, configuration file, connect string or election path
  3    the plugin cannot be used (check, and run at start)
  4    ZooKeeper unreachable (status; run with --connect-timeout)
  5    status: not authorized (credentials refused, or the ACL denies reading)
  130  a second SIGTERM/SIGINT cut the graceful shutdown short

Signals (run): SIGTERM/SIGINT hand leadership over and exit; SIGHUP reloads the plugin.";

/// zkrun: run a WebAssembly job on exactly one host of a fleet, chosen by a
/// ZooKeeper election, and stop it the moment that host is no longer sure it leads.
#[derive(Debug, Parser)]
#[command(name = "zkrun", version, after_help = AFTER_HELP, args_conflicts_with_subcommands = true)]
pub struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Debug, Subcommand)]
#[allow(clippy::large_enum_variant, reason = "parsed once per process")]
enum Command {
    /// Join the election and run the plugin while leading (the default).
    Run(RunArgs),
    /// Show an election's participants in order, and who leads.
    Status(StatusArgs),
    /// Validate a plugin against the zkrun:plugin/job world.
    Check(CheckArgs),
    /// Publish a component to every participant started with --plugin published
    /// (or --list what is published, or --rollback to the previous version).
    Publish(crate::rollout::publish::PublishArgs),
    /// Compile a component ahead of time for this zkrun (load the result
    /// with --trust-precompiled); zkrun also runs this as its compiler child.
    Compile(CompileArgs),
    /// List the next slots of a schedule in its time zone, to check a cron
    /// expression before deploying it.
    Schedule(ScheduleCommandArgs),
    /// List the compiled-code cache's entries, or prune it to a size.
    Cache(cache::CacheArgs),
}

#[derive(Debug, clap::Args)]
struct ScheduleCommandArgs {
    #[command(flatten)]
    schedule: settings::ScheduleArgs,
    /// How many due instants to list
    #[arg(long, value_name = "N", default_value_t = 5)]
    next: usize,
}

#[derive(Debug, clap::Args)]
struct CompileArgs {
    /// The component, or - for standard input
    #[arg(value_name = "PATH")]
    input: PathBuf,
    /// Where to write the compiled code, or - for standard output
    #[arg(short, long, value_name = "PATH")]
    output: PathBuf,
}

#[derive(Debug, clap::Args)]
struct StatusArgs {
    /// ZooKeeper servers [default: $ZOOKEEPER_SERVERS, else 127.0.0.1:2181]
    #[arg(long, value_name = "HOSTS")]
    zk: Option<String>,
    /// Election path [default: /zkrun/election]
    #[arg(long, value_name = "PATH")]
    election: Option<String>,
    /// Print JSON instead of a table
    #[arg(long)]
    json: bool,
    /// How long to try to reach the ensemble, and at most how long to watch for a lease renewal
    #[arg(long, value_name = "DURATION", value_parser = settings::parse_duration, default_value = "10s")]
    timeout: Duration,
    /// Keep watching: print again whenever the status changes (Ctrl-C ends it)
    #[arg(long)]
    watch: bool,
    #[command(flatten)]
    security: security::SecurityArgs,
}

#[derive(Debug, clap::Args)]
struct CheckArgs {
    /// The plugin file
    #[arg(value_name = "PATH")]
    plugin: PathBuf,
    /// Deadline of the component's start code [default: 5s]
    #[arg(long, value_name = "DURATION", value_parser = settings::parse_duration)]
    hook_timeout: Option<Duration>,
    /// Cap on the plugin's linear memory and tables [default: 64MiB]
    #[arg(long, value_name = "SIZE", value_parser = settings::parse_size)]
    memory_limit: Option<usize>,
    /// Largest component file accepted [default: 64MiB]
    #[arg(long, value_name = "SIZE", value_parser = settings::parse_size)]
    max_component_size: Option<usize>,
    /// Longest the component may take to compile [default: 60s]
    #[arg(long, value_name = "DURATION", value_parser = settings::parse_duration)]
    compile_timeout: Option<Duration>,
    /// Most memory the compiler may use [default: 768MiB]
    #[arg(long, value_name = "SIZE", value_parser = settings::parse_size)]
    compile_memory_limit: Option<usize>,
    /// Accept precompiled code from `zkrun compile`
    #[arg(long)]
    trust_precompiled: bool,
    /// Use (and fill) the compiled-code cache, as `zkrun run` does, instead
    /// of compiling afresh: for authors who check often
    #[arg(long)]
    cached: bool,
    /// With --cached: most the cache may hold [default: 512MiB]
    #[arg(long, value_name = "SIZE", value_parser = settings::parse_bytes, requires = "cached")]
    cache_max_size: Option<usize>,
}

/// Parses the command line and runs the command; returns the exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let code = match cli.command {
        Some(Command::Run(args)) => run(args),
        None => run(cli.run),
        Some(Command::Status(args)) => status_command(args),
        Some(Command::Check(args)) => check(args),
        Some(Command::Compile(args)) => compile(args),
        Some(Command::Schedule(args)) => schedule_command(args),
        Some(Command::Publish(args)) => crate::rollout::publish::command(args),
        Some(Command::Cache(args)) => cache::command(args),
    };
    ExitCode::from(code)
}

fn usage(message: impl std::fmt::Display) -> u8 {
    eprintln!("zkrun: {message}");
    exit::USAGE
}

fn tokio_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime")
}

fn run(args: RunArgs) -> u8 {
    let settings = match args.resolve() {
        Ok(settings) => settings,
        Err(message) => return usage(message),
    };
    if let Err(message) = logging::init(settings.log_format, &settings.log_level) {
        return usage(message);
    }
    let tokio = tokio_runtime();
    let code = tokio.block_on(serve(settings));
    // A shutdown during the first compile leaves its thread blocked on the
    // compiler child (killed with us): do not wait for it.
    tokio.shutdown_timeout(Duration::from_millis(100));
    code
}

/// How often a long first compile says it is still going.
const COMPILE_PROGRESS: Duration = Duration::from_secs(5);

async fn serve(settings: RunSettings) -> u8 {
    // First of all, so that SIGTERM/SIGINT during a long first compile end
    // the process cleanly (exit 0, nothing joined yet).
    // The follower of `--plugin published` asks for reloads on the same channel.
    let (signal_tx, signal_rx) = mpsc::unbounded_channel();
    let mut signals = match forward_signals(signal_tx.clone(), signal_rx) {
        Ok(signals) => signals,
        Err(e) => {
            error!(event = "fatal", error = %e, "cannot install signal handlers");
            return exit::FAILURE;
        }
    };
    let runtime = match Runtime::new(RuntimeConfig {
        memory_limit: settings.memory_limit,
        hook_timeout: settings.hook_timeout,
        grants: settings.grants.clone(),
        http: settings.http_limits,
        config: settings.plugin_config.clone(),
        participant: settings.id.clone(),
        compile: CompileLimits {
            cache: settings.cache_dir.clone(),
            cache_max_size: settings.cache_max_size,
            trust_precompiled: settings.trust_precompiled,
            max_size: settings.max_component_size as u64,
            timeout: settings.compile_timeout,
            memory: settings.compile_memory_limit,
            compiler: child_compiler(),
        },
        ..RuntimeConfig::default()
    }) {
        Ok(runtime) => Arc::new(runtime),
        Err(e) => {
            error!(event = "fatal", error = %e, "cannot start the WebAssembly runtime");
            return exit::FAILURE;
        }
    };
    // `--plugin published`: start from the published version (waiting for
    // one if need be), then follow the manifest.
    let mut settings = settings;
    let follower = match &settings.follow {
        None => None,
        Some(follow) => {
            let start = crate::rollout::follow::Follower::start(
                settings.zk.clone(),
                settings.zk_access.clone(),
                settings.session_timeout,
                settings.election.clone(),
                settings.id.clone(),
                follow.clone(),
                settings.max_component_size as u64,
                runtime.clone(),
            );
            tokio::pin!(start);
            // Waiting for a first published version may take as long as the
            // operator does: one SIGTERM/SIGINT ends it, exit 0.
            let started = loop {
                tokio::select! {
                    started = &mut start => break started,
                    Some(signal) = signals.recv() => if signal == Signal::Shutdown {
                        info!(event = "shutdown", id = settings.id, "stopped while waiting for a published plugin, before joining the election");
                        return exit::OK;
                    },
                }
            };
            match started {
                Ok((follower, staged)) => {
                    settings.plugin = staged;
                    Some(follower)
                }
                Err(e) => {
                    error!(event = "fatal", error = e, "cannot follow the published plugin: {e}");
                    return exit::UNREACHABLE;
                }
            }
        }
    };
    // A plugin that cannot run must not take part in the election: check it
    // before joining.
    let path = settings.plugin.clone();
    let loader = runtime.clone();
    let mut load = tokio::task::spawn_blocking(move || loader.load(&path));
    let started = std::time::Instant::now();
    let mut progress =
        tokio::time::interval_at(tokio::time::Instant::now() + COMPILE_PROGRESS, COMPILE_PROGRESS);
    let loaded = loop {
        tokio::select! {
            loaded = &mut load => break loaded,
            _ = progress.tick() => info!(
                event = "compiling_progress",
                plugin = %settings.plugin.display(),
                elapsed_ms = started.elapsed().as_millis() as u64,
                "still compiling the plugin"
            ),
            Some(signal) = signals.recv() => if signal == Signal::Shutdown {
                info!(event = "shutdown", id = settings.id, "stopped while compiling the plugin, before joining the election");
                return exit::OK;
            },
        }
    };
    let plugin = match loaded {
        Ok(Ok(plugin)) => plugin,
        Ok(Err(e)) => {
            error!(event = "plugin_rejected", id = settings.id, error = %e, "{e}");
            return exit::PLUGIN;
        }
        Err(e) => {
            error!(event = "fatal", error = %e, "plugin loader failed");
            return exit::FAILURE;
        }
    };
    // Bound before joining: a bad address or a port in use is a start error.
    let listener = match settings.metrics {
        None => None,
        Some(addr) => match health::bind(addr).await {
            Ok(listener) => Some(listener),
            Err(e) => {
                error!(event = "fatal", error = %e, "cannot serve metrics on {addr}: {e}");
                return exit::USAGE;
            }
        },
    };
    info!(
        event = "starting",
        id = settings.id,
        zk = %settings.zk,
        zk_access = %settings.zk_access.describe(),
        election = settings.election,
        plugin = %settings.plugin.display(),
        tick_ms = settings.tick.as_millis() as u64,
        schedule = settings.schedule.as_ref().map(|s| s.describe()),
        session_timeout_ms = settings.session_timeout.as_millis() as u64,
        compile_ms = plugin.compile_time().as_millis() as u64,
        cached = plugin.from_cache(),
        sha256 = plugin.sha256(),
        version = env!("CARGO_PKG_VERSION"),
        allow_http = %settings.grants.http.iter().map(ToString::to_string).collect::<Vec<_>>().join(","),
        "zkrun starting"
    );
    if !plugin.interface().sends_http() && !settings.grants.http.is_empty() {
        // A JavaScript build with `-d http`, or a Python one for the `job`
        // world: the grant cannot be used, and the plugin's requests fail
        // inside the guest with no word from zkrun otherwise.
        warn!(
            event = "http_grant_unused",
            plugin = %settings.plugin.display(),
            "--allow-http is given, but the plugin imports no wasi:http/outgoing-handler: it cannot send requests (build JavaScript with -d fetch-event, not -d http)"
        );
    }
    if plugin.interface().sends_http() && settings.grants.http.is_empty() {
        warn!(
            event = "http_not_granted",
            plugin = %settings.plugin.display(),
            "the plugin imports wasi:http/outgoing-handler, but no --allow-http is given: every request it sends will be refused"
        );
    }

    let (election, events) = Election::start(ElectionConfig {
        connect: settings.zk.clone(),
        path: settings.election.clone(),
        participant: Participant::this_process(settings.id.clone())
            .with_plugin(plugin.name(), plugin.sha256())
            .with_schedule(settings.schedule.as_ref().map_or("", |s| s.spec())),
        session_timeout: settings.session_timeout,
        lease: settings.lease,
        access: settings.zk_access.clone(),
    });
    if let Some(follower) = follower {
        follower.spawn(election.clone(), signal_tx.clone());
    }
    status::warn_same_id(
        settings.zk.clone(),
        settings.zk_access.clone(),
        settings.election.clone(),
        settings.id.clone(),
        election.clone(),
    );
    let supervisor = Supervisor::new(
        election.clone(),
        events,
        runtime,
        plugin,
        JobSettings {
            tick: settings.tick,
            participant: settings.id.clone(),
            election: settings.election.clone(),
            plugin_path: settings.plugin.clone(),
            connect_timeout: settings.connect_timeout,
            state_quota: settings.state_quota,
            schedule: settings.schedule.clone(),
            rollout: settings.follow.as_ref().map(|follow| {
                crate::rollout::follow::Guard::new(settings.election.clone(), settings.id.clone(), follow)
            }),
        },
    );
    if let Some(listener) = listener {
        health::serve(listener, supervisor.metrics(), election);
    }
    match supervisor.run(signals).await {
        Outcome::ShutDown => exit::OK,
        Outcome::Unreachable => exit::UNREACHABLE,
    }
}

/// SIGTERM/SIGINT ask for a graceful shutdown (a second one exits at once);
/// SIGHUP asks for a reload (as does a published version, through `tx`).
fn forward_signals(
    tx: mpsc::UnboundedSender<Signal>,
    rx: mpsc::UnboundedReceiver<Signal>,
) -> std::io::Result<mpsc::UnboundedReceiver<Signal>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    tokio::spawn(async move {
        let mut stopping = false;
        loop {
            let signal = tokio::select! {
                _ = term.recv() => Signal::Shutdown,
                _ = int.recv() => Signal::Shutdown,
                _ = hup.recv() => Signal::Reload,
            };
            if signal == Signal::Shutdown {
                if stopping {
                    error!(event = "forced_exit", "second signal: exiting at once");
                    std::process::exit(exit::FORCED.into());
                }
                stopping = true;
            }
            if tx.send(signal).is_err() {
                return;
            }
        }
    });
    Ok(rx)
}

fn status_command(args: StatusArgs) -> u8 {
    let zk_text = args
        .zk
        .or_else(|| std::env::var("ZOOKEEPER_SERVERS").ok().filter(|s| !s.is_empty()))
        .unwrap_or_else(|| settings::DEFAULT_ZK.to_string());
    let connect = match ConnectString::parse(&zk_text) {
        Ok(connect) => connect,
        Err(e) => return usage(e),
    };
    let election = args.election.unwrap_or_else(|| settings::DEFAULT_ELECTION.to_string());
    if let Err(e) = zkpath::check_election_path(&election) {
        return usage(e);
    }
    let access = match args.security.resolve(Default::default(), std::path::Path::new(".")) {
        Ok(access) => access,
        Err(e) => return usage(e),
    };
    let json = args.json;
    let watch = args.watch;
    // Each table of --watch starts with the time it was read.
    let show = |found: &status::ElectionStatus| {
        let text = if json {
            format!("{}\n", serde_json::to_string_pretty(found).expect("status serializes"))
        } else if watch {
            let now = humantime::format_rfc3339_seconds(std::time::SystemTime::now());
            format!("{now}  {}", status::render(found))
        } else {
            status::render(found)
        };
        output::print(&text)
    };
    let result = tokio_runtime().block_on(async {
        if watch && !json {
            // Connecting and the first read can take seconds (a lapsed
            // lease is watched for up to its deadline): say so at once.
            let _ = output::print(&format!("watching {election} on {connect} (Ctrl-C ends it)\n"));
        }
        let reader = status::Reader::connect(&connect, &access, args.timeout).await?;
        let mut last = reader.read(&election).await?;
        if !show(&last).unwrap_or(false) {
            return Ok(last);
        }
        if !json {
            // What is published, and whether a revert happened (rollout).
            let _ = output::print(&crate::rollout::publish::status_lines(reader.client(), &election).await);
        }
        if watch {
            // Until interrupted, the reader goes, or the session is lost.
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let found = reader.read(&election).await?;
                if status::changed(&last, &found) {
                    if !json && std::io::IsTerminal::is_terminal(&std::io::stdout()) {
                        // Clear the screen and redraw in place.
                        let _ = output::print("\x1b[2J\x1b[H");
                    }
                    if !show(&found).unwrap_or(false) {
                        return Ok(found);
                    }
                }
                last = found;
            }
        }
        Ok(last)
    });
    match result {
        Ok(found) if found.healthy() => exit::OK,
        Ok(_) => exit::NO_LEADER,
        Err(e) => {
            let code = match &e {
                status::StatusError::Unreachable { .. } => exit::UNREACHABLE,
                e if e.not_authorized() => exit::NOT_AUTHORIZED,
                _ => exit::FAILURE,
            };
            if json {
                // A script parsing stdout gets JSON whatever happened.
                let error = serde_json::json!({
                    "election": election,
                    "error": e.kind(),
                    "message": e.to_string(),
                    "exit_code": code,
                });
                let _ = output::print(&format!("{error:#}\n"));
            }
            eprintln!("zkrun: {e}");
            code
        }
    }
}

/// `zkrun schedule`: the next slots, in the zone and in UTC, with their ids.
fn schedule_command(args: ScheduleCommandArgs) -> u8 {
    let schedule = match args.schedule.resolve_flags() {
        Ok(Some(schedule)) => schedule,
        Ok(None) => return usage("no schedule given: use --schedule CRON or --every DURATION"),
        Err(message) => return usage(message),
    };
    println!("schedule: {}", schedule.describe());
    let mut t = jiff::Timestamp::now();
    for _ in 0..args.next {
        let Some(slot) = schedule.next_after(t) else { break };
        println!("{}  {}  {}", schedule.local(slot.at), slot.at, slot.id);
        t = slot.at;
    }
    exit::OK
}

/// Compiles in a child process running this very binary (even if the file
/// was replaced since: /proc/self/exe is the running image), so that a
/// compile can be stopped at its time limit.
fn child_compiler() -> Compiler {
    Compiler::Subprocess(PathBuf::from("/proc/self/exe"))
}

fn check(args: CheckArgs) -> u8 {
    let defaults = RuntimeConfig::default();
    let config = RuntimeConfig {
        participant: "check".into(),
        hook_timeout: args.hook_timeout.unwrap_or(defaults.hook_timeout),
        memory_limit: args.memory_limit.unwrap_or(defaults.memory_limit),
        compile: CompileLimits {
            // check compiles afresh unless asked: it says how long compiling takes.
            cache: if args.cached { crate::plugin::default_cache_dir() } else { None },
            cache_max_size: args.cache_max_size.map_or(defaults.compile.cache_max_size, |n| n as u64),
            trust_precompiled: args.trust_precompiled,
            max_size: args.max_component_size.map_or(defaults.compile.max_size, |n| n as u64),
            timeout: args.compile_timeout.unwrap_or(defaults.compile.timeout),
            memory: args.compile_memory_limit.map_or(defaults.compile.memory, |n| n as u64),
            compiler: child_compiler(),
        },
        ..defaults
    };
    let config_memory = config.compile.memory;
    let runtime = match Runtime::new(config) {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("zkrun: cannot start the WebAssembly runtime: {e}");
            return exit::FAILURE;
        }
    };
    let plugin = match runtime.load(&args.plugin) {
        Ok(plugin) => plugin,
        Err(e) => {
            eprintln!("zkrun: {e}");
            return exit::PLUGIN;
        }
    };
    // Instantiating runs the component's start code, as every term will,
    // under the same deadline and memory cap.
    let tokio = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
    if let Err(e) = tokio.block_on(runtime.instantiate(&plugin, None, None)) {
        eprintln!("zkrun: {} cannot be instantiated: {e}", args.plugin.display());
        return exit::PLUGIN;
    }
    let size = std::fs::metadata(&args.plugin).map(|m| m.len()).unwrap_or(0);
    let mut text = format!(
        "ok: {} is a zkrun:plugin/job component ({size} bytes, compiled in {} ms{})\n",
        args.plugin.display(),
        plugin.compile_time().as_millis(),
        if plugin.from_cache() { ", from the compiled-code cache" } else { "" }
    );
    if let Some(peak) = plugin.compile_peak() {
        text += &format!(
            "compile memory: {} MiB peak (limit {} MiB, --compile-memory-limit)\n",
            peak >> 20,
            config_memory >> 20
        );
    }
    text += "exports:\n";
    for export in &plugin.interface().exports {
        text += &format!("  {export}\n");
    }
    text += "imports:\n";
    for import in &plugin.interface().imports {
        text += &format!("  {import}\n");
    }
    if plugin.interface().sends_http() {
        text += "needs grant: outgoing HTTP (wasi:http/outgoing-handler); leader hooks reach only URLs under --allow-http PREFIX, none by default\n";
    } else {
        text += "no outgoing HTTP: imports no wasi:http/outgoing-handler, so an --allow-http grant would go unused\n";
    }
    match output::print(&text) {
        // A closed pipe (`| head`) is the reader's choice, not a failure.
        Ok(_) => exit::OK,
        Err(e) => {
            eprintln!("zkrun: cannot write the report: {e}");
            exit::FAILURE
        }
    }
}

/// `zkrun compile`: what a [`Compiler::Subprocess`] child runs.
fn compile(args: CompileArgs) -> u8 {
    use std::io::{Read, Write};
    let dash = |p: &PathBuf| p.as_os_str() == "-";
    let mut wasm = Vec::new();
    let read = if dash(&args.input) {
        std::io::stdin().lock().read_to_end(&mut wasm).map(|_| ())
    } else {
        std::fs::read(&args.input).map(|bytes| wasm = bytes)
    };
    if let Err(e) = read {
        eprintln!("zkrun: cannot read {}: {e}", args.input.display());
        return exit::PLUGIN;
    }
    let compiled = match crate::plugin::compile_to_bytes(&wasm) {
        Ok(compiled) => compiled,
        Err(e) => {
            eprintln!("zkrun: {}", format!("{e:#}").lines().next().unwrap_or_default());
            return exit::PLUGIN;
        }
    };
    let written = if dash(&args.output) {
        std::io::stdout().lock().write_all(&compiled)
    } else {
        std::fs::write(&args.output, &compiled)
    };
    match written {
        Ok(()) => exit::OK,
        Err(e) => {
            eprintln!("zkrun: cannot write {}: {e}", args.output.display());
            exit::FAILURE
        }
    }
}
