//! `heartbeat`: the classic demo of leader election.
//!
//! Logs `I am Leader` with its term and id on every tick, and a line when it
//! is elected and demoted. Copy this crate to start a plugin of your own: the
//! only zkrun-specific parts are the `generate!` call and the `Guest` impl.

use std::sync::atomic::{AtomicU64, Ordering};

wit_bindgen::generate!({ path: "../../wit", world: "job" });

use zkrun::plugin::host::log;
use zkrun::plugin::types::Level;

/// Ticks seen by this instance. zkrun creates a fresh instance for every term,
/// so this starts at zero on every `on-elected`.
static TICKS: AtomicU64 = AtomicU64::new(0);

struct Heartbeat;

impl Guest for Heartbeat {
    fn on_elected(leadership: Leadership) -> Result<(), String> {
        let earlier = TICKS.load(Ordering::Relaxed);
        log(
            Level::Info,
            &format!(
                "elected: term {} id {} (ticks before this term in this instance: {earlier})",
                leadership.term, leadership.participant
            ),
        );
        // Plain stdout works too: zkrun turns each line into a log event.
        println!("heartbeat: leading {} with term {}", leadership.election, leadership.term);
        Ok(())
    }

    fn tick(leadership: Leadership) -> Result<(), String> {
        let n = TICKS.fetch_add(1, Ordering::Relaxed) + 1;
        log(
            Level::Info,
            &format!("I am Leader: term {} id {} tick {n}", leadership.term, leadership.participant),
        );
        Ok(())
    }

    fn on_demoted(reason: DemoteReason) {
        let ticks = TICKS.load(Ordering::Relaxed);
        log(Level::Info, &format!("demoted: {} after {ticks} ticks", reason_name(reason)));
    }
}

/// The reason as the WIT file spells it.
fn reason_name(reason: DemoteReason) -> &'static str {
    match reason {
        DemoteReason::Shutdown => "shutdown",
        DemoteReason::Resigned => "resigned",
        DemoteReason::ConnectionLost => "connection-lost",
        DemoteReason::SessionExpired => "session-expired",
        DemoteReason::NodeDeleted => "node-deleted",
        DemoteReason::PluginFailed => "plugin-failed",
        DemoteReason::Reloading => "reloading",
    }
}

export!(Heartbeat);
