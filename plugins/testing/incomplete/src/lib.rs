//! Test plugin: exports `tick` only. Loading it must fail with an error
//! naming the missing exports.

wit_bindgen::generate!({ path: "wit", world: "tick-only", generate_all });

use zkrun::plugin::host::log;
use zkrun::plugin::types::Level;

struct Incomplete;

impl Guest for Incomplete {
    fn tick(_: Leadership) -> Result<(), String> {
        log(Level::Info, "tick");
        Ok(())
    }
}

export!(Incomplete);
