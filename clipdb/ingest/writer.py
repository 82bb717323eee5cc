"""The writer thread: commits one transaction per batch on its own connection."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from queue import Queue
from typing import Any

import psycopg

from clipdb.db import Database
from clipdb.db.registry import Model
from clipdb.db.store import ImageRecord, upsert_images
from clipdb.errors import ClipdbError, disk_full, first_line

WRITE_RETRIES = 3  # deadlocks between concurrent ingesters are retried
# Seconds to wait before each new try of a batch whose connection was lost (server restart).
RECONNECT_DELAYS = (1.0, 2.0, 4.0)


@dataclass
class Encoded:
    """What an engine hands back for some of its files: rows to write, and skips
    (path, reason)."""

    records: list[ImageRecord] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)


class BatchWriter:
    """Commits batches of rows on its own connection, off the encoding thread."""

    # The back-off before each new try of a batch whose connection was lost.
    reconnect_delays: tuple[float, ...] = RECONNECT_DELAYS

    def __init__(self, database: Database, model: Model) -> None:
        self.database, self.model = database, model
        self.queue: Queue[list[ImageRecord] | None] = Queue(maxsize=2)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="clipdb-writer", daemon=True)
        self.thread.start()

    def put(self, records: list[ImageRecord]) -> None:
        if self.error is not None:
            raise self.error
        self.queue.put(records)

    def close(self) -> None:
        """Wait until every queued batch is committed; re-raise the writer's error."""
        self.queue.put(None)
        self.thread.join()
        if self.error is not None:
            raise self.error

    def _run(self) -> None:
        conn = None
        while (records := self.queue.get()) is not None:
            if self.error is not None:
                continue  # drain so the producer never blocks
            try:
                conn = self._write(conn, records)
            except BaseException as err:  # re-raised in the producer
                self.error = err
        if conn is not None:
            conn.close()

    def pause_before_reconnect(self, attempt: int, delay: float) -> None:
        """Wait ``delay`` seconds before reconnect try ``attempt`` (counted from 1).

        One place for the back-off, so a test can act on each try (bring a server back up
        before the second) instead of racing the clock.
        """
        time.sleep(delay)

    def _server_disk(self) -> str:
        """Where the server ran out of space, as far as this side can tell."""
        home = self.database.embedded_home
        if home is not None:  # clipdb.db.embedded keeps the cluster in CLIPDB_HOME/pgdata
            return f"the database server's data directory {home / 'pgdata'}"
        return "the database server's data directory"

    def _write(self, conn: Any, records: list[ImageRecord]) -> Any:
        """Commit one batch; returns the connection to use for the next one.

        A lost connection (server restart) is replaced and the batch sent again after each of
        ``reconnect_delays``; the upsert is idempotent, so a batch whose commit did reach the
        server before the connection dropped is not duplicated.
        """
        deadlocks = reconnects = 0
        while True:
            try:
                conn = conn or self.database.connect()
                with conn.transaction():
                    upsert_images(conn, self.model, records)
                return conn
            except psycopg.errors.DiskFull as err:  # before OperationalError, its base class
                raise disk_full(self._server_disk(), err) from None
            except (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure):
                deadlocks += 1
                if deadlocks == WRITE_RETRIES:
                    raise
            except (psycopg.OperationalError, ClipdbError) as err:
                if conn is not None and not conn.broken:
                    raise  # a statement failed on a live connection: not ours to retry
                if conn is not None:
                    conn.close()
                    conn = None
                if reconnects == len(self.reconnect_delays):
                    raise ClipdbError(
                        f"lost the database connection and {reconnects} reconnects failed "
                        f"({first_line(err)}); committed batches are kept, run again to finish"
                    ) from None
                reconnects += 1
                self.pause_before_reconnect(reconnects, self.reconnect_delays[reconnects - 1])
