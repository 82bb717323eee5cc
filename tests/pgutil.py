"""Test helpers that write rows straight into the schema (no model needed)."""

from __future__ import annotations

import hashlib
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
