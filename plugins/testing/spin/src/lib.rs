//! Test plugin: a hook that never returns. zkrun must interrupt it at the
//! hook deadline (epoch interruption), not wait for it. Configuration
//! `spin-in` picks the hook: `tick` (default) or `on-demoted`.

wit_bindgen::generate!({ path: "../../../wit", world: "job" });

use zkrun::plugin::host::{config, log};
use zkrun::plugin::types::Level;

struct Spin;

impl Guest for Spin {
    fn on_elected(_: Leadership) -> Result<(), String> {
        Ok(())
    }

    fn tick(_: Leadership) -> Result<(), String> {
        if config("spin-in").as_deref().unwrap_or("tick") == "tick" {
            spin();
        }
        log(Level::Info, "tick");
        Ok(())
    }

    fn on_demoted(reason: DemoteReason) {
        log(Level::Info, &format!("demoted: {reason:?}"));
        if config("spin-in").as_deref() == Some("on-demoted") {
            spin();
        }
    }
}

fn spin() -> ! {
    log(Level::Info, "spinning forever");
    let mut x: u64 = 0;
    loop {
        // black_box keeps the loop from being optimised into `unreachable`.
        x = std::hint::black_box(x.wrapping_add(1));
    }
}

export!(Spin);
