"""``clipdb embed``: the query vector a search would use, ready for SQL."""

from __future__ import annotations

import json
import socket

import numpy as np
import pytest
from helpers import TINY_MODEL, index_images, make_images, unit_vectors

from clipdb.config import Settings
from clipdb.db import Database
from clipdb.db.registry import register_model
from clipdb.db.store import ImageRecord, upsert_images
from clipdb.embed import embed_query
from clipdb.embed.__main__ import main
from clipdb.errors import ClipdbError
from clipdb.query import Query

TINY = ["--model", TINY_MODEL, "--pretrained", "none", "--device", "cpu", "--precision", "fp32"]


def test_text_embedding_is_a_unit_pgvector_literal_that_sql_search_accepts(
    database: Database, tiny_encoder, tmp_path, capsys: pytest.CaptureFixture[str]
) -> None:
    index_images(database, tiny_encoder, make_images(tmp_path, 4))
    assert main(["--text", "a red car", *TINY]) == 0
    literal = capsys.readouterr().out.strip()
    assert literal.startswith("[") and literal.endswith("]")
    vector = np.array(json.loads(literal), dtype=np.float32)
    expected = tiny_encoder.encode_texts(["a red car"])[0]
    np.testing.assert_allclose(vector, expected, atol=1e-6)
    assert abs(np.linalg.norm(vector) - 1) < 1e-5
    with database.connect() as conn:
        rows = conn.execute("SELECT * FROM clipdb.search(%s::vector, 3)", (literal,)).fetchall()
    assert len(rows) == 3


def test_image_embedding_as_json_matches_the_stored_row(
    database: Database, tiny_encoder, tmp_path, capsys: pytest.CaptureFixture[str]
) -> None:
    paths = make_images(tmp_path, 3)
    index_images(database, tiny_encoder, paths)
    assert main([str(paths[1]), "--json", *TINY]) == 0
    vector = json.loads(capsys.readouterr().out)
    with database.connect() as conn:
        rows = conn.execute(
            "SELECT path FROM clipdb.search(%s::vector, 1)", (str(vector),)
        ).fetchall()
    assert rows[0][0] == str(paths[1].resolve())


@pytest.mark.parametrize(
    ("args", "message"),
    [([], "give an IMAGE or --text"), (["--text", " "], "--text is empty")],
)
def test_bad_input_is_a_usage_error(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*args, *TINY]) == 2
    assert message in capsys.readouterr().err


def test_missing_image_is_one_line(database: Database, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["/no/such.jpg", *TINY]) == 1
    assert capsys.readouterr().err == "error: query image /no/such.jpg does not exist\n"


def test_http_embed_matches_the_cli(
    database: Database, tiny_encoder, tmp_path, capsys: pytest.CaptureFixture[str]
) -> None:
    from fastapi.testclient import TestClient

    from clipdb.serve import create_app

    index_images(database, tiny_encoder, make_images(tmp_path, 3))
    with TestClient(create_app(database, encoder=tiny_encoder), base_url="http://127.0.0.1") as c:
        response = c.post("/api/embed", data={"text": "a red car"})
        empty = c.post("/api/embed", data={"text": "  "})
    assert response.status_code == 200 and empty.status_code == 422
    body = response.json()
    assert (body["architecture"], body["pretrained"], body["dim"]) == (TINY_MODEL, "none", 32)
    assert main(["--text", "a red car", "--json", *TINY]) == 0
    np.testing.assert_allclose(body["vector"], json.loads(capsys.readouterr().out), atol=1e-6)


def add_row(database: Database, architecture: str, pretrained: str, dim: int) -> None:
    """One indexed row of another model (no file behind it)."""
    record = ImageRecord(f"/{pretrained}/0.jpg", bytes(32), 1, 1, 1, 1, unit_vectors(1, dim)[0])
    with database.connect() as conn:
        upsert_images(conn, register_model(conn, architecture, pretrained, dim), [record])
        conn.commit()


def test_no_rows_for_the_architecture_falls_back_to_the_weights_the_flags_name(
    database: Database, tiny_encoder, capsys: pytest.CaptureFixture[str]
) -> None:
    # Another architecture's rows do not count: clipdb-tiny has none, so its named weights.
    add_row(database, "clipdb-tiny-wide", "none", 48)
    assert main(["--text", "a red car", "--json", *TINY]) == 0
    vector = json.loads(capsys.readouterr().out)
    np.testing.assert_allclose(vector, tiny_encoder.encode_texts(["a red car"])[0], atol=1e-6)


def test_several_weights_indexed_is_an_error_not_a_guess(
    database: Database, tiny_encoder, tmp_path, capsys: pytest.CaptureFixture[str]
) -> None:
    index_images(database, tiny_encoder, make_images(tmp_path, 2))
    add_row(database, TINY_MODEL, "file:sha256:0123456789abcdef", 32)
    without_pretrained = [flag for flag in TINY if flag not in ("--pretrained", "none")]
    assert main(["--text", "a red car", *without_pretrained]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: several weights of clipdb-tiny are indexed")
    assert err.count("\n") == 1


def test_a_database_that_is_down_is_an_error_not_nothing_indexed(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"postgresql://clipdb@127.0.0.1:{port}/clipdb"
    settings = Settings.resolve(database_url=url, model=TINY_MODEL, pretrained="none")
    with pytest.raises(ClipdbError, match="cannot connect to PostgreSQL"):
        embed_query(settings, Database(url=url), Query(text="a red car"))
    assert main(["--text", "a red car", "--database-url", url, *TINY]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: cannot connect to PostgreSQL") and err.count("\n") == 1
