"""What the benchmark scripts share: a fresh, migrated database on the embedded server, and
a ``clipdb serve`` process to wait for."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
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


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until_serving(process: subprocess.Popen[str], url: str) -> None:
    """Return once the server at ``url`` answers /api/health; exit with its stderr if the
    process ended first (``process`` was started with ``stderr=PIPE``)."""
    import httpx

    while True:
        try:
            httpx.get(f"{url}/api/health", timeout=2).raise_for_status()
            return
        except httpx.HTTPError:
            if process.poll() is not None:
                raise SystemExit(f"server exited: {process.communicate()[1]}") from None
            time.sleep(0.2)
