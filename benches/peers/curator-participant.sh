#!/usr/bin/env bash
# Runs the Curator benchmark peer built by build-curator.sh; all arguments
# go to CuratorParticipant (--zk HOSTS --election PATH --id ID
# --session-timeout-ms N --tick-ms N [--count K]).
set -euo pipefail

out="$(cd "$(dirname "$0")/../.." && pwd)/target/bench-peers"
if [ ! -f "$out/CuratorParticipant.class" ] || [ ! -f "$out/curator.classpath" ]; then
    echo "curator-participant: not built: run benches/peers/build-curator.sh" >&2
    exit 1
fi
# A small heap (--count 100 fits) keeps the JVM light beside the ensemble
# on a 2-core machine; otherwise the JVM runs with its defaults.
exec java -Xms16m -Xmx128m \
    -cp "$out:$(cat "$out/curator.classpath")" CuratorParticipant "$@"
