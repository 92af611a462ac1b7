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
# Which code ran, for the report.
commit="$(git rev-parse --short HEAD)$(git diff --quiet HEAD -- host tests plugins wit || echo ' with local changes')"
target/bench-venv/bin/python - "$json" "$commit" "scripts/bench.sh $smoke" <<'EOF'
import json, sys
path, commit, command = sys.argv[1:4]
with open(path) as f:
    results = json.load(f)
results["commit"], results["command"] = commit, command.strip()
with open(path, "w") as f:
    json.dump(results, f, indent=2)
EOF
target/bench-venv/bin/python benches/render.py "$json" --markdown "$markdown" --plot "$plot"
echo "bench: wrote $markdown and $plot"
