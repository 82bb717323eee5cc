#!/usr/bin/env bash
# Create .venv with clipdb (and, with --test, its test tools). Idempotent: a second run only checks.
#   bash scripts/setup.sh          # what `clipdb` needs to run
#   bash scripts/setup.sh --test   # ... plus pytest (+ pytest-xdist), ruff, mypy, playwright, ray
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
    # brings NVIDIA's CUDA libraries (~4 GB), of no use without an NVIDIA driver: say so
    # before the download starts (a driver may come later, so the choice stays the user's).
    if [ -z "${TORCH_INDEX:-}" ] && [ "$(uname -s)" = Linux ] \
        && ! command -v nvidia-smi >/dev/null && [ ! -e /proc/driver/nvidia ]; then
        cat >&2 <<'EOT'
setup: no NVIDIA driver here (no nvidia-smi, no /proc/driver/nvidia), and the default torch
build brings ~4 GB of CUDA libraries it cannot use. For the CPU-only build (~0.2 GB), stop
this (Ctrl-C) and run the same command with TORCH_INDEX in front, for example:
  TORCH_INDEX=https://download.pytorch.org/whl/cpu bash scripts/demo.sh ~/Pictures
  TORCH_INDEX=https://download.pytorch.org/whl/cpu bash scripts/setup.sh
EOT
    fi
    echo "setup: installing torch + torchvision (large: up to ~4 GB with CUDA libraries)" >&2
    index=()
    [ -n "${TORCH_INDEX:-}" ] && index=(--index-url "$TORCH_INDEX")
    pip_install "${index[@]}" "torch==2.14.1" "torchvision==0.29.1" \
        || pip_install "${index[@]}" "torch>=2.1,<3" "torchvision>=0.16,<1"
fi
check="import clipdb, psycopg_pool, open_clip"
[ -n "$extra" ] && check="$check, pytest, xdist, playwright, ruff, mypy, ray"
# Asked from outside the checkout (inside it, the folder alone makes clipdb importable), and
# clipdb must come from this checkout on a path entry (setup.py: editable "compat" mode), so a
# .venv installed the older way (an import hook) is installed again.
root=$(pwd -P)
on_path="import os, sys; sys.exit(os.path.realpath(sys.argv[1]) not in map(os.path.realpath, sys.path))"
if ! (cd / && python -c "$check; $on_path" "$root") 2>/dev/null; then
    echo "setup: installing clipdb$extra and its dependencies (about 300 MB)" >&2
    pip_install -e ".$extra"
fi
echo "setup: ready; activate it with: . .venv/bin/activate" >&2
