"""The model picker's API: a search names one of the indexed models, or gets the served one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from helpers import TINY_MODEL, TINY_WIDE_MODEL, index_images, make_images

from clipdb.db import Database
from clipdb.serve import create_app

LOCAL = "http://127.0.0.1"
TINY = f"{TINY_MODEL}/none"
WIDE = f"{TINY_WIDE_MODEL}/none"


@pytest.fixture(scope="module")
def wide_encoder() -> Any:
    from clipdb.encoders import load_encoder

    return load_encoder(TINY_WIDE_MODEL, "none", device="cpu", precision="fp32", backend="torch")


@pytest.fixture
def two_models(
    database: Database, tiny_encoder: Any, wide_encoder: Any, tmp_path: Path
) -> dict[str, list[Path]]:
    """The served tiny model indexes one folder, the wide model another: where a hit lies says
    which model's rows answered."""
    folders = {
        TINY: make_images(tmp_path / "tiny", 6, seed=1),
        WIDE: make_images(tmp_path / "wide", 5, seed=2, prefix="wide"),
    }
    for encoder, name in ((tiny_encoder, TINY), (wide_encoder, WIDE)):
        index_images(database, encoder, folders[name])
    return folders


@pytest.fixture
def client(database: Database, tiny_encoder: Any, two_models: dict) -> Any:
    app = create_app(database, encoder=tiny_encoder, device="cpu", backend="torch")
    with TestClient(app, base_url=LOCAL) as test_client:
        yield test_client


def folder(hits: list[dict[str, Any]]) -> set[str]:
    return {Path(hit["image_path"]).parent.name for hit in hits}


def test_models_lists_the_indexed_ones_and_which_is_served(client: Any):
    response = client.get("/api/models")
    assert response.status_code == 200
    models = {model["name"]: model for model in response.json()}
    assert set(models) == {TINY, WIDE}
    assert (models[TINY]["images"], models[WIDE]["images"]) == (6, 5)
    assert models[TINY]["serving"] and not models[WIDE]["serving"]
    assert models[WIDE]["dim"] == 48


def test_a_search_names_the_model_that_answers(client: Any, wide_encoder: Any, two_models):
    served = client.get("/api/search", params={"text": "a red car", "k": 20})
    assert served.status_code == 200
    assert served.headers["X-Clipdb-Model"] == TINY
    assert folder(served.json()) == {"tiny"}

    picked = client.get("/api/search", params={"text": "a red car", "k": 20, "model": WIDE})
    assert picked.status_code == 200
    assert picked.headers["X-Clipdb-Model"] == WIDE
    hits = picked.json()
    assert folder(hits) == {"wide"} and len(hits) == 5
    # Ranked by the wide model's own text vector (the same seeded random weights).
    query = wide_encoder.encode_texts(["a red car"])[0]
    images = wide_encoder.encode_pil([_open(hit["image_path"]) for hit in hits])
    scores = images @ (query / np.linalg.norm(query))
    assert list(np.argsort(-scores)) == list(range(len(hits)))

    # The upload form and "more like this" take it too; an architecture alone is enough.
    query_image = two_models[WIDE][2]
    data = {"k": "3", "model": TINY_WIDE_MODEL}
    files = {"image": ("q.jpg", query_image.read_bytes(), "image/jpeg")}
    upload = client.post("/api/search", data=data, files=files)
    assert upload.status_code == 200 and upload.headers["X-Clipdb-Model"] == WIDE
    first = upload.json()[0]
    assert first["image_path"] == str(query_image.resolve())
    like = client.get(f"/api/similar/{first['image_id']}", params={"model": WIDE})
    assert like.status_code == 200 and like.json()[0]["image_id"] == first["image_id"]
    assert like.headers["X-Clipdb-Model"] == WIDE
    embedded = client.post("/api/embed", data={"text": "a red car", "model": WIDE})
    assert embedded.json()["dim"] == 48
    for match in ("text", "hybrid"):
        words = client.get("/api/search", params={"text": "wide", "match": match, "model": WIDE})
        assert words.status_code == 200 and words.headers["X-Clipdb-Model"] == WIDE, match
        # No words are stored here: text finds none; hybrid's CLIP side is the wide model's.
        assert folder(words.json()) == ({"wide"} if match == "hybrid" else set()), match


def test_the_picked_encoder_loads_once_and_few_are_kept(client: Any):
    service = client.app.state.service
    for _ in range(2):
        answer = client.get("/api/search", params={"text": "a cat", "model": WIDE})
        assert answer.status_code == 200
    [wide_id] = service.others.loaded
    encoder = service.encoder(service.picked(WIDE))
    assert encoder.dim == 48 and service.others.loaded == [wide_id]
    client.get("/api/search", params={"text": "a dog", "model": WIDE})
    assert service.encoder(service.picked(WIDE)) is encoder  # kept, not rebuilt
    client.get("/api/search", params={"text": "a dog", "model": TINY})
    assert service.others.loaded == [wide_id]  # the served model needs no other searcher


def test_an_unknown_model_is_refused_with_the_choices(client: Any):
    for params in (
        {"text": "a cat", "model": "ViT-B-32/openai"},
        {"text": "a cat", "model": "x'; DROP TABLE clipdb.images; --"},
        {"text": "a cat", "model": "ViT-B-32/openai", "match": "text"},
    ):
        response = client.get("/api/search", params=params)
        assert response.status_code == 422, params
        detail = response.json()["detail"]
        assert detail.startswith("no indexed model") and TINY in detail and WIDE in detail
    posted = client.post("/api/search", data={"text": "a cat", "model": "nope"})
    assert posted.status_code == 422
    assert client.get("/api/similar/1", params={"model": "nope"}).status_code == 422
    assert len(client.get("/api/search", params={"text": "a cat", "k": 50}).json()) == 6


def _open(path: str) -> Any:
    from clipdb import decode

    return decode.open_image(path)[0]


def test_at_most_one_other_searcher_is_kept_the_most_recent():
    from clipdb.config import Settings
    from clipdb.db.registry import Model
    from clipdb.query import EncoderOptions, Searcher
    from clipdb.serve.picker import OtherSearchers

    def connect() -> Any:
        raise AssertionError("building a searcher does no I/O")

    built: list[Searcher] = []

    def make() -> Searcher:
        built.append(Searcher(Settings.resolve(), EncoderOptions(), connect))
        return built[-1]

    others = OtherSearchers(make)
    first, second = Model(2, "a", "x", 32), Model(3, "b", "y", 48)
    kept = others.searcher_for(first)
    assert others.searcher_for(first) is kept and len(built) == 1  # built once
    others.searcher_for(second)
    assert others.loaded == [3]  # the first (and its encoder) let go
    assert others.searcher_for(first) is not kept and len(built) == 3
