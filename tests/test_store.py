"""Writing rows: the bulk loader that drops and rebuilds a model's HNSW index."""

from __future__ import annotations

import hashlib

import numpy as np
from helpers import unit_vectors

from clipdb.db import Database
from clipdb.db.explain import nested_plans
from clipdb.db.queries import search_vector
from clipdb.db.registry import register_model
from clipdb.db.store import ImageRecord, bulk_load


def _records(vectors: np.ndarray) -> list[ImageRecord]:
    return [
        ImageRecord(f"/bulk/{i}.jpg", hashlib.sha256(b"%d" % i).digest(), 1, 1, 1, 1, vector)
        for i, vector in enumerate(vectors)
    ]


def _indexdef(conn, name: str) -> str:
    row = conn.execute(
        "SELECT indexdef FROM pg_indexes WHERE schemaname = 'clipdb' AND indexname = %s", (name,)
    ).fetchone()
    assert row is not None, f"index {name} is missing"
    return str(row[0])


def test_bulk_load_rebuilds_the_same_index_and_searches_use_it(database: Database) -> None:
    vectors = unit_vectors(2000, 16, seed=3)
    with database.connect() as conn:
        model = register_model(conn, "bulk", "none", 16)
        before = _indexdef(conn, model.index_name)
        result = bulk_load(
            conn, model, _records(vectors), parallel_workers=1, maintenance_work_mem="64MB"
        )
        conn.commit()
        assert result.rows == 2000
        assert _indexdef(conn, model.index_name) == before
        assert conn.execute("SELECT count(*) FROM clipdb.images").fetchone() == (2000,)
        hits = search_vector(conn, model, vectors[7], 3)
        assert hits[0].image_path == "/bulk/7.jpg"
        plans = nested_plans(conn, lambda: search_vector(conn, model, vectors[7], 3, ef_search=40))
        assert model.index_name in plans


def test_bulk_load_without_rebuild_keeps_the_live_index(database: Database) -> None:
    vectors = unit_vectors(20, 16, seed=4)
    with database.connect() as conn:
        model = register_model(conn, "bulk", "none", 16)
        oid = conn.execute("SELECT %s::regclass::oid", (f"clipdb.{model.index_name}",)).fetchone()
        result = bulk_load(conn, model, _records(vectors), rebuild_index=False)
        conn.commit()
        assert result.rows == 20 and result.index_s < 1.0
        assert (
            conn.execute("SELECT %s::regclass::oid", (f"clipdb.{model.index_name}",)).fetchone()
            == oid
        )
