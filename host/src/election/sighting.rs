//! When this participant first saw each version of a lease node.
//!
//! A takeover timer counts from the first sight of a lease node's version:
//! the renewal behind that version was sent earlier still, so the leader's
//! deadline counts from before it. Re-reading the same version (after a
//! reconnect, a new watch, a failed takeover attempt) tells nothing new and
//! must not restart the timer; only a new version (a renewal) or a new node
//! (another `czxid`) does. Otherwise a follower whose connection keeps being
//! reset would never take over from a frozen leader.

use std::collections::VecDeque;
use std::time::Instant;

/// How many lease nodes are remembered: a participant watches one or two
/// at a time, so a few cover any sequence of handovers it takes part in.
const REMEMBERED: usize = 8;

/// One lease node version and when it was first seen.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Sighting {
    path: String,
    czxid: i64,
    version: i32,
    first_seen: Instant,
}

/// The first sight of the current version of each lease node seen lately.
#[derive(Debug, Default)]
pub struct FirstSeen {
    sightings: VecDeque<Sighting>,
}

impl FirstSeen {
    /// Nothing seen yet.
    pub fn new() -> FirstSeen {
        FirstSeen::default()
    }

    /// When `version` of the lease node at `path` (created at `czxid`) was
    /// first seen; `now` if this is its first sight (remembered from now on).
    pub fn first_seen(&mut self, path: &str, czxid: i64, version: i32, now: Instant) -> Instant {
        if let Some(at) = self.sightings.iter().position(|s| s.path == path) {
            let known = &self.sightings[at];
            if known.czxid == czxid && known.version == version {
                return known.first_seen;
            }
            self.sightings.remove(at);
        }
        if self.sightings.len() >= REMEMBERED {
            self.sightings.pop_front();
        }
        self.sightings.push_back(Sighting { path: path.to_string(), czxid, version, first_seen: now });
        now
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_reread_of_the_same_version_keeps_its_first_sight() {
        let mut seen = FirstSeen::new();
        let t0 = Instant::now();
        let later = t0 + Duration::from_millis(500);
        assert_eq!(seen.first_seen("/e/zkrun-lease-1", 7, 3, t0), t0);
        assert_eq!(seen.first_seen("/e/zkrun-lease-1", 7, 3, later), t0);
        // A renewal (new version) or a new node (new czxid) starts over.
        assert_eq!(seen.first_seen("/e/zkrun-lease-1", 7, 4, later), later);
        let latest = later + Duration::from_millis(500);
        assert_eq!(seen.first_seen("/e/zkrun-lease-1", 9, 4, latest), latest);
        // Other lease nodes are kept apart.
        assert_eq!(
            seen.first_seen("/e/zkrun-lease-2", 9, 4, latest + Duration::from_secs(1)),
            latest + Duration::from_secs(1)
        );
        assert_eq!(seen.first_seen("/e/zkrun-lease-1", 9, 4, latest + Duration::from_secs(2)), latest);
    }

    #[test]
    fn only_a_few_lease_nodes_are_remembered() {
        let mut seen = FirstSeen::new();
        let t0 = Instant::now();
        for i in 0..(REMEMBERED as i64 + 4) {
            seen.first_seen(&format!("/e/zkrun-lease-{i}"), i, 0, t0);
        }
        assert_eq!(seen.sightings.len(), REMEMBERED);
        let later = t0 + Duration::from_secs(1);
        // The oldest was forgotten: seen afresh.
        assert_eq!(seen.first_seen("/e/zkrun-lease-0", 0, 0, later), later);
    }
}
