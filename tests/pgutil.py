"""Test helpers that write rows straight into the schema (no model needed)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np

from clipdb.queries import Model, register_model


def unit_vectors(count: int, dim: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    vectors = rng.normal(size=(count, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def insert_rows(
    conn: Any, architecture: str, dim: int, count: int, *, prefix: str = "/data", seed: int = 0
) -> tuple[Model, np.ndarray, list[str]]:
    """Register a model and insert ``count`` random unit vectors as images under ``prefix``."""
    model = register_model(conn, architecture, "none", dim)
    vectors = unit_vectors(count, dim, seed)
    paths = [f"{prefix}/img_{i:05d}.jpg" for i in range(count)]
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO clipdb.images (model_id, path, sha256, size, mtime_ns, width, height,"
            " embedding) VALUES (%s, %s, %s, 1, 1, 1, 1, %s)",
            [
                (model.model_id, path, hashlib.sha256(path.encode()).digest(), vector)
                for path, vector in zip(paths, vectors, strict=True)
            ],
        )
    conn.commit()
    return model, vectors, paths


def index_images(database: Any, encoder: Any, paths: list[Path]) -> dict[str, int]:
    """Index ``paths`` the way ingest stores them (absolute paths, the model's embeddings of
    the decoded images); returns {path: image id}."""
    from clipdb import files
    from clipdb.store import ImageRecord, upsert_images

    images = [files.open_image(str(path))[0] for path in paths]
    vectors = encoder.encode_pil(images)
    records = [
        ImageRecord(
            path=str(path.resolve()),
            sha256=hashlib.sha256(path.read_bytes()).digest(),
            size=path.stat().st_size,
            mtime_ns=path.stat().st_mtime_ns,
            width=image.width,
            height=image.height,
            embedding=vector,
        )
        for path, image, vector in zip(paths, images, vectors, strict=True)
    ]
    with database.connect() as conn:
        model = register_model(conn, encoder.architecture, encoder.pretrained, encoder.dim)
        upsert_images(conn, model, records)
        conn.commit()
        rows = conn.execute("SELECT path, id FROM clipdb.images").fetchall()
    return dict(rows)
