//! `witness`: the chaos harness's eyes inside the job.
//!
//! Every tick logs when it started and when it ended, read from
//! `wasi:clocks/monotonic-clock`, which zkrun backs with the machine's
//! CLOCK_MONOTONIC: the times of all participants on one machine compare.
//! In between, it increments the fenced counter (as `counter` does), so the
//! checker can also look for lost or duplicated increments.
//!
//! Log lines (parsed by `tests/harness/chaos.rs`):
//! - `witness start <ns> term <T>`
//! - `committed <N> under term <T> (version <V>)` / `write of <N> ...`
//! - `witness end <start ns> <end ns> term <T>`
//!
//! A tick cut off by zkrun (leadership lost) logs no end: zkrun refuses
//! every host call after the lease, including these logs.

wit_bindgen::generate!({ path: "../../wit", world: "job" });

use wasi::clocks::monotonic_clock;
use zkrun::plugin::host::log;
use zkrun::plugin::state::{self, StateError};
use zkrun::plugin::types::Level;

const KEY: &str = "counter";

struct Witness;

impl Guest for Witness {
    fn on_elected(leadership: Leadership) -> Result<(), String> {
        log(Level::Info, &format!("witness elected term {}", leadership.term));
        Ok(())
    }

    fn tick(leadership: Leadership) -> Result<(), String> {
        let term = leadership.term;
        let start = monotonic_clock::now();
        log(Level::Info, &format!("witness start {start} term {term}"));
        increment(term);
        let end = monotonic_clock::now();
        log(Level::Info, &format!("witness end {start} {end} term {term}"));
        Ok(())
    }

    fn on_demoted(_: DemoteReason) {}
}

fn increment(term: u64) {
    let (current, version) = match state::get(KEY) {
        Ok(Some(entry)) => {
            let text = String::from_utf8_lossy(&entry.value).into_owned();
            let value = text.split_whitespace().next().and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
            (value, Some(entry.version))
        }
        Ok(None) => (0, None),
        Err(e) => {
            log(Level::Warn, &format!("cannot read the counter: {e:?}"));
            return;
        }
    };
    let next = current + 1;
    match state::compare_and_set(KEY, version, format!("{next} {term}").as_bytes()) {
        Ok(v) => log(Level::Info, &format!("committed {next} under term {term} (version {v})")),
        Err(StateError::NotLeader) => log(Level::Warn, &format!("write of {next} refused: not-leader")),
        Err(StateError::Conflict) => log(Level::Warn, &format!("write of {next} lost a race: conflict")),
        Err(other) => log(Level::Warn, &format!("write of {next} failed: {other:?}")),
    }
}

export!(Witness);
