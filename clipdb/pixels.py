"""The model's preprocessing as data: torchvision's resize and centre crop re-stated for PIL
images (run in the decode workers, torch-free except the fast uint8 resize of
:data:`FAST_RESAMPLE`), and the normalisation, batched in the encoding process."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image


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
