"""What the server accepts: body sizes (413), upload decoding (400), result counts."""

from __future__ import annotations

from typing import Any

from PIL import Image

from clipdb import decode, files
from clipdb.errors import ClipdbError

DEFAULT_MAX_UPLOAD_MB = 20
DEFAULT_MAX_PIXELS = 89_478_485  # Pillow's own decompression-bomb threshold
MAX_TOP_K = 200
FORM_SLACK_BYTES = 64 * 1024  # multipart headers and the text fields around an upload


class BadUpload(ClipdbError):
    """An upload that is not a decodable image of acceptable size (HTTP 400)."""


def decode_upload(
    data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS, draft_size: int | None = None
) -> Image.Image:
    """Bytes from a client -> upright RGB image, decoded exactly as ingest decodes files.

    Non-images, corrupt files and decompression bombs (more than ``max_pixels``, checked from
    the header before any pixel is decoded) raise :class:`BadUpload`.
    """
    try:
        image, _, _ = decode.open_image(data, max_pixels=max_pixels, draft_size=draft_size)
    except decode.ImageError as err:
        reason = str(err)
        if reason == files.TOO_LARGE:
            reason = f"image has too many pixels (limit {max_pixels}; decompression bomb?)"
        elif reason == files.EMPTY:
            reason = "empty upload"
        raise BadUpload(f"cannot use the upload: {reason}") from None
    return image


def too_large_message(limit: int) -> str:
    return f"upload too large: the limit is {limit / 1e6:g} MB"


class BodyLimitMiddleware:
    """413 for request bodies over ``max_bytes``, by Content-Length or while streaming."""

    def __init__(self, app: Any, max_bytes: int, message: str) -> None:
        self.app, self.max_bytes, self.message = app, max_bytes, message

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            await self._reject(send)
            return
        received, started = 0, False

        async def limited_receive() -> Any:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                raise _BodyTooLarge
            return message

        async def tracking_send(message: Any) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _BodyTooLarge:
            if not started:
                await self._reject(send)

    async def _reject(self, send: Any) -> None:
        from starlette.responses import JSONResponse

        await JSONResponse({"detail": self.message}, status_code=413)(
            {"type": "http"}, _no_receive, send
        )


class _BodyTooLarge(Exception):
    pass


async def _no_receive() -> Any:
    return {"type": "http.disconnect"}
