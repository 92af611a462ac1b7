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
