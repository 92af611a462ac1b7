//! What bounds a running hook: a deadline, a permit, an interrupt flag (all
//! checked at every epoch tick and every host call, and watched by
//! [`Gate::stopped`] while the guest waits inside a host call), and one
//! budget for everything the guest can make the host allocate.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

/// How often a running hook is checked against its deadline and permit.
pub const EPOCH_TICK: Duration = Duration::from_millis(1);

/// Decides whether a leader hook may keep running. The runtime does not know
/// why (the host wires it to the election lease); it only asks, at every
/// epoch tick and before every host call.
pub trait Permit: Send + Sync {
    /// Whether leader work may continue right now.
    fn holds(&self) -> bool;
}

impl<F: Fn() -> bool + Send + Sync> Permit for F {
    fn holds(&self) -> bool {
        self()
    }
}

/// Why the host stopped a running hook. Carried inside the trap, so the
/// caller can tell a plugin's fault from the host's decision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Stop {
    /// The hook ran past its deadline.
    TimedOut(Duration),
    /// The permit was withdrawn (leadership lost) while the hook ran.
    PermitLost,
    /// The host interrupted the hook.
    Interrupted,
    /// Linear memory or tables would have grown past the cap.
    OutOfMemory { limit: usize, wanted: usize },
    /// What the host holds for the guest (`wasi:http` resources), with the
    /// guest's memories and tables, would have passed the cap.
    HostMemory { limit: usize, wanted: usize },
    /// The component would have created more instances, tables or memories
    /// than the host allows.
    TooMany { what: &'static str, limit: usize },
}

impl fmt::Display for Stop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Stop::TimedOut(limit) => {
                write!(f, "ran past its {} deadline", humantime::format_duration(*limit))
            }
            Stop::PermitLost => f.write_str("was stopped: leadership can no longer be confirmed"),
            Stop::Interrupted => f.write_str("was interrupted by the host"),
            Stop::OutOfMemory { limit, wanted } => {
                write!(
                    f,
                    "tried to grow its memory and tables to {} MiB, past the {} MiB cap",
                    wanted >> 20,
                    limit >> 20
                )
            }
            Stop::HostMemory { limit, wanted } => write!(
                f,
                "made the host hold wasi:http resources for it: {} MiB with its memory, past the {} MiB cap",
                wanted >> 20,
                limit >> 20
            ),
            Stop::TooMany { what, limit } => write!(f, "tried to create more than {limit} {what}"),
        }
    }
}

impl std::error::Error for Stop {}

/// The bounds of the hook running on one instance, shared by the epoch
/// callback, the host calls, the output streams and the watchdog of that
/// instance.
#[derive(Default)]
pub struct Gate {
    /// Set by [`Interrupter::interrupt`]; consumed by the next leader hook
    /// that ends or is refused because of it, so an interrupt sent before a
    /// hook has started is not lost.
    interrupted: AtomicBool,
    /// Wakes [`Gate::stopped`] at once on an interrupt or a hook's end.
    wake: Notify,
    bounds: Mutex<Option<Bounds>>,
    /// Numbers the hooks run through this gate, so that work a hook started
    /// (an HTTP request) can tell its own hook from the next one.
    hooks: AtomicU64,
}

#[derive(Clone)]
struct Bounds {
    /// Which hook these bounds are for (see [`Gate::hook`]).
    hook: u64,
    started: Instant,
    limit: Duration,
    permit: Option<Arc<dyn Permit>>,
}

impl Gate {
    /// Opens the gate for one hook: `limit` from now, and the permit if it is
    /// a leader hook.
    pub fn open(&self, limit: Duration, permit: Option<Arc<dyn Permit>>) {
        let hook = self.hooks.fetch_add(1, Ordering::Relaxed) + 1;
        *self.bounds.lock().unwrap() = Some(Bounds { hook, started: Instant::now(), limit, permit });
    }

    /// Closes the gate after a hook returns: host calls outside hooks fail.
    /// A leader hook's end consumes the interrupt that was aimed at it.
    pub fn close(&self) {
        if let Some(bounds) = self.bounds.lock().unwrap().take()
            && bounds.permit.is_some()
        {
            self.interrupted.store(false, Ordering::Release);
        }
        // Work a hook started and outlives it stops now (see `Gate::stopped_hook`).
        self.wake.notify_waiters();
    }

    /// The running hook's number, if one runs. Work that must not outlive
    /// the hook that started it checks with [`Gate::check_hook`].
    pub fn hook(&self) -> Option<u64> {
        self.bounds.lock().unwrap().as_ref().map(|b| b.hook)
    }

    /// Whether the running hook may go on; `Err` says why not.
    pub fn check(&self) -> Result<(), Stop> {
        self.check_bounds(None)
    }

    /// Like [`Gate::check`], and also refuses once hook number `hook` has
    /// ended, even if another hook runs now.
    pub fn check_hook(&self, hook: u64) -> Result<(), Stop> {
        self.check_bounds(Some(hook))
    }

    fn check_bounds(&self, hook: Option<u64>) -> Result<(), Stop> {
        let bounds = self.bounds.lock().unwrap().clone();
        let Some(bounds) = bounds.filter(|b| hook.is_none_or(|h| h == b.hook)) else {
            // No hook (or not that hook) is running: nothing the plugin does
            // now is allowed.
            return Err(Stop::Interrupted);
        };
        if let Some(permit) = &bounds.permit {
            if self.interrupted.load(Ordering::Acquire) {
                return Err(Stop::Interrupted);
            }
            if !permit.holds() {
                return Err(Stop::PermitLost);
            }
        }
        if bounds.started.elapsed() > bounds.limit {
            return Err(Stop::TimedOut(bounds.limit));
        }
        Ok(())
    }

    /// Like [`Gate::check`] but without the permit: for host calls that are
    /// allowed outside leadership (reads) or answer its loss themselves.
    pub fn check_time(&self) -> Result<(), Stop> {
        let bounds = self.bounds.lock().unwrap().clone();
        match bounds {
            None => Err(Stop::Interrupted),
            Some(b) if b.started.elapsed() > b.limit => Err(Stop::TimedOut(b.limit)),
            Some(_) => Ok(()),
        }
    }

    /// Whether the running hook is a leader hook whose permit holds.
    pub fn leads(&self) -> bool {
        let bounds = self.bounds.lock().unwrap().clone();
        bounds.and_then(|b| b.permit).is_some_and(|p| p.holds()) && !self.interrupted.load(Ordering::Acquire)
    }

    /// What is left of the running hook's deadline.
    pub fn remaining(&self) -> Duration {
        let bounds = self.bounds.lock().unwrap().clone();
        bounds.map(|b| b.limit.saturating_sub(b.started.elapsed())).unwrap_or_default()
    }

    /// Resolves, with the reason, once the running hook must stop: at its
    /// deadline, when its permit lapses, or at once on an interrupt. Epoch
    /// interruption only stops a guest that runs wasm; this stops one that
    /// waits inside a host call (a sleep, a poll, a slow state write) too,
    /// when the caller races it against the call.
    pub async fn stopped(&self) -> Stop {
        self.stopped_bounds(None).await
    }

    /// Like [`Gate::stopped`], and also resolves when hook number `hook`
    /// ends: for work a hook started that must not outlive it.
    pub async fn stopped_hook(&self, hook: u64) -> Stop {
        self.stopped_bounds(Some(hook)).await
    }

    async fn stopped_bounds(&self, hook: Option<u64>) -> Stop {
        loop {
            let woken = self.wake.notified();
            if let Err(stop) = self.check_bounds(hook) {
                return stop;
            }
            // The permit has no wake-up of its own (a lease lapses by the
            // clock), so look again at every watchdog tick.
            let next = self.remaining().min(WATCHDOG_TICK);
            tokio::select! {
                _ = woken => {}
                _ = tokio::time::sleep(next) => {}
            }
        }
    }

    fn interrupt(&self) {
        self.interrupted.store(true, Ordering::Release);
        self.wake.notify_waiters();
    }
}

/// How often [`Gate::stopped`] looks at a permit while the guest waits in a
/// host call: a lapsed lease stops such a hook within this.
pub const WATCHDOG_TICK: Duration = Duration::from_millis(5);

/// A handle that stops an instance's leader hooks at once, from any thread.
#[derive(Clone)]
pub struct Interrupter(pub(crate) Arc<Gate>);

impl Default for Interrupter {
    fn default() -> Self {
        Interrupter::new()
    }
}

impl Interrupter {
    /// A handle for an instance not created yet: pass it to
    /// `Runtime::instantiate_for`, so an interrupt sent at any moment after
    /// this, even before instantiation, is not lost.
    pub fn new() -> Interrupter {
        Interrupter(Arc::new(Gate::default()))
    }

    /// Stops the running leader hook (or the leader instantiation) within
    /// one epoch tick, even while it waits inside a host call, and refuses
    /// its host calls; if none runs, the next leader hook is refused before
    /// it starts. `on-demoted` is never interrupted this way.
    pub fn interrupt(&self) {
        self.0.interrupt();
    }
}

/// How many core instances, tables and memories one plugin instance may
/// create. Generous for real components (a componentize-py one has a few
/// dozen core instances), tight enough that counts cannot dodge the byte cap.
pub const MAX_INSTANCES: usize = 200;
/// See [`MAX_INSTANCES`].
pub const MAX_TABLES: usize = 200;
/// See [`MAX_INSTANCES`].
pub const MAX_MEMORIES: usize = 32;

/// What one table element costs the host (a function reference is a pointer
/// in wasmtime's table representation).
const TABLE_ELEMENT_BYTES: usize = std::mem::size_of::<usize>();

/// One budget, in bytes, for everything the guest can make the host allocate
/// in its instance: linear memories and tables, across every core instance,
/// and what the host holds for it through `wasi:http` (see `held.rs`).
pub struct MemoryCap {
    limit: usize,
    /// Memories and tables.
    used: usize,
    /// What the host held for the guest when last counted.
    host: usize,
}

impl MemoryCap {
    /// A cap of `limit` bytes over all memories and tables of the instance.
    pub fn new(limit: usize) -> MemoryCap {
        MemoryCap { limit, used: 0, host: 0 }
    }

    /// Accounts for one memory or table growing from `current` to `desired`
    /// bytes, or refuses it with a trap we can recognise.
    fn grow(&mut self, current: usize, desired: usize) -> wasmtime::Result<bool> {
        let wanted = (self.used - current.min(self.used)).saturating_add(desired);
        if wanted.saturating_add(self.host) > self.limit {
            // An error (not `false`) traps at once with a reason we can
            // recognise, instead of letting the guest's allocator abort.
            let wanted = wanted.saturating_add(self.host);
            return Err(wasmtime::Error::new(Stop::OutOfMemory { limit: self.limit, wanted }));
        }
        self.used = wanted;
        Ok(true)
    }

    /// Records that the host now holds `held` bytes for the guest, and
    /// admits `more`, or refuses it if memories, tables and host holdings
    /// together would pass the cap.
    pub fn hold(&mut self, held: usize, more: usize) -> Result<(), Stop> {
        self.host = held;
        let wanted = self.used.saturating_add(held).saturating_add(more);
        if wanted > self.limit {
            return Err(Stop::HostMemory { limit: self.limit, wanted });
        }
        self.host = held + more;
        Ok(())
    }
}

impl wasmtime::ResourceLimiter for MemoryCap {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        self.grow(current, desired)
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        // Called for a table's initial size too, so a component cannot
        // declare its way past the cap.
        self.grow(current.saturating_mul(TABLE_ELEMENT_BYTES), desired.saturating_mul(TABLE_ELEMENT_BYTES))
    }

    fn instances(&self) -> usize {
        MAX_INSTANCES
    }

    fn tables(&self) -> usize {
        MAX_TABLES
    }

    fn memories(&self) -> usize {
        MAX_MEMORIES
    }
}

/// Advances the engine's epoch every [`EPOCH_TICK`] while any hook runs, and
/// sleeps otherwise, so an idle zkrun costs no CPU. Clones share the thread.
#[derive(Clone)]
pub struct EpochTicker {
    running: Arc<(Mutex<Ticking>, Condvar)>,
}

/// The ticker's state, under its mutex.
#[derive(Default)]
struct Ticking {
    /// Hooks running now.
    hooks: usize,
    /// Whether the ticker thread waits on the condvar (and so needs a wake).
    parked: bool,
}

/// How many idle epoch ticks the ticker runs on after the last hook ends
/// before it parks. Waking a parked thread costs a system call and a
/// context switch, more than the rest of a hook call together: hooks that
/// follow each other closely (a fast tick, on-demoted after a tick) find it
/// still running.
const LINGER_TICKS: u32 = 50;

impl EpochTicker {
    /// Starts the ticker thread for `engine`.
    pub fn start(engine: wasmtime::Engine) -> EpochTicker {
        let running = Arc::new((Mutex::new(Ticking::default()), Condvar::new()));
        let shared = running.clone();
        // A plain OS thread, not a tokio task: it must tick even when every
        // runtime worker is busy running wasm.
        std::thread::Builder::new()
            .name("zkrun-epoch".into())
            .spawn(move || {
                let (state, wake) = &*shared;
                let mut idle = 0u32;
                loop {
                    let mut ticking = state.lock().unwrap();
                    idle = if ticking.hooks == 0 { idle + 1 } else { 0 };
                    if idle > LINGER_TICKS {
                        ticking.parked = true;
                        while ticking.hooks == 0 {
                            ticking = wake.wait(ticking).unwrap();
                        }
                        ticking.parked = false;
                        idle = 0;
                    }
                    drop(ticking);
                    std::thread::sleep(EPOCH_TICK);
                    engine.increment_epoch();
                }
            })
            .expect("spawn epoch ticker");
        EpochTicker { running }
    }

    /// Keeps the ticker running until the returned guard is dropped.
    pub fn hold(&self) -> TickerGuard {
        let (state, wake) = &*self.running;
        let mut ticking = state.lock().unwrap();
        ticking.hooks += 1;
        if ticking.parked {
            wake.notify_one();
        }
        TickerGuard { running: self.running.clone() }
    }
}

/// Keeps the epoch ticking while a hook runs.
pub struct TickerGuard {
    running: Arc<(Mutex<Ticking>, Condvar)>,
}

impl Drop for TickerGuard {
    fn drop(&mut self) {
        self.running.0.lock().unwrap().hooks -= 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasmtime::ResourceLimiter;

    #[test]
    fn memory_cap_counts_all_memories() {
        let mut cap = MemoryCap::new(10 << 20);
        assert!(cap.memory_growing(0, 4 << 20, None).unwrap());
        assert!(cap.memory_growing(0, 4 << 20, None).unwrap());
        let err = cap.memory_growing(4 << 20, 7 << 20, None).unwrap_err();
        assert!(matches!(err.downcast_ref::<Stop>(), Some(Stop::OutOfMemory { .. })));
    }

    #[test]
    fn tables_count_against_the_same_cap() {
        let mut cap = MemoryCap::new(64 << 20);
        // A 1 M-entry table is 8 MiB of host memory.
        for _ in 0..7 {
            assert!(cap.table_growing(0, 1 << 20, None).unwrap());
        }
        // What tables hold, memories cannot have: 8 MiB is left, not 9.
        assert!(cap.memory_growing(0, 9 << 20, None).is_err());
        assert!(cap.memory_growing(0, 8 << 20, None).unwrap());
        let err = cap.table_growing(0, 1, None).unwrap_err();
        assert!(matches!(err.downcast_ref::<Stop>(), Some(Stop::OutOfMemory { .. })));
    }

    #[test]
    fn host_holdings_share_the_cap_with_memories() {
        let mut cap = MemoryCap::new(10 << 20);
        assert!(cap.memory_growing(0, 4 << 20, None).unwrap());
        assert_eq!(cap.hold(0, 5 << 20), Ok(()));
        // 4 + 5 held: a 2 MiB memory does not fit, nor 2 MiB more held.
        assert!(cap.memory_growing(0, 2 << 20, None).is_err());
        assert!(matches!(cap.hold(5 << 20, 2 << 20), Err(Stop::HostMemory { .. })));
        // Once the host holds less, both fit again.
        assert_eq!(cap.hold(1 << 20, 2 << 20), Ok(()));
        assert!(cap.memory_growing(0, 2 << 20, None).unwrap());
    }

    #[test]
    fn gate_refuses_outside_hooks_and_after_interrupt() {
        let gate = Arc::new(Gate::default());
        assert_eq!(gate.check(), Err(Stop::Interrupted));
        let permit: Arc<dyn Permit> = Arc::new(|| true);
        gate.open(Duration::from_secs(60), Some(permit.clone()));
        assert_eq!(gate.check(), Ok(()));
        Interrupter(gate.clone()).interrupt();
        assert_eq!(gate.check(), Err(Stop::Interrupted));
        gate.close();
        // The interrupt ended the hook it was aimed at: the next one starts afresh.
        gate.open(Duration::from_secs(60), Some(permit.clone()));
        assert_eq!(gate.check(), Ok(()));
        gate.close();
        // on-demoted has no permit: an interrupt does not stop it.
        gate.open(Duration::from_secs(60), None);
        Interrupter(gate.clone()).interrupt();
        assert_eq!(gate.check(), Ok(()));
        gate.open(Duration::ZERO, None);
        std::thread::sleep(Duration::from_millis(2));
        assert_eq!(gate.check(), Err(Stop::TimedOut(Duration::ZERO)));
    }

    #[test]
    fn an_interrupt_sent_before_the_hook_starts_is_not_lost() {
        let gate = Arc::new(Gate::default());
        Interrupter(gate.clone()).interrupt();
        let permit: Arc<dyn Permit> = Arc::new(|| true);
        gate.open(Duration::from_secs(60), Some(permit));
        assert_eq!(gate.check(), Err(Stop::Interrupted));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn stopped_wakes_on_interrupt_deadline_and_permit() {
        let gate = Arc::new(Gate::default());
        let permit: Arc<dyn Permit> = Arc::new(|| true);
        gate.open(Duration::from_secs(60), Some(permit));
        let interrupter = Interrupter(gate.clone());
        let (stop, ()) = tokio::join!(gate.stopped(), async move { interrupter.interrupt() });
        assert_eq!(stop, Stop::Interrupted);
        gate.close();

        let valid = Arc::new(AtomicBool::new(true));
        let flag = valid.clone();
        gate.open(Duration::from_secs(60), Some(Arc::new(move || flag.load(Ordering::SeqCst))));
        let lapse = async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            valid.store(false, Ordering::SeqCst);
        };
        let (stop, ()) = tokio::join!(gate.stopped(), lapse);
        assert_eq!(stop, Stop::PermitLost);
        gate.close();
    }

    #[test]
    fn gate_follows_the_permit() {
        let gate = Gate::default();
        let valid = Arc::new(AtomicBool::new(true));
        let flag = valid.clone();
        gate.open(Duration::from_secs(60), Some(Arc::new(move || flag.load(Ordering::SeqCst))));
        assert_eq!(gate.check(), Ok(()));
        valid.store(false, Ordering::SeqCst);
        assert_eq!(gate.check(), Err(Stop::PermitLost));
    }
}
