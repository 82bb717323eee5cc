"""Keep what a search reads in memory: the model's HNSW index, its rows and its filter indexes.

Why: after a restart or a fresh index build, the first searches read the graph and the rows
from disk, page by page, in the order the graph walk needs them (at 1M rows the cold pass
measured p50 30 ms against 4.9 ms warm). ``pg_prewarm`` (shipped with PostgreSQL's contrib,
and with the embedded server) reads them in one sequential pass instead. The embedded server
also loads ``pg_prewarm`` at start (``autoprewarm``), which reloads the pages cached before a
restart by itself; :func:`prewarm` is for a server clipdb did not start, and for a new index.

The extensions live in the clipdb schema (migration 0011 creates them where it may); where
they are missing, prewarming is skipped and the status says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg

from clipdb.db.registry import Model

# What a search of a model reads besides its HNSW index: the rows, and the filters' indexes.
FILTER_INDEXES = (
    "images_model_taken_at",
    "images_model_camera",
    "images_model_lat",
    "images_model_path_key",
)
# Past this share of shared_buffers, the table goes to the OS cache instead ("prefetch"), so
# the index, which every search walks, is never evicted for rows only some searches read.
BUFFER_SHARE = 0.8


@dataclass(frozen=True)
class Cached:
    """One relation: its size and how much of it is in PostgreSQL's shared buffers."""

    name: str
    bytes: int
    cached_bytes: int | None  # None: pg_buffercache is not available


def _extension_schema(conn: psycopg.Connection[Any], name: str) -> str | None:
    row = conn.execute(
        "SELECT extnamespace::regnamespace::text FROM pg_extension WHERE extname = %s", (name,)
    ).fetchone()
    return None if row is None else str(row[0])


def _relations(conn: psycopg.Connection[Any], model: Model) -> list[tuple[str, int]]:
    """(qualified name, bytes) of the model's index, the filter indexes and the table."""
    names = [model.index_name, *FILTER_INDEXES, "images"]
    rows = conn.execute(
        "SELECT n.name, pg_relation_size(c.oid) FROM unnest(%s::text[]) WITH ORDINALITY "
        "AS n(name, position) JOIN pg_class c ON c.relname = n.name "
        "AND c.relnamespace = 'clipdb'::regnamespace ORDER BY n.position",
        (names,),
    ).fetchall()
    return [(f"clipdb.{name}", int(size)) for name, size in rows]


def prewarm(conn: psycopg.Connection[Any], model: Model) -> int | None:
    """Read the model's index, filter indexes and rows into memory; the pages read, or None
    when pg_prewarm is not installed. The index and the small indexes go into shared buffers;
    the table too while it fits beside them, else into the OS cache."""
    schema = _extension_schema(conn, "pg_prewarm")
    if schema is None:
        return None
    row = conn.execute(
        "SELECT setting::bigint * 8192 FROM pg_settings WHERE name = 'shared_buffers'"
    ).fetchone()
    budget = int(row[0]) * BUFFER_SHARE if row else 0.0
    pages = 0
    for name, size in _relations(conn, model):
        mode = "buffer" if size <= budget else "prefetch"
        budget -= size if mode == "buffer" else 0
        found = conn.execute(
            f"SELECT {schema}.pg_prewarm(%s::regclass, %s)", (name, mode)
        ).fetchone()
        pages += int(found[0]) if found else 0
    return pages


def cache_status(conn: psycopg.Connection[Any], model: Model) -> list[Cached]:
    """How much of each relation a search of ``model`` reads is in shared buffers."""
    relations = _relations(conn, model)
    schema = _extension_schema(conn, "pg_buffercache")
    if schema is None:
        return [Cached(name, size, None) for name, size in relations]
    try:
        with conn.transaction():
            rows = conn.execute(
                f"SELECT n.name, count(b.bufferid) * 8192 FROM unnest(%s::text[]) AS n(name) "
                f"LEFT JOIN {schema}.pg_buffercache b ON b.relfilenode = "
                "pg_relation_filenode(n.name::regclass) AND b.reldatabase = (SELECT oid FROM "
                "pg_database WHERE datname = current_database()) GROUP BY n.name",
                ([name for name, _ in relations],),
            ).fetchall()
    except psycopg.errors.InsufficientPrivilege:
        return [Cached(name, size, None) for name, size in relations]
    cached = {str(name): int(size) for name, size in rows}
    return [Cached(name, size, cached.get(name)) for name, size in relations]
