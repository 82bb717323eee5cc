"""Which decoder may open a file: the allow-list of Pillow formats, its optional plugins, RAW.

The hardened decoder (:mod:`clipdb.decode`) lets Pillow try only the formats named here; Pillow
otherwise guesses from the content and reaches decoders nobody asked for (EPS to Ghostscript).
Phone formats come from plugins that may be absent on an install: HEIC/HEIF from
``pillow-heif``, AVIF from Pillow itself where it was built with libavif (else ``pillow-heif``
where its libheif decodes AV1). A file in one of these formats whose plugin is missing is a
skip whose reason names the package (:func:`missing_plugin`), never "not an image".

RAW camera files go to LibRaw (``rawpy``, :mod:`clipdb.raw`), chosen by name or by a magic
number only LibRaw's formats have: a RAW is TIFF-shaped, and Pillow's TIFF decoder would index
its 160-pixel thumbnail instead.
"""

from __future__ import annotations

import os
import struct
from functools import cache

from PIL import features

# Pillow's own decoders for files.IMAGE_EXTENSIONS (JPEG opens MPO too).
BASE_FORMATS = ("JPEG", "PNG", "GIF", "BMP", "WEBP", "TIFF")
HEIF_EXTENSIONS = frozenset({".heic", ".heif", ".hif"})
AVIF_EXTENSIONS = frozenset({".avif"})
RAW_EXTENSIONS = frozenset({".dng", ".cr2", ".cr3", ".nef", ".arw", ".raf", ".orf", ".rw2"})

HEIF_PACKAGE = "pillow-heif"
AVIF_PACKAGE = "pillow-heif (or a Pillow built with AVIF)"
RAW_PACKAGE = "rawpy"

# ISO-BMFF brands (the 'ftyp' box at offset 4) of still images.
_HEIF_BRANDS = frozenset({b"heic", b"heix", b"heim", b"heis", b"mif1", b"msf1", b"hevc", b"hevx"})
_AVIF_BRANDS = frozenset({b"avif", b"avis"})
DNG_VERSION_TAG = 50706  # in IFD0 of every DNG


@cache
def _heif_registered() -> bool:
    try:
        import pillow_heif
    except ImportError:
        return False
    pillow_heif.register_heif_opener()
    return True


@cache
def _pillow_avif() -> bool:
    try:
        return bool(features.check("avif"))
    except (ValueError, ImportError):  # an older Pillow does not know the feature at all
        return False


@cache
def _heif_avif() -> bool:
    """pillow-heif's libheif decodes AV1 (only where Pillow has no AVIF of its own)."""
    if not _heif_registered():
        return False
    import pillow_heif

    return bool(pillow_heif.libheif_info().get("AVIF"))


def pillow_formats() -> tuple[str, ...]:
    """The Pillow formats :func:`clipdb.decode.opened_image` allows on this install."""
    extra: list[str] = []
    if _pillow_avif():
        extra.append("AVIF")
    if _heif_registered():
        extra.append("HEIF")
    return BASE_FORMATS + tuple(extra)


@cache
def raw_available() -> bool:
    try:
        import rawpy  # noqa: F401
    except ImportError:
        return False
    return True


def kind_of(data: bytes) -> str | None:
    """'heif', 'avif' or 'raw' when the bytes say so (ISO-BMFF brand, RAW magic), else None."""
    head = data[:64]
    if head[4:8] == b"ftyp":
        brands = {head[8:12]} | {head[i : i + 4] for i in range(16, min(len(head), 32), 4)}
        if head[8:12] == b"crx ":
            return "raw"  # Canon CR3
        if brands & _AVIF_BRANDS:
            return "avif"
        if brands & _HEIF_BRANDS:
            return "heif"
        return None
    if head.startswith(b"FUJIFILMCCD-RAW"):
        return "raw"
    if head[:4] in (b"IIRO", b"IIRS", b"MMOR", b"IIU\x00"):  # Olympus ORF, Panasonic RW2
        return "raw"
    if head[:4] == b"II*\x00" and head[8:11] == b"CR\x02":  # Canon CR2
        return "raw"
    if head[:4] in (b"II*\x00", b"MM\x00*") and DNG_VERSION_TAG in _ifd0_tags(data):
        return "raw"
    return None


def is_raw(data: bytes, name: str | None = None) -> bool:
    """A RAW camera file: by its extension when the name is known, else by its content."""
    if name is not None and os.path.splitext(name)[1].lower() in RAW_EXTENSIONS:
        return True
    return kind_of(data) == "raw"


def missing_plugin(data: bytes, name: str | None = None) -> str | None:
    """The skip reason for a recognised format this install cannot decode, or None."""
    kind = "raw" if is_raw(data, name) else kind_of(data)
    if kind is None and name is not None:
        ext = os.path.splitext(name)[1].lower()
        kind = "heif" if ext in HEIF_EXTENSIONS else "avif" if ext in AVIF_EXTENSIONS else None
    if kind == "heif" and not _heif_registered():
        return f"HEIC/HEIF needs the {HEIF_PACKAGE} package"
    if kind == "avif" and not (_pillow_avif() or _heif_avif()):
        return f"AVIF needs {AVIF_PACKAGE}"
    if kind == "raw" and not raw_available():
        return f"RAW needs the {RAW_PACKAGE} package"
    return None


def _ifd0_tags(data: bytes) -> set[int]:
    """The tag numbers of a TIFF's first directory (no values read); empty if malformed."""
    try:
        order = "<" if data[:2] == b"II" else ">"
        (offset,) = struct.unpack_from(order + "I", data, 4)
        (count,) = struct.unpack_from(order + "H", data, offset)
        if count > 4096:
            return set()
        return {struct.unpack_from(order + "H", data, offset + 2 + 12 * i)[0] for i in range(count)}
    except struct.error:
        return set()
