"""The torch encoder: an open_clip model in torch, on CPU, CUDA or MPS, and its loader.

Why a module of its own: :mod:`clipdb.encoders.factory` picks a backend and must import without
torch (the OpenVINO text query never loads it); everything here runs torch, imported at call
time. The OpenVINO backend uses :func:`load_torch` too, to convert a model once.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
from PIL import Image

from clipdb.encoders.device import pick_device, pick_precision
from clipdb.encoders.hf_tokenizer import LazyHubTokenizer, hub_tokenizer_settings
from clipdb.encoders.hub import offline_hub_if_unreachable
from clipdb.encoders.spec import RANDOM_WEIGHTS_HINT, register_model_configs
from clipdb.errors import ClipdbError, Option, WeightsUnavailable
from clipdb.models import RANDOM_WEIGHTS, ModelSpec
from clipdb.pixels import PixelPipeline

if TYPE_CHECKING:
    import torch

RANDOM_SEED = 0  # every process builds the identical random model
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
    _pixels: PixelPipeline | None = field(default=None, repr=False)

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
    def encode_images(self, pixels: torch.Tensor | np.ndarray) -> np.ndarray:
        """Preprocessed image batch (N, 3, H, W), tensor or array -> (N, dim) normalised."""
        return _normalise(self._image_features(pixels))

    def _image_features(self, pixels: torch.Tensor | np.ndarray) -> torch.Tensor:
        import torch

        if isinstance(pixels, np.ndarray):
            pixels = torch.from_numpy(pixels)
        with self._autocast():
            pixels = pixels.to(self.device, non_blocking=True)
            if self.cast_dtype is not None:
                pixels = pixels.to(self.cast_dtype)
            features: torch.Tensor = self.model.encode_image(pixels)
        return features

    @_inference_mode
    def start_encode_images(self, pixels: torch.Tensor | np.ndarray) -> Callable[[], np.ndarray]:
        """:meth:`encode_images` begun: returns what to call for the result. On CUDA the
        kernels and the copy into pinned host memory are queued and this returns at once,
        so the caller decodes the next batch while the GPU works (ingest keeps one batch in
        flight); elsewhere the work is done before it returns."""
        import torch

        if self.device.type != "cuda":
            done = self.encode_images(pixels)
            return lambda: done
        features = self._image_features(pixels).float()
        features = features / features.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        host = torch.empty(features.shape, dtype=torch.float32, pin_memory=True)
        host.copy_(features, non_blocking=True)
        copied = torch.cuda.Event()  # type: ignore[no-untyped-call]
        copied.record()

        def result() -> np.ndarray:
            copied.synchronize()
            return host.numpy()

        return result

    def encode_pil(self, images: Sequence[Image.Image]) -> np.ndarray:
        """PIL images -> (N, dim) normalised float32, with the model's own preprocessing
        computed as ingest computes it (:attr:`pixel_pipeline`), so a query by an indexed
        file finds that file's own vector."""
        return self.encode_images(self.pixel_pipeline.images_to_array(images))

    @property
    def pixel_pipeline(self) -> PixelPipeline:
        """The model's preprocessing as :class:`clipdb.pixels.PixelPipeline` (cached)."""
        if self._pixels is None:
            self._pixels = PixelPipeline.from_preprocess(self.preprocess, max(self.image_size))
        return self._pixels

    @_inference_mode
    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Texts -> (N, dim) normalised float32 from the text tower."""

        import torch

        tokens = self.tokenizer(list(texts))
        if isinstance(tokens, np.ndarray):  # clipdb's Hugging Face tokenizer: torch-free
            tokens = torch.from_numpy(tokens)
        tokens = tokens.to(self.device)
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
    if not text_is_causal_argmax(model):
        features: torch.Tensor = model.encode_text(tokens)
        return features
    return encode_text_prefix(model, tokens[:, : used_positions(tokens)])


def used_positions(tokens: Any) -> int:
    """How many leading positions carry a real token in any row (padding is id 0)."""
    array = tokens.cpu().numpy() if hasattr(tokens, "cpu") else np.asarray(tokens)
    used = (array != 0).any(axis=0).nonzero()[0]
    return int(used.max()) + 1 if len(used) else 1


def text_is_causal_argmax(model: Any) -> bool:
    """Whether ``model``'s text tower is open_clip's CLIP one: a causal mask and argmax
    pooling, so :func:`encode_text_prefix` over trimmed tokens equals ``encode_text``."""
    import torch
    from open_clip.model import CLIP

    mask = getattr(model, "attn_mask", None)
    return (
        isinstance(model, CLIP)
        and getattr(model, "text_pool_type", None) == "argmax"
        and mask is not None
        and bool(torch.isinf(mask[torch.ones_like(mask, dtype=torch.bool).triu(1)]).all())
    )


def encode_text_prefix(model: Any, kept: torch.Tensor) -> torch.Tensor:
    """``encode_text`` of tokens cut to their first ``kept.shape[1]`` positions (any length up
    to the context; the OpenVINO text IR is traced from this with that length dynamic)."""
    import torch
    from open_clip.transformer import text_global_pool

    length = kept.shape[1]
    cast_dtype = model.transformer.get_cast_dtype()
    x = model.token_embedding(kept).to(cast_dtype)
    x = x + model.positional_embedding[:length].to(cast_dtype)
    x = model.transformer(x, attn_mask=model.attn_mask[:length, :length])
    x = model.ln_final(x)
    pooled: torch.Tensor = text_global_pool(x, kept, model.text_pool_type)
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


@_inference_mode
def _probe_dim(model: Any, preprocess: Any, device: torch.device) -> int:

    blank = preprocess(Image.new("RGB", (32, 32))).unsqueeze(0).to(device)
    return int(model.encode_image(blank).shape[-1])


@contextlib.contextmanager
def _quiet_root_logger() -> Iterator[None]:
    """open_clip logs through the root logger; our own stderr lines say what matters."""
    logging.disable(logging.ERROR)
    try:
        yield
    finally:
        logging.disable(logging.NOTSET)


def preprocess_overrides(spec: ModelSpec) -> dict[str, Any]:
    """The image preprocessing of weights open_clip does not know by tag (a local file, a
    snapshot folder, random weights): open_clip would fall back to CLIP's mean, std and
    shortest-side resize, which is wrong for SigLIP (mean/std 0.5, squashed to a square).
    A snapshot's ``open_clip_config.json`` says it; else the architecture's standard weights."""
    import open_clip

    if spec.checkpoint is None and spec.pretrained != RANDOM_WEIGHTS:
        return {}  # a tag: open_clip applies its own
    config: dict[str, Any] = {}
    snapshot = spec.checkpoint.parent / "open_clip_config.json" if spec.checkpoint else None
    if snapshot is not None and snapshot.is_file():
        config = dict(json.loads(snapshot.read_text(encoding="utf-8")).get("preprocess_cfg", {}))
    else:
        tags = open_clip.list_pretrained_tags_by_model(spec.architecture)
        if tags:
            tag = "openai" if "openai" in tags else tags[0]
            config = dict(open_clip.get_pretrained_cfg(spec.architecture, tag))
    keys = {"mean": "image_mean", "std": "image_std", "interpolation": "image_interpolation"}
    keys["resize_mode"] = "image_resize_mode"
    return {keys[k]: v for k, v in config.items() if k in keys and v is not None}


@contextlib.contextmanager
def _hf_text_config_needed(text_config: dict[str, Any]) -> Iterator[None]:
    """A Hugging Face text tower is built from its ``config.json`` (hub cache or folder) even
    with random weights: one clear line when that cannot be had offline."""
    name = text_config.get("hf_model_name")
    if not name:
        yield
        return
    try:
        with offline_hub_if_unreachable():
            yield
    except OSError as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ClipdbError(
            f"the text tower {name} (its Hugging Face config.json) is not in the Hugging Face "
            f"cache and could not be downloaded: {reason}"
        ) from None


def load_torch(spec: ModelSpec, device: str, precision: str) -> ClipEncoder:
    import open_clip
    import torch

    # A spec read from an OpenVINO cache skipped the name check, which registers these.
    register_model_configs()
    torch_device = pick_device(device)
    chosen_precision = pick_precision(precision, torch_device)
    text_config = (open_clip.get_model_config(spec.architecture) or {}).get("text_cfg", {})
    hf_text = bool(text_config.get("hf_model_name"))
    if hf_text and importlib.util.find_spec("transformers") is None:
        raise ClipdbError(
            f"{spec.architecture}'s text tower is a Hugging Face model: it needs the "
            "'transformers' package (pip install 'clipdb-pg[multilingual]')"
        )
    # A Hugging Face text tower would otherwise fetch its pretrained weights from the hub even
    # for random weights; a checkpoint carries the text tower's weights itself.
    hf_weights = {"pretrained_hf": False} if hf_text else {}
    with warnings.catch_warnings(), _quiet_root_logger():
        warnings.simplefilter("ignore")
        if spec.pretrained == RANDOM_WEIGHTS:
            with torch.random.fork_rng(devices=[]), _hf_text_config_needed(text_config):
                torch.manual_seed(RANDOM_SEED)
                clip_model, _, preprocess = open_clip.create_model_and_transforms(
                    spec.architecture, pretrained=None, **hf_weights, **preprocess_overrides(spec)
                )
        else:
            source = str(spec.checkpoint) if spec.checkpoint else spec.pretrained
            try:
                with offline_hub_if_unreachable():
                    clip_model, _, preprocess = open_clip.create_model_and_transforms(
                        spec.architecture,
                        pretrained=source,
                        **(hf_weights if spec.checkpoint else {}),
                        **preprocess_overrides(spec),
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
    hub_settings = hub_tokenizer_settings(spec.architecture)
    tokenizer = (
        open_clip.get_tokenizer(spec.architecture)
        if hub_settings is None
        else LazyHubTokenizer(hub_settings, spec.checkpoint)
    )
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
