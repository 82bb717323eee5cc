"""The online move of a large table's embeddings to halfvec (migration 0011, clipdb.db.storage):
searches work between every batch, new writes land in the copy, and a stopped run resumes."""

from __future__ import annotations

import hashlib
import importlib.util

import numpy as np
import pytest
from helpers import unit_vectors

from clipdb.db import Database
from clipdb.db.explain import nested_plans
from clipdb.db.migrate import migrations_dir, upgrade
from clipdb.db.queries import search_vector
from clipdb.db.registry import register_model
from clipdb.db.storage import convert, storage_state
from clipdb.db.store import ImageRecord, bulk_load, upsert_images

DIM = 8


def _inline_rows() -> int:
    path = migrations_dir() / "versions" / "0011_halfvec_storage.py"
    spec = importlib.util.spec_from_file_location("m0011", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return int(module.INLINE_ROWS)


def _record(i: int, vector: np.ndarray, prefix: str = "/old") -> ImageRecord:
    path = f"{prefix}/{i}.jpg"
    return ImageRecord(path, hashlib.sha256(path.encode()).digest(), 1, 1, 1, 1, vector)


class Stop(Exception):
    pass


@pytest.mark.slow
def test_online_move_to_halfvec_keeps_search_working(empty_database: Database) -> None:
    upgrade(empty_database, "0010")
    count = _inline_rows() + 1  # one past what the migration converts in place
    vectors = unit_vectors(count, DIM)
    with empty_database.connect() as conn:
        model = register_model(conn, "old", "none", DIM)
        bulk_load(conn, model, (_record(i, v) for i, v in enumerate(vectors)))
        conn.commit()
    upgrade(empty_database)
    probes = [0, count // 2, count - 1]
    searched: list[int] = []

    def search_between(copied: int, last: int) -> None:
        with empty_database.connect() as reader:
            for probe in probes:
                hits = search_vector(reader, model, vectors[probe], 3)
                assert hits[0].image_path == f"/old/{probe}.jpg"
        searched.append(last)
        if len(searched) == 2:
            raise Stop  # an interrupted run

    with empty_database.connect(autocommit=True) as conn:
        assert storage_state(conn).kind == "vector" and storage_state(conn).converting
        with pytest.raises(Stop):
            convert(conn, batch_rows=5000, after_batch=search_between)
        # A write while half moved: the trigger fills its copy.
        new = unit_vectors(1, DIM, seed=9)[0]
        with conn.transaction():
            upsert_images(conn, model, [_record(0, new, "/new")])
        assert storage_state(conn, count=True).rows_left == count - 10_000
        # Run again: it goes on where it stopped.
        assert convert(conn, batch_rows=5000, after_batch=search_between)
        state = storage_state(conn, count=True)
        assert (state.kind, state.converting, state.rows_left) == ("halfvec", False, None)
        assert len(searched) == 2 + 3  # the 10,002 ids left, in batches of 5,000
        assert searched[2] > searched[1]  # resumed past the copied ids, not from the start
        hits = search_vector(conn, model, new, 1)
        assert hits[0].image_path == "/new/0.jpg"
        plans = nested_plans(conn, lambda: search_vector(conn, model, vectors[5], 3))
        assert f"Index Scan using {model.index_name}" in plans, plans
        assert not convert(conn)  # nothing left to do
