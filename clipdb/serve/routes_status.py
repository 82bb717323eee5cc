"""Routes that say how the server is: liveness (for a load balancer) and what it serves."""

from __future__ import annotations

from typing import Any

import psycopg
from fastapi import APIRouter
from fastapi.responses import JSONResponse

from clipdb.errors import ClipdbError, first_line
from clipdb.serve.service import SearchService


def status_router(service: SearchService) -> APIRouter:
    router = APIRouter()

    @router.get("/api/health", summary="Liveness: database reachable, model state")
    def health() -> JSONResponse:
        try:
            with service.connection() as conn:
                conn.execute("SELECT 1")
        except (ClipdbError, psycopg.Error) as err:
            return JSONResponse({"status": "error", "detail": first_line(err)}, status_code=503)
        return JSONResponse(
            {"status": "ok", "database": "ok", "encoder_loaded": service.encoder_loaded}
        )

    @router.get("/api/stats", summary="Images per model, index sizes, what this server serves")
    def stats() -> dict[str, Any]:
        return service.stats()

    @router.get("/api/models", summary="The indexed models a search may name")
    def models() -> list[dict[str, Any]]:
        """Every model with indexed images, as ``clipdb models --json`` lists them, plus
        ``serving``: the one that answers a search naming no ``model``."""
        return service.models()

    return router
