"""Search page and JSON API with the model kept warm: ``python -m clipdb.serve``.

The app (:func:`create_app`) is a thin layer over :class:`SearchService`, which holds what a
server keeps between requests: a small pool of database connections, the resolved model row,
the CLIP encoder (loaded once) and an LRU cache of thumbnails. Endpoints are plain ``def``
functions, so FastAPI runs them in its thread pool and the event loop stays free while a query
is encoded; encoding itself is serialised by a lock because concurrent forward passes on a few
CPU cores only slow each other down.

Thumbnails are served by row id only: the path comes from ``clipdb.images``, never from the
request, so the server cannot be used to read arbitrary files.
"""

from __future__ import annotations

import argparse
import io
import os
import queue
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import psycopg
from fastapi import FastAPI, File, Form, HTTPException, Query, Request, Response, UploadFile
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from PIL import Image

from clipdb import files, queries
from clipdb.cli import first_line, run_guarded
from clipdb.config import (
    DEFAULT_EF_SEARCH,
    DEFAULT_TOP_K,
    Settings,
    add_common_arguments,
    canonical_model_name,
)
from clipdb.db import Database, database_status, open_database
from clipdb.encoder import ClipEncoder, known_architectures, load_encoder, resolve_model_spec
from clipdb.errors import ClipdbError, UsageError
from clipdb.search import combine_query

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
DEFAULT_MAX_UPLOAD_MB = 20
DEFAULT_MAX_PIXELS = 89_478_485  # Pillow's own decompression-bomb threshold
MAX_TOP_K = 200
THUMBNAIL_SIZE = 256
THUMBNAIL_CACHE_ENTRIES = 1024
FORM_SLACK_BYTES = 64 * 1024  # multipart headers and the text fields around an upload
STATIC_DIR = Path(__file__).parent / "static"


class BadUpload(ClipdbError):
    """An upload that is not a decodable image of acceptable size (HTTP 400)."""


def decode_upload(
    data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS, draft_size: int | None = None
) -> Image.Image:
    """Bytes from a client -> upright RGB image, decoded exactly as ingest decodes files.

    Non-images, corrupt files and decompression bombs (more than ``max_pixels``, checked from
    the header before any pixel is decoded) raise :class:`BadUpload`.
    """
    try:
        image, _, _ = files.open_image(data, max_pixels=max_pixels, draft_size=draft_size)
    except files.ImageError as err:
        reason = str(err)
        if reason == files.TOO_LARGE:
            reason = f"image has too many pixels (limit {max_pixels}; decompression bomb?)"
        elif reason == files.EMPTY:
            reason = "empty upload"
        raise BadUpload(f"cannot use the upload: {reason}") from None
    return image


class ConnectionPool:
    """At most ``size`` autocommit connections, reused across requests and threads."""

    def __init__(self, database: Database, size: int = 8) -> None:
        self._database = database
        self._idle: queue.LifoQueue[psycopg.Connection[Any]] = queue.LifoQueue()
        self._slots = threading.BoundedSemaphore(size)

    @contextmanager
    def connection(self) -> Iterator[psycopg.Connection[Any]]:
        with self._slots:
            conn = self._take()
            try:
                yield conn
            except BaseException:
                # Broken link, failed statement, cancelled request: a fresh connection is
                # cheaper than reasoning about this one's state.
                conn.close()
                raise
            if conn.closed or conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                conn.close()
            else:
                self._idle.put(conn)

    def _take(self) -> psycopg.Connection[Any]:
        while True:
            try:
                conn = self._idle.get_nowait()
            except queue.Empty:
                return self._database.connect(autocommit=True)
            if not conn.closed:
                return conn

    def close(self) -> None:
        while True:
            try:
                self._idle.get_nowait().close()
            except queue.Empty:
                return


class ThumbnailCache:
    """JPEG bytes by (image id, size, file size, mtime): a changed file gets a new entry."""

    def __init__(self, entries: int = THUMBNAIL_CACHE_ENTRIES) -> None:
        self._entries = entries
        self._data: OrderedDict[tuple[int, ...], bytes] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: tuple[int, ...]) -> bytes | None:
        with self._lock:
            found = self._data.get(key)
            if found is None:
                self.misses += 1
            else:
                self.hits += 1
                self._data.move_to_end(key)
            return found

    def put(self, key: tuple[int, ...], value: bytes) -> None:
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            while len(self._data) > self._entries:
                self._data.popitem(last=False)

    def __len__(self) -> int:
        return len(self._data)


def make_thumbnail(path: str, size: int, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> bytes:
    """An upright JPEG at most ``size`` pixels on its longer side; ImageError if unreadable."""
    image, _, _ = files.open_image(path, max_pixels=max_pixels, draft_size=size)
    image.thumbnail((size, size))
    output = io.BytesIO()
    image.save(output, "JPEG", quality=85)
    return output.getvalue()


class SearchService:
    """What one server keeps warm: connections, the model row, the encoder, thumbnails."""

    def __init__(
        self,
        database: Database,
        *,
        model: str,
        pretrained: str | None = None,
        encoder: ClipEncoder | None = None,
        device: str = "auto",
        precision: str = "auto",
        pool_size: int = 8,
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ) -> None:
        self.database = database
        self.pool = ConnectionPool(database, pool_size)
        self.thumbnails = ThumbnailCache()
        self.max_pixels = max_pixels
        self._device, self._precision = device, precision
        self._encoder = encoder
        # pretrained None: serve whichever weights of this architecture are indexed.
        self.architecture: str = canonical_model_name(model)
        self.pretrained: str | None = None
        self._load_as: str | None = None  # what load_encoder gets (tag, "none" or a file)
        if encoder is not None:
            self.architecture, self.pretrained = encoder.architecture, encoder.pretrained
        elif pretrained is not None:
            spec = resolve_model_spec(model, pretrained)  # validates names, no weights loaded
            self.architecture, self.pretrained = spec.architecture, spec.pretrained
            self._load_as = pretrained
        elif self.architecture not in known_architectures():
            raise UsageError(f"unknown model {model!r}; use an open_clip architecture")
        self._model: queries.Model | None = None
        self._load_lock = threading.Lock()
        self._encode_lock = threading.Lock()

    @property
    def encoder_loaded(self) -> bool:
        return self._encoder is not None

    def model(self) -> queries.Model:
        """The registered model whose rows this server searches (looked up once)."""
        if self._model is None:
            with self.pool.connection() as conn:
                self._model = queries.find_model(conn, self.architecture, self.pretrained)
        return self._model

    def encoder(self) -> ClipEncoder:
        """The CLIP encoder, loaded on first use and then kept."""
        if self._encoder is None:
            with self._load_lock:
                if self._encoder is None:
                    self._encoder = self._load_encoder()
        return self._encoder

    def _load_encoder(self) -> ClipEncoder:
        load_as = self._load_as
        if load_as is None:
            load_as = self.model().pretrained
            if load_as.startswith("file:"):
                raise ClipdbError(
                    f"{self.model()} was indexed from a local checkpoint; "
                    "start the server with --pretrained FILE"
                )
        return load_encoder(
            self.architecture, load_as, device=self._device, precision=self._precision
        )

    def warm(self) -> None:
        """Look up the model and load the encoder now, so the first query is fast."""
        self.model()
        self.encoder()

    def decode_upload(self, data: bytes) -> Image.Image:
        """An uploaded query image, JPEGs draft-decoded at the size ingest uses."""
        draft_size = max(self.encoder().image_size) * files.DRAFT_MARGIN
        return decode_upload(data, max_pixels=self.max_pixels, draft_size=draft_size)

    def encode_query(self, image: Image.Image | None, text: str | None) -> np.ndarray:
        encoder = self.encoder()
        with self._encode_lock:
            image_vector = encoder.encode_pil([image])[0] if image is not None else None
            text_vector = encoder.encode_texts([text])[0] if text else None
        # The CLI's combination with its default 1:1 weights: the normalised mean.
        return combine_query(image=image_vector, text=text_vector)

    def search(
        self, vector: np.ndarray, k: int, *, threshold: float | None, under: str | None
    ) -> list[queries.Hit]:
        model = self.model()
        with self.pool.connection() as conn:
            # As the CLI: the recall-tuned ef_search, and never below k (HNSW returns <= ef).
            ef_search = max(DEFAULT_EF_SEARCH, k)
            return queries.search_vector(
                conn, model, vector, k, ef_search=ef_search, under=under, threshold=threshold
            )

    def indexed_vector(self, image_id: int) -> np.ndarray:
        model = self.model()
        with self.pool.connection() as conn:
            row = conn.execute(
                "SELECT embedding FROM clipdb.images WHERE model_id = %s AND id = %s",
                (model.model_id, image_id),
            ).fetchone()
        if row is None:
            raise LookupError(f"no image with id {image_id} is indexed with model {model}")
        value = row[0]  # pgvector >= 0.4 loads a Vector, older versions an ndarray
        return np.asarray(value.to_numpy() if hasattr(value, "to_numpy") else value, np.float32)

    def thumbnail(self, image_id: int, size: int = THUMBNAIL_SIZE) -> bytes:
        with self.pool.connection() as conn:
            row = conn.execute(
                "SELECT path FROM clipdb.images WHERE id = %s LIMIT 1", (image_id,)
            ).fetchone()
        if row is None:
            raise LookupError(f"no indexed image with id {image_id}")
        path = row[0]
        try:
            stat = os.stat(path)
        except OSError:
            raise LookupError(f"image {image_id} is indexed but its file is gone") from None
        key = (image_id, size, stat.st_size, stat.st_mtime_ns)
        cached = self.thumbnails.get(key)
        if cached is None:
            try:
                cached = make_thumbnail(path, size, max_pixels=self.max_pixels)
            except files.ImageError as err:
                raise LookupError(f"image {image_id} cannot be read: {err}") from None
            self.thumbnails.put(key, cached)
        return cached

    def stats(self) -> dict[str, Any]:
        status = database_status(self.database)
        serving: dict[str, Any] = {
            "architecture": self.architecture,
            "pretrained": self.pretrained,
            "model_id": self._model.model_id if self._model else None,
            "encoder_loaded": self.encoder_loaded,
        }
        if self._encoder is not None:
            serving["device"] = str(self._encoder.device)
            serving["precision"] = self._encoder.precision
        return {
            "server": status.server,
            "postgres": status.server_version,
            "pgvector": status.pgvector_version,
            "schema_revision": status.revision,
            "models": [asdict(model) for model in status.models],
            "serving": serving,
            "thumbnail_cache": {
                "entries": len(self.thumbnails),
                "hits": self.thumbnails.hits,
                "misses": self.thumbnails.misses,
            },
        }

    def close(self) -> None:
        self.pool.close()


class BodyLimitMiddleware:
    """413 for request bodies over ``max_bytes``, by Content-Length or while streaming."""

    def __init__(self, app: Any, max_bytes: int, message: str) -> None:
        self.app, self.max_bytes, self.message = app, max_bytes, message

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            await self._reject(send)
            return
        received, started = 0, False

        async def limited_receive() -> Any:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                raise _BodyTooLarge
            return message

        async def tracking_send(message: Any) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _BodyTooLarge:
            if not started:
                await self._reject(send)

    async def _reject(self, send: Any) -> None:
        await JSONResponse({"detail": self.message}, status_code=413)(
            {"type": "http"}, _no_receive, send
        )


class _BodyTooLarge(Exception):
    pass


async def _no_receive() -> Any:
    return {"type": "http.disconnect"}


def too_large_message(limit: int) -> str:
    return f"upload too large: the limit is {limit / 1e6:g} MB"


def _server_timing(**phases: float) -> dict[str, str]:
    return {"Server-Timing": ", ".join(f"{k};dur={v * 1000:.1f}" for k, v in phases.items())}


def create_app(
    settings_or_database: Settings | Database,
    *,
    encoder: ClipEncoder | None = None,
    model: str | None = None,
    pretrained: str | None = None,
    device: str = "auto",
    precision: str = "auto",
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_MB * 1_000_000,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    pool_size: int = 8,
    preload: bool = True,
) -> FastAPI:
    """The web app. ``preload`` loads the model in the background as the server starts."""
    if isinstance(settings_or_database, Settings):
        settings = settings_or_database
        database = open_database(settings)
    else:
        settings, database = Settings.resolve(), settings_or_database
    service = SearchService(
        database,
        model=model or settings.model,
        pretrained=pretrained if pretrained is not None else settings.pretrained,
        encoder=encoder,
        device=device,
        precision=precision,
        pool_size=pool_size,
        max_pixels=max_pixels,
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> Any:
        if preload:
            threading.Thread(target=_warm_quietly, args=(service,), daemon=True).start()
        yield
        service.close()

    app = FastAPI(
        title="clipdb",
        summary="Search images by image, text, or 'more like this' (CLIP + pgvector).",
        lifespan=lifespan,
    )
    app.state.service = service
    app.add_middleware(
        BodyLimitMiddleware,
        max_bytes=max_upload_bytes + FORM_SLACK_BYTES,
        message=too_large_message(max_upload_bytes),
    )
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.exception_handler(ClipdbError)
    def clipdb_error(request: Request, err: ClipdbError) -> JSONResponse:
        # Nothing indexed for this model yet, database down, weights missing: not the client.
        return JSONResponse({"detail": str(err)}, status_code=503)

    @app.exception_handler(psycopg.DataError)
    def bad_value(request: Request, err: psycopg.DataError) -> JSONResponse:
        # A value PostgreSQL cannot hold (a NUL byte in `under`): the client's input, not a 500.
        return JSONResponse({"detail": f"invalid input: {first_line(err)}"}, status_code=400)

    @app.get("/", include_in_schema=False)
    def index_page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})

    @app.post("/api/search", summary="Search by an uploaded image and/or a text")
    def search_upload(
        image: Annotated[UploadFile | None, File(description="query image")] = None,
        text: Annotated[str | None, Form(description="query text")] = None,
        k: Annotated[int, Form(ge=1, le=MAX_TOP_K, description="number of results")] = (
            DEFAULT_TOP_K
        ),
        threshold: Annotated[
            float | None, Form(ge=-1.0, le=1.0, description="minimum cosine similarity")
        ] = None,
        under: Annotated[str | None, Form(description="only images under this directory")] = None,
    ) -> Response:
        """Results as a list of ``{rank, image_path, similarity, filename, image_id}``.

        With both an image and a text, the query is the normalised mean of their embeddings.
        """
        started = time.perf_counter()
        query_image = None
        if image is not None and (image.filename or image.size):
            data = image.file.read(max_upload_bytes + 1)
            if len(data) > max_upload_bytes:
                raise HTTPException(413, too_large_message(max_upload_bytes))
            try:
                query_image = service.decode_upload(data)
            except BadUpload as err:
                raise HTTPException(400, str(err)) from None
        return _run_search(query_image, (text or "").strip() or None, k, threshold, under, started)

    @app.get("/api/search", summary="Search by text")
    def search_text(
        text: Annotated[str, Query(min_length=1, description="query text")],
        k: Annotated[int, Query(ge=1, le=MAX_TOP_K)] = DEFAULT_TOP_K,
        threshold: Annotated[float | None, Query(ge=-1.0, le=1.0)] = None,
        under: Annotated[str | None, Query()] = None,
    ) -> Response:
        """Results as a list of ``{rank, image_path, similarity, filename, image_id}``."""
        return _run_search(None, text.strip() or None, k, threshold, under, time.perf_counter())

    def _run_search(
        image: Image.Image | None,
        text: str | None,
        k: int,
        threshold: float | None,
        under: str | None,
        started: float,
    ) -> Response:
        if image is None and text is None:
            raise HTTPException(400, "give a query: an image, a text, or both")
        decoded = time.perf_counter()
        vector = service.encode_query(image, text)
        encoded = time.perf_counter()
        hits = service.search(vector, k, threshold=threshold, under=under or None)
        finished = time.perf_counter()
        return JSONResponse(
            [hit.to_dict() for hit in hits],
            headers=_server_timing(
                decode=decoded - started, encode=encoded - decoded, db=finished - encoded
            ),
        )

    @app.get("/api/similar/{image_id}", summary="More like an indexed image (no model needed)")
    def similar(
        image_id: int,
        k: Annotated[int, Query(ge=1, le=MAX_TOP_K)] = DEFAULT_TOP_K,
        threshold: Annotated[float | None, Query(ge=-1.0, le=1.0)] = None,
        under: Annotated[str | None, Query()] = None,
    ) -> Response:
        """Results as a list of ``{rank, image_path, similarity, filename, image_id}``."""
        started = time.perf_counter()
        try:
            vector = service.indexed_vector(image_id)
        except LookupError as err:
            raise HTTPException(404, str(err)) from None
        hits = service.search(vector, k, threshold=threshold, under=under or None)
        return JSONResponse(
            [hit.to_dict() for hit in hits],
            headers=_server_timing(db=time.perf_counter() - started),
        )

    @app.get(
        "/api/images/{image_id}/thumbnail",
        summary="JPEG thumbnail of an indexed image",
        response_class=Response,
        responses={200: {"content": {"image/jpeg": {}}}, 404: {}},
    )
    def thumbnail(
        image_id: int, size: Annotated[int, Query(ge=16, le=1024)] = THUMBNAIL_SIZE
    ) -> Response:
        try:
            data = service.thumbnail(image_id, size)
        except LookupError as err:
            raise HTTPException(404, str(err)) from None
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "max-age=300"})

    @app.get("/api/health", summary="Liveness: database reachable, model state")
    def health() -> JSONResponse:
        try:
            with service.pool.connection() as conn:
                conn.execute("SELECT 1")
        except (ClipdbError, psycopg.Error) as err:
            detail = str(err).strip().splitlines()[0] if str(err).strip() else "unreachable"
            return JSONResponse({"status": "error", "detail": detail}, status_code=503)
        return JSONResponse(
            {"status": "ok", "database": "ok", "encoder_loaded": service.encoder_loaded}
        )

    @app.get("/api/stats", summary="Images per model, index sizes, what this server serves")
    def stats() -> dict[str, Any]:
        return service.stats()

    return app


@contextmanager
def running(app: FastAPI, host: str = DEFAULT_HOST, port: int = 0) -> Iterator[str]:
    """Serve ``app`` from a background thread (tests, notebooks); yields its base URL."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise ClipdbError(f"the web server did not start on {host}:{port}")
        time.sleep(0.02)
    bound_port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://{host}:{bound_port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def _warm_quietly(service: SearchService) -> None:
    try:
        service.warm()
    except ClipdbError as err:
        print(f"warning: model not loaded yet: {err}", file=sys.stderr)


# --- CLI --------------------------------------------------------------------------------------

EXAMPLES = """\
examples:
  python -m clipdb.serve                              # http://127.0.0.1:8000, API docs at /docs
  python -m clipdb.serve --host 0.0.0.0 --port 8080   # reachable from other machines
  curl 'http://127.0.0.1:8000/api/search?text=a+red+car&k=10'
  curl -F image=@query.jpg -F k=10 http://127.0.0.1:8000/api/search
  curl http://127.0.0.1:8000/api/similar/42
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m clipdb.serve",
        description="Serve a search page and a JSON API over the index, with the model warm.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--host", default=DEFAULT_HOST, help=f"address to listen on (default {DEFAULT_HOST})"
    )
    parser.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})"
    )
    add_common_arguments(parser)
    parser.add_argument(
        "--device", default="auto", help="auto, cpu, cuda or mps for encoding (default auto)"
    )
    parser.add_argument(
        "--precision", default="auto", help="auto, fp32, fp16 or bf16 (default auto)"
    )
    parser.add_argument(
        "--max-upload-mb",
        type=float,
        default=DEFAULT_MAX_UPLOAD_MB,
        help=f"largest upload in MB; larger ones get HTTP 413 (default {DEFAULT_MAX_UPLOAD_MB})",
    )
    parser.add_argument(
        "--lazy", action="store_true", help="load the model on the first query, not at start"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)

    def body() -> int:
        app = create_app(
            Settings.from_args(args),
            device=args.device,
            precision=args.precision,
            max_upload_bytes=int(args.max_upload_mb * 1_000_000),
            preload=False,
        )
        service: SearchService = app.state.service
        if not args.lazy:
            try:
                service.model()
            except ClipdbError as err:  # nothing indexed yet: serve anyway, load on first query
                print(f"warning: {err}; the model loads on the first query", file=sys.stderr)
            else:
                service.encoder()
        import uvicorn

        print(f"serving on http://{args.host}:{args.port}/ (API docs at /docs)", file=sys.stderr)
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
        return 0

    return run_guarded(parser, body)


if __name__ == "__main__":
    sys.exit(main())
