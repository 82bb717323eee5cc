"""The OpenVINO CPU backend: open_clip's two towers, converted once, run by OpenVINO.

Why: on CPUs OpenVINO runs the same ViT ~1.5x faster than torch autocast (BENCHMARKS.md) with
the same vectors (min cosine >= 0.9999 vs torch fp32). The IR comes from
:mod:`clipdb.encoders.openvino_cache`; a load from the cache never builds the torch model, and a
text query never imports torch.
"""

from __future__ import annotations

import contextlib
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from clipdb.encoders.device import cpu_has_fast_bf16
from clipdb.encoders.hf_tokenizer import (
    TOKENIZER_CONFIG,
    TOKENIZER_FILE,
    HubTokenizer,
    LazyHubTokenizer,
    find_tokenizer_file,
)
from clipdb.encoders.openvino_cache import (
    cache_target,
    convert_missing_tower,
    convert_towers,
    converting,
    manifest_towers,
    read_manifest,
    weight_format,
)
from clipdb.encoders.openvino_convert import tokenizer_kind
from clipdb.encoders.tokenizer import ClipTokenizer
from clipdb.encoders.torch import load_torch, used_positions
from clipdb.errors import ClipdbError
from clipdb.models import ModelSpec
from clipdb.pixels import PixelPipeline

if TYPE_CHECKING:
    import torch

# Batches of at least this many images run on the throughput-compiled image tower: one
# inference request per stream, each on its own cores, so a decode worker taking a core
# delays one stream instead of stalling every thread of a single request (ingest went from
# 43 to 55 img/s on 2 cores, BENCHMARKS.md). Smaller batches (a query) take the latency one.
THROUGHPUT_BATCH = 16
MIN_CHUNK = 8  # images per request: smaller chunks lose more to per-request overhead


@dataclass
class OpenVinoEncoder:
    """The IR towers of a verified cache folder, each compiled on first use (a text query
    never compiles the image tower); an :class:`~clipdb.encoders.Encoder`."""

    spec: ModelSpec
    dim: int
    precision: str
    image_size: tuple[int, int]
    context_length: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    folder: Path
    hint: str  # INFERENCE_PRECISION_HINT: bf16 on CPUs with native bf16, else f32
    tokenizer_kind: str = "open_clip"
    hub_tokenizer: dict[str, Any] = field(default_factory=dict)  # kind "hf": name, clean
    text_trim: bool = False  # the text IR takes any sequence length (see openvino_cache)
    # The torch model's resize/crop as PixelPipeline data; None in caches made before it was
    # recorded (then open_clip's default eval transform is rebuilt, which needs torch).
    pixel_steps: tuple[tuple[Any, ...], ...] | None = None
    # The towers the folder holds (a first ingest converts the image tower only), and the
    # open_clip model a missing one is converted from (None: loaded when needed).
    towers: frozenset[str] = frozenset(("image", "text"))
    torch_source: Callable[[], Any] | None = field(default=None, repr=False)
    backend: str = "openvino"
    _models: dict[str, Any] = field(default_factory=dict, repr=False)  # converted, not saved
    _compiled: dict[str, Any] = field(default_factory=dict, repr=False)
    _queues: dict[str, Any] = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    # Held while a tower converts; never while holding it does one wait for _lock, so
    # batches go on encoding (they take _lock) while the text tower converts.
    _tower_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _preprocess: Any = field(default=None, repr=False)
    _pixels: PixelPipeline | None = field(default=None, repr=False)
    _tokenizer: Any = field(default=None, repr=False)

    @property
    def architecture(self) -> str:
        return self.spec.architecture

    @property
    def pretrained(self) -> str:
        return self.spec.pretrained

    @property
    def device(self) -> torch.device:
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
    def pixel_pipeline(self) -> PixelPipeline:
        """Image -> model pixels, exactly as ingest's decode workers compute them."""
        if self._pixels is None:
            size = max(self.image_size)
            if self.pixel_steps is None:
                self._pixels = PixelPipeline.from_preprocess(self.preprocess, size)
            else:
                self._pixels = PixelPipeline(size, self.pixel_steps, self.mean, self.std)
        return self._pixels

    @property
    def tokenizer(self) -> Any:
        if self._tokenizer is None and self.tokenizer_kind == "clip-bpe":
            self._tokenizer = ClipTokenizer(self.context_length)  # torch-free, same ids
        elif self._tokenizer is None and self.tokenizer_kind == "hf":
            # The tokenizer.json copied in at conversion (verified with the IR); else found
            # as the torch loader finds it.
            file = self.folder / TOKENIZER_FILE
            if not file.is_file():
                file = find_tokenizer_file(self.hub_tokenizer["name"], self.spec.checkpoint)
            clean = str(self.hub_tokenizer.get("clean", "whitespace"))
            self._tokenizer = HubTokenizer(file, self.context_length, clean)
        elif self._tokenizer is None:
            import open_clip

            self._tokenizer = open_clip.get_tokenizer(self.spec.architecture)
        return self._tokenizer

    def compiled(self, kind: str) -> Any:
        """The compiled tower: ``text``, ``image`` (latency) or ``image-throughput``."""
        with self._lock:
            if kind not in self._compiled:
                import openvino as ov

                tower, _, mode = kind.partition("-")
                config = {
                    "INFERENCE_PRECISION_HINT": self.hint,
                    "PERFORMANCE_HINT": "THROUGHPUT" if mode else "LATENCY",
                }
                self._add_tower(tower)
                try:
                    core = ov.Core()
                    model = self._models.get(tower) or core.read_model(self.folder / f"{tower}.xml")
                    self._compiled[kind] = core.compile_model(model, "CPU", config)
                except RuntimeError as err:  # e.g. out of memory: one line, not a traceback
                    message = f"OpenVINO could not compile the {tower} tower: {_last_line(err)}"
                    raise ClipdbError(message) from None
            return self._compiled[kind]

    def add_missing_towers(self) -> None:
        """Convert the towers the cache folder lacks (see :meth:`_add_tower`)."""
        for tower in ("image", "text"):
            self._add_tower(tower)

    def _add_tower(self, tower: str) -> None:
        """Convert a tower the cache folder lacks, once for every process (the folder's lock);
        a folder this user cannot lock or write gets it in memory for this process only."""
        with self._tower_lock:
            if tower not in self.towers and tower not in self._models:
                self._convert_tower(tower)

    def _convert_tower(self, tower: str) -> None:
        shapes = {
            "image_size": list(self.image_size),
            "context_length": self.context_length,
            "text_trim": self.text_trim,
            "weights": weight_format(self.precision),
        }
        source = self.torch_source or (lambda: load_torch(self.spec, "cpu", "fp32").model)
        try:
            model = convert_missing_tower(self.folder, tower, shapes, source, self.architecture)
        except ClipdbError:
            raise
        except Exception as err:  # one line, as a failing compile is
            message = f"OpenVINO could not convert the {tower} tower: {_last_line(err)}"
            raise ClipdbError(message) from None
        if model is None:
            self.towers = self.towers | {tower}
        else:
            self._models[tower] = model

    def encode_images(self, pixels: Any) -> np.ndarray:
        """Preprocessed image batch (N, 3, H, W), tensor or array -> (N, dim) normalised."""
        array = pixels.numpy() if hasattr(pixels, "numpy") else np.asarray(pixels)
        array = np.ascontiguousarray(array, dtype=np.float32)
        if len(array) >= THROUGHPUT_BATCH or "image-throughput" in self._compiled:
            return _normalise(self._infer_streams(array))
        return _normalise(np.asarray(self.compiled("image")(array)[0]))

    def _infer_streams(self, array: np.ndarray) -> np.ndarray:
        """``array`` split over the throughput model's parallel inference requests."""
        import openvino as ov

        model = self.compiled("image-throughput")
        requests = int(model.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
        chunks = np.array_split(array, max(1, min(requests, len(array) // MIN_CHUNK)))
        if len(chunks) == 1:
            return np.asarray(model(array)[0])
        with self._lock:  # one batch at a time owns the queue's requests
            queue = self._queues.get("image")
            if queue is None:
                queue = self._queues["image"] = ov.AsyncInferQueue(model, requests)
            outputs: list[np.ndarray | None] = [None] * len(chunks)

            def done(request: Any, index: int) -> None:
                outputs[index] = np.array(request.get_output_tensor(0).data)  # a copy

            queue.set_callback(done)
            for index, chunk in enumerate(chunks):
                queue.start_async({0: np.ascontiguousarray(chunk)}, index)
            queue.wait_all()
        return np.concatenate([out for out in outputs if out is not None])

    def start_encode_images(self, pixels: Any) -> Callable[[], np.ndarray]:
        """:meth:`encode_images`, done before it returns (OpenVINO here runs on the CPU)."""
        done = self.encode_images(pixels)
        return lambda: done

    def encode_pil(self, images: Sequence[Image.Image]) -> np.ndarray:
        return self.encode_images(self.pixel_pipeline.images_to_array(images))

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        tokens = np.asarray(self.tokenizer(list(texts)), dtype=np.int64)
        if self.text_trim:  # as the torch path does: 5 positions for "a red car", not 77
            tokens = np.ascontiguousarray(tokens[:, : used_positions(tokens)])
        features = self.compiled("text")(tokens)[0]
        return _normalise(np.asarray(features))


def _last_line(err: BaseException) -> str:
    """The last line of OpenVINO's (multi-line, C++-traced) message, cut to 200 characters."""
    text = str(err).strip()
    return text.splitlines()[-1][:200] if text else "failed"


def _normalise(features: np.ndarray) -> np.ndarray:
    features = features.astype(np.float32, copy=False)
    norms = np.linalg.norm(features, axis=-1, keepdims=True)
    normalised: np.ndarray = (features / np.maximum(norms, 1e-12)).astype(np.float32, copy=False)
    return normalised


def compile_cached(folder: Path, spec: ModelSpec, precision: str) -> OpenVinoEncoder | None:
    """The encoder of a verified cache folder, or None when it is missing or does not match.

    Nothing is compiled here: each tower compiles when it is first used."""
    import openvino  # noqa: F401 - a missing or broken OpenVINO fails here, in load()

    manifest = read_manifest(folder)
    if manifest is None:
        return None
    steps = manifest.get("pixel_steps")
    return OpenVinoEncoder(
        spec=spec,
        dim=int(manifest["dim"]),
        precision=precision,
        image_size=(int(manifest["image_size"][0]), int(manifest["image_size"][1])),
        context_length=int(manifest["context_length"]),
        mean=tuple(manifest["mean"]),
        std=tuple(manifest["std"]),
        folder=folder,
        hint="bf16" if precision in ("bf16", "int8") and cpu_has_fast_bf16() else "f32",
        tokenizer_kind=str(manifest.get("tokenizer", "open_clip")),
        hub_tokenizer=dict(manifest.get("hub_tokenizer") or {}),
        text_trim=bool(manifest.get("text_trim", False)),
        pixel_steps=None if steps is None else pixel_steps_from_json(steps),
        towers=manifest_towers(manifest),
    )


def pixel_steps_from_json(steps: list[list[Any]]) -> tuple[tuple[Any, ...], ...]:
    """The manifest's lists back to PixelPipeline's step tuples (a resize size is a tuple)."""
    return tuple(
        tuple(tuple(part) if isinstance(part, list) else part for part in step) for step in steps
    )


def warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


def load_cached(spec: ModelSpec, precision: str) -> OpenVinoEncoder | None:
    """The encoder from a verified cache, or None for any failure (:func:`load` says why)."""
    try:
        folder, chosen = cache_target(spec, precision)
        return compile_cached(folder, spec, chosen)
    except Exception:  # the full path in load() says why, in one line
        return None


def load(spec: ModelSpec, precision: str) -> OpenVinoEncoder:
    """The cached encoder, converting the torch model first when the cache is missing or bad."""
    folder, chosen = cache_target(spec, precision)
    encoder = compile_cached(folder, spec, chosen)
    if encoder is not None:
        return encoder
    with converting(folder):  # another process converting the same model: wait for it
        encoder = compile_cached(folder, spec, chosen)
        if encoder is not None:
            return encoder
        # Minutes of silence otherwise (no progress bar exists for this, on a TTY or not).
        print(
            f"converting {spec.architecture} to OpenVINO {chosen} (once per model and "
            "precision; seconds to a minute)",
            file=sys.stderr,
            flush=True,
        )
        return _convert_and_load(folder, spec, chosen)


def convert_when_missing(folder: Path, spec: ModelSpec, chosen: str, torch_encoder: Any) -> Any:
    """The encoder of ``folder``, converted from ``torch_encoder`` (a loaded fp32 torch model)
    unless another process did it meanwhile; what a background conversion runs. Only the
    image tower, which a first ingest waits for: the text tower (1.25 of ViT-B-32's 2.28 s)
    is added by :meth:`OpenVinoEncoder.add_missing_towers` once the images are encoded, or
    when a text is first encoded."""
    with converting(folder):
        encoder = compile_cached(folder, spec, chosen)
        if encoder is None:
            print(
                f"converting {spec.architecture}'s image tower to OpenVINO {chosen} in the "
                "background (once per model and precision; seconds to a minute)",
                file=sys.stderr,
                flush=True,
            )
            encoder = _convert_and_load(folder, spec, chosen, torch_encoder, towers=("image",))
    encoder.torch_source = lambda: torch_encoder.model  # the text tower, if ever needed
    return encoder


def _convert_and_load(
    folder: Path,
    spec: ModelSpec,
    chosen: str,
    torch_encoder: Any = None,
    towers: Sequence[str] = ("image", "text"),
) -> OpenVinoEncoder:
    weights = weight_format(chosen)
    if folder.exists():
        warn(f"OpenVINO cache {folder} is corrupt or stale; rebuilding it")
    if torch_encoder is None:
        torch_encoder = load_torch(spec, "cpu", "fp32")
    pixels = torch_encoder.pixel_pipeline
    if pixels.whole is not None:
        raise RuntimeError("its image transform is not a resize + crop clipdb can run alone")
    extra = {
        "pixel_steps": [list(step) for step in pixels.pil_steps],
        "tokenizer": tokenizer_kind(torch_encoder.tokenizer),
        "dim": torch_encoder.dim,
        "image_size": list(torch_encoder.image_size),
        "mean": list(pixels.mean or OPENAI_MEAN),
        "std": list(pixels.std or OPENAI_STD),
    }
    files: dict[str, Path] = {}
    tokenizer = torch_encoder.tokenizer
    if isinstance(tokenizer, LazyHubTokenizer):
        extra["hub_tokenizer"] = dict(tokenizer.settings)
        # Kept with the IR: a text query then needs neither the hub nor its cache. Without
        # it, images still convert, and a text query says where the tokenizer is missing.
        with contextlib.suppress(ClipdbError):
            file = tokenizer.loaded().file
            files[TOKENIZER_FILE] = file
            if (file.parent / TOKENIZER_CONFIG).is_file():  # its padding token
                files[TOKENIZER_CONFIG] = file.parent / TOKENIZER_CONFIG
    convert_towers(
        torch_encoder.model,
        torch_encoder.image_size,
        weights,
        folder,
        extra,
        files,
        context_length=getattr(tokenizer, "context_length", None),
        towers=towers,
    )
    encoder = compile_cached(folder, spec, chosen)
    if encoder is None:
        raise RuntimeError(f"the converted model in {folder} does not verify")
    return encoder
