//! The machine's clocks as numbers: CLOCK_MONOTONIC for timestamps that
//! compare across processes (zkrun's events, plugins' clocks, the test
//! harness), and [`Stamp`]s of all three clocks for lease arithmetic.
//!
//! Leases are measured on CLOCK_BOOTTIME, which keeps counting while the
//! machine is suspended (CLOCK_MONOTONIC, which `std::time::Instant` and
//! tokio's timers read, stops), with the wall clock as a second signal: a
//! paused VM whose BOOTTIME did not count the pause finds its wall clock
//! corrected on resume. A lease ends when *either* says so.

use std::time::{Duration, Instant};

/// CLOCK_MONOTONIC in nanoseconds: the clock `std::time::Instant` reads, as a
/// raw value shared by every process of the machine.
pub fn monotonic_ns() -> u64 {
    read(libc::CLOCK_MONOTONIC)
}

/// `instant` as a [`monotonic_ns`] value, for logging when something will
/// happen (a lease end, a deadline) in a form other processes can compare.
pub fn instant_ns(instant: std::time::Instant) -> u64 {
    let (now, now_ns) = (std::time::Instant::now(), monotonic_ns());
    match instant.checked_duration_since(now) {
        Some(ahead) => now_ns + ahead.as_nanos() as u64,
        None => now_ns.saturating_sub(now.duration_since(instant).as_nanos() as u64),
    }
}

fn read(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime only writes into the timespec we pass.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// One moment, read on the three clocks (nanoseconds each).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stamp {
    /// CLOCK_MONOTONIC: for logs and tokio timers; stops during suspend.
    pub mono_ns: u64,
    /// CLOCK_BOOTTIME: what leases count on; counts suspend.
    pub boot_ns: u64,
    /// CLOCK_REALTIME: the second signal, for pauses BOOTTIME misses.
    pub wall_ns: u64,
}

impl Stamp {
    /// The same moment `d` later, on every clock.
    pub fn after(self, d: Duration) -> Stamp {
        let d = d.as_nanos() as u64;
        Stamp { mono_ns: self.mono_ns + d, boot_ns: self.boot_ns + d, wall_ns: self.wall_ns + d }
    }

    /// Whether `now` is at or past this moment, by BOOTTIME or by the wall
    /// clock, whichever says so first. (A forward step of the wall clock
    /// can end a lease early: the safe direction.)
    pub fn reached(self, now: Stamp) -> bool {
        now.boot_ns >= self.boot_ns || now.wall_ns >= self.wall_ns
    }

    /// How long from `now` until this moment is [`reached`](Stamp::reached).
    pub fn remaining(self, now: Stamp) -> Duration {
        let boot = self.boot_ns.saturating_sub(now.boot_ns);
        let wall = self.wall_ns.saturating_sub(now.wall_ns);
        Duration::from_nanos(boot.min(wall))
    }

    /// This moment as a tokio-sleepable instant, as far as `clock` tells now.
    /// (Re-check after waking: a suspend in between moves it earlier.)
    pub fn instant(self, clock: &dyn Clock) -> Instant {
        Instant::now() + self.remaining(clock.now())
    }

    /// Nanoseconds on CLOCK_MONOTONIC, for logs other processes compare.
    pub fn monotonic_ns(self) -> u64 {
        self.mono_ns
    }
}

/// Where lease arithmetic reads the time: the system's clocks, or a
/// hand-moved clock in tests.
pub trait Clock: Send + Sync {
    /// The three clocks, now.
    fn now(&self) -> Stamp;
}

/// The machine's clocks.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Stamp {
        Stamp {
            mono_ns: read(libc::CLOCK_MONOTONIC),
            boot_ns: read(libc::CLOCK_BOOTTIME),
            wall_ns: read(libc::CLOCK_REALTIME),
        }
    }
}

/// A clock that moves only when told to, for tests of lease arithmetic.
#[cfg(test)]
#[derive(Debug)]
pub struct ManualClock(std::sync::Mutex<Stamp>);

#[cfg(test)]
impl ManualClock {
    /// A clock at an arbitrary starting point (the wall clock in 2026).
    pub fn new() -> ManualClock {
        let start = 1_000_000_000_000;
        let wall = 1_780_000_000_000_000_000;
        ManualClock(std::sync::Mutex::new(Stamp { mono_ns: start, boot_ns: start, wall_ns: wall }))
    }

    /// Time passes normally, for `d`.
    pub fn run(&self, d: Duration) {
        let mut now = self.0.lock().unwrap();
        *now = now.after(d);
    }

    /// The machine is suspended for `d`: MONOTONIC stops, BOOTTIME and the
    /// wall clock count it.
    pub fn suspend(&self, d: Duration) {
        let mut now = self.0.lock().unwrap();
        now.boot_ns += d.as_nanos() as u64;
        now.wall_ns += d.as_nanos() as u64;
    }

    /// The wall clock is stepped back by `d` (NTP); nothing else moves.
    pub fn step_wall_back(&self, d: Duration) {
        self.0.lock().unwrap().wall_ns -= d.as_nanos() as u64;
    }

    /// The VM is paused for `d` by its hypervisor: the guest's MONOTONIC and
    /// BOOTTIME both stop; only the wall clock is corrected on resume.
    pub fn pause_vm(&self, d: Duration) {
        self.0.lock().unwrap().wall_ns += d.as_nanos() as u64;
    }
}

#[cfg(test)]
impl Default for ManualClock {
    fn default() -> Self {
        ManualClock::new()
    }
}

#[cfg(test)]
impl Clock for ManualClock {
    fn now(&self) -> Stamp {
        *self.0.lock().unwrap()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boottime_counts_at_least_what_monotonic_counts() {
        let a = SystemClock.now();
        std::thread::sleep(Duration::from_millis(5));
        let b = SystemClock.now();
        assert!(b.boot_ns - a.boot_ns >= b.mono_ns - a.mono_ns - 1_000_000);
        assert!(b.boot_ns >= b.mono_ns, "BOOTTIME = MONOTONIC + time suspended");
    }

    #[test]
    fn a_moment_is_reached_by_either_clock() {
        let clock = ManualClock::new();
        let end = clock.now().after(Duration::from_secs(2));
        clock.run(Duration::from_secs(1));
        assert!(!end.reached(clock.now()));
        assert_eq!(end.remaining(clock.now()), Duration::from_secs(1));
        // A paused VM: only the wall clock shows the time that went by.
        clock.pause_vm(Duration::from_secs(5));
        assert!(end.reached(clock.now()));
        assert_eq!(end.remaining(clock.now()), Duration::ZERO);
    }
}
