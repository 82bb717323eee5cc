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
    # The capture metadata the row has, of CAPTURE_FIELDS (read from EXIF at ingest,
    # migration 0006): what marks a camera original, which copies made by editors and
    # converters lose.
    metadata: tuple[str, ...] = ()

    @property
    def exif_fields(self) -> int:
        return len(self.metadata)


# One row per file: a photo, or the first frame of a video (its other frames are rows of the
# same file, never its duplicates); the rows `dupe_rows` picks, for a row aliased ``i``.
ONE_PER_FILE = (
    "(i.frame_time IS NULL OR NOT EXISTS (SELECT FROM clipdb.images f "
    "WHERE f.model_id = i.model_id AND clipdb.path_key(f.path, f.path_bytes) = "
    "clipdb.path_key(i.path, i.path_bytes) AND f.frame_time < i.frame_time))"
)


# The capture metadata columns, by the name users see.
CAPTURE_FIELDS = ("date", "camera", "lens", "GPS")
_ROW_COLUMNS = (
    "id, path, path_bytes, sha256, size, mtime_ns, width, height, phash::bigint, "
    "taken_at IS NOT NULL, camera IS NOT NULL, lens IS NOT NULL, lat IS NOT NULL"
)


def _dupe_row(values: tuple[Any, ...]) -> DupeRow:
    row_id, path, raw, sha, size, mtime, width, height, value, *flags = values
    metadata = tuple(name for name, known in zip(CAPTURE_FIELDS, flags, strict=True) if known)
    return DupeRow(
        row_id, fs_path(path, raw), bytes(sha), size, mtime, width, height, value, metadata
    )


def dupe_rows(
    conn: psycopg.Connection[Any], model: Model, prefixes: list[str] | None = None
) -> list[DupeRow]:
    """This model's rows (all, or those whose path starts with one of ``prefixes``); one per
    file: a video by its first frame (its frames share the file's sha256, and are not
    duplicates of each other)."""
    sql = (
        f"SELECT DISTINCT ON ({PATH_KEY}) {_ROW_COLUMNS} "
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
    return [_dupe_row(values) for values in conn.execute(sql, params)]


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


# Images whose neighbours one statement asks the HNSW index for: a batch is one round trip
# and holds only the pairs at or above the threshold.
KNN_BATCH = 1000
# The HNSW candidate list per image. Shorter lists are faster but miss pairs: on 100k random
# 512-d vectors, ef 20 / 40 / 100 found 90% / 94% / 100% of the planted pairs at 2.3 / 3.9 /
# 8.5 ms an image (BENCHMARKS.md, "Duplicates: the similar tier"); finding every pair wins.
KNN_EF_SEARCH = 100
# Row b is a photo, or a frame of a different file than row a (a video's frames are rows of
# one file: pairing them would offer a video as a duplicate of itself).
_FRAME_OF_OTHER_FILE = (
    "b.frame_time IS NULL OR clipdb.path_key(b.path, b.path_bytes) "
    "<> clipdb.path_key(a.path, a.path_bytes)"
)


def knn_sql(dim: int, model_id: int) -> str:
    """The k-nearest-neighbours statement (parameters: ids, k, threshold): one LATERAL HNSW
    scan per image of the batch, ranked by the very expression the model's index is built on
    (``clipdb.model_index_ddl``: ``embedding::halfvec(dim)`` with cosine ops), similarity
    exact in float32. The one place that spells the index expression for duplicates."""
    indexed = f"b.embedding::halfvec({dim}) <=> a.embedding::vector({dim})::halfvec({dim})"
    exact = f"b.embedding::vector({dim}) <=> a.embedding::vector({dim})"
    return (
        f"SELECT a.id, n.id, 1 - n.d FROM clipdb.images a CROSS JOIN LATERAL ("
        f"  SELECT b.id, {exact} AS d FROM clipdb.images b WHERE b.model_id = {model_id}"
        # A video's other frames are the same file, never its duplicates.
        f"  AND ({_FRAME_OF_OTHER_FILE})"
        f"  ORDER BY {indexed} LIMIT %s) n "
        f"WHERE a.id = ANY(%s) AND a.model_id = {model_id} AND n.id <> a.id AND 1 - n.d >= %s"
    )


def knn_pairs(
    conn: psycopg.Connection[Any],
    model: Model,
    ids: list[int] | None,
    threshold: float,
    k: int,
    ef_search: int = KNN_EF_SEARCH,
    batch: int = KNN_BATCH,
) -> Iterator[tuple[int, int, float]]:
    """(image_id, other_id, cosine similarity) for each of ``ids``' (None: every row's) ``k``
    nearest neighbours by the model's HNSW index at >= ``threshold``, ``batch`` images a
    statement."""
    model_id = int(model.model_id)
    if ids is None:
        ids = [
            row_id
            for (row_id,) in conn.execute(
                f"SELECT id FROM clipdb.images WHERE model_id = {model_id} ORDER BY id"
            )
        ]
    sql = knn_sql(int(model.dim), model_id)
    for offset in range(0, len(ids), batch):
        with conn.transaction(), conn.cursor() as cur:
            cur.execute("SELECT set_config('hnsw.ef_search', %s, true)", (str(max(ef_search, k)),))
            cur.execute(sql, (k + 1, ids[offset : offset + batch], threshold))
            yield from cur.fetchall()


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
    conn: psycopg.Connection[Any], model: Model, ids: list[int], max_distance: int | None
) -> list[tuple[int, int]]:
    """(id, other) for each of ``ids`` and every row of the model that is its exact (same
    sha256) or near (pHash within ``max_distance``, 0..8; None: exact only) duplicate: one
    hop, by index."""
    model_id = int(model.model_id)
    radius = int(max_distance or 0) // 3
    branches = [
        f"SELECT a.id, b.id FROM clipdb.images a JOIN clipdb.images b ON b.model_id = {model_id} "
        f"AND b.sha256 = a.sha256 AND b.id <> a.id AND ({_FRAME_OF_OTHER_FILE}) "
        "WHERE a.id = ANY(%(ids)s)"
    ]
    for first, width in PHASH_BANDS if max_distance is not None else ():  # migration 0007
        band = f"substring({{}}.phash FROM {first} FOR {width})"
        branches.append(
            f"SELECT a.id, b.id FROM clipdb.images a "
            f"CROSS JOIN clipdb.phash_band_masks({width}, {radius}) m(mask) "
            f"JOIN clipdb.images b ON b.model_id = {model_id} AND b.phash IS NOT NULL "
            f"AND {band.format('b')} = ({band.format('a')} # m.mask::bit({width})) "
            f"AND b.id <> a.id AND ({_FRAME_OF_OTHER_FILE}) "
            "AND bit_count(a.phash # b.phash) <= %(d)s "
            "WHERE a.id = ANY(%(ids)s) AND a.phash IS NOT NULL"
        )
    sql = " UNION ".join(branches)
    found = conn.execute(sql, {"ids": list(ids), "d": int(max_distance or 0)})
    return [(a, b) for a, b in found]


def rows_by_id(
    conn: psycopg.Connection[Any], ids: list[int], *, one_per_file: bool = False
) -> list[DupeRow]:
    """The rows of ``ids`` as :class:`DupeRow` (``one_per_file``: only those ``dupe_rows``
    would pick, a video by its first frame)."""
    only = f"AND {ONE_PER_FILE}" if one_per_file else ""
    return [
        _dupe_row(values)
        for values in conn.execute(
            f"SELECT {_ROW_COLUMNS} FROM clipdb.images i WHERE id = ANY(%s) {only}", (list(ids),)
        )
    ]


def file_counts(conn: psycopg.Connection[Any], model: Model) -> tuple[int, int]:
    """(files, files without a pHash) of the model: one row per file, as ``dupe_rows``."""
    found = conn.execute(
        f"SELECT count(*), count(*) FILTER (WHERE phash IS NULL) FROM clipdb.images i "
        f"WHERE model_id = %s AND {ONE_PER_FILE}",
        (model.model_id,),
    ).fetchone()
    assert found is not None
    return int(found[0]), int(found[1])


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
