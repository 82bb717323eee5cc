"""Videos as a few frames: sampled by scene change with a floor and a cap, decoded by PyAV.

Which frames: keyframes are decoded first (the decoder skips every other frame, so a pass over
an hour of video costs a few hundred frame decodes); a keyframe is kept when its picture
differs from the last kept one (a scene change: the mean difference of 32x32 grey thumbnails
above :data:`SCENE_CHANGE`) and at least :data:`CAP_S` has passed, or whenever
:data:`FLOOR_S` has passed without a kept frame. Where keyframes are further apart than the
floor, the frame at each missing time is decoded after a seek. A very long video keeps at most
:data:`MAX_FRAMES` frames (its floor widens to fit), so memory is bounded by that count times
one model-sized frame, never by the video's length or resolution: frames are scaled down as
they leave the decoder and only their model pixels are kept.

Each frame becomes a row with the video's path and ``frame_time`` (seconds). A video that
cannot be opened or decoded is a skip with a reason, as a broken photo is.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import replace
from datetime import datetime, timezone
from typing import Any

import numpy as np
from PIL import Image

from clipdb import decode, files, pixels
from clipdb.exif import PhotoMetadata
from clipdb.phash import phash

FLOOR_S = 10.0  # at least one frame per this many seconds
CAP_S = 1.0  # at most one frame per this many seconds
MAX_FRAMES = 600  # per video: a longer one gets a wider floor
SCENE_CHANGE = 12.0  # mean absolute grey difference (0-255) of 32x32 thumbnails
THUMB = 32

UNDECODABLE = "video cannot be decoded"
NO_FRAMES = "video has no decodable frames"
AV_MISSING = "video needs the av package"
# What a decode task hands back: a photo (or a skip), or a video's frames.
Item = decode.Decoded | tuple[decode.Decoded, ...]
ROTATIONS = {90: Image.Transpose.ROTATE_90, -90: Image.Transpose.ROTATE_270}
ROTATIONS |= {180: Image.Transpose.ROTATE_180, -180: Image.Transpose.ROTATE_180}


def sample_frames(container: Any, short_side: int) -> Iterator[tuple[float, Image.Image]]:
    """(time in seconds, upright RGB picture of at least ``short_side`` on its short side, or
    the frame's size if smaller) for each sampled frame, in time order."""
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    duration = _duration(container, stream)
    floor = max(FLOOR_S, duration / MAX_FRAMES) if duration else FLOOR_S
    stream.codec_context.skip_frame = "NONKEY"
    kept: list[float] = []
    last: np.ndarray | None = None
    for frame in container.decode(stream):
        if len(kept) >= MAX_FRAMES:
            break
        if frame.time is None:
            continue
        since = frame.time - kept[-1] if kept else math.inf
        grey = _grey(frame)
        changed = last is None or float(np.abs(grey - last).mean()) > SCENE_CHANGE
        if since >= floor or (changed and since >= CAP_S):
            kept.append(frame.time)
            last = grey
            yield frame.time, _picture(frame, short_side)
    stream.codec_context.skip_frame = "DEFAULT"
    for target in _gaps(kept, duration, floor):
        found = _frame_at(container, stream, target)
        if found is not None:
            yield found[0], _picture(found[1], short_side)


def _duration(container: Any, stream: Any) -> float:
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return float(container.duration) / 1_000_000  # AV_TIME_BASE
    return 0.0


def _gaps(kept: list[float], duration: float, floor: float) -> list[float]:
    """The times to fill where kept frames (keyframes) are further apart than the floor."""
    bounds = [*kept, duration] if kept else [0.0, duration]
    start = [] if kept else [0.0]
    times = start + [
        earlier + floor * step
        for earlier, later in zip(bounds, bounds[1:], strict=False)
        for step in range(1, int((later - earlier) / floor) + 1)
        if earlier + floor * step < later - CAP_S
    ]
    return times[: max(0, MAX_FRAMES - len(kept))]


def _frame_at(container: Any, stream: Any, target: float) -> tuple[float, Any] | None:
    """The first frame at or after ``target`` seconds: a seek to the keyframe before it, then
    decoding forward (one group of pictures at most)."""
    container.seek(int(target / stream.time_base), stream=stream, backward=True)
    for frame in container.decode(stream):
        if frame.time is not None and frame.time >= target - 1e-3:
            return frame.time, frame
    return None


def _grey(frame: Any) -> np.ndarray:
    small = frame.reformat(width=THUMB, height=THUMB, format="gray")
    return np.asarray(small.to_ndarray(), dtype=np.float32)


def _picture(frame: Any, short_side: int) -> Image.Image:
    """The frame as upright RGB, scaled in the decoder's converter to ``short_side``."""
    width, height = frame.width, frame.height
    scale = min(1.0, short_side / max(1, min(width, height)))
    size = max(1, round(width * scale)), max(1, round(height * scale))
    image: Image.Image = frame.to_image(width=size[0], height=size[1])
    turn = ROTATIONS.get(int(getattr(frame, "rotation", 0) or 0))
    return image.transpose(turn) if turn is not None else image


# --- metadata -------------------------------------------------------------------------------

_ISO6709 = re.compile(r"^\s*([+-]\d+(?:\.\d+)?)([+-]\d+(?:\.\d+)?)")


def container_metadata(tags: dict[str, str]) -> PhotoMetadata:
    """Creation time and place from the container: Apple's creationdate (with its offset)
    or ``creation_time`` (UTC), and the ISO 6709 location (QuickTime ``©xyz``)."""
    taken_at, naive = None, False
    apple = tags.get("com.apple.quicktime.creationdate")
    for text in (apple, tags.get("creation_time")):
        when = _when(text)
        if when is not None:
            taken_at = when
            break
    place = tags.get("com.apple.quicktime.location.ISO6709") or tags.get("location") or ""
    lat = lon = None
    match = _ISO6709.match(place)
    if match:
        lat, lon = float(match.group(1)), float(match.group(2))
        if not (-90 <= lat <= 90 and -180 <= lon <= 180) or (lat == 0 and lon == 0):
            lat = lon = None
    make = tags.get("com.apple.quicktime.make")
    model = tags.get("com.apple.quicktime.model")
    camera = " ".join(part for part in (make, model) if part)[:200] or None
    return PhotoMetadata(taken_at, naive, camera, None, lat, lon)


def _when(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        when = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    if when.year < 1900 or when.year > 2200 or when.timestamp() == 0:
        return None  # an unset QuickTime clock (1904) or epoch
    return when if when.tzinfo is not None else when.replace(tzinfo=timezone.utc)


# --- the decode workers' task ---------------------------------------------------------------


def video_task(
    path: str,
    *,
    pipeline: pixels.PixelPipeline,
    max_pixels: int | None,
    found: files.FileStat | None = None,
) -> Item:
    """A video's sampled frames as decoded items (each with ``frame_time``), or one skip."""
    try:
        import av
    except ImportError:
        return decode.Decoded(path, reason=AV_MISSING)
    try:
        with _opened(path, found) as handle:
            digest = _sha256(handle)
            handle.seek(0)
            with av.open(handle, mode="r") as container:
                return _frames(path, container, digest, pipeline, max_pixels)
    except files.FileRejected as err:
        return decode.Decoded(path, reason=str(err))
    except MemoryError:
        return decode.Decoded(path, reason=files.TOO_LARGE)
    except Exception:  # noqa: BLE001 - any demuxer or decoder error: this video only
        return decode.Decoded(path, reason=UNDECODABLE)


def _frames(
    path: str,
    container: Any,
    digest: bytes,
    pipeline: pixels.PixelPipeline,
    max_pixels: int | None,
) -> Item:
    if not container.streams.video:
        return decode.Decoded(path, reason=NO_FRAMES)
    stream = container.streams.video[0]
    width, height = stream.codec_context.width, stream.codec_context.height
    if max_pixels and width * height > max_pixels:
        return decode.Decoded(path, reason=files.TOO_LARGE)
    metadata = container_metadata(dict(container.metadata))
    out = []
    for time, picture in sample_frames(container, pipeline.input_size * decode.DRAFT_MARGIN):
        turned = (picture.width >= picture.height) != (width >= height)  # rotated for display
        out.append(
            decode.Decoded(
                path,
                digest,
                *((height, width) if turned else (width, height)),
                pixels=pipeline.to_pixels(picture),
                metadata=metadata,
                phash=phash(picture),
                frame_time=round(float(time), 3),
            )
        )
    if not out:
        return decode.Decoded(path, reason=NO_FRAMES)
    out[0] = replace(out[0], first_frame=True)
    return tuple(out)


class _opened:
    """The scanned file opened as ingest opens photos (never blocking, still that file)."""

    def __init__(self, path: str, found: files.FileStat | None) -> None:
        args = found.open_args() if found is not None else {}
        fd, _ = files.open_regular(path, max_bytes=files.MAX_VIDEO_BYTES, **args)
        self.handle = os.fdopen(fd, "rb")

    def __enter__(self) -> Any:
        return self.handle

    def __exit__(self, *exc: object) -> None:
        self.handle.close()


def _sha256(handle: Any) -> bytes:
    digest = hashlib.sha256()
    while chunk := handle.read(1 << 20):
        digest.update(chunk)
    return digest.digest()


def media_task(
    path: str, *, image_task: Any, found: files.FileStat | None = None, **kwargs: Any
) -> Item:
    """The decode pool's task for any file: videos here, photos by ``image_task``."""
    if files.is_video_name(path):
        return video_task(path, found=found, **kwargs)
    result: decode.Decoded = image_task(path, found=found, **kwargs)
    return result


def flat(items: Iterable[Item]) -> Iterator[decode.Decoded]:
    """Pool results as single items: a video's frames one by one."""
    for item in items:
        if isinstance(item, tuple):
            yield from item
        else:
            yield item


def unusable(path: str, found: files.FileStat | None, max_pixels: int | None) -> str | None:
    """:func:`clipdb.decode.unusable` for photos and videos (a video: opened and sampled)."""
    if not files.is_video_name(path):
        return decode.unusable(path, found, max_pixels)
    try:
        import av
    except ImportError:
        return AV_MISSING
    try:
        with _opened(path, found) as handle, av.open(handle, mode="r") as container:
            if not container.streams.video:
                return NO_FRAMES
            frame = next(iter(container.decode(container.streams.video[0])), None)
            return NO_FRAMES if frame is None else None
    except files.FileRejected as err:
        return str(err)
    except Exception:  # noqa: BLE001 - as video_task
        return UNDECODABLE


def frame_jpeg(found: files.FileStat, seconds: float, size: int) -> bytes:
    """A JPEG of the video's frame at ``seconds``, at most ``size`` pixels on its longer side,
    read only while the file is still ``found`` (FileRejected otherwise); ValueError when no
    frame decodes there."""
    import io

    import av

    with _opened(found.path, found) as handle, av.open(handle, mode="r") as container:
        stream = container.streams.video[0]
        hit = _frame_at(container, stream, seconds)
        if hit is None:
            raise ValueError(NO_FRAMES)
        picture = _picture(hit[1], size)
    picture.thumbnail((size, size))
    out = io.BytesIO()
    picture.save(out, "JPEG", quality=85)
    return out.getvalue()
