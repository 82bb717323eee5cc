"""The bulk write path: a run that adds many rows relative to what the model's HNSW index
holds writes without the index and builds it once, CONCURRENTLY, at the end.

Why: every row inserted into a live HNSW index costs a graph search. Measured on a quiet
2-core box (bench/bench_write.py, 512-d, BENCHMARKS.md "Bulk write path"): online upserts ran
at 145 rows/s into 100k rows and 124 rows/s into 1M (6.9 and 8.1 ms a row). Without the index
the same batches write ~10,000 rows/s, and the CONCURRENTLY build took 0.77 ms a row at 100k
and 0.81 ms at 1M. For n new rows into a model holding E, online costs ~n x 7-8 ms and bulk
~(E + n) x 0.8 ms, so bulk breaks even near n = 0.1 E. The switch is at 0.25 E, because
searches do an exact scan while the index is absent; that margin keeps the window to runs
where bulk wins by 2x or more. A first load (E = 0) always qualifies: 100k rows loaded in 87 s
against 541 s online (6.2x), and 1M in 891 s against about 2 hours online (estimated from the
rates above).

Rows are still written batch by batch with the same exactly-once upsert and committed as they
go; only the index is absent meanwhile. Searches stay correct (an exact scan of the model's
rows, slower: see docs/SCALE-OUT.md). A run that dies leaves the index missing; the next run
of that model (even one with nothing to encode) builds it.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

from clipdb.db import Database
from clipdb.db.blockers import watched
from clipdb.db.model_index import build_model_index, drop_model_index, model_index_state
from clipdb.db.registry import Model

BULK_RATIO = 0.25  # planned new rows >= this x rows the model holds (measured, see above)
BULK_MIN_ROWS = 2000  # below this a rebuild's fixed cost is not worth the DDL


def use_bulk(planned_new: int, existing_rows: int) -> bool:
    return planned_new >= BULK_MIN_ROWS and planned_new >= BULK_RATIO * existing_rows


@contextmanager
def index_window(
    database: Database,
    model: Model,
    planned_new: int,
    *,
    wait_s: float,
    terminate_blockers: bool = False,
) -> Iterator[bool]:
    """Around a run's writes: drop the model's index first when the run is big enough, build
    it at the end (also when an earlier run left it missing). Yields whether bulk is on.

    The DDL waits for other sessions' snapshots and locks: after ``wait_s`` seconds those are
    named on stderr, and ended when they are clipdb_reader's (any role's with
    ``terminate_blockers``); see clipdb.db.blockers."""
    with database.connect(autocommit=True) as conn:
        valid, rows = model_index_state(conn, model)
        bulk = use_bulk(planned_new, rows)
        if bulk and valid:
            print(
                f"bulk load: {planned_new} new rows into {rows}; index {model.index_name} "
                "dropped until the end (searches meanwhile do an exact scan)",
                file=sys.stderr,
                flush=True,
            )
            what = f"dropping index {model.index_name}"
            with watched(database, conn, what, wait_s=wait_s, terminate_others=terminate_blockers):
                drop_model_index(conn, model)
    yield bulk
    if bulk or not valid:
        what = f"building index {model.index_name}"
        with (
            database.connect(autocommit=True) as conn,
            watched(database, conn, what, wait_s=wait_s, terminate_others=terminate_blockers),
        ):
            build_model_index(conn, model)
