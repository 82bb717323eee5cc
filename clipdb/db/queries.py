"""Every read of ``clipdb.images``: the top-k query, stored vectors, what ingest compares against.

The top-k SQL writes the model's integer id and dimension into the statement text. Both come
from ``clipdb.models`` (our registry), never from user input; everything a user gives is a bound
parameter. The literal id is what lets a prepared statement's generic plan use the model's
partial HNSW index (see migrations/versions/0001_initial.py).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from typing import Any, NamedTuple

import numpy as np
import psycopg

from clipdb.config import MAX_RESULTS
from clipdb.db.paths import PATH_KEY, key, prefix_range
from clipdb.db.registry import Model
from clipdb.errors import ClipdbError, UsageError
from clipdb.exif import METADATA_VERSION
from clipdb.files import fs_path
from clipdb.filters import NO_FILTERS, Filters

EF_SEARCH_MAX = 1000  # pgvector refuses a larger hnsw.ef_search
PGVECTOR_DEFAULT_EF_SEARCH = 40


@dataclass(frozen=True)
class Hit:
    """One search result, in the original tool's result format plus the row id."""

    rank: int
    image_path: str
    similarity: float
    image_id: int
    # Photo metadata (clipdb.exif); None when unknown. Always in to_dict().
    taken_at: datetime | None = None
    camera: str | None = None
    lat: float | None = None
    lon: float | None = None
    # taken_at is the camera's wall clock stored as if UTC (EXIF without OffsetTimeOriginal).
    taken_at_naive: bool = False
    # The exact name bytes when the name is not UTF-8 (image_path is then a display form, which
    # another name can spell too); never in to_dict().
    path_bytes: bytes | None = field(default=None, repr=False)

    @property
    def file_path(self) -> str:
        """The path as the file system knows it (what ``--paths --null`` prints)."""
        return fs_path(self.image_path, self.path_bytes)

    @property
    def filename(self) -> str:
        return os.path.basename(self.image_path)

    @property
    def has_metadata(self) -> bool:
        return self.taken_at is not None or self.camera is not None or self.lat is not None

    def to_dict(self) -> dict[str, Any]:
        """``{"rank", "image_path", "similarity", "filename"}`` (+ ``image_id``, and
        ``taken_at`` (ISO 8601), ``camera``, ``lat``, ``lon``: null when unknown;
        ``taken_at_naive``: true when taken_at is a wall clock of unknown time zone)."""
        data = asdict(self)
        del data["path_bytes"]
        data["filename"] = self.filename
        data["taken_at"] = self.taken_at.isoformat() if self.taken_at is not None else None
        return data


# Metadata filters (clipdb.filters.Filters.sql_params); a NULL parameter switches one off.
_METADATA_FILTER = """
    (%(after)s::timestamptz IS NULL OR taken_at >= %(after)s::timestamptz)
    AND (%(before)s::timestamptz IS NULL OR taken_at < %(before)s::timestamptz)
    AND (%(camera)s::text IS NULL OR strpos(lower(camera), lower(%(camera)s::text)) > 0)
    AND (%(near_lat)s::float8 IS NULL OR (
        lat BETWEEN %(near_lat)s::float8 - %(near_dlat)s::float8
            AND %(near_lat)s::float8 + %(near_dlat)s::float8
        AND 2 * 6371.0088 * asin(least(1.0, sqrt(
            sin(radians(lat - %(near_lat)s::float8) / 2) ^ 2
            + cos(radians(%(near_lat)s::float8)) * cos(radians(lat))
              * sin(radians(lon - %(near_lon)s::float8) / 2) ^ 2))) <= %(near_km)s::float8))
"""


def topk_sql(
    model: Model,
    *,
    under: bool = False,
    threshold: bool = False,
    metadata: bool = False,
    exact_scan: bool = False,
) -> str:
    """The top-k statement for ``model``, served by its partial HNSW index.

    ``metadata``: the date/camera/place filters too. ``exact_scan``: ranked by the exact
    distance, which no index serves (the fallback for filters too selective for the index).
    """
    dim, model_id = int(model.dim), int(model.model_id)
    # The index ranks candidates by a halfvec copy (clipdb.model_index_ddl); results are
    # ordered, filtered and reported by the exact float32 distance.
    exact = f"embedding::vector({dim}) <=> %(query)s::vector({dim})"
    indexed = f"embedding::halfvec({dim}) <=> %(query)s::vector({dim})::halfvec({dim})"
    filters = [f"model_id = {model_id}"]
    if under:
        # By exact name bytes: a display form can be spelled by another name too.
        filters.append(f"{PATH_KEY} >= %(under_low)s AND {PATH_KEY} < %(under_high)s")
    if threshold:
        filters.append(f"({exact}) <= %(max_distance)s")
    if metadata:
        filters.append(f"({_METADATA_FILTER})")
    order = f"{exact}, id" if exact_scan else indexed
    return (
        f"SELECT id, path, 1 - distance, taken_at, camera, lat, lon, taken_at_naive, path_bytes "
        f"FROM (SELECT id, path, {exact} AS distance, taken_at, camera, lat, lon, "
        "taken_at_naive, path_bytes FROM clipdb.images "
        f"WHERE {' AND '.join(filters)} ORDER BY {order} LIMIT %(k)s"
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
    filters: Filters | None = None,
) -> list[Hit]:
    """Top-k rows of ``model`` nearest to ``query`` (cosine), best first.

    ``k`` may exceed ``ef_search`` (even pgvector's maximum of 1000): the scan then goes on
    iteratively until k rows came, so a large k still returns k rows. ``filters``: metadata
    filters, ``within``, ``sort`` and ``offset`` (clipdb.filters).
    """
    check_result_count(k)
    filters = filters or NO_FILTERS
    vector = np.asarray(query, dtype=np.float32).reshape(-1)
    if vector.shape[0] != model.dim:
        raise ClipdbError(f"query has {vector.shape[0]} dimensions, model {model} has {model.dim}")
    # The page is hits offset..offset+k of one ordering, so offset+k are fetched.
    wanted = k + filters.offset
    params: dict[str, Any] = {"query": vector, "k": wanted, **filters.sql_params()}
    if under is not None:
        params["under_low"], params["under_high"] = prefix_range(key(under_prefix(under)))
    if threshold is not None:
        params["max_distance"] = 1.0 - float(threshold)
    narrows = filters.narrows
    flags = {"under": under is not None, "threshold": threshold is not None, "metadata": narrows}
    sql = topk_sql(model, **flags)
    filtered = under is not None or threshold is not None or narrows
    ef = min(int(ef_search), EF_SEARCH_MAX) if ef_search is not None else None
    deep = wanted > (ef or PGVECTOR_DEFAULT_EF_SEARCH)
    with conn.transaction():
        if ef is not None:
            conn.execute("SELECT set_config('hnsw.ef_search', %s, true)", (str(ef),))
        if filtered or deep:
            # Filters apply after the HNSW scan, and one scan yields at most ef_search rows:
            # iterative scans keep going until k rows pass. Results are re-ordered by exact
            # distance outside, so relaxed order is enough.
            conn.execute("SELECT set_config('hnsw.iterative_scan', 'relaxed_order', true)")
        if deep or narrows:
            # A 1% filter needs ~100 tuples scanned per hit: enough for that, bounded.
            tuples = max(20_000, 4 * wanted, 200 * wanted if narrows else 0)
            conn.execute(
                "SELECT set_config('hnsw.max_scan_tuples', %s, true)", (str(min(tuples, 500_000)),)
            )
        # A filtered statement is never prepared: a generic plan cannot know how selective
        # the prefix is and guesses "few rows", which picks a sequential scan. Planned with
        # the real values, it uses the HNSW index unless the filter really is that selective.
        rows = conn.execute(sql, params, prepare=False if filtered else None).fetchall()
        if narrows and len(rows) < wanted:
            # The iterative scan stopped before k matches (max_scan_tuples): the filter is
            # too selective for the index, so the few matching rows are ranked exactly.
            rows = conn.execute(
                topk_sql(model, **flags, exact_scan=True), params, prepare=False
            ).fetchall()
    return arrange(
        [_hit(rank, row) for rank, row in enumerate(rows, start=1)],
        k,
        filters,
    )


def arrange(hits: list[Hit], k: int, filters: Filters) -> list[Hit]:
    """Apply ``within``, ``sort`` and ``offset`` to hits fetched best first.

    ``within`` D keeps hits at least as similar as the best one minus D. ``sort`` date/-date
    orders the relevant set (the best offset+k hits, after filters and cutoffs) by date,
    undated last, ties by similarity then id; ``offset`` then takes k of that ordering.
    Ranks are positions in the ordering (1-based, counting the offset).
    """
    if filters.within is not None and hits:
        floor = hits[0].similarity - filters.within
        hits = [hit for hit in hits if hit.similarity >= floor - 1e-9]
    if filters.sort != "relevance":
        newest_first = filters.sort == "-date"
        dated = [hit for hit in hits if hit.taken_at is not None]
        undated = [hit for hit in hits if hit.taken_at is None]
        dated.sort(key=lambda h: (-h.similarity, h.image_id))
        dated.sort(key=lambda h: h.taken_at or datetime.min, reverse=newest_first)
        hits = dated + undated
    page = hits[filters.offset : filters.offset + k]
    return [replace(hit, rank=rank) for rank, hit in enumerate(page, start=filters.offset + 1)]


def _hit(rank: int, row: tuple[Any, ...]) -> Hit:
    """A result row of topk_sql's SELECT as a Hit."""
    image_id, path, similarity, taken_at, camera, lat, lon, naive, raw = row
    return Hit(
        rank,
        path,
        float(similarity),
        image_id,
        taken_at,
        camera,
        lat,
        lon,
        naive,
        raw and bytes(raw),
    )


def check_result_count(k: int) -> None:
    """The one result limit: 1..MAX_RESULTS, everywhere."""
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_RESULTS:
        raise UsageError(f"the number of results must be 1 to {MAX_RESULTS}, not {k!r}")


def indexed_embedding(conn: psycopg.Connection[Any], model: Model, path_or_id: str) -> np.ndarray:
    """The stored embedding of an indexed image, by absolute/relative path or by row id."""
    found = None
    if path_or_id.isdigit():
        found = embedding_by_id(conn, model, int(path_or_id))
    if found is None:
        row = conn.execute(
            f"SELECT embedding FROM clipdb.images WHERE model_id = %s AND {PATH_KEY} = %s",
            (model.model_id, key(os.path.abspath(path_or_id))),
        ).fetchone()
        found = as_array(row[0]) if row else None
    if found is None:
        raise ClipdbError(f"{path_or_id} is not indexed with model {model}")
    return found


def embedding_by_id(
    conn: psycopg.Connection[Any], model: Model, image_id: int
) -> np.ndarray | None:
    """The stored embedding of row ``image_id`` of ``model``, or None."""
    row = conn.execute(
        "SELECT embedding FROM clipdb.images WHERE model_id = %s AND id = %s",
        (model.model_id, image_id),
    ).fetchone()
    return as_array(row[0]) if row else None


def as_array(value: Any) -> np.ndarray:
    """A stored vector as float32 (pgvector >= 0.4 loads a Vector, older versions an ndarray)."""
    return np.asarray(value.to_numpy() if hasattr(value, "to_numpy") else value, dtype=np.float32)


def indexed_path(conn: psycopg.Connection[Any], model: Model, path_or_id: str) -> str | None:
    """The stored path of an indexed image given by path or row id (an id wins)."""
    absolute = key(os.path.abspath(path_or_id))
    row_id = int(path_or_id) if path_or_id.isdigit() else None
    row = conn.execute(
        f"SELECT path FROM clipdb.images WHERE model_id = %s AND (id = %s OR {PATH_KEY} = %s) "
        "ORDER BY (id = %s) DESC LIMIT 1",
        (model.model_id, row_id, absolute, row_id),
    ).fetchone()
    return row[0] if row else None


def image_file(conn: psycopg.Connection[Any], image_id: int) -> tuple[str, int, int, bytes] | None:
    """(path, size, mtime_ns, sha256) of row ``image_id`` (any model): the file as the file
    system names it (its exact bytes for a name that is not UTF-8), which the server may read,
    and the identity it must still have to be served."""
    row = conn.execute(
        "SELECT path, path_bytes, size, mtime_ns, sha256 FROM clipdb.images WHERE id = %s",
        (image_id,),
    ).fetchone()
    if row is None:
        return None
    return (fs_path(row[0], row[1]), int(row[2]), int(row[3]), bytes(row[4]))


# --- what ingest compares the scan against ------------------------------------------------------

ID_CHUNK = 10_000  # paths / hashes per "= ANY(%s)" lookup


def has_rows(conn: psycopg.Connection[Any], model: Model) -> bool:
    query = f"SELECT EXISTS (SELECT 1 FROM clipdb.images WHERE model_id = {int(model.model_id)})"
    row = conn.execute(query).fetchone()
    return bool(row and row[0])


class FileRow(NamedTuple):
    """What a plan needs of one row: its identity, and whether a backfill owes it anything."""

    row_id: int
    size: int
    mtime_ns: int
    sha256: bytes
    metadata_current: bool  # photo metadata read by the parser of ``METADATA_VERSION``
    has_phash: bool


def file_rows(conn: psycopg.Connection[Any], model: Model, paths: list[str]) -> dict[str, FileRow]:
    """path -> :class:`FileRow` of this model's rows for ``paths`` (file system paths, as
    the scan gives them); one query over the paths for the plan and both backfills."""
    found: dict[str, FileRow] = {}
    for offset in range(0, len(paths), ID_CHUNK):
        for row_id, path, path_bytes, size, mtime_ns, sha, current, hashed in conn.execute(
            "SELECT id, path, path_bytes, size, mtime_ns, sha256, "
            "coalesce(metadata_version >= %s, false), phash IS NOT NULL FROM clipdb.images "
            f"WHERE model_id = {int(model.model_id)} AND {PATH_KEY} = ANY(%s)",
            (METADATA_VERSION, [key(p) for p in paths[offset : offset + ID_CHUNK]]),
        ):
            found[fs_path(path, path_bytes)] = FileRow(
                int(row_id), size, mtime_ns, bytes(sha), bool(current), bool(hashed)
            )
    return found


def rows_by_sha256(
    conn: psycopg.Connection[Any], model: Model, hashes: list[bytes]
) -> dict[bytes, list[tuple[int, str]]]:
    """sha256 -> [(row id, path), ...] (oldest first) of this model's rows with those hashes
    that a move may re-point: ingest rows only. An imported row's sha256 is a claim nobody
    checked; re-pointing it onto a real file with that hash would give the file a foreign
    embedding, so a new file is encoded instead."""
    found: dict[bytes, list[tuple[int, str]]] = {}
    for offset in range(0, len(hashes), ID_CHUNK):
        for row_id, path, path_bytes, sha in conn.execute(
            f"SELECT id, path, path_bytes, sha256 FROM clipdb.images "
            f"WHERE model_id = {int(model.model_id)} AND sha256 = ANY(%s) "
            "AND source = 'ingest' ORDER BY id",
            (hashes[offset : offset + ID_CHUNK],),
        ):
            found.setdefault(bytes(sha), []).append((row_id, fs_path(path, path_bytes)))
    return found


def _at_or_under(root: str) -> tuple[str, tuple[bytes, bytes, bytes]]:
    """SQL (and its parameters) for rows of ``root`` itself or under it, by exact bytes."""
    sql = f"({PATH_KEY} = %s OR ({PATH_KEY} >= %s AND {PATH_KEY} < %s))"
    return sql, (key(root), *prefix_range(key(os.path.join(root, ""))))


def rows_under(conn: psycopg.Connection[Any], model: Model, root: str) -> list[tuple[int, str]]:
    """(row id, file system path) of this model's rows for ``root`` itself or under it."""
    where, params = _at_or_under(root)
    rows = conn.execute(
        f"SELECT id, path, path_bytes FROM clipdb.images WHERE model_id = {int(model.model_id)} "
        f"AND {where}",
        params,
    ).fetchall()
    return [(row_id, fs_path(path, path_bytes)) for row_id, path, path_bytes in rows]


def export_rows(conn: psycopg.Connection[Any], model: Model) -> list[tuple[Any, ...]]:
    """(file system path, sha256, size, mtime_ns, width, height, embedding) of every row,
    ordered by the exact bytes of the name."""
    return [
        (fs_path(path, raw), *rest)
        for path, raw, *rest in conn.execute(
            "SELECT path, path_bytes, sha256, size, mtime_ns, width, height, embedding "
            f"FROM clipdb.images WHERE model_id = {int(model.model_id)} ORDER BY {PATH_KEY}"
        )
    ]


def skipped_files(
    conn: psycopg.Connection[Any], model: Model, paths: list[str]
) -> dict[str, tuple[int, int, str]]:
    """path -> (size, mtime_ns, reason) of the files among ``paths`` that were skipped."""
    found: dict[str, tuple[int, int, str]] = {}
    for offset in range(0, len(paths), ID_CHUNK):
        for path, path_bytes, size, mtime_ns, reason in conn.execute(
            f"SELECT path, path_bytes, size, mtime_ns, reason FROM clipdb.skipped_files "
            f"WHERE model_id = {int(model.model_id)} AND {PATH_KEY} = ANY(%s)",
            ([key(p) for p in paths[offset : offset + ID_CHUNK]],),
        ):
            found[fs_path(path, path_bytes)] = (size, mtime_ns, reason)
    return found


def skipped_under(conn: psycopg.Connection[Any], model: Model, root: str) -> list[str]:
    """File system paths of this model's skipped files at or under ``root``."""
    where, params = _at_or_under(root)
    rows = conn.execute(
        f"SELECT path, path_bytes FROM clipdb.skipped_files "
        f"WHERE model_id = {int(model.model_id)} AND {where}",
        params,
    ).fetchall()
    return [fs_path(path, path_bytes) for path, path_bytes in rows]
