"""The skip ledger: every file one pass could not use, counted, reported and remembered.

A skip comes from the scan (no stat: a broken link, a FIFO), from hashing, decoding or
encoding (the engines), from a backfill whose decode worker died on the file, or is a file
an earlier run skipped that has not changed since (``clipdb.skipped_files``: reported only
with ``--verbose`` and not retried, so a tree with a few bad files never loads the model on
every run). The ledger holds them all; the summary counts and what is printed come from it,
and :meth:`SkipLedger.remember` persists the pass's skips (SQL under clipdb.db).
"""

from __future__ import annotations

import os
from collections import Counter
from typing import Any

from clipdb import files
from clipdb.db import queries, store
from clipdb.db.registry import Model
from clipdb.ingest.plan import SkipCallback, identity

# Skips worth remembering: the file's content or type is the problem, so only a change of
# size or mtime can cure it. Permission denied is cured by a chmod (no mtime change) and is
# re-checked with access(); "changed since it was scanned" is transient by nature.
RETRY_WHEN_READABLE = frozenset({files.PERMISSION_DENIED})
NOT_REMEMBERED = frozenset({files.CHANGED})

Skip = tuple[int, int, str]  # size, mtime_ns (-1, -1 for a scan-time skip), reason


class SkipLedger:
    """The skips of one pass. ``watched``: ``watch()``'s memory across passes (path ->
    size, mtime_ns, reason), in which a file is reported once and not retried until it
    changes; None for a single pass."""

    def __init__(
        self, on_skip: SkipCallback, *, verbose: bool, watched: dict[str, Skip] | None
    ) -> None:
        self.on_skip, self.verbose, self.watched = on_skip, verbose, watched
        self.counts: Counter[str] = Counter()  # reason -> files, every kind of skip
        self.stats: dict[str, files.FileStat] = {}  # the files this pass works on
        self.new: dict[str, Skip] = {}  # this pass's skips of scanned files
        self.known: dict[str, Skip] = {}  # of the scan: those clipdb.skipped_files holds
        self.still_bad: dict[str, str] = {}  # of known: unchanged, so not retried

    @property
    def known_bad(self) -> int:
        return len(self.still_bad)

    def skip(self, path: str, reason: str) -> None:
        """A file of this pass that could not be used: counted, reported, remembered."""
        self.counts[reason] += 1
        self.on_skip(path, reason)
        if path in self.stats:
            self.new[path] = (*identity(self.stats[path]), reason)
            if self.watched is not None:
                self.watched[path] = self.new[path]

    def scan_skips(self, skipped: list[tuple[str, str]]) -> None:
        """What the scan could not even stat as a file (reported once in --watch)."""
        for path, reason in skipped:
            self.counts[reason] += 1
            if self.watched is not None and self.watched.get(path, (0, 0, ""))[2] == reason:
                continue
            self.on_skip(path, reason)
            if self.watched is not None:
                self.watched[path] = (-1, -1, reason)

    def usable(self, stats: dict[str, files.FileStat]) -> dict[str, files.FileStat]:
        """The scanned files to work on: in --watch, a file skipped before is not retried
        (or reported) until it changes. The ledger keeps the dict to remember skips by."""
        if self.watched is not None:
            todo = {}
            for path, stat in stats.items():
                bad = self.watched.get(path)
                if bad is not None and bad[:2] == identity(stat):
                    self.counts[bad[2]] += 1
                else:
                    todo[path] = stat
            stats = todo
        self.stats = stats
        return stats

    def drop_known(self, conn: Any, model: Model | None) -> None:
        """Take the files an earlier run skipped and that are still as they were out of the
        ledger's stats: counted, listed only with ``verbose``, not retried."""
        if model is None:
            return
        self.known = queries.skipped_files(conn, model, list(self.stats))
        for path, (size, mtime_ns, reason) in self.known.items():
            if (size, mtime_ns) != identity(self.stats[path]):
                continue
            if reason in RETRY_WHEN_READABLE and os.access(path, os.R_OK):
                continue
            self.still_bad[path] = reason
            del self.stats[path]
            self.counts[reason] += 1
            if self.verbose and (self.watched is None or path not in self.watched):
                self.on_skip(path, reason)
            if self.watched is not None:
                self.watched[path] = (size, mtime_ns, reason)

    def remember(self, conn: Any, model: Model, roots: list[str], seen: set[str]) -> None:
        """Record this pass's skips in clipdb.skipped_files; forget the known ones that were
        retried and worked, and those whose files are gone."""
        retried = [path for path in self.known if path not in self.still_bad]
        gone = [
            path
            for root in roots
            for path in queries.skipped_under(conn, model, root)
            if path not in seen and files.is_gone(path)
        ]
        with conn.transaction():
            store.record_skips(
                conn,
                model,
                [(path, *rest) for path, rest in self.new.items() if rest[2] not in NOT_REMEMBERED],
            )
            store.forget_skips(conn, model, [p for p in retried if p not in self.new] + gone)
