//! The chaos checker's properties 11 to 15 (1 to 10 are in
//! [`crate::checker`] and the runner), each of which a mutant of zkrun once slipped past:
//!
//! 11. **independent bounds**: every lease the host logged is checked
//!     against T and L from the run's configuration, not against numbers
//!     the host derived: work may end no later than `proof + L/2`, the
//!     deadline no later than `proof + 2L/3`, both before `proof + T`, and
//!     the proof is not in the host's future;
//! 12. **byte-level egress**: no byte of a stamped HTTP request reaches the
//!     receiver after its sender's leadership window (of that term) ended,
//!     beyond [`BYTE_SLACK_NS`]; requests cut off mid-body count too;
//! 13. **quota**: a state write the witness logged as refused for the quota
//!     never landed, ZooKeeper's stored state stays under the byte quota, and
//!     no participant had more value bytes admitted in a term than the byte
//!     rate's bucket allows in any window (`burst + rate × d`);
//! 14. **liveness**: a graceful handover (SIGTERM of a leader on healthy
//!     links) takes at most [`handover_bound`]; after each fault heals,
//!     someone ticks within [`heal_bound`] of its kind; with a slow head of
//!     line someone ticks within `3L + 1 s` of the leader's stop; each leader
//!     `ResetThenStop` shuts down hands over within the same bound as a
//!     graceful handover; with the
//!     leader frozen and the next in line's connection reset, the takeover
//!     comes within `1.15 L + 0.5 s` (1.5 × its normal time);
//! 15. **observable decisions**: no `lead_decision` with `path=shortcut`
//!     while another participant's lease node certainly existed, and no
//!     decision on a warm proof (`shortcut`, `takeover`) taken on another
//!     connection than the one it led on (`proof_generation` ≠
//!     `generation`: notifications may have been lost across the change).
//!
//! Each has a test that feeds it a planted failure (`tests/suite/chaos.rs`).

use std::collections::BTreeMap;
use std::time::Duration;

use crate::Event;
use crate::chaos::FaultKind;
use crate::checker::{FaultSpan, History, Report, Window, tick_start};

/// How late a request byte may reach the receiver after its sender's window
/// closed: the permit check on each socket write and the receiver's stamp
/// are a loopback write and a thread wake-up apart.
pub const BYTE_SLACK_NS: u64 = 2_000_000;

/// Rounding slack of the lease bounds (the host computes them on
/// CLOCK_BOOTTIME and converts; microseconds in practice).
const ROUNDING_NS: u64 = 1_000_000;

/// Lead decisions seen, by path.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Decisions {
    /// `path=shortcut`: led on the warm proof without reading again.
    pub shortcut: usize,
    /// `path=full`: led after reading the children.
    pub full: usize,
    /// `path=takeover`: took over a silent leader.
    pub takeover: usize,
}

/// One stamped request as the chaos receiver saw its bytes arrive.
#[derive(Clone, Debug)]
pub struct ByteArrival {
    /// `zkrun-term`.
    pub term: u64,
    /// `zkrun-participant`, if sent.
    pub participant: Option<String>,
    /// CLOCK_MONOTONIC when its first byte arrived.
    pub first_byte_ns: u64,
    /// CLOCK_MONOTONIC when its last byte arrived.
    pub last_byte_ns: u64,
    /// Reads that brought its bytes.
    pub chunks: usize,
    /// Whether it arrived whole (not cut off mid-body).
    pub whole: bool,
    /// `zkrun-slot`, if sent (a scheduled run's request).
    pub slot: Option<String>,
}

/// The lease period L and session timeout T of a run.
fn period(history: &History) -> (Duration, Duration) {
    let t = history.session_timeout;
    (history.lease.map_or(t, |lease| lease.min(t)), t)
}

/// Checks properties 11 to 15, adding what it finds to `report`.
pub fn check_more(history: &History, windows: &[Window], report: &mut Report) {
    check_lease_bounds(&history.events, history, report);
    check_egress_bytes(&history.arrivals, windows, report);
    check_quota(history, report);
    check_liveness(history, report);
    check_decisions(&history.events, history, report);
}

/// Property 11.
fn check_lease_bounds(events: &[(String, Event)], history: &History, report: &mut Report) {
    let (l, t) = period(history);
    let (l, t) = (l.as_nanos() as u64, t.as_nanos() as u64);
    for (id, e) in events.iter().filter(|(_, e)| e.kind() == "lease") {
        let field = |name: &str| e.json[name].as_u64();
        let (Some(proof), Some(end), Some(deadline), Some(at)) =
            (field("proof_ns"), field("lease_end_ns"), field("deadline_ns"), e.mono_ns())
        else {
            report.violations.push(format!("lease bound: {id} logged a lease without its times: {}", e.raw));
            continue;
        };
        let mut wrong = Vec::new();
        if proof > at + ROUNDING_NS {
            wrong.push(format!("its proof is {:?} in its future", Duration::from_nanos(proof - at)));
        }
        if end > proof + l / 2 + ROUNDING_NS {
            wrong.push(format!(
                "work may run {:?} past the proof, more than L/2",
                Duration::from_nanos(end - proof)
            ));
        }
        if deadline > proof + l * 2 / 3 + ROUNDING_NS {
            wrong.push(format!(
                "its deadline is {:?} past the proof, more than 2L/3",
                Duration::from_nanos(deadline - proof)
            ));
        }
        if end >= proof + t || deadline >= proof + t {
            wrong.push("it reaches the session's expiry (proof + T)".to_string());
        }
        if end > deadline {
            wrong.push("work may run past its deadline".to_string());
        }
        if !wrong.is_empty() {
            report.violations.push(format!(
                "lease bound: {id}'s lease of term {:?} (L = {:?}, T = {:?}): {}",
                e.term(),
                Duration::from_nanos(l),
                Duration::from_nanos(t),
                wrong.join("; ")
            ));
        }
    }
}

/// Property 12.
fn check_egress_bytes(arrivals: &[ByteArrival], windows: &[Window], report: &mut Report) {
    for a in arrivals {
        // The window of that term in which the request began.
        let window = windows
            .iter()
            .filter(|w| w.term == a.term && w.start <= a.first_byte_ns + BYTE_SLACK_NS)
            .max_by_key(|w| w.start);
        let Some(window) = window else {
            report.violations.push(format!(
                "egress outside leadership: a request of term {} from {:?} began arriving at {} with no window \
                 of that term open",
                a.term, a.participant, a.first_byte_ns
            ));
            continue;
        };
        if a.last_byte_ns > window.end + BYTE_SLACK_NS {
            report.violations.push(format!(
                "egress after leadership: a byte of {}'s request (term {}, {} chunks, {}) arrived at {}, {:?} after \
                 its window closed at {}",
                window.id,
                a.term,
                a.chunks,
                if a.whole { "whole" } else { "cut off" },
                a.last_byte_ns,
                Duration::from_nanos(a.last_byte_ns - window.end),
                window.end
            ));
        }
    }
}

/// The tag a witness burst write carries (`tag <term>.<instance>.<seq>.<k>`), if any.
pub fn burst_tag(text: &str) -> Option<&str> {
    let mut words = text.split_whitespace();
    words.find(|w| *w == "tag")?;
    // In a log line the tag is followed by `: <error>`.
    words.next().map(|w| w.trim_end_matches(':'))
}

/// Property 13.
fn check_quota(history: &History, report: &mut Report) {
    let refused: BTreeMap<&str, &str> = history
        .events
        .iter()
        .filter(|(_, e)| {
            matches!(e.kind(), "plugin_log" | "journal") && e.message().starts_with("quota refused ")
        })
        .filter_map(|(id, e)| Some((burst_tag(e.message())?, id.as_str())))
        .collect();
    report.quota_refused = refused.len();
    check_byte_rate(history, report);
    let Some(stored) = &history.state else { return };
    for (key, value) in stored {
        let text = String::from_utf8_lossy(value);
        if let Some(tag) = burst_tag(&text)
            && let Some(id) = refused.get(tag)
        {
            report.violations.push(format!(
                "quota: {id}'s write {tag} of {key:?} was refused for the quota, but it is stored"
            ));
        }
    }
    let bytes: usize = stored.iter().map(|(_, v)| v.len()).sum();
    if let Some(max) = history.state_max_bytes
        && bytes > max
    {
        report
            .violations
            .push(format!("quota: the stored state holds {bytes} bytes, over its {max}-byte quota"));
    }
}

/// The size of the witness's byte-burst values (`quota put burst-<n>`).
pub const BURST_VALUE_BYTES: u64 = 60 * 1024;

/// Property 13, the byte rate: in quota terms the witness writes a 60 KiB
/// value every tick (600 KiB/s at 100 ms ticks), far past the byte rate. A
/// bucket of one second's worth (`rate`, at least one 64 KiB value) admits
/// at most `burst + rate × d` bytes in any interval `d`; the admissions come
/// before the logged puts by a write's latency, so one value and 100 ms of
/// rate more are allowed. Checked over every window of each participant's
/// puts within a term; one violation per term, its worst window.
fn check_byte_rate(history: &History, report: &mut Report) {
    let Some(rate) = history.state_max_bytes_per_second else { return };
    let rate = rate as f64;
    let burst = rate.max(zkrun::state::MAX_VALUE as f64);
    let mut puts: BTreeMap<(&str, u64), Vec<u64>> = BTreeMap::new();
    for (id, e) in history.events.iter().filter(|(_, e)| e.kind() == "plugin_log") {
        let message = e.message();
        if message.starts_with("quota put burst-")
            && !message.starts_with("quota put burst-rate ")
            && let (Some(term), Some(at)) = (e.term(), e.mono_ns())
        {
            puts.entry((id.as_str(), term)).or_default().push(at);
        }
    }
    for ((id, term), mut times) in puts {
        times.sort_unstable();
        let mut worst: Option<(u64, f64, f64)> = None;
        for (i, &first) in times.iter().enumerate() {
            for (j, &last) in times.iter().enumerate().skip(i) {
                let d = (last - first) as f64 / 1e9;
                let bytes = (j - i + 1) as f64 * BURST_VALUE_BYTES as f64;
                let allowed = burst + rate * (d + 0.1) + zkrun::state::MAX_VALUE as f64;
                if bytes > allowed && worst.is_none_or(|(_, b, a)| bytes - allowed > b - a) {
                    worst = Some(((j - i + 1) as u64, bytes, allowed));
                }
            }
        }
        if let Some((n, bytes, allowed)) = worst {
            report.violations.push(format!(
                "quota: {id} had {n} values ({bytes:.0} bytes) admitted in term {term} faster than the \
                 {rate:.0}-bytes-a-second rate allows (at most {allowed:.0})"
            ));
        }
    }
}

/// How long a graceful handover on healthy links may take: the successor
/// hears the leader's node go at once (18 ms measured); a crash handover
/// takes about 0.77 L, over three times this.
pub fn handover_bound(l: Duration) -> Duration {
    (l / 4).max(Duration::from_millis(250))
}

/// How long after a fault of `kind` healed a tick may take to come: the
/// session timeout, plus the reconnect backoff (up to 5 s) and a takeover
/// (under L), as for the last heal (property 3); after a restart of the
/// whole ensemble, sessions restored from its log expire only T after it
/// is back, so one more T.
pub fn heal_bound(kind: FaultKind, t: Duration) -> Duration {
    let base = t + Duration::from_secs(8);
    match kind {
        FaultKind::RestartAll | FaultKind::QuorumLoss => base + t,
        _ => base,
    }
}

fn is_giving_up(kind: &str) -> bool {
    // `Demoted { .. }` is the leadership event's own (debug) line: a
    // shutdown logs it, and no `demoted` event, after a renewal that was in
    // flight when `shutdown` was logged may have landed.
    matches!(kind, "demoted" | "shutdown" | "stopped" | "resigning" | "plugin_failed")
        || kind.starts_with("Demoted {")
}

/// Whether `id` led at `at` by its own events (last leadership event).
fn leading_at(events: &[(String, Event)], id: &str, at: u64) -> bool {
    events
        .iter()
        .filter(|(who, e)| who == id && e.mono_ns().is_some_and(|t| t <= at))
        .filter(|(_, e)| matches!(e.kind(), "elected" | "resumed") || is_giving_up(e.kind()))
        .max_by_key(|(_, e)| e.mono_ns())
        .is_some_and(|(_, e)| matches!(e.kind(), "elected" | "resumed"))
}

/// Property 14.
fn check_liveness(history: &History, report: &mut Report) {
    let (l, t) = period(history);
    let events = &history.events;
    let mut ticks: Vec<u64> = events.iter().filter_map(|(_, e)| tick_start(e)).collect();
    ticks.sort_unstable();
    let next_tick = |after: u64| ticks.iter().copied().find(|&s| s > after);
    // In a scheduled run, a leader's next tick is its next slot.
    let slot_wait = history.schedule.as_ref().map_or(Duration::ZERO, |run| run.every);
    let mut faults: Vec<&FaultSpan> = history.faults.iter().collect();
    faults.sort_by_key(|f| f.start_ns);
    let ns = |d: Duration| d.as_nanos() as u64;
    for (k, f) in faults.iter().enumerate() {
        let next_fault = faults.get(k + 1).map(|n| n.start_ns);
        let previous_end = k.checked_sub(1).map(|p| faults[p].end_ns);

        // Gap after the heal, up to the next tick or the next fault.
        let bound = heal_bound(f.kind, t) + slot_wait;
        let until = match (next_tick(f.end_ns), next_fault) {
            (Some(tick), Some(fault)) => Some(tick.min(fault)),
            (tick, fault) => tick.or(fault),
        };
        if let Some(until) = until
            && until > f.end_ns + ns(bound)
        {
            report.violations.push(format!(
                "leaderless after heal: no tick for {:?} after {:?} healed at {} (bound {bound:?})",
                Duration::from_nanos(until - f.end_ns),
                f.kind,
                f.end_ns
            ));
        }

        match f.kind {
            FaultKind::ResetThenStop => {
                // Each leader it stopped (a `shutdown` while leading, T
                // after the previous fault) hands over gracefully: the
                // next in line reconnects within milliseconds.
                let bound = handover_bound(l);
                for (id, e) in events.iter().filter(|(_, e)| e.kind() == "shutdown") {
                    let Some(at) = e.mono_ns().filter(|&at| at >= f.start_ns && at <= f.end_ns) else {
                        continue;
                    };
                    let quiet = previous_end.is_none_or(|end| end + ns(t) <= at);
                    if !quiet || !leading_at(events, id, at.saturating_sub(1)) {
                        continue;
                    }
                    let next = events
                        .iter()
                        .filter(|(who, e)| who != id && e.kind() == "elected")
                        .filter_map(|(_, e)| e.mono_ns())
                        .filter(|&elected| elected > at)
                        .min();
                    // No election at all is the leaderless-gap check's.
                    if let Some(elected) = next
                        && elected > at + ns(bound)
                        && next_fault.is_none_or(|n| n > at + ns(bound))
                    {
                        report.violations.push(format!(
                            "slow graceful handover: {id} shut down at {at} while leading, its successor's link \
                             just reset; the next election came {:?} later (bound {bound:?})",
                            Duration::from_nanos(elected - at)
                        ));
                    }
                }
            }
            FaultKind::StopParticipant => {
                // Graceful: a healthy leader, with nothing else broken for T.
                let Some(id) = &f.participant else { continue };
                let quiet = previous_end.is_none_or(|end| end + ns(t) <= f.start_ns);
                if !quiet || !leading_at(events, id, f.start_ns) {
                    continue;
                }
                let bound = handover_bound(l);
                let next = events
                    .iter()
                    .filter(|(who, e)| who != id && e.kind() == "elected")
                    .filter_map(|(_, e)| e.mono_ns())
                    .filter(|&at| at > f.start_ns)
                    .min();
                if let Some(at) = next
                    && next_fault.is_none_or(|n| at < n)
                    && at > f.start_ns + ns(bound)
                {
                    report.violations.push(format!(
                        "slow graceful handover: {id} was stopped at {} while leading on healthy links; the next \
                         election came {:?} later (bound {bound:?})",
                        f.start_ns,
                        Duration::from_nanos(at - f.start_ns)
                    ));
                }
            }
            FaultKind::SlowHeadOfLine => {
                let bound = l * 3 + Duration::from_secs(1) + slot_wait;
                if f.end_ns < f.start_ns + ns(bound) {
                    continue;
                }
                let tick = next_tick(f.start_ns);
                if tick.is_none_or(|at| at > f.start_ns + ns(bound)) {
                    report.violations.push(format!(
                        "stalled line: with the first in line slow and the leader stopped at {}, no tick within \
                         {bound:?} (next at {tick:?})",
                        f.start_ns
                    ));
                }
            }
            FaultKind::ResetWhileFrozen => {
                let Some(id) = &f.participant else { continue };
                let bound = l.mul_f64(1.15) + Duration::from_millis(500);
                if f.end_ns < f.start_ns + ns(bound) || !leading_at(events, id, f.start_ns) {
                    continue;
                }
                let next = events
                    .iter()
                    .filter(|(who, e)| who != id && e.kind() == "elected")
                    .filter_map(|(_, e)| e.mono_ns())
                    // The earliest: events are grouped by participant, not in time order.
                    .filter(|&at| at > f.start_ns)
                    .min();
                if next.is_none_or(|at| at > f.start_ns + ns(bound)) {
                    report.violations.push(format!(
                        "late takeover: {id} froze at {} with the next in line's connection reset every 0.5 s; \
                         the next election came at {next:?}, later than {bound:?}",
                        f.start_ns
                    ));
                }
            }
            _ => {}
        }
    }
}

/// Whether `other`'s lease node certainly existed at `at`: it renewed it
/// (a `lease` grant) at or before `at`, its session cannot have expired
/// since that proof (`proof + T`), and nothing since said it was removed
/// (its own giving up, or anyone's takeover or removal of a stale lease).
fn lease_node_stood(events: &[(String, Event)], other: &str, at: u64, t: Duration) -> bool {
    let before = |e: &Event| e.mono_ns().is_some_and(|x| x <= at);
    let Some(grant) = events
        .iter()
        .filter(|(who, e)| who == other && e.kind() == "lease" && before(e))
        .max_by_key(|(_, e)| e.mono_ns())
        .map(|(_, e)| e)
    else {
        return false;
    };
    let since = grant.mono_ns().unwrap_or(0);
    let proof = grant.json["proof_ns"].as_u64().unwrap_or(since);
    if at >= proof + t.as_nanos() as u64 {
        return false;
    }
    let removed = events.iter().any(|(who, e)| {
        let when = e.mono_ns().is_some_and(|x| x > since && x <= at);
        when && ((who == other && is_giving_up(e.kind()))
            || matches!(e.kind(), "took_over" | "stale_lease_removed"))
    });
    !removed
}

/// Property 15.
fn check_decisions(events: &[(String, Event)], history: &History, report: &mut Report) {
    let mut decisions = Decisions::default();
    let ids: Vec<&str> = {
        let mut ids: Vec<&str> = events.iter().map(|(id, _)| id.as_str()).collect();
        ids.sort_unstable();
        ids.dedup();
        ids
    };
    for (id, e) in events.iter().filter(|(_, e)| e.kind() == "lead_decision") {
        match e.str("path") {
            "shortcut" => decisions.shortcut += 1,
            "full" => decisions.full += 1,
            "takeover" => decisions.takeover += 1,
            other => {
                report.violations.push(format!("lead_decision: {id} logged an unknown path {other:?}"));
                continue;
            }
        }
        if e.str("path") != "full" && e.json["proof_generation"] != e.json["generation"] {
            report.violations.push(format!(
                "warm proof across a reconnect: {id} led on its warm proof ({} path, term {:?}) taken on \
                 connection {} while on connection {}",
                e.str("path"),
                e.term(),
                e.json["proof_generation"],
                e.json["generation"]
            ));
        }
        if e.str("path") != "shortcut" {
            continue;
        }
        let Some(at) = e.mono_ns() else { continue };
        for other in ids.iter().filter(|o| **o != id.as_str()) {
            if lease_node_stood(events, other, at, history.session_timeout) {
                report.violations.push(format!(
                    "shortcut past a lease: {id} led on its warm proof (term {:?}, generation {}, why {:?}) at {at} \
                     while {other}'s lease node stood",
                    e.term(),
                    e.json["generation"],
                    e.str("why")
                ));
            }
        }
    }
    report.decisions = decisions;
}

/// The longest time without any tick starting, over the whole run.
pub fn longest_leaderless(events: &[(String, Event)]) -> Option<Duration> {
    let mut ticks: Vec<u64> = events.iter().filter_map(|(_, e)| tick_start(e)).collect();
    ticks.sort_unstable();
    ticks.windows(2).map(|w| Duration::from_nanos(w[1] - w[0])).max()
}
