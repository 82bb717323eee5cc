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
# Debian's chromium (browser tests) and tesseract-ocr (OCR engine tests): what is missing,
# in one apt-get update and one install. It downloads while setup.sh installs the Python
# packages and the linters run, unless sudo would ask for a password (then it runs first,
# alone, so the prompt is not lost in pip's output).
debs=()
[ -x /usr/bin/chromium ] || debs+=(chromium)
command -v tesseract >/dev/null || debs+=(tesseract-ocr)
apt_pid=""
if [ ${#debs[@]} -gt 0 ] && command -v apt-get >/dev/null; then
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    echo "test: installing Debian's ${debs[*]} for the browser and OCR engine tests" >&2
    apt_install() { $SUDO apt-get update -qq && $SUDO apt-get install -y -qq "${debs[@]}" >/dev/null; }
    if [ -z "$SUDO" ] || sudo -n true 2>/dev/null; then
        apt_install & apt_pid=$!
    else
        apt_install
    fi
fi
bash scripts/setup.sh --test
. .venv/bin/activate
ruff check clipdb tests bench migrations
ruff format --check clipdb tests bench migrations
mypy clipdb
[ -z "$apt_pid" ] || wait "$apt_pid"  # its exit status ends the run here if it failed
# Both tiers on one pytest-xdist worker per core (at most 8: each runs its own PostgreSQL);
# loadgroup keeps a file's tests that share a module fixture on one worker (tests/conftest.py)
# and hands every other test to whichever worker is free.
workers=$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc 2>/dev/null || echo 2)  # nproc obeys OMP_*
[ "$workers" -le 8 ] || workers=8
parallel=(-n "$workers" --dist loadgroup)
times=()
for tier in $tiers; do
    start=$(date +%s)
    case "$tier" in
        fast) python -m pytest "${parallel[@]}" -m "not slow" --durations=20 ;;
        slow) python -m pytest "${parallel[@]}" -m slow --durations=20 ;;
        args) python -m pytest "${pytest_args[@]}" ;;
    esac
    times+=("$tier tier: $(( $(date +%s) - start )) s")
done
printf 'test: %s\n' "${times[@]}" >&2
