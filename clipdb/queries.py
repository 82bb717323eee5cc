"""SQL shared by every reader and writer: the model registry and the top-k query.

The top-k SQL writes the model's integer id and dimension into the statement text. Both come
from ``clipdb.models`` (our registry), never from user input; everything a user gives is a bound
parameter. The literal id is what lets a prepared statement's generic plan use the model's
partial HNSW index (see migrations/versions/0001_initial.py).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import psycopg

from clipdb.errors import ClipdbError


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


@dataclass(frozen=True)
class Hit:
    """One search result, in the original tool's result format plus the row id."""

    rank: int
    image_path: str
    similarity: float
    image_id: int

    @property
    def filename(self) -> str:
        return os.path.basename(self.image_path)

    def to_dict(self) -> dict[str, Any]:
        """``{"rank", "image_path", "similarity", "filename"}`` (+ ``image_id``)."""
        data = asdict(self)
        data["filename"] = self.filename
        return data


_MODEL_COLUMNS = "id, architecture, pretrained, dim"


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
    rows = conn.execute(f"SELECT {_MODEL_COLUMNS} FROM clipdb.models ORDER BY id").fetchall()
    return [Model(*row) for row in rows]


def models_with_rows(conn: psycopg.Connection[Any]) -> list[tuple[Model, int]]:
    rows = conn.execute(
        f"""SELECT {", ".join("m." + c for c in _MODEL_COLUMNS.split(", "))}, count(i.id)
            FROM clipdb.models m JOIN clipdb.images i ON i.model_id = m.id
            GROUP BY m.id ORDER BY m.id"""
    ).fetchall()
    return [(Model(*row[:4]), row[4]) for row in rows]


def find_model(conn: psycopg.Connection[Any], architecture: str, pretrained: str | None) -> Model:
    """The registered model with rows to search; a clear error listing the others if none."""
    candidates = [
        (model, count)
        for model, count in models_with_rows(conn)
        if model.architecture == architecture and pretrained in (None, model.pretrained)
    ]
    if len(candidates) == 1:
        return candidates[0][0]
    available = ", ".join(f"{m} [{n} images]" for m, n in models_with_rows(conn))
    wanted = architecture if pretrained is None else f"{architecture} ({pretrained})"
    if not candidates:
        if not available:
            raise ClipdbError("the database has no indexed images yet; run python -m clipdb.ingest")
        raise ClipdbError(f"no images indexed with model {wanted}; indexed models: {available}")
    raise ClipdbError(
        f"several weights of {architecture} are indexed ({available}); pass --pretrained"
    )


def topk_sql(model: Model, *, under: bool = False, threshold: bool = False) -> str:
    """The top-k statement for ``model``, served by its partial HNSW index."""
    dim, model_id = int(model.dim), int(model.model_id)
    # The index ranks candidates by a halfvec copy (clipdb.model_index_ddl); results are
    # ordered, filtered and reported by the exact float32 distance.
    exact = f"embedding::vector({dim}) <=> %(query)s::vector({dim})"
    indexed = f"embedding::halfvec({dim}) <=> %(query)s::vector({dim})::halfvec({dim})"
    filters = [f"model_id = {model_id}"]
    if under:
        filters.append("starts_with(path, %(under)s)")
    if threshold:
        filters.append(f"({exact}) <= %(max_distance)s")
    return (
        f"SELECT id, path, 1 - distance FROM ("
        f"SELECT id, path, {exact} AS distance FROM clipdb.images "
        f"WHERE {' AND '.join(filters)} ORDER BY {indexed} LIMIT %(k)s"
        f") nearest ORDER BY distance, id"
    )


def under_prefix(directory: str | os.PathLike[str]) -> str:
    """The path prefix that selects files under ``directory`` (and not ``directory-2``)."""
    return os.path.join(os.path.abspath(os.fspath(directory)), "")


def search_vector(
    conn: psycopg.Connection[Any],
    model: Model,
    query: np.ndarray,
    k: int,
    *,
    ef_search: int | None = None,
    under: str | os.PathLike[str] | None = None,
    threshold: float | None = None,
) -> list[Hit]:
    """Top-k rows of ``model`` nearest to ``query`` (cosine), best first."""
    vector = np.asarray(query, dtype=np.float32).reshape(-1)
    if vector.shape[0] != model.dim:
        raise ClipdbError(f"query has {vector.shape[0]} dimensions, model {model} has {model.dim}")
    params: dict[str, Any] = {"query": vector, "k": int(k)}
    if under is not None:
        params["under"] = under_prefix(under)
    if threshold is not None:
        params["max_distance"] = 1.0 - float(threshold)
    sql = topk_sql(model, under=under is not None, threshold=threshold is not None)
    filtered = under is not None or threshold is not None
    with conn.transaction():
        if ef_search is not None:
            conn.execute("SELECT set_config('hnsw.ef_search', %s, true)", (str(int(ef_search)),))
        if filtered:
            # Filters apply after the HNSW scan; iterative scans keep going until k rows pass.
            conn.execute("SELECT set_config('hnsw.iterative_scan', 'relaxed_order', true)")
        # A filtered statement is never prepared: a generic plan cannot know how selective
        # the prefix is and guesses "few rows", which picks a sequential scan. Planned with
        # the real values, it uses the HNSW index unless the filter really is that selective.
        rows = conn.execute(sql, params, prepare=False if filtered else None).fetchall()
    return [
        Hit(rank=rank, image_path=path, similarity=float(similarity), image_id=image_id)
        for rank, (image_id, path, similarity) in enumerate(rows, start=1)
    ]


def indexed_embedding(conn: psycopg.Connection[Any], model: Model, path_or_id: str) -> np.ndarray:
    """The stored embedding of an indexed image, by absolute/relative path or by row id."""
    row = None
    if path_or_id.isdigit():
        row = conn.execute(
            "SELECT embedding FROM clipdb.images WHERE model_id = %s AND id = %s",
            (model.model_id, int(path_or_id)),
        ).fetchone()
    if row is None:
        row = conn.execute(
            "SELECT embedding FROM clipdb.images WHERE model_id = %s AND path = %s",
            (model.model_id, os.path.abspath(path_or_id)),
        ).fetchone()
    if row is None:
        raise ClipdbError(f"{path_or_id} is not indexed with model {model}")
    value = row[0]  # pgvector >= 0.4 loads a Vector, older versions an ndarray
    return np.asarray(value.to_numpy() if hasattr(value, "to_numpy") else value, dtype=np.float32)
