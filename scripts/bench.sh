#!/usr/bin/env bash
# The whole comparison, zkrun against Apache Curator's LeaderLatch, kazoo's
# Election and a polling recipe, on one ZooKeeper ensemble; writes
# BENCHMARKS.md and benches/handover.png (and benches/results.json).
#
#   scripts/bench.sh           full run (about 15 minutes on 2 cores, once built)
#   scripts/bench.sh --smoke   a few rounds of everything, into target/bench/smoke/
set -euo pipefail
cd "$(dirname "$0")/.."

smoke=""
if [ "${1:-}" = "--smoke" ]; then
    smoke="--smoke"
fi

scripts/setup.sh --bench
scripts/build-plugins.sh
benches/peers/build-curator.sh
cargo build --release -p zkrun -p zkrun-tests --bins

if [ -n "$smoke" ]; then
    out=target/bench/smoke
    mkdir -p "$out"
    json="$out/results.json" markdown="$out/BENCHMARKS.md" plot="$out/handover.png"
else
    mkdir -p target/bench
    json=benches/results.json markdown=BENCHMARKS.md plot=benches/handover.png
fi
target/release/zkrun-bench $smoke --out "$json"
target/bench-venv/bin/python benches/render.py "$json" --markdown "$markdown" --plot "$plot"
echo "bench: wrote $markdown and $plot"
