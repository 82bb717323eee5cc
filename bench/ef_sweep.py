"""Recall and latency of the bare HNSW statement per ``hnsw.ef_search``, on a database
``bench/bench_filters.py`` loaded: what the candidate list costs and buys.

    python bench/bench_filters.py --n 1000000 --home H        # loads the rows (once)
    python bench/ef_sweep.py --n 1000000 --home H [--ef 40,64,100,160,320]

The rows and 100 held-out queries are regenerated from the same seed; the exact top 10 come
from numpy over the float32 vectors. Each ef_search value runs the 100 queries once, after 20
warm-up queries, with ``ORDER BY embedding::halfvec(dim) <=> q LIMIT 10`` (the index's own
expression), one connection.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_filters import row_number  # noqa: E402
from datagen import ClusteredSphere  # noqa: E402

from clipdb.db import Database  # noqa: E402
from clipdb.db.embedded import ensure_server  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, required=True)
    parser.add_argument("--home", required=True)
    parser.add_argument("--ef", default="40,64,100,160,320")
    args = parser.parse_args()
    sphere = ClusteredSphere()
    data = sphere.sample(args.n)
    queries = sphere.sample(100, stream=1)
    exact = np.argsort(-(queries @ data.T), axis=1)[:, :10]
    del data
    url = ensure_server(Path(args.home)).url(database="clipdb_bench_filters")
    print(f"load average {Path('/proc/loadavg').read_text().split()[:3]}")
    with Database(url=url).connect(autocommit=True) as conn:
        model_id, dim = (
            int(v) for v in conn.execute("SELECT id, dim FROM clipdb.models").fetchone()
        )
        sql = (
            f"SELECT path FROM clipdb.images WHERE model_id = {model_id} "
            f"ORDER BY embedding::halfvec({dim}) <=> %s::vector({dim})::halfvec({dim}) LIMIT 10"
        )
        for query in queries[:20]:
            conn.execute(sql, (query,)).fetchall()
        for ef in (int(v) for v in args.ef.split(",")):
            conn.execute("SELECT set_config('hnsw.ef_search', %s, false)", (str(ef),))
            times, hits = [], 0
            for n, query in enumerate(queries):
                started = time.perf_counter()
                rows = conn.execute(sql, (query,)).fetchall()
                times.append(time.perf_counter() - started)
                hits += len({row_number(path) for (path,) in rows} & set(exact[n].tolist()))
            ms = np.array(times) * 1000
            print(
                f"n={args.n} ef_search={ef} recall@10={hits / 1000:.3f} "
                f"p50={np.percentile(ms, 50):.2f} ms p95={np.percentile(ms, 95):.2f} ms",
                flush=True,
            )
    print(f"load average {Path('/proc/loadavg').read_text().split()[:3]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
