#!/usr/bin/env bash
# Builds every crate in plugins/ to a wasm32-wasip2 component and copies them
# to target/plugins/<name>.wasm (names as in plugins/, e.g. wrong-version).
#
# Uses the rustup wasm32-wasip2 target when it is installed. Otherwise it uses
# Debian's Rust (rustc-web, with its std source) to build std for the target,
# as described in plugins/README.md ("Building without the rustup target");
# scripts/setup.sh installs it.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
out="$root/target/plugins"
build="$root/target/plugins-build"
mkdir -p "$out"

if rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip2; then
    cargo build --release --target wasm32-wasip2 \
        --manifest-path "$root/plugins/Cargo.toml" --target-dir "$build"
else
    for tool in /usr/bin/cargo /usr/bin/rustc /usr/bin/wasm-ld-22 /usr/lib/wasm32-wasi/libc.a; do
        if [ ! -e "$tool" ]; then
            echo "build-plugins: $tool is missing; run scripts/setup.sh first" >&2
            exit 1
        fi
    done
    # Debian's std source is built for the target (-Zbuild-std); its linker
    # is wasm-ld from lld-22 and its libc is Debian's wasi-libc.
    RUSTC_BOOTSTRAP=1 \
    RUSTC=/usr/bin/rustc \
    RUSTFLAGS="-L /usr/lib/wasm32-wasi -C link-self-contained=no -C link-arg=--wasm-ld-path=/usr/bin/wasm-ld-22" \
        /usr/bin/cargo build --release --target wasm32-wasip2 -Zbuild-std=std,panic_abort \
        --manifest-path "$root/plugins/Cargo.toml" --target-dir "$build"
fi

count=0
for manifest in "$root"/plugins/*/Cargo.toml "$root"/plugins/testing/*/Cargo.toml; do
    name=$(basename "$(dirname "$manifest")")
    artifact="$build/wasm32-wasip2/release/${name//-/_}.wasm"
    if [ ! -f "$artifact" ]; then
        echo "build-plugins: expected $artifact after the build" >&2
        exit 1
    fi
    cp "$artifact" "$out/$name.wasm"
    count=$((count + 1))
done
# Guests in other languages, when their toolchains are installed
# (scripts/setup.sh --guests). Each is rebuilt only when its source or wit/
# changed: componentize-py and componentize-js take 10-20 s a component.
stale() { # stale OUTPUT SOURCE...
    [ ! -f "$1" ] && return 0
    local output=$1
    shift
    [ -n "$(find "$@" -newer "$output" -print -quit)" ]
}
venv="$root/target/guest-venv"
if [ -x "$venv/bin/componentize-py" ]; then
    for name in heartbeat-py counter-py; do
        if stale "$out/$name.wasm" "$root/plugins/$name/app.py" "$root/wit"; then
            echo "build-plugins: $name (componentize-py)"
            (cd "$root" && "$venv/bin/componentize-py" -d wit -w job componentize -p "plugins/$name" app -o "$out/$name.wasm" >/dev/null)
        fi
        count=$((count + 1))
    done
else
    echo "build-plugins: no Python guests (run scripts/setup.sh --guests for componentize-py)"
fi
js="$root/plugins/heartbeat-js"
if [ -x "$js/node_modules/.bin/componentize-js" ]; then
    if stale "$out/heartbeat-js.wasm" "$js/app.js" "$root/wit"; then
        echo "build-plugins: heartbeat-js (componentize-js)"
        # componentize-js reads --wit only below its working directory.
        stage="$build/heartbeat-js"
        rm -rf "$stage" && mkdir -p "$stage" && cp -r "$js/app.js" "$root/wit" "$stage/"
        # fetch() imports wasi:http/outgoing-handler, which zkrun links (and
        # grants with --allow-http); a job exports no HTTP handler.
        (cd "$stage" && "$js/node_modules/.bin/componentize-js" app.js --wit wit --world-name job \
            -d fetch-event -o "$out/heartbeat-js.wasm" >/dev/null)
    fi
    count=$((count + 1))
else
    echo "build-plugins: no JavaScript guests (run scripts/setup.sh --guests for componentize-js)"
fi
echo "build-plugins: $count components in $out"
