"""The duplicates route: groups of exact, near and similar copies, as ``clipdb dupes --json``."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Query
from fastapi.responses import JSONResponse

from clipdb.serve.service import SearchService

MAX_PAGE = 10_000


def dupes_router(service: SearchService) -> APIRouter:
    router = APIRouter()

    @router.get("/api/duplicates", summary="Duplicate groups (exact, near, similar)")
    def duplicates(
        tier: Annotated[str, Query(description="comma list of exact, near, similar")] = (
            "exact,near"
        ),
        limit: Annotated[
            int | None, Query(ge=1, le=MAX_PAGE, description="groups per page (default: all)")
        ] = None,
        cursor: Annotated[
            str | None, Query(description="the X-Next-Cursor of the previous page")
        ] = None,
    ) -> JSONResponse:
        """A list of ``{tier, images: [{image_path, image_id, width, height, size, keep,
        distance | similarity, metadata, reason | extra_metadata, outside}]}``, as ``clipdb
        dupes --json``; files are stat'ed (stale ones are left out). With ``limit``, one page
        of groups (in the CLI's order) and, when more follow, an ``X-Next-Cursor`` header to
        pass as ``cursor``. Each page is found afresh (a page never holds stale advice)."""
        from clipdb.dupes import parse_tiers
        from clipdb.errors import UsageError

        try:
            tiers = parse_tiers(tier)
        except UsageError as err:
            raise HTTPException(422, str(err)) from None
        start = 0
        if cursor is not None:
            if not cursor.isdigit() or len(cursor) > 9:
                raise HTTPException(422, "cursor: pass the X-Next-Cursor of the previous page")
            start = int(cursor)
        groups = service.duplicates(tiers)
        if limit is None and cursor is None:
            return JSONResponse(groups)
        end = len(groups) if limit is None else start + limit
        headers = {"X-Next-Cursor": str(end)} if end < len(groups) else {}
        return JSONResponse(groups[start:end], headers=headers)

    return router
