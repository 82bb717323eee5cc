"""The bulk write path: a run that adds many rows relative to what the model's HNSW index
holds writes without the index and builds it once, CONCURRENTLY, at the end.

Why: every row inserted into a live HNSW index costs a graph search. Measured here
(bench/bench_write.py, 512-d, BENCHMARKS.md "Bulk write path"): online upserts ran at 126
rows/s; without the index the same batches wrote 1,500 rows in 0.36 s, and the CONCURRENTLY
build over 21,500 rows took 57 s (~375 rows/s on the loaded 2-core machine). For n new rows
into a model holding E: online costs n/126 s, bulk ~(E+n)/375 s, so bulk wins once n > ~0.5 E.
A first load (E = 0) always qualifies.

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
from clipdb.db.model_index import build_model_index, drop_model_index, model_index_state
from clipdb.db.registry import Model

BULK_RATIO = 0.5  # planned new rows >= this x rows the model holds (measured)
BULK_MIN_ROWS = 2000  # below this a rebuild's fixed cost is not worth the DDL


def use_bulk(planned_new: int, existing_rows: int) -> bool:
    return planned_new >= BULK_MIN_ROWS and planned_new >= BULK_RATIO * existing_rows


@contextmanager
def index_window(database: Database, model: Model, planned_new: int) -> Iterator[bool]:
    """Around a run's writes: drop the model's index first when the run is big enough, build
    it at the end (also when an earlier run left it missing). Yields whether bulk is on."""
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
            drop_model_index(conn, model)
    yield bulk
    if bulk or not valid:
        with database.connect(autocommit=True) as conn:
            build_model_index(conn, model)
