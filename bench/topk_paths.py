"""The filtered top-k two ways on one database: a statement built by the client, and the SQL
function clipdb runs (``clipdb.search_rows``, which ``search_vector`` and
``clipdb.search_model`` call).

    python bench/topk_paths.py --n 100000 --queries 200

Rows: bench/datagen.py ClusteredSphere vectors (512-d), bulk-loaded once into database
``clipdb_bench_topk`` of the embedded server under --home (kept: a second run with the same
--n reuses it and only migrates it), spread over 10 folders, each with a ``taken_at`` uniform
over 2015..2024 and a camera (Canon 50%, Sony 49%, Leica 1%). Every case runs the same held-out
queries (k = 10, ef_search 320) on one autocommit connection, the paths interleaved per query
so that load from other jobs hits both alike.

Paths:
- ``client SQL``: the statement clipdb's Python used to build (``CLIENT_TOPK`` below, kept
  here as the reference): settings and the top-k in one transaction, the unfiltered statement
  prepared, the filtered ones planned per call, ``within``/``sort``/``offset`` applied in
  Python, the exact fallback when the iterative scan runs dry.
- ``search_vector``: the product's path (``clipdb.db.queries.search_vector``).
- ``search_model``: ``SELECT * FROM clipdb.search_model(...)`` as a SQL user calls it
  (no ``under``: that function takes no folder).

Prints a Markdown table (p50 / p95 ms per path, and whether each path's ids equal the client
SQL's on every query) and writes bench/results/topk_paths_n<N>.json.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchutil import fresh_database  # noqa: E402
from datagen import ClusteredSphere  # noqa: E402

from clipdb.db import Database  # noqa: E402
from clipdb.db.embedded import ensure_server  # noqa: E402
from clipdb.db.migrate import upgrade  # noqa: E402
from clipdb.db.paths import key, prefix_range  # noqa: E402
from clipdb.db.queries import search_vector  # noqa: E402
from clipdb.db.registry import Model, list_models, register_model  # noqa: E402
from clipdb.db.store import ImageRecord, bulk_load  # noqa: E402
from clipdb.exif import PhotoMetadata  # noqa: E402
from clipdb.filters import Filters  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
NAME = "clipdb_bench_topk"
K = 10
EF = 320  # clipdb.config.DEFAULT_EF_SEARCH
START = datetime(2015, 1, 1, tzinfo=UTC)
SPAN_DAYS = 3652
CAMERAS = ["Canon EOS R5", "Sony ILCE-7M4", "Leica M11"]
CAMERA_P = [0.50, 0.49, 0.01]
FOLDERS = 10

# name -> (Filters, under); "under 10%" is one of the 10 folders.
CASES: dict[str, tuple[Filters, str | None]] = {
    "unfiltered": (Filters(), None),
    "camera 1% (Leica)": (Filters(camera="leica"), None),
    "date 10% (2020)": (Filters(after="2020-01-01", before="2021-01-01"), None),
    "under 10% (one folder)": (Filters(), "/bench/d3"),
    "within 0.05": (Filters(within=0.05), None),
    "offset 100": (Filters(offset=100), None),
    "date 10%, sort -date": (Filters(after="2020-01-01", before="2021-01-01", sort="-date"), None),
}

# The former client-built statement (clipdb.db.queries.topk_sql before the SQL function).
CLIENT_TOPK = """
SELECT id, d, taken_at FROM (
    SELECT id, embedding::vector({dim}) <=> %(q)s::vector({dim}) AS d, taken_at
    FROM clipdb.images WHERE model_id = {model_id} {where}
    ORDER BY {order} LIMIT %(k)s
) nearest ORDER BY d, id"""
CLIENT_FILTER = """
    AND (%(after)s::timestamptz IS NULL OR taken_at >= %(after)s::timestamptz)
    AND (%(before)s::timestamptz IS NULL OR taken_at < %(before)s::timestamptz)
    AND (%(camera)s::text IS NULL OR strpos(lower(camera), lower(%(camera)s::text)) > 0)"""
CLIENT_UNDER = (
    " AND clipdb.path_key(path, path_bytes) >= %(low)s AND clipdb.path_key(path, path_bytes)"
    " < %(high)s"
)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def client_sql(
    conn: psycopg.Connection[Any], model: Model, q: np.ndarray, f: Filters, under: str | None
) -> list[int]:
    """The former Python path, reduced to what these cases use; returns ids in page order."""
    dim, wanted = model.dim, K + f.offset
    where = (CLIENT_FILTER if f.narrows else "") + (CLIENT_UNDER if under else "")
    exact, indexed = (
        f"embedding::vector({dim}) <=> %(q)s::vector({dim})",
        (f"embedding::halfvec({dim}) <=> %(q)s::vector({dim})::halfvec({dim})"),
    )
    fmt = {"dim": dim, "model_id": model.model_id, "where": where}
    params: dict[str, Any] = {"q": q, "k": wanted, **f.sql_params()}
    if under:
        params["low"], params["high"] = prefix_range(key(under + "/"))
    filtered = f.narrows or under is not None
    with conn.transaction():
        conn.execute("SELECT set_config('hnsw.ef_search', %s, true)", (str(EF),))
        if filtered:
            conn.execute("SELECT set_config('hnsw.iterative_scan', 'relaxed_order', true)")
        if f.narrows:
            conn.execute("SELECT set_config('hnsw.max_scan_tuples', '20000', true)")
        sql = CLIENT_TOPK.format(**fmt, order=indexed)
        rows = conn.execute(sql, params, prepare=False if filtered else None).fetchall()
        if f.narrows and len(rows) < wanted:
            sql = CLIENT_TOPK.format(**fmt, order=f"{exact}, id")
            rows = conn.execute(sql, params, prepare=False).fetchall()
    if f.within is not None and rows:
        rows = [r for r in rows if r[1] <= rows[0][1] + f.within + 1e-9]
    if f.sort != "relevance":
        dated = sorted((r for r in rows if r[2]), key=lambda r: r[2], reverse=f.sort == "-date")
        rows = dated + [r for r in rows if not r[2]]
    ids = [int(r[0]) for r in rows]
    return ids[f.offset : f.offset + K]


def sql_function(
    conn: psycopg.Connection[Any], model: Model, q: np.ndarray, f: Filters, under: str | None
) -> list[int] | None:
    if under is not None:
        return None
    p = f.sql_params()
    rows = conn.execute(
        "SELECT id FROM clipdb.search_model(%s::smallint, %s, %s, %s, after => %s, before => %s,"
        " camera => %s, within => %s, sort => %s, skip => %s)",
        (
            model.model_id,
            q,
            K,
            EF,
            p["after"],
            p["before"],
            p["camera"],
            f.within,
            f.sort,
            f.offset,
        ),
    ).fetchall()
    return [int(r[0]) for r in rows]


def product(
    conn: psycopg.Connection[Any], model: Model, q: np.ndarray, f: Filters, under: str | None
) -> list[int]:
    hits = search_vector(conn, model, q, K, ef_search=EF, under=under, filters=f)
    return [h.image_id for h in hits]


PATHS: dict[str, Callable[..., list[int] | None]] = {
    "client SQL": client_sql,
    "search_vector": product,
    "search_model": sql_function,
}


def records(data: np.ndarray, days: np.ndarray, cams: np.ndarray) -> Iterator[ImageRecord]:
    for i, vector in enumerate(data):
        path = f"/bench/d{i % FOLDERS}/{i}.jpg"
        meta = PhotoMetadata(
            taken_at=START + timedelta(days=int(days[i]), seconds=43_200), camera=CAMERAS[cams[i]]
        )
        yield ImageRecord(path, hashlib.sha256(path.encode()).digest(), 1, 1, 1, 1, vector, meta)


def database_with_rows(home: str, n: int) -> tuple[Database, Model]:
    """The benchmark database with ``n`` rows: reused (and migrated) when it has them."""
    server = ensure_server(Path(home))
    database = Database(url=server.url(database=NAME))
    try:
        upgrade(database)
        with database.connect() as conn:
            models = list_models(conn)
            count = conn.execute("SELECT count(*) FROM clipdb.images").fetchone()
        if models and count is not None and count[0] == n:
            log(f"reusing {NAME} ({n} rows)")
            return database, models[0]
    except Exception as err:  # noqa: BLE001 - no such database yet: made below
        log(f"making {NAME}: {str(err).splitlines()[0]}")
    sphere = ClusteredSphere()
    rng = np.random.default_rng(7)
    days = rng.integers(0, SPAN_DAYS, size=n)
    cams = rng.choice(len(CAMERAS), size=n, p=CAMERA_P)
    database = fresh_database(server, NAME)
    started = time.perf_counter()
    with database.connect() as conn:
        model = register_model(conn, "bench-topk", "none", sphere.dim)
        bulk_load(conn, model, records(sphere.sample(n), days, cams))
        conn.commit()
        conn.execute("ANALYZE clipdb.images")
        conn.commit()
    log(f"loaded {n} rows in {time.perf_counter() - started:.1f} s")
    return database, model


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--home", default="/tmp/clipdb-bench-topk")
    args = parser.parse_args()
    database, model = database_with_rows(args.home, args.n)
    queries = ClusteredSphere().sample(args.queries, stream=1)
    rows: list[dict[str, Any]] = []
    with database.connect(autocommit=True) as conn:
        for q in queries[:20]:  # warm the caches and the prepared statements
            for path in PATHS.values():
                path(conn, model, q, Filters(), None)
        for case, (filters, under) in CASES.items():
            times: dict[str, list[float]] = {name: [] for name in PATHS}
            same: dict[str, bool] = {name: True for name in PATHS}
            for number, q in enumerate(queries):
                found: dict[str, list[int]] = {}
                # The first path of a query reads its pages cold: each path goes first in turn.
                names = list(PATHS)[number % len(PATHS) :] + list(PATHS)[: number % len(PATHS)]
                for name in names:
                    started = time.perf_counter()
                    ids = PATHS[name](conn, model, q, filters, under)
                    elapsed = time.perf_counter() - started
                    if ids is not None:
                        times[name].append(elapsed * 1000)
                        found[name] = ids
                for name, ids in found.items():
                    same[name] = same[name] and ids == found["client SQL"]
            row: dict[str, Any] = {"case": case}
            for name, ms in times.items():
                if ms:
                    row[name] = {
                        "p50_ms": float(np.percentile(ms, 50)),
                        "p95_ms": float(np.percentile(ms, 95)),
                        "same_ids": same[name],
                    }
            log(json.dumps(row))
            rows.append(row)
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"topk_paths_n{args.n}.json"
    out.write_text(json.dumps({"n": args.n, "queries": args.queries, "rows": rows}, indent=2))
    print(f"| case ({args.n} rows, k {K}, ef_search {EF}) | " + " | ".join(PATHS) + " |")
    print("|---|" + "---|" * len(PATHS))
    for row in rows:
        cells = []
        for name in PATHS:
            r = row.get(name)
            cells.append(
                "n/a"
                if r is None
                else f"{r['p50_ms']:.2f} / {r['p95_ms']:.2f}" + ("" if r["same_ids"] else " (≠)")
            )
        print(f"| {row['case']} | " + " | ".join(cells) + " |")
    print("\np50 / p95 ms per query; (≠): ids differ from client SQL's on some query")
    return 0


if __name__ == "__main__":
    sys.exit(main())
