"""Model identities that can be worked out without importing torch or open_clip.

Importing open_clip costs seconds (it imports torch). A no-op ingest re-run or a ``--like``
search only needs to know which rows a model's embeddings are stored under, so the common
cases are answered here; :func:`clipdb.encoders.resolve_model_spec` does the full validation
whenever a model is actually loaded.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

RANDOM_WEIGHTS = "none"

# Names the original CLIPImageRetrieval tool (OpenAI's clip package) used.
MODEL_ALIASES = {
    "ViT-B/32": "ViT-B-32",
    "ViT-B/16": "ViT-B-16",
    "ViT-L/14": "ViT-L-14",
    "ViT-L/14@336px": "ViT-L-14-336",
    "RN50": "RN50",
    "RN101": "RN101",
}

# open_clip's standard ("openai") weights for the architectures users name most. Must agree
# with clipdb.encoders.spec.default_pretrained, which picks "openai" whenever open_clip lists it.
STANDARD_WEIGHTS = {
    name: "openai"
    for name in (
        "ViT-B-32",
        "ViT-B-16",
        "ViT-L-14",
        "ViT-L-14-336",
        "RN50",
        "RN101",
        "RN50x4",
        "RN50x16",
        "RN50x64",
    )
}


def canonical_model_name(name: str) -> str:
    """Map the original tool's model names (``ViT-B/32``) to open_clip's (``ViT-B-32``)."""
    return MODEL_ALIASES.get(name, name)


@dataclass(frozen=True)
class ModelSpec:
    """Which weights to load, and the identity stored with their embeddings."""

    architecture: str
    pretrained: str  # identity in clipdb.models: tag, "none" or "file:sha256:..."
    checkpoint: Path | None = None  # set for local files


def file_identity(path: Path) -> str:
    """How a local checkpoint is named in the database: by content, so a copy matches."""
    return f"file:sha256:{file_sha256(path)[:16]}"


def file_sha256(path: Path) -> str:
    """A file's sha256 (hex), read once per process while the file stays as it was.

    One command asks for a checkpoint's identity several times (:func:`quick_model_spec`,
    then ``resolve_model_spec`` when the model loads), and a checkpoint is hundreds of MB.
    The answer is kept per (real path, size, mtime, inode), the same trust the OpenVINO cache
    gives its files: a rewrite or a replacement changes one of them and is read again.
    """
    status = os.stat(path)
    return _sha256(os.path.realpath(path), status.st_size, status.st_mtime_ns, status.st_ino)


@lru_cache(maxsize=64)
def _sha256(real_path: str, size: int, mtime_ns: int, inode: int) -> str:
    """The hash itself; the file's size, mtime and inode only key the cache."""
    digest = hashlib.sha256()
    with open(real_path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def quick_model_spec(model: str, pretrained: str | None) -> ModelSpec | None:
    """The stored identity without importing open_clip, or None when only open_clip can tell.

    Names are not validated here: callers either find the identity already registered in the
    database (so it was valid) or go on to load the model, which validates everything.
    """
    architecture = canonical_model_name(model)
    if pretrained is None:
        tag = STANDARD_WEIGHTS.get(architecture)
        return ModelSpec(architecture, tag) if tag else None
    if pretrained.lower() == RANDOM_WEIGHTS:
        return ModelSpec(architecture, RANDOM_WEIGHTS)
    path = local_checkpoint(pretrained)
    if path is not None:
        return ModelSpec(architecture, file_identity(path), checkpoint=path.resolve())
    return ModelSpec(architecture, pretrained)


# The weights files of a Hugging Face snapshot folder of an open_clip model, in open_clip's
# order of preference.
SNAPSHOT_WEIGHTS = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")


def local_checkpoint(pretrained: str) -> Path | None:
    """The checkpoint file ``--pretrained`` names: a file, or the weights file in a snapshot
    folder (``--pretrained DIR``); None when it names neither (a tag, or nothing there)."""
    path = Path(pretrained).expanduser()
    if path.is_file():
        return path
    if path.is_dir():
        for name in SNAPSHOT_WEIGHTS:
            if (path / name).is_file():
                return path / name
    return None
