"""CLIP models through open_clip: name resolution, backend choice, and loading.

Everything model-specific stays behind the :class:`Encoder` protocol (``architecture``,
``pretrained``, ``dim``, ``encode_images``, ``encode_texts``), built by :func:`load_encoder`
as a torch :class:`~clipdb.torch_encoder.ClipEncoder` or an OpenVINO
:class:`~clipdb.openvino_encoder.OpenVinoEncoder`. Tests use the same
loader with tiny architectures from ``CLIPDB_MODEL_CONFIGS`` and ``pretrained="none"``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import sys
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np
from PIL import Image

from clipdb.config import BACKENDS, DEVICES, PRECISIONS
from clipdb.errors import ClipdbError, Option, UsageError, WeightsUnavailable
from clipdb.models import (
    RANDOM_WEIGHTS,
    ModelSpec,
    canonical_model_name,
    file_identity,
    quick_model_spec,
)
from clipdb.torch_encoder import ClipEncoder, _probe_dim

if TYPE_CHECKING:  # torch is imported only where it runs: the OpenVINO path never needs it
    import torch

    from clipdb.decode import PixelPipeline

RANDOM_SEED = 0  # every process builds the identical random model
__all__ = [
    "ModelSpec",
    "file_identity",
    "quick_model_spec",
    "load_encoder",
    "ClipEncoder",
    "Encoder",
]
HUB_HOST = ("huggingface.co", 443)
# Where weights cannot be had: how to try everything anyway (the CLI adds the exact rerun line).
RANDOM_WEIGHTS_HINT = (
    "for seeded random weights (meaningless results, for a trial run) ",
    Option("pretrained", "none"),
    " or CLIPDB_PRETRAINED=none",
)


def register_model_configs() -> None:
    """Add architectures from ``CLIPDB_MODEL_CONFIGS`` (a dir of open_clip JSON configs)."""
    import open_clip

    extra = os.environ.get("CLIPDB_MODEL_CONFIGS")
    if extra:
        for directory in extra.split(os.pathsep):
            if directory and Path(directory).is_dir():
                open_clip.add_model_config(directory)


def known_architectures() -> list[str]:
    import open_clip

    register_model_configs()
    return list(open_clip.list_models())


def default_pretrained(architecture: str) -> str:
    """The standard weights of an architecture: OpenAI's where they exist, else the first tag."""
    import open_clip

    tags = open_clip.list_pretrained_tags_by_model(architecture)
    if not tags:
        raise WeightsUnavailable(
            f"open_clip has no standard weights for {architecture}; pass ",
            Option("pretrained", "FILE", placeholder=True),
            " (a local checkpoint) or ",
            *RANDOM_WEIGHTS_HINT,
        )
    return "openai" if "openai" in tags else tags[0]


def resolve_model_spec(model: str, pretrained: str | None) -> ModelSpec:
    """Validate names and work out the stored identity without loading anything heavy."""
    architecture = canonical_model_name(model)
    if architecture not in known_architectures():
        raise UsageError(
            f"unknown model {model!r}; use an open_clip architecture such as ViT-B-32, "
            "or ViT-B/32, ViT-B/16, ViT-L/14"
        )
    if pretrained is None:
        return ModelSpec(architecture, default_pretrained(architecture))
    if pretrained.lower() == RANDOM_WEIGHTS:
        return ModelSpec(architecture, RANDOM_WEIGHTS)
    path = Path(pretrained).expanduser()
    if path.is_file():
        return ModelSpec(architecture, file_identity(path), checkpoint=path.resolve())
    import open_clip

    if pretrained in open_clip.list_pretrained_tags_by_model(architecture):
        return ModelSpec(architecture, pretrained)
    if os.sep in pretrained or pretrained.endswith((".pt", ".pth", ".bin", ".safetensors")):
        raise ClipdbError(f"checkpoint file {pretrained} does not exist")
    tags = ", ".join(open_clip.list_pretrained_tags_by_model(architecture)) or "none"
    raise UsageError(f"unknown pretrained tag {pretrained!r} for {architecture}; tags: {tags}")


def pick_device(device: str = "auto") -> torch.device:
    import torch

    if device not in DEVICES:
        raise UsageError(f"unknown device {device!r}; use one of {', '.join(DEVICES)}")
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ClipdbError(Option("device", "cuda"), ": no CUDA GPU is available")
    if device == "mps" and not torch.backends.mps.is_available():
        raise ClipdbError(Option("device", "mps"), ": Apple MPS is not available")
    return torch.device(device)


def cpu_has_fast_bf16() -> bool:
    """AVX512-BF16 or AMX: bf16 matmuls run natively (about 2x fp32 for ViT-B-32)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def pick_precision(precision: str, device: torch.device) -> str:
    if precision not in PRECISIONS:
        raise UsageError(f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}")
    if precision == "int8":
        raise UsageError(
            Option("precision", "int8"),
            " needs ",
            Option("backend", "openvino"),
            " (or auto on CPU)",
        )
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "fp16"
    if device.type == "cpu" and cpu_has_fast_bf16():
        return "bf16"
    return "fp32"


def _hub_reachable() -> bool:
    try:
        with socket.create_connection(HUB_HOST, timeout=3):
            return True
    except OSError:
        return False


@contextlib.contextmanager
def _offline_hub_if_unreachable() -> Iterator[None]:
    """Without a network, use the hub cache only: fail in a second, not after 50 s of retries."""
    import huggingface_hub.constants as hub_constants

    saved = hub_constants.HF_HUB_OFFLINE
    if not saved and not _hub_reachable():
        hub_constants.HF_HUB_OFFLINE = True
    logging.getLogger("huggingface_hub").setLevel(logging.ERROR)
    try:
        yield
    finally:
        hub_constants.HF_HUB_OFFLINE = saved


@contextlib.contextmanager
def _quiet_root_logger() -> Iterator[None]:
    """open_clip logs through the root logger; our own stderr lines say what matters."""
    logging.disable(logging.ERROR)
    try:
        yield
    finally:
        logging.disable(logging.NOTSET)


@runtime_checkable
class Encoder(Protocol):
    """What ingest, search, embed and serve use of an encoder, whichever backend runs it.

    :class:`ClipEncoder` (torch) and :class:`clipdb.openvino_encoder.OpenVinoEncoder` both
    satisfy it; the vectors are L2-normalised float32 of width ``dim``.
    """

    spec: ModelSpec
    dim: int
    precision: str
    backend: str

    @property
    def architecture(self) -> str: ...

    @property
    def pretrained(self) -> str: ...

    @property
    def image_size(self) -> tuple[int, int]: ...

    @property
    def device(self) -> Any: ...

    @property
    def preprocess(self) -> Any: ...

    @property
    def tokenizer(self) -> Any: ...

    @property
    def pixel_pipeline(self) -> PixelPipeline: ...

    def encode_images(self, pixels: Any) -> np.ndarray: ...

    def encode_pil(self, images: Sequence[Image.Image]) -> np.ndarray: ...

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray: ...


def load_encoder(
    model: str,
    pretrained: str | None = None,
    *,
    device: str = "auto",
    precision: str = "auto",
    backend: str = "auto",
) -> Encoder:
    """Load a CLIP model for inference (hub cache, local checkpoint, or seeded random weights).

    ``backend`` auto is OpenVINO on CPU and torch on CUDA/MPS; when OpenVINO is missing or
    fails, one line says why and torch encodes instead.
    """
    if backend not in BACKENDS:
        raise UsageError(f"unknown backend {backend!r}; use one of {', '.join(BACKENDS)}")
    if precision not in PRECISIONS:
        raise UsageError(f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}")
    if backend == "openvino" and device in ("cuda", "mps"):
        raise UsageError(
            Option("backend", "openvino"),
            " runs on the CPU; it cannot use ",
            Option("device", device),
        )
    if backend == "torch" and precision == "int8":
        raise UsageError(Option("precision", "int8"), " needs ", Option("backend", "openvino"))
    if backend == "auto":
        cpu = device == "cpu" or (device == "auto" and not _accelerator_likely())
        backend = "openvino" if cpu or pick_device(device).type == "cpu" else "torch"
    if backend == "openvino":
        # A verified cache proves the names were valid when it was built: no open_clip, no torch.
        quick = quick_model_spec(model, pretrained)
        from clipdb import openvino_encoder as ove

        cached = ove.load_cached(quick, precision) if quick is not None else None
        if cached is not None:
            _warn_if_random(quick)
            return cached
    spec = resolve_model_spec(model, pretrained)
    _warn_if_random(spec)
    if backend == "openvino":
        try:
            from clipdb import openvino_encoder as ove

            return ove.load(spec, precision)
        except ClipdbError:
            raise
        except Exception as err:  # ImportError, or OpenVINO failing to read/compile
            reason = str(err).splitlines()[0] if str(err) else type(err).__name__
            print(f"warning: OpenVINO unavailable ({reason}); encoding with torch", file=sys.stderr)
            if precision == "int8":
                precision = "auto"
    return load_torch(spec, device, precision)


def _warn_if_random(spec: ModelSpec | None) -> None:
    if spec is not None and spec.pretrained == RANDOM_WEIGHTS:
        print(
            f"warning: {spec.architecture} with random weights (--pretrained none): "
            "results are meaningless except for testing",
            file=sys.stderr,
        )


def _accelerator_likely() -> bool:
    """An NVIDIA driver or Apple silicon: only then is torch imported to ask for cuda/mps."""
    import platform

    if Path("/proc/driver/nvidia/version").exists():
        return True
    return sys.platform == "darwin" and platform.machine() == "arm64"


def load_torch(spec: ModelSpec, device: str, precision: str) -> ClipEncoder:
    import open_clip
    import torch

    torch_device = pick_device(device)
    chosen_precision = pick_precision(precision, torch_device)
    with warnings.catch_warnings(), _quiet_root_logger():
        warnings.simplefilter("ignore")
        if spec.pretrained == RANDOM_WEIGHTS:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(RANDOM_SEED)
                clip_model, _, preprocess = open_clip.create_model_and_transforms(
                    spec.architecture, pretrained=None
                )
        else:
            source = str(spec.checkpoint) if spec.checkpoint else spec.pretrained
            try:
                with _offline_hub_if_unreachable():
                    clip_model, _, preprocess = open_clip.create_model_and_transforms(
                        spec.architecture, pretrained=source
                    )
            except Exception as err:  # open_clip raises RuntimeError, OSError, KeyError...
                hint = (
                    "pass a local checkpoint with ",
                    Option("pretrained", "FILE", placeholder=True),
                    ", or ",
                    *RANDOM_WEIGHTS_HINT,
                )
                if spec.checkpoint:
                    reason = str(err).splitlines()[0] if str(err) else type(err).__name__
                    raise ClipdbError(
                        f"cannot load checkpoint {spec.checkpoint}: {reason}"
                    ) from None
                raise WeightsUnavailable(
                    f"weights {spec.pretrained!r} for {spec.architecture} are not in the local "
                    "cache and could not be downloaded (no network access to the model hub?); ",
                    *hint,
                ) from None
    clip_model = clip_model.to(torch_device).eval()
    tokenizer = open_clip.get_tokenizer(spec.architecture)
    dim = (
        int(clip_model.text_projection.shape[1])
        if hasattr(clip_model, "text_projection") and (clip_model.text_projection is not None)
        else _probe_dim(clip_model, preprocess, torch_device)
    )
    return ClipEncoder(
        spec=spec,
        dim=dim,
        device=torch_device,
        precision=chosen_precision,
        model=clip_model,
        preprocess=preprocess,
        tokenizer=tokenizer,
    )
