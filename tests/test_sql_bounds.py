"""What the read-only role may do, in numbers: no temporary tables, bounded temp files, every
argument of every function it can call in range; the SQL functions pick a model as the CLI."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import numpy as np
import psycopg
import pytest
from helpers import TINY_MODEL, unit_vectors

from clipdb.db import Database
from clipdb.db.migrate import upgrade
from clipdb.db.registry import register_model
from clipdb.db.store import ImageRecord, upsert_images


def reader(database: Database) -> psycopg.Connection:
    url = database.url.replace("postgres@", "clipdb_reader@", 1)
    return psycopg.connect(url, autocommit=True)


def add_model(
    database: Database, architecture: str, pretrained: str, dim: int, paths: list[str]
) -> dict[str, int]:
    """Rows of one model at ``paths``: {path: image id}."""
    with database.connect() as conn:
        model = register_model(conn, architecture, pretrained, dim)
        vectors = unit_vectors(len(paths), dim, seed=dim)
        upsert_images(
            conn,
            model,
            [
                ImageRecord(path, hashlib.sha256(path.encode()).digest(), 1, 1, 1, 1, vector)
                for path, vector in zip(paths, vectors, strict=True)
            ],
        )
        zero_phash = "UPDATE clipdb.images SET phash = B'0'::bit(64) WHERE model_id = %s"
        conn.execute(zero_phash, (model.model_id,))
        conn.commit()
        rows = conn.execute(
            "SELECT path, id FROM clipdb.images WHERE model_id = %s", (model.model_id,)
        ).fetchall()
    return dict(rows)


def test_reader_cannot_create_temporary_tables_in_the_embedded_database(
    empty_database: Database,
) -> None:
    # Migrated as clipdb migrates its own server's database (embedded_home set).
    upgrade(Database(url=empty_database.url, embedded_home=Path("/embedded")))
    with reader(empty_database) as conn, pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute("CREATE TEMP TABLE big AS SELECT generate_series(1, 10) AS n")


def test_reader_temp_file_limit_is_set_and_cannot_be_lifted(database: Database) -> None:
    with reader(database) as conn:
        assert conn.execute("SHOW temp_file_limit").fetchone() == ("1GB",)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SET temp_file_limit = -1")
        conn.execute("SET statement_timeout = 0")  # a default only: README says so


QUERY = "(SELECT array_fill(0.5, ARRAY[8])::vector)"
OUT_OF_RANGE = [
    ("SELECT clipdb.phash_band_masks(3000, 2)", "width must be 1 to 64, not 3000"),
    ("SELECT clipdb.phash_band_masks(22, 3)", "radius must be 0 to 2, not 3"),
    ("SELECT clipdb.phash_band_masks(NULL, 1)", "width must be 1 to 64, not NULL"),
    ("SELECT clipdb.model_index_ddl(1::smallint, 100000)", "1 to 2000 dimensions"),
    (f"SELECT * FROM clipdb.search({QUERY}, 0)", "number of results must be 1 to 10000"),
    (f"SELECT * FROM clipdb.search({QUERY}, 5, ef_search => 5000)", "ef_search must be 1 to"),
    (f"SELECT * FROM clipdb.search({QUERY}, 5, ef_search => 0)", "ef_search must be 1 to"),
    (f"SELECT * FROM clipdb.search({QUERY}, 5, skip => -1)", "skip"),
    (f"SELECT * FROM clipdb.search({QUERY}, 5, camera => repeat('x', 201))", "at most 200"),
    (f"SELECT * FROM clipdb.search({QUERY}, 5, within => 3)", "within must be 0 to 2"),
    (
        f"SELECT * FROM clipdb.search({QUERY}, 5, near_lat => 0, near_lon => 0, near_km => 1e9)",
        "at most 20100",
    ),
    (f"SELECT * FROM clipdb.search({QUERY}, 5, model => repeat('x', 201))", "at most 200"),
    ("SELECT * FROM clipdb.similar(repeat('x', 40000), 5)", "at most 32768 characters"),
    ("SELECT * FROM clipdb.similar(NULL::text, 5)", "the image path is NULL"),
    ("SELECT clipdb.path_key(repeat('x', 40000), NULL)", "at most 32768 bytes"),
    (
        "SELECT * FROM clipdb.similar((SELECT min(id) FROM clipdb.images), 20000)",
        "number of results must be 1",
    ),
    (f"SELECT * FROM clipdb.search_model(1::smallint, {QUERY}, 5, 0)", "ef_search must be"),
    (f"SELECT * FROM clipdb.search({QUERY}, NULL)", "must be 1 to 10000, not NULL$"),
    (f"SELECT * FROM clipdb.search({QUERY}, 5, sort => NULL)", "not NULL$"),
    (f"SELECT * FROM clipdb.search({QUERY}, 5, skip => NULL)", "not NULL$"),
    (f"SELECT * FROM clipdb.search_model(NULL, {QUERY})", "no clipdb model with id NULL$"),
    (
        f"SELECT * FROM clipdb.search_rows(1::smallint, {QUERY}, 5, under => '/p'::bytea)",
        "ending in /$",
    ),
    (
        f"SELECT * FROM clipdb.search_rows(1::smallint, {QUERY}, 5, min_similarity => 2)",
        "min_similarity must be -1 to 1, not 2$",
    ),
    ("SELECT * FROM clipdb.search_rows(1::smallint, NULL)", "the query vector is NULL$"),
    # The model's plan-cached unfiltered statement (migration 0015), which search_rows calls.
    (f"SELECT * FROM clipdb.topk_model_1({QUERY}, 5, 996)", "k \\+ skip at most 1000$"),
    ("SELECT * FROM clipdb.similar(NULL::bigint, 5)", "no indexed image with id NULL$"),
    ("SELECT clipdb.resolve_model(NULL, NULL, 5000)", "1 to 2000 dimensions, not 5000"),
    ("SELECT clipdb.choose_model(NULL, repeat('x', 300), NULL)", "at most 200 characters"),
    ("SELECT * FROM clipdb.duplicates('near', 9)", "max_distance must be 0 to 8, not 9"),
    ("SELECT * FROM clipdb.duplicates('near', NULL)", "max_distance must be 0 to 8, not NULL"),
    ("SELECT * FROM clipdb.duplicates(repeat('x', 9999), 4)", "tier must be 'exact' or 'near'$"),
    (
        "SELECT * FROM clipdb.search_hybrid(1::smallint, NULL, 'x', 20000, mode => 'text')",
        "number of results must be 1 to 10000, not 20000$",
    ),
    (
        f"SELECT * FROM clipdb.search_hybrid(1::smallint, {QUERY}, 'x', 5, skip => 9999)",
        "k \\+ skip at most 10000",
    ),
    ("SELECT * FROM clipdb.search_text_rows(1::smallint, repeat('x', 1001))", "at most 1000"),
    ("SELECT * FROM clipdb.search_text_rows(1::smallint, 'x', 0)", "must be 1 to 10000, not 0$"),
    ("SELECT clipdb.text_fold(repeat('x', 200001))", "at most 200000 characters$"),
    (
        "SELECT * FROM clipdb.search_filter(1::smallint, NULL, NULL, repeat('x', 201), NULL, "
        "NULL, NULL, NULL)",
        "camera is at most 200 characters$",
    ),
    (
        "SELECT clipdb.text_snippet(NULL::clipdb.image_text, NULL, array_fill('x'::text, "
        "ARRAY[101]))",
        "at most 100 terms$",
    ),
]


def test_every_function_the_reader_may_call_bounds_its_arguments(database: Database) -> None:
    add_model(database, TINY_MODEL, "none", 8, ["/p/a.jpg", "/p/b.jpg"])
    with reader(database) as conn:
        callable_ = {
            row[0]
            for row in conn.execute(
                "SELECT p.proname FROM pg_proc p WHERE p.pronamespace = 'clipdb'::regnamespace "
                "AND has_function_privilege(p.oid, 'EXECUTE')"
            )
        }
        assert callable_ == {s.split("clipdb.")[1].split("(")[0] for s, _ in OUT_OF_RANGE}
        for statement, message in OUT_OF_RANGE:
            with pytest.raises(psycopg.errors.RaiseException) as caught:
                conn.execute(statement).fetchall()
            text = str(caught.value).splitlines()[0]
            assert re.search(message, text), (statement, text)
            assert "<NULL>" not in text


def test_null_and_zero_query_vectors_are_refused(database: Database) -> None:
    add_model(database, TINY_MODEL, "none", 8, ["/p/a.jpg", "/p/b.jpg"])
    with reader(database) as conn:
        with pytest.raises(psycopg.errors.RaiseException, match="the query vector is NULL"):
            conn.execute("SELECT * FROM clipdb.search(NULL, 5)").fetchall()
        with pytest.raises(psycopg.errors.RaiseException, match="all zeros"):
            conn.execute("SELECT * FROM clipdb.search(array_fill(0, ARRAY[8])::vector, 5)")
        with pytest.raises(psycopg.errors.RaiseException, match="all zeros"):
            conn.execute(
                "SELECT * FROM clipdb.search_model(1::smallint, array_fill(0, ARRAY[8])::vector)"
            )
        rows = conn.execute(f"SELECT similarity FROM clipdb.search({QUERY}, 5)").fetchall()
        assert len(rows) == 2 and all(np.isfinite(row[0]) for row in rows)


def test_sql_picks_the_model_the_cli_would(database: Database) -> None:
    """With ViT-B-32's standard weights indexed beside another model, a call that names no
    model means them (clipdb.config.DEFAULT_MODEL), unless the image is only the other's."""
    vit = add_model(database, "ViT-B-32", "openai", 512, ["/p/shared.jpg", "/p/vit.jpg"])
    tiny = add_model(database, TINY_MODEL, "none", 32, ["/p/shared.jpg", "/p/tiny.jpg"])
    with reader(database) as conn:
        rows = conn.execute("SELECT id FROM clipdb.similar('/p/shared.jpg', 5)").fetchall()
        assert {row[0] for row in rows} == set(vit.values())
        rows = conn.execute("SELECT id FROM clipdb.similar('/p/tiny.jpg', 5)").fetchall()
        assert {row[0] for row in rows} == set(tiny.values())
        rows = conn.execute(
            "SELECT id FROM clipdb.similar('/p/shared.jpg', 5, model => %s)", (TINY_MODEL,)
        ).fetchall()
        assert {row[0] for row in rows} == set(tiny.values())
        pairs = conn.execute("SELECT image_id, other_id FROM clipdb.duplicates('near', 4)")
        assert set(pairs.fetchall()) == {tuple(sorted(vit.values()))}


def test_sql_names_the_model_argument_when_it_cannot_decide(database: Database) -> None:
    add_model(database, TINY_MODEL, "none", 32, ["/p/shared.jpg", "/p/a.jpg"])
    other = add_model(database, TINY_MODEL, "file:sha256:0123456789abcdef", 32, ["/p/shared.jpg"])
    choices = f"'{TINY_MODEL}/none', '{TINY_MODEL}/file:sha256:0123456789abcdef'"
    with reader(database) as conn:
        for statement, start in (
            ("SELECT * FROM clipdb.similar('/p/shared.jpg', 5)", "image /p/shared.jpg is"),
            ("SELECT * FROM clipdb.duplicates('near', 4)", "several clipdb models match;"),
        ):
            with pytest.raises(psycopg.errors.RaiseException) as caught:
                conn.execute(statement)
            text = str(caught.value).splitlines()[0]
            assert text.startswith(start) and text.endswith(f"pass model => one of {choices}")
            assert "<NULL>" not in text
        with pytest.raises(psycopg.errors.RaiseException) as caught:
            conn.execute("SELECT * FROM clipdb.similar('/p/none.jpg', 5, model => 'x')")
        assert (
            str(caught.value).splitlines()[0] == "image /p/none.jpg is not indexed (model => 'x')"
        )
        rows = conn.execute(
            "SELECT id FROM clipdb.similar('/p/shared.jpg', 5, "
            f"model => '{TINY_MODEL}/file:sha256:0123456789abcdef')"
        ).fetchall()
        assert {row[0] for row in rows} == set(other.values())
