#!/usr/bin/env bash
# Checks the release budgets of a built agent binary; CI calls it after
# scripts/build-release.sh:
#
#   scripts/budgets.sh BINARY
#
#   size     the stripped binary is at most 4 MiB
#   static   no program interpreter and no NEEDED library
#   rss      the idle daemon, run against the simulators, stays at or under 8 MiB
#   stop     that idle daemon exits 0 within 2 s of SIGTERM (benches/shutdown.rs measures
#            it busy too: mid hub call, mid Proxmox task)
#   rss-full the daemon started on a full audit log (16 MiB, the default cap) peaks at or
#            under 8 MiB up to its first report: replay streams the file
#   crates   every crate of the shipped dependency tree is in supply-chain/allowed-crates.txt
#
# Prints one line per budget and exits non-zero on any breach, naming it. Needs
# binutils (readelf, strip) and cargo (for the simulators and `cargo tree`).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
max_size=$((4 * 1024 * 1024))
max_rss_kib=$((8 * 1024))
max_stop_ms=2000
idle_seconds=${BUDGET_IDLE_SECONDS:-5}
target=x86_64-unknown-linux-musl

if [ $# -ne 1 ] || [ ! -f "$1" ]; then
  echo "usage: scripts/budgets.sh BINARY" >&2
  exit 2
fi
bin=$(cd "$(dirname "$1")" && pwd)/$(basename "$1")
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
failures=()
fail() {
  echo "BUDGET BREACH: $*" >&2
  failures+=("$1")
}

# --- size: measured on a stripped copy, so the budget holds whatever the profile did.
strip -o "$work/stripped" "$bin"
size=$(stat -c %s "$work/stripped")
printf 'size     %d bytes (%d KiB) stripped, budget %d KiB\n' "$size" $((size / 1024)) $((max_size / 1024))
if [ "$size" -gt "$max_size" ]; then
  fail size "stripped binary is $size bytes, over $max_size"
fi

# --- static: the binary is static-pie. It keeps PIE (ASLR for a root daemon that parses
# outside input), so it has a .dynamic section holding only relocation entries for its
# own start-up code; what must be absent is a program interpreter (ld.so) and any NEEDED
# shared library.
interp=$(readelf -lW "$bin" | grep -c 'INTERP' || true)
needed=$(readelf -dW "$bin" | grep -c '(NEEDED)' || true)
kind=$(readelf -hW "$bin" | awk '/Type:/ {print $2}')
printf 'static   ELF type %s, INTERP headers %d, NEEDED entries %d\n' "$kind" "$interp" "$needed"
if [ "$interp" -ne 0 ]; then
  fail static "binary has a program interpreter: $(readelf -lW "$bin" | sed -n 's/.*Requesting program interpreter: \(.*\)]/\1/p')"
fi
if [ "$needed" -ne 0 ]; then
  fail static "binary needs shared libraries: $(readelf -dW "$bin" | grep '(NEEDED)' | tr -s ' ' | cut -d' ' -f6 | tr '\n' ' ')"
fi

# --- rss: the daemon against both simulators, idle after its first report.
cd "$root"
cargo build -q --locked -p felhom-sim --bins
sims=${CARGO_TARGET_DIR:-$root/target}/debug
mkfifo "$work/pve.in" "$work/hub.in"
"$sims/felhom-pve-sim" --until-stdin-eof <"$work/pve.in" >"$work/pve.out" 2>"$work/pve.err" &
pids+=($!)
"$sims/felhom-hub-sim" --until-stdin-eof <"$work/hub.in" >"$work/hub.out" 2>"$work/hub.err" &
pids+=($!)
# Holding the FIFOs open keeps the simulators up until this script exits.
exec 7>"$work/pve.in" 8>"$work/hub.in"
wait_for() { # FILE PATTERN SECONDS
  local i
  for ((i = 0; i < $3 * 10; i++)); do
    if grep -q "$2" "$1" 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  return 1
}
wait_for "$work/pve.out" '^{' 30 || { cat "$work/pve.err" >&2; echo "felhom-pve-sim did not start" >&2; exit 1; }
wait_for "$work/hub.out" '^{' 30 || { cat "$work/hub.err" >&2; echo "felhom-hub-sim did not start" >&2; exit 1; }
mkdir -m 0700 "$work/state"
(
  umask 077
  printf '{"host_id":"budget","state_dir":"%s","log":{"level":"info"},"proxmox":%s,"hub":%s}\n' \
    "$work/state" "$(head -1 "$work/pve.out")" "$(head -1 "$work/hub.out")" >"$work/agent.json"
)
# start_daemon CHECK WHO CONFIG ERR N IDLE: runs the daemon on CONFIG (stderr to ERR),
# waits up to 60 s for the hub's Nth report, then IDLE seconds. Returns 0 with the
# daemon still running as $agent; otherwise fails CHECK naming WHO, with ERR's tail.
start_daemon() {
  local check=$1 who=$2 config=$3 err=$4 n=$5 idle=$6 why=""
  "$bin" run --config "$config" 2>"$err" &
  agent=$!
  pids+=("$agent")
  if ! wait_for "$work/hub.out" "^report $n\$" 60; then
    why="sent no report within 60 s"
  else
    sleep "$idle"
    kill -0 "$agent" 2>/dev/null || why="exited after its first report"
  fi
  [ -z "$why" ] && return 0
  tail -20 "$err" >&2
  fail "$check" "$who $why"
  return 1
}
# status_of FIELD: a field of the daemon's /proc status (VmRSS and VmHWM are in KiB).
status_of() { awk -v f="$1:" '$1 == f {print $2}' "/proc/$agent/status"; }

if start_daemon rss "the daemon" "$work/agent.json" "$work/agent.err" 1 "$idle_seconds"; then
  rss=$(status_of VmRSS)
  printf 'rss      %d KiB idle (%d threads, %ds after the first report), budget %d KiB\n' \
    "$rss" "$(status_of Threads)" "$idle_seconds" "$max_rss_kib"
  if [ "$rss" -gt "$max_rss_kib" ]; then
    fail rss "idle daemon RSS is $rss KiB, over $max_rss_kib KiB"
  fi
  sent=$(date +%s%N)
  kill -TERM "$agent"
  code=0
  wait "$agent" || code=$?
  stop_ms=$((($(date +%s%N) - sent) / 1000000))
  printf 'stop     %d ms from SIGTERM to exit %d, budget %d ms\n' "$stop_ms" "$code" "$max_stop_ms"
  if [ "$code" -ne 0 ]; then
    tail -20 "$work/agent.err" >&2
    fail stop "the daemon exited $code on SIGTERM, expected 0"
  fi
  if [ "$stop_ms" -gt "$max_stop_ms" ]; then
    fail stop "the daemon took $stop_ms ms from SIGTERM to exit, over $max_stop_ms ms"
  fi
fi

# --- rss-full: a second daemon on its own state directory, whose audit.log is filled to
# the default cap by examples/audit_fill.rs (entries chained as the agent writes them).
# VmHWM is the peak resident size since the process started: replay included.
cargo build -q --locked --example audit_fill
mkdir -m 0700 "$work/state-full"
full_bytes=$("${CARGO_TARGET_DIR:-$root/target}/debug/examples/audit_fill" "$work/state-full/audit.log" $((16 * 1024 * 1024)))
(
  umask 077
  sed "s#\"state_dir\":\"$work/state\"#\"state_dir\":\"$work/state-full\"#" "$work/agent.json" >"$work/agent-full.json"
)
grep -q "state-full" "$work/agent-full.json" || { echo "could not point the config at state-full" >&2; exit 1; }
seen=$(grep -c '^report ' "$work/hub.out" || true)
if start_daemon rss-full "the daemon on a full audit log" "$work/agent-full.json" \
  "$work/agent-full.err" $((seen + 1)) 0; then
  hwm=$(status_of VmHWM)
  rss=$(status_of VmRSS)
  printf 'rss-full %d KiB peak, %d KiB now, after replaying a %d-byte audit log; budget %d KiB\n' \
    "$hwm" "$rss" "$full_bytes" "$max_rss_kib"
  if [ "$hwm" -gt "$max_rss_kib" ]; then
    fail rss-full "daemon peak RSS with a full audit log is $hwm KiB, over $max_rss_kib KiB"
  fi
  if grep -q ' event=audit_rotated ' "$work/agent-full.err"; then
    fail rss-full "the full audit log was rotated at start instead of replayed"
  fi
  kill -TERM "$agent"
  wait "$agent" || true
fi

# --- crates: the dependency tree that ships. `-e normal` leaves out dev- and build-
# dependencies (build scripts run on the build machine and put nothing of their own in
# the binary; ring's C code is ring's). Proc macros stay: they run in our build.
# `--target` drops platform-specific crates that never build for musl.
allowed=supply-chain/allowed-crates.txt
tree=$(cargo tree --locked -e normal -p felhom-agent --target "$target" --prefix none --format '{p}' |
  sed 's/ (\*)$//' | sort -u)
count=$(awk '$1 != "felhom-agent"' <<<"$tree" | wc -l)
names=$(awk '$1 != "felhom-agent" {print $1}' <<<"$tree" | sort -u)
unlisted=()
for n in $names; do
  grep -Eq "^$n([[:space:]]|$)" "$allowed" || unlisted+=("$n")
done
direct=$(cargo tree --locked -e normal -p felhom-agent --target "$target" --depth 1 --prefix none --format '{p}' |
  awk 'NR > 1 {print $1}' | sort -u)
unexplained=()
for n in $direct; do
  grep -Eq "^$n[[:space:]]+#[[:space:]]*[^[:space:]]" "$allowed" || unexplained+=("$n")
done
printf 'crates   %d in the shipped tree (%d names, %d direct)\n' "$count" "$(wc -w <<<"$names")" "$(wc -w <<<"$direct")"
if [ ${#unlisted[@]} -ne 0 ]; then
  fail crates "not in $allowed: ${unlisted[*]}"
fi
if [ ${#unexplained[@]} -ne 0 ]; then
  fail crates "direct dependencies without a reason in $allowed: ${unexplained[*]}"
fi

if [ ${#failures[@]} -ne 0 ]; then
  echo "FAIL: budgets breached: $(printf '%s\n' "${failures[@]}" | sort -u | tr '\n' ' ')" >&2
  exit 1
fi
echo "ok: all budgets hold"
