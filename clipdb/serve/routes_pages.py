"""The search page and its icon; the page's scripts and styles are under ``/static``."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

STATIC_DIR = Path(__file__).parent.parent / "static"


def page_router() -> APIRouter:
    router = APIRouter()

    @router.get("/", include_in_schema=False)
    def index_page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})

    @router.get("/favicon.ico", include_in_schema=False)
    def favicon() -> FileResponse:
        # The page links /static/favicon.svg; this answers clients that ask the old place.
        return FileResponse(STATIC_DIR / "favicon.svg", media_type="image/svg+xml")

    return router
