"""Date/camera/place filters, --within, --sort, --offset: the same in SQL-backed search, the
CLI, the HTTP API and ClipDB; filtered searches stay on the HNSW index."""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta, timezone
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from helpers import TINY_MODEL, insert_rows, run_module

from clipdb.db import Database
from clipdb.db.explain import nested_plans
from clipdb.db.queries import search_vector
from clipdb.db.registry import register_model
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
    with database.connect() as conn:
        # pgvector's default ef_search: at clipdb's 320 a sequential scan of 2,000 rows is
        # rightly cheaper (at 100,000 rows the index serves it: bench/topk_paths.py). A broad
        # filter (99%): a narrow one ranks its rows exactly (tests/test_search_plans.py).
        sony = Filters(camera="sony")
        plans = nested_plans(
            conn, lambda: search_vector(conn, model, vectors[0], 10, ef_search=40, filters=sony)
        )
    assert f"Index Scan using images_hnsw_model_{model.model_id}" in plans, plans


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
        "clipdb.search",
        "--like",
        paths[5],
        "--model",
        TINY_MODEL,
        "--pretrained",
        "none",
        "--camera",
        "CANON",
        "--sort",
        "-date",
        "--json",
        "-k",
        "5",
    )
    assert result.returncode == 0, result.stderr
    hits = json.loads(result.stdout)
    assert len(hits) == 5 and all(h["camera"] == "Canon EOS R5" for h in hits)
    assert {"taken_at", "camera", "lat", "lon"} <= set(hits[0])
    stamps = [h["taken_at"] for h in hits]
    assert stamps == sorted(stamps, reverse=True)
    table = run_module(
        "clipdb.search",
        "--like",
        paths[5],
        "--model",
        TINY_MODEL,
        "--pretrained",
        "none",
        "--after",
        "2021-01-01",
        "-k",
        "3",
    )
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


def test_sql_search_settings_end_with_the_call(database: Database) -> None:
    """The scan settings a search makes are the function's own: the caller's transaction
    keeps its ef_search and iterative_scan (they used to stay changed until it ended)."""
    _, vectors, _ = _rows_with_metadata(database)
    with database.connect() as conn:  # one transaction
        conn.execute("SET LOCAL hnsw.ef_search = 77")
        count = conn.execute(
            "SELECT count(*) FROM clipdb.search(%s, 10, camera => 'canon')", (vectors[0],)
        ).fetchone()
        assert count == (10,)
        assert conn.execute("SHOW hnsw.ef_search").fetchone() == ("77",)
        assert conn.execute("SHOW hnsw.iterative_scan").fetchone() == ("off",)


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


# --- the one top-k against brute force --------------------------------------------------------

SWEEP_ROWS = 240
SIM_STEP = 0.007  # similarities to the sweep's query are this far apart: no near ties


def _sweep_rows(database: Database) -> tuple[Any, np.ndarray, dict[str, np.ndarray]]:
    """Rows whose similarity to ``e1`` is 0.99 - i * SIM_STEP in a shuffled order (so exact
    answers are unambiguous even through the index's half precision), with metadata columns."""
    rng = np.random.default_rng(5)
    sims = 0.99 - SIM_STEP * rng.permutation(SWEEP_ROWS)
    rest = rng.normal(size=(SWEEP_ROWS, DIM - 1))
    rest /= np.linalg.norm(rest, axis=1, keepdims=True)
    vectors = np.hstack([sims[:, None], np.sqrt(1 - sims[:, None] ** 2) * rest])
    index = np.arange(SWEEP_ROWS)
    columns = {
        "sim": sims,
        "day": np.where(index % 9 == 4, -1, (index * 37) % 200),  # -1: undated
        "canon": index % 5 == 0,
        "paris": index % 4 == 1,
        "folder_a": index % 3 == 0,
    }
    with database.connect() as conn:
        model = register_model(conn, TINY_MODEL, "none", DIM)
        for i, vector in enumerate(vectors.astype(np.float32)):
            path = f"/sweep/{'a' if columns['folder_a'][i] else 'b'}/{i:04d}.jpg"
            day = int(columns["day"][i])
            conn.execute(
                "INSERT INTO clipdb.images (id, model_id, path, sha256, size, mtime_ns, width,"
                " height, embedding, taken_at, camera, lat, lon) OVERRIDING SYSTEM VALUE"
                " VALUES (%s, %s, %s, %s, 1, 1, 1, 1, %s, %s, %s, %s, %s)",
                (
                    i + 1,
                    model.model_id,
                    path,
                    hashlib.sha256(path.encode()).digest(),
                    vector,
                    None if day < 0 else START + timedelta(days=day),
                    "Canon EOS R5" if columns["canon"][i] else "SONY A7",
                    48.8566 if columns["paris"][i] else -33.8688,
                    2.3522 if columns["paris"][i] else 151.2093,
                ),
            )
        conn.execute("ANALYZE clipdb.images")
        conn.commit()
    return model, np.eye(DIM, dtype=np.float32)[0], columns


def _brute_force(
    columns: dict[str, np.ndarray],
    keep: np.ndarray,
    k: int,
    within: float | None,
    sort: str,
    offset: int,
) -> list[tuple[int, int]]:
    """(rank, id) of the page, from the rules README states for --within, --sort, --offset."""
    sims = columns["sim"]
    best = [int(i) for i in np.argsort(-sims) if keep[i]][: k + offset]
    if within is not None and best:
        best = [i for i in best if sims[i] >= sims[best[0]] - within]
    if sort != "relevance":
        dated = [i for i in best if columns["day"][i] >= 0]
        dated.sort(key=lambda i: columns["day"][i] * (-1 if sort == "-date" else 1))  # stable
        best = dated + [i for i in best if columns["day"][i] < 0]
    page = best[offset : offset + k]
    return [(offset + n, i + 1) for n, i in enumerate(page, start=1)]


SWEEP_FILTERS: dict[str, tuple[dict[str, Any], Any]] = {
    "none": ({}, lambda c: np.ones(SWEEP_ROWS, bool)),
    "camera": ({"filters": {"camera": "canon"}}, lambda c: c["canon"]),
    "dates": (
        {"filters": {"after": START + timedelta(days=50), "before": START + timedelta(days=150)}},
        lambda c: (c["day"] >= 50) & (c["day"] < 150),
    ),
    "near": ({"filters": {"near": Near(48.85, 2.35, 5)}}, lambda c: c["paris"]),
    "under": ({"under": "/sweep/a"}, lambda c: c["folder_a"]),
    "threshold": ({"threshold": 0.505}, lambda c: c["sim"] >= 0.505),
    "camera, under, threshold": (
        {"filters": {"camera": "canon"}, "under": "/sweep/a", "threshold": 0.0},
        lambda c: c["canon"] & c["folder_a"] & (c["sim"] >= 0.0),
    ),
}


@pytest.mark.parametrize("case", list(SWEEP_FILTERS))
def test_every_filter_sort_offset_and_within_matches_brute_force(
    database: Database, case: str
) -> None:
    """clipdb.search_rows, through search_vector and through clipdb.search_model (SQL users),
    returns exactly the brute-force page for each filter with every sort, offset and within."""
    model, query, columns = _sweep_rows(database)
    arguments, predicate = SWEEP_FILTERS[case]
    keep = predicate(columns)
    with database.connect() as conn:
        for sort in ("relevance", "date", "-date"):
            for offset in (0, 7):
                for within in (None, 0.05, 2.0):
                    filters = Filters(
                        **arguments.get("filters", {}), within=within, sort=sort, offset=offset
                    )
                    where = (sort, offset, within)
                    expected = _brute_force(columns, keep, 10, within, sort, offset)
                    hits = search_vector(
                        conn,
                        model,
                        query,
                        10,
                        ef_search=1000,
                        filters=filters,
                        under=arguments.get("under"),
                        threshold=arguments.get("threshold"),
                    )
                    assert [(h.rank, h.image_id) for h in hits] == expected, where
                    sims = [h.similarity for h in hits]
                    # From the stored halfvec: within half precision of the float32 values.
                    assert sims == pytest.approx(
                        [columns["sim"][i - 1] for _, i in expected], abs=5e-4
                    )
                    if "under" in arguments or "threshold" in arguments:
                        continue  # search_model takes neither
                    params = filters.sql_params()
                    rows = conn.execute(
                        "SELECT rank, id FROM clipdb.search_model(%s::smallint, %s, 10, 1000,"
                        " after => %s, before => %s, camera => %s, near_lat => %s,"
                        " near_lon => %s, near_km => %s, within => %s, sort => %s, skip => %s)",
                        (
                            model.model_id,
                            query,
                            params["after"],
                            params["before"],
                            params["camera"],
                            params["near_lat"],
                            params["near_lon"],
                            params["near_km"],
                            within,
                            sort,
                            offset,
                        ),
                    ).fetchall()
                    assert rows == expected, where
