"""The ingest writer path, online vs bulk, with precomputed vectors (no encoder).

A model already holding ``--existing`` rows (loaded with store.bulk_load) gets ``--new`` more:
online = committed batches of store.upsert_images into the live HNSW index (today's path);
bulk = drop the index, the same batches, then store.build_model_index (CONCURRENTLY), which
is what clipdb.ingest.bulk does. End-to-end rows/s for each, to pick the switch point.

    python bench/bench_write.py --existing 20000 --new 2000 --home /tmp/clipdb-bench-write
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from collections.abc import Iterator, Sequence

import numpy as np
from benchutil import fresh_database

from clipdb.db import Database
from clipdb.db.registry import Model, register_model
from clipdb.db.store import (
    ImageRecord,
    build_model_index,
    bulk_load,
    drop_model_index,
    upsert_images,
)

BATCH = 256


def records(count: int, dim: int, start: int, seed: int) -> Iterator[ImageRecord]:
    rng = np.random.default_rng(seed)
    for index in range(start, start + count):
        vector = rng.normal(size=dim).astype(np.float32)
        path = f"/bench/img_{index:08d}.jpg"
        yield ImageRecord(
            path,
            hashlib.sha256(path.encode()).digest(),
            1,
            1,
            1,
            1,
            vector / np.linalg.norm(vector),
        )


def prepared(database: Database, existing: int, dim: int) -> Model:
    with database.connect() as conn:
        model = register_model(conn, "bench-write", "none", dim)
        bulk_load(conn, model, records(existing, dim, 0, seed=1))
        conn.commit()
    return model


def write_batches(database: Database, model: Model, new: list[ImageRecord]) -> None:
    with database.connect() as conn:
        for start in range(0, len(new), BATCH):
            with conn.transaction():
                upsert_images(conn, model, new[start : start + BATCH])


def run(home: str, existing: int, new: int, dim: int) -> dict[str, float]:
    rows = list(records(new, dim, existing, seed=2))
    result: dict[str, float] = {"existing": existing, "new": new, "dim": dim}
    for way in ("online", "bulk"):
        database = fresh_database(home, f"bench_write_{way}")
        model = prepared(database, existing, dim)
        started = time.perf_counter()
        if way == "bulk":
            with database.connect(autocommit=True) as conn:
                drop_model_index(conn, model)
        write_batches(database, model, rows)
        written = time.perf_counter()
        if way == "bulk":
            with database.connect(autocommit=True) as conn:
                build_model_index(conn, model)
        total = time.perf_counter() - started
        result[f"{way}_write_s"] = round(written - started, 2)
        result[f"{way}_total_s"] = round(total, 2)
        result[f"{way}_rows_per_s"] = round(new / total, 1)
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--existing", type=int, default=20000)
    parser.add_argument("--new", type=int, default=2000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--home", default="/tmp/clipdb-bench-write")
    args = parser.parse_args(argv)
    print(json.dumps(run(args.home, args.existing, args.new, args.dim)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
