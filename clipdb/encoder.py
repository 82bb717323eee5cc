"""CLIP models through open_clip: name resolution, loading, and batched encoding.

Everything model-specific stays behind :class:`ClipEncoder` (``architecture``, ``pretrained``,
``dim``, ``encode_images``, ``encode_texts``), built by :func:`load_encoder`. Tests use the same
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
from PIL import Image

from clipdb.config import BACKENDS, DEVICES, PRECISIONS, Settings
from clipdb.errors import ClipdbError, UsageError
from clipdb.models import (
    RANDOM_WEIGHTS,
    ModelSpec,
    canonical_model_name,
    file_identity,
    quick_model_spec,
)

if TYPE_CHECKING:  # torch is imported only where it runs: the OpenVINO path never needs it
    import torch

RANDOM_SEED = 0  # every process builds the identical random model
__all__ = ["ModelSpec", "file_identity", "quick_model_spec", "load_encoder", "ClipEncoder"]
HUB_HOST = ("huggingface.co", 443)
_F = TypeVar("_F")


def _inference_mode(function: _F) -> _F:
    """``torch.inference_mode()`` applied at call time, so importing this module is torch-free."""
    import functools

    @functools.wraps(function)  # type: ignore[arg-type]
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        import torch

        with torch.inference_mode():
            return function(*args, **kwargs)  # type: ignore[operator]

    return wrapper  # type: ignore[return-value]


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
        raise ClipdbError(
            f"open_clip has no standard weights for {architecture}; "
            "pass --pretrained FILE (a local checkpoint) or --pretrained none"
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
        raise ClipdbError("--device cuda: no CUDA GPU is available")
    if device == "mps" and not torch.backends.mps.is_available():
        raise ClipdbError("--device mps: Apple MPS is not available")
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
        raise UsageError("--precision int8 needs --backend openvino (or auto on CPU)")
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


@dataclass
class ClipEncoder:
    """A loaded CLIP model: turns images and texts into L2-normalised float32 vectors."""

    spec: ModelSpec
    dim: int
    device: torch.device
    precision: str
    model: Any = field(repr=False)
    preprocess: Any = field(repr=False)
    tokenizer: Any = field(repr=False)
    backend: str = "torch"
    # On CPU bf16 the weights are cast (1.28x autocast, BENCHMARKS.md); autocast elsewhere.
    cast_dtype: Any = None

    def __post_init__(self) -> None:
        import torch

        if self.device.type == "cpu" and self.precision == "bf16":
            self.cast_dtype = torch.bfloat16
            self.model = self.model.to(torch.bfloat16)

    @property
    def architecture(self) -> str:
        return self.spec.architecture

    @property
    def pretrained(self) -> str:
        return self.spec.pretrained

    @property
    def image_size(self) -> tuple[int, int]:
        size = self.model.visual.image_size
        return (size, size) if isinstance(size, int) else tuple(size)

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        import torch

        if self.precision == "fp32" or self.cast_dtype is not None:
            return contextlib.nullcontext()
        dtype = torch.float16 if self.precision == "fp16" else torch.bfloat16
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    @_inference_mode
    def encode_images(self, pixels: torch.Tensor) -> np.ndarray:
        """Preprocessed image batch (N, 3, H, W) -> (N, dim) normalised float32."""

        with self._autocast():
            pixels = pixels.to(self.device, non_blocking=True)
            if self.cast_dtype is not None:
                pixels = pixels.to(self.cast_dtype)
            features = self.model.encode_image(pixels)
        return _normalise(features)

    def encode_pil(self, images: Sequence[Image.Image]) -> np.ndarray:
        """PIL images -> (N, dim) normalised float32, with the model's own preprocessing."""
        import torch

        batch = torch.stack([self.preprocess(image) for image in images])
        return self.encode_images(batch)

    @_inference_mode
    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Texts -> (N, dim) normalised float32 from the text tower."""

        tokens = self.tokenizer(list(texts)).to(self.device)
        with self._autocast():
            features = _encode_text_trimmed(self.model, tokens)
        return _normalise(features)


def _encode_text_trimmed(model: Any, tokens: torch.Tensor) -> torch.Tensor:
    """``model.encode_text`` over only as many positions as the longest text uses.

    Tokenizers pad every text to the context length (77); "a red car" uses 5. In a causal text
    transformer, positions never see later ones, so dropping the padding after the last real
    token leaves every kept position, and the end-of-text token that argmax pooling picks,
    exactly as they were, at a fraction of the cost. Other text towers take the plain path.
    """
    import torch
    from open_clip.model import CLIP
    from open_clip.transformer import text_global_pool

    mask = getattr(model, "attn_mask", None)
    simple = (
        isinstance(model, CLIP)
        and getattr(model, "text_pool_type", None) == "argmax"
        and mask is not None
        and bool(torch.isinf(mask[torch.ones_like(mask, dtype=torch.bool).triu(1)]).all())
    )
    if not simple or mask is None:
        features: torch.Tensor = model.encode_text(tokens)
        return features
    length = int((tokens != 0).any(dim=0).nonzero().max()) + 1  # last real token, any text
    kept = tokens[:, :length]
    cast_dtype = model.transformer.get_cast_dtype()
    x = model.token_embedding(kept).to(cast_dtype)
    x = x + model.positional_embedding[:length].to(cast_dtype)
    x = model.transformer(x, attn_mask=mask[:length, :length])
    x = model.ln_final(x)
    x = text_global_pool(x, kept, model.text_pool_type)
    pooled: torch.Tensor = x
    if isinstance(model.text_projection, torch.nn.Linear):
        projected: torch.Tensor = model.text_projection(pooled)
        return projected
    if model.text_projection is not None:
        pooled = pooled @ model.text_projection
    return pooled


def _normalise(features: torch.Tensor) -> np.ndarray:
    features = features.float()
    features = features / features.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return features.cpu().numpy().astype(np.float32, copy=False)


def load_encoder(
    model: str,
    pretrained: str | None = None,
    *,
    device: str = "auto",
    precision: str = "auto",
    backend: str = "auto",
) -> Any:
    """Load a CLIP model for inference (hub cache, local checkpoint, or seeded random weights).

    ``backend`` auto is OpenVINO on CPU and torch on CUDA/MPS; when OpenVINO is missing or
    fails, one line says why and torch encodes instead.
    """
    if backend not in BACKENDS:
        raise UsageError(f"unknown backend {backend!r}; use one of {', '.join(BACKENDS)}")
    if precision not in PRECISIONS:
        raise UsageError(f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}")
    if backend == "openvino" and device in ("cuda", "mps"):
        raise UsageError(f"--backend openvino runs on the CPU; it cannot use --device {device}")
    if backend == "torch" and precision == "int8":
        raise UsageError("--precision int8 needs --backend openvino")
    if backend == "auto":
        cpu = device == "cpu" or (device == "auto" and not _accelerator_likely())
        backend = "openvino" if cpu or pick_device(device).type == "cpu" else "torch"
    if backend == "openvino":
        # A verified cache proves the names were valid when it was built: no open_clip, no torch.
        quick = quick_model_spec(model, pretrained)
        cached = _cached_openvino(quick, precision) if quick is not None else None
        if cached is not None:
            _warn_if_random(quick)
            return cached
    spec = resolve_model_spec(model, pretrained)
    _warn_if_random(spec)
    if backend == "openvino":
        try:
            return _load_openvino(spec, precision)
        except ClipdbError:
            raise
        except Exception as err:  # ImportError, or OpenVINO failing to read/compile
            reason = str(err).splitlines()[0] if str(err) else type(err).__name__
            print(f"warning: OpenVINO unavailable ({reason}); encoding with torch", file=sys.stderr)
            if precision == "int8":
                precision = "auto"
    return _load_torch(spec, device, precision)


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


def _openvino_target(spec: ModelSpec, precision: str) -> tuple[Path, str]:
    """The cache folder of ``spec`` and the precision the compiled model runs at."""
    import openvino

    from clipdb import openvino_encoder as ove

    chosen = precision
    if precision in ("auto", "fp16"):
        chosen = "bf16" if cpu_has_fast_bf16() else "fp32"
    weights = "int8" if chosen == "int8" else "fp32"
    # CLIPDB_OPENVINO_CACHE: one cache shared by several homes (the test suite uses it).
    root = os.environ.get("CLIPDB_OPENVINO_CACHE") or Settings.resolve().home / "openvino"
    return Path(root) / ove.cache_key(spec, weights, openvino.get_version()), chosen


def _cached_openvino(spec: ModelSpec, precision: str) -> Any:
    try:
        from clipdb import openvino_encoder as ove

        folder, chosen = _openvino_target(spec, precision)
        return ove.compile_cached(folder, spec, chosen)
    except Exception:  # the full path below says why, in one line
        return None


def _load_openvino(spec: ModelSpec, precision: str) -> Any:
    from clipdb import openvino_encoder as ove

    folder, chosen = _openvino_target(spec, precision)
    weights = "int8" if chosen == "int8" else "fp32"
    encoder = ove.compile_cached(folder, spec, chosen)
    if encoder is not None:
        return encoder
    if folder.exists():
        ove.warn(f"OpenVINO cache {folder} is corrupt or stale; rebuilding it")
    torch_encoder = _load_torch(spec, "cpu", "fp32")
    mean = getattr(torch_encoder.model.visual, "image_mean", None) or OPENAI_MEAN
    std = getattr(torch_encoder.model.visual, "image_std", None) or OPENAI_STD
    extra = {
        "tokenizer": _tokenizer_kind(torch_encoder.tokenizer),
        "dim": torch_encoder.dim,
        "image_size": list(torch_encoder.image_size),
        "mean": list(mean),
        "std": list(std),
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.trace deprecation notes from the converter
        ove.convert_towers(torch_encoder.model, torch_encoder.image_size, weights, folder, extra)
    encoder = ove.compile_cached(folder, spec, chosen)
    if encoder is None:
        raise RuntimeError(f"the converted model in {folder} does not verify")
    return encoder


def _tokenizer_kind(tokenizer: Any) -> str:
    """ "clip-bpe" when clipdb.tokenizer gives the same ids (open_clip's plain CLIP BPE)."""
    from open_clip.tokenizer import SimpleTokenizer, _clean_lower

    plain = (
        type(tokenizer) is SimpleTokenizer
        and tokenizer.clean_fn is _clean_lower
        and tokenizer.reduction_fn is None
    )
    return "clip-bpe" if plain else "open_clip"


OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


def _load_torch(spec: ModelSpec, device: str, precision: str) -> ClipEncoder:
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
                    "pass a local checkpoint with --pretrained FILE, or --pretrained none "
                    "for random weights"
                )
                if spec.checkpoint:
                    reason = str(err).splitlines()[0] if str(err) else type(err).__name__
                    raise ClipdbError(
                        f"cannot load checkpoint {spec.checkpoint}: {reason}"
                    ) from None
                raise ClipdbError(
                    f"weights {spec.pretrained!r} for {spec.architecture} are not in the local "
                    f"cache and could not be downloaded; {hint}"
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


@_inference_mode
def _probe_dim(model: Any, preprocess: Any, device: torch.device) -> int:

    blank = preprocess(Image.new("RGB", (32, 32))).unsqueeze(0).to(device)
    return int(model.encode_image(blank).shape[-1])
