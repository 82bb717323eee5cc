"""Routes that serve indexed files by row id: thumbnails and the originals.

The path comes from ``clipdb.images``, never from the request, so the server cannot be used to
read arbitrary files; a file is served only while it still is the one that was indexed.
"""

from __future__ import annotations

import mimetypes
import os
import urllib.parse
from typing import Annotated

from fastapi import APIRouter, Header, HTTPException, Query, Response
from fastapi.responses import StreamingResponse

from clipdb import decode, files
from clipdb.serve import videos
from clipdb.serve.service import THUMBNAIL_SIZE, FileChanged, SearchService
from clipdb.thumbnail import make_thumbnail

# What browsers show as they are; any other indexed format (HEIC/HEIF, RAW, TIFF) is served
# as a JPEG rendition of at most RENDITION_SIZE pixels on its longer side.
BROWSER_FORMATS = frozenset(
    {".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".gif", ".bmp", ".webp", ".avif"}
)
RENDITION_SIZE = 2048


def rendition(service: SearchService, data: bytes, name: str) -> bytes | None:
    """A JPEG of an indexed file the browser cannot show itself; None where it can."""
    if os.path.splitext(name)[1].lower() in BROWSER_FORMATS:
        return None
    with service.decode_slots.held():  # a decode like a thumbnail's: the same budget
        return make_thumbnail(
            data, RENDITION_SIZE, max_pixels=service.max_pixels, name=name, quality=90
        )


def image_router(service: SearchService) -> APIRouter:
    router = APIRouter()

    @router.get(
        "/api/images/{image_id}/thumbnail",
        summary="JPEG thumbnail of an indexed image",
        response_class=Response,
        responses={200: {"content": {"image/jpeg": {}}}, 404: {}, 410: {}},
    )
    def thumbnail(
        image_id: int, size: Annotated[int, Query(ge=16, le=1024)] = THUMBNAIL_SIZE
    ) -> Response:
        """Sizes are rounded to the nearest of 128, 256 and 512 pixels (the longer side).

        404 when the row or its file is gone, 410 when the file is no longer the indexed one
        (another size, mtime or content, or not a regular file any more).
        """
        try:
            data = frame_thumbnail(service, image_id, size)
            if data is None:
                data = service.thumbnail(image_id, size)
        except FileChanged as err:
            raise HTTPException(410, str(err)) from None
        except LookupError as err:
            raise HTTPException(404, str(err)) from None
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "max-age=300"})

    @router.get(
        "/api/images/{image_id}/file",
        summary="The original file of an indexed image",
        response_class=Response,
        responses={200: {"content": {"image/*": {}}}, 404: {}, 410: {}},
    )
    def original(image_id: int, range: Annotated[str | None, Header()] = None) -> Response:
        """The indexed file itself, only while it still is the file that was indexed (same
        size, mtime and sha256; 410 otherwise, 404 when gone). There is no way to name a path.
        Formats browsers cannot show (HEIC/HEIF, RAW, TIFF) come as a JPEG rendition; a
        video frame's row gets its video, as ``/video`` serves it (range requests too)."""
        if is_video_row(service, image_id):
            return video_response(service, image_id, range)
        return original_response(service, image_id)

    @router.get(
        "/api/images/{image_id}/video",
        summary="The video file of an indexed video frame (range requests for seeking)",
        response_class=Response,
        responses={200: {"content": {"video/*": {}}}, 206: {}, 404: {}, 410: {}, 416: {}},
    )
    def video(image_id: int, range: Annotated[str | None, Header()] = None) -> Response:
        """The video a frame row was sampled from, served like ``/file`` (only the indexed
        file, while it has the row's size and mtime: 410 otherwise, 404 when gone or not a
        video); ``Range: bytes=a-b`` gets 206 with that span. The page links it with
        ``#t=SECONDS`` so the player starts at the frame."""
        return video_response(service, image_id, range)

    return router


def original_response(service: SearchService, image_id: int) -> Response:
    """Row ``image_id``'s photo as ``/file`` serves it: the indexed file (or a JPEG rendition
    of a format browsers cannot show), sandboxed; 410 when changed, 404 when gone."""
    try:
        data, name = service.original(image_id)
        shown = rendition(service, data, name)
    except FileChanged as err:
        raise HTTPException(410, str(err)) from None
    except LookupError as err:
        raise HTTPException(404, str(err)) from None
    except decode.ImageError as err:
        raise HTTPException(404, f"image {image_id} cannot be read: {err}") from None
    if shown is not None:
        data, name = shown, os.path.splitext(name)[0] + ".jpg"
    media_type = mimetypes.guess_type(name)[0] or ""
    if not media_type.startswith("image/") or media_type == "image/svg+xml":
        media_type = "application/octet-stream"
    quoted = urllib.parse.quote(os.fsencode(name), safe="")  # exact bytes, non-UTF-8 too
    return Response(
        data,
        media_type=media_type,
        headers={
            "Content-Disposition": f"inline; filename*=UTF-8''{quoted}",
            "X-Content-Type-Options": "nosniff",
            "Content-Security-Policy": "sandbox; default-src 'none'",
            "Cache-Control": "max-age=300",
        },
    )


def video_response(service: SearchService, image_id: int, range: str | None) -> Response:
    """Row ``image_id``'s video as ``/video`` serves it: the indexed file while it has the
    row's size and mtime, the ``range`` span with 206 when one is asked for."""
    try:
        found, _ = videos.video_row(service, image_id)
        span = videos.byte_range(range, found.size)
        body = videos.open_span(found, span)
    except videos.NotVideo as err:
        raise HTTPException(404, str(err)) from None
    except ValueError as err:
        raise HTTPException(416, str(err), {"Content-Range": "bytes */*"}) from None
    except files.FileRejected as err:
        if str(err) in (files.PERMISSION_DENIED, files.UNREADABLE):
            raise HTTPException(404, f"video {image_id}: {err}") from None
        raise HTTPException(410, f"image {image_id} has changed since it was indexed") from None
    first, last = span if span is not None else (0, found.size - 1)
    headers = {
        "Accept-Ranges": "bytes",
        "Content-Length": str(last - first + 1),
        "X-Content-Type-Options": "nosniff",
        # The browser shows a video as a document holding a player: media from here only.
        "Content-Security-Policy": "sandbox; default-src 'none'; media-src 'self'",
        "Cache-Control": "max-age=300",
    }
    if span is not None:
        headers["Content-Range"] = f"bytes {first}-{last}/{found.size}"
    return StreamingResponse(
        body, 206 if span else 200, headers, media_type=videos.media_type(found.path)
    )


def is_video_row(service: SearchService, image_id: int) -> bool:
    """Whether row ``image_id`` is a video's frame."""
    try:
        videos.video_row(service, image_id)
    except videos.NotVideo:
        return False
    return True


def frame_thumbnail(service: SearchService, image_id: int, size: int) -> bytes | None:
    """A video frame row's thumbnail (its frame, decoded from the file), or None for a photo;
    FileChanged while the video is not the indexed one."""
    from clipdb.ingest.video import frame_jpeg
    from clipdb.serve.service import thumbnail_size

    try:
        found, seconds = videos.video_row(service, image_id)
    except videos.NotVideo:
        return None
    try:
        with service.decode_slots.held():
            return frame_jpeg(found, seconds, thumbnail_size(size))
    except files.FileRejected as err:
        if str(err) in (files.PERMISSION_DENIED, files.UNREADABLE):
            raise LookupError(f"image {image_id} is indexed but its file is gone") from None
        raise FileChanged(f"image {image_id} has changed since it was indexed") from None
    except Exception as err:  # noqa: BLE001 - a decoder error on this video: not found
        raise LookupError(f"image {image_id} cannot be read: {err}") from None
