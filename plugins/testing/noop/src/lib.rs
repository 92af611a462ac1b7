//! `noop`: hooks that return at once. `host/benches/runtime.rs` calls its
//! `tick` to measure the cost of a hook call itself, apart from any work.

wit_bindgen::generate!({ path: "../../../wit", world: "job" });

struct Noop;

impl Guest for Noop {
    fn on_elected(_: Leadership) -> Result<(), String> {
        Ok(())
    }

    fn tick(_: Leadership) -> Result<(), String> {
        Ok(())
    }

    fn on_demoted(_: DemoteReason) {}
}

export!(Noop);
