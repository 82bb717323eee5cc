"""Real files from phones and cameras (tests/data/real, sources in its SOURCES.md): a folder of
them is fully accounted for, read with the EXIF the cameras wrote, upright, and searchable by
image, text, --like and the filters. The other media tests use generated files; these catch
what only a camera's own output carries."""

from __future__ import annotations

import io
import shutil
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clipdb import decode
from clipdb.filters import Filters
from clipdb.thumbnail import make_thumbnail

REAL = Path(__file__).parent / "data" / "real"
# Camera RAW and QuickTime headers whose image data was stripped (ExifTool's and exif-py's
# metadata samples): real headers, nothing to decode.
STRIPPED = {
    "canon_350d_stripped.cr2": "truncated or corrupt image",
    "nikon_d70_stripped.nef": "truncated or corrupt image",
    "sony_a7iii_stripped.ARW": "truncated or corrupt image",
    "quicktime_stripped.mov": "video cannot be decoded",
}
UTC = timezone.utc


def _at(*args: int, hours: int = 0) -> datetime:
    return datetime(*args, tzinfo=timezone(timedelta(hours=hours)))


# name: (stored width, height, taken_at, camera, lat, lon), as ExifTool reads the files.
EXPECTED = {
    "DSCN0010.jpg": (
        640,
        480,
        _at(2008, 10, 22, 16, 28, 39),
        "NIKON COOLPIX P6000",
        43.4674483,
        11.8851267,
    ),
    "portrait_6.jpg": (450, 600, None, None, None, None),  # 600x450 stored, orientation 6
    "spring_1440x960.heic": (1440, 960, _at(2020, 12, 3, 15, 4, 31), None, None, None),
    "sony_a7s3.heic": (64, 64, _at(2020, 9, 14, 11, 9, 34, hours=-5), "SONY ILCE-7SM3", None, None),
    "pug.heic": (64, 64, None, None, None, None),
    "samplefilehub.heif": (640, 426, None, None, None, None),
    "mountains.avif": (
        1920,
        1080,
        _at(2024, 4, 5, 10, 59, 24),
        "OLYMPUS CORPORATION E-PL8",
        None,
        None,
    ),
    "nikon_z9.dng": (5392, 3592, _at(2025, 8, 10, 19, 2, 53, hours=3), "NIKON Z 9", None, None),
    # Generated beside them (no small real phone video with a licence this repository can
    # carry was found): the folder still holds a video to be searched once.
    "clip.mp4": (96, 64, None, None, None, None),
}


def test_a_folder_of_real_phone_and_camera_files(database, tiny_encoder, tmp_path):
    from test_ingest import run

    from clipdb.db.queries import indexed_embedding, search_vector
    from clipdb.db.registry import registered_model

    root = tmp_path / "library"
    shutil.copytree(REAL, root)
    from media_samples import video

    video(root / "clip.mp4", 3, size=(96, 64), scenes=(1.5,))
    skipped: dict[str, str] = {}
    summary = run(
        [root], database, tiny_encoder, on_skip=lambda p, r: skipped.__setitem__(Path(p).name, r)
    )
    # Every file: indexed, skipped with its reason, or counted as not an image (SOURCES.md).
    assert skipped == STRIPPED
    assert (summary.found, summary.new) == (len(EXPECTED) + len(STRIPPED), len(EXPECTED))
    assert summary.ignored == {".md": 1}
    with database.connect() as conn:
        rows = conn.execute(
            "SELECT path, width, height, taken_at, camera, lat, lon FROM clipdb.images"
            " WHERE frame_time IS NULL OR frame_time = 0"
        ).fetchall()
    stored = {Path(path).name: tuple(rest) for path, *rest in rows}
    assert stored.keys() == EXPECTED.keys()
    for name, (width, height, taken, camera, lat, lon) in EXPECTED.items():
        got = stored[name]
        assert got[:2] == (width, height), name
        assert got[2] == taken, name
        assert got[3] == camera, name
        assert got[4:] == ((pytest.approx(lat), pytest.approx(lon)) if lat else (None, None)), name

    with database.connect() as conn:
        model = registered_model(conn, tiny_encoder.architecture, tiny_encoder.pretrained)
        assert model is not None
        # --like of a HEIC: itself first.
        heic = str(root / "spring_1440x960.heic")
        like = indexed_embedding(conn, model, heic)
        assert search_vector(conn, model, like, 3)[0].image_path == heic
        # By a picture: the AVIF's own decode finds it.
        avif = root / "mountains.avif"
        query = tiny_encoder.encode_pil([decode.open_image(str(avif))[0]])[0]
        assert search_vector(conn, model, query, 3)[0].image_path == str(avif)
        # By text: every item comes back, the video once.
        text = tiny_encoder.encode_texts(["a dog"])[0]
        names = [Path(h.image_path).name for h in search_vector(conn, model, text, 50)]
        assert sorted(names) == sorted(EXPECTED)

        def found(**filters: object) -> set[str]:
            hits = search_vector(conn, model, text, 50, filters=Filters(**filters))  # type: ignore[arg-type]
            return {Path(h.image_path).name for h in hits}

        assert found(camera="nikon") == {"DSCN0010.jpg", "nikon_z9.dng"}
        assert found(camera="ILCE-7SM3") == {"sony_a7s3.heic"}
        assert found(after="2024-01-01") == {"mountains.avif", "nikon_z9.dng"}
        assert found(before="2020-12-01", after="2020-01-01") == {"sony_a7s3.heic"}
        assert found(near="43.4674,11.8851,1") == {"DSCN0010.jpg"}

    # Thumbnails render for every indexed format, upright.
    for name, (width, height, *_) in EXPECTED.items():
        if name.endswith(".mp4"):
            continue
        thumb = Image.open(io.BytesIO(make_thumbnail(str(root / name), 64)))
        assert thumb.format == "JPEG" and max(thumb.size) <= 64, name
        assert (thumb.width >= thumb.height) == (width >= height), name


def test_orientation_of_a_real_camera_jpeg_is_applied():
    image, width, height = decode.open_image(str(REAL / "portrait_6.jpg"))
    assert image.size == (width, height) == (450, 600)
    # The file's pixels are landscape; upright, the subject's top is at the top: the raw
    # pixels turned 270 degrees equal the decoded image.
    with Image.open(REAL / "portrait_6.jpg") as stored:
        assert stored.size == (600, 450)
        turned = np.asarray(stored.convert("RGB").transpose(Image.Transpose.ROTATE_270))
    assert np.abs(turned.astype(int) - np.asarray(image).astype(int)).mean() < 2


def test_a_raw_this_libraw_cannot_demosaic_is_indexed_by_its_preview():
    # A Nikon Z 9 high-efficiency RAW (as DNG): LibRaw reads its header and preview but not its
    # sensor data. A model wanting more than the 640x424 preview still gets the preview.
    path = str(REAL / "nikon_z9.dng")
    image, width, height = decode.open_image(path, draft_size=2000)
    assert (width, height) == (5392, 3592)
    assert image.size == (640, 424)
