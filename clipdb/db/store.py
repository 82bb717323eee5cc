"""Every write to ``clipdb.images``: COPY + upsert for ingest batches, bulk loads, moves, prunes.

Callers own the transaction: one commit per batch keeps a crash from leaving partial batches.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import psycopg
from pgvector import HalfVector

from clipdb.db.paths import PATH_KEY, key
from clipdb.db.registry import Model
from clipdb.errors import ClipdbError
from clipdb.exif import METADATA_VERSION, PhotoMetadata
from clipdb.files import db_path

# path is text (a display form for names that are not UTF-8), path_bytes their exact bytes.
_COLUMNS = "path, sha256, size, mtime_ns, width, height, embedding, path_bytes"
_TYPES = ["text", "bytea", "int8", "int8", "int4", "int4", "vector", "bytea"]
# Photo metadata (migration 0006), written with every row; None in a record: not read.
_META_COLUMNS = "taken_at, taken_at_naive, camera, lens, lat, lon, metadata_version"
_META_TYPES = ["timestamptz", "bool", "text", "text", "float8", "float8", "int2"]
_COLUMNS = f"{_COLUMNS}, {_META_COLUMNS}"
_TYPES = [*_TYPES, *_META_TYPES]
# Upserts also carry the perceptual hash: staged as int8, stored as bit(64) (int8::bit(64)),
# and a video frame's time (migration 0012; NULL for a photo).
_UPSERT_COLUMNS = f"{_COLUMNS}, phash, frame_time"
_UPSERT_TYPES = [*_TYPES, "int8", "float8"]


@dataclass(frozen=True)
class ImageRecord:
    """One image file and its embedding; ``path`` as the file system knows it."""

    path: str
    sha256: bytes
    size: int
    mtime_ns: int
    width: int
    height: int
    embedding: np.ndarray
    metadata: PhotoMetadata | None = None  # None: not read (metadata_version stays NULL)
    phash: int | None = None  # clipdb.phash (signed int64); None: not computed
    frame_time: float | None = None  # seconds into a video; None for a photo
    # A video's first frame of this pass: the file's earlier rows (frames of another version
    # of it) are deleted before it is written.
    first_frame: bool = False

    @property
    def starts_file(self) -> bool:
        """A photo, or a video's first frame: the row a file is counted by (new, updated)."""
        return self.frame_time is None or self.first_frame

    def as_row(self) -> tuple[Any, ...]:
        embedding = np.asarray(self.embedding, dtype=np.float32)
        text, raw = db_path(self.path)
        # A zero or non-finite vector has no cosine distance: every search meeting it would
        # fail (NaN), so no writer stores one (the table's CHECK is the last line; this one
        # names the file).
        if not np.isfinite(embedding).all() or not np.any(embedding):
            raise ClipdbError(f"refusing to store {text}: its embedding is zero or not finite")
        return (
            text,
            self.sha256,
            self.size,
            self.mtime_ns,
            self.width,
            self.height,
            embedding,
            raw,
            *metadata_values(self.metadata),
        )


def metadata_values(metadata: PhotoMetadata | None) -> tuple[Any, ...]:
    """The _META_COLUMNS values of ``metadata`` (all NULL when it was not read)."""
    if metadata is None:
        return (None, False, None, None, None, None, None)
    return (
        metadata.taken_at,
        metadata.taken_at_naive,
        metadata.camera,
        metadata.lens,
        metadata.lat,
        metadata.lon,
        METADATA_VERSION,
    )


def set_metadata(
    conn: psycopg.Connection[Any], updates: Sequence[tuple[int, PhotoMetadata]]
) -> int:
    """The metadata-only backfill: (row id, metadata) pairs; embeddings are not touched."""
    if not updates:
        return 0
    # One statement per chunk (arrays unnested), not one per row: ~10x faster than executemany.
    columns = list(
        zip(*[(row_id, *metadata_values(meta)) for row_id, meta in updates], strict=True)
    )
    conn.execute(
        "UPDATE clipdb.images i SET taken_at = u.taken_at, taken_at_naive = u.naive,"
        " camera = u.camera, lens = u.lens, lat = u.lat, lon = u.lon,"
        " metadata_version = u.version"
        " FROM unnest(%s::bigint[], %s::timestamptz[], %s::bool[], %s::text[], %s::text[],"
        " %s::float8[], %s::float8[], %s::int2[])"
        " AS u(id, taken_at, naive, camera, lens, lat, lon, version) WHERE i.id = u.id",
        [list(column) for column in columns],
    )
    return len(updates)


def _copy(
    conn: psycopg.Connection[Any],
    table: str,
    rows: Iterable[tuple[Any, ...]],
    types: Sequence[str] = tuple(_TYPES),
) -> int:
    count = 0
    with conn.cursor() as cur, cur.copy(f"COPY {table} FROM STDIN (FORMAT BINARY)") as copy:
        copy.set_types(list(types))
        for row in rows:
            copy.write_row(row)
            count += 1
    return count


def copy_new_images(
    conn: psycopg.Connection[Any], model: Model, records: Iterable[ImageRecord]
) -> int:
    """Bulk-insert rows known to be new (fastest path; a duplicate path raises)."""
    # COPY cannot take a constant column, so the model id goes in through a default.
    model_id = int(model.model_id)
    conn.execute(
        f"CREATE TEMP TABLE IF NOT EXISTS clipdb_bulk ({_columns_ddl()}) ON COMMIT DELETE ROWS"
    )
    count = _copy(conn, f"clipdb_bulk ({_COLUMNS})", (r.as_row() for r in records))
    conn.execute(
        f"INSERT INTO clipdb.images (model_id, {_COLUMNS}) "
        f"SELECT {model_id}, {_COLUMNS} FROM clipdb_bulk"
    )
    conn.execute("TRUNCATE clipdb_bulk")
    return count


def upsert_images(
    conn: psycopg.Connection[Any],
    model: Model,
    records: Sequence[ImageRecord],
    *,
    imported: bool = False,
) -> int:
    """Insert or replace rows by (model, exact name bytes); concurrent writers never duplicate
    a file, and two files whose names share a display form stay two rows.

    ``imported`` marks rows an ``.npz`` import wrote (``source = 'import'``): ingest never
    re-points those onto another file (see :func:`clipdb.db.queries.rows_by_sha256`).
    """
    if not records:
        return 0
    model_id = int(model.model_id)
    source = "import" if imported else "ingest"
    videos = [key(r.path) for r in records if r.first_frame]
    if videos:
        conn.execute(
            f"DELETE FROM clipdb.images WHERE model_id = {model_id} AND {PATH_KEY} = ANY(%s)",
            (videos,),
        )
    conn.execute(
        f"CREATE TEMP TABLE IF NOT EXISTS clipdb_incoming ({_columns_ddl()}, phash bigint, "
        "frame_time float8) ON COMMIT DELETE ROWS"
    )
    _copy(
        conn,
        f"clipdb_incoming ({_UPSERT_COLUMNS})",
        ((*r.as_row(), r.phash, r.frame_time) for r in records),
        _UPSERT_TYPES,
    )
    conn.execute(
        f"""
        INSERT INTO clipdb.images (model_id, source, {_COLUMNS}, phash, frame_time)
        SELECT DISTINCT ON ({PATH_KEY}, frame_time) {model_id}, %s, {_COLUMNS},
            phash::bit(64), frame_time
        FROM clipdb_incoming
        ON CONFLICT (model_id, ({PATH_KEY}), (coalesce(frame_time, -1))) DO UPDATE SET
            sha256 = EXCLUDED.sha256, size = EXCLUDED.size, mtime_ns = EXCLUDED.mtime_ns,
            width = EXCLUDED.width, height = EXCLUDED.height, embedding = EXCLUDED.embedding,
            path_bytes = EXCLUDED.path_bytes, source = EXCLUDED.source, updated_at = now(),
            taken_at = EXCLUDED.taken_at, taken_at_naive = EXCLUDED.taken_at_naive,
            camera = EXCLUDED.camera, lens = EXCLUDED.lens, lat = EXCLUDED.lat,
            lon = EXCLUDED.lon, metadata_version = EXCLUDED.metadata_version,
            phash = EXCLUDED.phash
        """,
        (source,),
    )
    conn.execute("TRUNCATE clipdb_incoming")
    return len(records)


def refresh_identity(
    conn: psycopg.Connection[Any], model: Model, path: str, size: int, mtime_ns: int
) -> None:
    """A file was touched but its content (sha256) is unchanged: record its new size/mtime."""
    conn.execute(
        f"UPDATE clipdb.images SET size = %s, mtime_ns = %s, updated_at = now() "
        f"WHERE model_id = {int(model.model_id)} AND {PATH_KEY} = %s",
        (size, mtime_ns, key(path)),
    )


def set_phashes(
    conn: psycopg.Connection[Any], model: Model, hashes: Sequence[tuple[str, int, int, int]]
) -> int:
    """Backfill perceptual hashes of rows indexed before clipdb had them: (path, size,
    mtime_ns, phash); a row whose file changed meanwhile (other size/mtime) is left alone,
    and neither the embedding nor updated_at changes (the row's content is the same)."""
    if not hashes:
        return 0
    with conn.cursor() as cur:
        cur.executemany(
            f"UPDATE clipdb.images SET phash = %s::bigint::bit(64) "
            f"WHERE model_id = {int(model.model_id)} AND {PATH_KEY} = %s AND size = %s "
            "AND mtime_ns = %s",
            [(phash, key(path), size, mtime_ns) for path, size, mtime_ns, phash in hashes],
        )
    return len(hashes)


def move_row(
    conn: psycopg.Connection[Any], row_id: int, path: str, size: int, mtime_ns: int
) -> bool:
    """Re-point a row at the file its content moved to; False if another row has that path
    or the row was imported (an import's sha256 is only a claim: never another file's row)."""
    try:
        with conn.transaction():  # a savepoint: a concurrent ingester may own the path
            cursor = conn.execute(
                "UPDATE clipdb.images SET path = %s, path_bytes = %s, size = %s, mtime_ns = %s, "
                "updated_at = now() WHERE id = %s AND source = 'ingest'",
                (*db_path(path), size, mtime_ns, row_id),
            )
            return bool(cursor.rowcount)
    except psycopg.errors.UniqueViolation:
        return False


def delete_rows(conn: psycopg.Connection[Any], row_ids: Sequence[int]) -> int:
    """Delete rows by id; returns how many went."""
    if not row_ids:
        return 0
    cursor = conn.execute("DELETE FROM clipdb.images WHERE id = ANY(%s)", (list(row_ids),))
    return cursor.rowcount


def _columns_ddl() -> str:
    return (
        "path text, sha256 bytea, size bigint, mtime_ns bigint, width integer, height integer, "
        "embedding vector, path_bytes bytea, taken_at timestamptz, taken_at_naive boolean, "
        "camera text, lens text, lat float8, lon float8, metadata_version smallint"
    )


@dataclass(frozen=True)
class BulkLoadResult:
    """What :func:`bulk_load` did, with the time of each phase."""

    rows: int
    copy_s: float
    index_s: float

    @property
    def total_s(self) -> float:
        return self.copy_s + self.index_s


def bulk_load(
    conn: psycopg.Connection[Any],
    model: Model,
    records: Iterable[ImageRecord],
    *,
    rebuild_index: bool = True,
    parallel_workers: int | None = None,
    maintenance_work_mem: str | None = None,
) -> BulkLoadResult:
    """Load many new rows fast: drop the model's HNSW index, COPY, then build the index once.

    Inserting into a live HNSW index costs a graph search per row (a few hundred rows/s);
    building it once over loaded rows is far cheaper. The index is recreated with exactly the
    definition ``clipdb.register_model`` gives it (name, expression, opclass, WHERE), or
    searches would stop using it. The caller owns the transaction: searches of this model
    wait on its lock until commit, and a rollback restores the old index. With
    ``rebuild_index=False`` the index is left alone and rows go into it one by one.
    ``parallel_workers`` and ``maintenance_work_mem`` tune the build (``SET LOCAL``); an index
    graph that outgrows ``maintenance_work_mem`` builds much more slowly.
    """
    import time

    from clipdb.db.model_index import raise_build_memory
    from clipdb.db.prewarm import prewarm
    from clipdb.db.storage import storage_state

    model_id, dim = int(model.model_id), int(model.dim)
    # Binary COPY sends the column's own type: halfvec, or vector until 0011's online move.
    half = storage_state(conn).kind == "halfvec"
    if rebuild_index:
        conn.execute(f"DROP INDEX IF EXISTS clipdb.{model.index_name}")
    started = time.perf_counter()
    count = 0
    # model_id travels in every row, so the rows go straight into the table: no staging copy.
    with (
        conn.cursor() as cur,
        cur.copy(f"COPY clipdb.images (model_id, {_COLUMNS}) FROM STDIN (FORMAT BINARY)") as copy,
    ):
        copy.set_types(["int2", *_TYPES[:6], "halfvec" if half else "vector", *_TYPES[7:]])
        for record in records:
            row = record.as_row()
            if half:
                row = (*row[:6], HalfVector(row[6]), *row[7:])
            copy.write_row((model_id, *row))
            count += 1
    copied = time.perf_counter()
    if rebuild_index:
        if parallel_workers is not None:
            conn.execute(
                "SELECT set_config('max_parallel_maintenance_workers', %s, true)",
                (str(int(parallel_workers)),),
            )
        if maintenance_work_mem is not None:
            conn.execute(
                "SELECT set_config('maintenance_work_mem', %s, true)", (maintenance_work_mem,)
            )
        else:
            # A graph that outgrows maintenance_work_mem is finished on disk, many times slower.
            raise_build_memory(conn, model)
        ddl = conn.execute(
            "SELECT clipdb.model_index_ddl(%s::smallint, %s)", (model_id, dim)
        ).fetchone()
        assert ddl is not None
        conn.execute(ddl[0])
        # Fresh statistics, so the planner knows how many rows this model now has.
        conn.execute("ANALYZE clipdb.images")
        # The new graph is on disk only: the first searches would read it page by page.
        prewarm(conn, model)
    return BulkLoadResult(count, copied - started, time.perf_counter() - copied)


# --- files ingest could not use (clipdb.skipped_files) -----------------------------------------


def record_skips(
    conn: psycopg.Connection[Any], model: Model, skips: Sequence[tuple[str, int, int, str]]
) -> None:
    """Remember (path, size, mtime_ns, reason) of files skipped with ``model``, so a re-run
    retries them only once they change."""
    if not skips:
        return
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO clipdb.skipped_files (model_id, path, path_bytes, size, mtime_ns, reason)"
            f" VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (model_id, ({PATH_KEY})) DO UPDATE SET"
            " path_bytes = EXCLUDED.path_bytes, size = EXCLUDED.size,"
            " mtime_ns = EXCLUDED.mtime_ns, reason = EXCLUDED.reason, skipped_at = now()",
            [
                (int(model.model_id), *db_path(path), size, mtime_ns, reason)
                for path, size, mtime_ns, reason in skips
            ],
        )


def forget_skips(conn: psycopg.Connection[Any], model: Model, paths: Sequence[str]) -> int:
    """Forget skipped files that are now indexed, usable or gone."""
    if not paths:
        return 0
    cursor = conn.execute(
        f"DELETE FROM clipdb.skipped_files WHERE model_id = {int(model.model_id)} "
        f"AND {PATH_KEY} = ANY(%s)",
        ([key(path) for path in paths],),
    )
    return cursor.rowcount
