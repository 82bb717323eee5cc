"""What the server accepts: body sizes (413), slow bodies (408), upload decoding (400), counts."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from PIL import Image

from clipdb import decode, files
from clipdb.config import MAX_RESULTS
from clipdb.errors import ClipdbError
from clipdb.thumbnail import EXIF_TRANSPOSE, shrink

DEFAULT_MAX_UPLOAD_MB = 20
DEFAULT_MAX_PIXELS = 89_478_485  # Pillow's own decompression-bomb threshold (ingest's too)
# Any web page can make a browser post here, so a query image gets less than ingest allows:
# 40 MP is 120 MB as RGB; a camera's 24-36 MP still fits.
DEFAULT_MAX_UPLOAD_PIXELS = 40_000_000
MAX_TOP_K = MAX_RESULTS  # the one result limit of the CLI, Python and SQL
FORM_SLACK_BYTES = 64 * 1024  # multipart headers and the text fields around an upload
# How long a client may take to send its request headers, and then each piece of its body:
# a client that stops sending (or announces more than it sends) is cut off, not waited for.
HEADER_TIMEOUT_S = 10.0
BODY_TIMEOUT_S = 30.0
KEEP_ALIVE_S = 5  # idle time between requests on one connection (uvicorn's default)
SHUTDOWN_GRACE_S = 10  # SIGTERM: requests still running after this are cancelled


class BadUpload(ClipdbError):
    """An upload that is not a decodable image of acceptable size (HTTP 400)."""


def decode_upload(
    data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS, small_side: int
) -> Image.Image:
    """Bytes from a client -> upright RGB image, no larger than the model needs.

    JPEGs are draft-decoded exactly as ingest decodes them (short side at least ``small_side``);
    other formats cannot decode smaller, so right after loading they are shrunk by an integer
    factor to that size (a box average) before any other copy is made: what waits for the
    encoder is then a fraction of a megabyte, not 108 MB per 36 MP upload. Non-images, corrupt
    files and decompression bombs (more than ``max_pixels``, checked from the header before
    any pixel is decoded) raise :class:`BadUpload`.
    """
    try:
        with decode.opened_image(data, max_pixels) as opened:
            orientation = opened.getexif().get(decode.ORIENTATION_TAG, 1)
            jpeg = opened.format == "JPEG"
            if jpeg:
                opened.draft(opened.mode, (small_side, small_side))
            opened.load()  # first frame of animations
            image = opened if jpeg else shrink(opened, min(opened.size) // small_side)
            if orientation in EXIF_TRANSPOSE:
                image = image.transpose(EXIF_TRANSPOSE[orientation])
            return decode.to_rgb(image)
    except decode.ImageError as err:
        reason = str(err)
        if reason == files.TOO_LARGE:
            reason = (
                f"image has too many pixels (uploads are limited to {max_pixels / 1e6:g} MP,"
                f" {max_pixels} pixels; shrink it first)"
            )
        elif reason == files.EMPTY:
            reason = "empty upload"
        raise BadUpload(f"cannot use the upload: {reason}") from None


class Busy(ClipdbError):
    """No slot or connection came free in time (HTTP 503 with Retry-After)."""


class InUse:
    """How many holders are inside ``with counter.held()`` right now (thread-safe)."""

    def __init__(self) -> None:
        self.count = 0
        self._lock = threading.Lock()

    @contextmanager
    def held(self) -> Iterator[None]:
        with self._lock:
            self.count += 1
        try:
            yield
        finally:
            with self._lock:
                self.count -= 1


class Slots:
    """At most ``count`` holders at once; another waits up to ``wait_s``, then gets Busy.

    ``on_release`` runs each time a holder leaves, after its slot is free again.
    """

    def __init__(
        self, count: int, wait_s: float, busy: str, on_release: Callable[[], None] | None = None
    ) -> None:
        self.count, self.wait_s, self._busy = count, wait_s, busy
        self._on_release = on_release
        self._free = threading.BoundedSemaphore(count)
        self._in_use = InUse()

    @property
    def in_use(self) -> int:
        return self._in_use.count

    @contextmanager
    def held(self) -> Iterator[None]:
        if not self._free.acquire(timeout=self.wait_s):
            raise Busy(self._busy)
        try:
            with self._in_use.held():
                yield
        finally:
            self._free.release()
            if self._on_release is not None:
                self._on_release()


def too_large_message(limit: int) -> str:
    return f"upload too large: the limit is {limit / 1e6:g} MB"


class BodyLimitMiddleware:
    """413 for request bodies over ``max_bytes`` (by Content-Length, or counted while streaming,
    chunked included); 408 when the client sends no body bytes for ``timeout_s``.

    Whatever the app answers after the limit or the timeout hit (a form parser turns the
    exception into a 400) is replaced by the 413/408, so the status says what happened.
    """

    def __init__(
        self, app: Any, max_bytes: int, message: str, timeout_s: float = BODY_TIMEOUT_S
    ) -> None:
        self.app, self.max_bytes, self.message = app, max_bytes, message
        self.timeout_s = timeout_s

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            await reject(send, 413, self.message)
            return
        received, started, body_done = 0, False, False
        failure: tuple[int, str] | None = None

        async def limited_receive() -> Any:
            nonlocal received, failure, body_done
            if body_done:  # later calls wait for a disconnect: no deadline for that
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), self.timeout_s)
            except TimeoutError:
                failure = (408, f"request body not received within {self.timeout_s:g} s")
                raise _BodyRefused from None
            received += len(message.get("body", b""))
            body_done = message["type"] != "http.request" or not message.get("more_body")
            if received > self.max_bytes:
                failure = (413, self.message)
                raise _BodyRefused
            return message

        async def tracking_send(message: Any) -> None:
            nonlocal started
            if failure is not None:
                return  # the app's answer to a body we cut short: ours replaces it
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except Exception:
            if failure is None:
                raise
        if failure is not None and not started:
            await reject(send, *failure)


async def reject(send: Any, status: int, detail: str) -> None:
    """Answer ``{"detail": detail}`` with ``status`` from a middleware, before the app runs.

    Connection: close: the rest of the body is never read, so the connection is done.
    """
    from starlette.responses import JSONResponse

    response = JSONResponse({"detail": detail}, status_code=status)
    response.headers["connection"] = "close"
    await response({"type": "http"}, _no_receive, send)


class _BodyRefused(Exception):
    pass


async def _no_receive() -> Any:
    return {"type": "http.disconnect"}
