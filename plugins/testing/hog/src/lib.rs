//! Test plugin: `tick` allocates without end. zkrun's memory cap must stop
//! it with a trap instead of letting the host run out of memory.

wit_bindgen::generate!({ path: "../../../wit", world: "job" });

use zkrun::plugin::host::log;
use zkrun::plugin::types::Level;

struct Hog;

impl Guest for Hog {
    fn on_elected(_: Leadership) -> Result<(), String> {
        Ok(())
    }

    fn tick(_: Leadership) -> Result<(), String> {
        log(Level::Info, "allocating without end");
        let mut hoard: Vec<Vec<u8>> = Vec::new();
        loop {
            // Touch every page so the memory is really used.
            hoard.push(vec![1u8; 1 << 20]);
            std::hint::black_box(&hoard);
        }
    }

    fn on_demoted(reason: DemoteReason) {
        log(Level::Info, &format!("demoted: {reason:?}"));
    }
}

export!(Hog);
