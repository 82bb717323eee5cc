"""Database selection, connections, migrations on start, and ``python -m clipdb.db``."""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import psycopg
from psycopg import conninfo

from clipdb.config import Settings, add_common_arguments
from clipdb.errors import ClipdbError, UsageError

SCHEMA = "clipdb"
VERSION_TABLE = "alembic_version"
MIGRATION_LOCK_KEY = 0x636C_6970_6462  # "clipdb": one advisory lock for all migrating processes
MIGRATIONS_DIR = Path(__file__).parent / "migrations"


def server_address(url: str) -> str:
    """host:port (or socket dir) of a libpq URL, for error messages."""
    try:
        params = conninfo.conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return "<unparseable URL>"
    host = str(params.get("host") or "localhost")
    port = str(params.get("port") or "5432")
    return f"{host}:{port}"


def libpq_url(url: str) -> str:
    """Accept SQLAlchemy-style URLs (postgresql+psycopg://) as well as plain libpq ones."""
    for prefix in ("postgresql+psycopg://", "postgresql+psycopg2://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql://" + url[len(prefix) :]
    return url


@dataclass
class Database:
    """One clipdb database: its URL and, once opened, a migrated schema."""

    url: str
    embedded_home: Path | None = None

    def connect(self, *, autocommit: bool = False, **kwargs: Any) -> psycopg.Connection[Any]:
        """A psycopg connection with pgvector's types registered."""
        from pgvector.psycopg import register_vector

        conn = connect_checked(self.url, autocommit=autocommit, **kwargs)
        try:
            register_vector(conn)
        except psycopg.ProgrammingError:
            conn.close()
            raise ClipdbError(
                f"database at {server_address(self.url)} has no clipdb schema; "
                "run python -m clipdb.db upgrade"
            ) from None
        return conn

    @cached_property
    def engine(self):  # type: ignore[no-untyped-def]
        """SQLAlchemy engine (for Alembic and status queries)."""
        from sqlalchemy import create_engine
        from sqlalchemy.pool import NullPool

        # No pool: a lingering idle connection would block CREATE DATABASE ... TEMPLATE and
        # DROP DATABASE, and our commands are short-lived anyway.
        return create_engine(
            "postgresql+psycopg://" + libpq_url(self.url)[len("postgresql://") :],
            poolclass=NullPool,
        )


def connect_checked(url: str, **kwargs: Any) -> psycopg.Connection[Any]:
    """psycopg.connect with a one-line error naming the server."""
    try:
        return psycopg.connect(libpq_url(url), connect_timeout=10, **kwargs)
    except psycopg.OperationalError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ClipdbError(
            f"cannot connect to PostgreSQL at {server_address(url)}: {first}"
        ) from None
    except psycopg.ProgrammingError as err:
        raise ClipdbError(f"invalid database URL: {err}") from None


def resolve_database(settings: Settings) -> Database:
    """The database named by --database-url / CLIPDB_DATABASE_URL, else the embedded one."""
    if settings.database_url:
        return Database(url=libpq_url(settings.database_url))
    from clipdb.embedded import ensure_server

    server = ensure_server(settings.home)
    return Database(url=server.url(), embedded_home=server.home)


def open_database(settings: Settings, *, migrate: bool = True) -> Database:
    """Resolve the database and bring its schema to head (what every command does first)."""
    database = resolve_database(settings)
    if migrate:
        upgrade(database)
    return database


# --- migrations -------------------------------------------------------------------------------


def _alembic_config(connection: Any = None):  # type: ignore[no-untyped-def]
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
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
    for script in (MIGRATIONS_DIR / "versions").glob("*.py"):
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


def upgrade(database: Database, revision: str = "head") -> str:
    """Migrate to ``revision`` under an advisory lock; refuse a schema newer than the code."""
    with connect_checked(database.url, autocommit=True) as conn:
        current = current_revision(conn)
        quick_head = head_from_files()
        if revision == "head" and quick_head is not None and current == quick_head:
            return quick_head  # the common case: no lock, no Alembic import
        known, head = known_revisions()
        _check_revision(current, known)
        if current == head and revision == "head":
            return head
        _check_pgvector(conn, database.url)
        conn.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK_KEY,))
        try:
            _check_revision(current_revision(conn), known)
            _run_alembic(database, "upgrade", revision)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK_KEY,))
    return revision if revision != "head" else head


def require_write_access(database: Database) -> None:
    """Fail before any work (and before loading a model) when the role may not write rows."""
    with connect_checked(database.url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT current_user, has_table_privilege('clipdb.images', 'INSERT, UPDATE, DELETE')"
        ).fetchone()
    if row is not None and not row[1]:
        raise ClipdbError(
            f"role {row[0]} may not write to clipdb.images (a read-only role such as "
            "clipdb_reader can only search)"
        )


def downgrade(database: Database, revision: str) -> None:
    """Migrate down (tests of the migrations; never done implicitly)."""
    with connect_checked(database.url, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK_KEY,))
        try:
            _run_alembic(database, "downgrade", revision)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK_KEY,))


def _run_alembic(database: Database, direction: str, revision: str) -> None:
    from alembic import command
    from sqlalchemy import exc, text

    try:
        with database.engine.begin() as connection:
            connection.execute(text(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}"))
            config = _alembic_config(connection)
            getattr(command, direction)(config, revision)
    except exc.DBAPIError as err:
        # One transaction: a failed migration leaves the schema as it was.
        first = str(err.orig).strip().splitlines()[0] if err.orig else str(err)
        raise ClipdbError(
            f"schema {direction} to {revision} failed on {server_address(database.url)}: {first}"
        ) from None


# --- status -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelStatus:
    model_id: int
    architecture: str
    pretrained: str
    dim: int
    image_count: int
    index_name: str | None
    index_bytes: int | None


@dataclass(frozen=True)
class Status:
    server: str
    server_version: str
    pgvector_version: str | None
    revision: str | None
    head: str
    models: list[ModelStatus]


def database_status(database: Database) -> Status:
    """What ``python -m clipdb.db status`` prints."""
    _, head = known_revisions()
    with connect_checked(database.url, autocommit=True) as conn:
        version = conn.execute("SHOW server_version").fetchone()
        pgvector = conn.execute(
            "SELECT extversion FROM pg_extension WHERE extname = 'vector'"
        ).fetchone()
        revision = current_revision(conn)
        models: list[ModelStatus] = []
        if revision is not None:
            rows = conn.execute(
                """
                SELECT m.id, m.architecture, m.pretrained, m.dim,
                       (SELECT count(*) FROM clipdb.images i WHERE i.model_id = m.id),
                       c.relname, pg_relation_size(c.oid)
                FROM clipdb.models m
                LEFT JOIN pg_class c ON c.relname = 'images_hnsw_model_' || m.id
                    AND c.relnamespace = 'clipdb'::regnamespace
                ORDER BY m.id
                """
            ).fetchall()
            models = [ModelStatus(*row) for row in rows]
    if database.embedded_home is not None:
        server = f"embedded, data in {database.embedded_home}"
    else:
        server = f"external, {server_address(database.url)}"
    return Status(
        server=server,
        server_version=version[0] if version else "?",
        pgvector_version=pgvector[0] if pgvector else None,
        revision=revision,
        head=head,
        models=models,
    )


def format_status(status: Status, url: str) -> str:
    lines = [
        f"server:    {status.server}",
        f"url:       {url}",
        f"postgres:  {status.server_version}, "
        f"pgvector {status.pgvector_version or 'not installed'}",
        f"schema:    revision {status.revision or 'none'} (head {status.head})",
    ]
    if not status.models:
        lines.append("models:    none indexed yet")
    for model in status.models:
        size = "no index" if model.index_bytes is None else _human_bytes(model.index_bytes)
        lines.append(
            f"model {model.model_id}:   {model.architecture} ({model.pretrained}), "
            f"dim {model.dim}, {model.image_count} images, index {model.index_name or '-'} ({size})"
        )
    return "\n".join(lines)


def _human_bytes(count: int) -> str:
    value = float(count)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{count} B"


# --- CLI --------------------------------------------------------------------------------------

EXAMPLES = """\
examples:
  python -m clipdb.db url                 # start the embedded server, print its URL
  psql "$(python -m clipdb.db url)"       # look around with psql
  python -m clipdb.db status              # revision, images per model, index sizes
  python -m clipdb.db stop                # stop the embedded server
  CLIPDB_DATABASE_URL=postgresql://clipdb:clipdb@localhost:5432/clipdb python -m clipdb.db upgrade
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m clipdb.db",
        description="Manage clipdb's database: the embedded server or the one you point it at.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "action",
        choices=["url", "status", "stop", "upgrade"],
        help="url: print a connection URL (starting the embedded server if needed); "
        "status: server, schema, counts and indexes; stop: stop the embedded server; "
        "upgrade: migrate the schema to the latest revision",
    )
    add_common_arguments(parser, with_model=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from clipdb.cli import run_guarded

    parser = build_parser()
    args = parser.parse_args(argv)
    settings = Settings.from_args(args)

    def body() -> int:
        if args.action == "stop":
            if settings.database_url:
                raise UsageError("stop applies to the embedded server only, not --database-url")
            from clipdb.embedded import stop_server

            print("stopped" if stop_server(settings.home) else "not running")
            return 0
        database = open_database(settings)
        if args.action == "url":
            print(database.url)
        elif args.action == "status":
            print(format_status(database_status(database), database.url))
        elif args.action == "upgrade":
            print(f"schema at revision {current_revision_of(database)}")
        return 0

    return run_guarded(parser, body)


def current_revision_of(database: Database) -> str | None:
    with connect_checked(database.url, autocommit=True) as conn:
        return current_revision(conn)


if __name__ == "__main__":
    sys.exit(main())
