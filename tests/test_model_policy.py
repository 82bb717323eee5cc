"""One model-choice policy: the CLI, ClipDB and the server pick the same rows for the same flags."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from helpers import TINY_MODEL, unit_vectors

from clipdb.config import Settings
from clipdb.db import Database
from clipdb.db.registry import register_model
from clipdb.db.store import ImageRecord, upsert_images
from clipdb.search import choose_model
from clipdb.search.__main__ import main as search_main
from clipdb.serve import create_app

OTHER_WEIGHTS = "file:sha256:0123456789abcdef"


def add_rows(database: Database, pretrained: str, prefix: str, count: int = 6) -> list[int]:
    with database.connect() as conn:
        model = register_model(conn, TINY_MODEL, pretrained, 32)
        records = [
            ImageRecord(f"{prefix}/{i}.jpg", hashlib.sha256(f"{prefix}{i}".encode()).digest(),
                        1, 1, 1, 1, vector)
            for i, vector in enumerate(unit_vectors(count, 32, seed=len(prefix)))
        ]  # fmt: skip
        upsert_images(conn, model, records)
        conn.commit()
        rows = conn.execute(
            "SELECT id FROM clipdb.images WHERE model_id = %s ORDER BY id", (model.model_id,)
        ).fetchall()
    return [row[0] for row in rows]


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, Any, str]:
    code = search_main([*args, "--json", "-k", "3"])
    captured = capsys.readouterr()
    return code, json.loads(captured.out) if code == 0 else None, captured.err


def http(database: Database, image_id: int, pretrained: str | None) -> tuple[int, Any]:
    settings = Settings.resolve(database_url=database.url, model=TINY_MODEL, pretrained=pretrained)
    with TestClient(create_app(settings, preload=False), base_url="http://127.0.0.1") as client:
        response = client.get(f"/api/similar/{image_id}", params={"k": 3})
    return response.status_code, response.json()


def test_one_weights_indexed_cli_and_http_search_them(
    database: Database, capsys: pytest.CaptureFixture[str]
) -> None:
    ids = add_rows(database, "none", "/a")
    code, hits, _ = cli(capsys, "--like", str(ids[0]), "--model", TINY_MODEL)
    status, served = http(database, ids[0], None)
    assert (code, status) == (0, 200)
    assert [h["image_id"] for h in hits] == [h["image_id"] for h in served]
    assert {h["image_id"] for h in hits} <= set(ids)


def test_several_weights_without_pretrained_is_the_same_error_in_both(
    database: Database, capsys: pytest.CaptureFixture[str]
) -> None:
    ids = add_rows(database, "none", "/a")
    add_rows(database, OTHER_WEIGHTS, "/b")
    code, _, err = cli(capsys, "--like", str(ids[0]), "--model", TINY_MODEL)
    status, served = http(database, ids[0], None)
    assert (code, status) == (1, 503)
    assert "several weights of clipdb-tiny are indexed" in err
    assert "several weights of clipdb-tiny are indexed" in served["detail"]


def test_pretrained_names_the_rows_in_both(
    database: Database, capsys: pytest.CaptureFixture[str]
) -> None:
    none_ids = add_rows(database, "none", "/a")
    add_rows(database, OTHER_WEIGHTS, "/b")
    code, hits, _ = cli(capsys, "--like", str(none_ids[1]), "--model", TINY_MODEL,
                        "--pretrained", "none")  # fmt: skip
    status, served = http(database, none_ids[1], "none")
    assert (code, status) == (0, 200)
    assert [h["image_id"] for h in hits] == [h["image_id"] for h in served]
    assert {h["image_id"] for h in hits} <= set(none_ids)


def test_policy_prefers_the_standard_weights_when_several_are_indexed(database: Database) -> None:
    with database.connect() as conn:
        for pretrained, prefix in (("none", "/a"), ("openai", "/b")):
            model = register_model(conn, "ViT-B-32", pretrained, 4)
            vector = np.array([1, 0, 0, 0], dtype=np.float32)
            upsert_images(conn, model, [ImageRecord(f"{prefix}/x.jpg", bytes(32), 1, 1, 1, 1,
                                                    vector)])  # fmt: skip
        conn.commit()
        chosen = choose_model(conn, Settings.resolve(model="ViT-B/32"))
    assert chosen.pretrained == "openai"
