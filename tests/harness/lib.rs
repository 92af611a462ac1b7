//! Test harness for zkrun: real ZooKeeper ensembles on loopback, a TCP proxy
//! that can cut one participant off, and zkrun processes whose JSON events
//! the tests read.
//!
//! Everything binds to 127.0.0.1 on free ports, lives in its own temporary
//! directory, and is killed and removed on drop, also when a test panics.
//! Child processes also get `PR_SET_PDEATHSIG`, so they die with the test
//! thread that started them: call the harness from the test body, not from a
//! spawned task.

pub mod capture;
pub mod chaos;
pub mod checker;
pub mod ensemble;
pub mod events;
pub mod hostile;
pub mod paths;
pub mod peer;
pub mod process;
pub mod properties;
pub mod proxy;
pub mod receiver;
pub mod slots;
pub mod tls;

pub use ensemble::{Ensemble, EnsembleOptions};
pub use events::{Event, EventLog};
pub use peer::Peer;
pub use process::Process;
pub use proxy::Proxy;

use std::time::{Duration, Instant};

/// Polls `check` until it returns `Some`, or panics with `what` after `timeout`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return value;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Polls `check` until it returns `Some`, or gives up with `None` after `timeout`.
pub fn wait_for_opt<T>(timeout: Duration, mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return Some(value);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Async flavour of [`wait_for`], for tests running on tokio.
pub async fn wait_for_async<T, F>(what: &str, timeout: Duration, mut check: impl FnMut() -> F) -> T
where
    F: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Reads CLOCK_MONOTONIC in nanoseconds: the clock zkrun stamps its events
/// with, shared by every process on the machine.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes into the timespec we pass.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Makes a spawned child die when the thread that spawned it exits.
pub(crate) fn die_with_parent(command: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl is async-signal-safe; nothing else runs in pre_exec.
    unsafe {
        command.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
}

/// A fresh temporary directory, removed on drop.
pub struct TempDir {
    path: std::path::PathBuf,
}

impl TempDir {
    /// Creates `$TMPDIR/zkrun-<label>-<pid>-<random>`.
    pub fn new(label: &str) -> TempDir {
        let path = std::env::temp_dir().join(format!(
            "zkrun-{label}-{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&path).expect("create temp dir");
        TempDir { path }
    }

    /// The directory.
    pub fn path(&self) -> &std::path::Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}
