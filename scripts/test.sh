#!/usr/bin/env bash
# Set up (with the dev tools), then lint, type-check and run the test suite.
# Extra arguments go to pytest (for example -m slow for the long tests).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --dev
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
exec .venv/bin/python -m pytest "$@"
