"""Serving an indexed video: its frame as a thumbnail, and the file itself with HTTP range
requests (what a browser's player needs to seek), under ``/file``'s rule: only a file that is
indexed, opened by the row's path, and only while it has the row's size and mtime (a video is
not hashed again per request: a range of a 4 GB file must not cost reading 4 GB).
"""

from __future__ import annotations

import mimetypes
import os
import re
from collections.abc import Iterator
from typing import Any

from clipdb import files
from clipdb.db import queries as db_queries

CHUNK = 1 << 20
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


class NotVideo(LookupError):
    """The row is not a video's frame (or there is no such row)."""


def video_row(service: Any, image_id: int) -> tuple[files.FileStat, float]:
    """The row's video as the scan saw it (path, size, mtime) and the frame's time."""
    with service.connection() as conn:
        row = db_queries.image_file(conn, image_id)
        seconds = db_queries.frame_time_of(conn, image_id)
    if row is None or seconds is None:
        raise NotVideo(f"no indexed video frame with id {image_id}")
    path, size, mtime_ns, _ = row
    return files.FileStat(path, size, mtime_ns, link=True), seconds


def byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """(first, last) byte of a ``Range: bytes=a-b`` header; None for the whole file; raises
    ValueError for a range that cannot be satisfied (HTTP 416)."""
    if not header:
        return None
    match = _RANGE.match(header.strip())
    if match is None or (not match.group(1) and not match.group(2)):
        raise ValueError("only one byte range is served")
    if not match.group(1):  # the last N bytes
        first, last = max(0, size - int(match.group(2))), size - 1
    else:
        first = int(match.group(1))
        last = min(int(match.group(2)), size - 1) if match.group(2) else size - 1
    if first >= size or first > last:
        raise ValueError("range not satisfiable")
    return first, last


def open_span(found: files.FileStat, span: tuple[int, int] | None) -> Iterator[bytes]:
    """The bytes of ``span`` (all without one), read from the still-identical file; the file
    is opened before the first chunk is asked for, so a changed file fails the request."""
    fd, _ = files.open_regular(found.path, max_bytes=files.MAX_VIDEO_BYTES, **found.open_args())
    first, last = span if span is not None else (0, found.size - 1)

    def chunks() -> Iterator[bytes]:
        try:
            os.lseek(fd, first, os.SEEK_SET)
            left = last - first + 1
            while left > 0:
                chunk = os.read(fd, min(CHUNK, left))
                if not chunk:
                    return
                left -= len(chunk)
                yield chunk
        finally:
            os.close(fd)

    return chunks()


def media_type(path: str) -> str:
    guessed = mimetypes.guess_type(path)[0] or ""
    if files.is_video_name(path) and guessed.startswith("video/"):
        return guessed
    return {".mkv": "video/x-matroska", ".webm": "video/webm"}.get(
        os.path.splitext(path)[1].lower(), "application/octet-stream"
    )
