"""Requests from other web sites: refused (403) wherever they would make the server work.

Any page a user visits can make the browser send requests here: ``<img src=...>`` GETs, and
form POSTs, without being able to read the answers. The answers are not the harm; the work is:
a duplicates scan, a model forward pass, a large decode. So every POST, and every GET that
runs a query, the model or a decode, is served to the page itself (and to clients that are
not browsers) only:

- ``Sec-Fetch-Site`` (every current browser sends it) must be ``same-origin``, or ``none`` (an
  address typed or bookmarked);
- without it, an ``Origin`` header must name this server's Host;
- with neither (curl, scripts, other programs), the request is served.

``same-site`` is refused too: another port on localhost is the same site but another origin.
"""

from __future__ import annotations

import re
import urllib.parse
from typing import Any

from clipdb.serve.limits import reject

# GETs that cost a query, the model or a decode. The page, /docs, static files, health and
# stats stay open; so does an original file (a link to one may come from anywhere).
EXPENSIVE_GETS = re.compile(r"^/api/(duplicates|search|similar/[^/]*|images/[^/]*/thumbnail)/?$")
ALLOWED_FETCH_SITES = frozenset({b"same-origin", b"none"})
REFUSED = (
    "refused: a request from another web site; this server answers it only to its own page "
    "and to programs that are not browsers"
)


def same_origin(headers: dict[bytes, bytes]) -> bool:
    """Whether a request's headers show it comes from this server's own pages (or from no
    browser at all)."""
    site = headers.get(b"sec-fetch-site")
    if site is not None:
        return site.strip().lower() in ALLOWED_FETCH_SITES
    origin = headers.get(b"origin")
    if origin is None:
        return True
    host = headers.get(b"host", b"").strip().lower()
    try:
        netloc = urllib.parse.urlsplit(origin.decode("latin-1").strip()).netloc
    except ValueError:
        return False
    return bool(host) and netloc.lower().encode("latin-1") == host


class SameOriginMiddleware:
    """403 for a POST (or any unsafe method), or an expensive GET, from another web site."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and self._guarded(scope):
            headers = dict(scope.get("headers") or [])
            if not same_origin(headers):
                await reject(send, 403, REFUSED)
                return
        await self.app(scope, receive, send)

    @staticmethod
    def _guarded(scope: Any) -> bool:
        method: str = scope["method"]
        path: str = scope["path"]
        if method in ("GET", "HEAD"):  # HEAD runs the GET handler
            return EXPENSIVE_GETS.match(path) is not None
        return method != "OPTIONS"
