//! Where schedules meet the job: the supervisor hands a leader's instance
//! to [`SlotRunner::run`] instead of ticking it, and this module plans,
//! claims, runs and records one slot at a time (see `schedule`).
//!
//! Order of one run: read the ledger, plan, record what the plan closes
//! without running, claim the first slot to run (fenced), wait until the
//! ensemble's clock (the claim's mtime) has reached the slot's instant,
//! run the job under the lease permit and `--run-timeout`, record the
//! outcome (fenced). A run cut off by the host (lease lapsed, demoted) is
//! not recorded: its claim stays `running`, which the next plan, on any
//! host, treats as interrupted.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use jiff::Timestamp;
use tracing::{info, warn};

use crate::election::Fence;
use crate::metrics::Metrics;
use crate::plugin::{Facts, HookFailure, Instance, Permit};
use crate::schedule::ledger::{Ledger, LedgerError, Outcome, Record};
use crate::schedule::plan::{Step, plan};
use crate::schedule::{Schedule, Slot};

/// How long the runner sleeps at most between looks at the clock, so that
/// a wall clock stepped forward is noticed within this bound.
const MAX_SLEEP: Duration = Duration::from_secs(1);

/// Runs a schedule's slots on this host while it leads.
pub struct SlotRunner {
    schedule: Arc<Schedule>,
    participant: String,
    election: String,
    /// When this host's current term began (wall clock).
    term_began: Timestamp,
    /// When to look at the ledger next (wall clock).
    next_look: Arc<Mutex<Timestamp>>,
    metrics: Arc<Metrics>,
}

impl SlotRunner {
    /// A runner for `schedule`.
    pub fn new(
        schedule: Schedule,
        participant: String,
        election: String,
        metrics: Arc<Metrics>,
    ) -> SlotRunner {
        SlotRunner {
            schedule: Arc::new(schedule),
            participant,
            election,
            term_began: Timestamp::now(),
            next_look: Arc::new(Mutex::new(Timestamp::now())),
            metrics,
        }
    }

    /// The schedule.
    pub fn schedule(&self) -> &Schedule {
        &self.schedule
    }

    /// A term begins: look at the ledger at once.
    pub fn begin_term(&mut self) {
        self.term_began = Timestamp::now();
        self.look_now();
    }

    /// Look at the ledger at the next chance (e.g. leadership confirmed
    /// again after a doubt that may have cut a run off).
    pub fn look_now(&self) {
        *self.next_look.lock().unwrap() = Timestamp::now();
    }

    /// Whether it is time to look at the ledger.
    pub fn due(&self) -> bool {
        Timestamp::now() >= *self.next_look.lock().unwrap()
    }

    /// When the supervisor should ask [`SlotRunner::due`] again.
    pub fn next_wake(&self) -> Instant {
        let wait = Timestamp::now().duration_until(*self.next_look.lock().unwrap());
        let wait = Duration::try_from(wait).unwrap_or(Duration::ZERO);
        Instant::now() + wait.min(MAX_SLEEP)
    }

    /// Plans and runs at most one slot on `instance` under `permit`, and
    /// hands the instance back with the job's result (`Ok` if nothing ran).
    pub fn run(
        &self,
        mut instance: Instance,
        facts: Facts,
        permit: Arc<dyn Permit>,
        fence: Fence,
    ) -> impl Future<Output = (Option<Instance>, Result<(), HookFailure>)> + Send + 'static {
        let schedule = self.schedule.clone();
        let next_look = self.next_look.clone();
        let metrics = self.metrics.clone();
        let participant = self.participant.clone();
        let ledger = Ledger::new(fence, &self.election);
        let term_began = self.term_began;
        async move {
            let look_at = |at: Timestamp| *next_look.lock().unwrap() = at;
            let soon = || Timestamp::now() + Duration::from_secs(1);
            let records = match ledger.read().await {
                Ok(records) => records,
                Err(e) => {
                    warn!(event = "slot_ledger_unavailable", error = %e, "cannot read the slot ledger; trying again");
                    look_at(soon());
                    return (Some(instance), Ok(()));
                }
            };
            let ours: BTreeMap<String, (Record, i32)> = records
                .iter()
                .filter(|(r, _)| schedule.owns(&r.slot))
                .map(|(r, v)| (r.slot.clone(), (r.clone(), *v)))
                .collect();
            let now = Timestamp::now();
            let plan = plan(&schedule, now, &ours, term_began);
            if plan.uncounted_missed > 0 {
                warn!(
                    event = "slots_missed_uncounted",
                    at_least = plan.uncounted_missed,
                    "slots older than the last {} went unrun and are not recorded one by one",
                    crate::schedule::plan::MAX_SLOTS_PER_PLAN
                );
            }
            let mut due = None;
            for step in plan.steps {
                match step {
                    Step::Record { slot, outcome, reason, attempt, version } => {
                        let record = Record {
                            slot: slot.id.clone(),
                            at: slot.at.to_string(),
                            outcome,
                            attempt,
                            term: ledger.term(),
                            participant: participant.clone(),
                            claimed_ms: 0,
                            duration_ms: None,
                            error: Some(reason.to_string()),
                        };
                        match ledger.write(&record, version).await {
                            Ok(_) => {
                                metrics.slot_outcome(outcome.as_str());
                                info!(event = "slot_recorded", slot = slot.id, at = %slot.at, outcome = outcome.as_str(), attempt, reason, term = ledger.term(), "slot recorded without running");
                            }
                            Err(e) => {
                                warn!(event = "slot_record_failed", slot = slot.id, error = %e, "could not record a slot");
                                look_at(soon());
                                return (Some(instance), Ok(()));
                            }
                        }
                    }
                    Step::Run(run) => {
                        due = Some(run);
                        break;
                    }
                }
            }
            let Some(due) = due else {
                if let Err(e) = ledger.prune(&records).await {
                    warn!(event = "slot_prune_failed", error = %e, "could not prune the slot ledger");
                }
                let next = schedule.next_after(now).map_or(soon(), |slot| slot.at);
                metrics.slot_times(None, Some(next.as_second()));
                look_at(next);
                return (Some(instance), Ok(()));
            };
            // Look again right after this run: another slot may be due.
            look_at(Timestamp::now());

            let mut record = Record {
                slot: due.slot.id.clone(),
                at: due.slot.at.to_string(),
                outcome: Outcome::Running,
                attempt: due.attempt,
                term: ledger.term(),
                participant: participant.clone(),
                claimed_ms: 0,
                duration_ms: None,
                error: None,
            };
            let claimed = match ledger.write(&record, due.version).await {
                Ok(claimed) => claimed,
                Err(e) => {
                    // Not claimed (or not known to be): not started. A claim
                    // that landed unseen reads as interrupted next time,
                    // and counts as an attempt that never started.
                    warn!(event = "slot_claim_failed", slot = due.slot.id, attempt = due.attempt, error = %e, "could not claim a slot; not running it");
                    if e != LedgerError::NotLeader {
                        look_at(soon());
                    }
                    return (Some(instance), Ok(()));
                }
            };
            record.claimed_ms = claimed.mtime_ms;
            // Whose clock: the ensemble's. The leader's wall clock only
            // proposed that the slot is due; if the claim committed before
            // the slot's instant by the ensemble's clock, wait out the
            // difference (this host's clock runs ahead).
            let early_ms = due.slot.at.as_millisecond() - claimed.mtime_ms;
            if early_ms > 0 {
                info!(
                    event = "slot_waiting",
                    slot = due.slot.id,
                    early_ms,
                    "this host's clock is ahead of the ensemble's: waiting for the slot's instant by the ensemble's clock"
                );
                let until = Instant::now() + Duration::from_millis(early_ms as u64);
                while Instant::now() < until {
                    if !permit.holds() {
                        return (Some(instance), Ok(()));
                    }
                    tokio::time::sleep(
                        until.saturating_duration_since(Instant::now()).min(Duration::from_millis(50)),
                    )
                    .await;
                }
            }
            let lag = (Timestamp::now().as_millisecond().max(claimed.mtime_ms) - due.slot.at.as_millisecond())
                as f64
                / 1000.0;
            metrics.slot_times(Some(Duration::from_secs_f64(lag.max(0.0))), None);
            info!(
                event = "slot_started",
                slot = due.slot.id,
                at = %due.slot.at,
                local = schedule.local(due.slot.at),
                attempt = due.attempt,
                previous = due.previous.map(Outcome::as_str),
                term = ledger.term(),
                lag_ms = (lag * 1000.0) as i64,
                mono_ns = crate::clock::monotonic_ns(),
                "slot started"
            );
            let started = Instant::now();
            let slot = slot_info(&due.slot, due.attempt, due.previous);
            let result = instance.tick_within(&facts, permit, schedule.run_timeout, &slot).await;
            let took = started.elapsed();
            let outcome = match &result {
                Ok(()) => Outcome::Ok,
                Err(failure) if failure.is_plugin_fault() => Outcome::Error,
                Err(_) => {
                    // Cut off by the host: leadership went into doubt. The
                    // claim stays `running`: the next plan decides.
                    info!(
                        event = "slot_interrupted",
                        slot = due.slot.id,
                        attempt = due.attempt,
                        took_ms = took.as_millis() as u64,
                        "slot run cut off: leadership in doubt"
                    );
                    return (Some(instance), result);
                }
            };
            record.outcome = outcome;
            record.duration_ms = Some(took.as_millis() as u64);
            record.error = result.as_ref().err().map(ToString::to_string);
            match ledger.write(&record, Some(claimed.version)).await {
                Ok(_) => metrics.slot_outcome(outcome.as_str()),
                Err(e) => {
                    warn!(event = "slot_record_failed", slot = due.slot.id, error = %e, "could not record the outcome of a slot run")
                }
            }
            info!(
                event = "slot_finished",
                slot = due.slot.id,
                attempt = due.attempt,
                outcome = outcome.as_str(),
                took_ms = took.as_millis() as u64,
                term = ledger.term(),
                mono_ns = crate::clock::monotonic_ns(),
                "slot finished"
            );
            (Some(instance), result)
        }
    }
}

/// What the job learns of the slot it runs.
fn slot_info(slot: &Slot, attempt: u32, previous: Option<Outcome>) -> crate::plugin::SlotFacts {
    crate::plugin::SlotFacts {
        id: slot.id.clone(),
        at_ms: slot.at.as_millisecond(),
        attempt,
        previous: previous.map(|p| p.as_str().to_string()),
    }
}
