"""One ingest at a time per (model, root): a session-level advisory lock held for the run.

Why: two ingests of the same folder started together both planned against the same rows,
both encoded every image and both reported them new. Now the second waits (saying so, once)
until the first has written its rows, and its plan then finds them unchanged.

The key is ``hashtextextended`` of the model's identity and the root's stored (display) form:
nested roots (``/a`` and ``/a/b``) are different keys and are not serialised. The lock is
taken by polling ``pg_try_advisory_lock`` rather than waiting inside ``pg_advisory_lock``: a
statement that waits holds a snapshot, the first ingest's ``CREATE INDEX CONCURRENTLY`` would
wait for that snapshot, and the two would wait for each other where PostgreSQL cannot see it.
Any role may take an advisory lock; a ``clipdb_reader`` session holding this one is no ingest,
and is ended after the bounded wait (clipdb.config.lock_wait_seconds).
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any

import psycopg

from clipdb.db import Database, connect_checked
from clipdb.db.blockers import READER, Blocker, say, session_role, terminate
from clipdb.errors import ClipdbError
from clipdb.files import display
from clipdb.terminal import printable

APPLICATION = "clipdb ingest"  # application_name of the lock's session: "clipdb ingest (pid N)"
POLL_S = 0.5  # between tries while another ingest holds the lock

KEY = "hashtextextended('clipdb ingest' || chr(10) || %s || chr(10) || %s, 0)"


@contextmanager
def ingest_lock(
    database: Database,
    model_label: str,
    roots: list[str],
    *,
    wait_s: float,
) -> Iterator[None]:
    """Hold the ingest lock of every root (in sorted order: two runs never deadlock) for the
    body. ``model_label`` is the model's stored identity, ``architecture/pretrained``."""
    conn = connect_checked(
        database.url, autocommit=True, application_name=f"{APPLICATION} (pid {os.getpid()})"
    )
    try:
        for root in sorted({display(root) for root in roots}):
            _acquire(conn, model_label, root, wait_s)
        yield
    finally:
        # Released here, not only by closing: the server ends a closed session a moment after
        # the client, and a next run of this process would find its own lock still held.
        with suppress(psycopg.Error):
            conn.execute("SELECT pg_advisory_unlock_all()")
        conn.close()


def _acquire(conn: psycopg.Connection[Any], label: str, root: str, wait_s: float) -> None:
    said = False
    since = time.monotonic()
    while not _try(conn, label, root):
        holder = _holder(conn, label, root)
        if holder is None:
            continue  # released between the two queries
        pid, application = holder
        if not said:
            said = True
            match = re.fullmatch(re.escape(APPLICATION) + r" \(pid (\d+)\)", application)
            who = f"pid {match.group(1)}" if match else f"server pid {pid}"
            say(f"waiting for another ingest of {printable(root)} with {label} ({who}) to finish")
        blocker = session_role(conn, pid)
        if blocker is not None and blocker.role == READER and time.monotonic() - since >= wait_s:
            _end_reader(conn, blocker, root)
        time.sleep(POLL_S)


def _end_reader(conn: psycopg.Connection[Any], blocker: Blocker, root: str) -> None:
    say(
        f"the ingest lock of {printable(root)} is held by {blocker.describe()}, which cannot "
        "ingest; ending it (the read-only role)"
    )
    failed = terminate(conn, blocker)
    if failed is not None:
        raise ClipdbError(f"cannot end pid {blocker.pid}, which holds the ingest lock: {failed}")


def _try(conn: psycopg.Connection[Any], label: str, root: str) -> bool:
    row = conn.execute(f"SELECT pg_try_advisory_lock({KEY})", (label, root)).fetchone()
    return bool(row and row[0])


def _holder(conn: psycopg.Connection[Any], label: str, root: str) -> tuple[int, str] | None:
    """(server pid, application_name) of the session holding this lock."""
    row = conn.execute(
        f"""
        WITH k AS (SELECT {KEY} AS key)
        SELECT l.pid, coalesce(a.application_name, '') FROM pg_locks l CROSS JOIN k
        LEFT JOIN pg_stat_activity a ON a.pid = l.pid
        WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
          AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
          AND l.classid::bigint = (k.key >> 32) & 4294967295
          AND l.objid::bigint = k.key & 4294967295
        """,
        (label, root),
    ).fetchone()
    return None if row is None else (int(row[0]), str(row[1]))
