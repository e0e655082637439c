#!/usr/bin/env bash
# Builds the static x86_64-unknown-linux-musl release binary reproducibly.
#
#   scripts/build-release.sh [OUT_DIR]     (default: ./dist)
#
# Same commit + same toolchain => same bytes, whatever directory it is built in:
# --locked dependencies, the project, target and cargo-registry paths remapped out of
# the binary (Rust and C), no build id, SOURCE_DATE_EPOCH fixed to the commit time.
# Prints the binary's path, size and sha256.
#
# Built with `cargo auditable` (a build tool: `cargo install --locked cargo-auditable`),
# so the exact dependency list travels inside the binary, in its `.dep-v0` section, for
# `cargo audit bin`. FELHOM_PLAIN_BUILD=1 builds without it, for a developer's quick
# look; such a binary is not the shipped artifact and the script says so.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$root/dist}
target=x86_64-unknown-linux-musl
cargo_home=${CARGO_HOME:-$HOME/.cargo}
target_dir=${CARGO_TARGET_DIR:-$root/target}
build=(auditable build)
if [ "${FELHOM_PLAIN_BUILD:-}" = 1 ]; then
  build=(build)
  echo "note: FELHOM_PLAIN_BUILD=1: no embedded dependency list; not the shipped artifact" >&2
elif ! cargo auditable --version >/dev/null 2>&1; then
  echo "error: cargo-auditable is missing: cargo install --locked cargo-auditable" >&2
  echo "       (or FELHOM_PLAIN_BUILD=1 for a binary without the dependency list)" >&2
  exit 2
fi

if [ -z "${SOURCE_DATE_EPOCH:-}" ]; then
  SOURCE_DATE_EPOCH=$(git -C "$root" log -1 --format=%ct 2>/dev/null || echo 1767225600)
fi
export SOURCE_DATE_EPOCH
export CC_x86_64_unknown_linux_musl=${CC_x86_64_unknown_linux_musl:-musl-gcc}
remap="--remap-path-prefix=$root=/felhom-agent --remap-path-prefix=$cargo_home=/cargo"
case $target_dir in
"$root"/*) ;;
*) remap="$remap --remap-path-prefix=$target_dir=/target" ;;
esac
export RUSTFLAGS="$remap -C link-arg=-Wl,--build-id=none -C target-feature=+crt-static"
export CFLAGS_x86_64_unknown_linux_musl="-ffile-prefix-map=$root=/felhom-agent -ffile-prefix-map=$cargo_home=/cargo"
if [ -n "${FELHOM_BUILD_VERSION:-}" ]; then export FELHOM_BUILD_VERSION; fi

cd "$root"
cargo "${build[@]}" --release --locked --target "$target" --bin felhom-agent
mkdir -p "$out"
bin="$out/felhom-agent-$target"
cp "$target_dir/$target/release/felhom-agent" "$bin"
size=$(stat -c %s "$bin")
sum=$(sha256sum "$bin" | cut -d' ' -f1)
printf 'binary  %s\nsize    %s bytes (%s KiB)\nsha256  %s\n' "$bin" "$size" "$((size / 1024))" "$sum"
