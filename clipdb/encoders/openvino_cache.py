"""The OpenVINO IR cache: one verified folder per model identity, converted once.

Conversion needs the torch model and takes seconds, so the IR is kept under
``CLIPDB_HOME/openvino/<key>`` where the key names the architecture, the weights identity, the
OpenVINO version and the weight format. A manifest holds the sha256 (and size and mtime) of
every file: a cache that does not match is rebuilt with one warning, never used. A lock per
folder makes concurrent first loads convert once.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from clipdb.config import openvino_cache_root
from clipdb.encoders.device import cpu_has_fast_bf16
from clipdb.encoders.torch import encode_text_prefix, text_is_causal_argmax
from clipdb.models import ModelSpec, file_sha256

MANIFEST = "manifest.json"
TOWERS = ("image", "text")
# How many conversions this process ran: tests check that a second load reads the cache.
conversions = 0


# Bumped when what a cache folder holds changes, so older folders are never read: l2 = text
# tower traced with a dynamic sequence length (padding trimmed) and the pixel steps recorded.
IR_LAYOUT = "l2"


def cache_key(spec: ModelSpec, weights: str, version: str) -> str:
    """One folder per (architecture, weights identity, OpenVINO version, weight format)."""
    identity = hashlib.sha256(f"{spec.architecture}\0{spec.pretrained}".encode()).hexdigest()
    safe_arch = "".join(c if c.isalnum() or c in "-_." else "_" for c in spec.architecture)
    return f"{safe_arch}-{identity[:16]}-ov{version.split('-')[0]}-{weights}-{IR_LAYOUT}"


def _stat(path: Path) -> list[int]:
    status = path.stat()
    return [status.st_size, status.st_mtime_ns]


def read_manifest(folder: Path) -> dict[str, Any] | None:
    """The manifest when every file it lists is present with the recorded sha256, else None.

    Hashing ~600 MB of IR on every load cost a cold text query ~0.3 s, so a file whose size
    and mtime still equal those recorded when it was hashed is taken as verified; any rewrite
    (a partial copy, an edit, a truncation) changes them and sends it through sha256 again.
    """
    try:
        manifest: dict[str, Any] = json.loads((folder / MANIFEST).read_text())
        files: dict[str, str] = manifest["files"]
        stats: dict[str, list[int]] = dict(manifest.get("stats") or {})
        rehashed = False
        for name, digest in files.items():
            current = _stat(folder / name)
            if stats.get(name) == current:
                continue
            if file_sha256(folder / name) != digest:
                return None
            stats[name], rehashed = current, True
        if {f"{tower}.{ext}" for tower in TOWERS for ext in ("xml", "bin")} - set(files):
            return None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if rehashed:  # e.g. a copied cache: hash once, then trust the new stats
        manifest["stats"] = stats
        _write_manifest(folder, manifest)
    return manifest


def _write_manifest(folder: Path, manifest: dict[str, Any]) -> None:
    """Atomically; a read-only cache (another user's) just stays as it is."""
    try:
        staging = folder / f".{MANIFEST}.{os.getpid()}"
        staging.write_text(json.dumps(manifest, indent=1))
        os.replace(staging, folder / MANIFEST)
    except OSError:
        pass


def convert_towers(
    clip_model: Any,
    image_size: tuple[int, int],
    weights: str,
    folder: Path,
    extra: dict[str, Any],
    extra_files: dict[str, Path] | None = None,
    context_length: int | None = None,
) -> None:
    """Convert both towers of a torch open_clip model to IR in ``folder`` (atomically);
    ``extra_files`` (name -> source, e.g. the tokenizer) are copied in and verified alike.
    ``context_length``: the tokenizer's, where it differs from the model's (a Hugging Face
    text tower reports its position table, 514 for XLM-R, while its tokenizer pads to 77)."""
    global conversions
    import openvino as ov  # before anything is made: without it, nothing is

    trim = text_is_causal_argmax(clip_model)
    clip_model = clip_model.float().eval()
    context = context_length or int(getattr(clip_model, "context_length", 77))
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=folder.parent))
    try:
        _save_towers(ov, _towers(clip_model, image_size, context, trim), weights, staging)
        for name, source in (extra_files or {}).items():
            shutil.copyfile(source, staging / name)
        files: dict[str, str] = {}
        stats: dict[str, list[int]] = {}
        for name in sorted(os.listdir(staging)):
            files[name] = file_sha256(staging / name)
            stats[name] = _stat(staging / name)
        manifest = dict(
            extra,
            files=files,
            stats=stats,
            context_length=context,
            weights=weights,
            text_trim=trim,
        )
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=1))
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(staging, folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    conversions += 1


def _towers(
    clip_model: Any, image_size: tuple[int, int], context: int, trim: bool
) -> dict[str, tuple[Any, Any, list[int]]]:
    """Each tower as a torch module of its own, with an example input and the input shape
    (-1: any size) to convert it with. ``trim``: the text tower takes any number of tokens."""
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
            if trim:  # any number of positions: callers cut the padding (encode_texts)
                return encode_text_prefix(self.model, tokens).float()
            return self.model.encode_text(tokens).float()  # type: ignore[no-any-return]

    return {
        "image": (ImageTower(clip_model), torch.zeros(1, 3, *image_size), [-1, 3, *image_size]),
        "text": (
            TextTower(clip_model),
            torch.zeros(1, context, dtype=torch.int64),
            [-1, -1 if trim else context],
        ),
    }


def _save_towers(
    ov: Any, towers: dict[str, tuple[Any, Any, list[int]]], weights: str, staging: Path
) -> None:
    """Convert each tower with OpenVINO (``ov``) and save it as ``<tower>.xml``/``.bin``;
    int8: weights compressed."""
    import torch

    with torch.inference_mode():
        for tower, (module, example, shape) in towers.items():
            converted = ov.convert_model(module, example_input=example, input=[shape])
            if weights == "int8":
                import logging

                import nncf

                nncf.set_log_level(logging.ERROR)  # its per-layer tables are not for users
                converted = nncf.compress_weights(converted)
            ov.save_model(converted, staging / f"{tower}.xml", compress_to_fp16=False)


def cache_target(spec: ModelSpec, precision: str) -> tuple[Path, str]:
    """The cache folder of ``spec`` and the precision the compiled model runs at."""
    import openvino

    chosen = precision
    if precision in ("auto", "fp16"):
        chosen = "bf16" if cpu_has_fast_bf16() else "fp32"
    weights = "int8" if chosen == "int8" else "fp32"
    return openvino_cache_root() / cache_key(spec, weights, openvino.get_version()), chosen


@contextlib.contextmanager
def converting(folder: Path) -> Iterator[None]:
    """An exclusive lock per cache folder, so concurrent first loads convert once and
    nobody replaces a folder another process is compiling from."""
    import fcntl

    folder.parent.mkdir(parents=True, exist_ok=True)
    lock = folder.parent / f".{folder.name}.lock"
    fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock
