"""The web API against a real PostgreSQL, with the tiny CLIP model."""

from __future__ import annotations

import io
import os
import queue
import socket
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from helpers import TINY_MODEL, index_images, make_images
from PIL import Image

from clipdb import decode
from clipdb.db import Database, queries, registry
from clipdb.serve import create_app, running
from clipdb.serve.__main__ import main

# TestClient's default Host, "testserver", is refused like any non-local name.
LOCAL = "http://127.0.0.1"
RESULT_KEYS = {"rank", "image_path", "similarity", "filename", "image_id"} | {
    "taken_at", "taken_at_naive", "camera", "lat", "lon",  # metadata: present (null: unknown)
    "media", "time",  # image|video, and a video's best frame's seconds (null for a photo)
}  # fmt: skip


@pytest.fixture
def pictures(tmp_path: Path) -> dict[str, list[Path]]:
    return {
        "holiday": make_images(tmp_path / "holiday", 10, seed=1),
        "work": make_images(tmp_path / "work", 6, seed=2, prefix="work"),
    }


@pytest.fixture
def ids(database: Database, tiny_encoder: Any, pictures: dict[str, list[Path]]) -> dict[str, int]:
    return index_images(database, tiny_encoder, pictures["holiday"] + pictures["work"])


@pytest.fixture
def client(database: Database, tiny_encoder: Any, ids: dict[str, int]) -> Any:
    with TestClient(create_app(database, encoder=tiny_encoder), base_url=LOCAL) as test_client:
        yield test_client


def upload(path: Path | bytes, name: str = "query.jpg") -> dict[str, Any]:
    data = path if isinstance(path, bytes) else path.read_bytes()
    return {"image": (name, data, "image/jpeg")}


def test_search_by_uploaded_image_finds_itself_first(client: Any, ids: dict, pictures: dict):
    query = pictures["holiday"][3]
    response = client.post("/api/search", files=upload(query), data={"k": "4"})
    assert response.status_code == 200
    hits = response.json()
    assert len(hits) == 4
    assert all(set(hit) == RESULT_KEYS for hit in hits)
    assert [hit["rank"] for hit in hits] == [1, 2, 3, 4]
    best = hits[0]
    assert best["image_path"] == str(query.resolve())
    assert best["filename"] == query.name
    assert best["image_id"] == ids[str(query.resolve())]
    assert best["similarity"] == pytest.approx(1.0, abs=1e-4)
    similarities = [hit["similarity"] for hit in hits]
    assert similarities == sorted(similarities, reverse=True)
    assert "encode;dur=" in response.headers["server-timing"]


def test_text_search_matches_the_library(client: Any, database: Database, tiny_encoder: Any):
    vector = tiny_encoder.encode_texts(["a red circle"])[0]
    with database.connect() as conn:
        model = registry.registered_model(conn, TINY_MODEL, "none")
        assert model is not None
        expected = [hit.to_dict() for hit in queries.search_vector(conn, model, vector, 5)]
    posted = client.post("/api/search", data={"text": "a red circle", "k": "5"}).json()
    got = client.get("/api/search", params={"text": "a red circle", "k": 5}).json()
    for hits in (posted, got):
        assert [h["image_id"] for h in hits] == [h["image_id"] for h in expected]
        assert [h["similarity"] for h in hits] == pytest.approx([h["similarity"] for h in expected])


def test_image_and_text_combine_to_the_normalised_mean(
    client: Any, database: Database, tiny_encoder: Any, pictures: dict
):
    query = pictures["work"][0]
    image_vector = tiny_encoder.encode_pil([decode.open_image(str(query))[0]])[0]
    text_vector = tiny_encoder.encode_texts(["blue"])[0]
    combined = image_vector + text_vector
    combined /= np.linalg.norm(combined)
    with database.connect() as conn:
        model = registry.registered_model(conn, TINY_MODEL, "none")
        assert model is not None
        expected = queries.search_vector(conn, model, combined, 6)
    hits = client.post("/api/search", files=upload(query), data={"text": "blue", "k": 6}).json()
    assert [h["image_id"] for h in hits] == [h.image_id for h in expected]
    assert [h["similarity"] for h in hits] == pytest.approx([h.similarity for h in expected])


def test_threshold_and_under_filter_results(client: Any, pictures: dict, tmp_path: Path):
    query = pictures["holiday"][0]
    under = client.post(
        "/api/search", files=upload(query), data={"k": "50", "under": str(tmp_path / "work")}
    ).json()
    assert len(under) == 6
    assert all(h["image_path"].startswith(str(tmp_path / "work") + os.sep) for h in under)
    everything = client.post("/api/search", files=upload(query), data={"k": "50"}).json()
    cut = (everything[4]["similarity"] + everything[5]["similarity"]) / 2
    above = client.post(
        "/api/search", files=upload(query), data={"k": "50", "threshold": str(cut)}
    ).json()
    assert [h["image_id"] for h in above] == [h["image_id"] for h in everything[:5]]


def test_similar_to_an_indexed_id(client: Any, ids: dict, pictures: dict):
    image_id = ids[str(pictures["work"][2].resolve())]
    hits = client.get(f"/api/similar/{image_id}", params={"k": 3}).json()
    assert len(hits) == 3 and set(hits[0]) == RESULT_KEYS
    assert hits[0]["image_id"] == image_id
    assert hits[0]["similarity"] == pytest.approx(1.0, abs=1e-5)
    missing = client.get(f"/api/similar/{max(ids.values()) + 100}")
    assert missing.status_code == 404
    assert "no image with id" in missing.json()["detail"]


def test_thumbnails_only_for_indexed_ids(client: Any, ids: dict, pictures: dict):
    path = pictures["holiday"][1]
    image_id = ids[str(path.resolve())]
    response = client.get(f"/api/images/{image_id}/thumbnail", params={"size": 64})
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/jpeg"
    thumb = Image.open(io.BytesIO(response.content))
    assert thumb.format == "JPEG" and max(thumb.size) == 96  # 64 -> 128: never enlarged
    # Any size in 16..191 is the 128 thumbnail: one cache entry, not one per ?size=.
    assert client.get(f"/api/images/{image_id}/thumbnail", params={"size": 100}).content == (
        response.content
    )
    cache = client.get("/api/stats").json()["thumbnail_cache"]
    assert cache["hits"] == 1 and cache["misses"] == 1

    assert client.get(f"/api/images/{max(ids.values()) + 1}/thumbnail").status_code == 404
    # There is no way to name a file: ids are integers, extra parameters are ignored.
    assert client.get("/api/images/..%2F..%2Fetc%2Fpasswd/thumbnail").status_code in (404, 422)
    sneaky = client.get(f"/api/images/{image_id}/thumbnail", params={"path": "/etc/passwd"})
    assert Image.open(io.BytesIO(sneaky.content)).format == "JPEG"
    path.unlink()
    gone = client.get(f"/api/images/{image_id}/thumbnail", params={"size": 32})
    assert gone.status_code == 404 and "file is gone" in gone.json()["detail"]


def test_health_and_stats(client: Any):
    assert client.get("/api/health").json() == {
        "status": "ok",
        "database": "ok",
        "encoder_loaded": True,
    }
    stats = client.get("/api/stats").json()
    (model,) = stats["models"]
    assert model["architecture"] == TINY_MODEL and model["image_count"] == 16
    assert model["index_name"] == f"images_hnsw_model_{model['model_id']}"
    assert model["index_bytes"] > 0
    assert stats["serving"]["architecture"] == TINY_MODEL
    assert stats["serving"]["model_id"] == model["model_id"]
    assert stats["pgvector"]
    assert "/docs" in client.get("/docs").text or client.get("/docs").status_code == 200
    assert "/api/search" in client.get("/openapi.json").json()["paths"]


def test_page_and_static_files_are_served(client: Any):
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "/static/app.js" in page.text and "http" not in page.text.replace("http-equiv", "")
    for name in ("app.js", "style.css"):
        assert client.get(f"/static/{name}").status_code == 200


def test_bad_queries_are_400_or_422(client: Any):
    assert client.post("/api/search", data={"k": "3"}).status_code == 400
    assert client.post("/api/search", data={"text": "x", "k": "0"}).status_code == 422
    assert client.get("/api/search", params={"text": "x", "threshold": 2}).status_code == 422

    not_image = client.post("/api/search", files=upload(b"hello, not a picture", "a.jpg"))
    assert not_image.status_code == 400
    assert "not an image" in not_image.json()["detail"]

    buffer = io.BytesIO()
    Image.new("RGB", (300, 300), "red").save(buffer, "JPEG")
    truncated = client.post("/api/search", files=upload(buffer.getvalue()[:400]))
    assert truncated.status_code == 400


def test_decompression_bomb_is_400(client: Any):
    # 10000 x 10000 one-bit pixels: a 12 kB PNG that would decode to 100 megapixels.
    buffer = io.BytesIO()
    Image.new("1", (10_000, 10_000)).save(buffer, "PNG")
    assert len(buffer.getvalue()) < 100_000
    response = client.post("/api/search", files=upload(buffer.getvalue(), "bomb.png"))
    assert response.status_code == 400
    assert "too many pixels" in response.json()["detail"]


def test_uploads_over_the_limit_are_413(client: Any, database: Database, tiny_encoder: Any):
    # The default limit is 20 MB.
    response = client.post("/api/search", files=upload(b"\0" * 21_000_000))
    assert response.status_code == 413
    assert "20 MB" in response.json()["detail"]

    small = create_app(database, encoder=tiny_encoder, max_upload_bytes=1000)
    picture = io.BytesIO()
    Image.new("RGB", (64, 64), "blue").save(picture, "PNG")
    with TestClient(small, base_url=LOCAL) as limited:
        # Just over the limit: caught when the upload is read.
        just_over = limited.post("/api/search", files=upload(b"\1" * 1500))
        assert just_over.status_code == 413
        # Far over: refused by Content-Length before the body is read.
        far_over = limited.post("/api/search", files=upload(b"\1" * 200_000))
        assert far_over.status_code == 413
        assert limited.post("/api/search", files=upload(picture.getvalue())).status_code == 200


def test_nothing_indexed_is_503_with_a_message(database: Database, tiny_encoder: Any):
    with TestClient(create_app(database, encoder=tiny_encoder), base_url=LOCAL) as empty:
        response = empty.get("/api/search", params={"text": "cat"})
        assert response.status_code == 503
        assert "no indexed images" in response.json()["detail"]
        assert empty.get("/api/health").json()["status"] == "ok"


class GatedEncoder:
    """The tiny encoder, each text encode parked on a gate the test opens."""

    def __init__(self, encoder: Any) -> None:
        self._encoder = encoder
        self.parked, self.gate = threading.Event(), threading.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._encoder, name)

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        self.parked.set()
        self.gate.wait(120)  # hang-guard only: the test opens the gate
        return self._encoder.encode_texts(texts)


def test_encoding_does_not_block_the_event_loop(database: Database, tiny_encoder: Any, ids: dict):
    encoder = GatedEncoder(tiny_encoder)
    with running(create_app(database, encoder=encoder)) as url:
        slow: dict[str, Any] = {}
        worker = threading.Thread(
            target=lambda: slow.update(r=httpx.get(f"{url}/api/search?text=slow", timeout=180))
        )
        worker.start()
        try:
            assert encoder.parked.wait(60), "the search never reached the encoder"
            # Were the encode on the event loop, the loop would sit on the gate and this
            # request would get no answer until the gate opened (the test opens it after).
            try:
                health = httpx.get(f"{url}/api/health", timeout=30)
            except httpx.TimeoutException:
                pytest.fail("health got no answer while a search was encoding: loop blocked")
            assert health.status_code == 200
            assert worker.is_alive() and not slow  # the search is still parked on its gate
        finally:
            encoder.gate.set()
            worker.join(180)
    assert not worker.is_alive(), "the search never finished"
    assert slow["r"].status_code == 200


def test_twenty_concurrent_requests_answer_as_each_alone(
    database: Database, tiny_encoder: Any, ids: dict, pictures: dict
):
    image_ids = list(ids.values())
    queries_images = pictures["holiday"][:5]
    with running(create_app(database, encoder=tiny_encoder)) as url:

        def request(index: int) -> httpx.Response:
            with httpx.Client(base_url=url, timeout=60) as http:
                kind = index % 4
                if kind == 0:
                    return http.post("/api/search", files=upload(queries_images[index // 4]))
                if kind == 1:
                    return http.get("/api/search", params={"text": f"query {index}"})
                if kind == 2:
                    return http.get(f"/api/similar/{image_ids[index % len(image_ids)]}")
                return http.get(f"/api/images/{image_ids[index % len(image_ids)]}/thumbnail")

        with ThreadPoolExecutor(20) as pool:
            responses = list(pool.map(request, range(20)))
        alone = [request(index) for index in range(20)]
    assert [r.status_code for r in responses] == [200] * 20
    for index, (together, single) in enumerate(zip(responses, alone, strict=True)):
        if index % 4 == 3:  # a thumbnail: the same JPEG bytes
            assert together.content == single.content, index
            continue
        # The same hits in the same order, each with the same similarity.
        got, expected = together.json(), single.json()
        assert [h["image_id"] for h in got] == [h["image_id"] for h in expected], index
        for hit, same in zip(got, expected, strict=True):
            assert hit == {**same, "similarity": pytest.approx(same["similarity"], abs=1e-6)}


def test_main_rejects_an_unknown_model(capsys: pytest.CaptureFixture[str], database: Database):
    assert main(["--model", "no-such-model", "--pretrained", "none"]) == 2
    assert "unknown model" in capsys.readouterr().err


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.slow
def test_python_m_clipdb_serve_end_to_end(database: Database, ids: dict):
    import subprocess
    import sys

    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "clipdb.serve", "--port", str(port), "--model", TINY_MODEL]
        + ["--pretrained", "none", "--device", "cpu"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()

    def read() -> None:
        for line in process.stderr or ():
            lines.put(line)
        lines.put("")  # end of stream: the server exited

    reader = threading.Thread(target=read)
    reader.start()
    banner = f"serving on http://127.0.0.1:{port}/"
    try:
        # The banner is printed once the socket listens and the encoder is loaded; until then
        # the server writes nothing else that matters. A closed stderr ("") means it died.
        seen: list[str] = []
        while not seen or banner not in seen[-1]:
            try:
                seen.append(lines.get(timeout=120))  # hang-guard only
            except queue.Empty:
                pytest.fail(f"no banner after 120 s; stderr so far: {seen}")
            assert seen[-1], f"the server exited before its banner: {seen}"
        # Generous timeouts, as hang-guards only: the machine may be loaded.
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120) as http:
            health = http.get("/api/health")
            hits = http.get("/api/search", params={"text": "sunset", "k": 3}).json()
        assert health.json()["encoder_loaded"] is True  # warm before the first query
        assert len(hits) == 3 and set(hits[0]) == RESULT_KEYS
    finally:
        process.terminate()
        process.wait(20)
        reader.join(20)


def test_help_ends_with_examples(capsys: pytest.CaptureFixture[str]):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "--max-upload-mb" in out and "--database-url" in out
    assert out.rstrip().splitlines()[-1].strip().startswith("curl")
