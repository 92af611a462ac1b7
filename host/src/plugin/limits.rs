//! What bounds a running hook: a deadline, a permit, an interrupt flag (all
//! checked at every epoch tick and every host call), and a memory cap.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

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
    /// Linear memory would have grown past the cap.
    OutOfMemory { limit: usize, wanted: usize },
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
                    "tried to grow linear memory to {} MiB, past the {} MiB cap",
                    wanted >> 20,
                    limit >> 20
                )
            }
        }
    }
}

impl std::error::Error for Stop {}

/// The bounds of the hook running on one instance, shared by the epoch
/// callback, the host calls and the output streams of that instance.
#[derive(Default)]
pub struct Gate {
    /// Set by [`Interrupter::interrupt`]: stops the running leader hook.
    interrupted: AtomicBool,
    bounds: Mutex<Option<Bounds>>,
}

#[derive(Clone)]
struct Bounds {
    started: Instant,
    limit: Duration,
    permit: Option<Arc<dyn Permit>>,
}

impl Gate {
    /// Opens the gate for one hook: `limit` from now, and the permit if it is
    /// a leader hook. An interrupt aimed at an earlier hook does not carry
    /// over: the caller decides to start this one.
    pub fn open(&self, limit: Duration, permit: Option<Arc<dyn Permit>>) {
        self.interrupted.store(false, Ordering::Release);
        *self.bounds.lock().unwrap() = Some(Bounds { started: Instant::now(), limit, permit });
    }

    /// Closes the gate after a hook returns: host calls outside hooks fail.
    pub fn close(&self) {
        *self.bounds.lock().unwrap() = None;
    }

    /// Whether the running hook may go on; `Err` says why not.
    pub fn check(&self) -> Result<(), Stop> {
        let bounds = self.bounds.lock().unwrap().clone();
        let Some(bounds) = bounds else {
            // No hook is running: nothing the plugin does now is allowed.
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

    fn interrupt(&self) {
        self.interrupted.store(true, Ordering::Release);
    }
}

/// A handle that stops an instance's leader hooks at once, from any thread.
#[derive(Clone)]
pub struct Interrupter(pub(crate) Arc<Gate>);

impl Interrupter {
    /// Stops the running leader hook within one epoch tick (and refuses its
    /// host calls). `on-demoted` is never interrupted this way; a hook that
    /// has already returned is not affected.
    pub fn interrupt(&self) {
        self.0.interrupt();
    }
}

/// Caps the total linear memory of one instance.
pub struct MemoryCap {
    limit: usize,
    used: usize,
}

impl MemoryCap {
    /// A cap of `limit` bytes over all memories of the instance.
    pub fn new(limit: usize) -> MemoryCap {
        MemoryCap { limit, used: 0 }
    }
}

impl wasmtime::ResourceLimiter for MemoryCap {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let wanted = self.used - current.min(self.used) + desired;
        if wanted > self.limit {
            // An error (not `false`) traps at once with a reason we can
            // recognise, instead of letting the guest's allocator abort.
            return Err(wasmtime::Error::new(Stop::OutOfMemory { limit: self.limit, wanted }));
        }
        self.used = wanted;
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 1 << 20)
    }
}

/// Advances the engine's epoch every [`EPOCH_TICK`] while any hook runs, and
/// sleeps otherwise, so an idle zkrun costs no CPU. Clones share the thread.
#[derive(Clone)]
pub struct EpochTicker {
    running: Arc<(Mutex<usize>, Condvar)>,
}

impl EpochTicker {
    /// Starts the ticker thread for `engine`.
    pub fn start(engine: wasmtime::Engine) -> EpochTicker {
        let running = Arc::new((Mutex::new(0usize), Condvar::new()));
        let shared = running.clone();
        // A plain OS thread, not a tokio task: it must tick even when every
        // runtime worker is busy running wasm.
        std::thread::Builder::new()
            .name("zkrun-epoch".into())
            .spawn(move || {
                let (count, wake) = &*shared;
                loop {
                    let mut hooks = count.lock().unwrap();
                    while *hooks == 0 {
                        hooks = wake.wait(hooks).unwrap();
                    }
                    drop(hooks);
                    std::thread::sleep(EPOCH_TICK);
                    engine.increment_epoch();
                }
            })
            .expect("spawn epoch ticker");
        EpochTicker { running }
    }

    /// Keeps the ticker running until the returned guard is dropped.
    pub fn hold(&self) -> TickerGuard {
        let (count, wake) = &*self.running;
        *count.lock().unwrap() += 1;
        wake.notify_one();
        TickerGuard { running: self.running.clone() }
    }
}

/// Keeps the epoch ticking while a hook runs.
pub struct TickerGuard {
    running: Arc<(Mutex<usize>, Condvar)>,
}

impl Drop for TickerGuard {
    fn drop(&mut self) {
        *self.running.0.lock().unwrap() -= 1;
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
    fn gate_refuses_outside_hooks_and_after_interrupt() {
        let gate = Arc::new(Gate::default());
        assert_eq!(gate.check(), Err(Stop::Interrupted));
        let permit: Arc<dyn Permit> = Arc::new(|| true);
        gate.open(Duration::from_secs(60), Some(permit.clone()));
        assert_eq!(gate.check(), Ok(()));
        Interrupter(gate.clone()).interrupt();
        assert_eq!(gate.check(), Err(Stop::Interrupted));
        // The next hook starts afresh.
        gate.open(Duration::from_secs(60), Some(permit.clone()));
        assert_eq!(gate.check(), Ok(()));
        // on-demoted has no permit: an interrupt does not stop it.
        gate.open(Duration::from_secs(60), None);
        Interrupter(gate.clone()).interrupt();
        assert_eq!(gate.check(), Ok(()));
        gate.open(Duration::ZERO, None);
        std::thread::sleep(Duration::from_millis(2));
        assert_eq!(gate.check(), Err(Stop::TimedOut(Duration::ZERO)));
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
