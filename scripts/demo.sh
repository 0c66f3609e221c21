#!/usr/bin/env bash
# Runs the demo: the sink on a temporary file:// lake, fed sample records over the Forward protocol.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec .venv/bin/securitylake-sink demo "$@"
