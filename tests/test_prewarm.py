"""What a search reads is put in memory after a build, and ``clipdb db status`` says so."""

from __future__ import annotations

import hashlib

from helpers import unit_vectors

from clipdb.db import Database, database_status, format_status
from clipdb.db.prewarm import cache_status, prewarm
from clipdb.db.registry import register_model
from clipdb.db.store import ImageRecord, bulk_load

DIM = 16


def _load(database: Database):
    vectors = unit_vectors(500, DIM)
    with database.connect() as conn:
        model = register_model(conn, "warm", "none", DIM)
        records = (
            ImageRecord(f"/w/{i}.jpg", hashlib.sha256(b"%d" % i).digest(), 1, 1, 1, 1, v)
            for i, v in enumerate(vectors)
        )
        bulk_load(conn, model, records)
        conn.commit()
    return model


def _evict(database: Database) -> None:
    """Drop the database's pages from shared buffers (pg_buffercache_evict, PostgreSQL 17+)."""
    with database.connect(autocommit=True) as conn:
        conn.execute(
            "SELECT clipdb.pg_buffercache_evict(bufferid) FROM clipdb.pg_buffercache "
            "WHERE reldatabase = (SELECT oid FROM pg_database WHERE datname = current_database())"
        )


def test_prewarm_reads_the_index_and_rows_and_status_says_so(database: Database) -> None:
    model = _load(database)
    _evict(database)
    with database.connect(autocommit=True) as conn:
        cold = {c.name: c for c in cache_status(conn, model)}
        assert cold[f"clipdb.{model.index_name}"].cached_bytes == 0
        assert prewarm(conn, model)
        warm = {c.name: c for c in cache_status(conn, model)}
    for name in (f"clipdb.{model.index_name}", "clipdb.images", "clipdb.images_model_taken_at"):
        assert warm[name].bytes > 0 and warm[name].cached_bytes == warm[name].bytes, name
    text = format_status(database_status(database), database.url)
    assert f"{model.index_name} 100% of" in text and "images 100% of" in text
    assert "storage:   embeddings as halfvec" in text
