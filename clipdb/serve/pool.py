"""The server's database connections: one pool, a statement timeout, and busy told from down.

A request that cannot get its query done fails in one of three ways, each with its own answer:

- every pooled connection is in use by other requests: :class:`Busy` (503, Retry-After). The
  database is fine, and so is the pool, which stays as it is;
- the database cannot be reached: :class:`DatabaseDown` (503). The pool's connections are dead
  and its reconnect back-off would outlast the outage, so it is dropped; requests then probe
  directly, and the first one after the database is back builds a fresh pool;
- a statement ran past the statement timeout: :class:`QueryTimeout` (504). PostgreSQL cancelled
  it and the connection goes back to the pool as it is, so no request holds one for longer.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import psycopg

from clipdb.config import STATEMENT_TIMEOUT_ENV
from clipdb.db import Database, libpq_url
from clipdb.errors import ClipdbError, first_line
from clipdb.serve.limits import Busy, InUse

if TYPE_CHECKING:
    from psycopg_pool import ConnectionPool

# A search holds a connection for milliseconds: waiting longer than this for one means the
# others are all taken by slow requests (Busy), or the database is away (DatabaseDown).
POOL_TIMEOUT_S = 3.0
PROBE_TIMEOUT_S = 2  # libpq's connect_timeout: whole seconds

log = logging.getLogger("clipdb.serve")


class DatabaseDown(ClipdbError):
    """The database cannot be reached now (HTTP 503); the server retries on later requests."""


class QueryTimeout(ClipdbError):
    """A statement ran past the server's statement timeout and was cancelled (HTTP 504)."""


class ServerPool:
    """The connections of one server; ``database`` is called (and opens it) on first use."""

    def __init__(
        self,
        database: Callable[[], Database],
        size: int,
        *,
        wait_s: float = POOL_TIMEOUT_S,
        statement_timeout_s: float = 0.0,
    ) -> None:
        self.size, self.wait_s, self.statement_timeout_s = size, wait_s, statement_timeout_s
        self._database = database
        self._pool: ConnectionPool[Any] | None = None
        self._lock = threading.Lock()
        self._in_use = InUse()  # connections handed out and not yet returned
        self._down_since: float | None = None  # set while the database is unreachable
        self._probing = threading.Lock()  # while down: one reconnection try at a time

    @contextmanager
    def connection(self) -> Iterator[psycopg.Connection[Any]]:
        """A pooled autocommit connection, checked before it is handed out.

        While the database is down this raises :class:`DatabaseDown` at once (no pool wait).
        """
        from psycopg_pool import PoolClosed, PoolTimeout

        if self._down_since is not None:
            self._try_reconnect()
        pool = self._open()
        try:
            with pool.connection(timeout=self.wait_s) as conn, self._in_use.held():
                try:
                    yield conn
                except psycopg.errors.QueryCanceled as err:
                    if "statement timeout" not in str(err):
                        raise  # cancelled by someone else: not ours to explain
                    raise self._timeout_error() from None
                except (psycopg.OperationalError, psycopg.InterfaceError) as err:
                    if not (conn.broken or conn.closed):
                        raise  # the database itself is fine
                    # The connection died under the query (server stopped or restarted).
                    self._mark_down(first_line(err))
                    raise self._down_error() from None
        except PoolTimeout:
            raise self._no_connection() from None
        except PoolClosed:  # closed under us: the outage's dead pool, or the server stopping
            if self._down_since is not None:
                raise self._down_error() from None
            raise ClipdbError("the server is shutting down") from None

    def _no_connection(self) -> ClipdbError:
        """Why the pool gave no connection in time: busy, unless the database is away."""
        if self._in_use.count >= self.size:
            return Busy(
                f"the server is busy: all {self.size} database connections are in use by other "
                "requests; retry in a moment"
            )
        # The pool had room but made no connection: ask the database directly. Only a failed
        # connection counts as down; a pool that was merely slow to grow is busy.
        try:
            self._probe()
        except psycopg.Error as err:
            self._mark_down(first_line(err))
            return self._down_error()
        return Busy("the server is busy: no database connection came free in time; retry soon")

    def _timeout_error(self) -> QueryTimeout:
        return QueryTimeout(
            f"the database query ran past the server's statement timeout "
            f"({self.statement_timeout_s:g} s) and was cancelled; ask for less, or start the "
            f"server with a larger --statement-timeout ({STATEMENT_TIMEOUT_ENV})"
        )

    def _down_error(self) -> DatabaseDown:
        return DatabaseDown("the database is not reachable now; retry when it is back")

    def _mark_down(self, reason: str) -> None:
        with self._lock:
            if self._down_since is not None:
                return
            self._down_since = time.monotonic()
            stale, self._pool = self._pool, None
        if stale is not None:
            threading.Thread(target=stale.close, daemon=True).start()
        # One line per outage, not a traceback per request.
        log.warning("database unreachable (%s); answering 503 until it is back", reason)

    def _probe(self) -> None:
        url = libpq_url(self._database().url)
        psycopg.connect(url, connect_timeout=PROBE_TIMEOUT_S, autocommit=True).close()

    def _try_reconnect(self) -> None:
        """While down: one direct connection try (others get 503 at once meanwhile)."""
        if not self._probing.acquire(blocking=False):
            raise self._down_error()  # another request is trying right now
        try:
            self._probe()
        except psycopg.Error:
            raise self._down_error() from None
        finally:
            self._probing.release()
        with self._lock:
            if self._down_since is None:
                return  # a concurrent request saw it come back first
            down_for = time.monotonic() - self._down_since
            self._down_since = None
        log.warning("database reachable again after %.1f s", down_for)

    def _configure(self, conn: psycopg.Connection[Any]) -> None:
        from pgvector.psycopg import register_vector

        register_vector(conn)
        if self.statement_timeout_s > 0:
            milliseconds = max(1, round(self.statement_timeout_s * 1000))
            conn.execute(
                "SELECT set_config('statement_timeout', %s, false)", (f"{milliseconds}ms",)
            )

    def _open(self) -> ConnectionPool[Any]:
        database = self._database()
        with self._lock:
            if self._pool is None:
                from psycopg_pool import ConnectionPool

                self._pool = ConnectionPool(
                    libpq_url(database.url),
                    min_size=1,
                    max_size=self.size,
                    kwargs={"autocommit": True, "connect_timeout": 10},
                    configure=self._configure,
                    check=ConnectionPool.check_connection,
                    open=False,
                    name="clipdb-serve",
                )
                self._pool.open()
            return self._pool

    def close(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()
