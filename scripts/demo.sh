#!/usr/bin/env bash
# Set up, then build an index of the shipped debian-pkgs corpus with the default
# encoder and print example searches. Extra arguments go to `sie-index demo`
# (for example --limit 0 to index all 60,631 documents).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/sie-index demo "$@"
