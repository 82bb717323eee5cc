#!/usr/bin/env bash
# Set up everything the tests need (venv, packages, Debian's Chromium) and run them.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --test
if [ ! -x /usr/bin/chromium ] && command -v apt-get >/dev/null; then
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    echo "test: installing Debian's chromium for the browser tests" >&2
    $SUDO apt-get update -qq && $SUDO apt-get install -y -qq chromium >/dev/null
fi
. .venv/bin/activate
ruff check clipdb tests bench migrations
ruff format --check clipdb tests bench migrations
mypy clipdb
python -m pytest "$@"
