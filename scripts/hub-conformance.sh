#!/usr/bin/env bash
# Checks a hub against hub protocol v1 (docs/hub-protocol.md): plays an agent against
# URL with bearer KEY and checks every answer against the schemas in vectors/hub/.
#   scripts/hub-conformance.sh URL KEY [--ca FILE|--pin SHA256]
# Without --ca or --pin the system CA bundle judges the hub's certificate, as the agent
# does. One line per check; exit 0 when all pass, 1 naming the failed ones, 2 on a usage
# error. The key is never printed (pass it from a file: "$(cat hub.key)").
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
if [ $# -lt 2 ]; then
  echo "usage: scripts/hub-conformance.sh URL KEY [--ca FILE|--pin SHA256]" >&2
  exit 2
fi
exec cargo run -q --locked --example hub_conformance -- "$@"
