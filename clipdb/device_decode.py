"""Batched JPEG decoding on the encoder's device (nvJPEG on CUDA): the GPU ingest path.

Why: a GPU encodes ViT-B/32 far faster than CPU cores decode 1600x1200 JPEGs (one core does
~130/s with PIL draft decoding), so on CUDA the decode workers only read, hash and parse
headers (size limit, EXIF orientation, photo metadata) and send the compressed bytes on. The
encoding process decodes whole batches with ``torchvision.io.decode_jpeg(device=...)``, turns
them upright and resizes, crops and normalises them where they are, and derives the pHash
from a 32x32 luma square made there too (within a few bits of the CPU path's, which starts
from a draft decode). Everything else goes the CPU way, decided per file: other formats,
CMYK JPEGs, a model transform that is not resize + centre crop, and any JPEG the device
decoder refuses (a refused batch is retried file by file; a file refused alone is decoded by
PIL, which says whether it is usable at all).
"""

from __future__ import annotations

import dataclasses
import hashlib
import warnings
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from clipdb import decode, files, pixels
from clipdb.decode import Decoded, ImageError
from clipdb.exif import read_metadata
from clipdb.phash import SIZE as PHASH_SIZE
from clipdb.phash import square_phash
from clipdb.pixels import PixelPipeline

if TYPE_CHECKING:
    import torch

    from clipdb.encoders import Encoder

JPEG_MODES = ("RGB", "L")  # what nvJPEG decodes (YCbCr or grey); CMYK/YCCK go to PIL
# Decoded pixels one decode_jpeg call may hold at once (uint8 RGB: 3 bytes each; the float
# resize of one group of equal-sized images is capped the same way).
CHUNK_PIXELS = 1 << 27


def device_decodable(image_format: str | None, mode: str, pipeline: PixelPipeline) -> bool:
    """Whether a file opened as ``image_format``/``mode`` can take the device path."""
    return (
        image_format == "JPEG"  # not MPO (Pillow's format for multi-picture JPEGs)
        and mode in JPEG_MODES
        and pipeline.whole is None
        and all(step[0] == "crop" or step[2] in pixels.FAST_RESAMPLE for step in pipeline.pil_steps)
    )


JPEG_SUFFIXES = (".jpg", ".jpeg", ".jpe", ".jfif")  # named so: prepared in threads (pipeline)


def prepare_task(
    path: str,
    pipeline: PixelPipeline,
    max_pixels: int | None,
    found: files.FileStat | None = None,
) -> Decoded:
    """The device path's job for one file: read once, hash, check the header; a JPEG comes
    back as its bytes, anything else decoded as :func:`clipdb.decode.decode_task` does."""
    try:
        data = decode.read_file(path, found)
    except ImageError as err:
        return Decoded(path, reason=str(err))
    prepared = _prepared(path, data, pipeline, max_pixels)
    return decode.decode_bytes(path, data, pipeline, max_pixels) if prepared is None else prepared


def prepare_jpeg(
    path: str,
    pipeline: PixelPipeline,
    max_pixels: int | None,
    found: files.FileStat | None = None,
) -> Decoded | None:
    """:func:`prepare_task` without decoding anything (safe in a thread: only Pillow's header
    parser runs); None when the file needs a full decode on the CPU."""
    try:
        data = decode.read_file(path, found)
    except ImageError as err:
        return Decoded(path, reason=str(err))
    return _prepared(path, data, pipeline, max_pixels)


def _prepared(
    path: str, data: bytes, pipeline: PixelPipeline, max_pixels: int | None
) -> Decoded | None:
    try:
        with decode.opened_image(data, max_pixels) as opened:
            image_format, mode = opened.format, opened.mode
            width, height = opened.size
            tag = opened.getexif().get(decode.ORIENTATION_TAG, 1)
    except ImageError as err:
        return Decoded(path, reason=str(err))
    except MemoryError:
        return Decoded(path, reason=files.TOO_LARGE)
    if not device_decodable(image_format, mode, pipeline):
        return None
    # As ImageOps.exif_transpose: a value that is not one of the 8 orientations turns nothing.
    orientation = tag if isinstance(tag, int) and 1 <= tag <= 8 else 1
    if orientation in decode.SWAPPED_ORIENTATIONS:
        width, height = height, width
    return Decoded(
        path,
        hashlib.sha256(data).digest(),
        width,
        height,
        metadata=read_metadata(data, decode.PILLOW_FORMATS),
        jpeg=data,
        orientation=orientation,
    )


def on_cuda(encoder: Encoder) -> bool:
    """Whether ``encoder`` (either backend) computes on a CUDA device."""
    return str(encoder.device).startswith("cuda")


def decode_jpeg_available() -> bool:
    """torchvision's decode_jpeg (deprecated in 0.29 for TorchCodec; gone in a later one)."""
    try:
        from torchvision.io import decode_jpeg  # noqa: F401
    except ImportError:
        return False
    return True


class DeviceDecoder:
    """Turns a batch of prepared items into the model's float batch on ``device``."""

    def __init__(self, pipeline: PixelPipeline, device: Any, max_pixels: int | None) -> None:
        import torch

        assert pipeline.mean is not None and pipeline.std is not None  # see for_encoder
        self.pipeline = pipeline
        self.device = torch.device(device)
        self.max_pixels = max_pixels
        # Made once: a tensor built from host lists per batch would wait for the GPU.
        self.mean = torch.tensor(pipeline.mean, device=self.device).view(1, -1, 1, 1)
        self.std = torch.tensor(pipeline.std, device=self.device).view(1, -1, 1, 1)

    @classmethod
    def for_encoder(
        cls, encoder: Encoder, mode: str, max_pixels: int | None
    ) -> DeviceDecoder | None:
        """The decoder ``mode`` asks for with this encoder, or None for the CPU path."""
        if mode == "cpu" or (mode == "auto" and not on_cuda(encoder)):
            return None
        if encoder.pixel_pipeline.whole is not None or not decode_jpeg_available():
            return None  # a transform the workers must run whole: nothing to do here
        return cls(encoder.pixel_pipeline, encoder.device, max_pixels)

    def batch(self, items: Sequence[Decoded], on_skip: Callable[[str, str], None]) -> ModelBatch:
        """The items kept and their float batch on the device; items the device refused and
        PIL cannot use either are reported to ``on_skip`` and left out, the rest keep their
        order. Nothing here waits for the GPU (the pHashes arrive with ``finished()``)."""
        import torch

        images = iter(self._decode_jpegs([item for item in items if item.jpeg is not None]))
        kept: list[Decoded] = []
        pixels: list[torch.Tensor] = []  # uint8 CHW at the model's size, on the device
        squares: list[torch.Tensor] = []  # the device-decoded items' 32x32 luma squares
        for item in items:
            if item.jpeg is not None:
                image = next(images)
                if image is None:  # the device said no: PIL decides
                    item = decode.decode_bytes(item.path, item.jpeg, self.pipeline, self.max_pixels)
                    if item.reason is not None:
                        on_skip(item.path, item.reason)
                        continue
                else:
                    kept.append(dataclasses.replace(item, jpeg=None))
                    pixels.append(image[0])
                    squares.append(image[1])
                    continue
            kept.append(item)
            pixels.append(self._host_pixels(item))
        if not pixels:
            return ModelBatch(kept, torch.zeros((0, 3, 1, 1), device=self.device))
        return ModelBatch(kept, self._normalised(torch.stack(pixels)), _to_host(squares))

    def _host_pixels(self, item: Decoded) -> torch.Tensor:
        """A worker's uint8 HWC pixels as CHW on the device (pinned for an async copy)."""
        import torch

        assert item.pixels is not None
        host = torch.from_numpy(np.require(item.pixels, np.uint8, ("C", "W")))  # writable
        if self.device.type == "cuda":
            host = host.pin_memory()
        return host.to(self.device, non_blocking=True).permute(2, 0, 1)

    def _normalised(self, batch: torch.Tensor) -> torch.Tensor:
        return (batch.float() / 255.0 - self.mean) / self.std

    def _decode_jpegs(self, items: list[Decoded]) -> list[tuple[torch.Tensor, torch.Tensor] | None]:
        """Each JPEG as (model-size uint8 CHW, 32x32 luma square), both on the device, or None
        where the device refused it."""
        results: list[tuple[torch.Tensor, torch.Tensor] | None] = []
        for chunk in _chunks(items, lambda item: item.width * item.height):
            images = self._decode_chunk(chunk)
            groups: dict[tuple[int, int], list[int]] = {}
            for index, (item, image) in enumerate(zip(chunk, images, strict=True)):
                if image is not None:
                    image = _upright(image, item.orientation)
                    images[index] = image
                    groups.setdefault((image.shape[-2], image.shape[-1]), []).append(index)
            done: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
            for (height, width), indices in groups.items():  # equal sizes resize together
                per_call = max(1, CHUNK_PIXELS // (height * width))
                for start in range(0, len(indices), per_call):
                    try:
                        self._resize_group(indices[start : start + per_call], images, done)
                    except RuntimeError:  # e.g. out of GPU memory: PIL decides for these
                        continue
            results.extend(done.get(index) for index in range(len(chunk)))
        return results

    def _decode_chunk(self, chunk: list[Decoded]) -> list[torch.Tensor | None]:
        import torch
        from torchvision.io import ImageReadMode, decode_jpeg

        def run(datas: list[bytes]) -> list[torch.Tensor]:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)  # see decode_jpeg_available
                # Views of the bytes, not copies: decode_jpeg only reads them ("not writable").
                warnings.simplefilter("ignore", UserWarning)
                encoded = [torch.frombuffer(data, dtype=torch.uint8) for data in datas]
                decoded: list[torch.Tensor] = decode_jpeg(
                    encoded, mode=ImageReadMode.RGB, device=self.device
                )
            return decoded

        datas = [item.jpeg for item in chunk if item.jpeg is not None]
        try:
            return list(run(datas))
        except (RuntimeError, ValueError):  # one bad file fails the whole call: retry alone
            pass
        alone: list[torch.Tensor | None] = []
        for data in datas:
            try:
                alone.append(run([data])[0])
            except (RuntimeError, ValueError):
                alone.append(None)
        return alone

    def _resize_group(
        self,
        indices: list[int],
        images: list[torch.Tensor | None],
        done: dict[int, tuple[torch.Tensor, torch.Tensor]],
    ) -> None:
        """Resize + crop equal-sized images together; their pHash squares from the same tensor."""
        import torch

        group = torch.stack([images[i] for i in indices])  # type: ignore[misc]
        squares = _luma_squares(group)
        for step in self.pipeline.pil_steps:
            if step[0] == "resize":
                group = _resize(group, step[1], pixels.FAST_RESAMPLE[step[2]], step[3])
            else:
                group = _center_crop(group, step[1], step[2])
        for position, index in enumerate(indices):
            done[index] = (group[position], squares[position])
            images[index] = None  # the full-size image is no longer needed


def _chunks(items: list[Any], pixels: Callable[[Any], int]) -> list[list[Any]]:
    """``items`` in runs of at most CHUNK_PIXELS pixels (at least one item each)."""
    chunks: list[list[Any]] = []
    total = CHUNK_PIXELS
    for item in items:
        size = pixels(item)
        if total + size > CHUNK_PIXELS:
            chunks.append([])
            total = 0
        chunks[-1].append(item)
        total += size
    return chunks


def _upright(image: torch.Tensor, orientation: int) -> torch.Tensor:
    """``image`` (C, H, W) turned as PIL's ImageOps.exif_transpose turns it."""
    if orientation == 2:
        return image.flip(-1)
    if orientation == 3:
        return image.flip(-2, -1)
    if orientation == 4:
        return image.flip(-2)
    if orientation == 5:
        return image.transpose(-2, -1)
    if orientation == 6:
        return image.rot90(-1, (-2, -1))
    if orientation == 7:
        return image.transpose(-2, -1).flip(-2, -1)
    if orientation == 8:
        return image.rot90(1, (-2, -1))
    return image


def _resize(
    group: torch.Tensor, size: tuple[int, ...], mode: str, max_size: int | None
) -> torch.Tensor:
    """pixels._resize for an (N, 3, H, W) uint8 tensor: the same sizes and kernel."""
    import torch

    height, width = group.shape[-2:]
    new_width, new_height = pixels.resized_size(width, height, size, max_size)
    if (new_width, new_height) == (width, height):
        return group
    if group.device.type == "cpu":  # torch's uint8 kernel, as the CPU path uses
        source = group.contiguous(memory_format=torch.channels_last)
    else:  # CUDA's antialiased kernels take floats; rounded back to uint8 as on the CPU
        source = group.float()
    resized = torch.nn.functional.interpolate(
        source, size=(new_height, new_width), mode=mode, antialias=True, align_corners=False
    )
    if resized.dtype != torch.uint8:
        resized = resized.round_().clamp_(0, 255).to(torch.uint8)
    return resized


def _center_crop(group: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """pixels._center_crop for an (N, 3, H, W) tensor: zero padding where it is smaller."""
    import torch

    image_height, image_width = group.shape[-2:]
    left, top = pixels.crop_origin(image_width, image_height, height, width)
    pad = (
        max(0, -left),
        max(0, left + width - image_width),
        max(0, -top),
        max(0, top + height - image_height),
    )
    if any(pad):
        group = torch.nn.functional.pad(group, pad)
        left, top = max(0, left), max(0, top)
    return group[..., top : top + height, left : left + width]


def _luma_squares(group: torch.Tensor) -> torch.Tensor:
    """The 32x32 uint8 squares clipdb.phash hashes, of (N, 3, H, W) uint8 images: PIL's
    integer luma, a box average (adaptive average pooling), rounded; on their device."""
    import torch

    rgb = group.to(torch.int32)
    luma = (rgb[:, 0] * 19595 + rgb[:, 1] * 38470 + rgb[:, 2] * 7471 + 0x8000) >> 16
    square = torch.nn.functional.adaptive_avg_pool2d(luma.unsqueeze(1).float(), PHASH_SIZE)
    return square.round().clamp(0, 255).to(torch.uint8).squeeze(1)


def _to_host(squares: list[torch.Tensor]) -> tuple[torch.Tensor, Any] | None:
    """``squares`` copied to (pinned) host memory without waiting: (tensor, CUDA event)."""
    import torch

    if not squares:
        return None
    stacked = torch.stack(squares)
    if stacked.device.type != "cuda":
        return stacked, None
    host = torch.empty(stacked.shape, dtype=torch.uint8, pin_memory=True)
    host.copy_(stacked, non_blocking=True)
    copied = torch.cuda.Event()  # type: ignore[no-untyped-call]
    copied.record()
    return host, copied


@dataclasses.dataclass
class ModelBatch:
    """A batch ready for the encoder: the items kept (in order), the model's input for them
    (on the device, or the CPU path's host array), and the device-decoded items' pHash
    squares on their way to the host."""

    items: list[Decoded]
    pixels: Any
    squares: tuple[torch.Tensor, Any] | None = None

    def finished(self) -> list[Decoded]:
        """The items with every pHash; waits for the squares' copy (by now long done)."""
        if self.squares is None:
            return self.items
        host, copied = self.squares
        if copied is not None:
            copied.synchronize()
        hashes = iter(square_phash(square) for square in host.numpy())
        return [
            item
            if item.phash is not None or item.pixels is not None
            else dataclasses.replace(item, phash=next(hashes))
            for item in self.items
        ]
