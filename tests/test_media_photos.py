"""Phone and camera photos: HEIC/HEIF and AVIF (pillow-heif / Pillow), RAW (rawpy), decoded
upright with their EXIF, through ingest, thumbnails and pHash; and nothing under a root goes
unaccounted for (ignored files counted by extension, a missing plugin named)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from media_samples import avif, dng, heic, picture
from PIL import Image

from clipdb import decode, files, formats, phash, raw
from clipdb.thumbnail import make_thumbnail


def _meta(path: Path):
    return raw.file_metadata(path.read_bytes(), str(path))


@pytest.mark.parametrize("make", [heic, avif], ids=["heic", "avif"])
def test_phone_formats_decode_upright_with_exif(tmp_path, make):
    path = make(tmp_path / f"photo.{make.__name__}", orientation=6)
    image, width, height = decode.open_image(str(path))
    assert image.mode == "RGB"
    assert image.size == (width, height) == (64, 96)  # 96x64 turned by EXIF orientation 6
    meta = _meta(path)
    assert meta.camera == "Apple iPhone 15"
    assert meta.taken_at is not None and meta.taken_at.year == 2024


def test_ten_bit_heic_comes_out_as_eight_bit(tmp_path):
    import pillow_heif

    ramp = np.linspace(0, 65535, 64 * 96 * 3).reshape(64, 96, 3).astype("<u2")
    deep = pillow_heif.from_bytes("RGB;16", (96, 64), ramp.tobytes())
    path = tmp_path / "deep.heic"
    deep.save(path)
    image, _, _ = decode.open_image(str(path))
    pixels = np.asarray(image)
    assert image.mode == "RGB" and pixels.dtype == np.uint8
    assert pixels.max() > 200  # scaled down, not clipped to the low byte


def test_multi_image_heic_is_its_primary_image(tmp_path):
    red, blue = Image.new("RGB", (64, 48), (255, 0, 0)), Image.new("RGB", (64, 48), (0, 0, 255))
    path = tmp_path / "burst.heic"
    red.save(path, "HEIF", save_all=True, append_images=[blue], primary_index=1)
    image, _, _ = decode.open_image(str(path))
    r, g, b = image.getpixel((5, 5))
    assert b > 200 and r < 50


def test_dng_without_a_big_preview_is_demosaiced_at_half_size(tmp_path):
    path = dng(tmp_path / "small.dng", 64, 48)
    image, width, height = decode.open_image(str(path), draft_size=448)
    assert (width, height) == (64, 48)  # the sensor's size is the row's
    assert image.size == (32, 24)  # half-size demosaic
    meta = _meta(path)
    assert meta.camera == "Canon EOS Test" and meta.taken_at is not None
    assert meta.taken_at.isoformat().startswith("2023-01-02T03:04:05")


def test_dng_preview_is_used_when_big_enough_and_turned_upright(tmp_path):
    path = dng(tmp_path / "big.dng", 640, 480, preview=picture(600, 400), orientation=6)
    image, width, height = decode.open_image(str(path), draft_size=448)  # a 224-pixel model
    assert (width, height) == (480, 640)
    assert image.size == (400, 600)  # the JPEG preview, turned once (not twice)
    # A model needing more than the preview has gets the demosaic instead.
    image, _, _ = decode.open_image(str(path), draft_size=2 * 448)
    assert image.size == (240, 320)


def test_raw_is_recognised_by_content_without_a_name(tmp_path):
    data = dng(tmp_path / "a.dng").read_bytes()
    assert formats.is_raw(data)
    image, _, _ = decode.open_image(data)
    assert image.size == (32, 24)


def test_a_missing_plugin_is_a_skip_naming_the_package(tmp_path, monkeypatch):
    heif_path, raw_path = heic(tmp_path / "a.heic"), dng(tmp_path / "b.dng")
    monkeypatch.setattr(formats, "_heif_registered", lambda: False)
    monkeypatch.setattr(formats, "raw_available", lambda: False)
    with pytest.raises(decode.ImageError, match="HEIC/HEIF needs the pillow-heif package"):
        decode.open_image(str(heif_path))
    with pytest.raises(decode.ImageError, match="RAW needs the rawpy package"):
        decode.open_image(str(raw_path))


def test_a_corrupt_heic_is_a_corrupt_skip(tmp_path):
    data = heic(tmp_path / "a.heic").read_bytes()
    cut = tmp_path / "cut.heic"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(decode.ImageError, match=files.CORRUPT):
        decode.open_image(str(cut))


@pytest.mark.parametrize("make", [heic, avif, dng], ids=["heic", "avif", "dng"])
def test_thumbnails_of_every_format_are_jpegs(tmp_path, make):
    path = make(tmp_path / f"x.{make.__name__}")
    thumb = Image.open(io.BytesIO(make_thumbnail(str(path), 32)))
    assert thumb.format == "JPEG" and max(thumb.size) <= 32


def test_a_heic_and_its_jpeg_export_have_near_hashes(tmp_path):
    photo = picture(256, 192, seed=3)
    heif_path = heic(tmp_path / "p.heic", photo)
    jpeg_path = tmp_path / "p.jpg"
    photo.save(jpeg_path, "JPEG", quality=85)
    hashes = [
        phash.phash(decode.open_image(str(p), draft_size=decode.PHASH_DRAFT_SIZE)[0])
        for p in (heif_path, jpeg_path)
    ]
    assert phash.distance(*hashes) <= 4


def test_every_file_is_indexed_skipped_or_counted_as_ignored(database, tiny_encoder, tmp_path):
    from test_ingest import run

    root = tmp_path / "library"
    root.mkdir()
    heic(root / "a.heic"), avif(root / "b.avif"), dng(root / "c.DNG")
    picture().save(root / "d.jpg")
    (root / "notes.txt").write_text("x")
    (root / "e.xmp").write_text("x")
    (root / "README").write_text("x")
    (root / "bad.heic").write_bytes(b"\x00\x00\x00\x18ftypheic" + b"\x00" * 40)
    summary = run([root], database, tiny_encoder)
    assert (summary.found, summary.new) == (5, 4)
    assert summary.skipped == {files.CORRUPT: 1}
    assert summary.ignored == {"(none)": 1, ".txt": 1, ".xmp": 1}
    assert "not an image or video 3 ((none): 1, .txt: 1, .xmp: 1)" in summary.format()
    assert json.loads(json.dumps(summary.to_dict()))["ignored"][".txt"] == 1
    with database.connect() as conn:
        sizes = dict(conn.execute("SELECT path, width FROM clipdb.images").fetchall())
        taken = conn.execute(
            "SELECT count(*) FROM clipdb.images WHERE taken_at IS NOT NULL"
        ).fetchone()[0]
    assert sizes[str(root / "c.DNG")] == 64
    assert taken == 3  # HEIC, AVIF and DNG carried a date


def test_file_route_sends_a_jpeg_rendition_where_browsers_cannot_show_the_format(
    database, tiny_encoder, tmp_path
):
    from fastapi.testclient import TestClient
    from helpers import index_images

    from clipdb.serve import create_app

    paths = [heic(tmp_path / "a.heic"), avif(tmp_path / "b.avif"), dng(tmp_path / "c.dng")]
    ids = index_images(database, tiny_encoder, paths)
    app = create_app(database, encoder=tiny_encoder)
    with TestClient(app, base_url="http://127.0.0.1") as client:
        for path in paths:
            response = client.get(f"/api/images/{ids[str(path)]}/file")
            assert response.status_code == 200, response.text
            if path.suffix == ".avif":  # browsers show AVIF: the file itself
                assert response.content == path.read_bytes()
                assert response.headers["content-type"] == "image/avif"
                continue
            assert response.headers["content-type"] == "image/jpeg"
            assert Image.open(io.BytesIO(response.content)).format == "JPEG"
            assert f"{path.stem}.jpg" in response.headers["content-disposition"]
            thumb = client.get(f"/api/images/{ids[str(path)]}/thumbnail")
            assert thumb.status_code == 200 and thumb.content.startswith(b"\xff\xd8")
