//! How long a leader may act on one proof, and when it must give up.
//!
//! Every number here is derived from a *lease period* `L`: the `--lease`
//! asked for, or by default the *negotiated* session timeout `T` (`L = T`).
//! `L` is never more than `T`: a lease asked for that does not fit the
//! timeout the ensemble granted (it can be renegotiated lower on reconnect)
//! is cut to `T`. Every moment is measured from the moment this host
//! **sent** a request that the ensemble then answered (a *proof*), never
//! from the moment the host noticed a problem, on CLOCK_BOOTTIME and the
//! wall clock together (see [`crate::clock`]): a lease ends when either
//! clock says so.
//!
//! Why the send time: ZooKeeper's leader expires a session only after it has
//! received nothing on that session for `T`. A request answered by the
//! ensemble was received no earlier than it was sent, so the session cannot
//! expire (and this host's ephemeral election node cannot be deleted, and no
//! other participant can be elected) before `proof + T`.
//!
//! | name       | value  | meaning                                                   |
//! |------------|--------|-----------------------------------------------------------|
//! | `refresh`  | `L/6`  | a leader asks the ensemble for a fresh proof this often   |
//! | `lease`    | `L/2`  | leader work may run until `proof + L/2`                   |
//! | `deadline` | `2L/3` | a suspended leader is demoted at `proof + 2L/3`           |
//! | takeover   | `≈0.77L` | the next in line may take over a silent leader (`1.15 × deadline` after the last renewal it saw; `machine/follow.rs`) |
//! | expiry     | `T ≥ L` | earliest moment the ensemble can expire the session      |
//!
//! The lease leaves `L/3` of headroom for a slow proof before leader work
//! pauses. The deadline leaves at least `T/3` before the session can
//! expire (`T - 2L/3` with a shorter lease), and `15%` of itself (plus the
//! time the renewal took to reach the next in line) before the next in
//! line may take over: room for clock-rate differences and for the
//! demotion to reach the job, whose work stopped at the lease already.
//! With `L < T` a crashed leader is replaced after about `0.77L`, long
//! before its session could expire: the point of a short lease.

use std::time::Duration;

use crate::clock::Stamp;

/// The shortest lease period `--lease` accepts. A leader renews with one
/// quorum write every `L/6` (83 ms at this minimum, 12 writes a second) and
/// pauses its work if none succeeded for `L/3`: shorter than this, ordinary
/// write latency under load (a disk flush, a busy server) would suspend
/// and demote healthy leaders all the time.
pub const MIN_LEASE: Duration = Duration::from_millis(500);

/// Lease and deadline lengths derived from one lease period.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timing {
    /// The session timeout the ensemble granted.
    pub session_timeout: Duration,
    /// The lease period `L` the numbers below derive from: the lease asked
    /// for, cut to the session timeout; the session timeout without one.
    pub period: Duration,
    /// How often a leader refreshes its proof.
    pub refresh: Duration,
    /// How long one proof lets leader work run.
    pub lease: Duration,
    /// How long after the last proof a suspended leader is demoted.
    pub deadline: Duration,
}

impl Timing {
    /// Derives the lease and deadline from the negotiated session timeout
    /// alone (`L = T`).
    pub fn new(session_timeout: Duration) -> Timing {
        Timing::with_lease(session_timeout, None)
    }

    /// Derives the lease and deadline from the lease period `lease` asked
    /// for, cut to the negotiated session timeout (expiry bounds
    /// everything), or from the session timeout if `None`.
    pub fn with_lease(session_timeout: Duration, lease: Option<Duration>) -> Timing {
        let period = lease.map_or(session_timeout, |lease| lease.min(session_timeout));
        Timing { session_timeout, period, refresh: period / 6, lease: period / 2, deadline: period * 2 / 3 }
    }

    /// How long after its last contact a session may be relied on to be
    /// alive, for retrying a delete across a lost connection: the deadline
    /// the session timeout alone would give, whatever the lease. (A short
    /// lease bounds leadership, not the session of a participant that has
    /// stopped leading.)
    pub fn session_deadline(&self) -> Duration {
        self.session_timeout * 2 / 3
    }

    /// Whether the lease period asked for did not fit the session timeout
    /// and was cut to it.
    pub fn cut(&self, asked: Option<Duration>) -> bool {
        asked.is_some_and(|lease| lease > self.period)
    }

    /// When leader work stops being allowed, for a proof sent at `proof`.
    pub fn lease_end(&self, proof: Stamp) -> Stamp {
        proof.after(self.lease)
    }

    /// When a leader without a newer proof than `proof` must be demoted.
    pub fn demote_at(&self, proof: Stamp) -> Stamp {
        proof.after(self.deadline)
    }
}

/// Exponential backoff with full jitter, for reconnecting and rejoining.
///
/// Full jitter (a uniform draw between zero and the current ceiling) spreads
/// the hosts of a fleet apart after a shared outage, so a flapping network
/// does not turn into synchronized election storms.
#[derive(Clone, Debug)]
pub struct Backoff {
    first: Duration,
    max: Duration,
    ceiling: Duration,
    attempts: u32,
}

impl Backoff {
    /// A backoff whose first ceiling is `first` and that never exceeds `max`.
    pub fn new(first: Duration, max: Duration) -> Backoff {
        Backoff { first, max, ceiling: first, attempts: 0 }
    }

    /// The delay before the next attempt; doubles the ceiling for the one after.
    pub fn next_delay(&mut self) -> Duration {
        use rand::Rng;
        let ceiling = self.ceiling;
        self.ceiling = (self.ceiling * 2).min(self.max);
        self.attempts += 1;
        let nanos = rand::rng().random_range(0..=ceiling.as_nanos() as u64);
        Duration::from_nanos(nanos)
    }

    /// Attempts made since the last reset.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// Starts over after a success.
    pub fn reset(&mut self) {
        self.ceiling = self.first;
        self.attempts = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::Clock;

    #[test]
    fn lease_and_deadline_fit_inside_the_session_timeout() {
        for ms in [400u64, 4000, 6000, 40_000] {
            let t = Timing::new(Duration::from_millis(ms));
            assert!(t.refresh < t.lease, "{t:?}");
            assert!(t.lease < t.deadline, "{t:?}");
            assert!(t.deadline < t.session_timeout, "{t:?}");
            let now = crate::clock::SystemClock.now();
            assert!(t.lease_end(now).boot_ns < t.demote_at(now).boot_ns);
        }
    }

    #[test]
    fn without_a_lease_the_timing_is_derived_from_the_session_timeout() {
        let t = Duration::from_secs(6);
        let timing = Timing::with_lease(t, None);
        assert_eq!(timing, Timing::new(t));
        assert_eq!(timing.period, t);
        assert_eq!(timing.refresh, Duration::from_secs(1));
        assert_eq!(timing.lease, Duration::from_secs(3));
        assert_eq!(timing.deadline, Duration::from_secs(4));
        assert!(!timing.cut(None));
    }

    #[test]
    fn a_short_lease_drives_every_number_and_stays_inside_the_session() {
        let t = Duration::from_secs(10);
        let timing = Timing::with_lease(t, Some(Duration::from_millis(1200)));
        assert_eq!(timing.session_timeout, t);
        assert_eq!(timing.period, Duration::from_millis(1200));
        assert_eq!(timing.refresh, Duration::from_millis(200));
        assert_eq!(timing.lease, Duration::from_millis(600));
        assert_eq!(timing.deadline, Duration::from_millis(800));
        assert_eq!(timing.session_deadline(), Timing::new(t).deadline);
        assert!(!timing.cut(Some(Duration::from_millis(1200))));
        for ms in [MIN_LEASE.as_millis() as u64, 1000, 3000, 9999] {
            let t = Timing::with_lease(Duration::from_secs(10), Some(Duration::from_millis(ms)));
            assert!(t.refresh < t.lease && t.lease < t.deadline, "{t:?}");
            // Demoted before the successor's takeover (1.15 × deadline,
            // follow.rs) and before the lease period is over.
            assert!(t.deadline * 23 / 20 < t.period, "{t:?}");
            assert!(t.period < t.session_timeout, "{t:?}");
        }
    }

    #[test]
    fn a_lease_longer_than_a_renegotiated_session_timeout_is_cut_to_it() {
        let asked = Some(Duration::from_secs(3));
        // The ensemble granted (or renegotiated) less than the lease needs:
        // the numbers fall back to those derived from the session timeout.
        let short = Duration::from_secs(2);
        let timing = Timing::with_lease(short, asked);
        assert_eq!(timing, Timing::new(short));
        assert!(timing.cut(asked));
        assert!(timing.deadline < short);
        // Granted enough again: the lease asked for is back.
        let timing = Timing::with_lease(Duration::from_secs(20), asked);
        assert_eq!(timing.period, Duration::from_secs(3));
        assert!(!timing.cut(asked));
    }

    #[test]
    fn backoff_stays_under_its_ceiling_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(800));
        let ceilings = [100, 200, 400, 800, 800, 800];
        for c in ceilings {
            assert!(b.next_delay() <= Duration::from_millis(c));
        }
        assert_eq!(b.attempts(), 6);
        b.reset();
        assert_eq!(b.attempts(), 0);
        assert!(b.next_delay() <= Duration::from_millis(100));
    }
}
