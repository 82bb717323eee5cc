"""What every caller may use of an encoder, whichever backend runs it.

The torch :class:`~clipdb.encoders.torch.ClipEncoder` and the OpenVINO
:class:`~clipdb.encoders.openvino.OpenVinoEncoder` both satisfy :class:`Encoder`, so ingest,
search, embed and serve take an ``Encoder`` and never ask ``getattr`` what it might have.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np
from PIL import Image

from clipdb.models import ModelSpec

if TYPE_CHECKING:  # torch is imported only where it runs: the OpenVINO path never needs it
    import torch

    from clipdb.pixels import PixelPipeline


@runtime_checkable
class Encoder(Protocol):
    """A loaded CLIP model: images and texts to L2-normalised float32 vectors of width ``dim``."""

    spec: ModelSpec
    dim: int
    precision: str  # the precision it computes at, after "auto" was resolved
    backend: str  # "torch" or "openvino"

    @property
    def architecture(self) -> str: ...

    @property
    def pretrained(self) -> str: ...

    @property
    def image_size(self) -> tuple[int, int]: ...

    @property
    def device(self) -> torch.device: ...

    @property
    def preprocess(self) -> Callable[[Image.Image], Any]:
        """open_clip's eval transform (PIL image -> tensor)."""
        ...

    @property
    def tokenizer(self) -> Callable[[list[str]], Any]:
        """Texts -> token ids (N, context length)."""
        ...

    @property
    def pixel_pipeline(self) -> PixelPipeline:
        """The model's preprocessing as ingest's decode workers compute it."""
        ...

    def encode_images(self, pixels: torch.Tensor | np.ndarray) -> np.ndarray:
        """Preprocessed image batch (N, 3, H, W) -> (N, dim)."""
        ...

    def start_encode_images(self, pixels: torch.Tensor | np.ndarray) -> Callable[[], np.ndarray]:
        """:meth:`encode_images` begun; call the result for the vectors. Only a CUDA encoder
        returns before the work is done (ingest decodes the next batch meanwhile)."""
        ...

    def encode_pil(self, images: Sequence[Image.Image]) -> np.ndarray: ...

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray: ...
