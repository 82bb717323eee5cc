"""Search latency on an existing benchmark database, e.g. to compare server settings.

    python bench/warm_latency.py --database bench_n1000000
    CLIPDB_PG_SHARED_BUFFERS=256MB python bench/warm_latency.py ...   # after `db stop`

Uses the database bench/scale.py left in --home, through the project's search path
(clipdb.queries.search_vector). Queries are stored rows plus small Gaussian noise (seeded):
near the data like held-out queries, without needing the generator. Prints the server's
shared_buffers, the index definition and p50/p95 per round (round 0 warms the caches).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from clipdb.db import Database  # noqa: E402
from clipdb.db.embedded import ensure_server  # noqa: E402
from clipdb.db.queries import search_vector  # noqa: E402
from clipdb.db.registry import list_models  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", default="/tmp/clipdb-bench-home", help="embedded server dir")
    parser.add_argument("--database", default="bench_n1000000")
    parser.add_argument("--ef", type=int, default=320, help="hnsw.ef_search")
    parser.add_argument("--queries", type=int, default=250)
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()
    server = ensure_server(Path(args.home))
    database = Database(url=server.url(database=args.database))
    rng = np.random.default_rng(123)
    with database.connect(autocommit=True) as conn:
        print("shared_buffers", conn.execute("SHOW shared_buffers").fetchone()[0])
        model = list_models(conn)[0]
        print(conn.execute("SELECT indexdef FROM pg_indexes WHERE indexname = %s",
                           (model.index_name,)).fetchone()[0])  # fmt: skip
        rows = conn.execute(
            "SELECT embedding FROM clipdb.images WHERE model_id = %s ORDER BY random() LIMIT %s",
            (model.model_id, args.queries),
        ).fetchall()
        queries = [np.asarray(row[0].to_numpy(), dtype=np.float32) for row in rows]
        queries = [q + 0.05 * rng.normal(size=q.shape).astype(np.float32) for q in queries]
        queries = [q / np.linalg.norm(q) for q in queries]
        for round_number in range(args.rounds):
            times = []
            for query in queries:
                start = time.perf_counter()
                search_vector(conn, model, query, 10, ef_search=args.ef)
                times.append((time.perf_counter() - start) * 1000)
            p50, p95 = np.percentile(times, 50), np.percentile(times, 95)
            print(f"round {round_number}: p50 {p50:.2f} ms, p95 {p95:.2f} ms")


if __name__ == "__main__":
    main()
