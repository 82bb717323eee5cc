"""The model's HNSW index around a bulk write (clipdb.ingest.bulk): its state, drop, rebuild.

Why a module of its own: a rebuild is DDL plus memory sizing, not row storage (store.py).
"""

from __future__ import annotations

import os
from typing import Any

import psycopg

from clipdb.db.prewarm import prewarm
from clipdb.db.registry import Model


def model_index_state(conn: psycopg.Connection[Any], model: Model) -> tuple[bool, int]:
    """(whether the model's HNSW index exists and is valid, rows the model has)."""
    row = conn.execute(
        "SELECT coalesce((SELECT i.indisvalid FROM pg_index i JOIN pg_class c "
        "ON c.oid = i.indexrelid WHERE c.relname = %s AND c.relnamespace = "
        "'clipdb'::regnamespace), false), "
        "(SELECT count(*) FROM clipdb.images WHERE model_id = %s)",
        (model.index_name, int(model.model_id)),
    ).fetchone()
    assert row is not None
    return bool(row[0]), int(row[1])


def drop_model_index(conn: psycopg.Connection[Any], model: Model) -> None:
    """Drop the model's HNSW index (autocommit connection): searches fall back to an exact
    scan of the model's rows until :func:`build_model_index` has run."""
    conn.execute(f"DROP INDEX CONCURRENTLY IF EXISTS clipdb.{model.index_name}")


# HNSW build memory per row: the halfvec copy (2 bytes a dimension) plus its neighbour lists
# (~0.8 KB at m=16); 1M 512-d rows measured 1.27 GB of index. A graph that outgrows
# maintenance_work_mem makes pgvector finish the build on disk pages, many times slower.
BUILD_BYTES_PER_ROW_BASE = 900
BUILD_MEMORY_SHARE = 4  # never ask for more than a quarter of this machine's memory


def raise_build_memory(conn: psycopg.Connection[Any], model: Model) -> None:
    """Raise this session's maintenance_work_mem to fit the graph about to be built (never
    lower it, never past a quarter of physical memory: the server is usually this machine)."""
    row = conn.execute(
        "SELECT count(*) FROM clipdb.images WHERE model_id = %s", (int(model.model_id),)
    ).fetchone()
    assert row is not None
    current = conn.execute(
        "SELECT setting::bigint * 1024 FROM pg_settings WHERE name = 'maintenance_work_mem'"
    ).fetchone()
    assert current is not None
    needed = int(row[0]) * (BUILD_BYTES_PER_ROW_BASE + 2 * int(model.dim)) * 11 // 10
    try:
        cap = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // BUILD_MEMORY_SHARE
    except (ValueError, OSError):
        cap = 1 << 30
    wanted = min(needed, cap)
    if wanted > int(current[0]):
        conn.execute(
            "SELECT set_config('maintenance_work_mem', %s, false)", (f"{wanted // 1024}kB",)
        )


def build_model_index(conn: psycopg.Connection[Any], model: Model) -> None:
    """(Re)build the model's HNSW index CONCURRENTLY (autocommit connection): writes and
    searches go on meanwhile; an invalid leftover of an interrupted build is dropped first."""
    drop_model_index(conn, model)
    raise_build_memory(conn, model)
    ddl = conn.execute(
        "SELECT clipdb.model_index_ddl(%s::smallint, %s)", (int(model.model_id), int(model.dim))
    ).fetchone()
    assert ddl is not None and str(ddl[0]).startswith("CREATE INDEX ")
    conn.execute("CREATE INDEX CONCURRENTLY " + str(ddl[0])[len("CREATE INDEX ") :])
    conn.execute("ANALYZE clipdb.images")
    # The new graph is on disk only: the first searches would read it page by page.
    prewarm(conn, model)
