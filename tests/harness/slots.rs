//! Scheduled chaos (`zkrun-chaos --every 2s`): the participants run the
//! witness once per slot instead of every tick, a watcher copies the slot
//! ledger out of ZooKeeper as the run goes (pruning keeps only the newest
//! 200 records), and property 16 holds the ledger against what the
//! witnesses journaled:
//!
//! - **once per attempt**: no slot is started twice with one attempt
//!   number, fleet-wide;
//! - **nothing lost**: every slot instant from the first to the last one the
//!   run could still have run has a record, none still `running` (a run cut
//!   off must be retried or recorded `interrupted`), and the first slot came
//!   within a period of the first leader;
//! - **the ledger agrees with the journals**: a record `ok` or `error` was
//!   started with its attempt and term; no journaled start has a higher
//!   attempt than its slot's record, and one of the same attempt ran under
//!   the record's term; a stamped request names a slot that was started
//!   under its term.
//!
//! That runs happen only inside leadership windows is property 6: a slot's
//! run is a tick.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use zkrun::schedule::ledger::{Outcome, Record};

use crate::Event;
use crate::checker::{History, Report};

/// What a scheduled run was configured with and saw of its ledger.
#[derive(Clone, Debug, Default)]
pub struct ScheduledRun {
    /// `--every`: the slots' period.
    pub every: Duration,
    /// Wall clock (ms since the epoch) when the first leader was seen.
    pub first_leader_ms: i64,
    /// Wall clock when the participants were told to stop.
    pub stopped_ms: i64,
    /// Every slot record seen in ZooKeeper, newest version of each.
    pub ledger: Vec<Record>,
}

/// One start of a slot's run, as a witness journaled or logged it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct SlotStart {
    /// The slot id.
    pub slot: String,
    /// Its attempt number.
    pub attempt: u32,
    /// The participant incarnation that started it.
    pub id: String,
    /// The term it ran under.
    pub term: u64,
    /// When it started (CLOCK_MONOTONIC).
    pub start_ns: u64,
}

/// What became of the slots of a scheduled run.
#[derive(Clone, Debug, Default)]
pub struct SlotTally {
    /// Ledger records by outcome.
    pub outcomes: BTreeMap<String, usize>,
    /// Runs started (each attempt once).
    pub starts: usize,
    /// Runs started as a retry (attempt 2 or later).
    pub retries: usize,
    /// Slots started twice in one attempt (each a violation).
    pub twice: usize,
    /// Slots lost: no record, or left `running` (each a violation).
    pub lost: usize,
    /// The longest time between two consecutive slots' first starts.
    pub longest_gap: Option<Duration>,
}

/// `slot <id> attempt <A> term <T> start <ns>` (journal) or the same after
/// `witness ` (log).
fn parse_start(id: &str, e: &Event) -> Option<SlotStart> {
    let m = e.message();
    let line = match e.kind() {
        "journal" => m,
        "plugin_log" => m.strip_prefix("witness ")?,
        _ => return None,
    };
    let words: Vec<&str> = line.split_whitespace().collect();
    // A line torn by a kill has no business here: exactly eight words.
    let ["slot", slot, "attempt", attempt, "term", term, "start", start] = words.as_slice() else {
        return None;
    };
    Some(SlotStart {
        slot: slot.to_string(),
        attempt: attempt.parse().ok()?,
        id: id.to_string(),
        term: term.parse().ok()?,
        start_ns: start.parse().ok()?,
    })
}

/// Every slot start in `events`, once each (journal and log say the same).
pub fn slot_starts(events: &[(String, Event)]) -> Vec<SlotStart> {
    let mut starts: Vec<SlotStart> = events.iter().filter_map(|(id, e)| parse_start(id, e)).collect();
    starts.sort();
    starts.dedup();
    starts
}

/// The instant of a record, in ms since the epoch.
fn instant_ms(record: &Record) -> Option<i64> {
    record.at.parse::<jiff::Timestamp>().ok().map(|t| t.as_millisecond())
}

/// Property 16, for a history of a scheduled run.
pub fn check_slots(history: &History, report: &mut Report) {
    let Some(run) = &history.schedule else { return };
    let mut tally = SlotTally::default();
    let starts = slot_starts(&history.events);
    tally.starts = starts.len();
    tally.retries = starts.iter().filter(|s| s.attempt > 1).count();
    let ledger: BTreeMap<&str, &Record> = run.ledger.iter().map(|r| (r.slot.as_str(), r)).collect();
    for record in &run.ledger {
        *tally.outcomes.entry(record.outcome.as_str().to_string()).or_default() += 1;
    }

    // Once per attempt.
    let mut by_attempt: BTreeMap<(&str, u32), Vec<&SlotStart>> = BTreeMap::new();
    for s in &starts {
        by_attempt.entry((s.slot.as_str(), s.attempt)).or_default().push(s);
    }
    for ((slot, attempt), runs) in &by_attempt {
        if runs.len() > 1 {
            tally.twice += 1;
            let who: Vec<String> =
                runs.iter().map(|s| format!("{} (term {}) at {}", s.id, s.term, s.start_ns)).collect();
            report
                .violations
                .push(format!("slot started twice: {slot} attempt {attempt} by {}", who.join(" and ")));
        }
    }

    // The ledger agrees with the journals.
    for s in &starts {
        match ledger.get(s.slot.as_str()) {
            None => report.violations.push(format!(
                "slot ledger: {} started {} (attempt {}, term {}) but the ledger has no record of it",
                s.id, s.slot, s.attempt, s.term
            )),
            Some(r) if r.attempt < s.attempt => report.violations.push(format!(
                "slot ledger: {} started {} as attempt {} but the ledger's record is of attempt {}",
                s.id, s.slot, s.attempt, r.attempt
            )),
            Some(r) if r.attempt == s.attempt && r.term != s.term => report.violations.push(format!(
                "slot ledger: {} ran {} attempt {} under term {}, but the record of that attempt has term {}",
                s.id, s.slot, s.attempt, s.term, r.term
            )),
            Some(_) => {}
        }
    }
    for r in &run.ledger {
        let ran = matches!(r.outcome, Outcome::Ok | Outcome::Error);
        if ran && !starts.iter().any(|s| s.slot == r.slot && s.attempt == r.attempt && s.term == r.term) {
            report.violations.push(format!(
                "slot ledger: {} is recorded {} (attempt {}, term {}, by {}) but no witness started that run",
                r.slot,
                r.outcome.as_str(),
                r.attempt,
                r.term,
                r.participant
            ));
        }
    }
    for a in &history.arrivals {
        let Some(slot) = &a.slot else { continue };
        if !starts.iter().any(|s| &s.slot == slot && s.term == a.term) {
            report.violations.push(format!(
                "slot stamp: a request of term {} names slot {slot}, which no run of that term started",
                a.term
            ));
        }
    }

    // Nothing lost: every instant from the first record to the last one a
    // leader could still run before the stop.
    let every_ms = run.every.as_millis() as i64;
    let grace_ms = every_ms + 1000;
    let mut instants: BTreeMap<i64, &Record> = BTreeMap::new();
    for r in &run.ledger {
        match instant_ms(r) {
            Some(at) => {
                instants.insert(at, r);
            }
            None => report
                .violations
                .push(format!("slot ledger: record {} has an unreadable instant {:?}", r.slot, r.at)),
        }
    }
    let Some(first) = instants.keys().next().copied() else {
        report.violations.push("slot ledger: empty, no slot ever ran".into());
        report.slots = Some(tally);
        return;
    };
    if first > run.first_leader_ms + grace_ms {
        report.violations.push(format!(
            "slot lost: the first slot recorded is due {} ms after the first leader",
            first - run.first_leader_ms
        ));
    }
    let mut at = first;
    while at + grace_ms <= run.stopped_ms {
        match instants.get(&at) {
            None => {
                tally.lost += 1;
                report.violations.push(format!(
                    "slot lost: nothing recorded for the slot due at {}",
                    jiff::Timestamp::from_millisecond(at).map_or(at.to_string(), |t| t.to_string())
                ));
            }
            Some(r) if r.outcome == Outcome::Running => {
                tally.lost += 1;
                report.violations.push(format!(
                    "slot lost: {} (attempt {}, term {}) is still `running` at the end: neither retried nor \
                     recorded interrupted",
                    r.slot, r.attempt, r.term
                ));
            }
            Some(_) => {}
        }
        at += every_ms;
    }

    let mut firsts: Vec<u64> =
        by_attempt.values().filter_map(|runs| runs.iter().map(|s| s.start_ns).min()).collect();
    firsts.sort_unstable();
    tally.longest_gap = firsts.windows(2).map(|w| Duration::from_nanos(w[1] - w[0])).max();
    report.slots = Some(tally);
}

/// Copies the slot ledger out of ZooKeeper every few seconds while the
/// chaos runs, keeping each record's newest version (by `mzxid`), so that
/// records the leaders prune are still checked.
pub struct LedgerWatch {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<BTreeMap<String, (i64, Record)>>>,
    thread: Option<std::thread::JoinHandle<()>>,
    servers: String,
    dir: String,
}

impl LedgerWatch {
    /// Starts watching `<election>/slots` on the ensemble at `servers`.
    pub fn start(servers: String, election: &str) -> LedgerWatch {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(BTreeMap::new()));
        let dir = format!("{election}/slots");
        let thread = {
            let (stop, seen, servers, dir) = (stop.clone(), seen.clone(), servers.clone(), dir.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    read_ledger(&servers, &dir, &seen);
                    for _ in 0..30 {
                        if stop.load(Ordering::Relaxed) {
                            return;
                        }
                        std::thread::sleep(Duration::from_millis(100));
                    }
                }
            })
        };
        LedgerWatch { stop, seen, thread: Some(thread), servers, dir }
    }

    /// Stops watching, reads the ledger a last time, and returns every
    /// record seen.
    pub fn finish(mut self) -> Vec<Record> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        read_ledger(&self.servers, &self.dir, &self.seen);
        let seen = self.seen.lock().unwrap();
        seen.values().map(|(_, r)| r.clone()).collect()
    }
}

impl Drop for LedgerWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// One pass over the ledger; a fault that makes it fail is waited out by
/// the next pass.
fn read_ledger(servers: &str, dir: &str, seen: &Mutex<BTreeMap<String, (i64, Record)>>) {
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread().enable_all().build() else { return };
    let limit = Duration::from_secs(5);
    runtime.block_on(async {
        let connect = zookeeper_client::Client::connector()
            .with_session_timeout(Duration::from_secs(4))
            .connect(servers);
        let Ok(Ok(client)) = tokio::time::timeout(limit, connect).await else { return };
        let Ok(Ok(children)) = tokio::time::timeout(limit, client.list_children(dir)).await else { return };
        for child in children {
            let Ok(Ok((data, stat))) =
                tokio::time::timeout(limit, client.get_data(&format!("{dir}/{child}"))).await
            else {
                continue;
            };
            let Ok(record) = serde_json::from_slice::<Record>(&data) else { continue };
            let mut seen = seen.lock().unwrap();
            let newer = seen.get(&child).is_none_or(|(zxid, _)| stat.mzxid > *zxid);
            if newer {
                seen.insert(child, (stat.mzxid, record));
            }
        }
    });
}
