"""The OpenVINO IR cache: one verified folder per model identity, converted once.

Conversion needs the torch model and takes seconds, so the IR is kept under
``CLIPDB_HOME/openvino/<key>`` where the key names the architecture, the weights identity, the
OpenVINO version and the weight format. A manifest holds the sha256 (and size and mtime) of
every file: a cache that does not match is rebuilt with one warning, never used. A lock per
folder makes concurrent first loads convert once. A folder may hold one tower: a first ingest
converts only the image tower, and the text tower is added when a text is first encoded.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from clipdb.config import openvino_cache_root
from clipdb.encoders.device import cpu_has_fast_bf16
from clipdb.encoders.openvino_convert import convert_tower, save_towers, tower_modules
from clipdb.encoders.torch import text_is_causal_argmax
from clipdb.models import ModelSpec, file_sha256

MANIFEST = "manifest.json"
TOWERS = ("image", "text")
# How many conversions this process ran: tests check that a second load reads the cache.
conversions = 0


# Bumped when what a cache folder holds changes, so older folders are never read: l2 = text
# tower traced with a dynamic sequence length (padding trimmed) and the pixel steps recorded;
# l3 = a folder may hold the image tower alone (an l2 reader would call it corrupt).
IR_LAYOUT = "l3"


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
        if not manifest_towers(manifest):
            return None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if rehashed:  # e.g. a copied cache: hash once, then trust the new stats
        manifest["stats"] = stats
        _write_manifest(folder, manifest)
    return manifest


def manifest_towers(manifest: dict[str, Any]) -> frozenset[str]:
    """The towers whose IR (``.xml`` and ``.bin``) the manifest lists."""
    files = manifest.get("files") or {}
    return frozenset(t for t in TOWERS if f"{t}.xml" in files and f"{t}.bin" in files)


def _write_manifest(folder: Path, manifest: dict[str, Any], *, strict: bool = False) -> None:
    """Atomically; a read-only cache (another user's) just stays as it is, unless ``strict``."""
    staging = folder / f".{MANIFEST}.{os.getpid()}"
    try:
        staging.write_text(json.dumps(manifest, indent=1))
        os.replace(staging, folder / MANIFEST)
    except OSError:
        if strict:
            raise


def convert_towers(
    clip_model: Any,
    image_size: tuple[int, int],
    weights: str,
    folder: Path,
    extra: dict[str, Any],
    extra_files: dict[str, Path] | None = None,
    context_length: int | None = None,
    towers: Sequence[str] = TOWERS,
) -> None:
    """Convert ``towers`` of a torch open_clip model to IR in ``folder`` (atomically);
    ``extra_files`` (name -> source, e.g. the tokenizer) are copied in and verified alike.
    ``context_length``: the tokenizer's, where it differs from the model's (a Hugging Face
    text tower reports its position table, 514 for XLM-R, while its tokenizer pads to 77)."""
    global conversions
    import openvino  # noqa: F401 - before anything is made: without it, nothing is

    trim = text_is_causal_argmax(clip_model)
    clip_model = clip_model.float().eval()
    context = context_length or int(getattr(clip_model, "context_length", 77))
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=folder.parent))
    try:
        modules = tower_modules(clip_model, image_size, context, trim)
        save_towers({tower: modules[tower] for tower in towers}, weights, staging)
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


def missing_tower(clip_model: Any, manifest: dict[str, Any], tower: str) -> Any:
    """``tower`` of ``clip_model`` as an OpenVINO model, shaped as the manifest records."""
    size = (int(manifest["image_size"][0]), int(manifest["image_size"][1]))
    trim = bool(manifest.get("text_trim", False))
    modules = tower_modules(clip_model.float().eval(), size, int(manifest["context_length"]), trim)
    return convert_tower(*modules[tower], str(manifest["weights"]))


def convert_missing_tower(
    folder: Path,
    tower: str,
    shapes: dict[str, Any],
    source: Callable[[], Any],
    architecture: str,
) -> Any:
    """``tower`` for a verified ``folder`` that lacks it, from the open_clip model ``source``
    loads: added to the folder once for every process (its lock), or None when another process
    added it meanwhile. A folder this user cannot lock gets the model in memory only;
    ``shapes`` (image_size, context_length, text_trim, weights) then stand in for its manifest."""
    with contextlib.ExitStack() as stack:
        manifest = None
        with contextlib.suppress(OSError):  # no lock: another user's cache folder
            stack.enter_context(converting(folder))
            manifest = read_manifest(folder)
        if manifest is not None and tower in manifest_towers(manifest):
            return None
        print(
            f"converting the {tower} tower of {architecture} to OpenVINO (once per model and "
            "precision; seconds)",
            file=sys.stderr,
            flush=True,
        )
        if manifest is None:
            return missing_tower(source(), shapes, tower)
        return add_tower(source(), folder, manifest, tower)


def add_tower(clip_model: Any, folder: Path, manifest: dict[str, Any], tower: str) -> Any:
    """Convert ``tower`` into ``folder`` (verified, its ``manifest`` read under the caller's
    :func:`converting` lock): the files first, then the manifest that lists them, so a reader
    sees the tower whole or not at all. Returns the converted model; a folder that cannot be
    written (another user's cache) stays as it was, and the caller runs the model from memory."""
    global conversions
    import openvino as ov

    model = missing_tower(clip_model, manifest, tower)
    conversions += 1
    try:
        staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=folder.parent))
    except OSError:
        return model
    try:
        ov.save_model(model, staging / f"{tower}.xml", compress_to_fp16=False)
        for name in sorted(os.listdir(staging)):
            manifest["files"][name] = file_sha256(staging / name)
            manifest.setdefault("stats", {})[name] = _stat(staging / name)
            os.replace(staging / name, folder / name)
        _write_manifest(folder, manifest, strict=True)
    except OSError:
        pass  # the folder stays as it was listed; the tower runs from memory
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return model


def cache_target(spec: ModelSpec, precision: str) -> tuple[Path, str]:
    """The cache folder of ``spec`` and the precision the compiled model runs at."""
    import openvino

    chosen = precision
    if precision in ("auto", "fp16"):
        chosen = "bf16" if cpu_has_fast_bf16() else "fp32"
    weights = weight_format(chosen)
    return openvino_cache_root() / cache_key(spec, weights, openvino.get_version()), chosen


def weight_format(precision: str) -> str:
    """How a cache folder stores the weights for a chosen ``precision``: int8 compressed,
    else fp32 (bf16 and fp32 both run from fp32 weights)."""
    return "int8" if precision == "int8" else "fp32"


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
