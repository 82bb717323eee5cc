"""First queries after the cache is lost, against warm ones, with and without prewarming.

    python bench/restart_latency.py --home H [--n 100000] [--queries 20]

On the database bench/bench_filters.py left in --home: p50 of ``--queries`` unfiltered
``clipdb.search`` calls (1) warm, (2) right after every page of the database was evicted from
shared buffers (pg_buffercache_evict: the pages then come from the OS cache, as after a
restart of PostgreSQL alone), (3) evicted and then clipdb.db.prewarm.prewarm, and (4) after a
real restart of the embedded server (``db stop``, start: autoprewarm reloads the pages it had
cached), once its autoprewarm worker is done. The OS cache is left alone (dropping it would
slow every other job on the machine): a cold disk is not measured here.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from datagen import ClusteredSphere  # noqa: E402

from clipdb.db import Database  # noqa: E402
from clipdb.db.embedded import ensure_server, stop_server  # noqa: E402
from clipdb.db.prewarm import prewarm  # noqa: E402
from clipdb.db.registry import list_models  # noqa: E402

DATABASE = "clipdb_bench_filters"


def p50(url: str, queries: np.ndarray) -> float:
    with Database(url=url).connect(autocommit=True) as conn:
        times = []
        for q in queries:
            started = time.perf_counter()
            conn.execute("SELECT id FROM clipdb.search(%s::vector, 10)", (q,)).fetchall()
            times.append(time.perf_counter() - started)
    return float(np.percentile(np.array(times) * 1000, 50))


def evict(url: str) -> None:
    with Database(url=url).connect(autocommit=True) as conn:
        conn.execute(
            "SELECT clipdb.pg_buffercache_evict(bufferid) FROM clipdb.pg_buffercache "
            "WHERE reldatabase = (SELECT oid FROM pg_database WHERE datname = current_database())"
        )


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--home", default="/tmp/clipdb-bench-filters")
    parser.add_argument("--queries", type=int, default=20)
    args = parser.parse_args()
    home = Path(args.home)
    url = ensure_server(home).url(database=DATABASE)
    queries = ClusteredSphere().sample(4 * args.queries, stream=2)
    batches = iter(np.split(queries, 4))
    p50(url, ClusteredSphere().sample(50, stream=3))  # warm
    figures = {"warm": p50(url, next(batches))}
    evict(url)
    figures["evicted"] = p50(url, next(batches))
    evict(url)
    with Database(url=url).connect(autocommit=True) as conn:
        started = time.perf_counter()
        prewarm(conn, list_models(conn)[0])
        figures["prewarm_s"] = time.perf_counter() - started
    figures["evicted, prewarmed"] = p50(url, next(batches))
    stop_server(home)
    url = ensure_server(home).url(database=DATABASE)
    with Database(url=url).connect(autocommit=True) as conn:
        while conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'autoprewarm worker'"
        ).fetchone() != (0,):
            time.sleep(0.2)
    figures["restarted (autoprewarm)"] = p50(url, next(batches))
    for name, value in figures.items():
        print(f"{name}: {value:.2f}" + (" s" if name.endswith("_s") else " ms p50"))
    print(f"load {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
