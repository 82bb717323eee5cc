"""What the benchmark scripts share: a fresh, migrated database on the embedded server."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from clipdb.db import Database  # noqa: E402
from clipdb.db.embedded import EmbeddedServer, ensure_server  # noqa: E402
from clipdb.db.migrate import upgrade  # noqa: E402


def fresh_database(home_or_server: Path | str | EmbeddedServer, name: str) -> Database:
    """Drop and recreate database ``name`` on the embedded server in ``home``, migrated."""
    import psycopg

    server = (
        home_or_server
        if isinstance(home_or_server, EmbeddedServer)
        else ensure_server(Path(home_or_server))
    )
    with psycopg.connect(server.url(database="postgres"), autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {name}")
    database = Database(url=server.url(database=name))
    upgrade(database)
    return database
