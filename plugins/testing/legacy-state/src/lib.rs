//! Test plugin: a counter built against the frozen `zkrun:plugin@0.1.1`
//! contract in `wit/` (a copy of that release, with fenced state and
//! without `slots`). Later 0.1.x hosts must load and run it unchanged.

wit_bindgen::generate!({ path: "wit", world: "job" });

use zkrun::plugin::host::log;
use zkrun::plugin::state;
use zkrun::plugin::types::Level;

struct LegacyState;

impl Guest for LegacyState {
    fn on_elected(leadership: Leadership) -> Result<(), String> {
        log(Level::Info, &format!("legacy 0.1.1 plugin elected: term {}", leadership.term));
        Ok(())
    }

    fn tick(leadership: Leadership) -> Result<(), String> {
        let count = match state::get("count").map_err(|e| format!("{e:?}"))? {
            Some(entry) => entry.value.first().copied().unwrap_or(0),
            None => 0,
        } + 1;
        state::put("count", &[count]).map_err(|e| format!("{e:?}"))?;
        log(Level::Info, &format!("legacy tick {count}: term {}", leadership.term));
        Ok(())
    }

    fn on_demoted(_: DemoteReason) {
        log(Level::Info, "legacy demoted");
    }
}

export!(LegacyState);
