//! Test plugin: `tick` never returns. zkrun must interrupt it at the hook
//! deadline (epoch interruption), not wait for it.

wit_bindgen::generate!({ path: "../../../wit", world: "job" });

use zkrun::plugin::host::log;
use zkrun::plugin::types::Level;

struct Spin;

impl Guest for Spin {
    fn on_elected(_: Leadership) -> Result<(), String> {
        Ok(())
    }

    fn tick(_: Leadership) -> Result<(), String> {
        log(Level::Info, "spinning forever");
        let mut x: u64 = 0;
        loop {
            // black_box keeps the loop from being optimised into `unreachable`.
            x = std::hint::black_box(x.wrapping_add(1));
        }
    }

    fn on_demoted(reason: DemoteReason) {
        log(Level::Info, &format!("demoted: {reason:?}"));
    }
}

export!(Spin);
