"""Bytes -> upright RGB -> model-ready pixels, and thumbnails, robust against bad files.

Everything here runs without a model; torch is used only for the fast uint8 resize
(:data:`FAST_RESAMPLE`) and :meth:`PixelPipeline.to_batch`, imported at call time. Bad files
raise :class:`ImageError`, whose text is the skip reason.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from clipdb import files, formats, raw
from clipdb.exif import PhotoMetadata
from clipdb.files import CORRUPT, EMPTY, NOT_IMAGE, TOO_LARGE
from clipdb.phash import phash

ORIENTATION_TAG = 0x0112
SWAPPED_ORIENTATIONS = (5, 6, 7, 8)  # EXIF orientations that turn the image by 90 degrees
# JPEG draft decoding keeps at least this many times the model's input size on the short side,
# so the resize that follows still averages over several source pixels (see INGEST.md).
DRAFT_MARGIN = 2
# The only decoders Pillow may use: those of files.IMAGE_EXTENSIONS. Pillow otherwise guesses
# from the content, so EPS bytes in a .jpg would go to Ghostscript and fuzzed DDS/SPIDER bytes
# to decoders that raise NotImplementedError/AttributeError. (+ HEIF/AVIF: clipdb.formats)
PILLOW_FORMATS = formats.BASE_FORMATS


class ImageError(Exception):
    """A file that cannot be used as an image; ``str(err)`` is the skip reason."""


def to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode to RGB: alpha over white, 16-bit scaled down rather than clipped."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode.startswith("I") or mode == "F":
        values = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if values.max(initial=0) > 255 else 255.0
        gray = np.clip(values * (255.0 / peak) + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(gray, "L").convert("RGB")
    if mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


@contextmanager
def opened_image(
    data: bytes, max_pixels: int | None, *, name: str | None = None, draft_size: int | None = None
) -> Iterator[Image.Image]:
    """``data`` opened by one of the allowed decoders, its pixel count checked from the header
    before anything is decoded; whatever fails inside (any decoder error) is an ImageError.
    ``name`` and ``draft_size``: see :func:`clipdb.raw.open_any`."""
    if not data:
        raise ImageError(EMPTY)
    limit = max_pixels or Image.MAX_IMAGE_PIXELS
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # DecompressionBombWarning: we check the limit
            opened = raw.open_any(data, limit, name, draft_size)
            width, height = opened.size
            if limit and width * height > limit:
                raise ImageError(TOO_LARGE)
            yield opened
    except ImageError:
        raise
    except raw.Refused as err:  # too many pixels, or a plugin this install lacks
        raise ImageError(str(err)) from None
    except Image.DecompressionBombError:
        raise ImageError(TOO_LARGE) from None
    except UnidentifiedImageError:
        raise ImageError(NOT_IMAGE) from None
    except MemoryError:
        raise ImageError(TOO_LARGE) from None
    except Exception:  # noqa: BLE001 - any decoder failure is one bad file, never an abort
        raise ImageError(CORRUPT) from None


def open_image(
    source: str | bytes,
    *,
    max_pixels: int | None = None,
    draft_size: int | None = None,
    name: str | None = None,
) -> tuple[Image.Image, int, int]:
    """Decode a file (path or its bytes; ``name``: the bytes' file name) to upright RGB.

    Returns the image and the full-resolution width and height after EXIF orientation. With
    ``draft_size``, JPEGs are decoded at the smallest 1/2, 1/4 or 1/8 scale whose short side
    is still at least ``draft_size`` pixels. Raises :class:`ImageError` with the skip reason.
    """
    data = source if isinstance(source, bytes) else read_file(source)
    name = name if isinstance(source, bytes) else source
    with opened_image(data, max_pixels, name=name, draft_size=draft_size) as opened:
        width, height = opened.info.get("full_size", opened.size)  # a RAW's sensor size
        orientation = opened.getexif().get(ORIENTATION_TAG, 1)
        if draft_size and opened.format == "JPEG":
            opened.draft(opened.mode, (draft_size, draft_size))
        opened.load()  # first frame of animations
        rgb = to_rgb(ImageOps.exif_transpose(opened) or opened)
    if orientation in SWAPPED_ORIENTATIONS:
        width, height = height, width
    return rgb, width, height


def read_file(path: str, found: files.FileStat | None = None) -> bytes:
    """The bytes of ``path``; with ``found`` (its scan), only if it is still that file."""
    try:
        args = found.open_args() if found is not None else {}
        return files.read_regular(path, max_bytes=files.MAX_IMAGE_BYTES, **args)
    except files.FileRejected as err:
        raise ImageError(str(err)) from None


@dataclass(frozen=True)
class PixelPipeline:
    """The model's preprocessing, split so workers send uint8 pixels instead of floats.

    Resize and centre crop run in the workers on PIL images, re-stated as plain data
    (``pil_steps``) so workers never import torch; the float conversion and normalisation run
    batched in the encoding process. The arithmetic is that of torchvision's transforms, so
    results are bit-identical to ``preprocess(image)`` (tested). A transform of any other
    shape runs whole in the workers (``whole``).
    """

    input_size: int
    pil_steps: tuple[tuple[Any, ...], ...] = ()
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    whole: Any = None

    @classmethod
    def from_preprocess(cls, preprocess: Any, input_size: int) -> PixelPipeline:
        steps = list(getattr(preprocess, "transforms", []))
        names = [type(step).__name__ for step in steps]
        if "ToTensor" in names or "MaybeToTensor" in names:
            index = names.index("MaybeToTensor" if "MaybeToTensor" in names else "ToTensor")
            rest = steps[index + 1 :]
            pil_steps = [_pil_step(step) for step in steps[:index]]
            if (
                len(rest) == 1
                and type(rest[0]).__name__ == "Normalize"
                and all(step is not None for step in pil_steps)
            ):
                return cls(
                    input_size=input_size,
                    pil_steps=tuple(step for step in pil_steps if step),
                    mean=tuple(float(v) for v in rest[0].mean),
                    std=tuple(float(v) for v in rest[0].std),
                )
        return cls(input_size=input_size, whole=preprocess)

    def to_pixels(self, image: Image.Image) -> np.ndarray:
        """An RGB image -> uint8 HWC array (split mode) or float32 CHW array (whole mode)."""
        if self.whole is not None:
            return np.asarray(self.whole(image).numpy())
        for step in self.pil_steps:
            if step[0] == "resize":
                image = _resize(image, step[1], step[2], step[3])
            else:
                image = _center_crop(image, step[1], step[2])
        if image.mode != "RGB":
            image = image.convert("RGB")
        return np.asarray(image, dtype=np.uint8)

    def images_to_array(self, images: Sequence[Image.Image]) -> np.ndarray:
        """RGB images -> the model's float32 batch, in one process (what a query needs)."""
        return self.to_array([self.to_pixels(image) for image in images])

    def to_array(self, arrays: Sequence[np.ndarray]) -> np.ndarray:
        """Worker outputs -> the float32 batch the model takes (N, 3, H, W), torch-free."""
        batch = np.stack(arrays)
        if self.whole is not None:
            return batch.astype(np.float32, copy=False)
        assert self.mean is not None and self.std is not None
        mean = np.asarray(self.mean, dtype=np.float32).reshape(1, -1, 1, 1)
        std = np.asarray(self.std, dtype=np.float32).reshape(1, -1, 1, 1)
        chw: np.ndarray = batch.transpose(0, 3, 1, 2).astype(np.float32)  # as torchvision
        chw /= np.float32(255)
        chw -= mean
        chw /= std
        return chw

    def to_batch(self, arrays: Sequence[np.ndarray]) -> Any:
        """:meth:`to_array` as a torch tensor."""
        import torch

        return torch.from_numpy(self.to_array(arrays))


def _pil_step(step: Any) -> tuple[Any, ...] | None:
    """torchvision Resize/CenterCrop as data; () for a no-op; None if not understood."""
    name = type(step).__name__
    if name == "MaybeConvertMode" and getattr(step, "mode", "RGB") == "RGB":
        return ()  # images are RGB already
    if name == "Resize":
        from torchvision.transforms.functional import pil_modes_mapping

        size = step.size
        size = [size] if isinstance(size, int) else list(size)
        if len(size) not in (1, 2):
            return None
        return ("resize", tuple(size), int(pil_modes_mapping[step.interpolation]), step.max_size)
    if name == "CenterCrop":
        height, width = step.size
        return ("crop", int(height), int(width))
    return None


def resized_size(
    width: int, height: int, size: tuple[int, ...], max_size: int | None
) -> tuple[int, int]:
    """(width, height) after torchvision's Resize(size, max_size=max_size)."""
    if len(size) == 2:
        return size[1], size[0]
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = size[0], int(size[0] * long / short)
    if max_size is not None and new_long > max_size:
        new_short, new_long = int(max_size * new_short / new_long), max_size
    return (new_short, new_long) if width <= height else (new_long, new_short)


def _resize(
    image: Image.Image, size: tuple[int, ...], resample: int, max_size: int | None
) -> Image.Image:
    """torchvision.transforms.functional.resize for PIL images."""
    width, height = image.size
    new_width, new_height = resized_size(width, height, size, max_size)
    if (new_width, new_height) == (width, height):
        return image
    if resample in FAST_RESAMPLE and image.mode == "RGB":
        return _resize_uint8(image, new_width, new_height, FAST_RESAMPLE[resample])
    return image.resize((new_width, new_height), resample)


# PIL resample codes torch reproduces on uint8 tensors: its antialiased kernels are PIL's
# (within one level), vectorised, 8x PIL's resize and 1.44x the whole decode + resize step at
# min cosine 0.999998 on real photos (bench/bench_resize.py). torch is then imported in the
# decode workers, which preload it once in the forkserver (clipdb.ingest.pipeline).
FAST_RESAMPLE = {
    int(Image.Resampling.BICUBIC): "bicubic",
    int(Image.Resampling.BILINEAR): "bilinear",
}


def _resize_uint8(image: Image.Image, width: int, height: int, mode: str) -> Image.Image:
    import torch

    array = np.array(image, dtype=np.uint8)  # a writable copy: torch shares its memory
    tensor = torch.from_numpy(array).permute(2, 0, 1).unsqueeze(0)  # channels-last NCHW
    resized = torch.nn.functional.interpolate(
        tensor, size=(height, width), mode=mode, antialias=True, align_corners=False
    )
    return Image.fromarray(resized[0].permute(1, 2, 0).contiguous().numpy(), "RGB")


def _center_crop(image: Image.Image, height: int, width: int) -> Image.Image:
    """torchvision's center_crop: zero padding first when the image is smaller."""
    left, top = crop_origin(*image.size, height, width)
    return image.crop((left, top, left + width, top + height))


def crop_origin(image_width: int, image_height: int, height: int, width: int) -> tuple[int, int]:
    """(left, top) of torchvision's centre crop; negative where it pads with zeros."""
    if width > image_width:
        left = -((width - image_width) // 2)
    else:
        left = int(round((image_width - width) / 2.0))
    if height > image_height:
        top = -((height - image_height) // 2)
    else:
        top = int(round((image_height - height) / 2.0))
    return left, top


@dataclass(frozen=True)
class Decoded:
    """What a worker sends back for one file: pixels and identity, or a skip reason."""

    path: str
    sha256: bytes | None = None
    width: int = 0
    height: int = 0
    pixels: np.ndarray | None = None
    reason: str | None = None
    metadata: PhotoMetadata | None = None  # EXIF date/camera/place (clipdb.exif)
    phash: int | None = None  # clipdb.phash of the decoded image
    # Device decoding (clipdb.device_decode): the JPEG's bytes instead of pixels, and its
    # EXIF orientation, for the encoding process to decode, turn and resize in batches.
    jpeg: bytes | None = None
    orientation: int = 1
    frame_time: float | None = None  # a video's frame: seconds in (clipdb.ingest.video)
    first_frame: bool = False  # the first of its video's frames in this pass


def decode_task(
    path: str,
    pipeline: PixelPipeline,
    max_pixels: int | None,
    draft: bool = True,
    found: files.FileStat | None = None,
) -> Decoded:
    """Read once, hash, decode, preprocess (a worker's whole job for one file).

    ``found``: the scan of ``path``; a file swapped since (FIFO, device, link, other size or
    mtime) is skipped rather than read, so the stored identity is that of the bytes encoded.
    """
    try:
        data = read_file(path, found)
    except ImageError as err:
        return Decoded(path, reason=str(err))
    return decode_bytes(path, data, pipeline, max_pixels, draft)


def decode_bytes(
    path: str, data: bytes, pipeline: PixelPipeline, max_pixels: int | None, draft: bool = True
) -> Decoded:
    """:func:`decode_task` of bytes already read from ``path``."""
    try:
        draft_size = pipeline.input_size * DRAFT_MARGIN if draft else None
        image, width, height = open_image(
            data, max_pixels=max_pixels, draft_size=draft_size, name=path
        )
        pixels = pipeline.to_pixels(image)
        perceptual = phash(image)  # from the image already decoded: a 32x32 resize more
    except ImageError as err:
        return Decoded(path, reason=str(err))
    except MemoryError:
        return Decoded(path, reason=TOO_LARGE)
    except Exception:  # noqa: BLE001 - e.g. a resize failing on odd pixels: skip this file only
        return Decoded(path, reason=CORRUPT)
    # The header is parsed again (cheap, no pixels): open_image's signature stays as it is.
    metadata = raw.file_metadata(data, path)
    digest = hashlib.sha256(data).digest()
    return Decoded(path, digest, width, height, pixels, metadata=metadata, phash=perceptual)


# The draft size a hash-only backfill decodes JPEGs at: that of a 224-pixel model's ingest, so
# a backfilled hash equals the one ingest computes (and the box filter makes any draft close).
PHASH_DRAFT_SIZE = 224 * DRAFT_MARGIN


def phash_task(
    path: str, max_pixels: int | None, found: files.FileStat | None = None
) -> tuple[str, int | None, str | None]:
    """(path, pHash, None) or (path, None, skip reason): decode only, no model pixels; for
    rows indexed before clipdb stored hashes."""
    try:
        image, _, _ = open_image(
            read_file(path, found), max_pixels=max_pixels, draft_size=PHASH_DRAFT_SIZE, name=path
        )
        return path, phash(image), None
    except ImageError as err:
        return path, None, str(err)
    except MemoryError:
        return path, None, TOO_LARGE
    except Exception:  # noqa: BLE001 - one odd file must not stop the backfill
        return path, None, CORRUPT


def unusable(path: str, found: files.FileStat | None, max_pixels: int | None) -> str | None:
    """Why ``path`` cannot be used (a skip reason), or None: a full decode without a model,
    so files that are bad anyway never make ingest load one."""
    try:
        open_image(read_file(path, found), max_pixels=max_pixels, name=path)
    except ImageError as err:
        return str(err)
    except MemoryError:
        return TOO_LARGE
    return None


def worker_context() -> Any:
    """The multiprocessing context of every decode pool: forkserver (no fork of a process
    holding a model, threads and connections), preloading this module and torch, which
    resizes in the workers (FAST_RESAMPLE): imported once in the server, not per worker.
    The forkserver is one per process, so every pool must ask for the same preload."""
    import multiprocessing

    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["clipdb.decode", "torch"])
    return context


def worker_init() -> None:
    """Workers leave Ctrl-C to the parent, which shuts them down, and resize on one thread
    each: the pool is the parallelism, and the encoder needs the other cores."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:
        pass
