"""The metadata-only pass: rows indexed before photo metadata existed get it, never re-encoded.

An unchanged file whose row lacks metadata (``metadata_version`` NULL or older) has only its
bytes read and its EXIF header parsed (no pixel decode, no model), and the row's metadata
columns are updated; its embedding is not touched. One commit per chunk, so an interrupted
backfill keeps what it did and the next ingest goes on from there.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

from clipdb import files
from clipdb.db import store
from clipdb.exif import PhotoMetadata, read_metadata

CHUNK = 500


def _read(path: str, stat: files.FileStat | None) -> PhotoMetadata | None:
    """The file's metadata; None when it cannot be read now (left for a later pass)."""
    from clipdb.decode import PILLOW_FORMATS

    try:
        args = stat.open_args() if stat is not None else {}
        data = files.read_regular(path, max_bytes=files.MAX_IMAGE_BYTES, **args)
    except (files.FileRejected, OSError):
        return None
    return read_metadata(data, PILLOW_FORMATS)


def backfill_metadata(conn: Any, todo: dict[str, int], stats: dict[str, files.FileStat]) -> int:
    """Read and store the metadata of ``todo``'s rows (path -> row id: the plan's rows
    without current metadata); returns how many rows got it."""
    if not todo:
        return 0
    done = 0
    paths = sorted(todo)
    with ThreadPoolExecutor(max_workers=4) as pool:  # file reads and zlib release the GIL
        for offset in range(0, len(paths), CHUNK):
            chunk = paths[offset : offset + CHUNK]
            read = pool.map(lambda p: _read(p, stats.get(p)), chunk)
            updates = [
                (todo[p], meta) for p, meta in zip(chunk, read, strict=True) if meta is not None
            ]
            with conn.transaction():
                done += store.set_metadata(conn, updates)
    return done
