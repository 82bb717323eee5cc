"""Photo metadata from EXIF: when (DateTimeOriginal), what camera (Make/Model, LensModel), where.

Every field is parsed on its own and never raises: a broken date, a GPS rational with a zero
denominator, absurd coordinates, a huge maker note or bytes that are not UTF-8 drop only that
field; the image is indexed anyway. Only the header is read (``Image.open`` + ``getexif``),
never the pixels, so the metadata-only backfill of already indexed rows is cheap.

Dates: ``DateTimeOriginal`` (``DateTimeDigitized`` when absent) with ``OffsetTimeOriginal``
when the camera wrote one. Without an offset the camera's wall-clock time is kept as if it were
UTC and ``taken_at_naive`` is set: its clock had no time zone, and guessing the machine's would
be wrong as soon as the photo came from another time zone. A file without an EXIF date has no
``taken_at``; there is no fallback to the file's mtime (copies and downloads reset it).
"""

from __future__ import annotations

import io
import math
import re
import warnings
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from PIL import Image

# Tags (numbers, so a Pillow without a name for one still works).
MAKE, MODEL = 0x010F, 0x0110
DATETIME_ORIGINAL, DATETIME_DIGITIZED = 0x9003, 0x9004
OFFSET_TIME_ORIGINAL, OFFSET_TIME_DIGITIZED = 0x9011, 0x9012
LENS_MAKE, LENS_MODEL = 0xA433, 0xA434
GPS_LAT_REF, GPS_LAT, GPS_LON_REF, GPS_LON = 1, 2, 3, 4

MAX_TEXT = 200  # camera and lens names longer than this are not names
EARLIEST_YEAR = 1826  # the first photograph; an earlier date is a broken clock
_DATE = re.compile(r"^\s*(\d{4})[:\-](\d{2})[:\-](\d{2})[ T](\d{2}):(\d{2}):(\d{2})")
_OFFSET = re.compile(r"^\s*([+-])(\d{2}):?(\d{2})\s*$")

# Bump when parsing changes in a way worth re-reading every file for (the backfill re-reads
# rows whose metadata_version is lower).
METADATA_VERSION = 1


@dataclass(frozen=True)
class PhotoMetadata:
    """What EXIF said; None for each field it did not say (or said unreadably)."""

    taken_at: datetime | None = None  # aware; UTC wall clock when taken_at_naive
    taken_at_naive: bool = False
    camera: str | None = None
    lens: str | None = None
    lat: float | None = None
    lon: float | None = None

    @property
    def empty(self) -> bool:
        return (
            self.taken_at is None
            and self.camera is None
            and self.lens is None
            and (self.lat is None)
        )


NO_METADATA = PhotoMetadata()


def read_metadata(
    source: str | bytes | Image.Image, formats: tuple[str, ...] | None = None
) -> PhotoMetadata:
    """The metadata of an image file (path, bytes, or an opened image); never raises.

    ``formats``: the decoders Pillow may try (clipdb.decode.PILLOW_FORMATS, its allow-list).
    """
    from PIL import Image  # here: a search imports this module for METADATA_VERSION alone

    try:
        with warnings.catch_warnings():  # "Corrupt EXIF data": the fields say so by being None
            warnings.simplefilter("ignore")
            if isinstance(source, Image.Image):
                return _from_exif(source.getexif())
            stream: Any = io.BytesIO(source) if isinstance(source, bytes) else source
            with Image.open(stream, formats=formats) as image:
                return _from_exif(image.getexif())
    except Exception:  # noqa: BLE001 - unreadable header: no metadata, the file is judged elsewhere
        return NO_METADATA


def read_tiff_metadata(data: bytes) -> PhotoMetadata:
    """The metadata of a TIFF-shaped file (most RAW formats) from its directories alone: no
    decoder is asked to open it, so a sensor layout Pillow cannot decode costs nothing."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tiff = Image.Exif()
            tiff.load(data)
            return _from_exif(tiff)
    except Exception:  # noqa: BLE001 - unreadable directories: no metadata
        return NO_METADATA


def _from_exif(exif: Image.Exif) -> PhotoMetadata:
    from PIL import ExifTags

    sub = _ifd(exif, ExifTags.IFD.Exif)
    gps = _ifd(exif, ExifTags.IFD.GPSInfo)
    taken_at, naive = _safe(_taken_at, sub, exif) or (None, False)
    lat_lon = _safe(_gps, gps)
    return PhotoMetadata(
        taken_at=taken_at,
        taken_at_naive=naive,
        camera=_safe(_camera, exif),
        lens=_safe(_lens, sub),
        lat=lat_lon[0] if lat_lon else None,
        lon=lat_lon[1] if lat_lon else None,
    )


def _safe(parse: Any, *args: Any) -> Any:
    """One field: whatever goes wrong in it costs only that field."""
    try:
        return parse(*args)
    except Exception:  # noqa: BLE001 - by design: a broken field is an absent field
        return None


def _ifd(exif: Image.Exif, which: int) -> dict[int, Any]:
    try:
        return dict(exif.get_ifd(which))
    except Exception:  # noqa: BLE001 - a broken sub-IFD pointer
        return {}


def _text(value: Any) -> str | None:
    """A short printable string, or None (bytes that are not UTF-8 are read as Latin-1)."""
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError:
            value = value.decode("latin-1")
    if not isinstance(value, str):
        return None
    # A NUL ends an EXIF string: what follows is padding or leftovers ("ION230\0F").
    text = "".join(ch for ch in value.split("\x00", 1)[0] if ch.isprintable()).strip()
    text = " ".join(text.split())
    if not text or len(text) > MAX_TEXT:
        return None
    return text


def _taken_at(sub: dict[int, Any], top: dict[int, Any]) -> tuple[datetime, bool] | None:
    for date_tag, offset_tag in (
        (DATETIME_ORIGINAL, OFFSET_TIME_ORIGINAL),
        (DATETIME_DIGITIZED, OFFSET_TIME_DIGITIZED),
    ):
        when = _date(sub.get(date_tag))
        if when is None:
            continue
        offset = _offset(sub.get(offset_tag))
        if offset is None:
            return when.replace(tzinfo=timezone.utc), True
        return when.replace(tzinfo=offset), False
    return None


def _date(value: Any) -> datetime | None:
    text = _text(value)
    match = _DATE.match(text) if text else None
    if match is None:
        return None
    try:
        year, month, day, hour, minute, second = (int(part) for part in match.groups())
        when = datetime(year, month, day, hour, minute, second)  # noqa: DTZ001 - naive by nature
    except ValueError:  # 0000:00:00, month 13, hour 25 ...
        return None
    if when.year < EARLIEST_YEAR or when.year > 2200:
        return None
    return when


def _offset(value: Any) -> timezone | None:
    text = _text(value)
    match = _OFFSET.match(text) if text else None
    if match is None:
        return None
    sign, hours, minutes = match.groups()
    delta = timedelta(hours=int(hours), minutes=int(minutes))
    if delta > timedelta(hours=14) or int(minutes) >= 60:
        return None
    return timezone(-delta if sign == "-" else delta)


def _camera(top: dict[int, Any]) -> str | None:
    make, model = _text(top.get(MAKE)), _text(top.get(MODEL))
    if make and model and model.lower().startswith(make.split()[0].lower()):
        return model  # "Canon" + "Canon EOS R5": the model already names the maker
    joined = " ".join(part for part in (make, model) if part)
    return joined[:MAX_TEXT] or None


def _lens(sub: dict[int, Any]) -> str | None:
    return _text(sub.get(LENS_MODEL))


def _rational(value: Any) -> float:
    """An EXIF rational (IFDRational or a (num, den) pair) as a finite float; raises if not."""
    if isinstance(value, tuple) and len(value) == 2:
        num, den = value
        result = float(num) / float(den)  # ZeroDivisionError: the field is dropped
    else:
        result = float(value)  # IFDRational with den 0 gives nan, refused below
    if not math.isfinite(result):
        raise ValueError("not finite")
    return result


def _degrees(value: Any, ref: Any, positive: str, negative: str, limit: float) -> float:
    parts = list(value)
    if not 1 <= len(parts) <= 3:
        raise ValueError("not degrees, minutes, seconds")
    numbers = [_rational(part) for part in parts] + [0.0, 0.0]
    degrees, minutes, seconds = numbers[:3]
    if degrees < 0 or not 0 <= minutes < 60 or not 0 <= seconds < 60:
        raise ValueError("out of range")
    result = degrees + minutes / 60 + seconds / 3600
    side = (_text(ref) or positive).upper()[:1]
    if side not in (positive, negative):
        raise ValueError("unknown reference")
    if result > limit:
        raise ValueError("absurd coordinate")
    return -result if side == negative else result


def _gps(gps: dict[int, Any]) -> tuple[float, float] | None:
    if GPS_LAT not in gps or GPS_LON not in gps:
        return None
    lat = _degrees(gps[GPS_LAT], gps.get(GPS_LAT_REF), "N", "S", 90.0)
    lon = _degrees(gps[GPS_LON], gps.get(GPS_LON_REF), "E", "W", 180.0)
    if lat == 0.0 and lon == 0.0:
        return None  # "Null Island": a GPS without a fix writes zeros
    return round(lat, 7), round(lon, 7)
