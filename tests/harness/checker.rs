//! The chaos checker: reads what the participants logged (and journaled),
//! what the harness did to them, and what ZooKeeper stored, and reports
//! every violation of zkrun's promise with its evidence.
//!
//! A *participant* here is one process (`w0#2`: slot `w0`, its third run).
//! Its *leadership windows* are rebuilt from its host events: a window opens
//! at `elected` or `resumed` and closes at the first `suspended`, `demoted`,
//! `shutdown` or `stopped`, or at the end of its log (killed). It is also
//! cut to the leases the host logged (`lease` events, one per grant, with
//! `lease_end_ns`): leader work is allowed only up to the latest lease end,
//! so a frozen process, which logs nothing while frozen, is held to its
//! last lease; a grant logged after the previous lease ran out starts a new
//! window.
//!
//! Properties:
//! 1. no two ticks of different participants overlap in time;
//! 2. terms of successive elections strictly increase, ticks never go back
//!    to an older term;
//! 3. the job comes back after the last fault (checked by the runner);
//! 4. the fenced counter lost and duplicated no increment;
//! 5. no two participants' leadership windows overlap;
//! 6. every tick starts inside a window of its own participant (ticks are
//!    read from the witness's journal too, which no permit guards, so a
//!    tick refused from its first log line still shows), and every line a
//!    leader hook logged lies inside one;
//! 7. nobody is elected while another participant may still lead: before
//!    its last logged deadline (`deadline_ns`), unless it demoted or shut
//!    down first;
//! 8. a leader cut off from the ensemble (by the harness) demotes itself
//!    within its deadline counted from the cut, 2L/3, plus L/6 of slack
//!    (`L` the lease period: `--lease`, or the session timeout `T`);
//! 9. blind puts (no compare-and-set, only the fence) land in term order:
//!    in ZooKeeper version order their terms never go back (puts are known
//!    from their writers' records and from every participant's reads).
//!
//! Properties 11 to 15 (independent lease bounds, byte-level egress, the
//! quota, liveness, observable decisions) are in [`crate::properties`].

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::Duration;

use crate::Event;
use crate::chaos::FaultKind;
pub use crate::properties::{ByteArrival, Decisions};

/// How late a tick may start after its window closed: the time between the
/// host's pre-tick check and the job reading the clock (microseconds; no
/// correct run measured here had a single tick start past its window). A
/// tick started without the check starts milliseconds to seconds late.
pub const TICK_SLACK_NS: u64 = 1_000_000;

/// How late a leader hook's log line may be stamped after its window
/// closed: the permit check and the timestamp are a few instructions apart.
pub const LINE_SLACK_NS: u64 = 2_000_000;

/// Everything the checker reads.
#[derive(Clone, Debug, Default)]
pub struct History {
    /// Each participant's log lines (and journal lines, as `journal` events).
    pub events: Vec<(String, Event)>,
    /// The faults the harness applied, with when and to whom.
    pub faults: Vec<FaultSpan>,
    /// The counter's stored value and version.
    pub counter: Option<Result<(u64, i32), String>>,
    /// The session timeout the participants asked for.
    pub session_timeout: Duration,
    /// The lease period they asked for (`--lease`), if any.
    pub lease: Option<Duration>,
    /// Every stamped HTTP request, as its bytes reached the receiver.
    pub arrivals: Vec<ByteArrival>,
    /// The election's fenced state as stored at the end (key, value).
    pub state: Option<Vec<(String, Vec<u8>)>>,
    /// The state's byte quota the participants ran with.
    pub state_max_bytes: Option<usize>,
    /// The state's byte rate the participants ran with (bytes a second;
    /// the burst is one second's worth, at least one largest value).
    pub state_max_bytes_per_second: Option<usize>,
    /// For a scheduled run (`--every`): its period and the slot ledger.
    pub schedule: Option<crate::slots::ScheduledRun>,
}

/// One fault as applied.
#[derive(Clone, Debug)]
pub struct FaultSpan {
    /// What kind.
    pub kind: FaultKind,
    /// The participant it hit, if it hit one.
    pub participant: Option<String>,
    /// CLOCK_MONOTONIC when it was injected.
    pub start_ns: u64,
    /// CLOCK_MONOTONIC when it was healed.
    pub end_ns: u64,
}

/// What a run found.
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// The seed.
    pub seed: u64,
    /// Faults injected, by kind.
    pub faults: BTreeMap<FaultKind, usize>,
    /// Ticks that started.
    pub ticks: usize,
    /// Ticks cut off before they logged their end.
    pub cut_off: usize,
    /// Elections won.
    pub handovers: usize,
    /// Leadership windows rebuilt from the logs.
    pub windows: usize,
    /// Counter increments logged as committed.
    pub commits: usize,
    /// Blind puts that landed.
    pub blind_puts: usize,
    /// The counter's stored value at the end.
    pub counter: u64,
    /// Time from the last heal to the first tick.
    pub recovery: Option<Duration>,
    /// The longest time from a fault's heal to the next tick, and its fault.
    pub longest_gap: Option<(Duration, FaultKind)>,
    /// The longest time without a tick starting, over the whole run.
    pub longest_leaderless: Option<Duration>,
    /// State writes the witness logged as refused for the quota.
    pub quota_refused: usize,
    /// `lead_decision` events, by path.
    pub decisions: Decisions,
    /// What became of the slots, in a scheduled run.
    pub slots: Option<crate::slots::SlotTally>,
    /// The leaders' stamped HTTP requests, as the chaos receiver saw them.
    pub http: Option<HttpTally>,
    /// Wall time of the run.
    pub elapsed: Duration,
    /// Every property violated, with evidence.
    pub violations: Vec<String>,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "seed {} ran {:.0?}", self.seed, self.elapsed)?;
        let total: usize = self.faults.values().sum();
        writeln!(f, "faults: {total}")?;
        for (kind, n) in &self.faults {
            writeln!(f, "  {kind:?}: {n}")?;
        }
        writeln!(f, "ticks: {} ({} cut off by a lost lease)", self.ticks, self.cut_off)?;
        writeln!(f, "handovers (elections won): {}", self.handovers)?;
        writeln!(f, "leadership windows: {}", self.windows)?;
        writeln!(f, "counter: {} committed increments logged, {} stored", self.commits, self.counter)?;
        writeln!(f, "blind puts landed: {}", self.blind_puts)?;
        if let Some(http) = &self.http {
            writeln!(
                f,
                "http: {} requests arrived, {} out of term order; zkrun refused {} and cut off {} in flight",
                http.arrived, http.out_of_order, http.refused_by_zkrun, http.cut_off_by_zkrun
            )?;
        }
        match self.recovery {
            Some(d) => writeln!(f, "first tick {d:.1?} after the last fault healed")?,
            None => writeln!(f, "no tick after the last fault healed")?,
        }
        if let Some((gap, kind)) = self.longest_gap {
            writeln!(f, "longest leaderless gap after a heal: {gap:.1?} (after {kind:?})")?;
        }
        if let Some(gap) = self.longest_leaderless {
            writeln!(f, "longest leaderless gap overall: {gap:.1?}")?;
        }
        writeln!(f, "state writes refused for the quota: {}", self.quota_refused)?;
        if let Some(s) = &self.slots {
            let outcomes: Vec<String> = s.outcomes.iter().map(|(o, n)| format!("{n} {o}")).collect();
            writeln!(
                f,
                "slots: {} recorded ({}); {} runs started, {} of them retries; {} started twice in one attempt; \
                 {} lost without a record",
                s.outcomes.values().sum::<usize>(),
                outcomes.join(", "),
                s.starts,
                s.retries,
                s.twice,
                s.lost
            )?;
            if let Some(gap) = s.longest_gap {
                writeln!(f, "longest time between two slots' starts: {gap:.1?}")?;
            }
        }
        let d = &self.decisions;
        writeln!(f, "lead decisions: {} shortcut, {} full, {} takeover", d.shortcut, d.full, d.takeover)?;
        writeln!(f, "violations: {}", self.violations.len())?;
        for v in &self.violations {
            writeln!(f, "  {v}")?;
        }
        Ok(())
    }
}

/// What became of the witness's HTTP requests.
#[derive(Clone, Debug, Default)]
pub struct HttpTally {
    /// Requests that arrived whole at the receiver.
    pub arrived: usize,
    /// Of those, arrivals with a term lower than an earlier arrival's (each
    /// a violation; the receiver refuses them, as docs/egress.md says to).
    pub out_of_order: u64,
    /// Requests zkrun refused to send (no confirmed leadership).
    pub refused_by_zkrun: usize,
    /// Requests zkrun cut off in flight (lease lapsed, hook ended).
    pub cut_off_by_zkrun: usize,
}

/// A tick as the witness logged or journaled it.
#[derive(Clone, Debug)]
struct Tick {
    id: String,
    term: u64,
    start: u64,
    end: Option<u64>,
}

/// A span of one participant's leadership.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Window {
    /// The participant.
    pub id: String,
    /// The term it led.
    pub term: u64,
    /// CLOCK_MONOTONIC ns when leader work became allowed.
    pub start: u64,
    /// CLOCK_MONOTONIC ns when it stopped being allowed.
    pub end: u64,
}

/// A lease grant the host logged.
#[derive(Clone, Copy, Debug)]
struct Grant {
    at: u64,
    deadline: u64,
}

pub(crate) fn number_after(message: &str, word: &str) -> Option<u64> {
    let mut words = message.split_whitespace();
    words.find(|w| *w == word)?;
    words.next()?.parse().ok()
}

/// The start time of a tick, from a `witness start` log line or a journal
/// `start` line.
pub(crate) fn tick_start(event: &Event) -> Option<u64> {
    let m = event.message();
    match event.kind() {
        "plugin_log" if m.starts_with("witness start ") => number_after(m, "start"),
        // A line torn by a kill has no business here: exactly four words.
        "journal" if m.starts_with("start ") && m.split_whitespace().count() == 4 => number_after(m, "start"),
        _ => None,
    }
}

fn is_closing(kind: &str) -> bool {
    matches!(kind, "suspended" | "demoted" | "shutdown" | "stopped")
}

/// Gives up leadership for good (unlike `suspended`).
fn is_giving_up(kind: &str) -> bool {
    matches!(kind, "demoted" | "shutdown" | "stopped" | "resigning" | "plugin_failed")
}

fn by_participant(events: &[(String, Event)]) -> BTreeMap<&str, Vec<&Event>> {
    let mut map: BTreeMap<&str, Vec<&Event>> = BTreeMap::new();
    for (id, e) in events {
        map.entry(id.as_str()).or_default().push(e);
    }
    map
}

/// Rebuilds every participant's leadership windows (see the module doc).
pub fn windows(events: &[(String, Event)]) -> Vec<Window> {
    let mut out = Vec::new();
    for (id, log) in by_participant(events) {
        let mut host: Vec<&Event> = log.iter().copied().filter(|e| e.mono_ns().is_some()).collect();
        host.sort_by_key(|e| e.mono_ns());
        let has_leases = host.iter().any(|e| e.kind() == "lease");
        let last_seen = host.iter().filter_map(|e| e.mono_ns()).max().unwrap_or(0);
        // Without lease events (an older host), only the events bound it.
        let mut cover = if has_leases { 0 } else { u64::MAX };
        let mut open: Option<(u64, u64)> = None;
        let push = |out: &mut Vec<Window>, term: u64, start: u64, end: u64| {
            if end > start {
                out.push(Window { id: id.to_string(), term, start, end });
            }
        };
        for e in &host {
            let at = e.mono_ns().unwrap_or(0);
            match e.kind() {
                "lease" => {
                    let lease_end = e.json["lease_end_ns"].as_u64().unwrap_or(0);
                    if let Some((start, term)) = open
                        && at > cover
                    {
                        // The lease had run out before this grant: a gap.
                        push(&mut out, term, start, cover);
                        open = Some((at, term));
                    }
                    cover = cover.max(lease_end);
                }
                "elected" | "resumed" if open.is_none() => open = Some((at, e.term().unwrap_or(0))),
                kind if is_closing(kind) => {
                    if let Some((start, term)) = open.take() {
                        push(&mut out, term, start, at.min(cover));
                    }
                }
                _ => {}
            }
        }
        if let Some((start, term)) = open {
            // Killed, or still running: up to its last lease (or last line).
            let end = if has_leases { cover } else { last_seen };
            push(&mut out, term, start, end);
        }
    }
    out.sort_by_key(|w| w.start);
    out
}

/// Checks every property on `history`, adding what it finds to `report`.
pub fn check(history: &History, report: &mut Report) {
    let events = &history.events;
    let ticks = collect_ticks(events);
    report.ticks = ticks.len();
    report.cut_off = ticks.iter().filter(|t| t.end.is_none()).count();
    check_tick_overlap(&ticks, report);
    check_terms(events, &ticks, report);
    check_counter(events, history.counter.clone(), report);

    let windows = windows(events);
    report.windows = windows.len();
    check_window_overlap(&windows, report);
    check_ticks_inside_windows(&ticks, &windows, report);
    check_leader_lines_inside_windows(events, &windows, report);
    check_elected_after_deadlines(events, report);
    let period = history.lease.map_or(history.session_timeout, |lease| lease.min(history.session_timeout));
    check_cut_off_leaders_demote(events, &history.faults, period, report);
    check_blind_puts(events, report);
    report.longest_gap = longest_gap(&ticks, &history.faults);
    report.longest_leaderless = crate::properties::longest_leaderless(events);
    crate::properties::check_more(history, &windows, report);
    crate::slots::check_slots(history, report);
}

fn collect_ticks(events: &[(String, Event)]) -> Vec<Tick> {
    let mut ticks: BTreeMap<(String, u64), Tick> = BTreeMap::new();
    for (id, e) in events {
        let m = e.message();
        if let Some(start) = tick_start(e) {
            let term = number_after(m, "term").unwrap_or(0);
            ticks.entry((id.clone(), start)).or_insert(Tick { id: id.clone(), term, start, end: None });
        } else if e.kind() == "plugin_log" && m.starts_with("witness end ") {
            let mut words = m.split_whitespace().skip(2);
            let start: u64 = words.next().and_then(|w| w.parse().ok()).unwrap_or(0);
            let end: u64 = words.next().and_then(|w| w.parse().ok()).unwrap_or(0);
            let term = number_after(m, "term").unwrap_or(0);
            ticks.entry((id.clone(), start)).or_insert(Tick { id: id.clone(), term, start, end: None }).end =
                Some(end);
        }
    }
    let mut ticks: Vec<Tick> = ticks.into_values().collect();
    ticks.sort_by_key(|t| t.start);
    ticks
}

/// Property 1: ticks of different participants never overlap.
fn check_tick_overlap(ticks: &[Tick], report: &mut Report) {
    let mut reach: Option<&Tick> = None;
    for tick in ticks {
        if let Some(before) = reach
            && before.id != tick.id
            && tick.start <= before.end.unwrap_or(before.start)
        {
            report.violations.push(format!(
                "overlap: {} ticked {}..{:?} (term {}) while {} started at {} (term {})",
                before.id, before.start, before.end, before.term, tick.id, tick.start, tick.term
            ));
        }
        let reaches_further = reach.is_none_or(|b| tick.end.unwrap_or(tick.start) > b.end.unwrap_or(b.start));
        if reaches_further {
            reach = Some(tick);
        }
    }
}

/// Property 2: successive elections have strictly increasing terms, and
/// ticks never go back to an older term.
fn check_terms(events: &[(String, Event)], ticks: &[Tick], report: &mut Report) {
    let mut elections: Vec<(u64, u64, String)> = events
        .iter()
        .filter(|(_, e)| e.kind() == "elected")
        .filter_map(|(id, e)| Some((e.mono_ns()?, e.term()?, id.clone())))
        .collect();
    elections.sort();
    report.handovers = elections.len();
    for pair in elections.windows(2) {
        if pair[1].1 <= pair[0].1 {
            report.violations.push(format!(
                "term did not increase: {} elected with {} after {} with {}",
                pair[1].2, pair[1].1, pair[0].2, pair[0].1
            ));
        }
    }
    for pair in ticks.windows(2) {
        if pair[1].term < pair[0].term {
            report.violations.push(format!(
                "tick went back from term {} ({}) to {} ({})",
                pair[0].term, pair[0].id, pair[1].term, pair[1].id
            ));
        }
    }
}

/// Property 4: the counter lost and duplicated nothing.
fn check_counter(
    events: &[(String, Event)],
    stored: Option<Result<(u64, i32), String>>,
    report: &mut Report,
) {
    let mut commits: Vec<(u64, u64, u64, String)> = events
        .iter()
        .filter(|(_, e)| e.kind() == "plugin_log" && e.message().starts_with("committed "))
        .filter_map(|(id, e)| {
            let n = number_after(e.message(), "committed")?;
            Some((e.mono_ns()?, n, number_after(e.message(), "term")?, id.clone()))
        })
        .collect();
    commits.sort();
    report.commits = commits.len();
    for pair in commits.windows(2) {
        if pair[1].1 <= pair[0].1 {
            report.violations.push(format!(
                "counter: {} committed {} after {} committed {}",
                pair[1].3, pair[1].1, pair[0].3, pair[0].1
            ));
        }
        if pair[1].2 < pair[0].2 {
            report.violations.push(format!("counter: term went back from {} to {}", pair[0].2, pair[1].2));
        }
    }
    match stored {
        None => {}
        Some(Ok((value, version))) => {
            report.counter = value;
            if value != version as u64 + 1 {
                report.violations.push(format!(
                    "counter: value {value} at version {version}: an increment was lost or doubled"
                ));
            }
            if let Some(last) = commits.last()
                && last.1 > value
            {
                report
                    .violations
                    .push(format!("counter: {} was logged as committed, but {value} is stored", last.1));
            }
        }
        // No commit was ever logged: the counter may well not exist.
        Some(Err(_)) if report.commits == 0 => report.counter = 0,
        Some(Err(e)) => report.violations.push(format!("counter: cannot read it: {e}")),
    }
}

/// Property 5: no two participants' windows overlap.
fn check_window_overlap(windows: &[Window], report: &mut Report) {
    let mut reach: Option<&Window> = None;
    for w in windows {
        if let Some(before) = reach
            && before.id != w.id
            && w.start < before.end
        {
            report.violations.push(format!(
                "windows overlap: {} led term {} over {}..{} while {} led term {} from {}",
                before.id, before.term, before.start, before.end, w.id, w.term, w.start
            ));
        }
        if reach.is_none_or(|b| w.end > b.end) {
            reach = Some(w);
        }
    }
}

/// Property 6: every tick starts inside one of its participant's windows.
fn check_ticks_inside_windows(ticks: &[Tick], windows: &[Window], report: &mut Report) {
    for tick in ticks {
        let inside = windows
            .iter()
            .any(|w| w.id == tick.id && w.start <= tick.start && tick.start <= w.end + TICK_SLACK_NS);
        if !inside {
            let last = windows.iter().rfind(|w| w.id == tick.id && w.start <= tick.start);
            report.violations.push(format!(
                "tick outside leadership: {} started a tick at {} (term {}); its last window before: {:?}",
                tick.id,
                tick.start,
                tick.term,
                last.map(|w| (w.start, w.end))
            ));
        }
    }
}

/// Property 6, for what a tick got out: every line a leader hook logged
/// (zkrun refuses host calls outside the permit) lies inside a window of
/// its participant. The slack covers the time between the host's permit
/// check and the line's timestamp.
fn check_leader_lines_inside_windows(events: &[(String, Event)], windows: &[Window], report: &mut Report) {
    for (id, e) in events {
        let m = e.message();
        let leader_line = e.kind() == "plugin_log"
            && ["witness start ", "witness end ", "committed ", "blind put ", "write of "]
                .iter()
                .any(|p| m.starts_with(p));
        let Some(at) = e.mono_ns().filter(|_| leader_line) else { continue };
        let inside = windows.iter().any(|w| &w.id == id && w.start <= at && at <= w.end + LINE_SLACK_NS);
        if !inside {
            let last = windows.iter().rfind(|w| &w.id == id && w.start <= at);
            report.violations.push(format!(
                "leader work outside leadership: {id} logged {m:?} at {at}; its last window before: {:?}",
                last.map(|w| (w.start, w.end))
            ));
        }
    }
}

/// Property 7: an election comes after every other participant either gave
/// up or passed the deadline of its last lease.
fn check_elected_after_deadlines(events: &[(String, Event)], report: &mut Report) {
    let logs = by_participant(events);
    for (id, e) in events {
        if e.kind() != "elected" {
            continue;
        }
        let Some(at) = e.mono_ns() else { continue };
        for (other, log) in &logs {
            if *other == id.as_str() {
                continue;
            }
            let before: Vec<&&Event> = log.iter().filter(|x| x.mono_ns().is_some_and(|t| t < at)).collect();
            let Some(grant) = before.iter().rev().find(|x| x.kind() == "lease").map(|x| Grant {
                at: x.mono_ns().unwrap_or(0),
                deadline: x.json["deadline_ns"].as_u64().unwrap_or(0),
            }) else {
                continue;
            };
            // Gave up since it last became leader (a renewal in flight
            // may still be logged after its shutdown began).
            let led_since = before
                .iter()
                .rev()
                .find(|x| matches!(x.kind(), "elected" | "resumed"))
                .and_then(|x| x.mono_ns())
                .unwrap_or(0);
            let gave_up = before
                .iter()
                .any(|x| is_giving_up(x.kind()) && x.mono_ns().unwrap_or(0) >= led_since.min(grant.at));
            if grant.deadline > at && !gave_up {
                report.violations.push(format!(
                    "elected too early: {id} elected (term {:?}) at {at}, but {other} could lead until {} \
                     ({:.0?} later) and had not given up",
                    e.term(),
                    grant.deadline,
                    Duration::from_nanos(grant.deadline - at)
                ));
            }
        }
    }
}

/// Property 8: a leader cut off from the ensemble demotes in time: within
/// its deadline (2/3 of the lease period `period`, the session timeout
/// without `--lease`) plus a sixth of it.
fn check_cut_off_leaders_demote(
    events: &[(String, Event)],
    faults: &[FaultSpan],
    period: Duration,
    report: &mut Report,
) {
    let logs = by_participant(events);
    let bound = (period * 2 / 3 + period / 6).as_nanos() as u64;
    for fault in faults {
        let cut = matches!(
            fault.kind,
            FaultKind::PartitionShort | FaultKind::PartitionLong | FaultKind::ReconnectBackoff
        );
        if !cut || fault.end_ns - fault.start_ns < bound {
            continue;
        }
        let Some(id) = &fault.participant else { continue };
        let Some(log) = logs.get(id.as_str()) else { continue };
        let leading = log
            .iter()
            .filter(|e| e.mono_ns().is_some_and(|t| t <= fault.start_ns))
            .rev()
            .find(|e| matches!(e.kind(), "elected" | "resumed") || is_giving_up(e.kind()))
            .is_some_and(|e| matches!(e.kind(), "elected" | "resumed"));
        if !leading {
            continue;
        }
        let demoted =
            log.iter().find(|e| is_giving_up(e.kind()) && e.mono_ns().is_some_and(|t| t > fault.start_ns));
        let late = match demoted.and_then(|e| e.mono_ns()) {
            Some(t) => t > fault.start_ns + bound,
            None => true,
        };
        if late {
            report.violations.push(format!(
                "late demotion: {id} was cut off at {} while leading and demoted at {:?}, more than {:?} later",
                fault.start_ns,
                demoted.and_then(|e| e.mono_ns()).map(|t| Duration::from_nanos(t - fault.start_ns)),
                Duration::from_nanos(bound)
            ));
        }
    }
}

/// Property 9: blind puts land in term order.
fn check_blind_puts(events: &[(String, Event)], report: &mut Report) {
    // (version, term, seq, participant), each put once.
    let mut puts: BTreeSet<(u64, u64, u64, String)> = BTreeSet::new();
    let mut reads: BTreeSet<(u64, u64, u64)> = BTreeSet::new();
    for (id, e) in events {
        let m = e.message();
        let whole = m.split_whitespace().count() == 8;
        if matches!(e.kind(), "plugin_log" | "journal") && m.starts_with("blind put ") && whole {
            let (Some(term), Some(seq), Some(version)) =
                (number_after(m, "term"), number_after(m, "seq"), number_after(m, "version"))
            else {
                continue;
            };
            puts.insert((version, term, seq, id.clone()));
        } else if e.kind() == "plugin_log" && m.starts_with("blind read ") && whole {
            // A read of another's write: who wrote it is not known here.
            let (Some(term), Some(seq), Some(version)) =
                (number_after(m, "term"), number_after(m, "seq"), number_after(m, "version"))
            else {
                continue;
            };
            reads.insert((version, term, seq));
        }
    }
    report.blind_puts = puts.len();
    // Every write seen, by its writer or by a later read, once.
    let mut seen: BTreeMap<(u64, u64, u64), String> =
        reads.into_iter().map(|key| (key, "a reader".to_string())).collect();
    for (version, term, seq, id) in puts {
        seen.insert((version, term, seq), id);
    }
    let puts: Vec<(u64, u64, u64, String)> = seen.into_iter().map(|((v, t, s), id)| (v, t, s, id)).collect();
    for pair in puts.windows(2) {
        let ((v0, t0, s0, id0), (v1, t1, s1, id1)) = (&pair[0], &pair[1]);
        if v0 == v1 {
            report.violations.push(format!(
                "blind put: version {v0} written twice, by {id0} (term {t0} seq {s0}) and {id1} (term {t1} seq {s1})"
            ));
        } else if t1 < t0 {
            report.violations.push(format!(
                "stale write landed: {id1}'s put (term {t1} seq {s1}) is version {v1}, after {id0}'s \
                 (term {t0} seq {s0}) at version {v0}"
            ));
        }
    }
}

/// The longest time from a fault's heal to the next tick of anyone.
fn longest_gap(ticks: &[Tick], faults: &[FaultSpan]) -> Option<(Duration, FaultKind)> {
    faults
        .iter()
        .filter_map(|f| {
            let next = ticks.iter().map(|t| t.start).find(|&s| s > f.end_ns)?;
            Some((Duration::from_nanos(next - f.end_ns), f.kind))
        })
        .max_by_key(|(gap, _)| *gap)
}
