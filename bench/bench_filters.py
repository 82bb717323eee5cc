"""Filtered search at scale: metadata filters selecting ~1%, 10% and 50% of the rows.

    python bench/bench_filters.py --n 100000 --queries 100

Rows: bench/datagen.py ClusteredSphere vectors (512-d) bulk-loaded (clipdb.db.store.bulk_load,
one HNSW build) into a fresh database on an embedded server under --home, each with a
synthetic ``taken_at`` (uniform over 2015..2024) and camera (Canon 50%, Sony 49%, Leica 1%),
drawn independently of the vector. For each filter: recall@10 of
clipdb.db.queries.search_vector (the product's path: HNSW with iterative scans, the exact
fallback when the scan runs dry) against the exact filtered top 10 (numpy over the same rows
and the same predicate), p50/p95 latency over the queries on one connection, and the rows
returned (must be 10 whenever >= 10 rows match), plus whether the planner used the HNSW index
for the statement (EXPLAIN). Writes bench/results/filters_n<N>.json.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchutil import fresh_database  # noqa: E402
from datagen import ClusteredSphere  # noqa: E402

from clipdb.config import DEFAULT_EF_SEARCH  # noqa: E402
from clipdb.db.explain import nested_plans  # noqa: E402
from clipdb.db.queries import search_vector  # noqa: E402
from clipdb.db.registry import register_model  # noqa: E402
from clipdb.db.store import ImageRecord, bulk_load  # noqa: E402
from clipdb.exif import PhotoMetadata  # noqa: E402
from clipdb.filters import Filters, Near  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
K = 10
START = datetime(2015, 1, 1, tzinfo=UTC)
SPAN_DAYS = 3652  # 2015-01-01 .. 2024-12-31
CAMERAS = np.array(["Canon EOS R5", "Sony ILCE-7M4", "Leica M11"])
CAMERA_P = [0.50, 0.49, 0.01]

PARIS = (48.8566, 2.3522)
FOLDERS = 10  # rows go round-robin into /bench/f0 .. /bench/f9


def _day(date: datetime) -> int:
    return (date - START).days


# name -> (Filters and folder, the same predicate over the numpy columns)
FILTERS: dict[str, tuple[Filters, str | None, Any]] = {
    "camera 1% (Leica)": (Filters(camera="leica"), None, lambda c: c["cam"] == 2),
    "date 1% (36 days)": (
        Filters(after="2020-03-01", before="2020-04-06"),
        None,
        lambda c: (
            (c["day"] >= _day(datetime(2020, 3, 1, tzinfo=UTC)))
            & (c["day"] < _day(datetime(2020, 4, 6, tzinfo=UTC)))
        ),
    ),
    "place 1% (Paris, 10 km)": (
        Filters(near=Near(PARIS[0], PARIS[1], 10)),
        None,
        lambda c: c["paris"],
    ),
    "date 10% (2020)": (
        Filters(after="2020-01-01", before="2021-01-01"),
        None,
        lambda c: (
            (c["day"] >= _day(datetime(2020, 1, 1, tzinfo=UTC)))
            & (c["day"] < _day(datetime(2021, 1, 1, tzinfo=UTC)))
        ),
    ),
    "camera 50% (Canon)": (Filters(camera="canon"), None, lambda c: c["cam"] == 0),
    "--under 10% (/bench/f3)": (Filters(), "/bench/f3", lambda c: c["folder"] == 3),
    "none (unfiltered)": (Filters(), None, lambda c: np.ones(len(c["day"]), dtype=bool)),
}


def columns(n: int) -> dict[str, np.ndarray]:
    """The synthetic metadata of n rows (seeded): day, camera, Paris or not, folder."""
    rng = np.random.default_rng(7)
    days = rng.integers(0, SPAN_DAYS, size=n)
    cams = rng.choice(len(CAMERAS), size=n, p=CAMERA_P)
    paris = rng.random(n) < 0.01
    return {"day": days, "cam": cams, "paris": paris, "folder": np.arange(n) % FOLDERS}


def row_number(path: str) -> int:
    """The row's position in the generated data, from its file name."""
    return int(path.rsplit("/", 1)[1][:-4])


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def records(chunks: Iterator[np.ndarray], cols: dict[str, np.ndarray]) -> Iterator[ImageRecord]:
    i = 0
    for chunk in chunks:
        for vector in chunk:
            path = f"/bench/f{cols['folder'][i]}/{i}.jpg"
            # 1% within ~2 km of Paris, the others spread over latitudes 0..40 (never near).
            lat, lon = (
                (PARIS[0] + (i % 37) * 0.0005, PARIS[1] + (i % 41) * 0.0005)
                if cols["paris"][i]
                else ((i * 7919) % 40000 / 1000.0, (i * 104729) % 360000 / 1000.0 - 180)
            )
            meta = PhotoMetadata(
                taken_at=START + timedelta(days=int(cols["day"][i]), seconds=43_200),
                camera=str(CAMERAS[cols["cam"][i]]),
                lat=lat,
                lon=lon,
            )
            yield ImageRecord(
                path, hashlib.sha256(path.encode()).digest(), 1, 1, 1, 1, vector, meta
            )
            i += 1


def exact_filtered(data: np.ndarray, mask: np.ndarray, query: np.ndarray) -> list[int]:
    rows = np.flatnonzero(mask)
    sims = data[rows] @ query
    top = np.argsort(-sims, kind="stable")[:K]
    return [int(r) for r in rows[top]]


def uses_hnsw(
    conn: Any, model: Any, filters: Filters, under: str | None, query: np.ndarray, ef: int
) -> bool:
    plans = nested_plans(
        conn,
        lambda: search_vector(conn, model, query, K, ef_search=ef, filters=filters, under=under),
    )
    return model.index_name in plans


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument(
        "--ef",
        default=f"{DEFAULT_EF_SEARCH}",
        help=f"comma list of hnsw.ef_search values (clipdb search uses {DEFAULT_EF_SEARCH})",
    )
    parser.add_argument("--home", default="/tmp/clipdb-bench-filters")
    args = parser.parse_args()

    sphere = ClusteredSphere()
    cols = columns(args.n)
    data = sphere.sample(args.n)
    queries = sphere.sample(args.queries, stream=1)

    database = fresh_database(args.home, "clipdb_bench_filters")
    started = time.perf_counter()
    with database.connect() as conn:
        model = register_model(conn, "bench-filters", "none", sphere.dim)
        loaded = bulk_load(conn, model, records(iter([data]), cols))
        conn.commit()
        conn.execute("ANALYZE clipdb.images")
        conn.commit()
    load_s = time.perf_counter() - started
    log(f"loaded {args.n} rows in {load_s:.1f} s ({loaded})")

    results: dict[str, Any] = {"n": args.n, "queries": args.queries, "load_s": load_s, "rows": []}
    with database.connect(autocommit=True) as conn:
        for q in queries[:20]:  # warm the cache
            search_vector(conn, model, q, K, ef_search=DEFAULT_EF_SEARCH)
        for ef, (name, (filters, under, predicate)) in (
            (int(ef), item) for ef in args.ef.split(",") for item in FILTERS.items()
        ):
            mask = predicate(cols)
            matching = int(mask.sum())
            times, hits, counts = [], 0, []
            for q in queries:
                t = time.perf_counter()
                found = search_vector(conn, model, q, K, ef_search=ef, filters=filters, under=under)
                times.append(time.perf_counter() - t)
                ids = [row_number(h.image_path) for h in found]
                counts.append(len(ids))
                hits += len(set(ids) & set(exact_filtered(data, mask, q)))
            ms = np.array(times) * 1000
            row = {
                "filter": name,
                "ef_search": ef,
                "matching_rows": matching,
                "selectivity": matching / args.n,
                "recall10": hits / (K * len(queries)),
                "p50_ms": float(np.percentile(ms, 50)),
                "p95_ms": float(np.percentile(ms, 95)),
                "rows_returned_min": min(counts),
                "rows_returned_max": max(counts),
                "hnsw_in_plan": uses_hnsw(conn, model, filters, under, queries[0], ef),
            }
            log(json.dumps(row))
            results["rows"].append(row)
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"filters_n{args.n}.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    print("| filter | ef_search | rows matching | recall@10 | p50 / p95 ms | rows returned "
          "| HNSW in plan |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for row in results["rows"]:
        returned = (
            str(row["rows_returned_min"])
            if row["rows_returned_min"] == row["rows_returned_max"]
            else f"{row['rows_returned_min']}..{row['rows_returned_max']}"
        )
        print(
            f"| {row['filter']} | {row['ef_search']} "
            f"| {row['matching_rows']} ({100 * row['selectivity']:.1f}%) "
            f"| {row['recall10']:.3f} | {row['p50_ms']:.1f} / {row['p95_ms']:.1f} "
            f"| {returned} | {'yes' if row['hnsw_in_plan'] else 'no'} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
