"""Sessions that hold up ingest: named after a bounded wait, and ended when they are the
read-only role's (another role's only when asked: ``--terminate-blockers``).

Why: ``CREATE INDEX CONCURRENTLY`` waits for every transaction in the database that holds an
older snapshot, and ``DROP INDEX CONCURRENTLY`` for every one holding a lock on the table. A
``clipdb_reader`` session may lift its own timeouts and keep a REPEATABLE READ transaction
open for ever, so an index build (bulk load, first big ingest, index heal) used to wait for it
without a word. PostgreSQL cannot time such a wait out and retry without leaving an invalid
index behind, so a watcher beside the statement asks ``pg_blocking_pids`` what it waits for.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import psycopg

from clipdb.db import Database, connect_checked
from clipdb.errors import ClipdbError, first_line

READER = "clipdb_reader"  # the read-only role migration 0001 creates


@dataclass(frozen=True)
class Blocker:
    """Another session: its server pid, role and how long its transaction has been open."""

    pid: int
    role: str
    age_s: float | None  # None: not visible to this role (pg_stat_activity hides it)

    def describe(self) -> str:
        age = (
            "age not visible" if self.age_s is None else f"in a transaction for {self.age_s:.0f} s"
        )
        return f"pid {self.pid} ({self.role}, {age})"


def blockers_of(conn: psycopg.Connection[Any], pid: int) -> list[Blocker]:
    """The sessions the backend ``pid`` is waiting for right now."""
    rows = conn.execute(
        "SELECT b.pid, coalesce(a.usename, '?'), "
        "extract(epoch FROM clock_timestamp() - a.xact_start)::float8 "
        "FROM unnest(pg_blocking_pids(%s)) AS b(pid) "
        "LEFT JOIN pg_stat_activity a ON a.pid = b.pid ORDER BY b.pid",
        (pid,),
    ).fetchall()
    return [
        Blocker(int(p), str(role), None if age is None else float(age)) for p, role, age in rows
    ]


def session_role(conn: psycopg.Connection[Any], pid: int) -> Blocker | None:
    """One session as a :class:`Blocker`; None when it is gone."""
    row = conn.execute(
        "SELECT pid, coalesce(usename, '?'), "
        "extract(epoch FROM clock_timestamp() - xact_start)::float8 "
        "FROM pg_stat_activity WHERE pid = %s",
        (pid,),
    ).fetchone()
    if row is None:
        return None
    return Blocker(int(row[0]), str(row[1]), None if row[2] is None else float(row[2]))


def terminate(conn: psycopg.Connection[Any], blocker: Blocker) -> str | None:
    """End a session; None when done (or already gone), else why it could not be."""
    try:
        conn.execute("SELECT pg_terminate_backend(%s)", (blocker.pid,))
    except psycopg.errors.InsufficientPrivilege as err:
        return first_line(err)
    return None


def say(line: str) -> None:
    """One line on stderr (tests wrap this to learn that a line was said)."""
    print(line, file=sys.stderr, flush=True)


class Watch:
    """What one watched statement waits for, and what was done about it."""

    def __init__(self, what: str, wait_s: float, terminate_others: bool) -> None:
        self.what = what
        self.wait_s = wait_s
        self.terminate_others = terminate_others
        self.told: set[int] = set()  # sessions named once already
        self.ended: set[int] = set()

    def handle(self, conn: psycopg.Connection[Any], blocker: Blocker) -> None:
        if blocker.role == READER or self.terminate_others:
            if blocker.pid in self.ended:
                return  # asked to end; it is on its way out
            whose = "the read-only role" if blocker.role == READER else "--terminate-blockers"
            held = f"{self.what} waited {self.wait_s:g} s for {blocker.describe()}"
            say(f"{held}; ending it ({whose})")
            failed = terminate(conn, blocker)
            if failed is None:
                self.ended.add(blocker.pid)
            elif blocker.pid not in self.told:
                self.told.add(blocker.pid)
                say(f"cannot end pid {blocker.pid}: {failed}; still waiting for it")
            return
        if blocker.pid not in self.told:
            self.told.add(blocker.pid)
            say(
                f"{self.what} is waiting for {blocker.describe()}; end that database session or "
                "let it finish (or run ingest with --terminate-blockers to end it)"
            )


@contextmanager
def watched(
    database: Database,
    conn: psycopg.Connection[Any],
    what: str,
    *,
    wait_s: float,
    terminate_others: bool = False,
) -> Iterator[None]:
    """Around a statement on ``conn`` that may wait for other sessions: every ``wait_s`` seconds
    a thread (on a connection of its own) looks at what it waits for; see :class:`Watch`."""
    done = threading.Event()
    watch = Watch(what, wait_s, terminate_others)
    thread = threading.Thread(
        target=_watch,
        args=(database, conn.info.backend_pid, watch, done),
        name="clipdb-blockers",
        daemon=True,
    )
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()


def _watch(database: Database, pid: int, watch: Watch, done: threading.Event) -> None:
    try:
        with connect_checked(database.url, autocommit=True) as conn:
            while not done.wait(watch.wait_s):
                for blocker in blockers_of(conn, pid):
                    watch.handle(conn, blocker)
    except (psycopg.Error, ClipdbError) as err:
        # The statement itself still runs (and reports its own failure); only the naming stops.
        say(f"warning: cannot see what {watch.what} waits for: {first_line(err)}")
