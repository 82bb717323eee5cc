"""The database: which one (embedded or a URL), connections, open = resolve + migrate, status.

Every statement on clipdb's tables lives in this package: ``registry`` (models), ``queries``
(reads), ``store`` (writes); ``migrate`` owns the schema and ``embedded`` the bundled server.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import psycopg
from psycopg import conninfo

from clipdb.config import Settings
from clipdb.errors import ClipdbError, first_line


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
    def engine(self) -> Any:
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
        raise ClipdbError(
            f"cannot connect to PostgreSQL at {server_address(url)}: {first_line(err)}"
        ) from None
    except psycopg.ProgrammingError as err:
        raise ClipdbError(f"invalid database URL: {err}") from None


def resolve_database(settings: Settings) -> Database:
    """The database named by --database-url / CLIPDB_DATABASE_URL, else the embedded one."""
    if settings.database_url:
        return Database(url=libpq_url(settings.database_url))
    from clipdb.db.embedded import ensure_server

    server = ensure_server(settings.home)
    return Database(url=server.url(), embedded_home=server.home)


def open_database(settings: Settings, *, migrate: bool = True, reads: bool = False) -> Database:
    """Resolve the database and bring its schema to head (what every command does first).

    ``reads``: a command that only searches; with a read URL set it gets that server
    (a standby is never migrated: a schema behind the code is a warning there).
    """
    from clipdb.db.migrate import upgrade

    if reads and settings.read_database_url:
        database = Database(url=libpq_url(settings.read_database_url))
    else:
        database = resolve_database(settings)
    if migrate:
        upgrade(database, implicit=True)
    return database


def require_write_access(database: Database) -> None:
    """Fail before any work (and before loading a model) when the role may not write rows."""
    with connect_checked(database.url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT current_user, has_table_privilege('clipdb.images', 'INSERT, UPDATE, DELETE'),"
            " pg_is_in_recovery()"
        ).fetchone()
    if row is not None and row[2]:
        raise ClipdbError(
            f"{server_address(database.url)} is a read-only standby; write to its primary "
            "(--database-url) or promote it with clipdb db promote"
        )
    if row is not None and not row[1]:
        raise ClipdbError(
            f"role {row[0]} may not write to clipdb.images (a read-only role such as "
            "clipdb_reader can only search)"
        )


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
    role: str = "primary"
    replication: dict[str, Any] | None = None
    # How embeddings are stored (halfvec, or vector while 0011's online move runs).
    storage: str | None = None
    # model id -> [{"name", "bytes", "cached_bytes"}]: what a search reads, and how much of
    # it is in shared buffers (cached_bytes None: pg_buffercache is not available).
    cache: dict[int, list[dict[str, Any]]] | None = None


def database_status(database: Database) -> Status:
    """What ``python -m clipdb.db status`` prints."""
    from clipdb.db.migrate import current_revision, known_revisions
    from clipdb.db.registry import model_statuses
    from clipdb.db.replica import replication_status

    _, head = known_revisions()
    with connect_checked(database.url, autocommit=True) as conn:
        version = conn.execute("SHOW server_version").fetchone()
        pgvector = conn.execute(
            "SELECT extversion FROM pg_extension WHERE extname = 'vector'"
        ).fetchone()
        revision = current_revision(conn)
        replication = replication_status(conn)
        models: list[ModelStatus] = []
        storage, cache = None, None
        if revision is not None:
            models = [ModelStatus(*row) for row in model_statuses(conn)]
            storage, cache = _storage_and_cache(conn)
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
        role=replication.role,
        replication=asdict(replication),
        storage=storage,
        cache=cache,
    )


def _storage_and_cache(
    conn: psycopg.Connection[Any],
) -> tuple[str, dict[int, list[dict[str, Any]]]]:
    from clipdb.db.prewarm import cache_status
    from clipdb.db.registry import list_models
    from clipdb.db.storage import storage_state

    state = storage_state(conn, count=True)
    storage = state.kind
    if state.converting:
        storage += f", moving to halfvec ({state.rows_left} rows left: clipdb db upgrade)"
    cache = {
        int(model.model_id): [asdict(item) for item in cache_status(conn, model)]
        for model in list_models(conn)
    }
    return storage, cache


def _cache_line(items: list[dict[str, Any]]) -> str:
    parts = []
    for item in items:
        name = str(item["name"]).removeprefix("clipdb.")
        cached = item["cached_bytes"]
        share = "?" if cached is None else f"{100 * cached // max(item['bytes'], 1)}%"
        parts.append(f"{name} {share} of {_human_bytes(item['bytes'])}")
    return ", ".join(parts)


def format_status(status: Status, url: str) -> str:
    lines = [
        f"server:    {status.server}",
        f"url:       {url}",
        f"postgres:  {status.server_version}, "
        f"pgvector {status.pgvector_version or 'not installed'}",
        f"schema:    revision {status.revision or 'none'} (head {status.head})",
    ]
    lines.extend(_replication_lines(status))
    if not status.models:
        lines.append("models:    none indexed yet")
    for model in status.models:
        size = "no index" if model.index_bytes is None else _human_bytes(model.index_bytes)
        lines.append(
            f"model {model.model_id}:   {model.architecture} ({model.pretrained}), "
            f"dim {model.dim}, {model.image_count} images, index {model.index_name or '-'} ({size})"
        )
        if status.cache and status.cache.get(model.model_id):
            lines.append(f"  cached:  {_cache_line(status.cache[model.model_id])}")
    if status.storage:
        lines.append(f"storage:   embeddings as {status.storage}")
    return "\n".join(lines)


def _replication_lines(status: Status) -> list[str]:
    info = status.replication or {}
    if status.role == "standby":
        lag_s = info.get("standby_lag_s")
        age = (
            "no commit replayed yet" if lag_s is None else f"last replayed commit {lag_s:.1f} s ago"
        )
        paused = ", replay PAUSED" if info.get("replay_paused") else ""
        return [
            f"role:      standby ({_human_bytes(info.get('standby_lag_bytes') or 0)} received "
            f"not yet replayed, {age}{paused})"
        ]
    replicas = info.get("replicas") or []
    lines = [f"role:      primary, {len(replicas)} streaming replica(s)"]
    for replica in replicas:
        lag = replica["replay_lag_bytes"]
        seconds = replica["replay_lag_s"]
        lines.append(
            f"replica:   {replica['name']} {replica['state']} ({replica['sync_state']}), lag "
            f"{'?' if lag is None else _human_bytes(lag)}"
            + ("" if seconds is None else f", {seconds:.3f} s")
        )
    return lines


def _human_bytes(count: int) -> str:
    value = float(count)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{count} B"
