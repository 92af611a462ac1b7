#!/usr/bin/env bash
# Installs what zkrun's build, tests and demo need, and nothing twice.
#
#   scripts/setup.sh            ZooKeeper + the wasm32-wasip2 toolchain
#   scripts/setup.sh --bench    also the benchmark peers (Curator, kazoo)
#   scripts/setup.sh --guests   also the Python and JavaScript guest
#                               toolchains (componentize-py, componentize-js)
#
# Safe to run again: it checks before it installs.
set -euo pipefail

bench=0
guests=0
for arg in "$@"; do
    case "$arg" in
        --bench) bench=1 ;;
        --guests) guests=1 ;;
        *) echo "setup.sh: unknown argument $arg" >&2; exit 2 ;;
    esac
done

# Debian packages: ZooKeeper for the ensemble the tests and demo start;
# Prometheus for promtool, which the suite runs over /metrics and the
# example alert rules; faketime (libfaketime) for the chaos ClockSkew fault.
packages=(zookeeper prometheus faketime)
# Without a rustup wasm32-wasip2 target (it cannot be downloaded on these
# machines), Debian's Rust with its std source builds the plugins.
if ! rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip2; then
    packages+=(rustc-web cargo-web rust-web-src wasi-libc lld-22)
fi
if [ "$bench" = 1 ]; then
    # The Curator peer: Curator 5.4.0 (it pulls in the ZooKeeper client and
    # Guava), SLF4J's no-op binding to keep it quiet, and javac to build it.
    packages+=(libcurator-recipes-java libslf4j-java openjdk-17-jdk-headless python3-venv)
fi

missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
    echo "setup: installing ${missing[*]}"
    sudo=""
    [ "$(id -u)" = 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# rustc links wasm32-wasip2 components with wasm-component-ld, which
# Debian's Rust does not ship: build it from crates.io once.
if ! rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip2 \
    && ! command -v wasm-component-ld >/dev/null 2>&1; then
    echo "setup: installing wasm-component-ld (about 2 minutes)"
    cargo install --locked wasm-component-ld --version 0.5.31
fi

if ! command -v cargo-nextest >/dev/null 2>&1 && ! cargo nextest --version >/dev/null 2>&1; then
    echo "setup: installing cargo-nextest"
    cargo install --locked cargo-nextest
fi

root=$(cd "$(dirname "$0")/.." && pwd)

if [ "$guests" = 1 ]; then
    # Pinned: a guest toolchain's output changes with its version.
    if ! dpkg-query -W -f='${Status}' python3-venv 2>/dev/null | grep -q "install ok installed"; then
        sudo=""
        [ "$(id -u)" = 0 ] || sudo="sudo"
        $sudo apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends python3-venv >/dev/null
    fi
    venv="$root/target/guest-venv"
    if [ ! -x "$venv/bin/componentize-py" ] || ! "$venv/bin/componentize-py" --version | grep -qx "componentize-py 0.25.1"; then
        echo "setup: installing componentize-py 0.25.1 into $venv"
        python3 -m venv "$venv"
        "$venv/bin/pip" install -q componentize-py==0.25.1
    fi
    # componentize-js needs Node 18 or later (tested with 20), and npm.
    node_major() { node -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0; }
    if ! command -v npm >/dev/null 2>&1 || [ "$(node_major)" -lt 18 ]; then
        echo "setup: installing Node.js and npm (Debian's nodejs, npm)"
        sudo=""
        [ "$(id -u)" = 0 ] || sudo="sudo"
        $sudo apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null
        if [ "$(node_major)" -lt 18 ]; then
            echo "setup: componentize-js needs Node 18 or later; this machine has $(node --version 2>/dev/null || echo none)" >&2
            exit 1
        fi
    fi
    js="$root/plugins/heartbeat-js"
    if [ ! -x "$js/node_modules/.bin/componentize-js" ]; then
        echo "setup: installing componentize-js (package-lock.json) into $js/node_modules"
        (cd "$js" && npm ci --silent --no-audit --no-fund)
    fi
fi

if [ "$bench" = 1 ]; then
    venv="$root/target/bench-venv"
    if [ ! -x "$venv/bin/python" ]; then
        echo "setup: creating $venv"
        python3 -m venv "$venv"
    fi
    if ! "$venv/bin/python" -c 'import kazoo, matplotlib' 2>/dev/null; then
        echo "setup: installing kazoo and matplotlib into $venv"
        "$venv/bin/pip" install -q kazoo matplotlib
    fi
fi
