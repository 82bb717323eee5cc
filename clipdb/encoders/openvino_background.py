"""A first OpenVINO load that converts in the background while ingest already works.

Why: converting a model to IR takes seconds (~10 s for ViT-B-32) and a first ingest used to
spend them before scanning its first batch. The torch model the conversion needs is loaded
first anyway, so it gives the pixel pipeline and the width at once; the conversion runs in a
thread and encode waits for it only when it first needs a tower. With ``meanwhile`` the batches
that come before the IR is ready are encoded by that torch model (same weights, fp32: cosine
>= 0.9999 against the IR, tests/test_backends.py).
"""

from __future__ import annotations

import contextlib
import sys
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from clipdb.encoders.openvino import OpenVinoEncoder, compile_cached, convert_when_missing
from clipdb.encoders.openvino_cache import cache_target
from clipdb.encoders.torch import ClipEncoder, load_torch
from clipdb.errors import ClipdbError
from clipdb.models import ModelSpec

if TYPE_CHECKING:
    import torch

    from clipdb.pixels import PixelPipeline


class ConvertingEncoder:
    """An :class:`~clipdb.encoders.Encoder` whose OpenVINO IR is still being converted.

    ``convert`` runs in a thread started here. A failing conversion is one warning line and
    torch encodes instead (as a failing OpenVINO load always did); a :class:`ClipdbError`
    from it is raised where the encoder is first used.
    """

    backend = "openvino"

    def __init__(
        self,
        torch_encoder: ClipEncoder,
        convert: Callable[[ClipEncoder], OpenVinoEncoder],
        precision: str,
        *,
        meanwhile: bool,
    ) -> None:
        self.torch = torch_encoder
        self.spec = torch_encoder.spec
        self.dim = torch_encoder.dim
        self.precision = precision
        self.meanwhile = meanwhile
        self._future: Future[OpenVinoEncoder] = Future()
        self._warned = False
        self._thread = threading.Thread(
            target=self._convert, args=(convert,), name="clipdb-openvino-convert"
        )
        self._thread.start()  # not a daemon: an interrupted conversion would leave staging
        self._rest: threading.Thread | None = None  # finish_conversion()'s

    def _convert(self, convert: Callable[[ClipEncoder], OpenVinoEncoder]) -> None:
        try:
            self._future.set_result(convert(self.torch))
        except BaseException as err:  # handed to the caller; the thread itself says nothing
            self._future.set_exception(err)

    def ready(self) -> bool:
        return self._future.done()

    def busy_converting(self) -> bool:
        """True while an image batch would only wait for the IR (ingest decodes ahead
        meanwhile); with ``meanwhile``, torch encodes instead and nothing waits."""
        return not self.meanwhile and not self._future.done()

    def target(self) -> OpenVinoEncoder | ClipEncoder:
        """The converted encoder, waiting for it; torch when the conversion failed."""
        try:
            return self._future.result()
        except ClipdbError:
            raise
        except Exception as err:
            if not self._warned:
                reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err)
                print(
                    f"warning: OpenVINO unavailable ({reason}); encoding with torch",
                    file=sys.stderr,
                )
                self._warned = True
            return self.torch

    def _for_images(self) -> OpenVinoEncoder | ClipEncoder:
        if self.meanwhile and not self._future.done():
            return self.torch
        return self.target()

    @property
    def architecture(self) -> str:
        return self.spec.architecture

    @property
    def pretrained(self) -> str:
        return self.spec.pretrained

    @property
    def image_size(self) -> tuple[int, int]:
        return self.torch.image_size

    @property
    def device(self) -> torch.device:
        return self.torch.device

    @property
    def preprocess(self) -> Any:
        return self.torch.preprocess

    @property
    def tokenizer(self) -> Any:
        return self.torch.tokenizer

    @property
    def pixel_pipeline(self) -> PixelPipeline:
        """The torch model's: the IR's manifest records exactly these steps."""
        return self.torch.pixel_pipeline

    def encode_images(self, pixels: Any) -> np.ndarray:
        return self._for_images().encode_images(pixels)

    def start_encode_images(self, pixels: Any) -> Callable[[], np.ndarray]:
        done = self.encode_images(pixels)
        return lambda: done

    def encode_pil(self, images: Sequence[Image.Image]) -> np.ndarray:
        return self._for_images().encode_pil(images)

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        return self.target().encode_texts(texts)

    def finish_conversion(self) -> None:
        """No image is waiting now (an ingest's encode pass has ended): the tower the first
        conversion left out converts, from the torch model already loaded, in a thread the
        process waits for at its end. A first text query would otherwise import and load that
        model again (8.2 s for ViT-B-32 on 2 cores, against 1.3 s here)."""
        if self._rest is None:
            self._rest = threading.Thread(target=self._convert_rest, name="clipdb-openvino-text")
            self._rest.start()

    def _convert_rest(self) -> None:
        # A failure here is said by the first text query, which converts again.
        with contextlib.suppress(Exception):
            self._future.result().add_missing_towers()

    def join(self) -> None:
        """Wait for the conversion threads (tests, benchmarks)."""
        self._thread.join()
        if self._rest is not None:
            self._rest.join()


def load_in_background(
    spec: ModelSpec, precision: str, *, meanwhile: bool
) -> OpenVinoEncoder | ConvertingEncoder:
    """The cached encoder, or one converting in the background when the cache is missing."""
    folder, chosen = cache_target(spec, precision)
    encoder = compile_cached(folder, spec, chosen)
    if encoder is not None:
        return encoder
    torch_encoder = load_torch(spec, "cpu", "fp32")

    def convert(model: ClipEncoder) -> OpenVinoEncoder:
        converted: OpenVinoEncoder = convert_when_missing(folder, spec, chosen, model)
        return converted

    return ConvertingEncoder(torch_encoder, convert, chosen, meanwhile=meanwhile)
