//! How long a leader may act on one proof, and when it must give up.
//!
//! Every number here is derived from the *negotiated* session timeout `T`,
//! and every moment is measured from the moment this host **sent** a request
//! that the ensemble then answered (a *proof*), never from the moment the
//! host noticed a problem, on CLOCK_BOOTTIME and the wall clock together
//! (see [`crate::clock`]): a lease ends when either clock says so.
//!
//! Why the send time: ZooKeeper's leader expires a session only after it has
//! received nothing on that session for `T`. A request answered by the
//! ensemble was received no earlier than it was sent, so the session cannot
//! expire (and this host's ephemeral election node cannot be deleted, and no
//! other participant can be elected) before `proof + T`.
//!
//! | name       | value  | meaning                                                   |
//! |------------|--------|-----------------------------------------------------------|
//! | `refresh`  | `T/6`  | a leader asks the ensemble for a fresh proof this often   |
//! | `lease`    | `T/2`  | leader work may run until `proof + T/2`                   |
//! | `deadline` | `2T/3` | a suspended leader is demoted at `proof + 2T/3`           |
//! | expiry     | `T`    | earliest moment the ensemble can expire the session       |
//!
//! The lease leaves `T/3` of headroom for a slow proof before leader work
//! pauses, and the deadline leaves `T/3` between demotion and the earliest
//! moment anyone else can be elected: room for clock-rate differences between
//! this host and the ensemble and for the demotion to reach the job.

use std::time::Duration;

use crate::clock::Stamp;

/// Lease and deadline lengths derived from one negotiated session timeout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timing {
    /// The session timeout the ensemble granted.
    pub session_timeout: Duration,
    /// How often a leader refreshes its proof.
    pub refresh: Duration,
    /// How long one proof lets leader work run.
    pub lease: Duration,
    /// How long after the last proof a suspended leader is demoted.
    pub deadline: Duration,
}

impl Timing {
    /// Derives the lease and deadline from the negotiated session timeout.
    pub fn new(session_timeout: Duration) -> Timing {
        Timing {
            session_timeout,
            refresh: session_timeout / 6,
            lease: session_timeout / 2,
            deadline: session_timeout * 2 / 3,
        }
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
