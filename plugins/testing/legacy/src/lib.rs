//! Test plugin: a heartbeat built against the frozen `zkrun:plugin@0.1.0`
//! contract in `wit/` (a copy of the first release). Later 0.1.x hosts must
//! load and run it unchanged.

wit_bindgen::generate!({ path: "wit", world: "job" });

use zkrun::plugin::host::log;
use zkrun::plugin::types::Level;

struct Legacy;

impl Guest for Legacy {
    fn on_elected(leadership: Leadership) -> Result<(), String> {
        log(Level::Info, &format!("legacy 0.1.0 plugin elected: term {}", leadership.term));
        Ok(())
    }

    fn tick(leadership: Leadership) -> Result<(), String> {
        log(Level::Info, &format!("legacy tick: term {}", leadership.term));
        Ok(())
    }

    fn on_demoted(_: DemoteReason) {
        log(Level::Info, "legacy demoted");
    }
}

export!(Legacy);
