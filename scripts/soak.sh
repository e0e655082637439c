#!/usr/bin/env bash
# Runs the soak (examples/soak.rs) for MINUTES (default 3): the daemon against the Proxmox
# simulator with 500 guests and the hub simulator, desired-state churn, ~5% random
# Proxmox faults; fails on RSS/fd/thread growth after warm-up, a panic, a dead daemon,
# an unclean stop, or state that does not read back. Prints a summary table.
#
#   scripts/soak.sh [MINUTES] [-- SOAK-ARGS...]      e.g. scripts/soak.sh 60 -- --seed 0x2a
#
# The agent is built with the test-only feature `fault-points`, whose shortened poll
# schedule (FELHOM_FAULT_SECOND_MS) makes hub reports come every 15 s.
# SOAK_BIN=PATH soaks that agent binary instead, e.g. the static musl release from
# scripts/build-release.sh: the shipped allocator and code, without the feature, so hub
# reports come once a minute. SOAK_PROFILE=release builds and soaks target/release.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
minutes=${1:-3}
shift || true
[ "${1:-}" = "--" ] && shift
profile=()
dir=debug
if [ "${SOAK_PROFILE:-debug}" = release ]; then
  profile=(--release)
  dir=release
fi
cd "$root"
cargo build -q --locked "${profile[@]}" --features fault-points --bin felhom-agent --example soak
target=${CARGO_TARGET_DIR:-$root/target}/$dir
exec "$target/examples/soak" --minutes "$minutes" --bin "${SOAK_BIN:-$target/felhom-agent}" "$@"
