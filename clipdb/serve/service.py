"""What a server keeps between requests: a connection pool, the model row, the encoder, thumbnails.

The rows it searches are chosen by :func:`clipdb.search.choose_model`, the same policy the CLI
and ``ClipDB`` use, and searches go through :func:`clipdb.search.search`, so the server and
the CLI answer the same flags with the same rows and the same ef_search rule.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import numpy as np
import psycopg

from clipdb import decode
from clipdb.config import DEFAULT_EF_SEARCH, Settings
from clipdb.db import Database, database_status, libpq_url, open_database
from clipdb.db import queries as db_queries
from clipdb.db.registry import Model
from clipdb.errors import ClipdbError
from clipdb.search import SearchOptions, choose_model, combine_query, load_model_encoder, search
from clipdb.serve.limits import DEFAULT_MAX_PIXELS, decode_upload

if TYPE_CHECKING:
    from PIL import Image
    from psycopg_pool import ConnectionPool

    from clipdb.encoder import ClipEncoder

THUMBNAIL_SIZE = 256
THUMBNAIL_CACHE_ENTRIES = 1024
POOL_TIMEOUT_S = 10.0


class SearchService:
    """What one server keeps warm: connections, the model row, the encoder, thumbnails.

    Building one does no I/O; the database opens (and migrates) on first use.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        database: Database | None = None,
        encoder: ClipEncoder | None = None,
        device: str = "auto",
        precision: str = "auto",
        pool_size: int = 8,
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ) -> None:
        self.settings = settings
        self.max_pixels = max_pixels
        self.pool_size = pool_size
        self._database = database
        self._device, self._precision = device, precision
        self._encoder = encoder
        self._pool: ConnectionPool[Any] | None = None
        self._model: Model | None = None
        self._lock = threading.Lock()
        self._encode_lock = threading.Lock()
        self._thumbnail = lru_cache(maxsize=THUMBNAIL_CACHE_ENTRIES)(self._render_thumbnail)

    @property
    def database(self) -> Database:
        with self._lock:
            if self._database is None:
                self._database = open_database(self.settings)
            return self._database

    @contextmanager
    def connection(self) -> Iterator[psycopg.Connection[Any]]:
        """A pooled autocommit connection, checked before it is handed out."""
        from psycopg_pool import PoolTimeout

        pool = self._open_pool()
        try:
            with pool.connection(timeout=POOL_TIMEOUT_S) as conn:
                yield conn
        except PoolTimeout:
            raise ClipdbError(
                "no database connection could be made in time; is the database up?"
            ) from None

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
                    model=self._encoder.architecture,
                    pretrained=self._encoder.pretrained,
                )
            else:
                settings = self.settings
            with self.connection() as conn:
                self._model = choose_model(conn, settings)
        return self._model

    def encoder(self) -> ClipEncoder:
        """The CLIP encoder of the served model, loaded on first use and then kept."""
        if self._encoder is None:
            model = self.model()
            with self._encode_lock:
                if self._encoder is None:
                    self._encoder = load_model_encoder(
                        model, self.settings, self._device, self._precision
                    )
        return self._encoder

    def warm(self) -> None:
        """Choose the model and load the encoder now, so the first query is fast."""
        self.model()
        self.encoder()

    def decode_upload(self, data: bytes) -> Image.Image:
        """An uploaded query image, JPEGs draft-decoded at the size ingest uses."""
        draft_size = max(self.encoder().image_size) * decode.DRAFT_MARGIN
        return decode_upload(data, max_pixels=self.max_pixels, draft_size=draft_size)

    def encode_query(self, image: Image.Image | None, text: str | None) -> np.ndarray:
        encoder = self.encoder()
        # Concurrent forward passes on a few CPU cores only slow each other down.
        with self._encode_lock:
            image_vector = encoder.encode_pil([image])[0] if image is not None else None
            text_vector = encoder.encode_texts([text])[0] if text else None
        # The CLI's combination with its default 1:1 weights: the normalised mean.
        return combine_query(image=image_vector, text=text_vector)

    def search(
        self, vector: np.ndarray, k: int, *, threshold: float | None, under: str | None
    ) -> list[db_queries.Hit]:
        model = self.model()
        options = SearchOptions(k, DEFAULT_EF_SEARCH, under, threshold)
        with self.connection() as conn:
            return search(conn, model, vector, options)

    def indexed_vector(self, image_id: int) -> np.ndarray:
        model = self.model()
        with self.connection() as conn:
            found = db_queries.embedding_by_id(conn, model, image_id)
        if found is None:
            raise LookupError(f"no image with id {image_id} is indexed with model {model}")
        return found

    def thumbnail(self, image_id: int, size: int = THUMBNAIL_SIZE) -> bytes:
        """JPEG bytes, cached by (id, size, file size, mtime): a changed file is re-rendered."""
        with self.connection() as conn:
            path = db_queries.image_file(conn, image_id)
        if path is None:
            raise LookupError(f"no indexed image with id {image_id}")
        try:
            stat = os.stat(path)
        except OSError:
            raise LookupError(f"image {image_id} is indexed but its file is gone") from None
        return self._thumbnail(image_id, path, size, stat.st_size, stat.st_mtime_ns)

    def _render_thumbnail(
        self, image_id: int, path: str, size: int, file_size: int, mtime_ns: int
    ) -> bytes:
        try:
            return decode.make_thumbnail(path, size, max_pixels=self.max_pixels)
        except decode.ImageError as err:
            raise LookupError(f"image {image_id} cannot be read: {err}") from None

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
