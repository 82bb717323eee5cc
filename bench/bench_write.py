"""The ingest writer path, online vs bulk, with precomputed vectors (no encoder).

Every write is a committed batch of store.upsert_images (what the ingest writer does).
``--existing`` rows are first loaded the bulk way (index dropped, one build: the first-load
figure); then ``--new`` rows go online into that live HNSW index, and ``--new`` more the bulk
way (drop, write, model_index.build_model_index CONCURRENTLY over all rows, which is what
clipdb.ingest.bulk does). End-to-end rows/s for each, to pick the switch point.

    python bench/bench_write.py --existing 100000 --new 2000 [--online-first-load]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from benchutil import fresh_database

from clipdb.db import Database
from clipdb.db.model_index import build_model_index, drop_model_index
from clipdb.db.registry import Model, register_model
from clipdb.db.store import ImageRecord, upsert_images

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


def write_batches(database: Database, model: Model, rows: Iterator[ImageRecord]) -> int:
    """The ingest writer's path: committed batches of store.upsert_images."""
    count = 0
    batch: list[ImageRecord] = []
    with database.connect() as conn:
        for record in rows:
            batch.append(record)
            if len(batch) == BATCH:
                with conn.transaction():
                    upsert_images(conn, model, batch)
                count += len(batch)
                batch = []
        if batch:
            with conn.transaction():
                upsert_images(conn, model, batch)
            count += len(batch)
    return count


def timed(action: Any) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def run(home: str, existing: int, new: int, dim: int, online_first_load: bool) -> dict[str, Any]:
    """One database: a first load of ``existing`` rows the bulk way (index dropped, upserts,
    one build), then ``new`` more rows online into that live index, then ``new`` more the bulk
    way (drop, upserts, rebuild over everything). ``online_first_load``: also load
    ``existing`` rows into a live index from empty, in a second database (slow past ~100k)."""
    result: dict[str, Any] = {"existing": existing, "new": new, "dim": dim}
    database = fresh_database(home, "bench_write")
    with database.connect() as conn:
        model = register_model(conn, "bench-write", "none", dim)
        conn.commit()
    with database.connect(autocommit=True) as conn:
        drop_model_index(conn, model)
    if existing:
        write_s = timed(lambda: write_batches(database, model, records(existing, dim, 0, 1)))
        with database.connect(autocommit=True) as conn:
            build_s = timed(lambda: build_model_index(conn, model))
        result["first_load_bulk"] = {
            "write_s": round(write_s, 1),
            "build_s": round(build_s, 1),
            "rows_per_s": round(existing / (write_s + build_s), 1),
        }
    else:
        with database.connect(autocommit=True) as conn:
            build_model_index(conn, model)
    online_s = timed(lambda: write_batches(database, model, records(new, dim, existing, 2)))
    result["add_online"] = {"write_s": round(online_s, 2), "rows_per_s": round(new / online_s, 1)}
    with database.connect(autocommit=True) as conn:
        drop_s = timed(lambda: drop_model_index(conn, model))
    write_s = timed(lambda: write_batches(database, model, records(new, dim, existing + new, 3)))
    with database.connect(autocommit=True) as conn:
        build_s = timed(lambda: build_model_index(conn, model))
    total = drop_s + write_s + build_s
    result["add_bulk"] = {
        "write_s": round(drop_s + write_s, 2),
        "build_s": round(build_s, 1),
        "rows_per_s": round(new / total, 1),
    }
    if online_first_load and existing:
        empty = fresh_database(home, "bench_write_online")
        with empty.connect() as conn:
            other = register_model(conn, "bench-write", "none", dim)
            conn.commit()
        load_s = timed(lambda: write_batches(empty, other, records(existing, dim, 0, 1)))
        result["first_load_online"] = {
            "write_s": round(load_s, 1),
            "rows_per_s": round(existing / load_s, 1),
        }
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--existing", type=int, default=20000)
    parser.add_argument("--new", type=int, default=2000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--home", default="/tmp/clipdb-bench-write")
    parser.add_argument(
        "--online-first-load",
        action="store_true",
        help="also load --existing rows into a live index from empty (hours at 1M)",
    )
    args = parser.parse_args(argv)
    result = run(args.home, args.existing, args.new, args.dim, args.online_first_load)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
