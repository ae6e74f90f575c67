#!/usr/bin/env bash
# Installs what building durably for wasm32-unknown-unknown (feature `browser`) and running its
# wasm-bindgen tests in headless Chromium need, and writes the environment to use them:
#
#   .ci/wasm-toolchain.sh            # idempotent: installs only what is missing
#   . "${DURABLY_WASM_TOOLS:-$HOME/.cache/durably-wasm}/env.sh"
#   cargo $DURABLY_WASM_CARGO_FLAGS test -p durably --target wasm32-unknown-unknown \
#     --no-default-features --features browser --test browser_wasm
#
# - the wasm32 standard library: `rustup target add wasm32-unknown-unknown`; where rustup cannot
#   fetch it, Debian's `rustc-web`, `cargo-web` and `rust-web-src`, building std from source
#   (`RUSTC_BOOTSTRAP=1`, `-Zbuild-std=std,panic_abort`, linked by `wasm-ld-19`);
# - clang-19 and llvm-19 (Debian) for SQLite's C code (sqlite-wasm-rs);
# - wasm-bindgen-cli at exactly the lockfile's `wasm-bindgen` version (the test runner), in a
#   cache directory (`DURABLY_WASM_TOOLS`, default ~/.cache/durably-wasm), built once;
# - Chromium and chromedriver (Debian), the browser of `wasm-bindgen-test-runner`.
#
# Two knobs (.ci/run passes them here and sources env.sh from DURABLY_WASM_TOOLS):
# - DURABLY_WASM_ROUTE: `auto` (default: rustup's prebuilt std, else Debian's), `rustup` (fail
#   if rustup cannot provide it) or `debian` (always Debian's rust-web-src, even where rustup
#   works; it tests that route on a machine that has rustup);
# - DURABLY_WASM_TOOLS: where wasm-bindgen-cli is built and env.sh written (default
#   ~/.cache/durably-wasm). Give each route its own directory (and its own CARGO_TARGET_DIR:
#   the two toolchains rebuild each other's artifacts), e.g.
#   DURABLY_WASM_ROUTE=debian DURABLY_WASM_TOOLS=/tmp/deb-wasm CARGO_TARGET_DIR=target/deb .ci/run
set -euo pipefail
cd "$(dirname "$0")/.."

route="${DURABLY_WASM_ROUTE:-auto}"
case "$route" in
  auto | rustup | debian) ;;
  *)
    echo "DURABLY_WASM_ROUTE=$route: expected auto, rustup or debian" >&2
    exit 2
    ;;
esac
tools="${DURABLY_WASM_TOOLS:-$HOME/.cache/durably-wasm}"
mkdir -p "$tools"
target=wasm32-unknown-unknown

apt_updated=""
apt_install() { # apt_install PACKAGE...
  if [ -z "$apt_updated" ]; then apt-get update -qq || true; apt_updated=1; fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@"
}
# A package is installed when dpkg says so (its binaries may live off PATH).
installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }

echo "== C toolchain for SQLite on wasm32 (clang-19, llvm-19)"
missing=()
for package in clang-19 llvm-19; do installed "$package" || missing+=("$package"); done
[ ${#missing[@]} -eq 0 ] || apt_install "${missing[@]}"

echo "== browser (chromium, chromedriver)"
missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
[ -x /usr/bin/chromedriver ] || missing+=(chromium-driver)
[ ${#missing[@]} -eq 0 ] || apt_install "${missing[@]}"

echo "== wasm32 standard library"
# The rustup route: the target's prebuilt std. The Debian route: std built from rust-web-src.
has_std() { # has_std RUSTC
  local libdir
  libdir="$("$1" --print target-libdir --target "$target" 2>/dev/null)" || return 1
  compgen -G "$libdir/libstd-*.rlib" >/dev/null
}
cargo_bin="cargo"
rustc_bin="rustc"
debian_route=""
if [ "$route" != debian ] && has_std rustc; then
  :
elif [ "$route" != debian ] && command -v rustup >/dev/null 2>&1 \
  && rustup target add "$target" && has_std rustc; then
  :
elif [ "$route" = rustup ]; then
  echo "DURABLY_WASM_ROUTE=rustup: rustup cannot provide the $target std" >&2
  exit 1
else
  echo "building the $target std from Debian's rust-web-src (DURABLY_WASM_ROUTE=$route)"
  missing=()
  for package in rustc-web cargo-web rust-web-src lld-19; do
    installed "$package" || missing+=("$package")
  done
  [ ${#missing[@]} -eq 0 ] || apt_install "${missing[@]}"
  rustc_bin="$(dpkg -L rustc-web | grep -E '/bin/rustc(-web)?$' | head -n 1)"
  cargo_bin="$(dpkg -L cargo-web | grep -E '/bin/cargo(-web)?$' | head -n 1)"
  debian_route=1
  # bookworm's own rustc-web (1.85) is older than the workspace's rust-version; the
  # bookworm-security one (1.96 in 2026) is recent enough.
  need="$(sed -n 's/^rust-version = "\(.*\)"$/\1/p' Cargo.toml | head -n 1)"
  have="$("$rustc_bin" --version | awk '{ print $2 }')"
  if [ "$(printf '%s\n%s\n' "$need" "$have" | sort -V | head -n 1)" != "$need" ]; then
    echo "Debian's rustc-web is $have but the workspace needs Rust $need (Cargo.toml" \
      "rust-version): enable bookworm-security (or a newer Debian) in the apt sources" >&2
    exit 1
  fi
fi

echo "== wasm-bindgen-cli (the lockfile's wasm-bindgen version)"
version="$(awk '/^name = "wasm-bindgen"$/ { getline; gsub(/version = |"/, ""); print; exit }' Cargo.lock)"
if [ -z "$version" ]; then
  echo "Cargo.lock has no wasm-bindgen package: run 'cargo update -p durably' first" >&2
  exit 1
fi
bindgen_root="$tools/wasm-bindgen-$version"
if [ ! -x "$bindgen_root/bin/wasm-bindgen-test-runner" ]; then
  # Its own lockfile first; a registry that lacks one of its pinned versions (a yanked or
  # unmirrored crate) gets the newest compatible ones instead.
  # Built by the route's own toolchain (on the Debian route its rustc, not a rustup one on PATH).
  build_env=()
  [ -z "$debian_route" ] || build_env=(RUSTC="$rustc_bin")
  env "${build_env[@]}" "$cargo_bin" install --locked --quiet wasm-bindgen-cli --version "$version" \
    --root "$bindgen_root" \
    || env "${build_env[@]}" "$cargo_bin" install --quiet wasm-bindgen-cli --version "$version" \
      --root "$bindgen_root"
fi
"$bindgen_root/bin/wasm-bindgen-test-runner" --version

echo "== environment: $tools/env.sh"
{
  echo "# Written by .ci/wasm-toolchain.sh: the environment of a wasm32 build and its tests."
  echo "export PATH=\"$bindgen_root/bin:\$PATH\""
  echo "export CC_wasm32_unknown_unknown=clang-19"
  echo "export AR_wasm32_unknown_unknown=llvm-ar-19"
  echo "export CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUNNER=wasm-bindgen-test-runner"
  echo "export CHROMEDRIVER=/usr/bin/chromedriver"
  echo "export WASM_BINDGEN_TEST_TIMEOUT=\${WASM_BINDGEN_TEST_TIMEOUT:-120}"
  if [ -n "$debian_route" ]; then
    echo "export RUSTC=\"$rustc_bin\""
    echo "export RUSTC_BOOTSTRAP=1"
    echo "export CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_LINKER=wasm-ld-19"
    echo "export DURABLY_WASM_CARGO=\"$cargo_bin\""
    echo "export DURABLY_WASM_CARGO_FLAGS=\"-Zbuild-std=std,panic_abort\""
  else
    echo "export DURABLY_WASM_CARGO=cargo"
    echo "export DURABLY_WASM_CARGO_FLAGS="
  fi
} >"$tools/env.sh"
echo "ready: . $tools/env.sh"
