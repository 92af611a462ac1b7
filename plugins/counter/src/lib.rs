//! `counter`: a job whose progress survives failover.
//!
//! On every tick it reads the counter from fenced state, adds one, and writes
//! it back with `compare-and-set` and the tick's term, then logs the outcome:
//!
//! - `committed N under term T (version V)`: the write landed.
//! - `write of N refused: not-leader`: this host lost the lead; nothing changed.
//! - `write of N lost a race: conflict`: someone else wrote first.
//! - `write of N has an unknown outcome: ...`: the connection dropped.
//!
//! Because every write is fenced by the election and conditional on the
//! version it read, the stored counter counts every committed increment
//! exactly once, across SIGTERM, SIGKILL and frozen leaders.
//!
//! Configuration: `key` (default `counter`); `write`: `compare-and-set`
//! (default) or `put` (a blind write: still exactly-once, because fencing
//! alone keeps a deposed leader's write out; the tests use it to show that);
//! `pause-before-write-ms` (test aid: sleep between the read and the write).

wit_bindgen::generate!({ path: "../../wit", world: "job" });

use zkrun::plugin::host::{config, log};
use zkrun::plugin::state::{self, StateError};
use zkrun::plugin::types::Level;

struct Counter;

/// The stored form: `"<value> <term>"`.
fn decode(bytes: &[u8]) -> Result<(u64, u64), String> {
    let text = String::from_utf8_lossy(bytes);
    let mut parts = text.split_whitespace().map(str::parse::<u64>);
    match (parts.next(), parts.next()) {
        (Some(Ok(value)), Some(Ok(term))) => Ok((value, term)),
        _ => Err(format!("stored counter {text:?} is not \"<value> <term>\"")),
    }
}

fn key() -> String {
    config("key").unwrap_or_else(|| "counter".to_string())
}

impl Guest for Counter {
    fn on_elected(leadership: Leadership) -> Result<(), String> {
        let current = match state::get(&key()) {
            Ok(Some(entry)) => decode(&entry.value)?.0,
            Ok(None) => 0,
            Err(e) => return Err(format!("cannot read the counter: {e:?}")),
        };
        log(Level::Info, &format!("elected: term {}; counter is at {current}", leadership.term));
        Ok(())
    }

    fn tick(leadership: Leadership) -> Result<(), String> {
        let key = key();
        let (current, version, written_under) = match state::get(&key) {
            Ok(Some(entry)) => {
                let (value, term) = decode(&entry.value)?;
                (value, Some(entry.version), term)
            }
            Ok(None) => (0, None, 0),
            Err(e) => {
                log(Level::Warn, &format!("cannot read the counter: {e:?}"));
                return Ok(());
            }
        };
        if written_under > leadership.term {
            // Fencing would refuse the write anyway; say why.
            return Err(format!("the counter was written under term {written_under}, newer than ours"));
        }
        if let Some(ms) = config("pause-before-write-ms").and_then(|v| v.parse().ok()) {
            std::thread::sleep(std::time::Duration::from_millis(ms));
        }
        let next = current + 1;
        let value = format!("{next} {}", leadership.term);
        let written = match config("write").as_deref() {
            Some("put") => state::put(&key, value.as_bytes()),
            _ => state::compare_and_set(&key, version, value.as_bytes()),
        };
        match written {
            Ok(v) => {
                log(Level::Info, &format!("committed {next} under term {} (version {v})", leadership.term))
            }
            Err(StateError::NotLeader) => log(Level::Warn, &format!("write of {next} refused: not-leader")),
            Err(StateError::Conflict) => log(Level::Warn, &format!("write of {next} lost a race: conflict")),
            Err(StateError::Unavailable(why)) => {
                log(Level::Warn, &format!("write of {next} has an unknown outcome: {why}"))
            }
            Err(other) => return Err(format!("write of {next} failed: {other:?}")),
        }
        Ok(())
    }

    fn on_demoted(_: DemoteReason) {
        // Reads still work once leadership is gone (writes would not).
        let seen = state::get(&key()).ok().flatten().and_then(|e| decode(&e.value).ok());
        log(Level::Info, &format!("demoted: counter is at {:?}", seen.map(|(value, _)| value)));
    }
}

export!(Counter);
