"""Perceptual hashes for rows indexed before clipdb stored them, without re-encoding.

An unchanged file whose row has no ``phash`` is decoded (in worker processes when there are
many) and only its hash is written: the encoder is never called, the embedding is untouched.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial
from typing import Any

from clipdb import decode, files
from clipdb.db import store
from clipdb.db.registry import Model

MIN_FILES_FOR_POOL = 16
BATCH = 500  # hashes per transaction


def _hashed(
    paths: list[str], stats: dict[str, files.FileStat], workers: int, max_pixels: int | None
) -> Iterator[tuple[str, int | None, str | None]]:
    task = partial(decode.phash_task, max_pixels=max_pixels)
    if workers == 0 or len(paths) < MIN_FILES_FOR_POOL:
        yield from (task(path, found=stats.get(path)) for path in paths)
        return
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(
        max_workers=workers, mp_context=decode.worker_context(), initializer=decode.worker_init
    ) as pool:
        # Positional, in phash_task's order: partial's max_pixels keyword would collide.
        pixels = [max_pixels] * len(paths)
        found = [stats.get(p) for p in paths]
        yield from pool.map(decode.phash_task, paths, pixels, found, chunksize=8)


def backfill_phashes(
    conn: Any,
    model: Model,
    todo: list[str],
    stats: dict[str, files.FileStat],
    *,
    workers: int,
    max_pixels: int | None,
) -> int:
    """Hash the files of ``todo`` (the plan's kept rows without a pHash, which match the
    scan) and store the hashes; returns how many were stored. A file that cannot be decoded
    now keeps its row as it is (ingest decoded it once)."""
    stored = 0
    batch: list[tuple[str, int, int, int]] = []
    for path, value, _reason in _hashed(sorted(todo), stats, workers, max_pixels):
        if value is None:
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
