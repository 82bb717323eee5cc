"""The search targets through SQL: ``clipdb.search(...)`` as another app calls it, per filter.

    python bench/bench_filters.py --n 100000 --home H      # loads the rows (once)
    python bench/sql_search.py --n 100000 --home H [--queries 200]

On the database bench_filters.py left in --home (the same seeded rows, regenerated here for
the exact answers), one psycopg connection (what psql does, parameters bound) calls
``clipdb.search`` for each filter of bench_filters.FILTERS (``--under`` through
``clipdb.search_rows``, which takes a folder), and, alternating query by query (each going
first every other query) so a busy machine slows both alike, a bare ``ORDER BY
embedding::halfvec(dim) <=> q LIMIT 10`` at the same ef_search: the function's overhead is
the difference of the p50s, and the median of the server's CPU time per call (function minus
bare, query by query: what a busy machine distorts least). Then queries/s for one client and
for two (threads, a connection each), the plan of each row (auto_explain, nested), and the
load average. Writes bench/results/sql_search_n<N>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_filters import FILTERS, K, columns  # noqa: E402
from datagen import ClusteredSphere  # noqa: E402

from clipdb.config import DEFAULT_EF_SEARCH  # noqa: E402
from clipdb.db import Database  # noqa: E402
from clipdb.db.embedded import ensure_server  # noqa: E402
from clipdb.db.explain import nested_plans  # noqa: E402
from clipdb.db.paths import key  # noqa: E402
from clipdb.db.queries import under_prefix  # noqa: E402
from clipdb.filters import Filters  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
SEARCH = (
    "SELECT id, path FROM clipdb.search(%(q)s::vector, %(k)s, after => %(after)s, "
    "before => %(before)s, camera => %(camera)s, near_lat => %(near_lat)s, "
    "near_lon => %(near_lon)s, near_km => %(near_km)s)"
)
SEARCH_UNDER = (
    "SELECT id, path FROM clipdb.search_rows(%(model)s::smallint, %(q)s::vector, %(k)s, "
    "under => %(under)s)"
)


def params(filters: Filters, under: str | None, query: np.ndarray, model_id: int) -> dict:
    values = filters.sql_params()
    values.pop("near_dlat")
    return {
        **values,
        "q": query,
        "k": K,
        "model": model_id,
        "under": None if under is None else key(under_prefix(under)),
    }


def plan_lines(plans: str) -> list[str]:
    """The scans of clipdb.images, one line each (auto_explain's text, costs trimmed)."""
    return [
        line.strip().split("  (cost=")[0]
        for line in plans.splitlines()
        if "Scan" in line and " on images " in line
    ]


def cpu_clock(conn: Any) -> Any:
    """The backend's CPU time in seconds (/proc/PID/schedstat, ns): a cost that a machine
    busy with other jobs slows far less than the wall clock. None where it cannot be read."""
    pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
    path = Path(f"/proc/{pid}/schedstat")
    try:
        path.read_text()
    except OSError:
        return None
    return lambda: int(path.read_text().split()[0]) / 1e9


def qps(url: str, sql: str, queries: np.ndarray, clients: int, seconds: float) -> float:
    done = [0] * clients
    stop = time.perf_counter() + seconds

    def work(slot: int) -> None:
        with Database(url=url).connect(autocommit=True) as conn:
            i = slot
            while time.perf_counter() < stop:
                conn.execute(sql, {**params(Filters(), None, queries[i % len(queries)], 0)})
                done[slot] += 1
                i += clients

    threads = [threading.Thread(target=work, args=(slot,)) for slot in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(done) / seconds


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--home", default="/tmp/clipdb-bench-filters")
    parser.add_argument("--qps-seconds", type=float, default=10.0)
    args = parser.parse_args()

    sphere = ClusteredSphere()
    cols = columns(args.n)
    data = sphere.sample(args.n)
    queries = sphere.sample(args.queries, stream=1)
    url = ensure_server(Path(args.home)).url(database="clipdb_bench_filters")
    results: dict[str, Any] = {
        "n": args.n,
        "queries": args.queries,
        "load_before": os.getloadavg(),
        "rows": [],
    }
    with Database(url=url).connect(autocommit=True) as conn:
        model_id, dim = conn.execute("SELECT id, dim FROM clipdb.models").fetchone()
        bare = (
            f"SELECT id, path FROM clipdb.images WHERE model_id = {model_id} "
            f"ORDER BY embedding::halfvec({dim}) <=> %(q)s::vector({dim})::halfvec({dim}) "
            "LIMIT %(k)s"
        )
        conn.execute(f"SET hnsw.ef_search = {DEFAULT_EF_SEARCH}")
        clock = cpu_clock(conn)
        for q in queries[:20]:  # warm the cache
            conn.execute(SEARCH, params(Filters(), None, q, model_id)).fetchall()
        for name, (filters, under, predicate) in FILTERS.items():
            mask = predicate(cols)
            rows = np.flatnonzero(mask)
            subset = data[rows]  # once per filter: the exact answers are a product per query
            sql = SEARCH if under is None else SEARCH_UNDER
            times, bare_times, hits, counts = [], [], 0, []
            cpu, bare_cpu = [], []
            for n, q in enumerate(queries):
                values = params(filters, under, q, model_id)

                def timed(statement: str, values: dict = values) -> tuple[list[Any], float, float]:
                    c = clock() if clock else 0.0
                    t = time.perf_counter()
                    result = conn.execute(statement, values).fetchall()
                    return result, time.perf_counter() - t, clock() - c if clock else 0.0

                # The second run of a query finds the first one's pages in the CPU caches:
                # bare and function take turns at going first.
                bare_first = name.startswith("none") and n % 2 == 1
                if bare_first:
                    _, wall, spent = timed(bare)
                    bare_times.append(wall)
                    bare_cpu.append(spent)
                found, wall, spent = timed(sql)
                times.append(wall)
                cpu.append(spent)
                if name.startswith("none") and not bare_first:
                    _, wall, spent = timed(bare)
                    bare_times.append(wall)
                    bare_cpu.append(spent)
                ids = [int(path.rsplit("/", 1)[1][:-4]) for _, path in found]
                counts.append(len(ids))
                best = rows[np.argsort(-(subset @ q), kind="stable")[:K]]
                hits += len(set(ids) & {int(r) for r in best})
            ms = np.array(times) * 1000
            row: dict[str, Any] = {
                "filter": name,
                "matching_rows": int(mask.sum()),
                "recall10": hits / (K * len(queries)),
                "p50_ms": float(np.percentile(ms, 50)),
                "p95_ms": float(np.percentile(ms, 95)),
                "rows_returned_min": min(counts),
            }
            if bare_times:
                bare_ms = np.array(bare_times) * 1000
                row["bare_p50_ms"] = float(np.percentile(bare_ms, 50))
                row["overhead_p50_ms"] = row["p50_ms"] - row["bare_p50_ms"]
                if clock:
                    # The server's CPU per call, query by query: function minus bare.
                    extra = (np.array(cpu) - np.array(bare_cpu)) * 1000
                    row["cpu_p50_ms"] = float(np.percentile(np.array(cpu) * 1000, 50))
                    row["bare_cpu_p50_ms"] = float(np.percentile(np.array(bare_cpu) * 1000, 50))
                    row["cpu_overhead_p50_ms"] = float(np.percentile(extra, 50))
            first = partial(conn.execute, sql, params(filters, under, queries[0], model_id))
            row["plan"] = plan_lines(nested_plans(conn, first))
            print(json.dumps(row), file=sys.stderr, flush=True)
            results["rows"].append(row)
    one = qps(url, SEARCH, queries, 1, args.qps_seconds)
    two = qps(url, SEARCH, queries, 2, args.qps_seconds)
    results["qps"] = {"one_client": one, "two_clients": two, "ratio": two / one}
    results["load_after"] = os.getloadavg()
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"sql_search_n{args.n}.json").write_text(json.dumps(results, indent=2) + "\n")
    print("| query | rows matching | recall@10 | p50 / p95 ms | rows returned |")
    print("|---|---|---|---|---|")
    for row in results["rows"]:
        print(
            f"| {row['filter']} | {row['matching_rows']} | {row['recall10']:.3f} "
            f"| {row['p50_ms']:.2f} / {row['p95_ms']:.2f} | {row['rows_returned_min']} |"
        )
    unfiltered = results["rows"][-1]
    print(
        f"bare ORDER BY ... LIMIT {K}: p50 {unfiltered['bare_p50_ms']:.2f} ms; function overhead "
        f"{unfiltered['overhead_p50_ms']:.2f} ms (server CPU: "
        f"{unfiltered.get('cpu_overhead_p50_ms', float('nan')):.2f} ms); "
        f"QPS 1 client {one:.0f}, 2 clients {two:.0f} "
        f"({two / one:.2f}x); load {results['load_before']} -> {results['load_after']}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
