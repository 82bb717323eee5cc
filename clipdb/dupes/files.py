"""What the file system says about indexed rows at ``clipdb dupes`` time: which are stale, which
names are links, and which names lead to one file (an inode), so that two names of one file
are never taken for duplicates of each other."""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass, field

from clipdb.db.dupes import DupeRow


@dataclass
class Files:
    """What the file system says about the rows: stale ones, linked names, one name per file."""

    stale: list[str] = field(default_factory=list)
    aliases: dict[int, tuple[str, ...]] = field(default_factory=dict)  # kept name -> others
    dropped: set[int] = field(default_factory=set)  # ids that are another name of a file
    checked: bool = False  # False: the files were not looked at (no name is taken as a link)
    _links: dict[str, bool] = field(default_factory=dict)

    def is_link(self, path: str) -> bool:
        """Whether ``path`` is a symbolic link or goes through one (asked only of group
        members and of names that share an inode: a realpath costs a stat per component)."""
        if not self.checked:
            return False
        if path not in self._links:
            self._links[path] = os.path.realpath(path) != os.path.abspath(path)
        return self._links[path]


def stat_rows(rows: Sequence[DupeRow]) -> Files:
    """Stat each row's file (links followed, as ingest follows them): stale rows, and for
    names that lead to one inode, the one name that stands for the file: a real name (not a
    link, not through a linked folder) first, then the shortest."""
    files = Files(checked=True)
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
        by_inode.setdefault((found.st_dev, found.st_ino), []).append(row)
    for names in by_inode.values():
        if len(names) > 1:
            names.sort(key=lambda r: (files.is_link(r.path), len(r.path), r.path))
            files.aliases[names[0].image_id] = tuple(r.path for r in names[1:])
            files.dropped.update(r.image_id for r in names[1:])
    files.stale.sort()
    return files
