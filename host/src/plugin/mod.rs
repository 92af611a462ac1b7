//! The plugin runtime: loads a leader-only job as a WebAssembly component
//! and runs its hooks, contained. It knows nothing of ZooKeeper: the caller
//! says when a term starts and ends, and hands each leader hook a [`Permit`]
//! that the runtime checks while the hook runs.
//!
//! - A [`Plugin`] is compiled and checked once ([`Runtime::load`]); every
//!   term gets a fresh [`Instance`] from it, cheaply.
//! - Each hook, and each instantiation, runs under a deadline and (for
//!   leader work) its permit: epoch interruption stops a guest running wasm,
//!   and a watchdog raced against the call stops one waiting inside a host
//!   call. A call cut off either way is abandoned with its instance.
//! - Memories and tables share one byte budget; plugin output is capped and
//!   rate limited; WASI grants nothing ambient.
//! - Compiling happens in a child process ([`Compiler::Subprocess`]) that a
//!   time limit can kill, so a pathological component cannot stall the host.
//! - A hook that fails returns a [`HookFailure`] saying how; the host process
//!   is never at risk.

mod bindings;
mod cache;
mod egress;
mod held;
mod limits;
mod sandbox;
mod validate;

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use wasmtime::component::{HasSelf, Linker, ResourceTable};
use wasmtime::{Config, Engine, Store, UpdateDeadline};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use bindings::zkrun::plugin::state as wit_state;
pub use bindings::{DemoteReason, Level};
use bindings::{Job, JobPre, Leadership};
pub use cache::{
    Cache, DEFAULT_MAX_SIZE as DEFAULT_CACHE_MAX_SIZE, check_grants as check_cache_grants,
    default_dir as default_cache_dir,
};
pub use egress::{
    DEFAULT_HTTP_MAX_IN_FLIGHT, DEFAULT_HTTP_MAX_RESPONSE, DEFAULT_HTTP_TIMEOUT, ELECTION_HEADER, HttpLimits,
    HttpPrefix, PARTICIPANT_HEADER, SLOT_HEADER, TERM_HEADER,
};
use egress::{Egress, HttpPolicy, Stamp};
pub use limits::{EPOCH_TICK, Interrupter, MAX_INSTANCES, MAX_MEMORIES, MAX_TABLES, Permit, Stop};
use limits::{EpochTicker, Gate, MemoryCap, TickerGuard};
pub use sandbox::{DirGrant, Grants, LogContext, OutputLimits};
pub use validate::{
    CompileLimits, Compiler, DEFAULT_COMPILE_MEMORY_LIMIT, DEFAULT_COMPILE_TIMEOUT,
    DEFAULT_MAX_COMPONENT_SIZE, Interface, LoadError,
};

use crate::state::{StateError, StateStore};

/// Default cap on a plugin instance's linear memory.
pub const DEFAULT_MEMORY_LIMIT: usize = 64 << 20;
/// Default deadline of one hook call.
pub const DEFAULT_HOOK_TIMEOUT: Duration = Duration::from_secs(5);

/// How plugins run on this host.
#[derive(Clone, Debug)]
pub struct RuntimeConfig {
    /// Cap on the linear memory of one instance, in bytes.
    pub memory_limit: usize,
    /// Deadline of every hook call (and of instantiation).
    pub hook_timeout: Duration,
    /// What the plugin may reach beyond its own memory.
    pub grants: Grants,
    /// The plugin's configuration (`--plugin-config`).
    pub config: BTreeMap<String, String>,
    /// This participant's id, for log lines.
    pub participant: String,
    /// Where and within which limits components are compiled.
    pub compile: CompileLimits,
    /// How much output one instance may produce.
    pub output: OutputLimits,
    /// Bounds on the plugin's HTTP requests (where it may send is in `grants`).
    pub http: HttpLimits,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            memory_limit: DEFAULT_MEMORY_LIMIT,
            hook_timeout: DEFAULT_HOOK_TIMEOUT,
            grants: Grants::default(),
            config: BTreeMap::new(),
            participant: String::new(),
            compile: CompileLimits::default(),
            output: OutputLimits::default(),
            http: HttpLimits::default(),
        }
    }
}

/// The facts every leader hook receives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Facts {
    /// The term's fencing token.
    pub term: u64,
    /// This participant's id.
    pub participant: String,
    /// The election path.
    pub election: String,
}

impl Facts {
    fn to_wit(&self) -> Leadership {
        Leadership { term: self.term, participant: self.participant.clone(), election: self.election.clone() }
    }

    pub(crate) fn stamp(&self) -> Stamp {
        Stamp { term: self.term, election: self.election.clone(), participant: self.participant.clone() }
    }
}

/// The slot a scheduled run is for (see `crate::schedule`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlotFacts {
    /// The slot id: the schedule and the instant.
    pub id: String,
    /// The scheduled instant, ms since the Unix epoch.
    pub at_ms: i64,
    /// 1 for the first run, 2 for the first retry, ...
    pub attempt: u32,
    /// The previous attempt's outcome, if any (`interrupted`).
    pub previous: Option<String>,
}

/// A hook, or instantiation, as named in logs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    /// Creating the instance.
    Instantiate,
    /// `on-elected`.
    OnElected,
    /// `tick`.
    Tick,
    /// `on-demoted`.
    OnDemoted,
}

impl fmt::Display for Hook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Hook::Instantiate => "instantiation",
            Hook::OnElected => "on-elected",
            Hook::Tick => "tick",
            Hook::OnDemoted => "on-demoted",
        })
    }
}

/// How a hook call failed. Every variant displays as one line.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HookFailure {
    /// The plugin returned `err`. The instance is intact.
    #[error("{hook} returned an error: {message}")]
    Returned {
        /// The hook.
        hook: Hook,
        /// The plugin's message.
        message: String,
    },
    /// The plugin trapped (a Rust panic is a trap too).
    #[error("{hook} trapped: {message}")]
    Trapped {
        /// The hook.
        hook: Hook,
        /// The trap and where it happened.
        message: String,
    },
    /// The plugin tried to grow its memory or tables past the cap, or to
    /// create too many instances, tables or memories.
    #[error("{hook} ran out of memory: {stop}")]
    OutOfMemory {
        /// The hook.
        hook: Hook,
        /// The cap and the attempted size.
        stop: Stop,
    },
    /// The hook ran past its deadline.
    #[error("{hook} timed out: it {stop}")]
    TimedOut {
        /// The hook.
        hook: Hook,
        /// The deadline.
        stop: Stop,
    },
    /// The permit was withdrawn while the hook ran (not the plugin's fault).
    #[error("{hook} {}", Stop::PermitLost)]
    PermitLost {
        /// The hook.
        hook: Hook,
    },
    /// The host interrupted the hook (not the plugin's fault).
    #[error("{hook} {}", Stop::Interrupted)]
    Interrupted {
        /// The hook.
        hook: Hook,
    },
    /// An earlier call failed and left the instance unusable.
    #[error("{hook} not called: the instance failed earlier")]
    Unusable {
        /// The hook.
        hook: Hook,
    },
    /// The host could not set up the sandbox (e.g. a granted directory is missing).
    #[error("cannot set up the plugin sandbox: {0}")]
    Sandbox(String),
}

impl HookFailure {
    /// Whether the plugin is to blame (as opposed to the host stopping it).
    pub fn is_plugin_fault(&self) -> bool {
        !matches!(self, HookFailure::PermitLost { .. } | HookFailure::Interrupted { .. })
    }

    /// The hook that failed (`None` for sandbox set-up).
    pub fn hook(&self) -> Option<Hook> {
        match self {
            HookFailure::Returned { hook, .. }
            | HookFailure::Trapped { hook, .. }
            | HookFailure::OutOfMemory { hook, .. }
            | HookFailure::TimedOut { hook, .. }
            | HookFailure::PermitLost { hook }
            | HookFailure::Interrupted { hook }
            | HookFailure::Unusable { hook } => Some(*hook),
            HookFailure::Sandbox(_) => None,
        }
    }

    /// A short name for logs and metrics: `trap`, `timeout`, ...
    pub fn kind(&self) -> &'static str {
        match self {
            HookFailure::Returned { .. } => "error",
            HookFailure::Trapped { .. } => "trap",
            HookFailure::OutOfMemory { .. } => "out-of-memory",
            HookFailure::TimedOut { .. } => "timeout",
            HookFailure::PermitLost { .. } => "permit-lost",
            HookFailure::Interrupted { .. } => "interrupted",
            HookFailure::Unusable { .. } => "unusable",
            HookFailure::Sandbox(_) => "sandbox",
        }
    }
}

/// Per-instance state inside the wasmtime store.
pub struct StoreState {
    wasi: WasiCtx,
    table: ResourceTable,
    memory: MemoryCap,
    gate: Arc<Gate>,
    log: LogContext,
    /// Where `log()` goes: capped and rate limited with stdout and stderr.
    output: sandbox::Output,
    config: Arc<BTreeMap<String, String>>,
    resignation: Option<String>,
    state: Option<Arc<dyn StateStore>>,
    http: WasiHttpCtx,
    egress: Egress,
    /// The slot the running scheduled `tick` is for (`slots.current`).
    slot: Option<SlotFacts>,
}

impl WasiView for StoreState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

impl WasiHttpView for StoreState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView { ctx: &mut self.http, table: &mut self.table, hooks: &mut self.egress }
    }
}

impl bindings::zkrun::plugin::types::Host for StoreState {}

impl bindings::zkrun::plugin::host::Host for StoreState {
    async fn log(&mut self, level: Level, message: String) -> wasmtime::Result<()> {
        self.gate.check()?;
        self.output.log(level, &message);
        Ok(())
    }

    async fn config(&mut self, key: String) -> wasmtime::Result<Option<String>> {
        self.gate.check()?;
        Ok(self.config.get(&key).cloned())
    }

    async fn config_entries(&mut self) -> wasmtime::Result<Vec<(String, String)>> {
        self.gate.check()?;
        Ok(self.config.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
    }

    async fn resign(&mut self, reason: String) -> wasmtime::Result<()> {
        self.gate.check()?;
        // Through the one door now: the reason reaches a log line later.
        self.resignation = Some(self.output.charge(&reason));
        Ok(())
    }
}

/// The `slots` interface: which slot the running `tick` is for.
impl bindings::zkrun::plugin::slots::Host for StoreState {
    async fn current(&mut self) -> wasmtime::Result<Option<bindings::zkrun::plugin::slots::Slot>> {
        self.gate.check()?;
        Ok(self.slot.as_ref().map(|slot| bindings::zkrun::plugin::slots::Slot {
            id: slot.id.clone(),
            due_ms: slot.at_ms,
            attempt: slot.attempt,
            previous: slot.previous.clone(),
        }))
    }
}

/// The `state` interface. Reads are allowed in every hook; writes only in a
/// leader hook whose permit holds (otherwise `not-leader`, without asking
/// ZooKeeper), and then the store fences them again. A call that would
/// outlive the hook's deadline traps.
impl wit_state::Host for StoreState {
    async fn get(
        &mut self,
        key: String,
    ) -> wasmtime::Result<Result<Option<wit_state::Entry>, wit_state::StateError>> {
        self.gate.check_time()?;
        let Some(store) = self.state.clone() else { return Ok(Err(no_store())) };
        let result = within(self.gate.remaining(), store.get(&key)).await?;
        Ok(result
            .map(|entry| entry.map(|e| wit_state::Entry { value: e.value, version: e.version }))
            .map_err(to_wit))
    }

    async fn put(
        &mut self,
        key: String,
        value: Vec<u8>,
    ) -> wasmtime::Result<Result<u32, wit_state::StateError>> {
        let Some(store) = self.writable()? else { return Ok(Err(wit_state::StateError::NotLeader)) };
        Ok(within(self.gate.remaining(), store.put(&key, value)).await?.map_err(to_wit))
    }

    async fn delete(&mut self, key: String) -> wasmtime::Result<Result<bool, wit_state::StateError>> {
        let Some(store) = self.writable()? else { return Ok(Err(wit_state::StateError::NotLeader)) };
        Ok(within(self.gate.remaining(), store.delete(&key)).await?.map_err(to_wit))
    }

    async fn compare_and_set(
        &mut self,
        key: String,
        expected: Option<u32>,
        value: Vec<u8>,
    ) -> wasmtime::Result<Result<u32, wit_state::StateError>> {
        let Some(store) = self.writable()? else { return Ok(Err(wit_state::StateError::NotLeader)) };
        Ok(within(self.gate.remaining(), store.compare_and_set(&key, expected, value)).await?.map_err(to_wit))
    }
}

impl StoreState {
    /// The slot the running tick is for, in the one place that holds it:
    /// `slots.current` returns it, and egress stamps its id as `zkrun-slot`.
    fn set_slot(&mut self, slot: Option<SlotFacts>) {
        self.egress.set_slot(slot.as_ref().map(|s| s.id.clone()));
        self.slot = slot;
    }

    /// The store, if the running hook may write; traps past the deadline.
    fn writable(&self) -> wasmtime::Result<Option<Arc<dyn StateStore>>> {
        self.gate.check_time()?;
        if self.gate.leads() {
            return Ok(self.state.clone());
        }
        tracing::warn!(
            event = "write_refused",
            plugin = &*self.log.plugin,
            id = &*self.log.participant,
            term = self.log.term,
            "a state write outside confirmed leadership was refused without asking ZooKeeper"
        );
        Ok(None)
    }
}

/// Waits for a state operation, but not past the hook's deadline.
async fn within<T>(
    remaining: Duration,
    operation: impl std::future::Future<Output = T>,
) -> wasmtime::Result<T> {
    tokio::time::timeout(remaining, operation)
        .await
        .map_err(|_| wasmtime::Error::new(Stop::TimedOut(remaining)))
}

fn no_store() -> wit_state::StateError {
    wit_state::StateError::Unavailable("this instance has no state store".into())
}

fn to_wit(error: StateError) -> wit_state::StateError {
    match error {
        StateError::NotLeader => wit_state::StateError::NotLeader,
        StateError::Conflict => wit_state::StateError::Conflict,
        StateError::TooLarge(_) => wit_state::StateError::TooLarge(crate::state::MAX_VALUE as u32),
        StateError::BadKey(reason) => wit_state::StateError::BadKey(reason),
        StateError::Unavailable(reason) => wit_state::StateError::Unavailable(reason),
        // Plugins built against 0.1.0 and 0.1.1 know no quota case: they get
        // `unavailable` with a text that starts with "quota exceeded".
        quota @ StateError::QuotaExceeded(_) => wit_state::StateError::Unavailable(quota.to_string()),
    }
}

/// Compiles plugins and creates their instances. One per process.
pub struct Runtime {
    engine: Engine,
    linker: Linker<StoreState>,
    ticker: EpochTicker,
    config: RuntimeConfig,
    config_map: Arc<BTreeMap<String, String>>,
    participant: Arc<str>,
    http: Arc<HttpPolicy>,
}

impl Runtime {
    /// Sets up the engine (component model, epoch interruption) and the linker
    /// (WASI 0.2, `wasi:http/outgoing-handler` and the `host` interface).
    pub fn new(config: RuntimeConfig) -> anyhow::Result<Runtime> {
        let engine = engine()?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(anyhow::Error::from)?;
        // Linked always, so a plugin that imports it loads; what it may reach
        // is the operator's grant, none by default.
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker).map_err(anyhow::Error::from)?;
        held::guard(&mut linker).map_err(anyhow::Error::from)?;
        Job::add_to_linker::<StoreState, HasSelf<StoreState>>(&mut linker, |state| state)
            .map_err(anyhow::Error::from)?;
        let ticker = EpochTicker::start(engine.clone());
        Ok(Runtime {
            engine,
            linker,
            ticker,
            config_map: Arc::new(config.config.clone()),
            participant: Arc::from(config.participant.as_str()),
            http: Arc::new(HttpPolicy { allow: config.grants.http.clone(), limits: config.http }),
            config,
        })
    }

    /// The settings in force.
    pub fn config(&self) -> &RuntimeConfig {
        &self.config
    }

    /// Reads, compiles and checks a plugin, within the compile limits.
    /// Blocks for as long as compiling takes (milliseconds to seconds): call
    /// it from a blocking context.
    pub fn load(&self, path: &Path) -> Result<Plugin, LoadError> {
        let started = Instant::now();
        let validate::Compiled { component, sha256, cached, compile_peak } =
            validate::compile(&self.engine, path, &self.config.compile)?;
        let interface = validate::check_interface(&self.engine, path, &component)?;
        let pre = self
            .linker
            .instantiate_pre(&component)
            .map_err(|e| validate::unsatisfied_import(&self.engine, path, &component, &e))?;
        let pre =
            JobPre::new(pre).map_err(|e| LoadError::Incompatible(path.into(), validate::first_line(&e)))?;
        // The file's name is the plugin's name in logs, metrics and the
        // election node: whoever named the file controls it.
        let name = path
            .file_stem()
            .map(|s| crate::text::guest(&s.to_string_lossy(), crate::text::MAX_NAME))
            .unwrap_or_else(|| "plugin".into());
        Ok(Plugin {
            inner: Arc::new(PluginInner {
                name: Arc::from(name.as_str()),
                path: path.to_path_buf(),
                pre,
                interface,
                compile_time: started.elapsed(),
                sha256,
                cached,
                compile_peak,
            }),
        })
    }

    /// Creates a fresh instance of `plugin` for `term` (`None` for an
    /// instance that serves no term, such as a check), with the term's
    /// fenced state, if any. Bounded by the hook timeout.
    pub async fn instantiate(
        &self,
        plugin: &Plugin,
        term: Option<u64>,
        state: Option<Arc<dyn StateStore>>,
    ) -> Result<Instance, HookFailure> {
        self.instantiate_for(plugin, term, state, None, Interrupter::new()).await
    }

    /// Like [`Runtime::instantiate`], for leader work: the component's start
    /// code runs under `permit` too, and `interrupter` (created before the
    /// call, so nothing can slip between) stops it and the instance's hooks.
    pub async fn instantiate_for(
        &self,
        plugin: &Plugin,
        term: Option<u64>,
        state: Option<Arc<dyn StateStore>>,
        permit: Option<Arc<dyn Permit>>,
        interrupter: Interrupter,
    ) -> Result<Instance, HookFailure> {
        let gate = interrupter.0;
        let log =
            LogContext { plugin: plugin.inner.name.clone(), participant: self.participant.clone(), term };
        let output = sandbox::Output::new(log.clone(), self.config.output);
        let wasi = sandbox::wasi_context(&self.config.grants, &gate, &output)
            .map_err(|e| HookFailure::Sandbox(validate::first_line(&e)))?;
        let mut table = ResourceTable::new();
        table.set_max_capacity(held::MAX_RESOURCES);
        let mut http = WasiHttpCtx::new();
        http.set_field_size_limit(held::FIELDS_LIMIT);
        let state = StoreState {
            wasi,
            table,
            memory: MemoryCap::new(self.config.memory_limit),
            gate: gate.clone(),
            egress: Egress::new(self.http.clone(), gate.clone(), log.clone()),
            log,
            output,
            config: self.config_map.clone(),
            resignation: None,
            state,
            http,
            slot: None,
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|state| &mut state.memory);
        // Every epoch tick: yield to the executor, then go on only if the gate
        // (deadline, permit, interrupt) still allows it.
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(|ctx| match ctx.data().gate.check() {
            Ok(()) => Ok(UpdateDeadline::Yield(1)),
            Err(stop) => Err(wasmtime::Error::new(stop)),
        });
        gate.open(self.config.hook_timeout, permit);
        let ticking = self.ticker.hold();
        let job = match gate.check() {
            Ok(()) => bounded(&gate, plugin.inner.pre.instantiate_async(&mut store)).await,
            Err(stop) => Err(wasmtime::Error::new(stop)),
        };
        drop(ticking);
        gate.close();
        match job {
            Ok(job) => Ok(Instance {
                store,
                job,
                gate,
                healthy: true,
                ticking: None,
                ticker: self.ticker.clone(),
                timeout: self.config.hook_timeout,
                plugin: plugin.clone(),
            }),
            Err(error) => Err(told(&store.data().output, classify(Hook::Instantiate, error))),
        }
    }
}

/// The engine every plugin runs on. `zkrun compile` builds the same one, so
/// that what a compiler child serializes, this process can load.
pub fn engine() -> anyhow::Result<Engine> {
    let mut wasm = Config::new();
    wasm.wasm_component_model(true).epoch_interruption(true);
    Engine::new(&wasm).map_err(anyhow::Error::from)
}

/// Compiles `wasm` for [`engine`] and serializes the result: the work of a
/// [`Compiler::Subprocess`] child (`zkrun compile`).
pub fn compile_to_bytes(wasm: &[u8]) -> anyhow::Result<Vec<u8>> {
    let engine = engine()?;
    let component = wasmtime::component::Component::new(&engine, wasm).map_err(anyhow::Error::from)?;
    component.serialize().map_err(anyhow::Error::from)
}

/// Runs `call` (a hook call or an instantiation) until it finishes or the
/// gate says stop, whichever comes first. The guest may be waiting inside a
/// host call, where epoch interruption cannot reach it: dropping the call's
/// future abandons it there, and the caller never uses the store again.
async fn bounded<T>(gate: &Gate, call: impl Future<Output = wasmtime::Result<T>>) -> wasmtime::Result<T> {
    tokio::select! {
        // Polled first: a call that finishes at once never starts the watchdog.
        biased;
        result = call => result,
        stop = gate.stopped() => Err(wasmtime::Error::new(stop)),
    }
}

/// A compiled, checked plugin. Cheap to clone.
#[derive(Clone)]
pub struct Plugin {
    inner: Arc<PluginInner>,
}

struct PluginInner {
    name: Arc<str>,
    path: PathBuf,
    pre: JobPre<StoreState>,
    interface: Interface,
    compile_time: Duration,
    sha256: String,
    cached: bool,
    compile_peak: Option<u64>,
}

impl Plugin {
    /// The plugin's name: its file name without `.wasm`.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The file it was loaded from.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// What it imports and exports.
    pub fn interface(&self) -> &Interface {
        &self.inner.interface
    }

    /// How long reading, compiling (or loading from the cache) and checking took.
    pub fn compile_time(&self) -> Duration {
        self.inner.compile_time
    }

    /// The hex sha256 of the component file: which code this is.
    pub fn sha256(&self) -> &str {
        &self.inner.sha256
    }

    /// Whether the compiled code came from the compiled-code cache.
    pub fn from_cache(&self) -> bool {
        self.inner.cached
    }

    /// The compiler child's peak resident memory in bytes, if a child
    /// compiled this plugin (not when it came from the cache).
    pub fn compile_peak(&self) -> Option<u64> {
        self.inner.compile_peak
    }
}

impl fmt::Debug for Plugin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Plugin").field("name", &self.inner.name).field("path", &self.inner.path).finish()
    }
}

/// One instance of a plugin: serves one term, then is dropped.
pub struct Instance {
    store: Store<StoreState>,
    job: Job,
    gate: Arc<Gate>,
    healthy: bool,
    ticking: Option<TickerGuard>,
    ticker: EpochTicker,
    timeout: Duration,
    plugin: Plugin,
}

impl Instance {
    /// Calls `on-elected`, bounded by the deadline and `permit`.
    pub async fn on_elected(&mut self, facts: &Facts, permit: Arc<dyn Permit>) -> Result<(), HookFailure> {
        self.enter(Hook::OnElected, Some((permit, facts)))?;
        let result = bounded(&self.gate, self.job.call_on_elected(&mut self.store, &facts.to_wit())).await;
        self.leave(Hook::OnElected, result)
    }

    /// Calls `tick`, bounded by the deadline and `permit`.
    pub async fn tick(&mut self, facts: &Facts, permit: Arc<dyn Permit>) -> Result<(), HookFailure> {
        self.enter(Hook::Tick, Some((permit, facts)))?;
        let result = bounded(&self.gate, self.job.call_tick(&mut self.store, &facts.to_wit())).await;
        self.leave(Hook::Tick, result)
    }

    /// Calls `tick` for a scheduled slot: bounded by `deadline` (the run
    /// timeout, not the hook timeout) and `permit`; `slots.current` returns
    /// the slot, and HTTP requests carry its id in `zkrun-slot`.
    pub async fn tick_within(
        &mut self,
        facts: &Facts,
        permit: Arc<dyn Permit>,
        deadline: Duration,
        slot: &SlotFacts,
    ) -> Result<(), HookFailure> {
        let hook_timeout = std::mem::replace(&mut self.timeout, deadline);
        self.store.data_mut().set_slot(Some(slot.clone()));
        let result = self.tick(facts, permit).await;
        self.store.data_mut().set_slot(None);
        self.timeout = hook_timeout;
        result
    }

    /// Calls `on-demoted`, bounded by the deadline only.
    pub async fn on_demoted(&mut self, reason: DemoteReason) -> Result<(), HookFailure> {
        self.enter(Hook::OnDemoted, None)?;
        let result = bounded(&self.gate, self.job.call_on_demoted(&mut self.store, reason)).await.map(Ok);
        self.leave(Hook::OnDemoted, result)
    }

    /// A handle that stops this instance's leader hooks at once.
    pub fn interrupter(&self) -> Interrupter {
        Interrupter(self.gate.clone())
    }

    /// Whether hooks can still be called (no trap, timeout or interruption).
    pub fn is_healthy(&self) -> bool {
        self.healthy
    }

    /// The reason the plugin gave if it called `resign` (taken once).
    pub fn take_resignation(&mut self) -> Option<String> {
        self.store.data_mut().resignation.take()
    }

    /// The plugin this instance runs.
    pub fn plugin(&self) -> &Plugin {
        &self.plugin
    }

    /// Opens the gate for `hook`; a leader hook brings its permit and the
    /// facts its HTTP requests are stamped with.
    fn enter(&mut self, hook: Hook, leader: Option<(Arc<dyn Permit>, &Facts)>) -> Result<(), HookFailure> {
        if !self.healthy {
            return Err(HookFailure::Unusable { hook });
        }
        let (permit, facts) = leader.unzip();
        self.store.data_mut().egress.enter_hook(facts);
        self.store.data().output.hook_started();
        self.gate.open(self.timeout, permit);
        if let Err(stop) = self.gate.check() {
            // Refused before the guest ran (an interrupt or a lapsed permit
            // got here first): the instance is still intact.
            self.gate.close();
            return Err(from_stop(hook, stop));
        }
        // Unhealthy until the call completes: a call abandoned half-way
        // (its future dropped) leaves the store unusable.
        self.healthy = false;
        self.ticking = Some(self.ticker.hold());
        self.store.set_epoch_deadline(1);
        Ok(())
    }

    fn leave(&mut self, hook: Hook, result: wasmtime::Result<Result<(), String>>) -> Result<(), HookFailure> {
        self.ticking = None;
        self.gate.close();
        match result {
            Ok(Ok(())) => {
                self.healthy = true;
                Ok(())
            }
            Ok(Err(message)) => {
                self.healthy = true;
                Err(told(&self.store.data().output, HookFailure::Returned { hook, message }))
            }
            Err(error) => Err(told(&self.store.data().output, classify(hook, error))),
        }
    }
}

/// A failure as zkrun tells it: the guest's own text in it (its error
/// string; a trap's message, which names guest functions, with what the
/// guest last said on stderr, such as its panic message or the last line
/// of its traceback) passes the one door and is charged to the instance's
/// output budget.
fn told(output: &sandbox::Output, failure: HookFailure) -> HookFailure {
    match failure {
        HookFailure::Returned { hook, message } => {
            HookFailure::Returned { hook, message: output.charge(&message) }
        }
        HookFailure::Trapped { hook, message } => {
            let message = match output.last_words() {
                Some(words) => format!("{message}; the plugin said: {words}"),
                None => message,
            };
            HookFailure::Trapped { hook, message: output.charge(&message) }
        }
        other => other,
    }
}

/// Turns a wasmtime error from a hook into the failure it stands for.
fn classify(hook: Hook, error: wasmtime::Error) -> HookFailure {
    if let Some(stop) = error.downcast_ref::<Stop>() {
        return from_stop(hook, stop.clone());
    }
    let mut message = cause_chain(&error);
    if let Some(trace) = error.downcast_ref::<wasmtime::WasmBacktrace>()
        && let Some(name) = trace.frames().iter().find_map(|f| f.func_name())
    {
        message.push_str(&format!(" (in {name})"));
    }
    HookFailure::Trapped { hook, message }
}

fn from_stop(hook: Hook, stop: Stop) -> HookFailure {
    match stop {
        Stop::TimedOut(_) => HookFailure::TimedOut { hook, stop },
        Stop::OutOfMemory { .. } | Stop::HostMemory { .. } | Stop::TooMany { .. } => {
            HookFailure::OutOfMemory { hook, stop }
        }
        Stop::PermitLost => HookFailure::PermitLost { hook },
        Stop::Interrupted => HookFailure::Interrupted { hook },
    }
}

/// Every cause of `error` on one line, outermost first, leaving out the wasm
/// backtrace (whose display spans lines and names no cause).
fn cause_chain(error: &wasmtime::Error) -> String {
    let causes: Vec<String> = error
        .chain()
        .filter_map(|cause| {
            let text = cause.to_string();
            let line = text.lines().next().unwrap_or_default().trim().trim_end_matches(':').to_string();
            (!line.is_empty() && !line.starts_with("error while executing at wasm backtrace")).then_some(line)
        })
        .collect();
    let mut line = causes.join(": ");
    if line.is_empty() {
        line = "unknown trap".into();
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trap_keeps_every_cause_on_one_line() {
        let error = wasmtime::Error::msg("permission denied")
            .context("failed to write to stdout")
            .context(wasmtime::Trap::UnreachableCodeReached);
        let line = cause_chain(&error);
        assert!(!line.contains('\n'), "{line}");
        assert!(line.contains("unreachable") && line.contains("failed to write to stdout"), "{line}");
        assert!(line.ends_with("permission denied"), "{line}");
    }
}
