"""RAW camera files (DNG, CR2, CR3, NEF, ARW, RAF, ORF, RW2) through LibRaw (``rawpy``).

Every RAW carries a JPEG preview the camera rendered; where it is at least the model's input
size it is what clipdb decodes (a JPEG decode, draft-scaled, instead of a demosaic: tens of
times faster). Otherwise LibRaw demosaics at half size (a quarter of the pixels, still far more
than a model sees). The camera's orientation (LibRaw's ``flip``) is applied either way, so the
image comes back upright with no EXIF orientation left to apply. Errors propagate: the caller
(:func:`clipdb.decode.opened_image`) turns them into a skip reason.
"""

from __future__ import annotations

import io
import os
from typing import Any

from PIL import Image, UnidentifiedImageError

from clipdb import exif, formats
from clipdb.files import CORRUPT, TOO_LARGE

# Without a caller's size (thumbnails, uploads): the smallest preview used instead of a demosaic.
PREVIEW_MIN_SIDE = 224
DRAFT_MARGIN = 2  # as clipdb.decode: a draft size is this many times the model's input size
# LibRaw's flip -> the EXIF orientation that undoes it.
FLIP_ORIENTATION = {3: 3, 5: 8, 6: 6}
TRANSPOSE = {
    3: Image.Transpose.ROTATE_180,
    6: Image.Transpose.ROTATE_270,
    8: Image.Transpose.ROTATE_90,
}


class Refused(Exception):
    """A file refused before decoding; ``str(err)`` is the skip reason."""


class RawTooLarge(Refused):
    """More pixels than allowed, known from the header before anything is decoded."""

    def __str__(self) -> str:
        return TOO_LARGE


def open_any(
    data: bytes, max_pixels: int | None, name: str | None = None, draft_size: int | None = None
) -> Image.Image:
    """``data`` opened by LibRaw (a RAW by ``name``'s extension or its content) or by one of
    the Pillow formats allowed on this install; ``draft_size``: see :func:`open_raw`. Raises
    :class:`Refused` for a known format whose plugin is missing (the reason names it)."""
    missing = formats.missing_plugin(data, name)
    if missing is not None:
        raise Refused(missing)
    if formats.is_raw(data, name):
        return open_raw(data, max_pixels, draft_size)
    try:
        return Image.open(io.BytesIO(data), formats=formats.pillow_formats())
    except UnidentifiedImageError:
        if formats.kind_of(data) is not None:  # a HEIF/AVIF header its plugin refuses
            raise Refused(CORRUPT) from None
        raise


def open_raw(data: bytes, max_pixels: int | None, draft_size: int | None = None) -> Image.Image:
    """The upright RGB picture of a RAW file: its embedded preview when that is big enough
    (at least ``draft_size / DRAFT_MARGIN`` on the short side), else a half-size demosaic.

    ``image.info["full_size"]`` holds the sensor's upright (width, height). Raises
    :class:`RawTooLarge` or whatever LibRaw raises on a bad file.
    """
    import rawpy

    with rawpy.imread(io.BytesIO(data)) as raw:
        sizes = raw.sizes
        orientation = FLIP_ORIENTATION.get(sizes.flip, 1)
        width, height = sizes.width, sizes.height
        if orientation in (6, 8):
            width, height = height, width
        if max_pixels and width * height > max_pixels:
            raise RawTooLarge
        min_side = draft_size // DRAFT_MARGIN if draft_size else PREVIEW_MIN_SIDE
        image = _preview(raw, min_side, draft_size, max_pixels, orientation)
        if image is None:
            try:
                rgb = raw.postprocess(half_size=True, use_camera_wb=True, output_bps=8)
            except rawpy.LibRawError:
                # Sensor data this LibRaw cannot decode (newer compressions, e.g. a Nikon Z's
                # high-efficiency RAW) still carries the camera's rendering: a smaller
                # preview is a better index entry than a skip.
                # (LibRaw refuses any further call on the failed handle: a fresh one.)
                with rawpy.imread(io.BytesIO(data)) as again:
                    image = _preview(again, 1, draft_size, max_pixels, orientation)
                if image is None:
                    raise
            else:
                image = Image.fromarray(rgb, "RGB")  # LibRaw applied the flip
    image.info["full_size"] = (width, height)
    return image


def _preview(
    raw: Any, min_side: int, draft_size: int | None, max_pixels: int | None, orientation: int
) -> Image.Image | None:
    """The camera's JPEG (or bitmap) preview, upright, if its short side is ``min_side`` or
    more; None when there is none that size (or LibRaw cannot extract it)."""
    import rawpy

    try:
        thumb = raw.extract_thumb()
    except rawpy.LibRawError:
        return None
    if thumb.format == rawpy.ThumbFormat.JPEG:
        # Only the JPEG decoder: the preview is as untrusted as the file around it.
        preview: Image.Image = Image.open(io.BytesIO(thumb.data), formats=("JPEG",))
        if min(preview.size) < min_side:
            return None
        if max_pixels and preview.size[0] * preview.size[1] > max_pixels:
            raise RawTooLarge
        if draft_size:
            preview.draft("RGB", (draft_size, draft_size))
        preview = preview.convert("RGB")
    elif thumb.format == rawpy.ThumbFormat.BITMAP:
        preview = Image.fromarray(thumb.data, "RGB")
        if min(preview.size) < min_side:
            return None
    else:
        return None
    if orientation in TRANSPOSE:
        preview = preview.transpose(TRANSPOSE[orientation])
    # LibRaw writes the flip into the preview's EXIF too: applied here, so no caller turns the
    # image a second time.
    preview.info.pop("exif", None)
    return preview


def file_metadata(data: bytes, name: str | None = None) -> exif.PhotoMetadata:
    """EXIF of any file clipdb decodes: RAW files by their TIFF directories (or, for those
    not shaped like a TIFF, by their preview's EXIF), the others as Pillow reads them."""
    if not formats.is_raw(data, name):
        return exif.read_metadata(data, formats.pillow_formats())
    found = exif.read_tiff_metadata(_as_tiff(data))
    if found.empty and formats.raw_available():
        found = _preview_metadata(data)
    return found


def _as_tiff(data: bytes) -> bytes:
    """ORF and RW2 are TIFFs with their own magic number: the standard one, so Pillow's EXIF
    reader walks their directories (other bytes unchanged)."""
    head = data[:4]
    if head in (b"IIRO", b"IIRS", b"IIU\x00"):
        return b"II*\x00" + data[4:]
    if head == b"MMOR":
        return b"MM\x00*" + data[4:]
    return data


def _preview_metadata(data: bytes) -> exif.PhotoMetadata:
    import rawpy

    try:
        with rawpy.imread(io.BytesIO(data)) as raw:
            thumb = raw.extract_thumb()
    except Exception:  # noqa: BLE001 - metadata never fails a file
        return exif.NO_METADATA
    if thumb.format != rawpy.ThumbFormat.JPEG:
        return exif.NO_METADATA
    return exif.read_metadata(bytes(thumb.data), ("JPEG",))


def is_raw_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in formats.RAW_EXTENSIONS
