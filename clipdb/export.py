"""Portable export/import of one model's rows: a checksummed ``.npz`` of plain arrays.

Loaded with ``allow_pickle=False`` only, so a file a user hands us can never run code.
"""

from __future__ import annotations

import hashlib
import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import psycopg

from clipdb.db.queries import as_array, export_rows
from clipdb.db.registry import Model, register_model
from clipdb.db.store import ImageRecord, upsert_images
from clipdb.errors import ClipdbError

INDEX_FORMAT = "clipdb-index"
INDEX_VERSION = 1
# Arrays covered by the checksum, in this order.
_INDEX_ARRAYS = (
    "format",
    "version",
    "architecture",
    "pretrained",
    "dim",
    "paths",
    "embeddings",
    "sha256",
    "size",
    "mtime_ns",
    "width",
    "height",
)


def _checksum(arrays: dict[str, np.ndarray]) -> str:
    digest = hashlib.sha256()
    for name in _INDEX_ARRAYS:
        array = np.ascontiguousarray(arrays[name])
        digest.update(f"{name}:{array.dtype.str}:{array.shape};".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def export_index(
    conn: psycopg.Connection[Any], model: Model, index_path: str | os.PathLike[str]
) -> Path:
    """Write ``model``'s rows to ``index_path`` (.npz, plain arrays + sha256 checksum)."""
    rows = export_rows(conn, model)
    embeddings = np.zeros((len(rows), model.dim), dtype=np.float32)
    for position, row in enumerate(rows):
        embeddings[position] = as_array(row[6])
    arrays: dict[str, np.ndarray] = {
        "format": np.array(INDEX_FORMAT),
        "version": np.array(INDEX_VERSION, dtype=np.int64),
        "architecture": np.array(model.architecture),
        "pretrained": np.array(model.pretrained),
        "dim": np.array(model.dim, dtype=np.int64),
        "paths": np.array([row[0] for row in rows], dtype=str).reshape(len(rows)),
        "embeddings": embeddings,
        "sha256": np.frombuffer(b"".join(bytes(row[1]) for row in rows), dtype=np.uint8)
        .reshape(len(rows), 32)
        .copy(),
        "size": np.array([row[2] for row in rows], dtype=np.int64),
        "mtime_ns": np.array([row[3] for row in rows], dtype=np.int64),
        "width": np.array([row[4] for row in rows], dtype=np.int32),
        "height": np.array([row[5] for row in rows], dtype=np.int32),
    }
    arrays["checksum"] = np.array(_checksum(arrays))
    path = Path(index_path)
    partial = path.with_name(path.name + ".partial")
    try:
        with open(partial, "wb") as handle:  # a handle keeps the name as given (no .npz added)
            np.savez(handle, **arrays)  # type: ignore[arg-type]
        os.replace(partial, path)
    except OSError as err:
        raise ClipdbError(f"cannot write index {path}: {err.strerror or err}") from None
    return path


def read_index(index_path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """The arrays of an export, checked: format, version, shapes and checksum."""
    path = Path(index_path)
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {name: data[name] for name in data.files}
    except FileNotFoundError:
        raise ClipdbError(f"index file {path} does not exist") from None
    except ValueError as err:
        if "pickle" in str(err):
            raise ClipdbError(
                f"{path} holds pickled data, which clipdb never loads; "
                "export it again with ClipDB.save_index"
            ) from None
        raise ClipdbError(f"{path} is not a clipdb index file: {err}") from None
    except (OSError, EOFError, zipfile.BadZipFile) as err:  # truncated or bytes flipped
        raise ClipdbError(f"cannot read index file {path}: {err}") from None
    missing = [name for name in (*_INDEX_ARRAYS, "checksum") if name not in arrays]
    if missing or str(arrays["format"]) != INDEX_FORMAT:
        raise ClipdbError(f"{path} is not a clipdb index file")
    if int(arrays["version"]) > INDEX_VERSION:
        raise ClipdbError(
            f"{path} is index format version {int(arrays['version'])}; "
            f"this clipdb reads up to {INDEX_VERSION}"
        )
    try:
        checksum = _checksum(arrays)
    except (TypeError, ValueError):
        checksum = ""
    if checksum != str(arrays["checksum"]):
        raise ClipdbError(f"{path} failed its checksum: the file was modified or is corrupt")
    count, dim = len(arrays["paths"]), int(arrays["dim"])
    if arrays["embeddings"].shape != (count, dim) or arrays["sha256"].shape != (count, 32):
        raise ClipdbError(f"{path} has inconsistent array shapes")
    return arrays


def import_index(
    conn: psycopg.Connection[Any], index_path: str | os.PathLike[str]
) -> tuple[Model, int]:
    """Upsert an export's rows under its model (registered if new); one transaction."""
    arrays = read_index(index_path)
    model = register_model(
        conn, str(arrays["architecture"]), str(arrays["pretrained"]), int(arrays["dim"])
    )
    records = [
        ImageRecord(
            path=str(arrays["paths"][i]),
            sha256=arrays["sha256"][i].tobytes(),
            size=int(arrays["size"][i]),
            mtime_ns=int(arrays["mtime_ns"][i]),
            width=int(arrays["width"][i]),
            height=int(arrays["height"][i]),
            embedding=arrays["embeddings"][i],
        )
        for i in range(len(arrays["paths"]))
    ]
    with conn.transaction():
        upsert_images(conn, model, records)
    return model, len(records)
