//! Test plugin: the heartbeat job, but built against `zkrun:plugin@0.2.0`, a
//! version this host does not serve. `wit/` here is the 0.1.0 contract with
//! only the version changed.

wit_bindgen::generate!({ path: "wit", world: "job" });

use zkrun::plugin::host::log;
use zkrun::plugin::types::Level;

struct WrongVersion;

impl Guest for WrongVersion {
    fn on_elected(_: Leadership) -> Result<(), String> {
        log(Level::Info, "elected");
        Ok(())
    }

    fn tick(_: Leadership) -> Result<(), String> {
        Ok(())
    }

    fn on_demoted(_: DemoteReason) {}
}

export!(WrongVersion);
