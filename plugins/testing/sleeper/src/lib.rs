//! Test plugin: a hook that blocks inside a WASI host call for an hour.
//! Epoch interruption cannot reach a guest that waits in the host; zkrun's
//! watchdog must. Configuration:
//! - `sleep-in`: `on-elected`, `tick` (default) or `on-demoted`;
//! - `how`: `sleep` (std::thread::sleep: subscribe-duration, then block;
//!   default) or `poll` (`wasi:io/poll.poll`).

wit_bindgen::generate!({ path: "../../../wit", world: "job" });

use zkrun::plugin::host::{config, log};
use zkrun::plugin::types::Level;

const AN_HOUR_NS: u64 = 3600 * 1_000_000_000;

struct Sleeper;

impl Guest for Sleeper {
    fn on_elected(_: Leadership) -> Result<(), String> {
        block_if("on-elected");
        Ok(())
    }

    fn tick(leadership: Leadership) -> Result<(), String> {
        log(Level::Info, &format!("tick under term {}", leadership.term));
        block_if("tick");
        Ok(())
    }

    fn on_demoted(reason: DemoteReason) {
        log(Level::Info, &format!("demoted: {reason:?}"));
        block_if("on-demoted");
    }
}

fn block_if(hook: &str) {
    if config("sleep-in").as_deref().unwrap_or("tick") != hook {
        return;
    }
    let how = config("how").unwrap_or_else(|| "sleep".into());
    log(Level::Info, &format!("blocking in {hook} for an hour ({how})"));
    if how == "poll" {
        let pollable = wasi::clocks::monotonic_clock::subscribe_duration(AN_HOUR_NS);
        wasi::io::poll::poll(&[&pollable]);
    } else {
        std::thread::sleep(std::time::Duration::from_nanos(AN_HOUR_NS));
    }
    log(Level::Info, &format!("woke up in {hook}"));
}

export!(Sleeper);
