#!/usr/bin/env bash
# Compiles the Curator benchmark peer (CuratorParticipant.java) against
# Debian's jars into target/bench-peers/, and records the classpath that
# curator-participant.sh runs it with. Needs `scripts/setup.sh --bench`.
#
#   benches/peers/build-curator.sh
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
out="$root/target/bench-peers"
java_dir=/usr/share/java

# What the participant needs at run time: Curator 5.4.0 and the ZooKeeper
# 3.8.0 client (libcurator-recipes-java pulls both in), Guava (Debian's
# jar includes failureaccess), and SLF4J with the no-op binding so that
# neither library logs anything. Debian's jars also name their own
# dependencies in their manifests' Class-Path (netty, jackson, jetty, ...);
# the JVM adds those by itself, and none of them is an SLF4J binding
# (java -verbose:class shows classes loaded from these eight jars only).
jars=(
    curator-recipes curator-framework curator-client
    zookeeper zookeeper-jute
    guava
    slf4j-api slf4j-nop
)
classpath=""
for jar in "${jars[@]}"; do
    path="$java_dir/$jar.jar"
    if [ ! -f "$path" ]; then
        echo "build-curator: $path is missing: run scripts/setup.sh --bench" >&2
        exit 1
    fi
    classpath="${classpath:+$classpath:}$path"
done

mkdir -p "$out"
# -path: zookeeper.jar's manifest names jline.jar, which Debian does not ship
# (only its command-line shell would use it).
javac -Xlint:all,-path -Werror -d "$out" -cp "$classpath" "$root/benches/peers/CuratorParticipant.java"
echo "$classpath" > "$out/curator.classpath"
echo "build-curator: built $out/CuratorParticipant.class"
