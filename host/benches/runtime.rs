//! What running a plugin costs: compiling it, a fresh instance per term, and
//! one `tick` round trip. Needs `scripts/build-plugins.sh` first.
//!
//! ```sh
//! cargo bench -p zkrun --bench runtime
//! ```

use std::path::PathBuf;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use zkrun::plugin::{Facts, Permit, Runtime, RuntimeConfig};

fn heartbeat() -> PathBuf {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/plugins/heartbeat.wasm");
    assert!(path.exists(), "{} is missing: run scripts/build-plugins.sh", path.display());
    path
}

fn runtime_costs(c: &mut Criterion) {
    let path = heartbeat();
    let runtime =
        Runtime::new(RuntimeConfig { participant: "bench".into(), ..RuntimeConfig::default() }).unwrap();
    let tokio = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();

    c.bench_function("compile heartbeat.wasm (once per load)", |b| b.iter(|| runtime.load(&path).unwrap()));

    let plugin = runtime.load(&path).unwrap();
    c.bench_function("instantiate (once per term)", |b| {
        b.iter(|| tokio.block_on(runtime.instantiate(&plugin, Some(1), None)).unwrap())
    });

    let facts = Facts { term: 1, participant: "bench".into(), election: "/bench".into() };
    let permit: Arc<dyn Permit> = Arc::new(|| true);
    let mut instance = tokio.block_on(runtime.instantiate(&plugin, Some(1), None)).unwrap();
    tokio.block_on(instance.on_elected(&facts, permit.clone())).unwrap();
    c.bench_function("tick round trip (heartbeat: one log call)", |b| {
        b.iter(|| tokio.block_on(instance.tick(&facts, permit.clone())).unwrap())
    });
}

criterion_group!(benches, runtime_costs);
criterion_main!(benches);
