"""Every read of ``clipdb.images``: the top-k query, stored vectors, what ingest compares against.

The top-k is the SQL function ``clipdb.search_rows`` (one definition for Python and SQL
users); the function writes the model's id and dimension into the statement it plans, which is
what lets the model's partial HNSW index serve it. The other statements here write the model
id from ``clipdb.models`` (our registry, never user input); everything a user gives is a bound
parameter.
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
from clipdb.files import fs_path, split_frame
from clipdb.filters import NO_FILTERS, Filters

EF_SEARCH_MAX = 1000  # pgvector refuses a larger hnsw.ef_search


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
    # A text search's hits (clipdb.db.text): which list found it ("clip", "text" or "both")
    # and the words around the match; in to_dict() only then. A hit found by its words alone
    # with no query vector has no similarity (NaN here, null in JSON).
    match: str | None = None
    matched_text: str | None = None

    @property
    def has_similarity(self) -> bool:
        return self.similarity == self.similarity  # NaN: found by text alone, nothing compared

    # Seconds into the video of the best-matching frame; None for a photo (migration 0012).
    frame_time: float | None = None

    @property
    def media(self) -> str:
        return "image" if self.frame_time is None else "video"

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
        ``taken_at_naive``: true when taken_at is a wall clock of unknown time zone;
        ``media``: image or video, ``time``: a video's best frame in seconds, else null)."""
        data = asdict(self)
        del data["path_bytes"], data["frame_time"]
        if self.match is None:
            del data["match"], data["matched_text"]
        if not self.has_similarity:
            data["similarity"] = None
        data["filename"] = self.filename
        data["media"], data["time"] = self.media, self.frame_time
        data["taken_at"] = self.taken_at.isoformat() if self.taken_at is not None else None
        return data


# The one top-k: clipdb.search_rows (migrations/versions/0010_one_topk.py) filters, ranks, cuts
# (within), orders and pages; everything is a bound parameter.
_SEARCH_ROWS = (
    "SELECT rank, path, similarity, id, taken_at, camera_name, lat, lon, taken_at_naive, "
    "path_bytes, frame_time "
    "FROM clipdb.search_rows(%(model)s::smallint, %(query)s::vector, %(k)s, %(ef)s, "
    "after => %(after)s, before => %(before)s, camera => %(camera)s, near_lat => %(near_lat)s, "
    "near_lon => %(near_lon)s, near_km => %(near_km)s, within => %(within)s, sort => %(sort)s, "
    "skip => %(skip)s, under => %(under)s, min_similarity => %(min_similarity)s)"
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
    filters, ``within``, ``sort`` and ``offset`` (clipdb.filters). One call of the SQL
    function ``clipdb.search_rows``, which sets the scan's settings for itself.
    """
    check_result_count(k)
    filters = filters or NO_FILTERS
    vector = np.asarray(query, dtype=np.float32).reshape(-1)
    if vector.shape[0] != model.dim:
        raise ClipdbError(f"query has {vector.shape[0]} dimensions, model {model} has {model.dim}")
    if threshold is not None and not -1.0 <= float(threshold) <= 1.0:
        raise UsageError(f"a cosine similarity is in [-1, 1], got {threshold!r}")
    params: dict[str, Any] = {
        "model": model.model_id,
        "query": vector,
        "k": k,
        # pgvector refuses a larger hnsw.ef_search; the function widens it to k where it can.
        "ef": None if ef_search is None else max(1, min(int(ef_search), EF_SEARCH_MAX)),
        **filters.sql_params(),
        "within": filters.within,
        "sort": filters.sort,
        "skip": filters.offset,
        "under": None if under is None else key(under_prefix(under)),
        "min_similarity": None if threshold is None else float(threshold),
    }
    rows = conn.execute(_SEARCH_ROWS, params).fetchall()
    return [_hit(row) for row in rows]


def arrange(hits: list[Hit], k: int, filters: Filters) -> list[Hit]:
    """Apply ``within``, ``sort`` and ``offset`` to hits fetched best first: for a list
    clipdb.search_rows did not page (``--hide-duplicates`` collapses its hits first); the
    same rules as that function's.

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
        # A hit found by its words alone (no similarity) ranks after those with one.
        dated.sort(key=lambda h: (-h.similarity if h.has_similarity else 2.0, h.image_id))
        dated.sort(key=lambda h: h.taken_at or datetime.min, reverse=newest_first)
        hits = dated + undated
    page = hits[filters.offset : filters.offset + k]
    return [replace(hit, rank=rank) for rank, hit in enumerate(page, start=filters.offset + 1)]


def _hit(row: tuple[Any, ...]) -> Hit:
    """A result row of ``_SEARCH_ROWS`` as a Hit."""
    rank, path, similarity, image_id, taken_at, camera, lat, lon, naive, raw, frame_time = row
    return Hit(
        int(rank),
        path,
        float(similarity),
        image_id,
        taken_at,
        camera,
        lat,
        lon,
        naive,
        raw and bytes(raw),
        frame_time=frame_time,
    )


def check_result_count(k: int) -> None:
    """The one result limit: 1..MAX_RESULTS, everywhere."""
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_RESULTS:
        raise UsageError(f"the number of results must be 1 to {MAX_RESULTS}, not {k!r}")


def indexed_embedding(conn: psycopg.Connection[Any], model: Model, path_or_id: str) -> np.ndarray:
    """The stored embedding of an indexed image, by absolute/relative path or by row id; a
    video's frame as ``clip.mp4@SECONDS`` (the frame nearest that time; without: its first)."""
    found = None
    if path_or_id.isdigit():
        found = embedding_by_id(conn, model, int(path_or_id))
    if found is None:
        path, seconds = split_frame(path_or_id)
        row = conn.execute(
            f"SELECT embedding FROM clipdb.images WHERE model_id = %s AND {PATH_KEY} = %s "
            "ORDER BY abs(frame_time - %s::float8) NULLS LAST, frame_time LIMIT 1",
            (model.model_id, key(os.path.abspath(path)), seconds),
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
    absolute = key(os.path.abspath(split_frame(path_or_id)[0]))
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


def frame_time_of(conn: psycopg.Connection[Any], image_id: int) -> float | None:
    """Seconds into its video of row ``image_id``'s frame; None for a photo (or no row)."""
    row = conn.execute("SELECT frame_time FROM clipdb.images WHERE id = %s", (image_id,)).fetchone()
    return None if row is None or row[0] is None else float(row[0])


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
