"""What a server keeps between requests: a connection pool, the model row, the encoder, thumbnails.

Queries go through a :class:`clipdb.query.Searcher`, the pipeline the CLI and ``ClipDB`` use:
the same model choice, encoder loading, vector maths and search, so the server and the CLI
answer the same flags with the same rows and the same ef_search rule.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import os
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import asdict
from functools import cache, lru_cache
from typing import TYPE_CHECKING, Any

import numpy as np
import psycopg

from clipdb import decode, files
from clipdb.config import Settings, statement_timeout_s
from clipdb.db import Database, database_status, open_database
from clipdb.db import queries as db_queries
from clipdb.db.registry import Model
from clipdb.models import RANDOM_WEIGHTS
from clipdb.query import EncoderOptions, Query, Searcher
from clipdb.search import SearchOptions
from clipdb.serve import picker
from clipdb.serve.limits import (
    DEFAULT_MAX_PIXELS,
    DEFAULT_MAX_UPLOAD_PIXELS,
    Busy,
    Slots,
    decode_upload,
)
from clipdb.serve.pool import POOL_TIMEOUT_S, DatabaseDown, QueryTimeout, ServerPool
from clipdb.thumbnail import make_thumbnail

if TYPE_CHECKING:
    from clipdb.encoders import Encoder

__all__ = ["Busy", "DatabaseDown", "FileChanged", "QueryTimeout", "SearchService"]

THUMBNAIL_SIZE = 256
# Thumbnails come in these sizes only (a request is rounded to the nearest), so varying
# ?size= cannot bypass the cache and make every request a fresh full decode.
THUMBNAIL_SIZES = (128, 256, 512)
THUMBNAIL_CACHE_ENTRIES = 1024
# A full-size decode can take hundreds of MB (a 9400x9400 PNG is 265 MB as RGB): at most
# this many at once, whatever the number of requests; the others wait (then get 503). An
# upload keeps its slot until the encoder is done with it, so decoded images waiting for the
# encoder are bounded too, not only those being decoded.
DECODE_SLOTS = 2
DECODE_WAIT_S = 15.0


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
        encoder_options: EncoderOptions | None = None,
        pool_size: int = 8,
        pool_timeout_s: float = POOL_TIMEOUT_S,
        statement_timeout: float | None = None,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        max_upload_pixels: int = DEFAULT_MAX_UPLOAD_PIXELS,
    ) -> None:
        self.settings = settings
        self.max_pixels = max_pixels
        self.max_upload_pixels = max_upload_pixels
        self._database = database
        self._lock = threading.Lock()
        self.searcher = Searcher(
            settings,
            encoder_options or EncoderOptions.of(settings),
            self.connection,
            encoder=encoder,
            keep_model=True,  # one model, chosen once, whatever the query
        )
        # Another indexed model, when a request names one: its own searcher and encoder.
        self.others = picker.OtherSearchers(
            lambda: Searcher(settings, self.searcher.options, self.connection)
        )
        self._thumbnail = lru_cache(maxsize=THUMBNAIL_CACHE_ENTRIES)(self._render_thumbnail)
        self._rendering: dict[tuple[int, int], threading.Lock] = {}  # one decode per key
        self.pool = ServerPool(
            lambda: self.database,
            pool_size,
            wait_s=pool_timeout_s,
            statement_timeout_s=statement_timeout_s(statement_timeout),
        )
        # After each decode the heap it freed is handed back at once: glibc keeps freed
        # buffers in the decoding thread's arena, and with many threads a burst of big uploads
        # would otherwise leave one full-size image per thread mapped (1.3 GB at 16 x 36 MP).
        self.decode_slots = Slots(
            DECODE_SLOTS,
            DECODE_WAIT_S,
            "the server is busy decoding other images; retry in a moment",
            on_release=trim_heap,
        )
        # Scans over the whole library (duplicates) may hold at most half the connections, so
        # a burst of them leaves the other half to searches.
        self.scan_slots = Slots(
            max(1, pool_size // 2),
            pool_timeout_s,
            "the server is busy with other duplicate scans; retry in a moment",
        )

    @property
    def database(self) -> Database:
        with self._lock:
            if self._database is None:
                self._database = open_database(self.settings, reads=True)
            return self._database

    def connection(self) -> AbstractContextManager[psycopg.Connection[Any]]:
        """A pooled autocommit connection (:meth:`ServerPool.connection`)."""
        return self.pool.connection()

    @property
    def encoder_loaded(self) -> bool:
        return self.searcher.encoder is not None

    def model(self) -> Model:
        """The registered model whose rows this server searches (chosen once)."""
        return self.searcher.model()

    def encoder(self, model: Model | None = None) -> Encoder:
        """The CLIP encoder of ``model`` (None: the served one), loaded on first use, kept."""
        model = model or self.model()
        return self._searcher(model).encoder_for(model)

    def picked(self, name: str | None) -> Model:
        """The indexed model a request names (None: the served one); UnknownModel if none.

        Another model's rows are searched with that model's own encoder, so one made from a
        checkpoint file can only be the served one (the file is a ``clipdb serve`` option)."""
        served = self.model()
        if name is None:
            return served
        with self.connection() as conn:
            model = picker.named_model(conn, name)
        if model != served and model.pretrained.startswith("file:"):
            raise picker.UnknownModel(
                f"{model} was made from a checkpoint file; serve it with "
                f"clipdb serve --model {model.architecture} --pretrained FILE"
            )
        return model

    def models(self) -> list[dict[str, Any]]:
        """The indexed models a request may name (picker.indexed_models)."""
        served = self.model()
        with self.connection() as conn:
            return picker.indexed_models(conn, served)

    def _searcher(self, model: Model) -> Searcher:
        if model == self.model():
            return self.searcher
        return self.others.searcher_for(model)

    def warm(self) -> None:
        """Choose the model and load the encoder now, so the first query is fast."""
        self.encoder()

    def encode_upload(
        self, read: Callable[[], bytes], text: str | None, model: Model | None = None
    ) -> tuple[np.ndarray, float]:
        """The query vector of an uploaded image (and ``text``), its bytes from ``read``, and
        the seconds until the image was decoded (waiting for a slot included).

        One decode slot is held from reading the bytes until the encoder is done with the
        image: requests waiting for a slot keep their upload spooled, not decoded, so N
        concurrent uploads hold at most DECODE_SLOTS images, whatever N is.
        """
        started = time.perf_counter()
        small_side = max(self.encoder(model).image_size) * decode.DRAFT_MARGIN
        with self.decode_slots.held():
            image = decode_upload(read(), max_pixels=self.max_upload_pixels, small_side=small_side)
            decoded = time.perf_counter() - started
            vector = self.vector(Query(picture=image, text=text), model)
            del image  # before the slot is released (and the heap trimmed)
        return vector, decoded

    def vector(self, query: Query, model: Model | None = None) -> np.ndarray:
        """The query vector on ``model`` (None: the served one; ``text`` + picture: the
        normalised mean)."""
        model = model or self.model()
        return self._searcher(model).vector(query, model)

    def search(
        self, vector: np.ndarray, options: SearchOptions, model: Model | None = None
    ) -> list[db_queries.Hit]:
        model = model or self.model()
        return self._searcher(model).top_k(vector, options, model)

    def match_for(self, text: str, match: str | None, model: Model | None = None) -> str:
        """How a text query is matched (clipdb.query.Searcher.match_for)."""
        model = model or self.model()
        return self._searcher(model).match_for(Query(text=text, match=match), model)

    def search_text(
        self, text: str, match: str, options: SearchOptions, model: Model | None = None
    ) -> list[db_queries.Hit]:
        """A text or hybrid search (``match`` text or hybrid) on ``model`` (None: served)."""
        model = model or self.model()
        query = Query(text=text, match=match)
        return self._searcher(model).text_top_k(query, match, options, model)

    def duplicates(self, tiers: tuple[str, ...]) -> list[dict[str, Any]]:
        """Duplicate groups of the served model (``clipdb dupes --json``)."""
        from clipdb.dupes import find_duplicates

        model = self.model()
        with self.scan_slots.held(), self.connection() as conn:
            result = find_duplicates(conn, model, tiers=tiers, counts=False)
        return [group.to_dict() for group in result.groups]

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
        with self.decode_slots.held():
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
        with self.decode_slots.held():
            data = _verified_bytes(image_id, path, file_size, mtime_ns, sha256)
        return data, os.path.basename(path)

    def stats(self) -> dict[str, Any]:
        status = database_status(self.database)
        model, encoder = self.searcher.chosen_model, self.searcher.encoder
        serving: dict[str, Any] = {
            "architecture": model.architecture if model else self.settings.model,
            "pretrained": model.pretrained if model else self.settings.pretrained,
            "model_id": model.model_id if model else None,
            "encoder_loaded": self.encoder_loaded,
        }
        serving["random_weights"] = serving["pretrained"] == RANDOM_WEIGHTS
        if encoder is not None:
            serving["device"] = str(encoder.device)
            serving["precision"] = encoder.precision
            serving["backend"] = getattr(encoder, "backend", "torch")
        cache = self._thumbnail.cache_info()
        return {
            "server": status.server,
            "postgres": status.server_version,
            "pgvector": status.pgvector_version,
            "schema_revision": status.revision,
            "models": [asdict(model) for model in status.models],
            "serving": serving,
            "decode_slots": {"total": DECODE_SLOTS, "in_use": self.decode_slots.in_use},
            "thumbnail_cache": {
                "entries": cache.currsize,
                "hits": cache.hits,
                "misses": cache.misses,
            },
        }

    def close(self) -> None:
        self.pool.close()


def trim_heap() -> None:
    """Give freed heap back to the OS where the C library is glibc (malloc_trim); elsewhere
    nothing. Freed decode buffers otherwise stay mapped in the threads' malloc arenas."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@cache
def _malloc_trim() -> Callable[[int], int] | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim: Callable[[int], int] = libc.malloc_trim
        return trim
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to trim
        return None


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
