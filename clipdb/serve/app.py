"""The web app: the search page and the JSON API, a thin layer over :class:`SearchService`.

Endpoints are plain ``def`` functions, so FastAPI runs them in its thread pool and the event
loop stays free while a query is encoded. Indexed files are served by row id only
(:mod:`clipdb.serve.images`). FastAPI is imported by this module and those it imports only, so
``clipdb serve --help`` does not pay for it.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Sequence
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import psycopg
from fastapi import (
    Depends,
    FastAPI,
    File,
    Form,
    HTTPException,
    Query,
    Response,
    UploadFile,
)
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.middleware.trustedhost import TrustedHostMiddleware

from clipdb.config import DEFAULT_EF_SEARCH, DEFAULT_TOP_K, Settings
from clipdb.db import Database
from clipdb.encoders import Encoder
from clipdb.errors import ClipdbError, first_line
from clipdb.filters import NO_FILTERS, Filters
from clipdb.models import canonical_model_name
from clipdb.query import EncoderOptions
from clipdb.query import Query as ServiceQuery
from clipdb.search import SearchOptions
from clipdb.serve.docs import mount_offline_docs
from clipdb.serve.handlers import add_error_handlers
from clipdb.serve.images import add_image_routes
from clipdb.serve.limits import (
    BODY_TIMEOUT_S,
    DEFAULT_MAX_PIXELS,
    DEFAULT_MAX_UPLOAD_MB,
    DEFAULT_MAX_UPLOAD_PIXELS,
    FORM_SLACK_BYTES,
    HEADER_TIMEOUT_S,
    MAX_TOP_K,
    BadUpload,
    BodyLimitMiddleware,
    too_large_message,
)
from clipdb.serve.origin import SameOriginMiddleware
from clipdb.serve.params import form_filters, query_filters
from clipdb.serve.pool import POOL_TIMEOUT_S
from clipdb.serve.server import running
from clipdb.serve.service import SearchService

__all__ = ["LOCAL_HOSTS", "create_app", "running"]

STATIC_DIR = Path(__file__).parent.parent / "static"
# Host headers always accepted. Any other name is refused (400), so a page on another site
# whose name resolves to 127.0.0.1 (DNS rebinding) cannot read this server's answers.
LOCAL_HOSTS = ("localhost", "127.0.0.1", "[::1]")


def _server_timing(**phases: float) -> dict[str, str]:
    return {"Server-Timing": ", ".join(f"{k};dur={v * 1000:.1f}" for k, v in phases.items())}


def create_app(
    settings_or_database: Settings | Database,
    *,
    encoder: Encoder | None = None,
    model: str | None = None,
    pretrained: str | None = None,
    device: str = "auto",
    precision: str = "auto",
    backend: str = "auto",
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_MB * 1_000_000,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_upload_pixels: int = DEFAULT_MAX_UPLOAD_PIXELS,
    pool_size: int = 8,
    pool_timeout_s: float = POOL_TIMEOUT_S,
    statement_timeout: float | None = None,
    preload: bool = True,
    allowed_hosts: Sequence[str] = (),
    body_timeout_s: float = BODY_TIMEOUT_S,
    header_timeout_s: float = HEADER_TIMEOUT_S,
) -> FastAPI:
    """The web app. ``preload`` loads the model in the background as the server starts.

    ``allowed_hosts`` are Host header names accepted besides :data:`LOCAL_HOSTS` ("*": any).
    ``statement_timeout`` (seconds, 0: none) limits each database statement; None takes
    CLIPDB_SERVE_STATEMENT_TIMEOUT or the default (:func:`clipdb.config.statement_timeout_s`).
    Building it does no I/O: the database opens on the first request (or the preload).
    """
    if isinstance(settings_or_database, Settings):
        settings, database = settings_or_database, None
        if model is not None or pretrained is not None:
            settings = replace(
                settings,
                model=canonical_model_name(model) if model else settings.model,
                pretrained=pretrained if pretrained is not None else settings.pretrained,
            )
    else:
        settings = Settings.resolve(model=model, pretrained=pretrained)
        database = settings_or_database
    service = SearchService(
        settings,
        database=database,
        encoder=encoder,
        encoder_options=EncoderOptions.of(
            settings, device=device, precision=precision, backend=backend
        ),
        pool_size=pool_size,
        pool_timeout_s=pool_timeout_s,
        statement_timeout=statement_timeout,
        max_pixels=max_pixels,
        max_upload_pixels=max_upload_pixels,
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
        docs_url=None,  # served by mount_offline_docs: no CDN
        redoc_url=None,
    )
    mount_offline_docs(app)
    app.state.service = service
    app.state.header_timeout_s = header_timeout_s  # read by server.server_config
    app.add_middleware(
        BodyLimitMiddleware,
        max_bytes=max_upload_bytes + FORM_SLACK_BYTES,
        message=too_large_message(max_upload_bytes),
        timeout_s=body_timeout_s,
    )
    # Before the body is read: a POST from another site is refused unread.
    app.add_middleware(SameOriginMiddleware)
    # Added last, so it runs first: a foreign Host gets nothing else, not even a body read.
    app.add_middleware(
        TrustedHostMiddleware,
        allowed_hosts=[*LOCAL_HOSTS, *(_host_pattern(name) for name in allowed_hosts)],
        www_redirect=False,
    )
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    add_error_handlers(app)

    @app.get("/", include_in_schema=False)
    def index_page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})

    @app.get("/favicon.ico", include_in_schema=False)
    def favicon() -> FileResponse:
        # The page links /static/favicon.svg; this answers clients that ask the old place.
        return FileResponse(STATIC_DIR / "favicon.svg", media_type="image/svg+xml")

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
        hide_duplicates: Annotated[
            bool, Form(description="collapse exact/near duplicates to their kept image")
        ] = False,
        filters: Annotated[Filters, Depends(form_filters)] = NO_FILTERS,
    ) -> Response:
        """Results as a list of ``{rank, image_path, similarity, filename, image_id}``.

        With both an image and a text, the query is the normalised mean of their embeddings.
        """
        encoded = _encode(image, (text or "").strip() or None)
        if encoded is None:
            raise HTTPException(400, "give a query: an image, a text, or both")
        vector, phases = encoded
        return _search(vector, phases, k, threshold, under, filters, hide_duplicates)

    def _encode(
        image: UploadFile | None, text: str | None
    ) -> tuple[np.ndarray, dict[str, float]] | None:
        """The query vector of an upload and/or a text (None without either), and the seconds
        spent decoding (waiting for a decode slot included) and encoding."""
        started = time.perf_counter()
        if image is None or not (image.filename or image.size):
            if text is None:
                return None
            vector = service.vector(ServiceQuery(text=text))
            return vector, {"decode": 0.0, "encode": time.perf_counter() - started}

        def read() -> bytes:
            data = image.file.read(max_upload_bytes + 1)
            if len(data) > max_upload_bytes:
                raise HTTPException(413, too_large_message(max_upload_bytes))
            return data

        try:
            vector, decode_s = service.encode_upload(read, text)
        except BadUpload as err:
            raise HTTPException(400, str(err)) from None
        return vector, {"decode": decode_s, "encode": time.perf_counter() - started - decode_s}

    @app.post("/api/embed", summary="The query embedding of an image and/or a text")
    def embed(
        image: Annotated[UploadFile | None, File(description="image")] = None,
        text: Annotated[str | None, Form(description="text")] = None,
    ) -> JSONResponse:
        """``{"architecture", "pretrained", "dim", "vector"}``: the L2-normalised vector a
        search with the same inputs would use (image + text: their normalised mean), for
        ``clipdb.search(vector, ...)`` in SQL or another app. The model is the served one."""
        encoded = _encode(image, (text or "").strip() or None)
        if encoded is None:
            raise HTTPException(422, "give an image, a non-empty text, or both")
        vector = encoded[0]
        model = service.model()
        return JSONResponse(
            {
                "architecture": model.architecture,
                "pretrained": model.pretrained,
                "dim": int(vector.shape[0]),
                "vector": [float(v) for v in vector],
            }
        )

    @app.get("/api/search", summary="Search by text")
    def search_text(
        text: Annotated[str, Query(min_length=1, description="query text")],
        k: Annotated[int, Query(ge=1, le=MAX_TOP_K)] = DEFAULT_TOP_K,
        threshold: Annotated[float | None, Query(ge=-1.0, le=1.0)] = None,
        under: Annotated[str | None, Query()] = None,
        hide_duplicates: bool = False,
        filters: Annotated[Filters, Depends(query_filters)] = NO_FILTERS,
    ) -> Response:
        """Results as a list of ``{rank, image_path, similarity, filename, image_id}``."""
        encoded = _encode(None, text.strip() or None)
        if encoded is None:
            raise HTTPException(400, "give a query: an image, a text, or both")
        vector, phases = encoded
        return _search(vector, phases, k, threshold, under, filters, hide_duplicates)

    def _search(
        vector: np.ndarray,
        phases: dict[str, float],
        k: int,
        threshold: float | None,
        under: str | None,
        filters: Filters,
        hide_duplicates: bool,
    ) -> Response:
        started = time.perf_counter()
        options = SearchOptions(
            k, DEFAULT_EF_SEARCH, under or None, threshold, filters, hide_duplicates
        )
        hits = service.search(vector, options)
        phases["db"] = time.perf_counter() - started
        return JSONResponse([hit.to_dict() for hit in hits], headers=_server_timing(**phases))

    @app.get("/api/duplicates", summary="Duplicate groups (exact, near, similar)")
    def duplicates(
        tier: Annotated[str, Query(description="comma list of exact, near, similar")] = (
            "exact,near"
        ),
    ) -> JSONResponse:
        """A list of ``{tier, images: [{image_path, image_id, width, height, size, keep,
        distance | similarity}]}``, as ``clipdb dupes --json``; files are stat'ed (stale
        ones are left out)."""
        from clipdb.dupes import parse_tiers
        from clipdb.errors import UsageError

        try:
            tiers = parse_tiers(tier)
        except UsageError as err:
            raise HTTPException(422, str(err)) from None
        return JSONResponse(service.duplicates(tiers))

    @app.get("/api/similar/{image_id}", summary="More like an indexed image (no model needed)")
    def similar(
        image_id: int,
        k: Annotated[int, Query(ge=1, le=MAX_TOP_K)] = DEFAULT_TOP_K,
        threshold: Annotated[float | None, Query(ge=-1.0, le=1.0)] = None,
        under: Annotated[str | None, Query()] = None,
        filters: Annotated[Filters, Depends(query_filters)] = NO_FILTERS,
    ) -> Response:
        """Results as a list of ``{rank, image_path, similarity, filename, image_id}``."""
        started = time.perf_counter()
        try:
            vector = service.vector(ServiceQuery(like=image_id))
        except LookupError as err:
            raise HTTPException(404, str(err)) from None
        phases = {"lookup": time.perf_counter() - started}
        return _search(vector, phases, k, threshold, under, filters, False)

    add_image_routes(app, service)

    @app.get("/api/health", summary="Liveness: database reachable, model state")
    def health() -> JSONResponse:
        try:
            with service.connection() as conn:
                conn.execute("SELECT 1")
        except (ClipdbError, psycopg.Error) as err:
            return JSONResponse({"status": "error", "detail": first_line(err)}, status_code=503)
        return JSONResponse(
            {"status": "ok", "database": "ok", "encoder_loaded": service.encoder_loaded}
        )

    @app.get("/api/stats", summary="Images per model, index sizes, what this server serves")
    def stats() -> dict[str, Any]:
        return service.stats()

    return app


def _host_pattern(name: str) -> str:
    """A name as it appears in a Host header: IPv6 literals in brackets, lower case."""
    name = name.strip().lower()
    return f"[{name}]" if ":" in name and not name.startswith("[") else name


def _warm_quietly(service: SearchService) -> None:
    try:
        service.warm()
    except ClipdbError as err:
        print(f"warning: model not loaded yet: {err}", file=sys.stderr)
