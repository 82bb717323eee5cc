"""Discovery and robust decoding (no database, no model loading except the tiny fixture)."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from clipdb import decode, files, pixels, thumbnail


def write_jpeg(path: Path, size: tuple[int, int] = (40, 30), color=(200, 30, 40)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path, "JPEG")
    return path


def test_scan_finds_images_recursively_sorted_and_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_jpeg(tmp_path / "b.jpg")
    write_jpeg(tmp_path / "sub" / "a.JPEG")
    (tmp_path / "notes.txt").write_text("not an image, not counted")
    write_jpeg(tmp_path / "dir.jpg" / "inside.png")  # a directory named like an image
    # monkeypatch restores the working directory: a later `python -m clipdb...` subprocess
    # must import this checkout, not whichever clipdb the venv has installed.
    monkeypatch.chdir(tmp_path)
    result = files.scan(["."])
    assert [f.path for f in result.files] == sorted(
        str(tmp_path / p) for p in ("b.jpg", "sub/a.JPEG", "dir.jpg/inside.png")
    )
    assert result.skipped == []
    stat = os.stat(tmp_path / "b.jpg")
    first = next(f for f in result.files if f.path.endswith("b.jpg"))
    assert (first.size, first.mtime_ns) == (stat.st_size, stat.st_mtime_ns)


def test_scan_explicit_file_any_extension_and_exclude(tmp_path: Path) -> None:
    odd = write_jpeg(tmp_path / "picture.data")
    write_jpeg(tmp_path / "keep.jpg")
    write_jpeg(tmp_path / "thumbs" / "x.jpg")
    write_jpeg(tmp_path / "skip.thumb.jpg")
    result = files.scan([tmp_path, odd], exclude=["thumbs", "*.thumb.jpg"])
    assert [Path(f.path).name for f in result.files] == ["keep.jpg", "picture.data"]


def test_scan_symlinks_loops_and_special_files(tmp_path: Path) -> None:
    real = write_jpeg(tmp_path / "real.jpg")
    (tmp_path / "link.jpg").symlink_to(real)  # kept under its own (unresolved) path
    (tmp_path / "broken.jpg").symlink_to(tmp_path / "missing.jpg")
    (tmp_path / "loop_a.jpg").symlink_to(tmp_path / "loop_b.jpg")
    (tmp_path / "loop_b.jpg").symlink_to(tmp_path / "loop_a.jpg")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "up").symlink_to(tmp_path)  # directory loop: must not hang
    os.mkfifo(tmp_path / "pipe.jpg")  # opening it would block forever
    result = files.scan([tmp_path])
    assert [Path(f.path).name for f in result.files] == ["link.jpg", "real.jpg"]
    assert {Path(p).name: r for p, r in result.skipped} == {
        "broken.jpg": files.BROKEN_SYMLINK,
        "loop_a.jpg": files.SYMLINK_LOOP,
        "loop_b.jpg": files.SYMLINK_LOOP,
        "pipe.jpg": files.NOT_REGULAR,
    }


def _bytes_of(image: Image.Image, fmt: str, **kwargs) -> bytes:
    import io

    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def test_open_image_bad_inputs() -> None:
    good = _bytes_of(Image.new("RGB", (64, 48), (10, 200, 10)), "JPEG")
    cases = {
        b"": files.EMPTY,
        os.urandom(2048): files.NOT_IMAGE,
        b"hello, I am text": files.NOT_IMAGE,
        good[: len(good) // 2]: files.CORRUPT,
    }
    for data, reason in cases.items():
        with pytest.raises(decode.ImageError) as caught:
            decode.open_image(data)
        assert str(caught.value) == reason
    with pytest.raises(decode.ImageError, match=files.TOO_LARGE):
        decode.open_image(good, max_pixels=64 * 48 - 1)
    assert decode.open_image(good, max_pixels=64 * 48)[1:] == (64, 48)


def test_open_image_decompression_bomb_is_checked_before_decoding() -> None:
    huge = _bytes_of(Image.new("L", (12000, 12000)), "PNG")  # compresses to a few kB
    with pytest.raises(decode.ImageError, match=files.TOO_LARGE):
        decode.open_image(huge)


def test_open_image_modes_become_upright_rgb() -> None:
    rgba = Image.new("RGBA", (8, 6), (255, 0, 0, 0))  # fully transparent: white, not red
    image, _, _ = decode.open_image(_bytes_of(rgba, "PNG"))
    assert image.mode == "RGB" and image.getpixel((0, 0)) == (255, 255, 255)

    deep = Image.fromarray(np.full((6, 8), 65535 // 2, dtype=np.uint16))  # I;16 mid-grey
    image, _, _ = decode.open_image(_bytes_of(deep, "PNG"))
    assert image.mode == "RGB" and abs(image.getpixel((0, 0))[0] - 128) <= 1

    cmyk = Image.new("CMYK", (8, 6), (0, 255, 255, 0))  # red in CMYK
    image, _, _ = decode.open_image(_bytes_of(cmyk, "JPEG"))
    red = image.getpixel((4, 3))
    assert image.mode == "RGB" and red[0] > 200 and red[1] < 60

    palette = Image.new("RGB", (8, 6), (0, 0, 255)).convert("P")
    assert decode.open_image(_bytes_of(palette, "PNG"))[0].getpixel((0, 0)) == (0, 0, 255)
    gray = Image.new("L", (8, 6), 77)
    assert decode.open_image(_bytes_of(gray, "PNG"))[0].getpixel((0, 0)) == (77, 77, 77)

    frames = [Image.new("RGB", (8, 6), c) for c in ((255, 0, 0), (0, 255, 0))]
    gif = _bytes_of(frames[0], "GIF", save_all=True, append_images=frames[1:])
    first = decode.open_image(gif)[0].getpixel((0, 0))
    assert first[0] > 200 and first[1] < 60


def test_open_image_exif_orientation_swaps_reported_size() -> None:
    image = Image.new("RGB", (60, 40), (0, 0, 0))
    image.paste((255, 255, 255), (0, 0, 10, 10))  # marks the top-left corner
    exif = Image.Exif()
    exif[decode.ORIENTATION_TAG] = 6  # "rotate 90 clockwise to view"
    decoded, width, height = decode.open_image(_bytes_of(image, "JPEG", exif=exif))
    assert (width, height) == (40, 60) and decoded.size == (40, 60)
    assert decoded.getpixel((35, 3))[0] > 200  # corner moved to the top right


def test_draft_decoding_keeps_the_margin() -> None:
    big = _bytes_of(Image.new("RGB", (1600, 1200), (90, 90, 90)), "JPEG")
    image, width, height = decode.open_image(big, draft_size=448)
    assert (width, height) == (1600, 1200)  # the file's size, not the draft's
    assert image.size == (800, 600)  # 1/2 scale: short side 600 >= 448


@pytest.mark.parametrize("input_size", [32, 224])
def test_pixel_pipeline_matches_preprocess(tiny_encoder, input_size) -> None:
    """The workers' resize is torchvision's uint8 kernel (PIL's filter, vectorised): within
    two levels of the PIL resize that open_clip's transform runs, and rarely off at all."""
    import open_clip
    import torch

    preprocess = (
        tiny_encoder.preprocess if input_size == 32 else open_clip.image_transform(224, False)
    )
    pipeline = pixels.PixelPipeline.from_preprocess(preprocess, input_size)
    assert pipeline.whole is None  # the split path, without torch in the workers
    rng = np.random.default_rng(3)
    sizes = [(70, 50), (50, 70), (301, 227), (20, 15), (input_size + 1, 5), (900, 601)]
    images = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in sizes]
    batch = pipeline.to_batch([pipeline.to_pixels(image) for image in images])
    expected = torch.stack([preprocess(image) for image in images])
    assert batch.shape == expected.shape and batch.dtype == expected.dtype
    step = (1 / 255) / min(pipeline.std or (1.0,))  # one uint8 level after normalising
    difference = (batch - expected).abs()
    assert float(difference.max()) <= 2 * step + 1e-6
    assert float(difference.mean()) <= 0.02 * step
    assert np.array_equal(pipeline.to_array([pipeline.to_pixels(images[0])]), batch[:1].numpy())


def test_pixel_pipeline_falls_back_to_the_whole_transform() -> None:
    import torchvision.transforms as T

    odd = T.Compose(
        [T.Resize(40), T.RandomCrop(32), T.ToTensor(), T.Normalize([0.5] * 3, [0.5] * 3)]
    )
    pipeline = pixels.PixelPipeline.from_preprocess(odd, 32)
    assert pipeline.whole is odd
    assert pipeline.to_pixels(Image.new("RGB", (50, 40))).shape == (3, 32, 32)


def test_decode_task_reports_permission_denied_as_non_root() -> None:
    """Root reads anything, so the check runs as user nobody (setpriv) on a mode-000 file."""
    if os.geteuid() != 0:
        pytest.skip("runs as root and drops to nobody")
    directory = Path(tempfile.mkdtemp(prefix="clipdb-perm-"))
    try:
        directory.chmod(0o755)
        locked = write_jpeg(directory / "locked.jpg")
        locked.chmod(0o000)
        code = (
            "import sys\nfrom clipdb import decode\n"
            "try:\n    decode.open_image(sys.argv[1])\n"
            "except decode.ImageError as err:\n    print(err)\n"
        )
        result = subprocess.run(
            [
                "setpriv",
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                sys.executable,
                "-c",
                code,
                str(locked),
            ],  # fmt: skip
            capture_output=True,
            text=True,
            cwd=Path(__file__).parents[1],
        )
        if result.returncode != 0 and "setpriv" in result.stderr:
            pytest.skip(f"setpriv unavailable: {result.stderr.strip()}")
        assert result.stdout.strip() == files.PERMISSION_DENIED, result.stderr
    finally:
        for path in directory.iterdir():
            path.unlink()
        directory.rmdir()


def test_exif_transpose_matches_pillow_reference() -> None:
    image = Image.new("RGB", (30, 20), (0, 0, 0))
    image.paste((250, 250, 250), (0, 0, 6, 6))
    for orientation in range(1, 9):
        exif = Image.Exif()
        exif[decode.ORIENTATION_TAG] = orientation
        data = _bytes_of(image, "PNG", exif=exif)
        decoded, _, _ = decode.open_image(data)
        import io

        reference = ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB")
        assert decoded.tobytes() == reference.tobytes(), orientation


@pytest.mark.parametrize(
    "data",
    [
        b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 9 9\n",  # would go to Ghostscript
        b"DDS "
        + __import__("struct").pack("<7I", 124, 0x1007, 4, 4, 0, 0, 0)
        + bytes(44)
        + __import__("struct").pack("<2I", 32, 4)
        + b"ZZZZ"
        + bytes(104),  # fuzzed DDS: its decoder raised NotImplementedError
    ],
)
def test_thumbnails_and_decoding_share_the_decoder_allow_list(data: bytes) -> None:
    """The server's thumbnails open files exactly as ingest does: no stray decoder, no 500."""
    with pytest.raises(decode.ImageError, match="not an image"):
        thumbnail.make_thumbnail(data, 128)
    with pytest.raises(decode.ImageError, match="not an image"):
        decode.open_image(data)


def test_scan_counts_files_that_are_not_media_by_extension(tmp_path: Path) -> None:
    write_jpeg(tmp_path / "a.jpg")
    (tmp_path / "clip.MP4").write_bytes(b"x")
    (tmp_path / "photo.HEIC").write_bytes(b"x")
    for name in ("n.txt", "m.TXT", "side.xmp", "Makefile"):
        (tmp_path / name).write_text("x")
    named = tmp_path / "odd.data"
    write_jpeg(named)
    result = files.scan([tmp_path, named])
    assert sorted(Path(f.path).name for f in result.files) == [
        "a.jpg",
        "clip.MP4",
        "odd.data",
        "photo.HEIC",
    ]
    assert result.ignored == {".txt": 2, ".xmp": 1, files.NO_EXTENSION: 1}


def test_a_live_photos_mov_is_one_item_with_its_photo(tmp_path: Path) -> None:
    write_jpeg(tmp_path / "IMG_0001.HEIC")  # the name is what counts here, not the content
    (tmp_path / "IMG_0001.MOV").write_bytes(b"x")
    (tmp_path / "IMG_0002.MOV").write_bytes(b"x")  # a video of its own
    write_jpeg(tmp_path / "trip.jpg")
    write_jpeg(tmp_path / "trip.mov" / "inside.jpg")  # a folder, walked whatever its name
    result = files.scan([tmp_path])
    assert sorted(Path(f.path).name for f in result.files) == [
        "IMG_0001.HEIC",
        "IMG_0002.MOV",
        "inside.jpg",
        "trip.jpg",
    ]
    assert result.live_photos == 1 and result.ignored == {}
