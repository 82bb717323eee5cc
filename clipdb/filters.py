"""Metadata filters, relative cutoff, ordering and paging of a search: one parser for all.

The CLI (``--after``, ``--before``, ``--camera``, ``--near``, ``--within``, ``--sort``,
``--offset``), the HTTP API (query parameters / form fields of the same names) and ``ClipDB``
keyword arguments all build a :class:`Filters` here, so a value is accepted or refused the
same way everywhere (:class:`clipdb.errors.UsageError`: exit 2, HTTP 422).

Dates: ``YYYY-MM-DD`` or an ISO datetime. A value without a time zone is read as UTC, which is
also how the wall-clock time of a photo without ``OffsetTimeOriginal`` is stored (see
clipdb.exif). ``--after`` is inclusive, ``--before`` exclusive; a bare date as ``--before``
means the start of that day.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from datetime import date, datetime, timezone
from typing import Any

from clipdb.errors import UsageError

SORTS = ("relevance", "date", "-date")
MAX_OFFSET = 100_000


def parse_when(value: str | datetime | date | None, flag: str) -> datetime | None:
    """An ISO date or datetime as an aware datetime (naive: UTC); None stays None."""
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        when = value
    elif isinstance(value, date):
        when = datetime(value.year, value.month, value.day)  # noqa: DTZ001 - made aware below
    else:
        text = str(value).strip()
        try:
            when = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            raise UsageError(
                f"{flag} {value!r}: expected an ISO date or datetime like 2024-05-31 "
                "or 2024-05-31T18:00+02:00"
            ) from None
    return when if when.tzinfo is not None else when.replace(tzinfo=timezone.utc)


@dataclass(frozen=True)
class Near:
    """A circle on the Earth: centre and radius in km."""

    lat: float
    lon: float
    km: float

    def __post_init__(self) -> None:
        values = (self.lat, self.lon, self.km)
        if not all(isinstance(v, int | float) and math.isfinite(v) for v in values):
            raise UsageError("--near: latitude, longitude and km must be finite numbers")
        if not -90 <= self.lat <= 90:
            raise UsageError(f"--near: latitude {self.lat} is not within -90..90")
        if not -180 <= self.lon <= 180:
            raise UsageError(f"--near: longitude {self.lon} is not within -180..180")
        if not 0 < self.km <= 20_100:
            raise UsageError(f"--near: radius {self.km} km must be more than 0 and at most 20100")

    @classmethod
    def parse(cls, value: str) -> Near:
        """``LAT,LON,KM``."""
        try:
            lat, lon, km = (float(part) for part in str(value).split(","))
        except ValueError:
            raise UsageError(f"--near {value!r}: expected LAT,LON,KM like 48.85,2.35,10") from None
        return cls(lat, lon, km)


@dataclass(frozen=True)
class Filters:
    """Which rows may be hits (after, before, camera, near), which hits stay (within), their
    order and the page (sort, offset). The defaults change nothing."""

    # Given as ISO text, a date or a datetime; always an aware datetime once built.
    after: datetime | date | str | None = None
    before: datetime | date | str | None = None
    camera: str | None = None
    near: Near | str | None = None  # "LAT,LON,KM" accepted
    within: float | None = None
    sort: str = "relevance"
    offset: int = 0

    def __post_init__(self) -> None:
        after, before = parse_when(self.after, "--after"), parse_when(self.before, "--before")
        object.__setattr__(self, "after", after)
        object.__setattr__(self, "before", before)
        if after is not None and before is not None and after >= before:
            raise UsageError("--after must be earlier than --before")
        camera = (self.camera or "").strip()
        if len(camera) > 200:
            raise UsageError("--camera: at most 200 characters")
        object.__setattr__(self, "camera", camera or None)
        if isinstance(self.near, str):
            object.__setattr__(self, "near", Near.parse(self.near))
        if self.within is not None:
            if isinstance(self.within, bool) or not isinstance(self.within, int | float):
                raise UsageError(f"--within {self.within!r}: expected a number from 0 to 2")
            if not math.isfinite(self.within) or not 0 <= self.within <= 2:
                raise UsageError(f"--within {self.within}: must be from 0 to 2")
        if self.sort not in SORTS:
            raise UsageError(f"--sort {self.sort!r}: use one of {', '.join(SORTS)}")
        if isinstance(self.offset, bool) or not isinstance(self.offset, int):
            raise UsageError(f"--offset {self.offset!r}: expected a whole number")
        if not 0 <= self.offset <= MAX_OFFSET:
            raise UsageError(f"--offset {self.offset}: must be from 0 to {MAX_OFFSET}")

    @property
    def narrows(self) -> bool:
        """Whether rows are filtered by metadata (so the index scan must go on iteratively)."""
        return any(v is not None for v in (self.after, self.before, self.camera, self.near))

    def sql_params(self) -> dict[str, Any]:
        near = self.near if isinstance(self.near, Near) else None
        return {
            "after": self.after,
            "before": self.before,
            "camera": self.camera,
            "near_lat": near.lat if near else None,
            "near_lon": near.lon if near else None,
            "near_km": near.km if near else None,
            # A bounding box the index-free part of the test can check cheaply.
            "near_dlat": near.km / 111.0 if near else None,
        }


NO_FILTERS = Filters()


def offset_value(value: str) -> int:
    """argparse type for --offset: a whole number from 0 (argparse exits 2 otherwise)."""
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {value!r}") from None
    if not 0 <= number <= MAX_OFFSET:
        raise argparse.ArgumentTypeError(f"must be from 0 to {MAX_OFFSET}, got {value!r}")
    return number


def within_value(value: str) -> float:
    """argparse type for --within: a similarity difference from 0 to 2."""
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {value!r}") from None
    if not math.isfinite(number) or not 0 <= number <= 2:
        raise argparse.ArgumentTypeError(f"must be from 0 to 2, got {value!r}")
    return number
