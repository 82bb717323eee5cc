"""Schema migrations: Alembic revisions in ``migrations/`` (shipped as ``clipdb.migrations``).

Every command brings the schema to head before it works; the common case (already at head)
is answered from the revision files without importing Alembic.
"""

from __future__ import annotations

import importlib.util
import re
import sys
from functools import cache
from pathlib import Path
from typing import Any

import psycopg

from clipdb.db import Database, connect_checked, server_address
from clipdb.errors import ClipdbError, first_line

SCHEMA = "clipdb"
VERSION_TABLE = "alembic_version"
# Migrators serialise on a lock of clipdb.alembic_version in SHARE ROW EXCLUSIVE mode, taken in
# the migration's own transaction: it needs write rights on that table, so a read-only role
# (clipdb_reader) cannot hold it and stall every command before it migrates, as it could the
# advisory lock all roles may take. Only a database with no clipdb schema yet (nothing to lock,
# no rights granted to anyone) falls back to this advisory lock ("clipdb"), waited for with
# LOCK_TIMEOUT like every other lock a migration needs.
MIGRATION_LOCK_KEY = 0x636C_6970_6462
# How long a migration waits for a lock another session holds (a reader's open transaction on a
# table the migration alters, a foreign advisory lock) before it fails naming that session.
LOCK_TIMEOUT = "30s"


@cache
def migrations_dir() -> Path:
    """Where the revisions are: the top-level ``migrations/`` beside the package in a checkout
    (so a second worktree migrates with its own revisions), else the ``clipdb.migrations``
    package that a wheel ships (setuptools ``package-dir``)."""
    checkout = Path(__file__).resolve().parents[2] / "migrations"
    if (checkout / "env.py").is_file() and (checkout / "versions").is_dir():
        return checkout
    spec = importlib.util.find_spec("clipdb.migrations")
    if spec is None or not spec.submodule_search_locations:
        raise ClipdbError("clipdb's migrations are missing from this installation")
    return Path(next(iter(spec.submodule_search_locations)))


def _alembic_config(connection: Any = None) -> Any:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    config.attributes["connection"] = connection
    return config


_REVISION_LINE = re.compile(
    r"""^(down_revision|revision)\s*(?::[^=]*)?=\s*["']?([^"'\s]+)""", re.MULTILINE
)


def head_from_files() -> str | None:
    """The migrations' head, read from the revision files: importing Alembic costs ~0.3-0.7 s,
    most of a ``--like`` search or a no-op ingest. None when in any doubt (several heads)."""
    revisions: set[str] = set()
    parents: set[str] = set()
    for script in (migrations_dir() / "versions").glob("[0-9]*.py"):
        for key, value in _REVISION_LINE.findall(script.read_text(encoding="utf-8")):
            (revisions if key == "revision" else parents).add(value)
    heads = revisions - parents
    return heads.pop() if len(heads) == 1 else None


def known_revisions() -> tuple[set[str], str]:
    """All revisions this code knows, and its head."""
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(_alembic_config())
    head = script.get_current_head()
    assert head is not None
    return {rev.revision for rev in script.walk_revisions()}, head


def current_revision(conn: psycopg.Connection[Any]) -> str | None:
    row = conn.execute(
        "SELECT to_regclass(%s) IS NOT NULL", (f"{SCHEMA}.{VERSION_TABLE}",)
    ).fetchone()
    if not row or not row[0]:
        return None
    found = conn.execute(f"SELECT version_num FROM {SCHEMA}.{VERSION_TABLE}").fetchone()
    return found[0] if found else None


def current_revision_of(database: Database) -> str | None:
    with connect_checked(database.url, autocommit=True) as conn:
        return current_revision(conn)


def _check_revision(revision: str | None, known: set[str]) -> None:
    if revision is not None and revision not in known:
        raise ClipdbError(
            f"database schema revision {revision} is newer than this clipdb knows "
            f"(latest: {max(known)}); upgrade clipdb instead of downgrading the database"
        )


def _check_pgvector(conn: psycopg.Connection[Any], url: str) -> None:
    row = conn.execute(
        "SELECT default_version FROM pg_available_extensions WHERE name = 'vector'"
    ).fetchone()
    if row is None:
        raise ClipdbError(
            f"PostgreSQL at {server_address(url)} does not have the pgvector extension; "
            "install it (e.g. the pgvector/pgvector Docker image, see docker-compose.yml) "
            "or drop --database-url to use clipdb's embedded server"
        )


def upgrade(database: Database, revision: str = "head", *, implicit: bool = False) -> str:
    """Migrate to ``revision`` under the migration lock; refuse a schema newer than the code.

    ``implicit`` (every command's open): on a standby, warn about a schema behind the code
    instead of failing, so read commands keep working there.
    """
    with connect_checked(database.url, autocommit=True) as conn:
        if not implicit and _in_recovery(conn):
            raise ClipdbError(
                f"{server_address(database.url)} is a read-only standby; run clipdb db "
                "upgrade against its primary"
            )
        current = current_revision(conn)
        quick_head = head_from_files()
        if revision == "head" and quick_head is not None and current == quick_head:
            return quick_head  # the common case: no lock, no Alembic import
        known, head = known_revisions()
        _check_revision(current, known)
        if current == head and revision == "head":
            return head
        if _in_recovery(conn):
            # A streaming standby is read-only; its schema arrives from the primary.
            if implicit:
                print(
                    f"warning: {server_address(database.url)} is a standby with schema "
                    f"revision {current or 'none'} (code expects {head}); run "
                    "'clipdb db upgrade' against the primary",
                    file=sys.stderr,
                )
                return current or "none"
            raise ClipdbError(
                f"{server_address(database.url)} is a read-only standby; run clipdb db "
                "upgrade against its primary"
            )
        _check_pgvector(conn, database.url)
        _migrate(database, conn, "upgrade", revision, known)
        if database.embedded_home is not None:
            from clipdb.db.embedded import restrict_temporary

            restrict_temporary(conn)  # a server of your own: README says how
    return revision if revision != "head" else head


def downgrade(database: Database, revision: str) -> None:
    """Migrate down (tests of the migrations; never done implicitly)."""
    with connect_checked(database.url, autocommit=True) as conn:
        _migrate(database, conn, "downgrade", revision, None)


def _in_recovery(conn: psycopg.Connection[Any]) -> bool:
    row = conn.execute("SELECT pg_is_in_recovery()").fetchone()
    return bool(row and row[0])


def _has_version_table(conn: psycopg.Connection[Any]) -> bool:
    row = conn.execute(
        "SELECT to_regclass(%s) IS NOT NULL", (f"{SCHEMA}.{VERSION_TABLE}",)
    ).fetchone()
    return bool(row and row[0])


def _migrate(
    database: Database,
    conn: psycopg.Connection[Any],
    direction: str,
    revision: str,
    known: set[str] | None,
) -> None:
    if _has_version_table(conn):  # serialised inside _run_alembic
        _run_alembic(database, direction, revision, known)
        return
    try:
        conn.execute("SELECT set_config('lock_timeout', %s, false)", (LOCK_TIMEOUT,))
        conn.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK_KEY,))
    except psycopg.errors.LockNotAvailable:
        raise _lock_timeout_error(database, direction, revision) from None
    try:
        if known is not None:
            _check_revision(current_revision(conn), known)
        _run_alembic(database, direction, revision, known)
    finally:
        conn.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK_KEY,))


def _lock_holders(database: Database) -> list[tuple[int, str]]:
    """(pid, role) of other sessions holding a lock on clipdb's relations or its advisory key:
    who a timed-out migration waited for."""
    with connect_checked(database.url, autocommit=True) as conn:
        rows = conn.execute(
            """
            SELECT DISTINCT l.pid, coalesce(a.usename, '?') FROM pg_locks l
            LEFT JOIN pg_stat_activity a ON a.pid = l.pid
            WHERE l.granted AND l.pid <> pg_backend_pid()
              AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
              AND (l.relation IN (SELECT oid FROM pg_class
                                  WHERE relnamespace = to_regnamespace(%s))
                   OR (l.locktype = 'advisory' AND l.classid::bigint = %s
                       AND l.objid::bigint = %s AND l.objsubid = 1))
            ORDER BY l.pid
            """,
            (SCHEMA, MIGRATION_LOCK_KEY >> 32, MIGRATION_LOCK_KEY & 0xFFFF_FFFF),
        ).fetchall()
    return [(int(pid), str(role)) for pid, role in rows]


def _lock_timeout_error(database: Database, direction: str, revision: str) -> ClipdbError:
    holders = ", ".join(f"pid {pid} ({role})" for pid, role in _lock_holders(database))
    return ClipdbError(
        f"schema {direction} to {revision} on {server_address(database.url)} waited "
        f"{LOCK_TIMEOUT} for a lock held by {holders or 'another session'}; end that session "
        "(SELECT pg_terminate_backend(pid)) or let it finish, and run again"
    )


def _run_alembic(database: Database, direction: str, revision: str, known: set[str] | None) -> None:
    from alembic import command
    from sqlalchemy import exc, text

    try:
        with database.engine.begin() as connection:
            if _exists(connection, f"{SCHEMA}.{VERSION_TABLE}"):
                # Waits for other migrators only: no role that may merely read can hold a lock
                # that conflicts with this mode.
                connection.execute(
                    text(f"LOCK TABLE {SCHEMA}.{VERSION_TABLE} IN SHARE ROW EXCLUSIVE MODE")
                )
                if known is not None:  # another process may have migrated while we waited
                    found = connection.execute(
                        text(f"SELECT version_num FROM {SCHEMA}.{VERSION_TABLE}")
                    ).scalar()
                    _check_revision(found, known)
            connection.execute(
                text("SELECT set_config('lock_timeout', :timeout, true)"),
                {"timeout": LOCK_TIMEOUT},
            )
            connection.execute(text(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}"))
            config = _alembic_config(connection)
            getattr(command, direction)(config, revision)
    except exc.DBAPIError as err:
        if isinstance(err.orig, psycopg.errors.LockNotAvailable):
            raise _lock_timeout_error(database, direction, revision) from None
        # One transaction: a failed migration leaves the schema as it was.
        first = first_line(err.orig) if err.orig else str(err)
        raise ClipdbError(
            f"schema {direction} to {revision} failed on {server_address(database.url)}: {first}"
        ) from None


def _exists(connection: Any, name: str) -> bool:
    from sqlalchemy import text

    found = connection.execute(text("SELECT to_regclass(:name) IS NOT NULL"), {"name": name})
    return bool(found.scalar())
