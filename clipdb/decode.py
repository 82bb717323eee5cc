"""Bytes -> upright RGB -> model-ready pixels, and thumbnails, robust against bad files.

Everything here runs without a model; the resize and crop to the model's input are
:mod:`clipdb.pixels`. Bad files raise :class:`ImageError`, whose text is the skip reason.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from clipdb import files, formats, raw
from clipdb.exif import PhotoMetadata
from clipdb.files import CORRUPT, EMPTY, NOT_IMAGE, TOO_LARGE
from clipdb.phash import phash
from clipdb.pixels import PixelPipeline

ORIENTATION_TAG = 0x0112
SWAPPED_ORIENTATIONS = (5, 6, 7, 8)  # EXIF orientations that turn the image by 90 degrees
# JPEG draft decoding keeps at least this many times the model's input size on the short side,
# so the resize that follows still averages over several source pixels (see INGEST.md).
DRAFT_MARGIN = 2
# The only decoders Pillow may use: those of files.IMAGE_EXTENSIONS. Pillow otherwise guesses
# from the content, so EPS bytes in a .jpg would go to Ghostscript and fuzzed DDS/SPIDER bytes
# to decoders that raise NotImplementedError/AttributeError. (+ HEIF/AVIF: clipdb.formats)
PILLOW_FORMATS = formats.BASE_FORMATS


class ImageError(Exception):
    """A file that cannot be used as an image; ``str(err)`` is the skip reason."""


def to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode to RGB: alpha over white, 16-bit scaled down rather than clipped."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode.startswith("I") or mode == "F":
        values = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if values.max(initial=0) > 255 else 255.0
        gray = np.clip(values * (255.0 / peak) + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(gray, "L").convert("RGB")
    if mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


@contextmanager
def opened_image(
    data: bytes, max_pixels: int | None, *, name: str | None = None, draft_size: int | None = None
) -> Iterator[Image.Image]:
    """``data`` opened by one of the allowed decoders, its pixel count checked from the header
    before anything is decoded; whatever fails inside (any decoder error) is an ImageError.
    ``name`` and ``draft_size``: see :func:`clipdb.raw.open_any`."""
    if not data:
        raise ImageError(EMPTY)
    limit = max_pixels or Image.MAX_IMAGE_PIXELS
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # DecompressionBombWarning: we check the limit
            opened = raw.open_any(data, limit, name, draft_size)
            width, height = opened.size
            if limit and width * height > limit:
                raise ImageError(TOO_LARGE)
            yield opened
    except ImageError:
        raise
    except raw.Refused as err:  # too many pixels, or a plugin this install lacks
        raise ImageError(str(err)) from None
    except Image.DecompressionBombError:
        raise ImageError(TOO_LARGE) from None
    except UnidentifiedImageError:
        raise ImageError(NOT_IMAGE) from None
    except MemoryError:
        raise ImageError(TOO_LARGE) from None
    except Exception:  # noqa: BLE001 - any decoder failure is one bad file, never an abort
        raise ImageError(CORRUPT) from None


def open_image(
    source: str | bytes,
    *,
    max_pixels: int | None = None,
    draft_size: int | None = None,
    name: str | None = None,
) -> tuple[Image.Image, int, int]:
    """Decode a file (path or its bytes; ``name``: the bytes' file name) to upright RGB.

    Returns the image and the full-resolution width and height after EXIF orientation. With
    ``draft_size``, JPEGs are decoded at the smallest 1/2, 1/4 or 1/8 scale whose short side
    is still at least ``draft_size`` pixels. Raises :class:`ImageError` with the skip reason.
    """
    data = source if isinstance(source, bytes) else read_file(source)
    name = name if isinstance(source, bytes) else source
    with opened_image(data, max_pixels, name=name, draft_size=draft_size) as opened:
        width, height = opened.info.get("full_size", opened.size)  # a RAW's sensor size
        orientation = opened.getexif().get(ORIENTATION_TAG, 1)
        if draft_size and opened.format == "JPEG":
            opened.draft(opened.mode, (draft_size, draft_size))
        opened.load()  # first frame of animations
        rgb = to_rgb(ImageOps.exif_transpose(opened) or opened)
    if orientation in SWAPPED_ORIENTATIONS:
        width, height = height, width
    return rgb, width, height


def read_file(path: str, found: files.FileStat | None = None) -> bytes:
    """The bytes of ``path``; with ``found`` (its scan), only if it is still that file."""
    try:
        args = found.open_args() if found is not None else {}
        return files.read_regular(path, max_bytes=files.MAX_IMAGE_BYTES, **args)
    except files.FileRejected as err:
        raise ImageError(str(err)) from None


@dataclass(frozen=True)
class Decoded:
    """What a worker sends back for one file: pixels and identity, or a skip reason."""

    path: str
    sha256: bytes | None = None
    width: int = 0
    height: int = 0
    pixels: np.ndarray | None = None
    reason: str | None = None
    metadata: PhotoMetadata | None = None  # EXIF date/camera/place (clipdb.exif)
    phash: int | None = None  # clipdb.phash of the decoded image
    # Device decoding (clipdb.device_decode): the JPEG's bytes instead of pixels, and its
    # EXIF orientation, for the encoding process to decode, turn and resize in batches.
    jpeg: bytes | None = None
    orientation: int = 1
    frame_time: float | None = None  # a video's frame: seconds in (clipdb.ingest.video)
    first_frame: bool = False  # the first of its video's frames in this pass


def decode_task(
    path: str,
    pipeline: PixelPipeline,
    max_pixels: int | None,
    draft: bool = True,
    found: files.FileStat | None = None,
) -> Decoded:
    """Read once, hash, decode, preprocess (a worker's whole job for one file).

    ``found``: the scan of ``path``; a file swapped since (FIFO, device, link, other size or
    mtime) is skipped rather than read, so the stored identity is that of the bytes encoded.
    """
    try:
        data = read_file(path, found)
    except ImageError as err:
        return Decoded(path, reason=str(err))
    return decode_bytes(path, data, pipeline, max_pixels, draft)


def decode_bytes(
    path: str, data: bytes, pipeline: PixelPipeline, max_pixels: int | None, draft: bool = True
) -> Decoded:
    """:func:`decode_task` of bytes already read from ``path``."""
    try:
        draft_size = pipeline.input_size * DRAFT_MARGIN if draft else None
        image, width, height = open_image(
            data, max_pixels=max_pixels, draft_size=draft_size, name=path
        )
        pixels = pipeline.to_pixels(image)
        perceptual = phash(image)  # from the image already decoded: a 32x32 resize more
    except ImageError as err:
        return Decoded(path, reason=str(err))
    except MemoryError:
        return Decoded(path, reason=TOO_LARGE)
    except Exception:  # noqa: BLE001 - e.g. a resize failing on odd pixels: skip this file only
        return Decoded(path, reason=CORRUPT)
    # The header is parsed again (cheap, no pixels): open_image's signature stays as it is.
    metadata = raw.file_metadata(data, path)
    digest = hashlib.sha256(data).digest()
    return Decoded(path, digest, width, height, pixels, metadata=metadata, phash=perceptual)


# The draft size a hash-only backfill decodes JPEGs at: that of a 224-pixel model's ingest, so
# a backfilled hash equals the one ingest computes (and the box filter makes any draft close).
PHASH_DRAFT_SIZE = 224 * DRAFT_MARGIN


def phash_task(
    path: str, max_pixels: int | None, found: files.FileStat | None = None
) -> tuple[str, int | None, str | None]:
    """(path, pHash, None) or (path, None, skip reason): decode only, no model pixels; for
    rows indexed before clipdb stored hashes."""
    try:
        image, _, _ = open_image(
            read_file(path, found), max_pixels=max_pixels, draft_size=PHASH_DRAFT_SIZE, name=path
        )
        return path, phash(image), None
    except ImageError as err:
        return path, None, str(err)
    except MemoryError:
        return path, None, TOO_LARGE
    except Exception:  # noqa: BLE001 - one odd file must not stop the backfill
        return path, None, CORRUPT


def unusable(path: str, found: files.FileStat | None, max_pixels: int | None) -> str | None:
    """Why ``path`` cannot be used (a skip reason), or None: a full decode without a model,
    so files that are bad anyway never make ingest load one."""
    try:
        open_image(read_file(path, found), max_pixels=max_pixels, name=path)
    except ImageError as err:
        return str(err)
    except MemoryError:
        return TOO_LARGE
    return None


def worker_context() -> Any:
    """The multiprocessing context of every decode pool: forkserver (no fork of a process
    holding a model, threads and connections), preloading this module and torch, which
    resizes in the workers (FAST_RESAMPLE): imported once in the server, not per worker.
    The forkserver is one per process, so every pool must ask for the same preload."""
    import multiprocessing

    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["clipdb.decode", "torch"])
    return context


def worker_init() -> None:
    """Workers leave Ctrl-C to the parent, which shuts them down, and resize on one thread
    each: the pool is the parallelism, and the encoder needs the other cores."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:
        pass
