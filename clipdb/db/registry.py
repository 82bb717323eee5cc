"""The model registry (``clipdb.models``): which open_clip weights made a set of embeddings."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import psycopg

from clipdb.db.paths import PATH_KEY, key
from clipdb.files import split_frame

_COLUMNS = "m.id, m.architecture, m.pretrained, m.dim"


@dataclass(frozen=True)
class Model:
    """A registered model: which open_clip weights made a set of embeddings."""

    model_id: int
    architecture: str
    pretrained: str
    dim: int

    @property
    def index_name(self) -> str:
        return f"images_hnsw_model_{self.model_id}"

    def __str__(self) -> str:
        return f"{self.architecture} ({self.pretrained})"


def register_model(
    conn: psycopg.Connection[Any], architecture: str, pretrained: str, dim: int
) -> Model:
    """Get or create the model's row and HNSW index (idempotent, safe under concurrency)."""
    row = conn.execute(
        "SELECT clipdb.register_model(%s, %s, %s)", (architecture, pretrained, dim)
    ).fetchone()
    assert row is not None
    return Model(row[0], architecture, pretrained, dim)


def list_models(conn: psycopg.Connection[Any]) -> list[Model]:
    rows = conn.execute(f"SELECT {_COLUMNS} FROM clipdb.models m ORDER BY m.id").fetchall()
    return [Model(*row) for row in rows]


def registered_model(
    conn: psycopg.Connection[Any], architecture: str, pretrained: str
) -> Model | None:
    """The registered model with exactly these weights, if any (rows or not)."""
    row = conn.execute(
        f"SELECT {_COLUMNS} FROM clipdb.models m WHERE m.architecture = %s AND m.pretrained = %s",
        (architecture, pretrained),
    ).fetchone()
    return Model(*row) if row else None


def models_with_rows(conn: psycopg.Connection[Any]) -> list[Model]:
    """Models that have at least one image: one index probe per model, not a count."""
    rows = conn.execute(
        f"""SELECT {_COLUMNS} FROM clipdb.models m
            WHERE EXISTS (SELECT 1 FROM clipdb.images i WHERE i.model_id = m.id)
            ORDER BY m.id"""
    ).fetchall()
    return [Model(*row) for row in rows]


def image_counts(conn: psycopg.Connection[Any]) -> list[tuple[Model, int]]:
    """Every model with images and how many (a full count: for error messages and status)."""
    rows = conn.execute(
        f"""SELECT {_COLUMNS}, count(*) FROM clipdb.models m
            JOIN clipdb.images i ON i.model_id = m.id GROUP BY m.id ORDER BY m.id"""
    ).fetchall()
    return [(Model(*row[:4]), row[4]) for row in rows]


def models_indexing(conn: psycopg.Connection[Any], path_or_id: str) -> set[int]:
    """Ids of the models under which an image (absolute/relative path, or row id) is indexed."""
    row_id = int(path_or_id) if path_or_id.isdigit() else None
    rows = conn.execute(
        f"SELECT DISTINCT model_id FROM clipdb.images WHERE {PATH_KEY} = %s OR id = %s",
        (key(os.path.abspath(split_frame(path_or_id)[0])), row_id),
    ).fetchall()
    return {row[0] for row in rows}


def model_statuses(conn: psycopg.Connection[Any]) -> list[tuple[Any, ...]]:
    """Per model: id, architecture, pretrained, dim, image count, index name and bytes."""
    return conn.execute(
        """
        SELECT m.id, m.architecture, m.pretrained, m.dim,
               (SELECT count(*) FROM clipdb.images i WHERE i.model_id = m.id),
               c.relname, pg_relation_size(c.oid)
        FROM clipdb.models m
        LEFT JOIN pg_class c ON c.relname = 'images_hnsw_model_' || m.id
            AND c.relnamespace = 'clipdb'::regnamespace
        ORDER BY m.id
        """
    ).fetchall()
