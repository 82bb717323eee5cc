"""The bulk write path: a run that adds many rows relative to what the model's HNSW index
holds writes without the index and builds it once, CONCURRENTLY, at the end.

Why: every row inserted into a live HNSW index costs a graph search; one writer inserts
126 rows/s with the index and 9,462 without (issue 16, this machine). Building the index over
N rows runs at ~1,960 rows/s (1M halfvec rows in 8.5 min, bench/results/SCALE.md). For a run
of n new rows into a model holding E rows: online costs n/126 s, bulk n/9462 + (E+n)/1960 s,
so bulk wins once n > ~0.07 E (see BENCHMARKS.md "bulk write path" for the measured figures).

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
from clipdb.db.registry import Model
from clipdb.db.store import build_model_index, drop_model_index, model_index_state

BULK_RATIO = 0.07  # planned new rows >= this x rows the model holds
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
