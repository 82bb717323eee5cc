"""Alembic environment: migrations run on the connection clipdb hands over (clipdb.db.migrate)."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from clipdb.db.migrate import SCHEMA, VERSION_TABLE

config = context.config


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    # `alembic upgrade head` from the command line, with sqlalchemy.url set in alembic.ini/-x.
    engine = create_engine(config.get_main_option("sqlalchemy.url") or "")
    with engine.begin() as conn:
        _run(conn)


def _run(connection) -> None:  # type: ignore[no-untyped-def]
    context.configure(
        connection=connection,
        version_table=VERSION_TABLE,
        version_table_schema=SCHEMA,
        transaction_per_migration=False,
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    raise SystemExit("clipdb migrations run online only")
run_migrations_online()
