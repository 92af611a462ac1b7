//! Rust bindings for the `zkrun:plugin/job` world, generated from `wit/`.

wasmtime::component::bindgen!({
    world: "job",
    path: "../wit",
    // Host calls are async (fenced state will wait on ZooKeeper) and may trap
    // (every call made after a hook's deadline or lease is refused).
    imports: { default: async | trappable },
    exports: { default: async },
});

pub use zkrun::plugin::types::Level;
