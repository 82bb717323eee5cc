"""The words of an image besides what OCR reads: its file and folder names, and the keywords,
title and description that EXIF, IPTC and XMP carry."""

from __future__ import annotations

import os
import re
from typing import Any

NAME_FOLDERS = 3  # folders above the file whose names count (the rest is the same for many)
_SEPARATORS = re.compile(r"[\s_.\-+,;()\[\]]+")
_XMP_FIELD = re.compile(
    rb"<(dc:subject|dc:title|dc:description|photoshop:Headline|lr:hierarchicalSubject)\b[^>]*>"
    rb"(.*?)</\1>",
    re.S,
)
_TAG = re.compile(rb"<[^>]+>")
# EXIF: ImageDescription, and Windows' XPTitle, XPComment, XPKeywords, XPSubject (UTF-16).
_EXIF_TEXT = (0x010E,)
_EXIF_XP = (0x9C9B, 0x9C9C, 0x9C9E, 0x9C9F)
# IPTC-IIM: object name (title), keywords, headline, caption.
_IPTC = ((2, 5), (2, 25), (2, 105), (2, 120))


def name_words(path: str) -> str:
    """The file name (whole, and split at separators) and its nearest folders' names."""
    parts = os.path.normpath(path).split(os.sep)
    name = parts[-1]
    folders = [part for part in parts[-1 - NAME_FOLDERS : -1] if part]
    stem = os.path.splitext(name)[0]
    words = [name, *_SEPARATORS.split(stem), *folders]
    return " ".join(dict.fromkeys(word for word in words if word))


def _decoded(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, (list, tuple)):
        return " ".join(_decoded(item) for item in value)
    return str(value)


def metadata_words(image: Any) -> str:
    """Keywords, title and description from the EXIF, IPTC and XMP of an opened PIL image
    (its pixels need not be loaded); '' when it has none."""
    found: list[str] = []
    try:
        exif = image.getexif()
        found += [_decoded(exif[tag]) for tag in _EXIF_TEXT if tag in exif]
        for tag in _EXIF_XP:
            if tag in exif and isinstance(exif[tag], (bytes, tuple)):
                raw = bytes(exif[tag])
                found.append(raw.decode("utf-16-le", "replace").rstrip("\0"))
    except Exception:  # noqa: BLE001 - broken metadata: the name and the pixels still count
        pass
    try:
        from PIL import IptcImagePlugin

        iptc = IptcImagePlugin.getiptcinfo(image) or {}
        found += [_decoded(iptc[field]) for field in _IPTC if field in iptc]
    except Exception:  # noqa: BLE001 - as above
        pass
    xmp = image.info.get("xmp") or image.info.get("XML:com.adobe.xmp")
    if isinstance(xmp, str):
        xmp = xmp.encode()
    if isinstance(xmp, bytes):
        for _, body in _XMP_FIELD.findall(xmp):
            found.append(_TAG.sub(b" ", body).decode("utf-8", "replace"))
    text = " ".join(" ".join(part.split()) for part in found)
    return " ".join(dict.fromkeys(text.split(" "))) if text else ""
