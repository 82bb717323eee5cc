"""A text query in every surface: the CLI (--match, JSON and table), ClipDB, HTTP."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from helpers import TINY_MODEL, make_images

import clipdb
from clipdb.ingest import ingest
from clipdb.search.__main__ import main
from clipdb.serve import create_app

TINY = ["--model", TINY_MODEL, "--pretrained", "none"]


@pytest.fixture
def named(database, tiny_encoder, tmp_path: Path) -> Path:
    """Six pictures; one of them named after a plate, one under a folder of receipts."""
    folder = tmp_path / "pics"
    paths = make_images(folder, 6, seed=3)
    paths[2].rename(folder / "plate_KX_5172.jpg")
    (folder / "receipts").mkdir()
    paths[4].rename(folder / "receipts" / "march.jpg")
    ingest([folder], database=database, encoder=tiny_encoder, workers=0)
    return folder


def test_cli_text_match_says_why_in_json_and_table(named, capsys) -> None:
    assert main(["--text", "5172", "--match", "text", *TINY, "--json"]) == 0
    hits = json.loads(capsys.readouterr().out)
    assert [Path(h["image_path"]).name for h in hits] == ["plate_KX_5172.jpg"]
    assert hits[0]["match"] == "text" and hits[0]["similarity"] is None
    assert "5172" in hits[0]["matched_text"]
    # The default match is hybrid (the names are indexed); the torch backend loads fastest.
    assert main(["--text", "receipts", *TINY, "-k", "3", "--backend", "torch"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:4] == ["rank", "similarity", "match", "matched"]
    assert "both" in lines[1] or "text" in lines[1]
    assert lines[1].rstrip().endswith("march.jpg")


def test_cli_refuses_what_a_text_match_cannot_do(named, capsys) -> None:
    assert main(["--text", "x", "--match", "text", *TINY, "--within", "0.1"]) == 2
    err = capsys.readouterr().err
    assert "goes with a CLIP search" in err and "Traceback" not in err
    assert main(["--text", "x", "--match", "text", *TINY, "-k", "10001"]) == 2


def test_clip_match_keeps_the_original_result_format(named, capsys) -> None:
    assert (
        main(
            ["--text", "5172", "--match", "clip", *TINY, "--json", "-k", "2", "--backend", "torch"]
        )
        == 0
    )
    hits = json.loads(capsys.readouterr().out)
    assert len(hits) == 2 and "match" not in hits[0]


def test_python_and_http_give_the_same_text_hits(named, database, tiny_encoder) -> None:
    db = clipdb.ClipDB(TINY_MODEL, "none", database.url, backend="torch")
    found = db.search_by_text("kx 5172", top_k=6, match="hybrid")
    assert Path(found[0]["image_path"]).name == "plate_KX_5172.jpg"
    assert found[0]["match"] == "both"
    db.print_search_results("kx 5172", found)  # text hits print (a similarity may be null)
    app = create_app(database, encoder=tiny_encoder)
    with TestClient(app, base_url="http://127.0.0.1") as client:
        response = client.get("/api/search", params={"text": "kx 5172", "k": 6, "match": "hybrid"})
        assert response.status_code == 200
        assert [h["image_id"] for h in response.json()] == [h["image_id"] for h in found]
        only = client.get("/api/search", params={"text": "march", "match": "text"}).json()
        assert [h["match"] for h in only] == ["text"]
        bad = client.get("/api/search", params={"text": "x", "match": "words"})
        assert bad.status_code == 422
        # The page's form: a text alone is matched by words too; hiding duplicates is CLIP's.
        form = client.post("/api/search", data={"text": "march", "k": "6"}).json()
        assert Path(form[0]["image_path"]).name == "march.jpg" and form[0]["match"] == "both"
        clip = client.post("/api/search", data={"text": "march", "hide_duplicates": "true"})
        assert "match" not in clip.json()[0]
        refused = client.get(
            "/api/search", params={"text": "march", "match": "text", "hide_duplicates": "true"}
        )
        assert refused.status_code == 400 and "--match clip" in refused.text
