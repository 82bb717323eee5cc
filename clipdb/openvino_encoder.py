"""The OpenVINO CPU backend: open_clip's two towers converted once, cached as IR, run by OpenVINO.

Why: on CPUs OpenVINO runs the same ViT ~1.5x faster than torch autocast (BENCHMARKS.md) with
the same vectors (min cosine >= 0.9999 vs torch fp32). Conversion needs the torch model and
takes seconds, so the IR is kept under ``CLIPDB_HOME/openvino/<key>`` where the key names the
architecture, the weights identity, the OpenVINO version and the weight format; a later load
reads the cached IR and never builds the torch model. A manifest holds the sha256 of every
file: a cache that does not match is rebuilt with one warning, never used.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from clipdb.models import ModelSpec

MANIFEST = "manifest.json"
TOWERS = ("image", "text")
# How many conversions this process ran: tests check that a second load reads the cache.
conversions = 0


def cache_key(spec: ModelSpec, weights: str, version: str) -> str:
    """One folder per (architecture, weights identity, OpenVINO version, weight format)."""
    identity = hashlib.sha256(f"{spec.architecture}\0{spec.pretrained}".encode()).hexdigest()
    safe_arch = "".join(c if c.isalnum() or c in "-_." else "_" for c in spec.architecture)
    return f"{safe_arch}-{identity[:16]}-ov{version.split('-')[0]}-{weights}"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_manifest(folder: Path) -> dict[str, Any] | None:
    """The manifest when every file it lists is present with the recorded sha256, else None."""
    try:
        manifest: dict[str, Any] = json.loads((folder / MANIFEST).read_text())
        files: dict[str, str] = manifest["files"]
        for name, digest in files.items():
            if _sha256(folder / name) != digest:
                return None
        if {f"{tower}.{ext}" for tower in TOWERS for ext in ("xml", "bin")} - set(files):
            return None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return manifest


def convert_towers(
    clip_model: Any, image_size: tuple[int, int], weights: str, folder: Path, extra: dict[str, Any]
) -> None:
    """Convert both towers of a torch open_clip model to IR in ``folder`` (atomically)."""
    global conversions
    import openvino as ov
    import torch

    class ImageTower(torch.nn.Module):
        def __init__(self, model: Any) -> None:
            super().__init__()
            self.model = model

        def forward(self, pixels: torch.Tensor) -> torch.Tensor:
            return self.model.encode_image(pixels).float()  # type: ignore[no-any-return]

    class TextTower(torch.nn.Module):
        def __init__(self, model: Any) -> None:
            super().__init__()
            self.model = model

        def forward(self, tokens: torch.Tensor) -> torch.Tensor:
            return self.model.encode_text(tokens).float()  # type: ignore[no-any-return]

    clip_model = clip_model.float().eval()
    context = int(getattr(clip_model, "context_length", 77))
    examples = {
        "image": (ImageTower(clip_model), torch.zeros(1, 3, *image_size), [-1, 3, *image_size]),
        "text": (TextTower(clip_model), torch.zeros(1, context, dtype=torch.int64), [-1, context]),
    }
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=folder.parent))
    try:
        files: dict[str, str] = {}
        with torch.inference_mode():
            for tower, (module, example, shape) in examples.items():
                converted = ov.convert_model(module, example_input=example, input=[shape])
                if weights == "int8":
                    import logging

                    import nncf

                    nncf.set_log_level(logging.ERROR)  # its per-layer tables are not for users
                    converted = nncf.compress_weights(converted)
                ov.save_model(converted, staging / f"{tower}.xml", compress_to_fp16=False)
        for name in sorted(os.listdir(staging)):
            files[name] = _sha256(staging / name)
        manifest = dict(extra, files=files, context_length=context, weights=weights)
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=1))
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(staging, folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    conversions += 1


@dataclass
class OpenVinoEncoder:
    """Compiled image and text towers; the same surface as :class:`clipdb.encoder.ClipEncoder`."""

    spec: ModelSpec
    dim: int
    precision: str
    image_size: tuple[int, int]
    context_length: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    image_model: Any = field(repr=False)
    text_model: Any = field(repr=False)
    tokenizer_kind: str = "open_clip"
    backend: str = "openvino"
    _preprocess: Any = field(default=None, repr=False)
    _tokenizer: Any = field(default=None, repr=False)

    @property
    def architecture(self) -> str:
        return self.spec.architecture

    @property
    def pretrained(self) -> str:
        return self.spec.pretrained

    @property
    def device(self) -> Any:
        import torch

        return torch.device("cpu")

    @property
    def preprocess(self) -> Any:
        """open_clip's eval transform, built from the manifest (no model needed)."""
        if self._preprocess is None:
            from open_clip import image_transform

            self._preprocess = image_transform(
                self.image_size, is_train=False, mean=self.mean, std=self.std
            )
        return self._preprocess

    @property
    def tokenizer(self) -> Any:
        if self._tokenizer is None and self.tokenizer_kind == "clip-bpe":
            from clipdb.tokenizer import ClipTokenizer  # torch-free, same ids

            self._tokenizer = ClipTokenizer(self.context_length)
        elif self._tokenizer is None:
            import open_clip

            self._tokenizer = open_clip.get_tokenizer(self.spec.architecture)
        return self._tokenizer

    def encode_images(self, pixels: Any) -> np.ndarray:
        """Preprocessed image batch (N, 3, H, W), tensor or array -> (N, dim) normalised."""
        array = pixels.numpy() if hasattr(pixels, "numpy") else np.asarray(pixels)
        features = self.image_model(np.ascontiguousarray(array, dtype=np.float32))[0]
        return _normalise(np.asarray(features))

    def encode_pil(self, images: Sequence[Image.Image]) -> np.ndarray:
        batch = np.stack([np.asarray(self.preprocess(image)) for image in images])
        return self.encode_images(batch)

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        tokens = np.asarray(self.tokenizer(list(texts)), dtype=np.int64)
        features = self.text_model(tokens)[0]
        return _normalise(np.asarray(features))


def _normalise(features: np.ndarray) -> np.ndarray:
    features = features.astype(np.float32, copy=False)
    norms = np.linalg.norm(features, axis=-1, keepdims=True)
    normalised: np.ndarray = (features / np.maximum(norms, 1e-12)).astype(np.float32, copy=False)
    return normalised


def compile_cached(folder: Path, spec: ModelSpec, precision: str) -> OpenVinoEncoder | None:
    """The encoder from a verified cache folder, or None when it is missing or does not match."""
    import openvino as ov

    manifest = read_manifest(folder)
    if manifest is None:
        return None
    core = ov.Core()
    hint = "bf16" if precision in ("bf16", "int8") and _fast_bf16() else "f32"
    config = {"INFERENCE_PRECISION_HINT": hint, "PERFORMANCE_HINT": "LATENCY"}
    models = {
        tower: core.compile_model(core.read_model(folder / f"{tower}.xml"), "CPU", config)
        for tower in TOWERS
    }
    return OpenVinoEncoder(
        spec=spec,
        dim=int(manifest["dim"]),
        precision=precision,
        image_size=(int(manifest["image_size"][0]), int(manifest["image_size"][1])),
        context_length=int(manifest["context_length"]),
        mean=tuple(manifest["mean"]),
        std=tuple(manifest["std"]),
        image_model=models["image"],
        text_model=models["text"],
        tokenizer_kind=str(manifest.get("tokenizer", "open_clip")),
    )


def _fast_bf16() -> bool:
    from clipdb.encoder import cpu_has_fast_bf16

    return cpu_has_fast_bf16()


def warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


def cache_target(spec: ModelSpec, precision: str) -> tuple[Path, str]:
    """The cache folder of ``spec`` and the precision the compiled model runs at."""
    import openvino

    from clipdb.config import Settings

    chosen = precision
    if precision in ("auto", "fp16"):
        chosen = "bf16" if _fast_bf16() else "fp32"
    weights = "int8" if chosen == "int8" else "fp32"
    # CLIPDB_OPENVINO_CACHE: one cache shared by several homes (the test suite uses it).
    root = os.environ.get("CLIPDB_OPENVINO_CACHE") or Settings.resolve().home / "openvino"
    return Path(root) / cache_key(spec, weights, openvino.get_version()), chosen


def load_cached(spec: ModelSpec, precision: str) -> OpenVinoEncoder | None:
    """The encoder from a verified cache, or None for any failure (:func:`load` says why)."""
    try:
        folder, chosen = cache_target(spec, precision)
        return compile_cached(folder, spec, chosen)
    except Exception:  # the full path in load() says why, in one line
        return None


def load(spec: ModelSpec, precision: str) -> OpenVinoEncoder:
    """The cached encoder, converting the torch model first when the cache is missing or bad."""
    import warnings

    from clipdb.encoder import load_torch

    folder, chosen = cache_target(spec, precision)
    weights = "int8" if chosen == "int8" else "fp32"
    encoder = compile_cached(folder, spec, chosen)
    if encoder is not None:
        return encoder
    if folder.exists():
        warn(f"OpenVINO cache {folder} is corrupt or stale; rebuilding it")
    torch_encoder = load_torch(spec, "cpu", "fp32")
    mean = getattr(torch_encoder.model.visual, "image_mean", None) or OPENAI_MEAN
    std = getattr(torch_encoder.model.visual, "image_std", None) or OPENAI_STD
    extra = {
        "tokenizer": tokenizer_kind(torch_encoder.tokenizer),
        "dim": torch_encoder.dim,
        "image_size": list(torch_encoder.image_size),
        "mean": list(mean),
        "std": list(std),
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.trace deprecation notes from the converter
        convert_towers(torch_encoder.model, torch_encoder.image_size, weights, folder, extra)
    encoder = compile_cached(folder, spec, chosen)
    if encoder is None:
        raise RuntimeError(f"the converted model in {folder} does not verify")
    return encoder


def tokenizer_kind(tokenizer: Any) -> str:
    """ "clip-bpe" when clipdb.tokenizer gives the same ids (open_clip's plain CLIP BPE)."""
    from open_clip.tokenizer import SimpleTokenizer, _clean_lower

    plain = (
        type(tokenizer) is SimpleTokenizer
        and tokenizer.clean_fn is _clean_lower
        and tokenizer.reduction_fn is None
    )
    return "clip-bpe" if plain else "open_clip"
