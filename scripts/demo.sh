#!/usr/bin/env bash
# One command from a fresh checkout: set up, index a folder on the embedded database, search it.
#   bash scripts/demo.sh ~/Pictures                 # index, then images like the first one
#   bash scripts/demo.sh ~/Pictures "a red car"     # index, then search by text
# Offline (no model hub)? CLIPDB_PRETRAINED=/path/to/checkpoint.pt, or =none for random weights.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -lt 1 ]; then
    echo "usage: bash scripts/demo.sh IMAGE_DIR [TEXT_QUERY]" >&2
    exit 2
fi
if [ ! -d "$1" ]; then
    echo "demo: $1 is not a directory (give the folder of images to index)" >&2
    exit 2
fi
images=$(cd "$1" && pwd)
bash scripts/setup.sh
. .venv/bin/activate
clipdb ingest "$images"
if [ $# -ge 2 ]; then
    clipdb search --text "$2" --top 5
else
    first=$(find "$images" -type f \( -iname '*.jpg' -o -iname '*.jpeg' -o -iname '*.png' \
        -o -iname '*.webp' \) | LC_ALL=C sort | head -n 1)
    echo "images like $first:"
    clipdb search --like "$first" --top 5
fi
clipdb db status
cat <<EOT

Next: activate the environment in your shell, then use clipdb directly:
  . .venv/bin/activate
  clipdb search --text "a red car"          # or: clipdb search photo.jpg / --like PATH
  clipdb serve                               # web page on http://127.0.0.1:8000
  clipdb ingest "$images" --watch --prune    # keep the index in sync until Ctrl-C
EOT
