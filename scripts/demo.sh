#!/usr/bin/env bash
# One command from a fresh checkout: set up, index a folder on the embedded database, search it.
#   bash scripts/demo.sh ~/Pictures                 # index, then find images like the first one
#   bash scripts/demo.sh ~/Pictures "a red car"     # index, then search by text
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -lt 1 ]; then
    echo "usage: bash scripts/demo.sh IMAGE_DIR [TEXT_QUERY]" >&2
    exit 2
fi
bash scripts/setup.sh
. .venv/bin/activate
python -m clipdb.db status
