"""The duplicates route: groups of exact, near and similar copies, as ``clipdb dupes --json``."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Query
from fastapi.responses import JSONResponse

from clipdb.serve.service import SearchService


def dupes_router(service: SearchService) -> APIRouter:
    router = APIRouter()

    @router.get("/api/duplicates", summary="Duplicate groups (exact, near, similar)")
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

    return router
