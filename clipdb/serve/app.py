"""The web app: the search page and the JSON API, a thin layer over :class:`SearchService`.

This module assembles the app: middleware, error handlers and the routers of each area
(``routes_pages``, ``routes_search``, ``routes_dupes``, ``images``, ``routes_status``).
Endpoints are plain ``def`` functions, so FastAPI runs them in its thread pool and the event
loop stays free while a query is encoded. Indexed files are served by row id only
(:mod:`clipdb.serve.images`). FastAPI is imported by this module and those it imports only, so
``clipdb serve --help`` does not pay for it.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Sequence
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles
from starlette.middleware.trustedhost import TrustedHostMiddleware

from clipdb.config import Settings
from clipdb.db import Database
from clipdb.encoders import Encoder
from clipdb.errors import ClipdbError, first_line
from clipdb.models import canonical_model_name
from clipdb.query import EncoderOptions
from clipdb.serve.docs import mount_offline_docs
from clipdb.serve.handlers import add_error_handlers
from clipdb.serve.images import image_router
from clipdb.serve.limits import (
    BODY_TIMEOUT_S,
    DEFAULT_MAX_PIXELS,
    DEFAULT_MAX_UPLOAD_MB,
    DEFAULT_MAX_UPLOAD_PIXELS,
    FORM_SLACK_BYTES,
    HEADER_TIMEOUT_S,
    BodyLimitMiddleware,
    too_large_message,
)
from clipdb.serve.origin import SameOriginMiddleware
from clipdb.serve.pool import POOL_TIMEOUT_S
from clipdb.serve.routes_dupes import dupes_router
from clipdb.serve.routes_pages import STATIC_DIR, page_router
from clipdb.serve.routes_search import search_router, similar_router
from clipdb.serve.routes_status import status_router
from clipdb.serve.server import running
from clipdb.serve.service import SearchService

__all__ = ["LOCAL_HOSTS", "create_app", "running"]

# Host headers always accepted. Any other name is refused (400), so a page on another site
# whose name resolves to 127.0.0.1 (DNS rebinding) cannot read this server's answers.
LOCAL_HOSTS = ("localhost", "127.0.0.1", "[::1]")


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
    settings, database = _settings(settings_or_database, model, pretrained)
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
    app = FastAPI(
        title="clipdb",
        summary="Search images by image, text, or 'more like this' (CLIP + pgvector).",
        lifespan=_lifespan(service, preload),
        docs_url=None,  # served by mount_offline_docs: no CDN
        redoc_url=None,
    )
    mount_offline_docs(app)
    app.state.service = service
    app.state.header_timeout_s = header_timeout_s  # read by server.server_config
    _add_middleware(app, max_upload_bytes, body_timeout_s, allowed_hosts)
    add_error_handlers(app)
    _add_routes(app, service, max_upload_bytes)
    return app


def _add_routes(app: FastAPI, service: SearchService, max_upload_bytes: int) -> None:
    """Each area's routes, in the order they are matched and listed in the API docs."""
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    app.include_router(page_router())
    app.include_router(search_router(service, max_upload_bytes))
    app.include_router(dupes_router(service))
    app.include_router(similar_router(service))
    app.include_router(image_router(service))
    app.include_router(status_router(service))


def _settings(
    settings_or_database: Settings | Database, model: str | None, pretrained: str | None
) -> tuple[Settings, Database | None]:
    """The settings to serve with (``model``/``pretrained`` override them) and the database
    given instead of settings, if one was."""
    if not isinstance(settings_or_database, Settings):
        return Settings.resolve(model=model, pretrained=pretrained), settings_or_database
    settings = settings_or_database
    if model is not None or pretrained is not None:
        settings = replace(
            settings,
            model=canonical_model_name(model) if model else settings.model,
            pretrained=pretrained if pretrained is not None else settings.pretrained,
        )
    return settings, None


def _lifespan(service: SearchService, preload: bool) -> Any:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> Any:
        if preload:
            threading.Thread(target=_warm_quietly, args=(service,), daemon=True).start()
        yield
        service.close()

    return lifespan


def _add_middleware(
    app: FastAPI, max_upload_bytes: int, body_timeout_s: float, allowed_hosts: Sequence[str]
) -> None:
    """The middleware, innermost first (the last added runs first)."""
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


def _host_pattern(name: str) -> str:
    """A name as it appears in a Host header: IPv6 literals in brackets, lower case."""
    name = name.strip().lower()
    return f"[{name}]" if ":" in name and not name.startswith("[") else name


def _warm_quietly(service: SearchService) -> None:
    try:
        service.warm()
    except ClipdbError as err:
        print(f"warning: model not loaded yet: {err}", file=sys.stderr)
        return
    _prewarm_quietly(service)


def _prewarm_quietly(service: SearchService) -> None:
    """The model's index and rows into memory, so the first searches are not cold."""
    import psycopg

    from clipdb.db.prewarm import prewarm

    try:
        with service.connection() as conn:
            prewarm(conn, service.model())
    except (ClipdbError, psycopg.Error) as err:
        print(f"warning: search pages not prewarmed: {first_line(err)}", file=sys.stderr)
