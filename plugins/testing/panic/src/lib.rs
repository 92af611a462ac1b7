//! Test plugin: panics in `on-elected`. A Rust panic in a plugin is a trap
//! for the host (plugins build with `panic = "abort"`).

wit_bindgen::generate!({ path: "../../../wit", world: "job" });

use zkrun::plugin::host::log;
use zkrun::plugin::types::Level;

struct Panic;

impl Guest for Panic {
    fn on_elected(leadership: Leadership) -> Result<(), String> {
        panic!("refusing term {} on purpose", leadership.term);
    }

    fn tick(_: Leadership) -> Result<(), String> {
        Ok(())
    }

    fn on_demoted(reason: DemoteReason) {
        log(Level::Info, &format!("demoted: {reason:?}"));
    }
}

export!(Panic);
