#!/usr/bin/env bash
# Create .venv with clipdb and its test tools. Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
. .venv/bin/activate
if ! python -c "import torch, torchvision" 2>/dev/null; then
    python -m pip install --quiet --upgrade pip
    # torch/torchvision first, pinned to the builds this project is tested with
    # (pyproject.toml declares ranges; any release in them works).
    python -m pip install --quiet "torch==2.14.1" "torchvision==0.29.1" \
        || python -m pip install --quiet "torch>=2.1,<3" "torchvision>=0.16,<1"
fi
if ! python -c "import clipdb, pytest, playwright" 2>/dev/null; then
    python -m pip install --quiet -e ".[test]"
fi
