"""What the filter indexes of migration 0011 (camera, latitude) cost a writer, online.

    python bench/filter_index_write.py --existing 20000 --rounds 2 --rows 2000

Fresh database on the embedded server under --home; ``--existing`` rows with metadata are
bulk-loaded, then ``--rows`` new rows at a time go through clipdb.db.store.upsert_images in
committed batches of 256 (the ingest writer's path, into the live HNSW index), alternately with
the two indexes and without them (dropped), ``--rounds`` times each, so a busy machine slows
both alike. Prints rows/s for each.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchutil import fresh_database  # noqa: E402

from clipdb.db.registry import register_model  # noqa: E402
from clipdb.db.store import ImageRecord, bulk_load, upsert_images  # noqa: E402
from clipdb.exif import PhotoMetadata  # noqa: E402

BATCH = 256
DIM = 512
INDEXES = {
    "images_model_camera": "CREATE INDEX images_model_camera ON clipdb.images "
    "(model_id, lower(camera))",
    "images_model_lat": "CREATE INDEX images_model_lat ON clipdb.images (model_id, lat)",
}


def records(start: int, count: int, rng: np.random.Generator) -> list[ImageRecord]:
    vectors = rng.normal(size=(count, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    out = []
    for n, vector in enumerate(vectors, start=start):
        path = f"/w/{n}.jpg"
        meta = PhotoMetadata(camera=f"Camera {n % 7}", lat=float(n % 90), lon=0.0)
        out.append(
            ImageRecord(path, hashlib.sha256(path.encode()).digest(), 1, 1, 1, 1, vector, meta)
        )
    return out


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--existing", type=int, default=20_000)
    parser.add_argument("--rows", type=int, default=2_000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--home", default="/tmp/clipdb-bench-write-index")
    args = parser.parse_args()
    rng = np.random.default_rng(3)
    database = fresh_database(args.home, "clipdb_bench_index_write")
    rates: dict[str, list[float]] = {"with": [], "without": []}
    with database.connect() as conn:
        model = register_model(conn, "bench-write", "none", DIM)
        bulk_load(conn, model, records(0, args.existing, rng))
        conn.commit()
        next_id = args.existing
        for _ in range(args.rounds):
            for case in ("with", "without"):
                if case == "without":
                    for name in INDEXES:
                        conn.execute(f"DROP INDEX clipdb.{name}")
                conn.commit()
                rows = records(next_id, args.rows, rng)
                next_id += args.rows
                started = time.perf_counter()
                for offset in range(0, len(rows), BATCH):
                    upsert_images(conn, model, rows[offset : offset + BATCH])
                    conn.commit()
                rates[case].append(args.rows / (time.perf_counter() - started))
                if case == "without":
                    for ddl in INDEXES.values():
                        conn.execute(ddl)
                    conn.commit()
    for case, values in rates.items():
        print(f"{case} the camera and latitude indexes: {np.median(values):.0f} rows/s {values}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
