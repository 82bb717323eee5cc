"""The similar tier's pairs: stored ones read, the rest found once and stored.

Each image's CLIP neighbours at or above the threshold are looked for once per content
(``clipdb.similar_checked``, migration 0017) and kept (``clipdb.similar_pairs``), so a
repeated ``clipdb dupes --tier similar`` or API page reads pairs instead of searching:

- a few images to check (new since the last call, or changed): the model's HNSW index, per
  image (2-9 ms each, no vector leaves the server);
- many (a first call on a library): one pass over every vector in this process
  (:mod:`clipdb.dupes.scan`), ~``sqrt(n)`` times cheaper than n index searches at a million.

A database the caller may not write to (a reader role, a standby) still gets its answer: the
pairs found are used and not kept.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import psycopg

from clipdb.db import dupes as dupe_queries
from clipdb.db import similar as queries
from clipdb.db.registry import Model
from clipdb.dupes import scan

# Up to this many images to check, the HNSW index answers per image (2-9 ms each: ~10 s);
# beyond, a bulk pass over every vector costs less (~1 min at a million vectors).
INDEX_MAX_IMAGES = 2_000


def similar_pairs(
    conn: psycopg.Connection[Any],
    model: Model,
    ids: list[int] | None,
    threshold: float,
    neighbours: int,
) -> list[tuple[int, int, float]]:
    """(image_id, other_id, cosine similarity) pairs at or above ``threshold`` with a member
    among ``ids`` (None: every file of the model), each image's ``neighbours`` nearest at
    most (more where others count it among theirs)."""
    todo, found, kept = _look_up(conn, model, ids, threshold, neighbours)
    stored = queries.stored_pairs(conn, model, ids, threshold)
    if kept or not todo:
        return stored
    # Not stored (read-only): the pairs found, and the stored ones of images checked before.
    fresh = [(a, b, s) for a, b, s in stored if a not in todo and b not in todo]
    return fresh + found


def keep_current(conn: psycopg.Connection[Any], model: Model) -> int:
    """Look up the model's images not checked yet (added or changed since), at the most
    inclusive threshold and neighbour count its marks hold; nothing where the similar tier
    was never asked for. The number of images looked up (ingest runs this after writing,
    so the next ``clipdb dupes --tier similar`` or API page only reads)."""
    setting = queries.checked_setting(conn, model)
    if setting is None:
        return 0
    todo, _, _ = _look_up(conn, model, None, *setting)
    return len(todo)


def _look_up(
    conn: psycopg.Connection[Any],
    model: Model,
    ids: list[int] | None,
    threshold: float,
    neighbours: int,
) -> tuple[set[int], list[tuple[int, int, float]], bool]:
    """The images of ``ids`` not checked yet, the pairs found for them, and whether those
    were stored."""
    todo = queries.unchecked(conn, model, ids, threshold, neighbours)
    if not todo:
        return set(), [], True
    if len(todo) <= INDEX_MAX_IMAGES:
        checked = queries.content_of(conn, todo)
        files = queries.files_among(conn, todo)
        found = list(dupe_queries.knn_pairs(conn, model, files, threshold, neighbours))
    else:
        checked, found = _bulk_pairs(conn, model, todo, threshold, neighbours)
    return set(todo), found, _store(conn, model, checked, found, threshold, neighbours)


def _bulk_pairs(
    conn: psycopg.Connection[Any],
    model: Model,
    todo: list[int],
    threshold: float,
    neighbours: int,
) -> tuple[tuple[np.ndarray, np.ndarray], list[tuple[int, int, float]]]:
    """(the rows of ``todo`` with their sha256s, the pairs found for them) by one pass over
    every vector."""
    rows = queries.model_vectors(conn, model)
    asked = np.isin(rows.ids, np.asarray(todo, dtype=np.int64))
    file_ids = rows.ids[rows.files]
    pairs = scan.similar_pairs(rows.vectors, threshold, neighbours, asked[rows.files])
    found = list(
        zip(
            file_ids[pairs.rows].tolist(),
            file_ids[pairs.others].tolist(),
            pairs.similarity.tolist(),
            strict=True,
        )
    )
    return (rows.ids[asked], rows.sha256[asked]), found


def _store(
    conn: psycopg.Connection[Any],
    model: Model,
    checked: tuple[np.ndarray, np.ndarray],
    found: list[tuple[int, int, float]],
    threshold: float,
    neighbours: int,
) -> bool:
    """Keep the pairs; False where this connection may not write (nothing is changed)."""
    try:
        with conn.transaction():
            queries.store(conn, model, checked, found, threshold, neighbours)
    except (psycopg.errors.InsufficientPrivilege, psycopg.errors.ReadOnlySqlTransaction):
        return False
    return True
