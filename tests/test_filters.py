"""Date/camera/place filters, --within, --sort, --offset: the same in SQL-backed search, the
CLI, the HTTP API and ClipDB; filtered searches stay on the HNSW index."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from helpers import TINY_MODEL, insert_rows, run_module

from clipdb.db import Database
from clipdb.db.queries import search_vector, topk_sql
from clipdb.errors import UsageError
from clipdb.filters import Filters, Near

DIM = 32
START = datetime(2020, 1, 1, tzinfo=timezone.utc)


def _rows_with_metadata(database: Database, count: int = 2000) -> tuple[Any, np.ndarray, list]:
    """``count`` rows; row i taken on day i, camera "Canon" for i % 100 == 0 (1%), else
    "Sony"; every 10th row at Paris, the others at Sydney; row 7 undated."""
    with database.connect() as conn:
        model, vectors, paths = insert_rows(conn, TINY_MODEL, DIM, count)
        conn.execute(
            "UPDATE clipdb.images SET taken_at = %s + (id - min_id) * interval '1 day',"
            " camera = CASE WHEN (id - min_id) %% 100 = 0 THEN 'Canon EOS R5' ELSE 'SONY A7' END,"
            " lat = CASE WHEN (id - min_id) %% 10 = 0 THEN 48.8566 ELSE -33.8688 END,"
            " lon = CASE WHEN (id - min_id) %% 10 = 0 THEN 2.3522 ELSE 151.2093 END,"
            " metadata_version = 1"
            " FROM (SELECT min(id) AS min_id FROM clipdb.images) m",
            (START,),
        )
        conn.execute("UPDATE clipdb.images SET taken_at = NULL WHERE path = %s", (paths[7],))
        conn.execute("ANALYZE clipdb.images")
        conn.commit()
    return model, vectors, paths


def _exact(vectors: np.ndarray, query: np.ndarray, keep: np.ndarray, k: int) -> list[int]:
    sims = vectors @ query
    order = [int(i) for i in np.argsort(-sims) if keep[i]]
    return order[:k]


def test_filtered_search_returns_k_rows_and_matches_exact(database: Database) -> None:
    model, vectors, paths = _rows_with_metadata(database)
    index = np.arange(len(paths))
    canon = index % 100 == 0  # 1% of rows: 20
    with database.connect() as conn:
        for q in range(5):
            query = vectors[100 + q]
            hits = search_vector(conn, model, query, 10, filters=Filters(camera="canon"))
            assert len(hits) == 10
            assert all(hit.camera == "Canon EOS R5" for hit in hits)
            assert [paths.index(h.image_path) for h in hits] == _exact(vectors, query, canon, 10)
        after = START + timedelta(days=1500)
        hits = search_vector(conn, model, vectors[0], 10, filters=Filters(after=after))
        assert len(hits) == 10 and all(h.taken_at is not None and h.taken_at >= after for h in hits)
        paris = Filters(near=Near(48.85, 2.35, 5))
        hits = search_vector(conn, model, vectors[0], 10, filters=paris)
        assert len(hits) == 10 and all(abs(h.lat - 48.8566) < 1e-6 for h in hits)
        # Fewer matches than k: all of them, nothing else.
        few = Filters(camera="canon", before=START + timedelta(days=250))
        assert len(search_vector(conn, model, vectors[0], 10, filters=few)) == 3


def test_filtered_query_uses_the_hnsw_index(database: Database) -> None:
    model, vectors, _ = _rows_with_metadata(database)
    sql = topk_sql(model, metadata=True)
    params = {"query": vectors[0], "k": 10, **Filters(camera="canon").sql_params()}
    with database.connect() as conn:
        conn.execute("SET hnsw.iterative_scan = relaxed_order")
        plan = "\n".join(
            row[0] for row in conn.execute("EXPLAIN " + sql, params, prepare=False).fetchall()
        )
    assert f"images_hnsw_model_{model.model_id}" in plan, plan


def test_within_sort_and_offset(database: Database) -> None:
    model, vectors, paths = _rows_with_metadata(database)
    with database.connect() as conn:
        base = search_vector(conn, model, vectors[3], 20)
        within = search_vector(conn, model, vectors[3], 20, filters=Filters(within=0.3))
        assert within and all(h.similarity >= base[0].similarity - 0.3 for h in within)
        assert len(within) < 20  # the cutoff dropped the tail
        pages = [
            search_vector(conn, model, vectors[3], 5, filters=Filters(offset=o))
            for o in (0, 5, 10, 15)
        ]
        assert [h.image_id for page in pages for h in page] == [h.image_id for h in base]
        assert [h.rank for h in pages[1]] == [6, 7, 8, 9, 10]
        by_date = search_vector(conn, model, vectors[7], 10, filters=Filters(sort="date"))
        assert {h.image_id for h in by_date} == {
            h.image_id for h in search_vector(conn, model, vectors[7], 10)
        }
        dates = [h.taken_at for h in by_date if h.taken_at is not None]
        assert dates == sorted(dates) and by_date[-1].taken_at is None  # row 7: undated last
        newest = search_vector(conn, model, vectors[7], 10, filters=Filters(sort="-date"))
        assert [h.taken_at for h in newest if h.taken_at] == sorted(dates, reverse=True)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"after": "yesterday"}, "--after"),
        ({"before": "2019-13-45"}, "--before"),
        ({"near": "91,0,5"}, "latitude"),
        ({"near": "1,2"}, "LAT,LON,KM"),
        ({"within": -1}, "--within"),
        ({"offset": -3}, "--offset"),
        ({"sort": "name"}, "--sort"),
        ({"after": "2021-01-02", "before": "2021-01-01"}, "earlier"),
    ],
)
def test_bad_filter_values_are_usage_errors(values: dict, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        Filters(**values)


@pytest.mark.parametrize(
    "flags",
    [
        ["--after", "yesterday"],
        ["--near", "91,0,5"],
        ["--within", "-1"],
        ["--offset", "-3"],
        ["--sort", "name"],
    ],
)
def test_cli_bad_values_exit_2(flags: list[str]) -> None:
    result = run_module("clipdb.search", "--text", "x", *flags)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr


def test_cli_filters_and_json_keys(database: Database) -> None:
    import json

    model, vectors, paths = _rows_with_metadata(database)
    result = run_module(
        "clipdb.search", "--like", paths[5], "--model", TINY_MODEL, "--pretrained", "none",
        "--camera", "CANON", "--sort", "-date", "--json", "-k", "5",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    hits = json.loads(result.stdout)
    assert len(hits) == 5 and all(h["camera"] == "Canon EOS R5" for h in hits)
    assert {"taken_at", "camera", "lat", "lon"} <= set(hits[0])
    stamps = [h["taken_at"] for h in hits]
    assert stamps == sorted(stamps, reverse=True)
    table = run_module(
        "clipdb.search", "--like", paths[5], "--model", TINY_MODEL, "--pretrained", "none",
        "--after", "2021-01-01", "-k", "3",
    )  # fmt: skip
    assert table.returncode == 0, table.stderr
    assert "taken_at" in table.stdout.splitlines()[0] and "camera" in table.stdout


def test_http_filters_and_422(database: Database, tiny_encoder: Any) -> None:
    from clipdb.serve import create_app

    model, vectors, paths = _rows_with_metadata(database)
    with database.connect() as conn:
        row_id = conn.execute(
            "SELECT id FROM clipdb.images WHERE path = %s", (paths[0],)
        ).fetchone()[0]
    app = create_app(database, encoder=tiny_encoder)
    with TestClient(app, base_url="http://127.0.0.1") as client:
        ok = client.get(f"/api/similar/{row_id}", params={"k": 5, "camera": "canon"})
        assert ok.status_code == 200, ok.text
        assert len(ok.json()) == 5 and all(h["camera"] == "Canon EOS R5" for h in ok.json())
        paged = client.get(f"/api/similar/{row_id}", params={"k": 5, "offset": 5})
        assert [h["rank"] for h in paged.json()] == [6, 7, 8, 9, 10]
        for bad in ({"after": "yesterday"}, {"near": "91,0,5"}, {"within": -1}, {"offset": -3}):
            response = client.get(f"/api/similar/{row_id}", params=bad)
            assert response.status_code == 422, (bad, response.text)
        form = client.post("/api/search", data={"text": "x", "k": "3", "sort": "date"})
        assert form.status_code == 200, form.text
        bad_form = client.post("/api/search", data={"text": "x", "before": "2019-13-45"})
        assert bad_form.status_code == 422


def test_sql_functions_take_the_same_filters(database: Database) -> None:
    model, vectors, paths = _rows_with_metadata(database)
    with database.connect() as conn:
        old = conn.execute("SELECT path FROM clipdb.search(%s, 5)", (vectors[2],)).fetchall()
        assert old[0][0] == paths[2]  # the old call still works
        rows = conn.execute(
            "SELECT rank, path FROM clipdb.search(%s, 10, camera => 'canon')", (vectors[2],)
        ).fetchall()
        expected = search_vector(conn, model, vectors[2], 10, filters=Filters(camera="canon"))
        assert [r[1] for r in rows] == [h.image_path for h in expected] and len(rows) == 10
        paged = conn.execute(
            "SELECT rank, path FROM clipdb.search(%s, 5, skip => 5, sort => '-date')",
            (vectors[2],),
        ).fetchall()
        python = search_vector(conn, model, vectors[2], 5, filters=Filters(offset=5, sort="-date"))
        assert [r[1] for r in paged] == [h.image_path for h in python]
        assert [r[0] for r in paged] == [6, 7, 8, 9, 10]
        row_id = conn.execute(
            "SELECT id FROM clipdb.images WHERE path = %s", (paths[0],)
        ).fetchone()[0]
        near = conn.execute(
            "SELECT count(*) FROM clipdb.similar(%s::bigint, 10, near_lat => 48.85,"
            " near_lon => 2.35, near_km => 5)",
            (row_id,),
        ).fetchone()[0]
        assert near == 10
        few = conn.execute(
            "SELECT count(*) FROM clipdb.similar(%s, 10, after => '2025-06-01', camera => 'canon')",
            (paths[0],),
        ).fetchone()[0]
        assert few == 0  # no Canon row is that late: the exact fallback finds none
        within = conn.execute(
            "SELECT similarity FROM clipdb.search(%s, 50, within => 0.2)", (vectors[2],)
        ).fetchall()
        assert within and min(r[0] for r in within) >= 1 - 0.2 - 1e-6


def test_a_naive_date_says_so_in_json_and_the_table_says_utc(database: Database) -> None:
    """A camera clock without a time zone is stored as if UTC: JSON adds taken_at_naive
    (taken_at itself is unchanged) and the table marks it; the column says UTC."""
    from clipdb.search.output import format_table

    with database.connect() as conn:
        model, vectors, paths = insert_rows(conn, TINY_MODEL, DIM, 2)
        conn.execute(
            "UPDATE clipdb.images SET taken_at = %s, taken_at_naive = (path = %s)",
            (START, paths[0]),
        )
        conn.commit()
        hits = search_vector(conn, model, vectors[0], 2)
    assert [(h.image_path, h.to_dict()["taken_at_naive"]) for h in hits] == [
        (paths[0], True),
        (paths[1], False),
    ]
    assert hits[0].to_dict()["taken_at"] == START.isoformat()
    header, first, second = format_table(hits).splitlines()
    assert header.startswith("rank  similarity  taken_at (UTC)     camera")
    assert f"  {START:%Y-%m-%d %H:%M}*  " in first
    assert f"  {START:%Y-%m-%d %H:%M}   " in second
