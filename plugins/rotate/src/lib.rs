//! `rotate`: a plugin that uses configuration and resigns on purpose.
//!
//! It does `ticks-per-term` ticks of work (default 5), then calls `resign` so
//! that the next participant in the election takes over. Use it to spread a
//! job's load across hosts, or to exercise failover continuously.
//!
//! Configuration (`--plugin-config KEY=VALUE`):
//! - `ticks-per-term`: ticks before resigning (a positive integer).
//! - `message`: what each tick logs (default `working`).

use std::sync::atomic::{AtomicU64, Ordering};

wit_bindgen::generate!({ path: "../../wit", world: "job" });

use zkrun::plugin::host::{config, config_entries, log, resign};
use zkrun::plugin::types::Level;

static TICKS: AtomicU64 = AtomicU64::new(0);

fn ticks_per_term() -> Result<u64, String> {
    match config("ticks-per-term") {
        None => Ok(5),
        Some(v) => match v.trim().parse::<u64>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(format!("ticks-per-term must be a positive integer, got {v:?}")),
        },
    }
}

struct Rotate;

impl Guest for Rotate {
    fn on_elected(leadership: Leadership) -> Result<(), String> {
        // Refuse the term on bad configuration: zkrun reports it and lets
        // another host try, instead of running a misconfigured job.
        let limit = ticks_per_term()?;
        let keys: Vec<String> = config_entries().into_iter().map(|(k, _)| k).collect();
        log(
            Level::Info,
            &format!(
                "elected: term {}; will resign after {limit} ticks (config keys: {})",
                leadership.term,
                keys.join(", ")
            ),
        );
        Ok(())
    }

    fn tick(leadership: Leadership) -> Result<(), String> {
        let limit = ticks_per_term()?;
        let n = TICKS.fetch_add(1, Ordering::Relaxed) + 1;
        let message = config("message").unwrap_or_else(|| "working".to_string());
        log(Level::Info, &format!("{message}: term {} tick {n}/{limit}", leadership.term));
        if n >= limit {
            resign(&format!("done {n} ticks in term {}", leadership.term));
        }
        Ok(())
    }

    fn on_demoted(reason: DemoteReason) {
        log(Level::Info, &format!("demoted: {reason:?}"));
    }
}

export!(Rotate);
