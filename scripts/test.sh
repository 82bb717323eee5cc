#!/usr/bin/env bash
# Set up everything the tests need (venv, packages, Debian's Chromium), lint, and run the tests.
#   bash scripts/test.sh             # the fast tier: every test not marked slow (a few minutes)
#   bash scripts/test.sh --all       # the fast tier, then the slow tier (what CI runs)
#   bash scripts/test.sh -- ARGS     # pytest ARGS instead (e.g. -- tests/test_cli.py -k pipe)
set -euo pipefail
cd "$(dirname "$0")/.."
tiers="fast"
pytest_args=()
case "${1:-}" in
    --all) tiers="fast slow" ;;
    --) shift; tiers="args"; pytest_args=("$@") ;;
    "") ;;
    *) echo "usage: bash scripts/test.sh [--all | -- PYTEST_ARGS]" >&2; exit 2 ;;
esac
bash scripts/setup.sh --test
if [ ! -x /usr/bin/chromium ] && command -v apt-get >/dev/null; then
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    echo "test: installing Debian's chromium for the browser tests" >&2
    $SUDO apt-get update -qq && $SUDO apt-get install -y -qq chromium >/dev/null
fi
if ! command -v tesseract >/dev/null && command -v apt-get >/dev/null; then
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    echo "test: installing Debian's tesseract-ocr for the OCR engine tests" >&2
    $SUDO apt-get update -qq && $SUDO apt-get install -y -qq tesseract-ocr >/dev/null
fi
. .venv/bin/activate
ruff check clipdb tests bench migrations
ruff format --check clipdb tests bench migrations
mypy clipdb
times=()
for tier in $tiers; do
    start=$(date +%s)
    case "$tier" in
        fast) python -m pytest -m "not slow" --durations=20 ;;
        slow) python -m pytest -m slow --durations=20 ;;
        args) python -m pytest "${pytest_args[@]}" ;;
    esac
    times+=("$tier tier: $(( $(date +%s) - start )) s")
done
printf 'test: %s\n' "${times[@]}" >&2
