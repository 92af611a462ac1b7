//! What a leader does about the slots due now: the one rule, pure, so that it
//! is tested without ZooKeeper.
//!
//! Inputs: the schedule, the leader's wall clock `now`, the ledger's records
//! of this schedule, and when this host's term began. Output: steps in slot
//! order: slots to record without running (missed, skipped, interrupted),
//! and slots to run with their attempt number.

use std::collections::BTreeMap;

use jiff::{SignedDuration, Timestamp};

use super::ledger::{Outcome, Record};
use super::{CatchUp, OnInterrupted, Schedule, Slot};

/// Most slots one plan looks at: after a longer outage, older missed slots
/// are counted in one log event instead of recorded one by one.
pub const MAX_SLOTS_PER_PLAN: usize = 100;

/// A slot to run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Due {
    /// The slot.
    pub slot: Slot,
    /// 1 for the first run, 2 for the first retry, ...
    pub attempt: u32,
    /// The outcome of the previous attempt, if any.
    pub previous: Option<Outcome>,
    /// The version of the slot's ledger node, if it has one.
    pub version: Option<i32>,
}

/// One thing to do about a slot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Record this final outcome without running the slot.
    Record {
        /// The slot.
        slot: Slot,
        /// Missed, skipped or interrupted.
        outcome: Outcome,
        /// Why, for the ledger and the log.
        reason: &'static str,
        /// The attempt the record closes (0: never started).
        attempt: u32,
        /// The version of the slot's ledger node, if it has one.
        version: Option<i32>,
    },
    /// Claim and run the slot.
    Run(Due),
}

/// The plan, and how many older slots it left unrecorded.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// In slot order.
    pub steps: Vec<Step>,
    /// Missed slots older than the [`MAX_SLOTS_PER_PLAN`] newest ones.
    pub uncounted_missed: usize,
}

impl Plan {
    /// The first slot to run, if any.
    pub fn first_run(&self) -> Option<&Due> {
        self.steps.iter().find_map(|step| match step {
            Step::Run(due) => Some(due),
            Step::Record { .. } => None,
        })
    }
}

/// Decides what to do about the slots due at `now`. `records` are this
/// schedule's ledger records by slot id, with their node versions. A
/// record still `running` is an interrupted run: whoever claimed it is no
/// longer running it (the caller plans only while it runs no slot).
pub fn plan(
    schedule: &Schedule,
    now: Timestamp,
    records: &BTreeMap<String, (Record, i32)>,
    term_began: Timestamp,
) -> Plan {
    let window_start = now - SignedDuration::try_from(schedule.catch_up).unwrap_or(SignedDuration::MAX);
    let mut steps = Vec::new();

    // Interrupted runs: retried or closed, by policy.
    for (id, (record, version)) in records {
        if record.outcome != Outcome::Running {
            continue;
        }
        let Ok(at) = record.at.parse::<Timestamp>() else { continue };
        let slot = Slot { at, id: id.clone() };
        let retry = schedule.on_interrupted == OnInterrupted::Retry
            && record.attempt < schedule.max_attempts
            && at >= window_start;
        steps.push(if retry {
            Step::Run(Due {
                slot,
                attempt: record.attempt + 1,
                previous: Some(Outcome::Interrupted),
                version: Some(*version),
            })
        } else {
            let reason = match schedule.on_interrupted {
                OnInterrupted::Skip => "interrupted; --on-interrupted skip",
                OnInterrupted::Retry if record.attempt >= schedule.max_attempts => {
                    "interrupted; no attempts left"
                }
                OnInterrupted::Retry => "interrupted; past the catch-up window",
            };
            Step::Record {
                slot,
                outcome: Outcome::Interrupted,
                reason,
                attempt: record.attempt,
                version: Some(*version),
            }
        });
    }

    // Slots without a record since the newest recorded one (or since this
    // term began, on an empty ledger: a new schedule does not run its past).
    let newest = records.values().filter_map(|(r, _)| r.at.parse::<Timestamp>().ok()).max();
    // Bounded, so that a ledger a year old costs no year of cron searches.
    let anchor = newest.unwrap_or(term_began).max(window_start - SignedDuration::from_hours(24 * 7));
    let fresh = schedule.between(anchor, now, MAX_SLOTS_PER_PLAN + 1);
    let mut uncounted_missed = 0;
    let mut fresh: Vec<Slot> = fresh.into_iter().filter(|slot| !records.contains_key(&slot.id)).collect();
    if fresh.len() > MAX_SLOTS_PER_PLAN {
        uncounted_missed = fresh.len() - MAX_SLOTS_PER_PLAN;
        fresh.drain(..uncounted_missed);
        // `between` capped the list: there may be more before it.
        uncounted_missed = uncounted_missed.max(1);
    }
    let (late, in_window): (Vec<Slot>, Vec<Slot>) =
        fresh.into_iter().partition(|slot| slot.at < window_start);
    for slot in late {
        steps.push(Step::Record {
            slot,
            outcome: Outcome::Missed,
            reason: "no leader within the catch-up window",
            attempt: 0,
            version: None,
        });
    }
    let latest = in_window.len().saturating_sub(1);
    for (i, slot) in in_window.into_iter().enumerate() {
        let run = match schedule.policy {
            CatchUp::All => true,
            CatchUp::Latest => i == latest,
            CatchUp::None => slot.at >= term_began,
        };
        steps.push(if run {
            Step::Run(Due { slot, attempt: 1, previous: None, version: None })
        } else {
            let (outcome, reason) = match schedule.policy {
                CatchUp::Latest => (Outcome::Skipped, "a later slot is due; --catch-up-policy latest"),
                _ => (Outcome::Missed, "due before this leader's term; --catch-up-policy none"),
            };
            Step::Record { slot, outcome, reason, attempt: 0, version: None }
        });
    }
    steps.sort_by(|a, b| step_slot(a).cmp(step_slot(b)));
    Plan { steps, uncounted_missed }
}

fn step_slot(step: &Step) -> &Slot {
    match step {
        Step::Record { slot, .. } | Step::Run(Due { slot, .. }) => slot,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::schedule::{Cadence, DEFAULT_RUN_TIMEOUT};

    fn every_2s(policy: CatchUp, catch_up: Duration) -> Schedule {
        Schedule::new(
            Cadence::Every(Duration::from_secs(2)),
            "UTC",
            catch_up,
            policy,
            OnInterrupted::Retry,
            2,
            DEFAULT_RUN_TIMEOUT,
        )
        .unwrap()
    }

    fn ts(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    fn record(schedule: &Schedule, at: &str, outcome: Outcome, attempt: u32) -> (String, (Record, i32)) {
        let slot = schedule.slot(ts(at));
        let record = Record {
            slot: slot.id.clone(),
            at: slot.at.to_string(),
            outcome,
            attempt,
            term: 7,
            participant: "a".into(),
            claimed_ms: 0,
            duration_ms: None,
            error: None,
        };
        (slot.id, (record, 3))
    }

    fn summary(plan: &Plan) -> Vec<String> {
        plan.steps
            .iter()
            .map(|step| match step {
                Step::Run(due) => format!("run {} #{}", due.slot.at, due.attempt),
                Step::Record { slot, outcome, .. } => format!("{} {}", outcome.as_str(), slot.at),
            })
            .collect()
    }

    #[test]
    fn the_current_slot_runs_once() {
        let s = every_2s(CatchUp::Latest, Duration::from_secs(60));
        let records = BTreeMap::from([record(&s, "2026-12-03T07:00:00Z", Outcome::Ok, 1)]);
        let plan = plan(&s, ts("2026-12-03T07:00:02.5Z"), &records, ts("2026-12-03T06:00:00Z"));
        assert_eq!(summary(&plan), ["run 2026-12-03T07:00:02Z #1"]);
        // Once recorded, nothing more until the next slot.
        let mut records = records;
        records.extend([record(&s, "2026-12-03T07:00:02Z", Outcome::Running, 1)]);
        records.get_mut(&s.slot(ts("2026-12-03T07:00:02Z")).id).unwrap().0.outcome = Outcome::Ok;
        let plan = super::plan(&s, ts("2026-12-03T07:00:03Z"), &records, ts("2026-12-03T06:00:00Z"));
        assert!(plan.steps.is_empty(), "{:?}", summary(&plan));
    }

    #[test]
    fn catch_up_policies_after_an_outage() {
        // Last run at :00; everyone down for three slots; back at :07.
        let now = ts("2026-12-03T07:00:07Z");
        let began = ts("2026-12-03T07:00:06.5Z");
        for (policy, expected) in [
            (
                CatchUp::Latest,
                vec![
                    "skipped 2026-12-03T07:00:02Z",
                    "skipped 2026-12-03T07:00:04Z",
                    "run 2026-12-03T07:00:06Z #1",
                ],
            ),
            (
                CatchUp::All,
                vec![
                    "run 2026-12-03T07:00:02Z #1",
                    "run 2026-12-03T07:00:04Z #1",
                    "run 2026-12-03T07:00:06Z #1",
                ],
            ),
            (
                CatchUp::None,
                vec![
                    "missed 2026-12-03T07:00:02Z",
                    "missed 2026-12-03T07:00:04Z",
                    "missed 2026-12-03T07:00:06Z",
                ],
            ),
        ] {
            let s = every_2s(policy, Duration::from_secs(60));
            let records = BTreeMap::from([record(&s, "2026-12-03T07:00:00Z", Outcome::Ok, 1)]);
            assert_eq!(summary(&plan(&s, now, &records, began)), expected, "{policy:?}");
        }
        // Past the window: recorded as missed, whatever the policy.
        let s = every_2s(CatchUp::All, Duration::from_secs(3));
        let records = BTreeMap::from([record(&s, "2026-12-03T07:00:00Z", Outcome::Ok, 1)]);
        assert_eq!(
            summary(&plan(&s, now, &records, began)),
            ["missed 2026-12-03T07:00:02Z", "run 2026-12-03T07:00:04Z #1", "run 2026-12-03T07:00:06Z #1"]
        );
    }

    #[test]
    fn interrupted_runs_are_retried_within_the_attempt_limit() {
        let s = every_2s(CatchUp::Latest, Duration::from_secs(60));
        let now = ts("2026-12-03T07:00:03Z");
        let began = ts("2026-12-03T07:00:03Z");
        let records = BTreeMap::from([record(&s, "2026-12-03T07:00:02Z", Outcome::Running, 1)]);
        let plan = plan(&s, now, &records, began);
        assert_eq!(summary(&plan), ["run 2026-12-03T07:00:02Z #2"]);
        assert_eq!(plan.first_run().unwrap().previous, Some(Outcome::Interrupted));
        assert_eq!(plan.first_run().unwrap().version, Some(3));
        // The limit (2) reached: closed as interrupted, not run a third time.
        let records = BTreeMap::from([record(&s, "2026-12-03T07:00:02Z", Outcome::Running, 2)]);
        assert_eq!(summary(&super::plan(&s, now, &records, began)), ["interrupted 2026-12-03T07:00:02Z"]);
        // --on-interrupted skip: closed at once.
        let mut skip = s.clone();
        skip.on_interrupted = OnInterrupted::Skip;
        let records = BTreeMap::from([record(&skip, "2026-12-03T07:00:02Z", Outcome::Running, 1)]);
        assert_eq!(summary(&super::plan(&skip, now, &records, began)), ["interrupted 2026-12-03T07:00:02Z"]);
    }

    #[test]
    fn an_empty_ledger_does_not_run_the_past() {
        let s = every_2s(CatchUp::All, Duration::from_secs(60));
        let began = ts("2026-12-03T07:00:05Z");
        let plan = plan(&s, ts("2026-12-03T07:00:06.1Z"), &BTreeMap::new(), began);
        assert_eq!(summary(&plan), ["run 2026-12-03T07:00:06Z #1"]);
    }

    #[test]
    fn a_long_outage_is_counted_not_listed() {
        let s = every_2s(CatchUp::Latest, Duration::from_secs(10));
        let records = BTreeMap::from([record(&s, "2026-12-03T07:00:00Z", Outcome::Ok, 1)]);
        let plan = plan(&s, ts("2026-12-03T08:00:00Z"), &records, ts("2026-12-03T08:00:00Z"));
        assert_eq!(plan.steps.len(), MAX_SLOTS_PER_PLAN);
        assert!(plan.uncounted_missed > 0);
        assert!(matches!(plan.steps.last(), Some(Step::Run(_))));
    }
}
