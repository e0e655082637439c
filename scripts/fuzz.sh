#!/usr/bin/env bash
# Runs every fuzz target for SECONDS each (default 60), one after another, on a copy of
# the committed seeds. Needs the nightly toolchain and cargo-fuzz
# (`cargo install cargo-fuzz`). Prints each target's execution count; fails on a crash.
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
secs=${1:-60}
shift || true
cd "$root/fuzz"
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  mapfile -t targets < <(ls fuzz_targets | sed 's/\.rs$//')
fi
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t"
  log=$(mktemp)
  echo "== fuzz $t for ${secs}s"
  if ! cargo +nightly fuzz run -O "$t" "corpus/$t" "seeds/$t" -- \
      -max_total_time="$secs" -rss_limit_mb=4096 -print_final_stats=1 >"$log" 2>&1; then
    tail -40 "$log"
    echo "FAIL: fuzz target $t crashed (artifact under fuzz/artifacts/$t)" >&2
    exit 1
  fi
  runs=$(grep -m1 'stat::number_of_executed_units' "$log" | awk '{print $2}')
  echo "ok   $t: ${runs:-?} executions in ${secs}s"
  rm -f "$log"
done
