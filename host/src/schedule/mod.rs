//! Schedules (issue 24): when the leader's job runs, as slots.
//!
//! A schedule is a cron expression in an IANA time zone (`--schedule`,
//! `--timezone`) or an aligned interval (`--every`). Each instant it names is
//! a *slot*, with a stable id made of the schedule and the instant, so every
//! host of the fleet names the same slot alike. This module knows nothing of
//! WebAssembly: [`plan`] decides what to run from the ledger, [`ledger`]
//! keeps the ledger in ZooKeeper, fenced like state writes.
//!
//! Cron parsing and daylight-saving rules are croner's (OCPS): a fixed local
//! time that a spring-forward gap skips runs at the first instant after the
//! gap, and one that a fall-back repeats runs once, at its first occurrence;
//! wildcard and stepped fields run for each real instant they match.

pub mod ledger;
pub mod plan;

use std::fmt;
use std::time::Duration;

use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};
use jiff::Timestamp;
use jiff::tz::TimeZone;
use sha2::{Digest, Sha256};

/// Default catch-up window: how late a slot may still start.
pub const DEFAULT_CATCH_UP: Duration = Duration::from_secs(3600);
/// Default longest run of one slot.
pub const DEFAULT_RUN_TIMEOUT: Duration = Duration::from_secs(600);
/// Default most attempts of one slot (the first run and its retries).
pub const DEFAULT_MAX_ATTEMPTS: u32 = 3;

/// What names the instants: a cron expression or an aligned interval.
#[derive(Clone)]
pub enum Cadence {
    /// A 5- or 6-field cron expression (or `@daily`-style name), in a zone.
    Cron {
        /// The expression as given.
        text: String,
        /// The parsed expression.
        cron: Box<Cron>,
    },
    /// Every multiple of this period since the Unix epoch.
    Every(Duration),
}

impl fmt::Debug for Cadence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Cadence::Cron { text, .. } => write!(f, "cron {text:?}"),
            Cadence::Every(period) => write!(f, "every {}", humantime::format_duration(*period)),
        }
    }
}

/// Which missed slots a new leader runs, of those still inside the window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CatchUp {
    /// Only the latest; the older ones are recorded as skipped.
    Latest,
    /// All of them, oldest first.
    All,
    /// None that came due before this host led; they are recorded as missed.
    None,
}

/// What happens to a slot whose run was cut off (its leader died or lost
/// the lease mid-run).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnInterrupted {
    /// The next leader runs it again, as the next attempt, up to the limit.
    Retry,
    /// It is recorded as interrupted and not run again.
    Skip,
}

/// A schedule, checked and ready.
#[derive(Clone, Debug)]
pub struct Schedule {
    /// The instants.
    pub cadence: Cadence,
    /// The zone cron fields are read in.
    pub zone: TimeZone,
    /// The zone's name, as given.
    pub zone_name: String,
    /// How late a slot may still start.
    pub catch_up: Duration,
    /// Which missed slots run.
    pub policy: CatchUp,
    /// What happens to an interrupted run.
    pub on_interrupted: OnInterrupted,
    /// Most attempts of one slot.
    pub max_attempts: u32,
    /// Longest run of one slot.
    pub run_timeout: Duration,
    /// What the instants are, as text: hashed into slot ids, advertised in
    /// the participant's node for `status` ([`Schedule::from_spec`]).
    spec: String,
    fingerprint: String,
}

/// One scheduled instant of one schedule.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Slot {
    /// When it is due.
    pub at: Timestamp,
    /// `<schedule fingerprint>-<UTC instant>`: the same on every host.
    pub id: String,
}

impl Schedule {
    /// A schedule from its parts, as the flags and file give them.
    pub fn new(
        cadence: Cadence,
        zone_name: &str,
        catch_up: Duration,
        policy: CatchUp,
        on_interrupted: OnInterrupted,
        max_attempts: u32,
        run_timeout: Duration,
    ) -> Result<Schedule, String> {
        let zone = TimeZone::get(zone_name).map_err(|e| {
            format!("unknown time zone {zone_name:?} (use an IANA name such as Europe/Berlin): {e}")
        })?;
        if max_attempts == 0 {
            return Err("--max-attempts must be at least 1".into());
        }
        if run_timeout.is_zero() {
            return Err("--run-timeout must be longer than 0s".into());
        }
        let described = match &cadence {
            Cadence::Cron { text, .. } => format!("cron {} in {zone_name}", text.trim()),
            Cadence::Every(period) => format!("every {}ms", period.as_millis()),
        };
        let digest = Sha256::digest(described.as_bytes());
        let fingerprint = digest.iter().take(4).map(|b| format!("{b:02x}")).collect();
        let schedule = Schedule {
            cadence,
            zone,
            zone_name: zone_name.to_string(),
            catch_up,
            policy,
            on_interrupted,
            max_attempts,
            run_timeout,
            spec: described,
            fingerprint,
        };
        if schedule.next_after(Timestamp::now()).is_none() {
            return Err(format!("the schedule {:?} is never due", schedule.cadence));
        }
        Ok(schedule)
    }

    /// The schedule read back from its [`Schedule::spec`], with the default
    /// policies: what `status` needs (the instants and the slot ids) from a
    /// participant's node data.
    pub fn from_spec(spec: &str) -> Result<Schedule, String> {
        let unknown = || format!("not a schedule: {spec:?}");
        let (cadence, zone) = if let Some(rest) = spec.strip_prefix("cron ") {
            let (text, zone) = rest.rsplit_once(" in ").ok_or_else(unknown)?;
            (parse_cron(text)?, zone)
        } else {
            let ms = spec.strip_prefix("every ").and_then(|s| s.strip_suffix("ms")).ok_or_else(unknown)?;
            (Cadence::Every(Duration::from_millis(ms.parse().map_err(|_| unknown())?)), "UTC")
        };
        Schedule::new(
            cadence,
            zone,
            DEFAULT_CATCH_UP,
            CatchUp::Latest,
            OnInterrupted::Retry,
            DEFAULT_MAX_ATTEMPTS,
            DEFAULT_RUN_TIMEOUT,
        )
    }

    /// The instants as text, the same on every host with this schedule.
    pub fn spec(&self) -> &str {
        &self.spec
    }

    /// The slot at `at`.
    pub fn slot(&self, at: Timestamp) -> Slot {
        Slot { at, id: format!("{}-{}", self.fingerprint, at.strftime("%Y%m%dT%H%M%SZ")) }
    }

    /// Whether a slot id belongs to this schedule (the ledger may hold the
    /// slots of an earlier schedule of the same election).
    pub fn owns(&self, id: &str) -> bool {
        id.strip_prefix(&self.fingerprint).is_some_and(|rest| rest.starts_with('-'))
    }

    /// The first slot strictly after `t`.
    pub fn next_after(&self, t: Timestamp) -> Option<Slot> {
        let at = match &self.cadence {
            Cadence::Cron { cron, .. } => {
                cron.find_next_occurrence(&t.to_zoned(self.zone.clone()), false).ok()?.timestamp()
            }
            Cadence::Every(period) => {
                let period = i128::try_from(period.as_nanos()).ok()?;
                let now = t.as_nanosecond();
                let next = (now.div_euclid(period) + 1) * period;
                Timestamp::from_nanosecond(next).ok()?
            }
        };
        Some(self.slot(at))
    }

    /// The slots in `(after, until]`, oldest first, at most `limit`
    /// (the newest ones if there are more).
    pub fn between(&self, after: Timestamp, until: Timestamp, limit: usize) -> Vec<Slot> {
        let mut slots = std::collections::VecDeque::new();
        let mut t = after;
        while let Some(slot) = self.next_after(t) {
            if slot.at > until {
                break;
            }
            t = slot.at;
            slots.push_back(slot);
            if slots.len() > limit {
                slots.pop_front();
            }
        }
        slots.into()
    }

    /// The local date and time of `at` in the schedule's zone, for people.
    pub fn local(&self, at: Timestamp) -> String {
        at.to_zoned(self.zone.clone()).strftime("%Y-%m-%d %H:%M:%S %Z (%:z)").to_string()
    }

    /// The schedule, as `status` and the logs show it.
    pub fn describe(&self) -> String {
        match &self.cadence {
            Cadence::Cron { text, .. } => format!("cron \"{}\" in {}", text.trim(), self.zone_name),
            Cadence::Every(period) => format!("every {}", humantime::format_duration(*period)),
        }
    }
}

/// Field names of a 5-field expression; a 6-field one has `second` first.
const FIELDS: [&str; 5] = ["minute", "hour", "day-of-month", "month", "day-of-week"];

/// Parses a cron expression: 5 fields, 6 with seconds first, or a name such
/// as `@daily`. An error names the column and field where it is.
pub fn parse_cron(text: &str) -> Result<Cadence, String> {
    let parser = CronParser::builder().seconds(Seconds::Optional).year(Year::Disallowed).build();
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err("empty cron expression".into());
    }
    if trimmed.starts_with('@') {
        const NAMES: [&str; 6] = ["@yearly", "@annually", "@monthly", "@weekly", "@daily", "@hourly"];
        if !NAMES.iter().any(|name| name.eq_ignore_ascii_case(trimmed)) {
            return Err(format!(
                "cron expression {text:?}, column 1: unknown name {trimmed:?} (use {})",
                NAMES.join(", ")
            ));
        }
        let cron = parser.parse(trimmed).map_err(|e| format!("cron expression {text:?}, column 1: {e}"))?;
        return Ok(Cadence::Cron { text: trimmed.to_string(), cron: Box::new(cron) });
    }
    // Each field with the column (1-based, in `text`) where it starts.
    let mut fields = Vec::new();
    let mut start = None;
    for (i, c) in text.char_indices().chain(std::iter::once((text.len(), ' '))) {
        match (c.is_whitespace(), start) {
            (false, None) => start = Some(i),
            (true, Some(s)) => {
                fields.push((&text[s..i], text[..s].chars().count() + 1));
                start = None;
            }
            _ => {}
        }
    }
    let names: Vec<&str> = match fields.len() {
        5 => FIELDS.to_vec(),
        6 => std::iter::once("second").chain(FIELDS).collect(),
        n => {
            let column = fields.get(6).map_or(text.chars().count() + 1, |f| f.1);
            return Err(format!(
                "cron expression {text:?}, column {column}: {n} fields; expected 5 (minute hour day-of-month month day-of-week) or 6 (with seconds first)"
            ));
        }
    };
    // Parse each field alone (the others `*`), so that an error has a place.
    for (i, (field, column)) in fields.iter().enumerate() {
        let alone: Vec<&str> = (0..fields.len())
            .map(|j| {
                if i == j {
                    *field
                } else if names[j] == "second" {
                    "0"
                } else {
                    "*"
                }
            })
            .collect();
        if let Err(e) = parser.parse(&alone.join(" ")) {
            return Err(format!(
                "cron expression {text:?}, column {column} ({} field {field:?}): {e}",
                names[i]
            ));
        }
    }
    let cron = parser.parse(trimmed).map_err(|e| format!("cron expression {text:?}, column 1: {e}"))?;
    Ok(Cadence::Cron { text: trimmed.to_string(), cron: Box::new(cron) })
}

/// Parses a catch-up policy.
pub fn parse_policy(text: &str) -> Result<CatchUp, String> {
    match text {
        "latest" => Ok(CatchUp::Latest),
        "all" => Ok(CatchUp::All),
        "none" => Ok(CatchUp::None),
        other => Err(format!("unknown catch-up policy {other:?}: use latest, all or none")),
    }
}

/// Parses an interrupted-run policy.
pub fn parse_on_interrupted(text: &str) -> Result<OnInterrupted, String> {
    match text {
        "retry" => Ok(OnInterrupted::Retry),
        "skip" => Ok(OnInterrupted::Skip),
        other => Err(format!("unknown --on-interrupted policy {other:?}: use retry or skip")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cron(text: &str, zone: &str) -> Schedule {
        Schedule::new(
            parse_cron(text).unwrap(),
            zone,
            DEFAULT_CATCH_UP,
            CatchUp::Latest,
            OnInterrupted::Retry,
            DEFAULT_MAX_ATTEMPTS,
            DEFAULT_RUN_TIMEOUT,
        )
        .unwrap()
    }

    fn ts(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    fn locals(schedule: &Schedule, after: &str, until: &str) -> Vec<String> {
        schedule.between(ts(after), ts(until), 100).iter().map(|s| schedule.local(s.at)).collect()
    }

    #[test]
    fn a_spec_reads_back_as_the_same_slots() {
        let every = Schedule::new(
            Cadence::Every(Duration::from_secs(2)),
            "UTC",
            DEFAULT_CATCH_UP,
            CatchUp::All,
            OnInterrupted::Skip,
            1,
            DEFAULT_RUN_TIMEOUT,
        )
        .unwrap();
        for original in [cron("*/1 * * * *", "Europe/Berlin"), cron("@daily", "UTC"), every] {
            let back = Schedule::from_spec(original.spec()).unwrap();
            let t = ts("2026-03-29T00:30:00Z");
            assert_eq!(back.next_after(t), original.next_after(t), "{}", original.spec());
            assert_eq!(back.describe(), original.describe());
        }
        for bad in ["", "cron 0 2 * * *", "every 2s", "hourly in UTC"] {
            assert!(Schedule::from_spec(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn five_six_fields_and_names_parse() {
        for good in ["0 2 * * *", "*/15 * * * *", "30 0 2 * * *", "@daily", "@hourly", "0 9 * * MON-FRI"] {
            parse_cron(good).unwrap_or_else(|e| panic!("{good}: {e}"));
        }
        let daily = cron("@daily", "UTC");
        let next = daily.next_after(ts("2026-12-03T07:00:00Z")).unwrap();
        assert_eq!(next.at, ts("2026-12-04T00:00:00Z"));
        let seconds = cron("*/10 * * * * *", "UTC");
        assert_eq!(seconds.next_after(ts("2026-12-03T07:00:01Z")).unwrap().at, ts("2026-12-03T07:00:10Z"));
    }

    #[test]
    fn syntax_errors_name_their_column() {
        let e = parse_cron("0 25 * * *").unwrap_err();
        assert!(e.contains("column 3 (hour field \"25\")"), "{e}");
        let e = parse_cron("0 2 * * * * *").unwrap_err();
        assert!(e.contains("column 13: 7 fields"), "{e}");
        let e = parse_cron("0 2 * *").unwrap_err();
        assert!(e.contains("4 fields"), "{e}");
        let e = parse_cron("*/5 2 * JANX *").unwrap_err();
        assert!(e.contains("column 9 (month field"), "{e}");
        let e = parse_cron("@fortnightly").unwrap_err();
        assert!(e.contains("unknown name"), "{e}");
    }

    #[test]
    fn a_dst_gap_runs_the_skipped_time_once_after_the_gap() {
        // Europe/Berlin, 2026-03-29: 02:00 CET jumps to 03:00 CEST.
        let nightly = cron("30 2 * * *", "Europe/Berlin");
        let seen = locals(&nightly, "2026-03-27T12:00:00Z", "2026-03-30T12:00:00Z");
        assert_eq!(
            seen,
            [
                "2026-03-28 02:30:00 CET (+01:00)",
                "2026-03-29 03:00:00 CEST (+02:00)",
                "2026-03-30 02:30:00 CEST (+02:00)",
            ]
        );
    }

    #[test]
    fn a_dst_repeat_runs_a_fixed_time_once() {
        // Europe/Berlin, 2026-10-25: 03:00 CEST falls back to 02:00 CET.
        let nightly = cron("30 2 * * *", "Europe/Berlin");
        let seen = locals(&nightly, "2026-10-24T12:00:00Z", "2026-10-26T12:00:00Z");
        assert_eq!(seen, ["2026-10-25 02:30:00 CEST (+02:00)", "2026-10-26 02:30:00 CET (+01:00)"]);
        // A wildcard hour runs at each real instant, both passes of 02:30.
        let half_hourly = cron("30 * * * *", "Europe/Berlin");
        let seen = locals(&half_hourly, "2026-10-24T23:45:00Z", "2026-10-25T01:45:00Z");
        assert_eq!(seen, ["2026-10-25 02:30:00 CEST (+02:00)", "2026-10-25 02:30:00 CET (+01:00)"]);
        // Distinct instants, distinct slot ids.
        let ids: std::collections::BTreeSet<_> = half_hourly
            .between(ts("2026-10-24T23:45:00Z"), ts("2026-10-25T01:45:00Z"), 10)
            .into_iter()
            .map(|s| s.id)
            .collect();
        assert_eq!(ids.len(), 2);
    }

    #[test]
    fn every_is_aligned_to_the_epoch_and_ids_are_stable() {
        let every = Schedule::new(
            Cadence::Every(Duration::from_secs(15 * 60)),
            "UTC",
            DEFAULT_CATCH_UP,
            CatchUp::All,
            OnInterrupted::Retry,
            3,
            DEFAULT_RUN_TIMEOUT,
        )
        .unwrap();
        let slots = every.between(ts("2026-12-03T07:01:00Z"), ts("2026-12-03T07:45:00Z"), 10);
        let ats: Vec<_> = slots.iter().map(|s| s.at).collect();
        assert_eq!(ats, [ts("2026-12-03T07:15:00Z"), ts("2026-12-03T07:30:00Z"), ts("2026-12-03T07:45:00Z")]);
        assert!(slots[0].id.ends_with("-20261203T071500Z"), "{}", slots[0].id);
        assert!(every.owns(&slots[0].id));
        assert_eq!(every.slot(slots[0].at), slots[0]);
        // Another schedule names other slots.
        assert!(!cron("*/15 * * * *", "UTC").owns(&slots[0].id));
        // `between` keeps the newest when capped.
        let capped = every.between(ts("2026-12-03T07:01:00Z"), ts("2026-12-03T07:45:00Z"), 2);
        assert_eq!(capped.iter().map(|s| s.at).collect::<Vec<_>>(), ats[1..]);
    }

    #[test]
    fn unknown_zones_and_policies_are_refused() {
        let e = Schedule::new(
            parse_cron("@daily").unwrap(),
            "Mars/Olympus",
            DEFAULT_CATCH_UP,
            CatchUp::Latest,
            OnInterrupted::Retry,
            3,
            DEFAULT_RUN_TIMEOUT,
        )
        .unwrap_err();
        assert!(e.contains("unknown time zone \"Mars/Olympus\""), "{e}");
        assert!(parse_policy("sometimes").is_err());
        assert!(parse_on_interrupted("maybe").is_err());
    }
}
