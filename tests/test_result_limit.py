"""One result limit (1..MAX_RESULTS) in the CLI, Python and SQL; k beyond ef_search still
returns k rows."""

from __future__ import annotations

import numpy as np
import psycopg
import pytest
from helpers import TINY_MODEL, insert_rows

from clipdb.config import MAX_RESULTS
from clipdb.db import Database
from clipdb.db.queries import search_vector
from clipdb.errors import UsageError
from clipdb.search import SearchOptions
from clipdb.search.__main__ import main

ROWS = 1500


@pytest.fixture
def many(database: Database):
    with database.connect() as conn:
        return insert_rows(conn, TINY_MODEL, 32, ROWS, seed=3)


def test_k_above_the_ef_search_maximum_returns_k_nearly_exact_rows(
    database: Database, many
) -> None:
    model, vectors, paths = many
    query = vectors[7]
    exact = {paths[i] for i in np.argsort(-(vectors @ query))[:1200]}
    with database.connect() as conn:
        hits = search_vector(conn, model, query, 1200, ef_search=320)
    assert len(hits) == 1200
    assert len({h.image_path for h in hits} & exact) / 1200 >= 0.99
    similarities = [h.similarity for h in hits]
    assert similarities == sorted(similarities, reverse=True)


def test_sql_search_returns_k_rows_and_refuses_beyond_the_limit(database: Database, many) -> None:
    model, vectors, _ = many
    with database.connect() as conn:
        rows = conn.execute(
            "SELECT count(*) FROM clipdb.search(%s, 1100)", (vectors[0],)
        ).fetchone()
        assert rows is not None and rows[0] == 1100
        with pytest.raises(psycopg.errors.RaiseException, match=f"1 to {MAX_RESULTS}"):
            conn.execute("SELECT * FROM clipdb.search(%s, %s)", (vectors[0], MAX_RESULTS + 1))


@pytest.mark.parametrize("k", [0, -1, MAX_RESULTS + 1])
def test_python_and_library_refuse_out_of_range_k(k: int) -> None:
    with pytest.raises(UsageError, match=f"1 to {MAX_RESULTS}"):
        SearchOptions(k=k)


@pytest.mark.parametrize("k", ["0", str(MAX_RESULTS + 1)])
def test_cli_refuses_out_of_range_k_before_anything_loads(
    k: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--text", "x", "-k", k]) == 2
    assert f"expected 1 to {MAX_RESULTS}" in capsys.readouterr().err


def test_cli_k_1001_works(database: Database, many, capsys: pytest.CaptureFixture[str]) -> None:
    model, _, paths = many
    args = ["--like", paths[0], "--model", TINY_MODEL, "--pretrained", "none", "-k", "1001"]
    assert main([*args, "--paths"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 1001


def test_http_takes_the_same_limit(database: Database, many, tiny_encoder) -> None:
    from fastapi.testclient import TestClient

    from clipdb.serve import create_app

    _, _, paths = many
    with database.connect() as conn:
        row = conn.execute("SELECT id FROM clipdb.images LIMIT 1").fetchone()
    assert row is not None
    app = create_app(database, model=TINY_MODEL, pretrained="none", preload=False)
    with TestClient(app, base_url="http://127.0.0.1") as client:
        ok = client.get(f"/api/similar/{row[0]}", params={"k": 1001})
        too_many = client.get(f"/api/similar/{row[0]}", params={"k": MAX_RESULTS + 1})
    assert ok.status_code == 200 and len(ok.json()) == 1001
    assert too_many.status_code == 422
