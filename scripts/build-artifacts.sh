#!/usr/bin/env bash
# Builds every release artifact an auditor checks, reproducibly, into OUT_DIR:
#
#   scripts/build-artifacts.sh [OUT_DIR]      (default: ./dist)
#
#   felhom-agent-x86_64-unknown-linux-musl   the static binary, built with cargo auditable
#                                            (its dependency list in section .dep-v0)
#   felhom-agent_VERSION-1_amd64.deb         the Debian package holding that binary
#   felhom-agent.cdx.json                    CycloneDX SBOM of the shipped tree, naming
#                                            the binary by its SHA-256
#   SHA256SUMS                               over the three, for `sha256sum -c`
#
# Same commit + same toolchain => the same four files (CI builds twice and compares).
# Prints one line per artifact: its name and sha256.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$root/dist}
if [ -z "${SOURCE_DATE_EPOCH:-}" ]; then
  SOURCE_DATE_EPOCH=$(git -C "$root" log -1 --format=%ct 2>/dev/null || echo 1767225600)
fi
export SOURCE_DATE_EPOCH
mkdir -p "$out"
out=$(cd "$out" && pwd)

"$root/scripts/build-release.sh" "$out" >"$out/.release-report"
bin=$(awk '/^binary/{print $2}' "$out/.release-report")
"$root/scripts/build-deb.sh" "$bin" "$out" >"$out/.deb-report"
deb=$(awk '/^package/{print $2}' "$out/.deb-report")
python3 "$root/scripts/sbom.py" --binary "$bin" --out "$out/felhom-agent.cdx.json"
rm -f "$out/.release-report" "$out/.deb-report"

(cd "$out" && sha256sum "$(basename "$bin")" "$(basename "$deb")" felhom-agent.cdx.json >SHA256SUMS)
cat "$out/SHA256SUMS"
