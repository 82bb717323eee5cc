"""The models side by side: each one's coverage, the database's default model, dropping one.

Why a module of its own: these are the statements of ``clipdb models`` (and the default the
model choice reads), not the registry's get-or-create nor a search.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg

from clipdb.db.registry import Model


@dataclass(frozen=True)
class ModelRow:
    """One model with rows, as ``clipdb models`` shows it."""

    model: Model
    images: int
    covered: int  # of the files the database knows (any model's paths), how many it has
    known: int  # files the database knows: distinct paths over every model
    index_bytes: int
    last_ingest: datetime | None
    default: bool

    @property
    def coverage(self) -> float:
        return 100.0 if self.known == 0 else 100.0 * self.covered / self.known


def default_model(conn: psycopg.Connection[Any]) -> Model | None:
    """The model stored as the default (``clipdb models default``), if one is."""
    row = conn.execute(
        "SELECT m.id, m.architecture, m.pretrained, m.dim FROM clipdb.default_model d "
        "JOIN clipdb.models m ON m.id = d.model_id"
    ).fetchone()
    return Model(*row) if row else None


def has_default_table(conn: psycopg.Connection[Any]) -> bool:
    row = conn.execute("SELECT to_regclass('clipdb.default_model') IS NOT NULL").fetchone()
    return bool(row and row[0])


def set_default_model(conn: psycopg.Connection[Any], model: Model) -> None:
    conn.execute(
        "INSERT INTO clipdb.default_model (one, model_id) VALUES (true, %s) "
        "ON CONFLICT (one) DO UPDATE SET model_id = excluded.model_id, set_at = now()",
        (int(model.model_id),),
    )


def model_rows(conn: psycopg.Connection[Any]) -> list[ModelRow]:
    """Every model with rows: counts, coverage, HNSW index size, last write, default or not.

    Coverage counts distinct paths: one pass over (model_id, path), the unique index."""
    rows = conn.execute(
        """
        WITH known AS (SELECT count(DISTINCT path) AS n FROM clipdb.images),
        per AS (SELECT model_id, count(*) AS images, max(updated_at) AS last_ingest
                FROM clipdb.images GROUP BY model_id)
        SELECT m.id, m.architecture, m.pretrained, m.dim, per.images, known.n,
               coalesce((SELECT pg_relation_size(c.oid) FROM pg_class c
                         WHERE c.relname = 'images_hnsw_model_' || m.id
                           AND c.relnamespace = 'clipdb'::regnamespace), 0),
               per.last_ingest,
               EXISTS (SELECT 1 FROM clipdb.default_model d WHERE d.model_id = m.id)
        FROM clipdb.models m JOIN per ON per.model_id = m.id CROSS JOIN known
        ORDER BY m.id
        """
    ).fetchall()
    return [
        ModelRow(Model(*row[:4]), int(row[4]), int(row[4]), int(row[5]), *row[6:]) for row in rows
    ]


def missing_paths(conn: psycopg.Connection[Any], model: Model, limit: int) -> list[str]:
    """Up to ``limit`` paths another model has and ``model`` does not (what --force loses)."""
    rows = conn.execute(
        """SELECT DISTINCT i.path FROM clipdb.images i
           WHERE i.model_id <> %(id)s AND NOT EXISTS (
               SELECT 1 FROM clipdb.images j WHERE j.model_id = %(id)s AND j.path = i.path)
           ORDER BY i.path LIMIT %(limit)s""",
        {"id": int(model.model_id), "limit": limit},
    ).fetchall()
    return [row[0] for row in rows]


def drop_model(conn: psycopg.Connection[Any], model: Model) -> int:
    """Delete the model, its rows (cascade) and its HNSW index; how many images it had.

    The index goes first (``conn`` in autocommit: DROP INDEX CONCURRENTLY), so the row delete
    does not maintain a graph that is about to be thrown away."""
    from clipdb.db.model_index import drop_model_index

    drop_model_index(conn, model)
    row = conn.execute(
        "WITH gone AS (DELETE FROM clipdb.images WHERE model_id = %(id)s RETURNING 1) "
        "SELECT count(*) FROM gone",
        {"id": int(model.model_id)},
    ).fetchone()
    conn.execute("DELETE FROM clipdb.models WHERE id = %s", (int(model.model_id),))
    return int(row[0]) if row else 0


def known_directories(conn: psycopg.Connection[Any]) -> list[str]:
    """The folders of every file the database knows (any model), each once, sorted."""
    rows = conn.execute(
        "SELECT DISTINCT regexp_replace(path, '/[^/]*$', '') AS folder FROM clipdb.images "
        "ORDER BY folder"
    ).fetchall()
    return [row[0] or "/" for row in rows]
