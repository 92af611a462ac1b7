//! Where the built artifacts are.

use std::path::PathBuf;

/// The repository root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ has a parent").to_path_buf()
}

/// The `zkrun` binary built with the running test or demo binary
/// (`target/<profile>/zkrun`).
/// `$ZKRUN_BINARY` overrides it (the mutation script runs mutants so).
pub fn zkrun_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("ZKRUN_BINARY") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("current exe");
    // Tests live in target/<profile>/deps/, binaries in target/<profile>/.
    let mut profile_dir = exe.parent().expect("binary has a directory");
    if profile_dir.ends_with("deps") {
        profile_dir = profile_dir.parent().expect("deps has a parent");
    }
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
