#!/usr/bin/env bash
# Builds the static x86_64-unknown-linux-musl release binary reproducibly.
#
#   scripts/build-release.sh [OUT_DIR]     (default: ./dist)
#
# Same commit + same toolchain => same bytes, whatever directory it is built in:
# --locked dependencies, the project and cargo-registry paths remapped out of the
# binary (Rust and C), no build id, SOURCE_DATE_EPOCH fixed to the commit time.
# Prints the binary's path, size and sha256.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$root/dist}
target=x86_64-unknown-linux-musl
cargo_home=${CARGO_HOME:-$HOME/.cargo}

if [ -z "${SOURCE_DATE_EPOCH:-}" ]; then
  SOURCE_DATE_EPOCH=$(git -C "$root" log -1 --format=%ct 2>/dev/null || echo 1767225600)
fi
export SOURCE_DATE_EPOCH
export CC_x86_64_unknown_linux_musl=${CC_x86_64_unknown_linux_musl:-musl-gcc}
remap="--remap-path-prefix=$root=/felhom-agent --remap-path-prefix=$cargo_home=/cargo"
export RUSTFLAGS="$remap -C link-arg=-Wl,--build-id=none -C target-feature=+crt-static"
export CFLAGS_x86_64_unknown_linux_musl="-ffile-prefix-map=$root=/felhom-agent -ffile-prefix-map=$cargo_home=/cargo"
if [ -n "${FELHOM_BUILD_VERSION:-}" ]; then export FELHOM_BUILD_VERSION; fi

cd "$root"
cargo build --release --locked --target "$target" --bin felhom-agent
mkdir -p "$out"
bin="$out/felhom-agent-$target"
cp "target/$target/release/felhom-agent" "$bin"
size=$(stat -c %s "$bin")
sum=$(sha256sum "$bin" | cut -d' ' -f1)
printf 'binary  %s\nsize    %s bytes (%s KiB)\nsha256  %s\n' "$bin" "$size" "$((size / 1024))" "$sum"
