"""The metadata-only pass: rows indexed before photo metadata existed get it, never re-encoded.

An unchanged file whose row lacks metadata (``metadata_version`` NULL or older) has only its
bytes read and its EXIF header parsed (no pixel decode, no model), and the row's metadata
columns are updated; its embedding is not touched. One commit per chunk, so an interrupted
backfill keeps what it did and the next ingest goes on from there.
"""

from __future__ import annotations

from typing import Any

from clipdb import files
from clipdb.db import store
from clipdb.exif import PhotoMetadata
from clipdb.ingest.decode_pool import isolated_map
from clipdb.ingest.plan import SkipCallback

CHUNK = 500


def _read(path: str, found: files.FileStat | None = None) -> PhotoMetadata | None:
    """The file's metadata; None when it cannot be read now (left for a later pass)."""
    from clipdb.raw import file_metadata

    try:
        args = found.open_args() if found is not None else {}
        data = files.read_regular(path, max_bytes=files.MAX_IMAGE_BYTES, **args)
    except (files.FileRejected, OSError):
        return None
    return file_metadata(data, path)


def backfill_metadata(
    conn: Any,
    todo: dict[str, int],
    stats: dict[str, files.FileStat],
    *,
    workers: int = 0,
    on_skip: SkipCallback | None = None,
) -> int:
    """Read and store the metadata of ``todo``'s rows (path -> row id: the plan's rows
    without current metadata); returns how many rows got it. Many rows are read in the
    decode pool's ``workers`` processes (Pillow parses the headers): a file that kills its
    worker is told to ``on_skip`` and the rest go on."""
    if not todo:
        return 0
    done = 0
    paths = sorted(todo)
    read = isolated_map(_read, paths, stats, lambda path, reason: reason, workers=workers)
    for offset in range(0, len(paths), CHUNK):
        chunk = paths[offset : offset + CHUNK]
        updates = []
        for path, meta in zip(chunk, read, strict=False):
            if isinstance(meta, str):  # its worker died on it
                if on_skip is not None:
                    on_skip(path, meta)
            elif meta is not None:
                updates.append((todo[path], meta))
        with conn.transaction():
            done += store.set_metadata(conn, updates)
    return done
