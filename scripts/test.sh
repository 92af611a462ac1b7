#!/usr/bin/env bash
# The whole test suite, from a clean checkout on a fresh machine: installs
# what is missing, builds zkrun and the plugins, checks formatting and lints,
# and runs every test against real ZooKeeper ensembles. `.ci/run` calls this.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

step "setup (idempotent), with the benchmark peers (the suite runs the benchmark's smoke mode) and the Python and JavaScript guest toolchains"
scripts/setup.sh --bench --guests

step "plugins (wasm32-wasip2 components) and the Curator peer"
scripts/build-plugins.sh
benches/peers/build-curator.sh

step "format"
cargo fmt --all --check
(cd plugins && cargo fmt --all --check)

step "build (release: the tests run the real binary and real components)"
cargo build --release --workspace --all-targets

step "lints"
cargo clippy --release --workspace --all-targets -- -D warnings

step "tests"
cargo nextest run --release --workspace --no-fail-fast "$@"
