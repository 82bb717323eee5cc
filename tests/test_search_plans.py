"""clipdb.search_rows chooses its plan by how many rows the filters keep (migration 0011)."""

from __future__ import annotations

import numpy as np
from helpers import TINY_MODEL, insert_rows

from clipdb.db import Database
from clipdb.db.explain import nested_plans
from clipdb.db.queries import search_vector
from clipdb.filters import Filters

DIM = 16
ROWS = 2000


def _rows(database: Database):
    """ROWS rows; camera "Leica M11" on every 100th (1%), "Canon EOS R5" on the others."""
    with database.connect() as conn:
        model, vectors, paths = insert_rows(conn, TINY_MODEL, DIM, ROWS)
        conn.execute(
            "UPDATE clipdb.images SET camera = CASE WHEN (id - m.low) % 100 = 0 "
            "THEN 'Leica M11' ELSE 'Canon EOS R5' END FROM (SELECT min(id) AS low "
            "FROM clipdb.images) m"
        )
        conn.execute("ANALYZE clipdb.images")
        conn.commit()
    return model, vectors, paths


def test_a_one_percent_filter_ranks_its_rows_exactly_and_returns_k(database: Database) -> None:
    model, vectors, paths = _rows(database)
    leica = np.arange(ROWS) % 100 == 0  # 20 rows
    with database.connect() as conn:
        for q in range(5):
            query = vectors[500 + q]
            # ef_search 1 makes the graph walk hopeless under a 1% filter: k rows must come
            # anyway, and the exact ranking of the matching rows.
            hits = search_vector(
                conn, model, query, 10, ef_search=1, filters=Filters(camera="EICA")
            )
            order = [int(i) for i in np.argsort(-(vectors @ query)) if leica[i]][:10]
            assert [paths.index(h.image_path) for h in hits] == order
        plans = nested_plans(
            conn,
            lambda: search_vector(conn, model, vectors[0], 10, filters=Filters(camera="leica")),
        )
        # The matching rows come from the camera index, not from a walk of the graph.
        assert "images_model_camera" in plans, plans
        assert model.index_name not in plans, plans


def test_a_broad_filter_walks_the_graph_and_returns_k(database: Database) -> None:
    model, vectors, _ = _rows(database)
    with database.connect() as conn:
        canon = Filters(camera="canon")
        plans = nested_plans(
            conn, lambda: search_vector(conn, model, vectors[0], 10, ef_search=40, filters=canon)
        )
        assert f"Index Scan using {model.index_name}" in plans, plans
        hits = search_vector(conn, model, vectors[0], 10, ef_search=40, filters=canon)
        assert len(hits) == 10 and all(h.camera == "Canon EOS R5" for h in hits)
