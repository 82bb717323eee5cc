"""Perceptual hashes for rows indexed before clipdb stored them, without re-encoding.

An unchanged file whose row has no ``phash`` is decoded (in the crash-isolating decode pool
when there are many) and only its hash is written: the encoder is never called, the
embedding is untouched.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial
from typing import Any

from clipdb import decode, files
from clipdb.db import store
from clipdb.db.registry import Model
from clipdb.ingest.decode_pool import isolated_map
from clipdb.ingest.plan import SkipCallback

BATCH = 500  # hashes per transaction
# A file that kills its decode worker is a skip (remembered: a rerun does not try it again);
# any other failure keeps the row as it is, and a later run tries again.
WORKER_DEATHS = frozenset({files.CRASHED, files.KILLED})


def _hashed(
    paths: list[str], stats: dict[str, files.FileStat], workers: int, max_pixels: int | None
) -> Iterator[tuple[str, int | None, str | None]]:
    task = partial(decode.phash_task, max_pixels=max_pixels)
    yield from isolated_map(
        task, paths, stats, lambda path, reason: (path, None, reason), workers=workers
    )


def backfill_phashes(
    conn: Any,
    model: Model,
    todo: list[str],
    stats: dict[str, files.FileStat],
    *,
    workers: int,
    max_pixels: int | None,
    on_skip: SkipCallback | None = None,
) -> int:
    """Hash the files of ``todo`` (the plan's kept rows without a pHash, which match the
    scan) and store the hashes; returns how many were stored. A file that cannot be decoded
    now keeps its row as it is (ingest decoded it once); one that kills its worker is also
    told to ``on_skip``."""
    stored = 0
    batch: list[tuple[str, int, int, int]] = []
    for path, value, reason in _hashed(sorted(todo), stats, workers, max_pixels):
        if value is None:
            if reason in WORKER_DEATHS and on_skip is not None:
                on_skip(path, reason)
            continue
        stat = stats[path]
        batch.append((path, stat.size, stat.mtime_ns, value))
        if len(batch) >= BATCH:
            with conn.transaction():
                stored += store.set_phashes(conn, model, batch)
            batch.clear()
    if batch:
        with conn.transaction():
            stored += store.set_phashes(conn, model, batch)
    return stored
