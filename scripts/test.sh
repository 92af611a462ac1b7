#!/usr/bin/env bash
# The whole test suite, from a clean checkout on a fresh machine: installs
# what is missing, builds zkrun and the plugins, checks formatting and lints,
# and runs every test against real ZooKeeper ensembles. `.ci/run` calls this.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

step "setup (idempotent)"
scripts/setup.sh

step "plugins (wasm32-wasip2 components)"
scripts/build-plugins.sh

step "format"
cargo fmt --all --check
(cd plugins && cargo fmt --all --check)

step "build (release: the tests run the real binary and real components)"
cargo build --release --workspace --all-targets

step "lints"
cargo clippy --release --workspace --all-targets -- -D warnings

step "tests"
cargo nextest run --release --workspace --no-fail-fast "$@"
