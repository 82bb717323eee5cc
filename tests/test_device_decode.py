"""The device decode path (clipdb.device_decode), run here with the CPU as the device.

On CUDA the same code decodes with nvJPEG; what these tests pin down is everything around
the decoder: orientation, resize and crop arithmetic, pHash, per-file fallbacks, batch order,
and that ingest stores the same rows either way.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from helpers import TINY_MODEL, make_images, run_module, table
from PIL import Image

from clipdb import decode, device_decode, files
from clipdb.device_decode import DeviceDecoder, prepare_task
from clipdb.ingest import ingest
from clipdb.phash import distance


def photo(size: tuple[int, int] = (300, 200), seed: int = 0) -> Image.Image:
    """Smooth, asymmetric content (gradients + a block in one corner), like a photo's."""
    width, height = size
    y, x = np.mgrid[0:height, 0:width]
    rng = np.random.default_rng(seed)
    red = 255 * x / width
    green = 255 * (0.5 + 0.5 * np.sin(y / (7 + 3 * rng.random())))
    blue = 255 * (x + y) / (width + height)
    pixels = np.stack([red, green, blue], -1)
    pixels[: height // 4, : width // 5] = (250, 20, 20)
    return Image.fromarray(pixels.clip(0, 255).astype(np.uint8), "RGB")


def save(image: Image.Image, path: Path, **options) -> Path:
    image.save(path, "JPEG", quality=92, **options)
    return path


def reference_pixels(path: Path, pipeline) -> decode.Decoded:
    """The exact preprocess of the full-size decode (no JPEG draft scaling)."""
    return decode.decode_task(str(path), pipeline, None, draft=False)


def device_batch(paths: list[Path], pipeline, skips: list | None = None):
    items = [prepare_task(str(p), pipeline, None) for p in paths]
    decoder = DeviceDecoder(pipeline, "cpu", None)
    record = skips.append if skips is not None else (lambda item: None)
    ready = decoder.batch(items, lambda path, reason: record((path, reason)))
    return items, ready.finished(), ready.pixels.numpy()


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_turns_as_pil_does(tiny_encoder, tmp_path, orientation):
    pipeline = tiny_encoder.pixel_pipeline
    exif = Image.Exif()
    exif[decode.ORIENTATION_TAG] = orientation
    path = save(photo(), tmp_path / "turned.jpg", exif=exif)
    expected = reference_pixels(path, pipeline)
    items, kept, pixels = device_batch([path], pipeline)
    assert items[0].jpeg is not None  # it did take the device path
    assert (kept[0].width, kept[0].height) == (expected.width, expected.height)
    want = pipeline.to_array([expected.pixels])
    # One uint8 level after normalisation is 1/255/std ~ 0.015: allow two levels.
    assert np.abs(pixels - want).max() < 0.031
    assert distance(kept[0].phash, decode.decode_task(str(path), pipeline, None).phash) <= 2


def test_formats_the_device_cannot_take_go_the_cpu_way(tiny_encoder, tmp_path):
    pipeline = tiny_encoder.pixel_pipeline
    base = photo()
    paths = [
        save(base, tmp_path / "a_rgb.jpg"),
        save(base.convert("L"), tmp_path / "b_grey.jpg"),
        save(base, tmp_path / "c_progressive.jpg", progressive=True),
        save(base.convert("CMYK"), tmp_path / "d_cmyk.jpg"),
        tmp_path / "e.png",
    ]
    base.save(paths[-1])
    items, kept, pixels = device_batch(paths, pipeline)
    on_device = [item.jpeg is not None for item in items]
    assert on_device == [True, True, True, False, False]  # CMYK and PNG: decoded by PIL
    assert [item.path for item in kept] == [str(p) for p in paths]  # order kept
    want = pipeline.to_array([reference_pixels(p, pipeline).pixels for p in paths])
    assert np.abs(pixels[:3] - want[:3]).max() < 0.031
    # The CPU-decoded ones are exactly what the workers made (draft decoding included).
    workers = pipeline.to_array([decode.decode_task(str(p), pipeline, None).pixels for p in paths])
    np.testing.assert_array_equal(pixels[3:], workers[3:])
    assert all(item.phash is not None for item in kept)


def test_a_jpeg_the_device_refuses_fails_alone_and_pil_decides(tiny_encoder, tmp_path):
    pipeline = tiny_encoder.pixel_pipeline
    good = [save(photo(seed=s), tmp_path / f"good_{s}.jpg") for s in range(3)]
    whole = (tmp_path / "good_0.jpg").read_bytes()
    broken = tmp_path / "broken.jpg"  # a sound header, then the scan data cut short
    broken.write_bytes(whole[: len(whole) // 2])
    skips: list[tuple[str, str]] = []
    paths = [good[0], broken, good[1], good[2]]
    items, kept, pixels = device_batch(paths, pipeline, skips)
    assert items[1].jpeg is not None and items[1].reason is None  # header alone looks fine
    assert skips == [(str(broken), files.CORRUPT)]
    assert [item.path for item in kept] == [str(p) for p in good]
    want = pipeline.to_array([reference_pixels(p, pipeline).pixels for p in good])
    assert np.abs(pixels - want).max() < 0.031  # the batch's other files still decoded


def test_small_chunks_keep_every_image_in_its_place(tiny_encoder, tmp_path, monkeypatch):
    pipeline = tiny_encoder.pixel_pipeline
    sizes = [(300, 200), (200, 300), (300, 200), (128, 96), (300, 200)]
    paths = [save(photo(size, s), tmp_path / f"p{s}.jpg") for s, size in enumerate(sizes)]
    _, _, together = device_batch(paths, pipeline)
    monkeypatch.setattr(device_decode, "CHUNK_PIXELS", 300 * 200 + 1)  # one image per call
    _, kept, alone = device_batch(paths, pipeline)
    assert [item.path for item in kept] == [str(p) for p in paths]
    np.testing.assert_array_equal(alone, together)


def test_auto_decodes_on_the_device_only_for_cuda(tiny_encoder):
    assert DeviceDecoder.for_encoder(tiny_encoder, "auto", None) is None  # a CPU encoder
    assert DeviceDecoder.for_encoder(tiny_encoder, "cpu", None) is None
    assert isinstance(DeviceDecoder.for_encoder(tiny_encoder, "device", None), DeviceDecoder)


@pytest.fixture
def two_folders(tmp_path):
    folders = []
    for name in ("cpu", "device"):
        folder = tmp_path / name
        make_images(folder, 20, size=(160, 120))
        exif = Image.Exif()
        exif[decode.ORIENTATION_TAG] = 6
        save(photo(), folder / "turned.jpg", exif=exif)
        save(photo().convert("CMYK"), folder / "cmyk.jpg")  # a thread hands it to a worker
        photo(seed=3).save(folder / "flat.png")  # straight to a worker
        whole = (folder / "turned.jpg").read_bytes()
        (folder / "cut.jpg").write_bytes(whole[: len(whole) // 2])
        folders.append(folder)
    return folders


def test_ingest_stores_the_same_rows_on_either_path(database, tiny_encoder, two_folders):
    cpu_dir, device_dir = two_folders
    skips: dict[str, list[str]] = {"cpu": [], "device": []}
    for folder, mode in ((cpu_dir, "cpu"), (device_dir, "device")):
        summary = ingest(
            [str(folder)],
            database=database,
            encoder=tiny_encoder,
            decode=mode,
            workers=2,  # 23 files: the worker pool runs prepare_task
            progress=False,
            on_skip=lambda path, reason, mode=mode: skips[mode].append(
                f"{Path(path).name}: {reason}"
            ),
        )
        assert summary.new == 23
    assert skips["cpu"] == skips["device"] == [f"cut.jpg: {files.CORRUPT}"]
    rows = table(database)
    with database.connect() as conn:
        hashes = dict(conn.execute("SELECT path, phash::text FROM clipdb.images").fetchall())
        unread = conn.execute(
            "SELECT count(*) FROM clipdb.images WHERE metadata_version IS NULL"
        ).fetchone()
    assert unread == (0,)
    for cpu_path in sorted(p for p in rows if p.startswith(str(cpu_dir))):
        device_path = cpu_path.replace(str(cpu_dir), str(device_dir))
        cpu_row, device_row = rows[cpu_path], rows[device_path]
        assert cpu_row[0] == device_row[0]  # sha256 of the same bytes
        assert cpu_row[3:5] == device_row[3:5]  # width, height (upright)
        cosine = float(np.dot(cpu_row[5], device_row[5]))
        assert cosine > 0.999, (cpu_path, cosine)
        differing = sum(a != b for a, b in zip(hashes[cpu_path], hashes[device_path], strict=True))
        assert differing <= 4  # bit(64): the CPU path's hash starts from a draft decode


@pytest.mark.slow
def test_decode_flag_on_the_cli(database, tmp_path):
    make_images(tmp_path / "pics", 3)
    args = [str(tmp_path / "pics"), "--model", TINY_MODEL, "--pretrained", "none", "--json"]
    bad = run_module("clipdb.ingest", *args, "--decode", "gpu")
    assert bad.returncode == 2 and "--decode" in bad.stderr
    good = run_module("clipdb.ingest", *args, "--decode", "device", "--backend", "torch")
    assert good.returncode == 0, good.stderr
    assert '"new": 3' in good.stdout


def test_jpegs_are_prepared_in_threads_and_full_decodes_stay_in_workers(
    tiny_encoder, two_folders, monkeypatch
):
    from clipdb.ingest.pipeline import decoded_images

    folder = two_folders[1]
    paths = sorted(str(p) for p in folder.iterdir())
    stats: dict = {}  # no scan: each file is read as it is now
    here: list[str] = []  # prepare_jpeg calls made in this process (workers cannot append)
    real = device_decode.prepare_jpeg
    monkeypatch.setattr(
        device_decode, "prepare_jpeg", lambda path, *a: here.append(path) or real(path, *a)
    )
    pipeline = tiny_encoder.pixel_pipeline
    items = list(
        decoded_images(
            paths, stats, pipeline, workers=2, read_ahead=8, max_pixels=None, on_device=True
        )
    )
    assert [item.path for item in items] == paths  # in order
    jpegs = [p for p in paths if p.endswith(".jpg")]
    assert sorted(here) == jpegs  # every .jpg prepared here, the PNG never
    by_name = {Path(item.path).name: item for item in items}
    assert by_name["cmyk.jpg"].pixels is not None and by_name["cmyk.jpg"].jpeg is None
    assert by_name["flat.png"].pixels is not None
    assert by_name["img_0000.jpg"].jpeg is not None and by_name["img_0000.jpg"].pixels is None


class _Deferred:
    """The real tiny encoder, reporting a CUDA device and logging when each batch's encoding
    starts and when its result is taken: what ingest's one-batch-in-flight overlap sees."""

    device = "cuda"  # only read to choose the overlap; the work runs on the CPU

    def __init__(self, encoder, log: list[str]) -> None:
        self.inner, self.log = encoder, log

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def start_encode_images(self, pixels):
        index = sum(entry.startswith("start") for entry in self.log)
        self.log.append(f"start {index}")
        done = self.inner.encode_images(pixels)

        def result():
            self.log.append(f"result {index}")
            return done

        return result


def test_on_cuda_the_next_batch_starts_before_this_one_is_stored(database, tiny_encoder, tmp_path):
    make_images(tmp_path, 10)
    log: list[str] = []
    summary = ingest(
        [str(tmp_path)],
        database=database,
        encoder=_Deferred(tiny_encoder, log),
        decode="cpu",
        batch_size=4,
        workers=0,
        progress=False,
    )
    assert summary.new == 10 and len(table(database)) == 10
    assert log == ["start 0", "start 1", "result 0", "start 2", "result 1", "result 2"]


def test_out_of_device_memory_in_a_resize_sends_those_files_the_cpu_way(
    tiny_encoder, tmp_path, monkeypatch
):
    pipeline = tiny_encoder.pixel_pipeline
    paths = [save(photo(seed=s), tmp_path / f"p{s}.jpg") for s in range(3)]

    def no_memory(*args, **kwargs):
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(device_decode, "_resize", no_memory)
    skips: list = []
    items, kept, pixels = device_batch(paths, pipeline, skips)
    assert skips == [] and [item.path for item in kept] == [str(p) for p in paths]
    workers = pipeline.to_array([decode.decode_task(str(p), pipeline, None).pixels for p in paths])
    np.testing.assert_array_equal(pixels, workers)  # PIL's pixels, exactly


@pytest.mark.parametrize("value", [0, 9, 65535])
def test_an_orientation_outside_1_to_8_turns_nothing(tiny_encoder, tmp_path, value):
    pipeline = tiny_encoder.pixel_pipeline
    exif = Image.Exif()
    exif[decode.ORIENTATION_TAG] = value
    path = save(photo(), tmp_path / "odd.jpg", exif=exif)
    items, kept, pixels = device_batch([path], pipeline)
    expected = reference_pixels(path, pipeline)
    assert items[0].orientation == 1 and (kept[0].width, kept[0].height) == (300, 200)
    assert (expected.width, expected.height) == (300, 200)
    assert np.abs(pixels - pipeline.to_array([expected.pixels])).max() < 0.031
