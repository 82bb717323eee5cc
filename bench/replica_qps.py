"""Search QPS on a primary and on a streaming standby of it (clipdb db replicate), N clients.

A private primary gets --n clustered 512-d vectors (bench/datagen.py) through store.bulk_load,
then a standby is made with clipdb.db.replica.replicate; each client is a thread with its own
connection running clipdb.db.queries.search_vector (k = 10, default ef_search) for --seconds.
Both servers are on this machine, so "both at once" shares the same cores: the figure that
transfers to separate machines is QPS per server.

    python bench/replica_qps.py --n 20000 --clients 1,2 --seconds 5
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from datagen import ClusteredSphere  # noqa: E402
from scale import records  # noqa: E402

from clipdb.db import Database  # noqa: E402
from clipdb.db.embedded import ensure_server, stop_server  # noqa: E402
from clipdb.db.migrate import upgrade  # noqa: E402
from clipdb.db.queries import search_vector  # noqa: E402
from clipdb.db.registry import Model, register_model  # noqa: E402
from clipdb.db.replica import replicate, wait_for_replicas  # noqa: E402
from clipdb.db.store import bulk_load  # noqa: E402


def qps(urls: list[str], model: Model, queries: np.ndarray, clients: int, seconds: float) -> float:
    counts = [0] * clients
    stop = time.monotonic() + seconds

    def client(slot: int) -> None:
        with Database(url=urls[slot % len(urls)]).connect(autocommit=True) as conn:
            i = slot
            while time.monotonic() < stop:
                search_vector(conn, model, queries[i % len(queries)], 10)
                counts[slot] += 1
                i += clients

    threads = [threading.Thread(target=client, args=(s,)) for s in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return round(sum(counts) / seconds, 1)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--clients", default="1,2")
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args(argv)
    base = Path(tempfile.mkdtemp(prefix="clipdb-bench-replica-"))
    base.chmod(0o711)
    try:
        primary = ensure_server(base / "primary")
        database = Database(url=primary.url())
        upgrade(database)
        gen = ClusteredSphere(clusters=1000)
        with database.connect() as conn:
            model = register_model(conn, "bench-replica", "synthetic", 512)
            bulk_load(conn, model, records(iter([gen.sample(args.n)])))
            conn.commit()
        standby = replicate(database, base / "standby")
        wait_for_replicas(database, standby.url(), timeout=600)
        queries = gen.sample(200, stream=1)
        result: dict[str, object] = {"n": args.n, "seconds": args.seconds}
        seconds = args.seconds
        for clients in (int(c) for c in args.clients.split(",")):
            for name, urls in (
                ("primary", [primary.url()]),
                ("standby", [standby.url()]),
                ("both", [primary.url(), standby.url()]),
            ):
                result[f"{name}_{clients}c"] = qps(urls, model, queries, clients, seconds)
        print(json.dumps(result))
    finally:
        stop_server(base / "standby")
        stop_server(base / "primary")
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
