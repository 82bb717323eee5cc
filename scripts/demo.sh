#!/usr/bin/env bash
# One command from a fresh checkout: set up, index a folder on the embedded database, search it.
#   bash scripts/demo.sh ~/Pictures                 # index, then images like the first one
#   bash scripts/demo.sh ~/Pictures "a red car"     # index, then search by text
# Offline (no model hub)? CLIPDB_PRETRAINED=/path/to/checkpoint.pt, or =none for random weights.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -lt 1 ] || [ ! -d "$1" ]; then
    echo "usage: bash scripts/demo.sh IMAGE_DIR [TEXT_QUERY]" >&2
    exit 2
fi
images=$(cd "$1" && pwd)
bash scripts/setup.sh
. .venv/bin/activate
python -m clipdb.ingest "$images"
if [ $# -ge 2 ]; then
    python -m clipdb.search --text "$2" --top 5
else
    first=$(find "$images" -type f \( -iname '*.jpg' -o -iname '*.jpeg' -o -iname '*.png' \
        -o -iname '*.webp' \) | LC_ALL=C sort | head -n 1)
    echo "images like $first:"
    python -m clipdb.search --like "$first" --top 5
fi
python -m clipdb.db status
