"""clipdb.search_rows chooses its plan by how many rows the filters keep (migration 0011)."""

from __future__ import annotations

import numpy as np
import psycopg
import pytest
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


SEARCH_ROWS = (
    "SELECT rank, id, path, similarity FROM clipdb.search_rows(%s::smallint, %s::vector, %s, "
    "%s, skip => %s, within => %s)"
)


def test_an_unfiltered_search_runs_the_models_static_statement(database: Database) -> None:
    model, vectors, paths = _rows(database)
    with database.connect() as conn:
        # Rows 1-5 become frames of row 0's video: either path collapses them to one hit.
        conn.execute(
            "UPDATE clipdb.images SET path = %s, frame_time = id %% 10 + 1 WHERE path = ANY(%s)",
            (paths[0], paths[1:6]),
        )
        conn.commit()
        # The model's function exists from its registration on.
        topk = f"topk_model_{model.model_id}"
        assert conn.execute("SELECT to_regproc(%s)", (f"clipdb.{topk}",)).fetchone()[0]
        plans = nested_plans(
            conn, lambda: conn.execute(SEARCH_ROWS, (model.model_id, vectors[7], 10, 40, 0, None))
        )
        assert f"clipdb.{topk}(" in plans and f"Index Scan using {model.index_name}" in plans
        for q, k, skip in [(0, 10, 0), (3, 10, 0), (11, 5, 7), (42, 1, 0), (99, 30, 20)]:
            query = vectors[q]
            static = conn.execute(SEARCH_ROWS, (model.model_id, query, k, 40, skip, None))
            # within 2 keeps every row (a cosine distance is at most 2) and takes the planned
            # path: the same rows, ranks and similarities.
            planned = conn.execute(SEARCH_ROWS, (model.model_id, query, k, 40, skip, 2.0))
            assert static.fetchall() == planned.fetchall()
        # The same rows as a bare ORDER BY over the same index at the same ef_search.
        conn.execute("SET hnsw.ef_search = 40")
        bare = conn.execute(
            f"SELECT id FROM clipdb.images WHERE model_id = {model.model_id} "
            "ORDER BY embedding::halfvec(16) <=> %s::vector(16)::halfvec(16) LIMIT 10",
            (vectors[3],),
        )
        ids = [
            row[1]
            for row in conn.execute(SEARCH_ROWS, (model.model_id, vectors[3], 10, 40, 0, None))
        ]
        assert sorted(ids) == sorted(row[0] for row in bare)
        assert paths  # the rows are there


def test_a_deleted_model_takes_its_static_statement_with_it(database: Database) -> None:
    model, _, _ = _rows(database)
    topk = f"clipdb.topk_model_{model.model_id}"
    with database.connect() as conn:
        conn.execute("DELETE FROM clipdb.models WHERE id = %s", (model.model_id,))
        assert conn.execute("SELECT to_regproc(%s)", (topk,)).fetchone()[0] is None


def test_search_finds_the_one_model_of_the_querys_dimension(database: Database) -> None:
    model, vectors, paths = _rows(database)
    with database.connect() as conn:
        other, others, other_paths = insert_rows(conn, "other-arch", 8, 20, prefix="/eight")
        for query, names in ((vectors[4], paths), (others[3], other_paths)):
            found = conn.execute("SELECT path FROM clipdb.search(%s, 3)", (query,)).fetchall()
            assert found[0][0] == names[4 if names is paths else 3]
        # A second 8-dimensional model: the model policy decides, as before.
        insert_rows(conn, "third-arch", 8, 5, prefix="/third")
        with pytest.raises(psycopg.errors.RaiseException, match="several clipdb models match"):
            conn.execute("SELECT * FROM clipdb.search(%s, 3)", (others[3],)).fetchall()
        assert model.model_id != other.model_id
