"""The read-only role cannot stall writers: not model registration, not migrations; its limits.

Each test has a reader hold every lock it is able to take, then runs the writer's step in a
thread with a deadline: the old design (advisory locks any role may take) waited forever.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
import pytest

from clipdb.db import Database, migrate
from clipdb.db.migrate import MIGRATION_LOCK_KEY, current_revision, downgrade, upgrade
from clipdb.db.registry import register_model
from clipdb.errors import ClipdbError

HEAD = migrate.head_from_files()


def reader_url(database: Database) -> str:
    return database.url.replace("postgres@", "clipdb_reader@", 1)


def finishes(step: Callable[[], Any], within: float) -> tuple[bool, list[BaseException]]:
    """Run ``step`` in a thread: (did it finish within ``within`` s, what it raised)."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            step()
        except BaseException as err:  # noqa: BLE001 - handed to the test
            errors.append(err)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(within)
    return not thread.is_alive(), errors


@contextmanager
def reader_holding(database: Database, *statements: str) -> Iterator[psycopg.Connection[Any]]:
    """A clipdb_reader session inside an open transaction that ran ``statements``; ended (its
    locks freed) on exit, even when the test failed while a writer still waits on it."""
    conn = psycopg.connect(reader_url(database))
    try:
        for statement in statements:
            conn.execute(statement)
        yield conn
    finally:
        with psycopg.connect(database.url, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (conn.info.backend_pid,))
        conn.close()


def test_reader_cannot_take_the_locks_writers_need(database) -> None:
    with psycopg.connect(reader_url(database), autocommit=True) as conn:
        for statement in (
            "LOCK TABLE clipdb.models IN SHARE ROW EXCLUSIVE MODE",
            "LOCK TABLE clipdb.alembic_version IN SHARE ROW EXCLUSIVE MODE",
            "LOCK TABLE clipdb.images IN EXCLUSIVE MODE",
            "SELECT * FROM clipdb.models FOR SHARE",
        ):
            with conn.transaction(), pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(statement)


def test_reader_holding_every_lock_it_can_does_not_stop_register_model(database) -> None:
    with reader_holding(
        database,
        "SELECT pg_advisory_lock(hashtext('clipdb.register_model'))",  # the lock 0001-0002 took
        f"SELECT pg_advisory_lock({MIGRATION_LOCK_KEY})",
        "LOCK TABLE clipdb.models IN ACCESS SHARE MODE",
        "SELECT count(*) FROM clipdb.images",
        "SELECT * FROM clipdb.models",
    ):

        def register() -> None:
            with database.connect() as conn:
                register_model(conn, "brand-new", "none", 8)

        done, errors = finishes(register, within=10)
        assert done and errors == [], errors
    with database.connect() as conn:
        assert conn.execute("SELECT architecture FROM clipdb.models").fetchall() == [("brand-new",)]


def test_reader_holding_every_lock_it_can_does_not_stop_a_migration(database) -> None:
    downgrade(database, "0002")
    with reader_holding(
        database,
        f"SELECT pg_advisory_lock({MIGRATION_LOCK_KEY})",  # the lock migrations used to take
        "SELECT pg_advisory_lock(hashtext('clipdb.register_model'))",
        "LOCK TABLE clipdb.alembic_version IN ACCESS SHARE MODE",
        "SELECT * FROM clipdb.models",
    ):
        done, errors = finishes(lambda: upgrade(database), within=20)
        assert done and errors == [], errors
    with psycopg.connect(database.url) as conn:
        assert current_revision(conn) == HEAD


def test_migration_blocked_by_a_reader_fails_naming_it(database, monkeypatch) -> None:
    """A reader's open transaction on a table a migration alters cannot be overtaken: the
    migration gives up after LOCK_TIMEOUT and says which session to end."""
    monkeypatch.setattr(migrate, "LOCK_TIMEOUT", "1s")
    downgrade(database, "0001")
    with reader_holding(database, "SELECT count(*) FROM clipdb.images") as reader:
        done, errors = finishes(lambda: upgrade(database), within=20)
        assert done, "upgrade waited for the reader"
        assert len(errors) == 1 and isinstance(errors[0], ClipdbError), errors
        message = str(errors[0])
        assert f"pid {reader.info.backend_pid} (clipdb_reader)" in message, message
        assert "\n" not in message and "pg_terminate_backend" in message
    with psycopg.connect(database.url) as conn:
        assert current_revision(conn) == "0001"  # nothing half-done
    assert upgrade(database) == HEAD  # the reader gone, it goes through


def test_reader_holding_the_advisory_lock_of_a_new_database_is_named(
    empty_database, template_database, monkeypatch
) -> None:
    monkeypatch.setattr(migrate, "LOCK_TIMEOUT", "1s")
    with reader_holding(empty_database, f"SELECT pg_advisory_lock({MIGRATION_LOCK_KEY})") as r:
        done, errors = finishes(lambda: upgrade(empty_database), within=20)
        assert done, "upgrade waited for the reader"
        assert len(errors) == 1 and f"pid {r.info.backend_pid} (clipdb_reader)" in str(errors[0])
    assert upgrade(empty_database) == HEAD


def test_reader_limits_are_in_force(database) -> None:
    with psycopg.connect(reader_url(database), autocommit=True) as conn:
        assert conn.execute("SHOW statement_timeout").fetchone() == ("30s",)
        assert conn.execute("SHOW idle_in_transaction_session_timeout").fetchone() == ("1min",)
        limit = conn.execute(
            "SELECT rolconnlimit FROM pg_roles WHERE rolname = current_user"
        ).fetchone()
        assert limit == (16,)
        others = [psycopg.connect(reader_url(database)) for _ in range(15)]  # 16 in all
        try:
            with pytest.raises(psycopg.OperationalError, match="too many connections for role"):
                psycopg.connect(reader_url(database)).close()
        finally:
            for other in others:
                other.close()
