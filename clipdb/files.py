"""Finding image files, hashing them, and decoding them robustly into model-ready pixels.

Everything here runs without a model and (apart from :class:`PixelPipeline`) without torch, so
worker processes stay light. Bad files never raise: they come back as a reason string, which
the caller prints as ``skipping <path>: <reason>``.
"""

from __future__ import annotations

import errno
import fnmatch
import hashlib
import io
import os
import stat
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image, ImageOps

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff"}
)
ORIENTATION_TAG = 0x0112
SWAPPED_ORIENTATIONS = (5, 6, 7, 8)  # EXIF orientations that turn the image by 90 degrees
# JPEG draft decoding keeps at least this many times the model's input size on the short side,
# so the resize that follows still averages over several source pixels (see INGEST.md).
DRAFT_MARGIN = 2

# Skip reasons: the keys of IngestSummary.skipped and the text after "skipping <path>: ".
BROKEN_SYMLINK = "broken symlink"
SYMLINK_LOOP = "symlink loop"
NOT_REGULAR = "not a regular file"
PERMISSION_DENIED = "permission denied"
UNREADABLE = "unreadable"
EMPTY = "empty file"
NOT_IMAGE = "not an image"
CORRUPT = "truncated or corrupt image"
TOO_LARGE = "too many pixels"


@dataclass(frozen=True)
class FileStat:
    """An image file found on disk: absolute (not symlink-resolved) path, size and mtime."""

    path: str
    size: int
    mtime_ns: int


@dataclass
class ScanResult:
    files: list[FileStat] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)


def is_image_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _excluded(path: str, root: str, patterns: Sequence[str]) -> bool:
    if not patterns:
        return False
    relative = os.path.relpath(path, root) if path != root else os.path.basename(path)
    names = (os.path.basename(path), relative, path)
    return any(fnmatch.fnmatch(name, pattern) for pattern in patterns for name in names)


def _stat_reason(err: OSError) -> str:
    if err.errno == errno.ELOOP:
        return SYMLINK_LOOP
    if err.errno in (errno.EACCES, errno.EPERM):
        return PERMISSION_DENIED
    return UNREADABLE


def scan(roots: Iterable[str | os.PathLike[str]], exclude: Sequence[str] = ()) -> ScanResult:
    """Image files under ``roots`` (directories recursively, or files named directly).

    Symlinks are followed; each directory is visited once, so symlink loops cannot hang.
    Paths stay as found (``os.path.abspath``, links not resolved) and come back sorted.
    """
    result = ScanResult()
    seen_dirs: set[tuple[int, int]] = set()
    seen_files: set[str] = set()

    def add_file(path: str, explicit: bool) -> None:
        if path in seen_files or not (explicit or is_image_name(path)):
            return
        seen_files.add(path)
        try:
            info = os.stat(path)
        except OSError as err:
            reason = _stat_reason(err)
            if err.errno == errno.ENOENT and os.path.islink(path):
                reason = BROKEN_SYMLINK
            result.skipped.append((path, reason))
            return
        if not stat.S_ISREG(info.st_mode):
            result.skipped.append((path, NOT_REGULAR))
            return
        result.files.append(FileStat(path, info.st_size, info.st_mtime_ns))

    def walk(directory: str, root: str) -> None:
        try:
            info = os.stat(directory)
        except OSError as err:
            result.skipped.append((directory, _stat_reason(err)))
            return
        key = (info.st_dev, info.st_ino)
        if key in seen_dirs:
            return
        seen_dirs.add(key)
        try:
            with os.scandir(directory) as entries:
                names = sorted(entry.name for entry in entries)
        except OSError as err:
            result.skipped.append((directory, _stat_reason(err)))
            return
        for name in names:
            path = os.path.join(directory, name)
            if _excluded(path, root, exclude):
                continue
            try:
                is_dir = os.path.isdir(path)  # follows symlinks; False for broken/looping ones
            except OSError:
                is_dir = False
            if is_dir:
                walk(path, root)
            else:
                add_file(path, explicit=False)

    for raw_root in roots:
        root = os.path.abspath(os.fspath(raw_root))
        if os.path.isdir(root):
            walk(root, root)
        else:
            add_file(root, explicit=True)
    result.files.sort(key=lambda f: f.path)
    return result


def sha256_file(path: str) -> bytes:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.digest()


def hash_task(path: str) -> tuple[str, bytes | None, str | None]:
    """(path, sha256, None) or (path, None, reason): for the move-detection pass."""
    try:
        return path, sha256_file(path), None
    except OSError as err:
        return path, None, _stat_reason(err)


class ImageError(Exception):
    """A file that cannot be used as an image; ``str(err)`` is the skip reason."""


def _to_rgb(image: Image.Image) -> Image.Image:
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


def open_image(
    source: str | bytes,
    *,
    max_pixels: int | None = None,
    draft_size: int | None = None,
) -> tuple[Image.Image, int, int]:
    """Decode a file (path or its bytes) to an upright RGB image.

    Returns the image and the full-resolution width and height after EXIF orientation. With
    ``draft_size``, JPEGs are decoded at the smallest 1/2, 1/4 or 1/8 scale whose short side
    is still at least ``draft_size`` pixels. Raises :class:`ImageError` with the skip reason.
    """
    data = source if isinstance(source, bytes) else _read(source)
    if not data:
        raise ImageError(EMPTY)
    limit = max_pixels or Image.MAX_IMAGE_PIXELS
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # DecompressionBombWarning: we check the limit
            opened = Image.open(io.BytesIO(data))
            width, height = opened.size
            if limit and width * height > limit:
                raise ImageError(TOO_LARGE)
            orientation = opened.getexif().get(ORIENTATION_TAG, 1)
            if draft_size and opened.format == "JPEG":
                opened.draft(opened.mode, (draft_size, draft_size))
            opened.load()  # first frame of animations
            rgb = _to_rgb(ImageOps.exif_transpose(opened) or opened)
    except ImageError:
        raise
    except Image.DecompressionBombError:
        raise ImageError(TOO_LARGE) from None
    except Image.UnidentifiedImageError:
        raise ImageError(NOT_IMAGE) from None
    except (OSError, SyntaxError, ValueError, IndexError, TypeError, EOFError):
        raise ImageError(CORRUPT) from None
    if orientation in SWAPPED_ORIENTATIONS:
        width, height = height, width
    return rgb, width, height


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError as err:
        raise ImageError(_stat_reason(err)) from None


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
            return self.whole(image).numpy()
        for step in self.pil_steps:
            if step[0] == "resize":
                image = _resize(image, step[1], step[2], step[3])
            else:
                image = _center_crop(image, step[1], step[2])
        if image.mode != "RGB":
            image = image.convert("RGB")
        return np.asarray(image, dtype=np.uint8)

    def to_batch(self, arrays: Sequence[np.ndarray]) -> Any:
        """Worker outputs -> the float batch the model takes (N, 3, H, W)."""
        import torch

        batch = torch.from_numpy(np.stack(arrays))
        if self.whole is not None:
            return batch
        batch = batch.permute(0, 3, 1, 2).contiguous().float().div(255)
        mean = torch.tensor(self.mean, dtype=batch.dtype).view(1, -1, 1, 1)
        std = torch.tensor(self.std, dtype=batch.dtype).view(1, -1, 1, 1)
        return batch.sub_(mean).div_(std)


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


def _resize(
    image: Image.Image, size: tuple[int, ...], resample: int, max_size: int | None
) -> Image.Image:
    """torchvision.transforms.functional.resize for PIL images."""
    width, height = image.size
    if len(size) == 2:
        new_height, new_width = size
    else:
        short, long = (width, height) if width <= height else (height, width)
        new_short, new_long = size[0], int(size[0] * long / short)
        if max_size is not None and new_long > max_size:
            new_short, new_long = int(max_size * new_short / new_long), max_size
        new_width, new_height = (new_short, new_long) if width <= height else (new_long, new_short)
    if (new_width, new_height) == (width, height):
        return image
    return image.resize((new_width, new_height), resample)


def _center_crop(image: Image.Image, height: int, width: int) -> Image.Image:
    """torchvision's center_crop: zero padding first when the image is smaller."""
    image_width, image_height = image.size
    if width > image_width:
        left = -((width - image_width) // 2)
    else:
        left = int(round((image_width - width) / 2.0))
    if height > image_height:
        top = -((height - image_height) // 2)
    else:
        top = int(round((image_height - height) / 2.0))
    return image.crop((left, top, left + width, top + height))


@dataclass(frozen=True)
class Decoded:
    """What a worker sends back for one file: pixels and identity, or a skip reason."""

    path: str
    sha256: bytes | None = None
    width: int = 0
    height: int = 0
    pixels: np.ndarray | None = None
    reason: str | None = None


def decode_task(
    path: str, pipeline: PixelPipeline, max_pixels: int | None, draft: bool = True
) -> Decoded:
    """Read once, hash, decode, preprocess (a worker's whole job for one file)."""
    try:
        data = _read(path)
        draft_size = pipeline.input_size * DRAFT_MARGIN if draft else None
        image, width, height = open_image(data, max_pixels=max_pixels, draft_size=draft_size)
        pixels = pipeline.to_pixels(image)
    except ImageError as err:
        return Decoded(path, reason=str(err))
    except MemoryError:
        return Decoded(path, reason=TOO_LARGE)
    return Decoded(path, hashlib.sha256(data).digest(), width, height, pixels)


def worker_init() -> None:
    """Workers leave Ctrl-C to the parent, which shuts them down."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
