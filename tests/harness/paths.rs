//! Where the built artifacts are.

use std::path::PathBuf;

/// The repository root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ has a parent").to_path_buf()
}

/// The `zkrun` binary built next to the running test binary
/// (`target/<profile>/zkrun`).
pub fn zkrun_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    // target/<profile>/deps/<test-binary>
    let profile_dir =
        exe.parent().and_then(|d| d.parent()).expect("test binary lives in target/<profile>/deps");
    let bin = profile_dir.join("zkrun");
    assert!(
        bin.exists(),
        "{} is missing: build it first (`cargo build --release -p zkrun`, which scripts/test.sh does)",
        bin.display()
    );
    bin
}

/// A plugin component built by `scripts/build-plugins.sh`.
pub fn plugin(name: &str) -> PathBuf {
    let path = root().join("target/plugins").join(format!("{name}.wasm"));
    assert!(
        path.exists(),
        "{} is missing: run scripts/build-plugins.sh first (scripts/test.sh does)",
        path.display()
    );
    path
}
