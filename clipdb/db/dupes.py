"""Reads for duplicate finding: rows with their pHash, exact/near pairs, similar-tier pairs.

Near and exact pairs come from ``clipdb.duplicates`` (migrations/versions/0007), so other apps
and ``clipdb dupes`` share one definition. Similar pairs come from the model's HNSW index: each
image's k nearest neighbours (one LATERAL index scan per image), never all pairs.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psycopg

from clipdb.db.paths import PATH_KEY, key, prefix_range
from clipdb.db.queries import ID_CHUNK
from clipdb.db.registry import Model
from clipdb.files import fs_path

# (first bit, width) of the pHash bands with a B-tree index each (migrations/versions/0007).
PHASH_BANDS = ((1, 22), (23, 21), (44, 21))


@dataclass(frozen=True)
class DupeRow:
    """One indexed image as duplicate finding needs it."""

    image_id: int
    path: str  # file system path (exact bytes for non-UTF-8 names)
    sha256: bytes
    size: int
    mtime_ns: int
    width: int
    height: int
    phash: int | None  # clipdb.phash as a signed int64
    # EXIF fields known (taken_at, camera, lens, place: 0..4), a keep-best tie-breaker.
    exif_fields: int = 0


def dupe_rows(
    conn: psycopg.Connection[Any], model: Model, prefixes: list[str] | None = None
) -> list[DupeRow]:
    """This model's rows (all, or those whose path starts with one of ``prefixes``); one per
    file: a video by its first frame (its frames share the file's sha256, and are not
    duplicates of each other)."""
    sql = (
        f"SELECT DISTINCT ON ({PATH_KEY}) "
        "id, path, path_bytes, sha256, size, mtime_ns, width, height, phash::bigint, "
        "num_nonnulls(taken_at, camera, lens, lat) "
        f"FROM clipdb.images WHERE model_id = {int(model.model_id)}"
    )
    params: tuple[Any, ...] = ()
    if prefixes is not None:
        # A root itself (a file) or anything below it (a directory).
        # By exact name bytes (a display form can be spelled by another name too).
        sql += (
            f" AND ({PATH_KEY} = ANY(%s) OR EXISTS (SELECT FROM unnest(%s::bytea[], %s::bytea[])"
            f" r(low, high) WHERE {PATH_KEY} >= r.low AND {PATH_KEY} < r.high))"
        )
        ranges = [prefix_range(key(p.rstrip("/") + "/")) for p in prefixes]
        params = ([key(p) for p in prefixes], [r[0] for r in ranges], [r[1] for r in ranges])
    sql += f" ORDER BY {PATH_KEY}, frame_time NULLS FIRST"
    return [
        DupeRow(row_id, fs_path(path, raw), bytes(sha), size, mtime, width, height, value, exif)
        for row_id, path, raw, sha, size, mtime, width, height, value, exif in conn.execute(
            sql, params
        )
    ]


def pairs(
    conn: psycopg.Connection[Any], model: Model, tier: str, max_distance: int
) -> Iterator[tuple[int, int, int]]:
    """(image_id, other_id, distance) from ``clipdb.duplicates`` for this model."""
    model_row = conn.execute(
        "SELECT architecture, pretrained FROM clipdb.models WHERE id = %s", (model.model_id,)
    ).fetchone()
    assert model_row is not None
    with conn.cursor() as cur:
        cur.execute(
            "SELECT image_id, other_id, distance FROM clipdb.duplicates(%s, %s, %s, %s)",
            (tier, max_distance, *model_row),
        )
        yield from cur


def similar_pairs(
    conn: psycopg.Connection[Any],
    model: Model,
    threshold: float,
    k: int,
    ef_search: int = 100,
) -> Iterator[tuple[int, int, float]]:
    """(image_id, other_id, cosine similarity) for each image's ``k`` nearest neighbours by
    the model's HNSW index (halfvec ranking, exact float32 similarity) at >= ``threshold``."""
    dim, model_id = int(model.dim), int(model.model_id)
    indexed = f"b.embedding::halfvec({dim}) <=> a.embedding::vector({dim})::halfvec({dim})"
    exact = f"b.embedding::vector({dim}) <=> a.embedding::vector({dim})"
    sql = (
        f"SELECT a.id, n.id, 1 - n.d FROM clipdb.images a CROSS JOIN LATERAL ("
        f"  SELECT b.id, {exact} AS d FROM clipdb.images b WHERE b.model_id = {model_id}"
        f"  ORDER BY {indexed} LIMIT %s) n "
        f"WHERE a.model_id = {model_id} AND n.id <> a.id AND 1 - n.d >= %s"
    )
    with conn.transaction(), conn.cursor() as cur:
        cur.execute("SELECT set_config('hnsw.ef_search', %s, true)", (str(max(ef_search, k)),))
        cur.execute(sql, (k + 1, threshold))
        yield from cur


def similarities(
    conn: psycopg.Connection[Any], model: Model, pairs: list[tuple[int, int]]
) -> dict[tuple[int, int], float]:
    """Cosine similarity (exact, float32) of each (image_id, other_id) pair."""
    dim = int(model.dim)
    found: dict[tuple[int, int], float] = {}
    for offset in range(0, len(pairs), ID_CHUNK):
        chunk = pairs[offset : offset + ID_CHUNK]
        for a, b, similarity in conn.execute(
            f"SELECT p.a, p.b, 1 - (x.embedding::vector({dim}) <=> y.embedding::vector({dim})) "
            "FROM unnest(%s::bigint[], %s::bigint[]) p(a, b) "
            "JOIN clipdb.images x ON x.id = p.a JOIN clipdb.images y ON y.id = p.b",
            ([a for a, _ in chunk], [b for _, b in chunk]),
        ):
            found[(a, b)] = float(similarity)
    return found


def indexed_trees(conn: psycopg.Connection[Any], model: Model) -> list[str]:
    """The directories directly holding this model's images (a ``--move-to`` inside one of
    them would put moved files back into the index)."""
    model_id = int(model.model_id)
    found = {
        directory
        for (directory,) in conn.execute(
            "SELECT DISTINCT regexp_replace(path, '/[^/]*$', '') FROM clipdb.images "
            f"WHERE model_id = {model_id} AND path_bytes IS NULL"
        )
    }
    # A name that is not UTF-8 has only a display form in path: its directory comes from the
    # exact bytes, split here (PostgreSQL has no regexp over bytea).
    found.update(
        os.path.dirname(fs_path("", raw))
        for (raw,) in conn.execute(
            f"SELECT path_bytes FROM clipdb.images WHERE model_id = {model_id} "
            "AND path_bytes IS NOT NULL"
        )
    )
    return sorted(found)


def neighbour_pairs(
    conn: psycopg.Connection[Any], model: Model, ids: list[int], max_distance: int
) -> list[tuple[int, int]]:
    """(id, other) for each of ``ids`` and every row of the model that is its exact (same
    sha256) or near (pHash within ``max_distance``, 0..7) duplicate: one hop, by index."""
    model_id = int(model.model_id)
    radius = int(max_distance) // 3
    branches = [
        f"SELECT a.id, b.id FROM clipdb.images a JOIN clipdb.images b ON b.model_id = {model_id} "
        "AND b.sha256 = a.sha256 AND b.id <> a.id WHERE a.id = ANY(%(ids)s)"
    ]
    for first, width in PHASH_BANDS:  # the band indexes of migrations/versions/0007
        band = f"substring({{}}.phash FROM {first} FOR {width})"
        branches.append(
            f"SELECT a.id, b.id FROM clipdb.images a "
            f"CROSS JOIN clipdb.phash_band_masks({width}, {radius}) m(mask) "
            f"JOIN clipdb.images b ON b.model_id = {model_id} AND b.phash IS NOT NULL "
            f"AND {band.format('b')} = ({band.format('a')} # m.mask::bit({width})) "
            "AND b.id <> a.id AND bit_count(a.phash # b.phash) <= %(d)s "
            "WHERE a.id = ANY(%(ids)s) AND a.phash IS NOT NULL"
        )
    sql = " UNION ".join(branches)
    return [(a, b) for a, b in conn.execute(sql, {"ids": list(ids), "d": int(max_distance)})]


def rows_by_id(conn: psycopg.Connection[Any], ids: list[int]) -> list[DupeRow]:
    """The rows of ``ids`` as :class:`DupeRow`."""
    return [
        DupeRow(row_id, fs_path(path, raw), bytes(sha), size, mtime, width, height, value, exif)
        for row_id, path, raw, sha, size, mtime, width, height, value, exif in conn.execute(
            "SELECT id, path, path_bytes, sha256, size, mtime_ns, width, height, phash::bigint, "
            "num_nonnulls(taken_at, camera, lens, lat) "
            "FROM clipdb.images WHERE id = ANY(%s)",
            (list(ids),),
        )
    ]


def query_similarities(
    conn: psycopg.Connection[Any], model: Model, ids: list[int], query: Any
) -> dict[int, float]:
    """Exact cosine similarity of rows ``ids`` to ``query``."""
    dim = int(model.dim)
    return {
        row_id: float(similarity)
        for row_id, similarity in conn.execute(
            f"SELECT id, 1 - (embedding::vector({dim}) <=> %s::vector({dim})) "
            "FROM clipdb.images WHERE id = ANY(%s)",
            (query, list(ids)),
        )
    }
