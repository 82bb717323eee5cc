"""What a server keeps between requests: a connection pool, the model row, the encoder, thumbnails.

The rows it searches are chosen by :func:`clipdb.search.choose_model`, the same policy the CLI
and ``ClipDB`` use, and searches go through :func:`clipdb.search.search`, so the server and
the CLI answer the same flags with the same rows and the same ef_search rule.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import numpy as np
import psycopg

from clipdb import decode, files
from clipdb.config import DEFAULT_EF_SEARCH, Settings
from clipdb.db import Database, database_status, libpq_url, open_database
from clipdb.db import queries as db_queries
from clipdb.db.registry import Model
from clipdb.errors import ClipdbError, first_line
from clipdb.filters import NO_FILTERS, Filters
from clipdb.search import SearchOptions, choose_model, combine_query, load_model_encoder, search
from clipdb.serve.limits import DEFAULT_MAX_PIXELS, DEFAULT_MAX_UPLOAD_PIXELS, decode_upload
from clipdb.thumbnail import make_thumbnail

if TYPE_CHECKING:
    from PIL import Image
    from psycopg_pool import ConnectionPool

    from clipdb.encoder import Encoder

THUMBNAIL_SIZE = 256
# Thumbnails come in these sizes only (a request is rounded to the nearest), so varying
# ?size= cannot bypass the cache and make every request a fresh full decode.
THUMBNAIL_SIZES = (128, 256, 512)
THUMBNAIL_CACHE_ENTRIES = 1024
# A search holds a connection for milliseconds; waiting longer means the database is away.
POOL_TIMEOUT_S = 3.0
# A full-size decode can take hundreds of MB (a 9400x9400 PNG is 265 MB as RGB): at most
# this many at once, whatever the number of requests; the others wait (then get 503).
DECODE_SLOTS = 2
DECODE_WAIT_S = 15.0

log = logging.getLogger("clipdb.serve")


class DatabaseDown(ClipdbError):
    """The database cannot be reached now (HTTP 503); the server retries on later requests."""


class Busy(ClipdbError):
    """Every decode slot stayed taken for DECODE_WAIT_S (HTTP 503)."""


class FileChanged(LookupError):
    """The indexed file is not the one that was indexed any more (HTTP 410)."""


def thumbnail_size(requested: int) -> int:
    """The allowed thumbnail size nearest to ``requested`` (ties go to the larger)."""
    return min(THUMBNAIL_SIZES, key=lambda size: (abs(size - requested), -size))


class SearchService:
    """What one server keeps warm: connections, the model row, the encoder, thumbnails.

    Building one does no I/O; the database opens (and migrates) on first use.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        database: Database | None = None,
        encoder: Encoder | None = None,
        device: str = "auto",
        precision: str = "auto",
        backend: str = "auto",
        pool_size: int = 8,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        max_upload_pixels: int = DEFAULT_MAX_UPLOAD_PIXELS,
    ) -> None:
        self.settings = settings
        self.max_pixels = max_pixels
        self.max_upload_pixels = max_upload_pixels
        self.pool_size = pool_size
        self._database = database
        self._device, self._precision, self._backend = device, precision, backend
        self._encoder = encoder
        self._pool: ConnectionPool[Any] | None = None
        self._model: Model | None = None
        self._lock = threading.Lock()
        self._encode_lock = threading.Lock()
        self._thumbnail = lru_cache(maxsize=THUMBNAIL_CACHE_ENTRIES)(self._render_thumbnail)
        self._decode_slots = threading.BoundedSemaphore(DECODE_SLOTS)
        self._rendering: dict[tuple[int, int], threading.Lock] = {}  # one decode per key
        self._down_since: float | None = None  # set while the database is unreachable
        self._probing = threading.Lock()  # while down: one reconnection try at a time

    @property
    def database(self) -> Database:
        with self._lock:
            if self._database is None:
                self._database = open_database(self.settings, reads=True)
            return self._database

    @contextmanager
    def connection(self) -> Iterator[psycopg.Connection[Any]]:
        """A pooled autocommit connection, checked before it is handed out.

        While the database is down this raises :class:`DatabaseDown` at once (no pool wait);
        the first request after it is back gets a fresh pool and succeeds.
        """
        from psycopg_pool import PoolClosed, PoolTimeout

        if self._down_since is not None:
            self._try_reconnect()
        pool = self._open_pool()
        try:
            with pool.connection(timeout=POOL_TIMEOUT_S) as conn:
                try:
                    yield conn
                except (psycopg.OperationalError, psycopg.InterfaceError) as err:
                    if not (conn.broken or conn.closed):
                        raise  # a statement timeout, say: the database itself is fine
                    # The connection died under the query (server stopped or restarted).
                    self._mark_down(first_line(err))
                    raise self._down_error() from None
        except PoolTimeout:
            self._mark_down("no connection could be made in time")
            raise self._down_error() from None
        except PoolClosed:  # closed under us: the outage's dead pool, or the server stopping
            if self._down_since is not None:
                raise self._down_error() from None
            raise ClipdbError("the server is shutting down") from None

    def _down_error(self) -> DatabaseDown:
        return DatabaseDown("the database is not reachable now; retry when it is back")

    def _mark_down(self, reason: str) -> None:
        with self._lock:
            if self._down_since is not None:
                return
            self._down_since = time.monotonic()
            # Its connections are dead and its reconnect back-off would outlast the outage:
            # requests probe directly until the database answers, then get a fresh pool.
            stale, self._pool = self._pool, None
        if stale is not None:
            threading.Thread(target=stale.close, daemon=True).start()
        # One line per outage, not a traceback per request.
        log.warning("database unreachable (%s); answering 503 until it is back", reason)

    def _try_reconnect(self) -> None:
        """While down: one direct connection try (others get 503 at once meanwhile)."""
        url = libpq_url(self.database.url)
        if not self._probing.acquire(blocking=False):
            raise self._down_error()  # another request is trying right now
        try:
            psycopg.connect(url, connect_timeout=2, autocommit=True).close()
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

    def _open_pool(self) -> ConnectionPool[Any]:
        database = self.database
        with self._lock:
            if self._pool is None:
                from pgvector.psycopg import register_vector
                from psycopg_pool import ConnectionPool

                self._pool = ConnectionPool(
                    libpq_url(database.url),
                    min_size=1,
                    max_size=self.pool_size,
                    kwargs={"autocommit": True, "connect_timeout": 10},
                    configure=register_vector,
                    check=ConnectionPool.check_connection,
                    open=False,
                    name="clipdb-serve",
                )
                self._pool.open()
            return self._pool

    @property
    def encoder_loaded(self) -> bool:
        return self._encoder is not None

    def model(self) -> Model:
        """The registered model whose rows this server searches (chosen once)."""
        if self._model is None:
            if self._encoder is not None:
                settings = Settings.resolve(
                    database_url=self.settings.database_url,
                    read_database_url=self.settings.read_database_url,
                    model=self._encoder.architecture,
                    pretrained=self._encoder.pretrained,
                )
            else:
                settings = self.settings
            with self.connection() as conn:
                self._model = choose_model(conn, settings)
        return self._model

    def encoder(self) -> Encoder:
        """The CLIP encoder of the served model, loaded on first use and then kept."""
        if self._encoder is None:
            model = self.model()
            with self._encode_lock:
                if self._encoder is None:
                    self._encoder = load_model_encoder(
                        model, self.settings, self._device, self._precision, self._backend
                    )
        return self._encoder

    def warm(self) -> None:
        """Choose the model and load the encoder now, so the first query is fast."""
        self.model()
        self.encoder()

    @contextmanager
    def decode_slot(self) -> Iterator[None]:
        if not self._decode_slots.acquire(timeout=DECODE_WAIT_S):
            raise Busy("the server is busy decoding other images; retry in a moment")
        try:
            yield
        finally:
            self._decode_slots.release()

    def decode_upload(self, data: bytes) -> Image.Image:
        """An uploaded query image, JPEGs draft-decoded at the size ingest uses."""
        draft_size = max(self.encoder().image_size) * decode.DRAFT_MARGIN
        with self.decode_slot():
            return decode_upload(data, max_pixels=self.max_upload_pixels, draft_size=draft_size)

    def encode_query(self, image: Image.Image | None, text: str | None) -> np.ndarray:
        encoder = self.encoder()
        # Concurrent forward passes on a few CPU cores only slow each other down.
        with self._encode_lock:
            image_vector = encoder.encode_pil([image])[0] if image is not None else None
            text_vector = encoder.encode_texts([text])[0] if text else None
        # The CLI's combination with its default 1:1 weights: the normalised mean.
        return combine_query(image=image_vector, text=text_vector)

    def search(
        self,
        vector: np.ndarray,
        k: int,
        *,
        threshold: float | None,
        under: str | None,
        filters: Filters = NO_FILTERS,
        hide_duplicates: bool = False,
    ) -> list[db_queries.Hit]:
        model = self.model()
        options = SearchOptions(k, DEFAULT_EF_SEARCH, under, threshold, filters, hide_duplicates)
        with self.connection() as conn:
            return search(conn, model, vector, options)

    def duplicates(self, tiers: tuple[str, ...]) -> list[dict[str, Any]]:
        """Duplicate groups of the served model (``clipdb dupes --json``)."""
        from clipdb.dupes import find_duplicates

        model = self.model()
        with self.connection() as conn:
            result = find_duplicates(conn, model, tiers=tiers)
        return [group.to_dict() for group in result.groups]

    def indexed_vector(self, image_id: int) -> np.ndarray:
        model = self.model()
        with self.connection() as conn:
            found = db_queries.embedding_by_id(conn, model, image_id)
        if found is None:
            raise LookupError(f"no image with id {image_id} is indexed with model {model}")
        return found

    def thumbnail(self, image_id: int, size: int = THUMBNAIL_SIZE) -> bytes:
        """JPEG bytes of the indexed file, if it still is the file that was indexed.

        Served only when the path (links followed, as ingest follows them) is a regular file
        with the row's size and mtime and, once read, the row's sha256: a FIFO, a device or a
        link to some other file swapped in after indexing is refused (FileChanged, 410), and
        the read never blocks or exceeds the indexed size. Cached by (id, size, identity).
        """
        with self.connection() as conn:
            row = db_queries.image_file(conn, image_id)
        if row is None:
            raise LookupError(f"no indexed image with id {image_id}")
        path, file_size, mtime_ns, sha256 = row
        try:
            info = os.stat(path)  # stat never blocks, even on a FIFO
        except OSError:
            raise LookupError(f"image {image_id} is indexed but its file is gone") from None
        if (info.st_size, info.st_mtime_ns) != (file_size, mtime_ns):
            raise FileChanged(f"image {image_id} has changed since it was indexed")
        size = thumbnail_size(size)
        # The page asks for many thumbnails at once: concurrent misses of one key wait for the
        # first decode (then hit the cache) instead of each decoding the same file.
        with self._lock:
            render_lock = self._rendering.setdefault((image_id, size), threading.Lock())
        try:
            with render_lock:
                return self._thumbnail(image_id, path, size, file_size, mtime_ns, sha256)
        finally:
            with self._lock:
                self._rendering.pop((image_id, size), None)

    def _render_thumbnail(
        self, image_id: int, path: str, size: int, file_size: int, mtime_ns: int, sha256: bytes
    ) -> bytes:
        # The file's bytes count against the slot too: many large files read at once is the
        # same memory problem as many decodes.
        with self.decode_slot():
            data = _verified_bytes(image_id, path, file_size, mtime_ns, sha256)
            try:
                return make_thumbnail(data, size, max_pixels=self.max_pixels)
            except decode.ImageError as err:
                raise LookupError(f"image {image_id} cannot be read: {err}") from None

    def original(self, image_id: int) -> tuple[bytes, str]:
        """The indexed file's bytes and its name, under the same rule as thumbnails: only while
        it still is the file that was indexed (FileChanged otherwise), never blocking."""
        with self.connection() as conn:
            row = db_queries.image_file(conn, image_id)
        if row is None:
            raise LookupError(f"no indexed image with id {image_id}")
        path, file_size, mtime_ns, sha256 = row
        with self.decode_slot():
            data = _verified_bytes(image_id, path, file_size, mtime_ns, sha256)
        return data, os.path.basename(path)

    def stats(self) -> dict[str, Any]:
        status = database_status(self.database)
        serving: dict[str, Any] = {
            "architecture": self._model.architecture if self._model else self.settings.model,
            "pretrained": self._model.pretrained if self._model else self.settings.pretrained,
            "model_id": self._model.model_id if self._model else None,
            "encoder_loaded": self.encoder_loaded,
        }
        if self._encoder is not None:
            serving["device"] = str(self._encoder.device)
            serving["precision"] = self._encoder.precision
            serving["backend"] = getattr(self._encoder, "backend", "torch")
        cache = self._thumbnail.cache_info()
        return {
            "server": status.server,
            "postgres": status.server_version,
            "pgvector": status.pgvector_version,
            "schema_revision": status.revision,
            "models": [asdict(model) for model in status.models],
            "serving": serving,
            "thumbnail_cache": {
                "entries": cache.currsize,
                "hits": cache.hits,
                "misses": cache.misses,
            },
        }

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None


def _verified_bytes(image_id: int, path: str, size: int, mtime_ns: int, sha256: bytes) -> bytes:
    """The file's content if it is still the indexed one (size, mtime, then sha256)."""
    try:
        data = files.read_regular(path, max_bytes=size, expected=(size, mtime_ns))
    except files.FileRejected as err:
        if str(err) in (files.PERMISSION_DENIED, files.UNREADABLE):
            raise LookupError(f"image {image_id} cannot be read: {err}") from None
        # Not a regular file, bigger, or another size/mtime than the row: swapped.
        raise FileChanged(f"image {image_id} has changed since it was indexed: {err}") from None
    if hashlib.sha256(data).digest() != sha256:
        raise FileChanged(f"image {image_id} has changed since it was indexed")
    return data
