"""Photo metadata: EXIF parsing field by field, storage at ingest, the metadata-only backfill."""

from __future__ import annotations

import tempfile
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

from helpers import index_images, make_images
from PIL import ExifTags, Image, TiffImagePlugin

from clipdb.exif import (
    DATETIME_ORIGINAL,
    GPS_LAT,
    GPS_LAT_REF,
    GPS_LON,
    GPS_LON_REF,
    LENS_MODEL,
    MAKE,
    MODEL,
    OFFSET_TIME_ORIGINAL,
    read_metadata,
)
from clipdb.ingest import ingest


def R(num: int, den: int = 1) -> TiffImagePlugin.IFDRational:  # noqa: N802 - reads like EXIF
    return TiffImagePlugin.IFDRational(num, den)


def photo(
    path: Path,
    *,
    date: str | bytes | None = "2021:07:04 18:30:00",
    offset: str | None = "+02:00",
    make: str | bytes | None = "Canon",
    model: str | bytes | None = "Canon EOS R5",
    lens: str | bytes | None = "RF24-105mm F4 L",
    gps: tuple | None = ((R(48), R(51), R(2964, 100)), "N", (R(2), R(17), R(4032, 100)), "E"),
    maker_note: bytes | None = None,
    seed: int = 0,
) -> Path:
    """A small JPEG with the EXIF given (Pillow writes it)."""
    with tempfile.TemporaryDirectory() as scratch:
        [src] = make_images(Path(scratch), 1, seed=seed)
        with Image.open(src) as opened:
            pixels = opened.copy()
    exif = Image.Exif()
    if make is not None:
        exif[MAKE] = make
    if model is not None:
        exif[MODEL] = model
    sub = exif.get_ifd(ExifTags.IFD.Exif)
    if date is not None:
        sub[DATETIME_ORIGINAL] = date
    if offset is not None:
        sub[OFFSET_TIME_ORIGINAL] = offset
    if lens is not None:
        sub[LENS_MODEL] = lens
    if maker_note is not None:
        sub[ExifTags.Base.MakerNote] = maker_note
    if gps is not None:
        info = exif.get_ifd(ExifTags.IFD.GPSInfo)
        info[GPS_LAT], info[GPS_LAT_REF], info[GPS_LON], info[GPS_LON_REF] = gps
    pixels.save(path, "JPEG", exif=exif, quality=90)
    return path


def test_full_metadata_is_read(tmp_path: Path) -> None:
    meta = read_metadata(str(photo(tmp_path / "a.jpg")))
    assert meta.taken_at == datetime(2021, 7, 4, 18, 30, tzinfo=timezone(timedelta(hours=2)))
    assert not meta.taken_at_naive
    assert meta.camera == "Canon EOS R5"  # the maker is not repeated
    assert meta.lens == "RF24-105mm F4 L"
    assert meta.lat is not None and abs(meta.lat - 48.858233) < 1e-5
    assert meta.lon is not None and abs(meta.lon - 2.2945) < 1e-4


def test_no_offset_is_naive_wall_clock(tmp_path: Path) -> None:
    meta = read_metadata(str(photo(tmp_path / "a.jpg", offset=None, make="Sony", model="A7")))
    assert meta.taken_at == datetime(2021, 7, 4, 18, 30, tzinfo=UTC)
    assert meta.taken_at_naive
    assert meta.camera == "Sony A7"


def test_south_west_coordinates(tmp_path: Path) -> None:
    gps = ((R(33), R(52), R(0)), "S", (R(151), R(12), R(0)), "W")
    meta = read_metadata(str(photo(tmp_path / "a.jpg", gps=gps)))
    assert meta.lat is not None and meta.lat < -33.8
    assert meta.lon is not None and meta.lon < -151.1


def test_no_exif_no_metadata(tmp_path: Path) -> None:
    [plain] = make_images(tmp_path, 1)
    meta = read_metadata(str(plain))
    assert meta.empty and meta.taken_at is None


def test_broken_dates_drop_only_the_date(tmp_path: Path) -> None:
    for index, date in enumerate(
        ["0000:00:00 00:00:00", "2019:13:45 10:00:00", "2019:02:30 25:61:00", "yesterday", ""]
    ):
        meta = read_metadata(str(photo(tmp_path / f"d{index}.jpg", date=date)))
        assert meta.taken_at is None, date
        assert meta.camera == "Canon EOS R5" and meta.lat is not None


def test_bad_offset_keeps_naive_date(tmp_path: Path) -> None:
    meta = read_metadata(str(photo(tmp_path / "a.jpg", offset="+99:99")))
    assert meta.taken_at == datetime(2021, 7, 4, 18, 30, tzinfo=UTC) and meta.taken_at_naive


def test_zero_denominators_and_absurd_coordinates_drop_gps(tmp_path: Path) -> None:
    cases = [
        ((R(48, 0), R(51), R(0)), "N", (R(2), R(17), R(0)), "E"),  # zero denominator
        ((R(123), R(0), R(0)), "N", (R(2), R(0), R(0)), "E"),  # latitude 123
        ((R(48), R(0), R(0)), "N", (R(200), R(0), R(0)), "E"),  # longitude 200
        ((R(48), R(75), R(0)), "N", (R(2), R(0), R(0)), "E"),  # 75 minutes
        ((R(48), R(0), R(0)), "Q", (R(2), R(0), R(0)), "E"),  # unknown reference
        ((R(0), R(0), R(0)), "N", (R(0), R(0), R(0)), "E"),  # no fix: zeros
    ]
    for index, gps in enumerate(cases):
        meta = read_metadata(str(photo(tmp_path / f"g{index}.jpg", gps=gps)))
        assert meta.lat is None and meta.lon is None, gps
        assert meta.taken_at is not None and meta.camera == "Canon EOS R5"


def test_non_utf8_and_huge_strings(tmp_path: Path) -> None:
    meta = read_metadata(
        str(photo(tmp_path / "a.jpg", make=b"Soci\xe9t\xe9", model=b"X\xff1", lens="L" * 5000))
    )
    assert meta.camera is not None and "Soci" in meta.camera
    assert meta.lens is None  # 5000 characters is not a lens name
    assert meta.taken_at is not None


def test_large_maker_note_is_ignored(tmp_path: Path) -> None:
    # JPEG's APP1 holds 64 KiB at most: Pillow refuses to write more, so the biggest note that
    # fits is used and a multi-megabyte one is checked on the bytes path below.
    path = photo(tmp_path / "a.jpg", maker_note=b"\x00\xff" * 30000)
    meta = read_metadata(path.read_bytes())
    assert meta.camera == "Canon EOS R5" and meta.taken_at is not None


def test_truncated_exif_block_never_raises(tmp_path: Path) -> None:
    data = bytearray(photo(tmp_path / "a.jpg").read_bytes())
    start = data.find(b"Exif\x00\x00")
    for cut in (start + 10, start + 40, start + 120):
        broken = bytes(data[:cut]) + bytes(data[cut + 60 :])
        read_metadata(broken)  # whatever comes back, nothing raises
    for index in range(start, start + 200, 7):  # flip bytes inside the IFDs
        patched = bytearray(data)
        patched[index] ^= 0xFF
        read_metadata(bytes(patched))
    assert read_metadata(b"not an image").empty


def _meta_rows(database) -> dict[str, tuple]:
    with database.connect() as conn:
        rows = conn.execute(
            "SELECT path, taken_at, taken_at_naive, camera, lens, lat, lon, metadata_version,"
            " embedding::text FROM clipdb.images"
        ).fetchall()
    return {row[0]: row[1:] for row in rows}


def test_ingest_stores_metadata_and_broken_exif_still_indexes(
    database, tiny_encoder, tmp_path: Path
) -> None:
    good = photo(tmp_path / "good.jpg", seed=1)
    bad = photo(
        tmp_path / "bad.jpg",
        date="0000:00:00 00:00:00",
        make=b"\xff\xfe",
        model=None,
        gps=((R(1, 0), R(0), R(0)), "N", (R(2), R(0), R(0)), "E"),
        seed=2,
    )
    [plain] = make_images(tmp_path / "plain", 1, seed=3)
    summary = ingest([tmp_path], database=database, encoder=tiny_encoder, progress=False, workers=0)
    assert summary.new == 3 and not summary.skipped
    rows = _meta_rows(database)
    when, naive, camera, lens, lat, lon, version, _ = rows[str(good)]
    assert when == datetime(2021, 7, 4, 16, 30, tzinfo=UTC) and not naive
    assert (camera, lens) == ("Canon EOS R5", "RF24-105mm F4 L")
    assert abs(lat - 48.858233) < 1e-5 and abs(lon - 2.2945) < 1e-4 and version == 1
    when, naive, camera, lens, lat, lon, version, _ = rows[str(bad)]
    assert when is None and lat is None and lon is None and version == 1
    assert rows[str(plain)][:7] == (None, False, None, None, None, None, 1)


def test_backfill_reads_metadata_without_reencoding(database, tiny_encoder, tmp_path: Path) -> None:
    paths = [photo(tmp_path / f"p{i}.jpg", seed=i) for i in range(3)]
    index_images(database, tiny_encoder, paths)  # rows as stored before migration 0006
    before = _meta_rows(database)
    assert all(row[6] is None for row in before.values())

    class NoEncoder:  # any use of the model fails the test
        def __getattr__(self, name):
            raise AssertionError(f"the backfill used the encoder ({name})")

    from clipdb.ingest import Ingester, IngestOptions

    ingester = Ingester([tmp_path], IngestOptions(progress=False, workers=0), database=database)
    ingester.load_encoder = NoEncoder  # type: ignore[method-assign]
    ingester._spec = tiny_encoder.spec
    summary = ingester.run()
    assert summary.metadata_read == 3 and summary.unchanged == 3
    assert summary.new == summary.updated == 0
    after = _meta_rows(database)
    for path in before:
        assert after[path][7] == before[path][7]  # embedding text unchanged
        assert after[path][2] == "Canon EOS R5" and after[path][6] == 1
    again = ingester.run()
    assert again.metadata_read == 0  # read once


def test_a_nul_ends_an_exif_string(tmp_path: Path) -> None:
    meta = read_metadata(str(photo(tmp_path / "a.jpg", make="ION", model=b"ION230\x00F")))
    assert meta.camera == "ION230"
