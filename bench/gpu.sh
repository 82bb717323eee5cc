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
command -v nvidia-smi >/dev/null || { echo "nvidia-smi not found: no CUDA GPU here" >&2; exit 1; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
echo "cores: $(nproc), $(date -u)"
"$PY" -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', \
torchvision.__version__, 'cuda', torch.version.cuda)"

echo "generating $COUNT JPEGs in $DATA/photos ..." >&2
"$PY" bench/gpu_stages.py generate "$DATA/photos" --count "$COUNT"

HOME_DIR=$(mktemp -d /tmp/clipdb-gpu-home-XXXX)
chmod 711 "$HOME_DIR"
trap 'CLIPDB_HOME="$HOME_DIR/home" "$PY" -c "from clipdb.db.embedded import stop_server; \
stop_server(\"$HOME_DIR/home\")" || true; rm -rf "$HOME_DIR"' EXIT
for MODEL in ViT-B-32 ViT-B-16 ViT-L-14; do
  echo "== $MODEL"
  "$PY" bench/gpu_stages.py measure "$DATA/photos" --model "$MODEL" --device cuda \
    --precision fp16 --batch "$BATCH" --home "$HOME_DIR/home"
done

echo "== CLI: clipdb ingest (ViT-B-32, fresh CLIPDB_HOME, model load included)"
START=$(date +%s.%N)
CLIPDB_HOME="$HOME_DIR/cli" "$PY" -m clipdb ingest "$DATA/photos" --model ViT-B-32 \
  --pretrained none --device cuda --precision fp16 --batch-size "$BATCH" --json 2>/dev/null | tail -1
END=$(date +%s.%N)
echo "wall: $(echo "$END - $START" | bc) s"
CLIPDB_HOME="$HOME_DIR/cli" "$PY" -c "from clipdb.db.embedded import stop_server; \
import os; stop_server(os.environ['CLIPDB_HOME'])" || true
