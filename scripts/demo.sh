#!/usr/bin/env bash
# The main job, from a fresh machine: installs what is missing, builds zkrun
# and the example plugins, starts a local 3-server ZooKeeper ensemble, runs
# three zkrun participants with the heartbeat plugin, kills the leader, shows
# the next one taking over, stops the ensemble's leader server, shows the job
# carrying on, hands over with SIGTERM, and cleans everything up.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh
scripts/build-plugins.sh
cargo build --release -p zkrun -p zkrun-tests --bins
exec target/release/zkrun-demo
