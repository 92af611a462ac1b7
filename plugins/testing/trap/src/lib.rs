//! Test plugin: executes `unreachable` in `tick` on the configured tick
//! (`trap-on-tick`, default 1).

use std::sync::atomic::{AtomicU64, Ordering};

wit_bindgen::generate!({ path: "../../../wit", world: "job" });

use zkrun::plugin::host::{config, log};
use zkrun::plugin::types::Level;

static TICKS: AtomicU64 = AtomicU64::new(0);

struct Trap;

impl Guest for Trap {
    fn on_elected(_: Leadership) -> Result<(), String> {
        Ok(())
    }

    fn tick(_: Leadership) -> Result<(), String> {
        let n = TICKS.fetch_add(1, Ordering::Relaxed) + 1;
        let at = config("trap-on-tick").and_then(|v| v.parse().ok()).unwrap_or(1);
        log(Level::Info, &format!("tick {n}"));
        if n >= at {
            core::arch::wasm32::unreachable();
        }
        Ok(())
    }

    fn on_demoted(reason: DemoteReason) {
        log(Level::Info, &format!("demoted: {reason:?}"));
    }
}

export!(Trap);
