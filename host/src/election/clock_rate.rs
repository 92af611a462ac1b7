//! The clock-rate check: does the leader's clock run at the rate of ours?
//!
//! Safety rests on the participants' clocks running at nearly the same
//! rate (a takeover waits 1.15 × the leader's deadline, measured on the
//! follower's clock). The next in line sees every renewal of the leader's
//! lease node, and the leader renews once per refresh period *on its own
//! clock* (it sends each renewal one refresh after sending the previous
//! one), which it records in the lease (`refresh_ms`). So the intervals
//! between the versions the next in line sees, measured on its clock,
//! divided by the recorded refresh, estimate how much slower the leader's
//! clock runs than ours (ratio > 1: the leader's time passes slower, so it
//! demotes itself later than we count). Network jitter averages out over a
//! window of renewals; a gap (a reconnect, a suspended leader, another
//! lease node) starts the window over.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// How many renewal intervals one estimate spans.
const WINDOW: u32 = 20;

/// How far from 1 the ratio may be before it counts as skew (±5%).
pub const TOLERANCE: f64 = 0.05;

/// How many estimates in a row must be outside the tolerance before the
/// skew is reported: one slow write is not a clock.
const SUSTAINED: u32 = 10;

/// One renewal seen: the lease node's version and when it was first seen.
#[derive(Clone, Copy, Debug)]
struct Seen {
    version: i32,
    at: Instant,
}

/// Estimates the rate of the leader's clock against ours from its renewals.
#[derive(Debug, Default)]
pub struct RateEstimator {
    /// The lease node (path and `czxid`) and refresh the window is about.
    lease: Option<(String, i64, Duration)>,
    window: VecDeque<Seen>,
    /// Estimates in a row outside the tolerance.
    outside: u32,
    /// The last estimate over a full window.
    ratio: Option<f64>,
}

/// What one renewal seen changed.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum RateNews {
    /// Nothing to report.
    Quiet,
    /// A new estimate over a full window.
    Estimate(f64),
    /// A new estimate that has been outside the tolerance for long enough.
    Skew(f64),
}

impl RateEstimator {
    /// Nothing seen yet.
    pub fn new() -> RateEstimator {
        RateEstimator::default()
    }

    /// The last estimate over a full window (leader's interval over ours
    /// inverted: how many of our seconds one of the leader's takes).
    pub fn ratio(&self) -> Option<f64> {
        self.ratio
    }

    /// Notes that `version` of the lease node at `path` (created at
    /// `czxid`, renewed every `refresh` by its leader's clock) was first
    /// seen at `at`.
    pub fn saw(&mut self, path: &str, czxid: i64, refresh: Duration, version: i32, at: Instant) -> RateNews {
        if refresh.is_zero() {
            // An older leader that does not record its refresh period.
            return RateNews::Quiet;
        }
        let same = self.lease.as_ref().is_some_and(|(p, c, r)| p == path && *c == czxid && *r == refresh);
        if !same {
            self.lease = Some((path.to_string(), czxid, refresh));
            self.window.clear();
            self.outside = 0;
        }
        if let Some(last) = self.window.back() {
            if version <= last.version {
                return RateNews::Quiet;
            }
            // A renewal we did not see is fine (a watch fires once for
            // several changes); a long silence is not a clock: start over.
            let gap = at.saturating_duration_since(last.at);
            if version - last.version > 3 || gap > refresh * 4 * (version - last.version) as u32 {
                self.window.clear();
                self.outside = 0;
            }
        }
        self.window.push_back(Seen { version, at });
        let (first, last) = (self.window[0], *self.window.back().unwrap());
        let renewals = (last.version - first.version) as u32;
        if renewals < WINDOW {
            return RateNews::Quiet;
        }
        while self.window.len() > 1 && (last.version - self.window[1].version) as u32 >= WINDOW {
            self.window.pop_front();
        }
        let first = self.window[0];
        let renewals = (last.version - first.version) as f64;
        let ratio =
            last.at.saturating_duration_since(first.at).as_secs_f64() / (renewals * refresh.as_secs_f64());
        self.ratio = Some(ratio);
        if (ratio - 1.0).abs() > TOLERANCE {
            self.outside += 1;
            if self.outside == SUSTAINED {
                return RateNews::Skew(ratio);
            }
        } else {
            self.outside = 0;
        }
        RateNews::Estimate(ratio)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REFRESH: Duration = Duration::from_millis(100);

    /// Feeds `n` renewals seen every `interval` (plus `jitter(i)`), from
    /// version `from`; returns every piece of news.
    fn feed(
        est: &mut RateEstimator,
        start: Instant,
        from: i32,
        n: i32,
        interval: Duration,
        jitter: impl Fn(i32) -> Duration,
    ) -> Vec<RateNews> {
        (0..n)
            .map(|i| {
                est.saw("/e/zkrun-lease-1", 7, REFRESH, from + i, start + interval * i as u32 + jitter(i))
            })
            .collect()
    }

    #[test]
    fn a_leader_at_our_rate_reads_as_one_despite_jitter() {
        let mut est = RateEstimator::new();
        let jitter = |i: i32| Duration::from_millis((i as u64 * 7) % 13);
        let news = feed(&mut est, Instant::now(), 1, 100, REFRESH, jitter);
        assert!(news.iter().all(|n| !matches!(n, RateNews::Skew(_))), "{news:?}");
        let ratio = est.ratio().unwrap();
        assert!((ratio - 1.0).abs() < 0.01, "{ratio}");
    }

    #[test]
    fn a_slow_leader_clock_is_reported_once_when_sustained() {
        let mut est = RateEstimator::new();
        // The leader's 100 ms take 120 ms of ours: its clock runs at 1/1.2.
        let news = feed(&mut est, Instant::now(), 1, 100, Duration::from_millis(120), |_| Duration::ZERO);
        let skews: Vec<_> = news.iter().filter(|n| matches!(n, RateNews::Skew(_))).collect();
        assert_eq!(skews.len(), 1, "{news:?}");
        // Not before the window is full and the skew lasted.
        let first = news.iter().position(|n| matches!(n, RateNews::Skew(_))).unwrap();
        assert!(first >= (WINDOW + SUSTAINED - 1) as usize, "{first}");
        assert!((est.ratio().unwrap() - 1.2).abs() < 0.01);
        // A fast one reads below 1.
        let mut est = RateEstimator::new();
        feed(&mut est, Instant::now(), 1, 60, Duration::from_millis(90), |_| Duration::ZERO);
        assert!((est.ratio().unwrap() - 0.9).abs() < 0.01);
    }

    #[test]
    fn missed_versions_count_and_gaps_start_over() {
        let mut est = RateEstimator::new();
        let start = Instant::now();
        // Every other renewal seen: still one refresh per version.
        for i in 0..30 {
            est.saw("/e/zkrun-lease-1", 7, REFRESH, 2 * i, start + REFRESH * 2 * i as u32);
        }
        assert!((est.ratio().unwrap() - 1.0).abs() < 0.01);
        // A long silence (a suspended leader) is not counted as a slow clock.
        let later = start + Duration::from_secs(60);
        let news = est.saw("/e/zkrun-lease-1", 7, REFRESH, 60, later);
        assert_eq!(news, RateNews::Quiet);
        // Neither are older leaders without a recorded refresh, nor re-reads.
        assert_eq!(est.saw("/e/zkrun-lease-1", 7, Duration::ZERO, 61, later), RateNews::Quiet);
        assert_eq!(est.saw("/e/zkrun-lease-1", 7, REFRESH, 60, later), RateNews::Quiet);
    }

    #[test]
    fn another_lease_node_starts_over() {
        let mut est = RateEstimator::new();
        let start = Instant::now();
        feed(&mut est, start, 1, 15, REFRESH, |_| Duration::ZERO);
        let news = est.saw("/e/zkrun-lease-2", 9, REFRESH, 16, start + REFRESH * 15);
        assert_eq!(news, RateNews::Quiet);
        assert_eq!(est.window.len(), 1);
    }
}
