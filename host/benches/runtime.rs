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

fn plugin(name: &str) -> PathBuf {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("../target/plugins/{name}.wasm"));
    assert!(path.exists(), "{} is missing: run scripts/build-plugins.sh", path.display());
    path
}

fn runtime_costs(c: &mut Criterion) {
    let path = plugin("heartbeat");
    let runtime =
        Runtime::new(RuntimeConfig { participant: "bench".into(), ..RuntimeConfig::default() }).unwrap();
    let tokio = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();

    c.bench_function("compile heartbeat.wasm (once per load)", |b| b.iter(|| runtime.load(&path).unwrap()));

    let heartbeat = runtime.load(&path).unwrap();
    c.bench_function("instantiate (once per term)", |b| {
        b.iter(|| tokio.block_on(runtime.instantiate(&heartbeat, Some(1), None)).unwrap())
    });

    let facts = Facts { term: 1, participant: "bench".into(), election: "/bench".into() };
    let permit: Arc<dyn Permit> = Arc::new(|| true);
    let mut instance = tokio.block_on(runtime.instantiate(&heartbeat, Some(1), None)).unwrap();
    tokio.block_on(instance.on_elected(&facts, permit.clone())).unwrap();
    c.bench_function("tick round trip (heartbeat: one log call)", |b| {
        b.iter(|| tokio.block_on(instance.tick(&facts, permit.clone())).unwrap())
    });

    // The same call into hooks that do nothing: what the host's side of a
    // hook costs (gate, watchdog race, lowering the leadership record).
    let noop = runtime.load(&plugin("noop")).unwrap();
    let mut instance = tokio.block_on(runtime.instantiate(&noop, Some(1), None)).unwrap();
    c.bench_function("tick round trip (noop: no work)", |b| {
        b.iter(|| tokio.block_on(instance.tick(&facts, permit.clone())).unwrap())
    });
}

criterion_group!(benches, runtime_costs);
criterion_main!(benches);
