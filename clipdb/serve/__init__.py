"""Search page and JSON API with the model kept warm (``clipdb serve`` is its CLI).

``create_app`` (routes, in :mod:`clipdb.serve.app`) is a thin layer over
:class:`clipdb.serve.service.SearchService`; request limits live in :mod:`clipdb.serve.limits`.
The names are loaded lazily so that ``clipdb serve --help`` imports neither FastAPI nor torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000

__all__ = ["DEFAULT_HOST", "DEFAULT_PORT", "SearchService", "create_app", "running"]

if TYPE_CHECKING:
    from clipdb.serve.app import create_app, running
    from clipdb.serve.service import SearchService


def __getattr__(name: str) -> Any:
    if name in ("create_app", "running"):
        from clipdb.serve import app

        return getattr(app, name)
    if name == "SearchService":
        from clipdb.serve.service import SearchService

        return SearchService
    raise AttributeError(name)
