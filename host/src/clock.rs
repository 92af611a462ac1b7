//! The machine's monotonic clock as a number, for timestamps that compare
//! across processes (zkrun's events, plugins' clocks, the test harness).

/// CLOCK_MONOTONIC in nanoseconds: the clock `std::time::Instant` reads, as a
/// raw value shared by every process of the machine.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime only writes into the timespec we pass.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
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
