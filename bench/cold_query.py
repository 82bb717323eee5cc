"""Cold CLI text query (not a test): whole ``clipdb search --text`` processes, per backend.

    python bench/cold_query.py [--rows 10000] [--repeats 3]

One fresh CLIPDB_HOME holds ``--rows`` synthetic unit vectors for random ViT-B-32 (written with
clipdb.db.store, as ingest writes them). One warm-up query per backend converts and caches the
OpenVINO IR and warms the OS file cache; then the default backend (OpenVINO on this CPU) and
``--backend torch`` alternate ``--repeats`` times each, so a busy machine slows them alike.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from clipdb.config import Settings  # noqa: E402
from clipdb.db import open_database  # noqa: E402
from clipdb.db.embedded import stop_server  # noqa: E402
from clipdb.db.registry import register_model  # noqa: E402
from clipdb.db.store import ImageRecord, upsert_images  # noqa: E402

MODEL, DIM = "ViT-B-32", 512


def fill(rows: int) -> None:
    database = open_database(Settings.resolve())
    vectors = np.random.default_rng(0).standard_normal((rows, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    with database.connect() as conn:
        model = register_model(conn, MODEL, "none", DIM)
        for start in range(0, rows, 2000):
            records = [
                ImageRecord(
                    path=f"/data/img_{i:06d}.jpg",
                    sha256=hashlib.sha256(str(i).encode()).digest(),
                    size=1,
                    mtime_ns=1,
                    width=1,
                    height=1,
                    embedding=vectors[i],
                )
                for i in range(start, min(rows, start + 2000))
            ]
            upsert_images(conn, model, records)
        conn.commit()


def query(backend: str | None) -> float:
    command = [sys.executable, "-m", "clipdb", "search", "--text", "a photo", "-k", "10"]
    command += ["--model", MODEL, "--pretrained", "none"]
    if backend:
        command += ["--backend", backend]
    start = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    if done.returncode != 0 or done.stdout.count("\n") < 10:
        raise SystemExit(f"query failed ({done.returncode}): {done.stderr.strip()[-300:]}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="clipdb-bench-cold-"))
    base.chmod(0o711)  # as root, the server user must enter it
    os.environ["CLIPDB_HOME"] = str(base / "home")
    os.environ.pop("CLIPDB_OPENVINO_CACHE", None)  # the IR lives in this home, as for users
    try:
        fill(args.rows)
        for backend in (None, "torch"):
            query(backend)  # warm-up: IR conversion, OS file cache
        times: dict[str, list[float]] = {"default (openvino)": [], "torch": []}
        for _ in range(args.repeats):
            times["default (openvino)"].append(query(None))
            times["torch"].append(query("torch"))
        print(f"{args.rows} rows, {MODEL} random weights, IR cache warm")
        for name, values in times.items():
            runs = " / ".join(f"{v:.2f}" for v in values)
            print(f"{name}: {runs} s (median {statistics.median(values):.2f})")
        ratio = statistics.median(times["default (openvino)"]) / statistics.median(times["torch"])
        print(f"ratio openvino / torch (medians): {ratio:.2f} (target <= 0.5)")
    finally:
        stop_server(base / "home")
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
