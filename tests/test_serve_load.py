"""The web server under load and from other sites: pool exhaustion, the statement timeout,
cross-site requests, decode slots held through encoding, uploads decoded small.

See docs/RELIABILITY.md ("The web server under load and from other sites").
"""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from helpers import TINY_MODEL, index_images, make_images
from PIL import Image

from clipdb import decode
from clipdb.config import DEFAULT_STATEMENT_TIMEOUT_S, STATEMENT_TIMEOUT_ENV, statement_timeout_s
from clipdb.db import Database
from clipdb.errors import UsageError
from clipdb.serve import create_app, running
from clipdb.serve.__main__ import main
from clipdb.serve.limits import decode_upload
from clipdb.serve.service import DECODE_SLOTS


@pytest.fixture
def ids(database: Database, tiny_encoder: Any, tmp_path: Path) -> dict[str, int]:
    return index_images(database, tiny_encoder, make_images(tmp_path / "lib", 4, seed=3))


@pytest.fixture
def server(database: Database, tiny_encoder: Any, ids: dict) -> Iterator[str]:
    with running(create_app(database, encoder=tiny_encoder)) as url:
        yield url


# --- the pool: busy is not down, and a statement runs no longer than the timeout ---------------


def test_an_exhausted_pool_is_busy_and_the_pool_stays(
    database: Database, tiny_encoder: Any, ids: dict
):
    app = create_app(database, encoder=tiny_encoder, pool_size=1, pool_timeout_s=0.5)
    service = app.state.service
    with running(app) as url, httpx.Client(base_url=url, timeout=30) as http:
        assert http.get("/api/search", params={"text": "x"}).status_code == 200
        pool = service.pool._pool
        with service.connection():  # the one connection, held until the search has answered
            response = http.get("/api/search", params={"text": "x"})
        assert response.status_code == 503, response.text
        detail = response.json()["detail"]
        assert "busy" in detail and "not reachable" not in detail
        assert response.headers["retry-after"] == "2"
        assert service.pool._pool is pool  # not replaced: its connections were fine
        assert http.get("/api/search", params={"text": "x"}).status_code == 200
        assert http.get("/api/health").json()["status"] == "ok"


def test_duplicate_scans_leave_connections_to_searches(
    database: Database, tiny_encoder: Any, ids: dict
):
    app = create_app(database, encoder=tiny_encoder, pool_size=2, pool_timeout_s=0.5)
    service = app.state.service
    assert service.scan_slots.count == 1  # half the pool
    with running(app) as url, httpx.Client(base_url=url, timeout=30) as http:
        with service.scan_slots.held():  # a long scan is running
            busy = http.get("/api/duplicates", params={"tier": "similar"})
            assert http.get("/api/search", params={"text": "x"}).status_code == 200
        assert busy.status_code == 503 and "busy" in busy.json()["detail"]
        assert busy.headers["retry-after"] == "2"
        assert http.get("/api/duplicates", params={"tier": "similar"}).status_code == 200


def test_a_statement_past_the_timeout_is_504_and_frees_its_connection(
    database: Database, tiny_encoder: Any, ids: dict
):
    app = create_app(database, encoder=tiny_encoder, pool_size=1, statement_timeout=0.2)
    service = app.state.service
    with running(app) as url, httpx.Client(base_url=url, timeout=30) as http:
        assert http.get("/api/search", params={"text": "x"}).status_code == 200
        pool = service.pool._pool
        # The test's transaction locks the table: the search can only end by its timeout.
        with database.connect() as locker:
            locker.execute("LOCK TABLE clipdb.images IN ACCESS EXCLUSIVE MODE")
            response = http.get("/api/search", params={"text": "x"})
            locker.rollback()
        assert response.status_code == 504, response.text
        assert "statement timeout (0.2 s)" in response.json()["detail"]
        assert "retry-after" not in response.headers
        # The one connection came back to the same pool, usable.
        assert service.pool._pool is pool
        assert http.get("/api/search", params={"text": "x"}).status_code == 200


def test_statement_timeout_setting(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv(STATEMENT_TIMEOUT_ENV, raising=False)
    assert statement_timeout_s() == DEFAULT_STATEMENT_TIMEOUT_S
    monkeypatch.setenv(STATEMENT_TIMEOUT_ENV, "2.5")
    assert statement_timeout_s() == 2.5
    assert statement_timeout_s(0.0) == 0.0  # a flag wins; 0 is no limit
    monkeypatch.setenv(STATEMENT_TIMEOUT_ENV, "soon")
    with pytest.raises(UsageError, match=STATEMENT_TIMEOUT_ENV):
        statement_timeout_s()


def test_cli_refuses_a_bad_statement_timeout(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
):
    argv = ["--model", TINY_MODEL, "--pretrained", "none", "--port", "0"]
    assert main([*argv, "--statement-timeout", "-1"]) == 2
    assert "--statement-timeout" in capsys.readouterr().err
    monkeypatch.setenv(STATEMENT_TIMEOUT_ENV, "-3")
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"{STATEMENT_TIMEOUT_ENV} must be seconds >= 0" in err and "Traceback" not in err


# --- requests from other web sites ----------------------------------------------------------


CROSS_SITE = {"Sec-Fetch-Site": "cross-site"}


def test_expensive_gets_answer_only_the_same_origin(server: str, ids: dict):
    image_id = next(iter(ids.values()))
    host = server.removeprefix("http://")
    with httpx.Client(base_url=server, timeout=30) as http:
        for path in (
            "/api/duplicates?tier=similar",
            "/api/search?text=x",
            f"/api/similar/{image_id}",
            f"/api/images/{image_id}/thumbnail",
        ):
            for headers in (
                CROSS_SITE,
                {"Sec-Fetch-Site": "same-site"},  # another port of localhost
                {"Origin": "http://evil.example"},
                {"Origin": "null"},
            ):
                refused = http.get(path, headers=headers)
                assert refused.status_code == 403, (path, headers)
                assert "another web site" in refused.json()["detail"]
            for headers in (
                {"Sec-Fetch-Site": "same-origin"},
                {"Sec-Fetch-Site": "none"},  # typed into the address bar
                {"Origin": f"http://{host}"},
                {},  # curl, scripts
            ):
                assert http.get(path, headers=headers).status_code == 200, (path, headers)
        assert http.head("/api/duplicates", headers=CROSS_SITE).status_code == 403
        # The page, its files, health, stats and the original files stay open.
        for path in ("/", "/static/app.js", "/api/health", "/api/stats"):
            assert http.get(path, headers=CROSS_SITE).status_code == 200, path
        assert http.get(f"/api/images/{image_id}/file", headers=CROSS_SITE).status_code == 200


def test_posts_from_other_sites_are_refused(server: str):
    host = server.removeprefix("http://")
    with httpx.Client(base_url=server, timeout=30) as http:
        for path in ("/api/search", "/api/embed"):
            for headers in (CROSS_SITE, {"Origin": "http://evil.example"}):
                refused = http.post(path, data={"text": "x"}, headers=headers)
                assert refused.status_code == 403, (path, headers)
            for headers in ({"Sec-Fetch-Site": "same-origin"}, {"Origin": f"http://{host}"}, {}):
                assert http.post(path, data={"text": "x"}, headers=headers).status_code == 200


# --- uploads: a decode slot is held until the encoder is done, and the decode is small -----------


class GatedEncoder:
    """The tiny encoder, whose image encoding waits for ``release`` once it has begun."""

    def __init__(self, encoder: Any) -> None:
        self._encoder = encoder
        self.entered, self.release = threading.Event(), threading.Event()
        self.sizes: list[tuple[int, int]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._encoder, name)

    def encode_pil(self, images: list[Image.Image]) -> np.ndarray:
        self.sizes += [image.size for image in images]
        self.entered.set()
        assert self.release.wait(60)
        return self._encoder.encode_pil(images)


def png_bytes(size: tuple[int, int], mode: str = "RGB") -> bytes:
    output = io.BytesIO()
    Image.new(mode, size, 90).save(output, "PNG")
    return output.getvalue()


def test_an_upload_holds_its_decode_slot_until_encoded(
    database: Database, tiny_encoder: Any, ids: dict
):
    gated = GatedEncoder(tiny_encoder)
    with running(create_app(database, encoder=gated)) as url:
        http = httpx.Client(base_url=url, timeout=60)
        upload = {"image": ("big.png", png_bytes((1200, 900)), "image/png")}
        answer: dict[str, httpx.Response] = {}
        worker = threading.Thread(
            target=lambda: answer.update(r=http.post("/api/search", files=upload))
        )
        worker.start()
        try:
            assert gated.entered.wait(60)
            slots = http.get("/api/stats").json()["decode_slots"]
            assert slots == {"total": DECODE_SLOTS, "in_use": 1}  # decoded, not yet encoded
        finally:
            gated.release.set()
            worker.join()
        assert answer["r"].status_code == 200
        assert http.get("/api/stats").json()["decode_slots"]["in_use"] == 0
        # The tiny model's input is 32 px: the PNG was shrunk to a 64 px short side, not kept
        # at 1200 x 900 while it waited for the encoder.
        assert gated.sizes == [(86, 65)]  # 1/14 of each side, rounded up
        http.close()


def test_uploads_decode_at_the_model_size(tmp_path: Path):
    # A PNG cannot be decoded small: it is reduced by an integer factor right after loading.
    image = decode_upload(png_bytes((2400, 1800)), small_side=448)
    assert (image.mode, image.size) == ("RGB", (600, 450))
    palette = decode_upload(png_bytes((2400, 1800), "P"), small_side=448)
    assert (palette.mode, palette.size) == ("RGB", (600, 450))
    assert decode_upload(png_bytes((600, 400)), small_side=448).size == (600, 400)
    # A JPEG is draft-decoded exactly as ingest decodes it.
    [path] = make_images(tmp_path, 1, size=(3000, 2000))
    data = path.read_bytes()
    upload = decode_upload(data, small_side=448)
    ingested, _, _ = decode.open_image(data, draft_size=448)
    assert upload.size == ingested.size == (750, 500)
    assert np.array_equal(np.asarray(upload), np.asarray(ingested))
