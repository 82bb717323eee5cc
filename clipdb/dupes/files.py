"""What the file system says about indexed rows at ``clipdb dupes`` time: which are stale, which
names are links, and which names lead to one file (an inode), so that two names of one file
are never taken for duplicates of each other."""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass, field

from clipdb.db.dupes import DupeRow


def is_stale(row: DupeRow) -> bool:
    """Gone, or not the file the row describes (size or mtime differ)."""
    try:
        found = os.stat(row.path)
    except OSError:
        return True
    return (found.st_size, found.st_mtime_ns) != (row.size, row.mtime_ns)


@dataclass
class Files:
    """What the file system says about the rows: stale ones, linked names, one name per file."""

    stale: list[str] = field(default_factory=list)
    links: set[int] = field(default_factory=set)  # ids whose name is or goes through a link
    aliases: dict[int, tuple[str, ...]] = field(default_factory=dict)  # kept name -> others
    dropped: set[int] = field(default_factory=set)  # ids that are another name of a file


def stat_rows(rows: Sequence[DupeRow]) -> Files:
    """Stat each row's file (links followed, as ingest follows them): stale rows, and for
    names that lead to one inode, the one name that stands for the file: a real name (not a
    link, not through a linked folder) first, then the shortest."""
    files = Files()
    by_inode: dict[tuple[int, int], list[DupeRow]] = {}
    for row in rows:
        try:
            found = os.stat(row.path)
        except OSError:
            files.stale.append(row.path)
            continue
        if (found.st_size, found.st_mtime_ns) != (row.size, row.mtime_ns) or not stat.S_ISREG(
            found.st_mode
        ):
            files.stale.append(row.path)
            continue
        if os.path.realpath(row.path) != os.path.abspath(row.path):
            files.links.add(row.image_id)
        by_inode.setdefault((found.st_dev, found.st_ino), []).append(row)
    for names in by_inode.values():
        if len(names) > 1:
            names.sort(key=lambda r: (r.image_id in files.links, len(r.path), r.path))
            files.aliases[names[0].image_id] = tuple(r.path for r in names[1:])
            files.dropped.update(r.image_id for r in names[1:])
    files.stale.sort()
    return files
