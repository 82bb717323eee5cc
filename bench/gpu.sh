#!/usr/bin/env bash
# One prepared GPU benchmark (not a test), for a CUDA machine; a few minutes in all.
#
#   bash bench/gpu.sh [COUNT]        # default 2000 synthetic 1600x1200 JPEGs
#
# For ViT-B-32, ViT-B-16 and ViT-L-14 (random weights, --pretrained none): end-to-end
# `clipdb ingest --device cuda --precision fp16` img/s into a fresh CLIPDB_HOME, GPU utilisation
# sampled by nvidia-smi during the ingest, and where the time went: decode+resize alone (the
# CPU worker pool), the encoder alone on the GPU, and the database write alone. The issue's goal
# is >= 5,000 img/s end to end for ViT-B-32 on an H100/H200-class GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
COUNT=${1:-2000}
BATCH=${BATCH:-256}
DATA=${DATA:-/tmp/clipdb-gpu-bench}
command -v nvidia-smi >/dev/null || { echo "nvidia-smi not found: no CUDA GPU here" >&2; exit 1; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
nproc
date -u

echo "generating $COUNT JPEGs in $DATA ..." >&2
"$PY" - "$DATA" "$COUNT" <<'EOF'
import sys
from pathlib import Path
sys.path.insert(0, "bench")
from bench_ingest import make_photos
make_photos(Path(sys.argv[1]) / "photos", int(sys.argv[2]), (1600, 1200))
EOF

for MODEL in ViT-B-32 ViT-B-16 ViT-L-14; do
  HOME_DIR=$(mktemp -d /tmp/clipdb-gpu-home-XXXX)
  chmod 711 "$HOME_DIR"
  echo "== $MODEL"
  nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader,nounits -lms 500 \
    > "$HOME_DIR/smi.csv" &
  SMI=$!
  START=$(date +%s.%N)
  CLIPDB_HOME="$HOME_DIR/home" "$PY" -m clipdb ingest "$DATA/photos" --model "$MODEL" \
    --pretrained none --device cuda --precision fp16 --batch-size "$BATCH" --json \
    2>/dev/null | tail -1 || true
  END=$(date +%s.%N)
  kill "$SMI" 2>/dev/null || true
  awk -F', ' '{u+=$1; n++; if ($1>m) m=$1; if ($2>mem) mem=$2}
    END {if (n) printf "gpu utilisation mean %.0f%% max %d%%, memory max %d MiB\n", u/n, m, mem}' \
    "$HOME_DIR/smi.csv"
  echo "wall incl. model load: $(echo "$END - $START" | bc) s"
  # Where the time went: each stage alone on the same files.
  CLIPDB_HOME="$HOME_DIR/home" "$PY" - "$DATA/photos" "$MODEL" "$BATCH" <<'EOF'
import glob, sys, time
from multiprocessing import Pool
import torch
from clipdb.decode import PixelPipeline, decode_task
from clipdb.encoder import load_encoder
from clipdb.ingest import default_workers
paths = sorted(glob.glob(sys.argv[1] + "/*.jpg"))
model, batch = sys.argv[2], int(sys.argv[3])
enc = load_encoder(model, "none", device="cuda", precision="fp16", backend="torch")
pipe = PixelPipeline.from_preprocess(enc.preprocess, max(enc.image_size))
t = time.perf_counter()
with Pool(default_workers()) as pool:
    done = pool.starmap(decode_task, [(p, pipe, None) for p in paths], chunksize=8)
decode_rate = len(paths) / (time.perf_counter() - t)
pixels = pipe.to_batch([d.pixels for d in done[:batch]])
enc.encode_images(pixels); torch.cuda.synchronize()
t = time.perf_counter()
for _ in range(10):
    enc.encode_images(pixels)
torch.cuda.synchronize()
encode_rate = 10 * len(pixels) / (time.perf_counter() - t)
print(f"decode+resize alone {decode_rate:.0f} img/s ({default_workers()} workers), "
      f"encoder alone {encode_rate:.0f} img/s (batch {len(pixels)}, fp16, incl. host->device)")
EOF
  CLIPDB_HOME="$HOME_DIR/home" "$PY" -c "from clipdb.db.embedded import stop_server; \
    import os; stop_server(os.environ['CLIPDB_HOME'])" || true
  rm -rf "$HOME_DIR"
done
