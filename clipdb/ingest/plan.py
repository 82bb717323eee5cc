"""What a pass must do: compare the scan with the model's rows, re-point moves, find prunes.

The scan's (path, size, mtime_ns) is compared with the table; only new or changed files are
hashed, and a hash that matches a row whose file is gone is a move (the row is re-pointed, the
image is neither decoded nor encoded). A touched file with the same hash just gets its new
size/mtime.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from clipdb import files
from clipdb.db import queries, store
from clipdb.db.registry import Model

SkipCallback = Callable[[str, str], None]


def identity(stat: files.FileStat) -> tuple[int, int]:
    return (stat.size, stat.mtime_ns)


@dataclass
class Plan:
    """The outcome of comparing one scan with the table."""

    to_encode: list[str] = field(default_factory=list)
    changed: set[str] = field(default_factory=set)  # of to_encode: rows that exist already
    unchanged: int = 0
    moved: int = 0
    # Rows kept as they are (unchanged or touched) that a backfill owes something: path ->
    # row id without current photo metadata, and paths without a pHash.
    lacks_metadata: dict[str, int] = field(default_factory=dict)
    lacks_phash: list[str] = field(default_factory=list)


def make_plan(
    conn: Any,
    model: Model | None,
    stats: dict[str, files.FileStat],
    skip: SkipCallback,
) -> Plan:
    """Sort the scanned files into unchanged, touched, moved and to-encode.

    Files that cannot be hashed are reported through ``skip`` and removed from ``stats``.
    """
    plan = Plan()
    paths = list(stats)
    if model is None:  # never registered: everything is new
        plan.to_encode = sorted(paths)
        return plan
    rows = queries.file_rows(conn, model, paths)
    new = [p for p in paths if p not in rows]
    changed: dict[str, queries.FileRow] = {}
    for path, row in rows.items():
        if (row.size, row.mtime_ns) == identity(stats[path]):
            plan.unchanged += 1
        else:
            changed[path] = row
    if changed or (new and queries.has_rows(conn, model)):
        new, touched, plan.moved = _reuse_by_hash(conn, model, new, changed, stats, skip)
        plan.unchanged += touched
    plan.changed = set(changed)
    plan.to_encode = sorted({*new, *changed})
    # Rows that stay (unchanged, or touched and refreshed to the scan): what they lack.
    # Moved rows are not here; the next run sees them under their new path.
    kept = [path for path in rows if path in stats and path not in plan.changed]
    plan.lacks_metadata = {p: rows[p].row_id for p in kept if not rows[p].metadata_current}
    plan.lacks_phash = sorted(p for p in kept if not rows[p].has_phash)
    return plan


def _reuse_by_hash(
    conn: Any,
    model: Model,
    new: list[str],
    changed: dict[str, queries.FileRow],
    stats: dict[str, files.FileStat],
    skip: SkipCallback,
) -> tuple[list[str], int, int]:
    """Hash new and changed files: re-point moved rows, refresh touched ones.

    Returns the new paths still to encode, and the counts of touched and moved files;
    ``changed`` keeps only the files whose content really changed.
    """
    hashes: dict[str, bytes] = {}
    with ThreadPoolExecutor(max_workers=4) as pool:  # hashlib releases the GIL
        todo = [stats[path] for path in sorted([*new, *changed])]
        for path, sha, reason in pool.map(files.hash_task, todo):
            if sha is None:
                skip(path, reason or files.UNREADABLE)
                stats.pop(path, None)
                changed.pop(path, None)
            else:
                hashes[path] = sha
    touched = 0
    with conn.transaction():
        for path, row in list(changed.items()):
            if hashes.get(path) == row.sha256:
                store.refresh_identity(conn, model, path, *identity(stats[path]))
                touched += 1
                del changed[path]
    new = [p for p in new if p in hashes]
    by_sha = queries.rows_by_sha256(conn, model, list({hashes[p] for p in new}))
    remaining, moved = [], 0
    with conn.transaction():
        for path in new:
            if files.is_video_name(path):  # one row per frame: re-sampled, the old path pruned
                remaining.append(path)
                continue
            orphan = next(
                (
                    (row_id, old)
                    for row_id, old in by_sha.get(hashes[path], [])
                    if old not in stats and not os.path.exists(old)
                ),
                None,
            )
            stat = stats[path]
            if orphan is None or not store.move_row(
                conn, orphan[0], path, stat.size, stat.mtime_ns
            ):
                remaining.append(path)
                continue
            by_sha[hashes[path]].remove(orphan)
            moved += 1
    return remaining, touched, moved


def prune(
    conn: Any,
    model: Model,
    roots: list[str],
    seen: set[str],
    *,
    missing_roots: bool = False,
    on_offline: Callable[[str, int], None] | None = None,
) -> int:
    """Delete this model's rows under ``roots`` whose files are certainly gone.

    ``seen``: every path the scan found (good or bad), which all exist. A root under which the
    scan found nothing while rows exist is offline (an unmounted volume, an emptied mount
    point): nothing is pruned there, ``on_offline(root, rows)`` is told, unless
    ``missing_roots``.
    """
    pruned = 0
    for root in roots:
        rows = queries.rows_under(conn, model, root)
        if not rows:
            continue
        prefix = os.path.join(root, "")
        if not missing_roots and not any(p == root or p.startswith(prefix) for p in seen):
            if on_offline is not None:
                on_offline(root, len(rows))
            continue
        gone = [row_id for row_id, path in rows if path not in seen and files.is_gone(path)]
        pruned += store.delete_rows(conn, gone)
    return pruned
