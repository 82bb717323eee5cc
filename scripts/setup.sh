#!/usr/bin/env bash
# Create .venv with clipdb (and, with --test, its test tools). Idempotent: a second run only checks.
#   bash scripts/setup.sh          # what `clipdb` needs to run
#   bash scripts/setup.sh --test   # ... plus pytest, ruff, mypy, playwright, ray
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
extra=""
[ "${1:-}" = "--test" ] && extra="[test]"
if [ ! -x .venv/bin/python ]; then
    echo "setup: creating .venv with $("$PYTHON" --version)" >&2
    "$PYTHON" -m venv .venv
fi
. .venv/bin/activate
pip_install() { python -m pip install --progress-bar on --disable-pip-version-check "$@"; }
if ! python -c "import torch, torchvision" 2>/dev/null; then
    # torch/torchvision first, pinned to the builds this project is tested with
    # (pyproject.toml declares ranges; any release in them works). The default Linux build
    # brings NVIDIA's CUDA libraries (~4 GB); on a machine without an NVIDIA GPU set
    # TORCH_INDEX=https://download.pytorch.org/whl/cpu for the CPU-only build (~0.2 GB).
    echo "setup: installing torch + torchvision (large: up to ~4 GB with CUDA libraries)" >&2
    index=()
    [ -n "${TORCH_INDEX:-}" ] && index=(--index-url "$TORCH_INDEX")
    pip_install "${index[@]}" "torch==2.14.1" "torchvision==0.29.1" \
        || pip_install "${index[@]}" "torch>=2.1,<3" "torchvision>=0.16,<1"
fi
check="import clipdb, psycopg_pool, open_clip"
[ -n "$extra" ] && check="$check, pytest, playwright, ruff, mypy, ray"
if ! python -c "$check" 2>/dev/null; then
    echo "setup: installing clipdb$extra and its dependencies (about 300 MB)" >&2
    pip_install -e ".$extra"
fi
echo "setup: ready; activate it with: . .venv/bin/activate" >&2
