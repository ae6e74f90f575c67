#!/usr/bin/env bash
# Builds the npm-style package `durably-browser` into $1 (default: $CARGO_TARGET_DIR or
# target, then /durably-browser): the WebAssembly module (example `durably_browser`, release,
# wasm32-unknown-unknown, feature `browser`) through `wasm-bindgen --target web`, plus the
# worker bootstrap and page client of js/. Needs the wasm toolchain: `.ci/wasm-toolchain.sh`
# then `. "${DURABLY_WASM_TOOLS:-$HOME/.cache/durably-wasm}/env.sh"` (docs/browser.md); it
# builds with that file's DURABLY_WASM_CARGO and DURABLY_WASM_CARGO_FLAGS (either route).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../../.." && pwd)"
target="${CARGO_TARGET_DIR:-$root/target}"
case "$target" in /*) ;; *) target="$root/$target" ;; esac # cargo reads it from $root
out="${1:-$target/durably-browser}"
cargo="${DURABLY_WASM_CARGO:-cargo}"
# shellcheck disable=SC2086 # the flags are words
(cd "$root" && "$cargo" build ${DURABLY_WASM_CARGO_FLAGS:-} -p durably --locked --release \
  --target wasm32-unknown-unknown --no-default-features --features browser --example durably_browser)
rm -rf "$out"
mkdir -p "$out"
wasm-bindgen --target web --out-dir "$out" --out-name durably \
  "$target/wasm32-unknown-unknown/release/examples/durably_browser.wasm"
cp "$here/package.json" "$here"/js/*.js "$here"/js/*.d.ts "$out/"
echo "durably-browser: $out ($(wc -c <"$out/durably_bg.wasm") bytes of wasm)"
