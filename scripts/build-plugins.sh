#!/usr/bin/env bash
# Builds every crate in plugins/ to a wasm32-wasip2 component and copies them
# to target/plugins/<name>.wasm (names as in plugins/, e.g. wrong-version).
#
# Uses the rustup wasm32-wasip2 target when it is installed. Otherwise it uses
# Debian's Rust (rustc-web, with its std source) to build std for the target,
# as described in docs/plugins.md; scripts/setup.sh installs it.
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
echo "build-plugins: $count components in $out"
