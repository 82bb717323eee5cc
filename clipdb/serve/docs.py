"""``/docs`` without the internet: Swagger UI's assets from the fastapi-offline package.

FastAPI's default ``/docs`` page loads Swagger UI from a CDN, so it is blank offline (and
tells a third party that the page was opened). The ``fastapi-offline`` wheel (MIT) ships
Swagger UI 5 (which reads FastAPI's OpenAPI 3.1); its files are served under
``/static/swagger``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fastapi import FastAPI

SWAGGER_PREFIX = "/static/swagger"


def mount_offline_docs(app: FastAPI) -> None:
    """Serve ``/docs`` with local Swagger UI assets (the app is made with ``docs_url=None``)."""
    from importlib.resources import files

    from fastapi.openapi.docs import get_swagger_ui_html
    from fastapi.responses import HTMLResponse
    from fastapi.staticfiles import StaticFiles

    assets = files("fastapi_offline") / "static"
    app.mount(SWAGGER_PREFIX, StaticFiles(directory=str(assets)), name="swagger")

    @app.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title="clipdb API",
            swagger_js_url=f"{SWAGGER_PREFIX}/swagger-ui-bundle.js",
            swagger_css_url=f"{SWAGGER_PREFIX}/swagger-ui.css",
            swagger_favicon_url=f"{SWAGGER_PREFIX}/favicon.png",
        )
