#!/usr/bin/env bash
# The whole test suite, from a clean checkout on a fresh machine: installs
# what is missing, builds zkrun and the plugins, checks formatting and lints,
# and runs every test against real ZooKeeper ensembles. `.ci/run` calls this.
#
# The host's build and lints need nothing that setup installs (rustup's
# toolchain is on the machine), so they run beside setup and the plugin
# builds: those wait on the network and on single-threaded tools, and a
# cold build leaves a core idle in its long single-crate phases. Each step
# prints the minutes since the start, so a slow CI run says where it went.
set -euo pipefail
cd "$(dirname "$0")/.."

start=$SECONDS
step() { printf '\n==> [%dm%02ds] %s\n' $(((SECONDS - start) / 60)) $(((SECONDS - start) % 60)) "$*"; }

step "format"
cargo fmt --all --check
(cd plugins && cargo fmt --all --check)

# The host: build (release: the tests run the real binary and real
# components), then lints, in the background; its output goes to a log
# printed when it ends, so the two lanes do not interleave.
mkdir -p target
host_log=target/test-host-build.log
(
    set -e
    echo "==> build"
    cargo build --release --workspace --all-targets
    echo "==> lints"
    cargo clippy --release --workspace --all-targets -- -D warnings
) >"$host_log" 2>&1 &
host=$!
trap 'kill "$host" 2>/dev/null || true' EXIT

step "setup (idempotent), with the benchmark peers (the suite runs the benchmark's smoke mode) and the Python and JavaScript guest toolchains (the host builds meanwhile)"
scripts/setup.sh --bench --guests

step "plugins (wasm32-wasip2 components) and the Curator peer"
scripts/build-plugins.sh
benches/peers/build-curator.sh

step "waiting for the host's build and lints"
if ! wait "$host"; then
    cat "$host_log"
    echo "test.sh: the host's build or lints failed (log above, also in $host_log)" >&2
    exit 1
fi
trap - EXIT
grep -E '^(==>|warning|error)|Finished' "$host_log" || true

step "tests"
cargo nextest run --release --workspace --no-fail-fast "$@"
step "done"
