#!/usr/bin/env bash
# One command from a fresh checkout: set up, index a folder on the embedded database, search it.
#   bash scripts/demo.sh ~/Pictures                 # index, then images like one it indexed
#   bash scripts/demo.sh ~/Pictures "a red car"     # index, then search by text
# Offline (no model hub)? CLIPDB_PRETRAINED=/path/to/checkpoint.pt, or =none for random weights.
set -euo pipefail
if [ $# -lt 1 ]; then
    echo "usage: bash scripts/demo.sh IMAGE_DIR [TEXT_QUERY]" >&2
    exit 2
fi
# The folder is the caller's: resolve it before moving to the checkout.
if [ ! -d "$1" ]; then
    echo "demo: $1 is not a directory (give the folder of images to index)" >&2
    exit 2
fi
images=$(cd "$1" && pwd)
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
if ! clipdb ingest "$images"; then
    if [ -z "${CLIPDB_PRETRAINED:-}" ]; then
        # The error above gives clipdb's own rerun line; this is the demo's.
        echo "demo: if the model weights could not be downloaded (offline), try the demo" \
            "with random weights (meaningless results):" >&2
        printf '  CLIPDB_PRETRAINED=none bash' >&2
        printf ' %q' "$0" "$images" "${@:2}" >&2
        printf '\n' >&2
    fi
    exit 1
fi
if [ $# -ge 2 ]; then
    clipdb search --text "$2" --top 5
else
    # The query is an image the ingest indexed: a folder's first file may be one it skipped.
    hit=$(mktemp)
    trap 'rm -f "$hit"' EXIT
    clipdb search --text "a photo" --under "$images" -k 1 --paths -0 >"$hit"
    first=""
    IFS= read -r -d '' first <"$hit" || true
    if [ -z "$first" ]; then
        echo "demo: no image in $images could be indexed (see the skipping lines above)" >&2
        exit 1
    fi
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
