"""Portable export/import of one model's rows: a checksummed ``.npz`` of plain arrays.

Loaded with ``allow_pickle=False`` only, so a file a user hands us can never run code.
Format version 2 adds ``path_bytes``, each file's exact name bytes (``paths`` holds display
forms, in which a name that is not UTF-8 and a UTF-8 name can look alike); version 1 files,
which have only ``paths``, are still read.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import os
import re
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import numpy.lib.format as npformat
import psycopg

from clipdb.config import model_config_dirs
from clipdb.db.queries import as_array, export_rows
from clipdb.db.registry import Model, register_model
from clipdb.db.store import ImageRecord, upsert_images
from clipdb.errors import ClipdbError, first_line
from clipdb.files import MAX_FILE_BYTES, display

INDEX_FORMAT = "clipdb-index"
INDEX_VERSION = 2
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
# Arrays of format version 2 on, covered by the checksum after the ones above.
_V2_ARRAYS = ("path_bytes",)


def _checksum(arrays: dict[str, np.ndarray]) -> str:
    digest = hashlib.sha256()
    for name in (*_INDEX_ARRAYS, *(n for n in _V2_ARRAYS if n in arrays)):
        array = np.ascontiguousarray(arrays[name])
        digest.update(f"{name}:{array.dtype.str}:{array.shape};".encode())
        digest.update(array.data)  # the buffer itself (== tobytes()), never a copy
    return digest.hexdigest()


def export_index(
    conn: psycopg.Connection[Any], model: Model, index_path: str | os.PathLike[str]
) -> Path:
    """Write ``model``'s rows to ``index_path`` (.npz, plain arrays + sha256 checksum)."""
    rows = export_rows(conn, model)  # paths as the file system knows them
    embeddings = np.zeros((len(rows), model.dim), dtype=np.float32)
    for position, row in enumerate(rows):
        embeddings[position] = as_array(row[6])
    arrays: dict[str, np.ndarray] = {
        "format": np.array(INDEX_FORMAT),
        "version": np.array(INDEX_VERSION, dtype=np.int64),
        "architecture": np.array(model.architecture),
        "pretrained": np.array(model.pretrained),
        "dim": np.array(model.dim, dtype=np.int64),
        "paths": np.array([display(row[0]) for row in rows], dtype=str).reshape(len(rows)),
        "embeddings": embeddings,
        "sha256": np.frombuffer(b"".join(bytes(row[1]) for row in rows), dtype=np.uint8)
        .reshape(len(rows), 32)
        .copy(),
        "size": np.array([row[2] for row in rows], dtype=np.int64),
        "mtime_ns": np.array([row[3] for row in rows], dtype=np.int64),
        "width": np.array([row[4] for row in rows], dtype=np.int32),
        "height": np.array([row[5] for row in rows], dtype=np.int32),
    }
    # Exact bytes: numpy's "S" strings drop trailing NULs only, and no file name holds a NUL.
    arrays["path_bytes"] = np.array([os.fsencode(row[0]) for row in rows], dtype=np.bytes_).reshape(
        len(rows)
    )
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


# What each array must be, exactly: dtype (little-endian, as np.savez writes on every machine
# clipdb runs on; strings checked by kind and length) and shape (() scalar, ("rows",) one per
# row, ("rows", n) a matrix). Anything else is refused before its data is read.
_SPEC: dict[str, tuple[str, tuple[str | int, ...]]] = {
    "format": ("U", ()),
    "version": ("<i8", ()),
    "architecture": ("U", ()),
    "pretrained": ("U", ()),
    "dim": ("<i8", ()),
    "paths": ("U", ("rows",)),
    "embeddings": ("<f4", ("rows", "dim")),
    "sha256": ("|u1", ("rows", 32)),
    "size": ("<i8", ("rows",)),
    "mtime_ns": ("<i8", ("rows",)),
    "width": ("<i4", ("rows",)),
    "height": ("<i4", ("rows",)),
    "checksum": ("U", ()),
    "path_bytes": ("S", ("rows",)),  # version 2 on
}
MAX_TEXT_CHARS = 4096  # PATH_MAX: longer paths (or model tags) are not real ones
# The arrays may need at most this many times the file's own size in memory (plus 1 MiB):
# clipdb writes exports uncompressed, and a deflated member that claims gigabytes (a "zip
# bomb", or a header declaring a huge array) must not make verification cost gigabytes.
MAX_EXPANSION = 16
UNIT_TOLERANCE = 1e-3  # embeddings are L2-normalised; float16 encoders stay well inside this
MAX_DIM = 2000  # clipdb.models.dim's CHECK


class _Refused(Exception):
    """An index file that is not acceptable: becomes one ClipdbError line naming the file."""


_PICKLED = "holds pickled data, which clipdb never loads; export it again with ClipDB.save_index"


def _declared(
    archive: zipfile.ZipFile, info: zipfile.ZipInfo
) -> tuple[tuple[int, ...], bool, np.dtype[Any], int]:
    """A member's declared shape, order and dtype, and where its data starts: header only."""
    with archive.open(info) as handle:
        version = npformat.read_magic(handle)
        if version == (1, 0):
            shape, fortran, dtype = npformat.read_array_header_1_0(handle)
        elif version == (2, 0):
            shape, fortran, dtype = npformat.read_array_header_2_0(handle)
        else:
            raise _Refused(
                f"has {info.filename} in .npy format {version}, which clipdb does not read"
            )
        offset = handle.tell()
    if dtype.hasobject:
        raise _Refused(_PICKLED)
    return shape, fortran, dtype, offset


def _header(archive: zipfile.ZipFile, name: str) -> tuple[tuple[int, ...], np.dtype[Any], int]:
    """An index array's declared shape and dtype, checked, and its uncompressed size."""
    try:
        info = archive.getinfo(f"{name}.npy")
    except KeyError:
        raise _Refused("is not a clipdb index file") from None
    shape, fortran, dtype, offset = _declared(archive, info)
    kind, _ = _SPEC[name]
    strings = {"U": "<U", "S": "|S"}.get(kind)
    if (dtype.str[:2] != strings if strings else dtype.str != kind) or fortran:
        raise _Refused(f"has array {name} of type {dtype.str}{' (Fortran order)' * fortran}")
    length = dtype.itemsize // 4 if kind == "U" else dtype.itemsize
    if strings and length > MAX_TEXT_CHARS:
        raise _Refused(f"has array {name} of strings up to {length} characters long")
    data = dtype.itemsize * math.prod(shape)
    if offset + data != info.file_size:  # np.save writes exactly header + data
        raise _Refused(f"has array {name} whose header does not match its size")
    return shape, dtype, info.file_size


def _load(archive: zipfile.ZipFile, name: str) -> np.ndarray:
    with archive.open(f"{name}.npy") as handle:
        return npformat.read_array(handle, allow_pickle=False)


def _read_arrays(path: Path) -> dict[str, np.ndarray]:
    """Headers first (shapes, dtypes, sizes against the file's size), then the data."""
    with open(path, "rb") as handle:
        magic = handle.read(4)
        disk_size = os.fstat(handle.fileno()).st_size
    if magic[:1] == b"\x80":  # pickle protocol 2+: the original tool's index format
        raise _Refused(_PICKLED)
    if magic != b"PK\x03\x04":
        raise _Refused("is not a clipdb index file")
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist()[: len(_SPEC) + 1]:  # say "pickled" for any object array
            _declared(archive, info)
        members = set(archive.namelist())
        headers = {
            name: _header(archive, name)
            for name in _SPEC
            if name not in _V2_ARRAYS or f"{name}.npy" in members
        }
        total = sum(size for _, _, size in headers.values())
        if total > MAX_EXPANSION * disk_size + (1 << 20):
            raise _Refused(
                f"declares {total} bytes of arrays in a {disk_size}-byte file; "
                "clipdb refuses files that expand that much"
            )
        for name, (shape, _, _) in headers.items():
            if _SPEC[name][1] == () and shape != ():
                raise _Refused(f"has array {name} of shape {shape}, not a single value")
        arrays = {name: _load(archive, name) for name in ("format", "version", "dim")}
        if str(arrays["format"]) != INDEX_FORMAT:
            raise _Refused("is not a clipdb index file")
        version = int(arrays["version"])
        if version > INDEX_VERSION:
            raise _Refused(
                f"is index format version {version}; this clipdb reads up to {INDEX_VERSION}"
            )
        dim = int(arrays["dim"])
        if version < 1 or not 1 <= dim <= MAX_DIM:
            raise _Refused(f"declares version {version} and dimension {dim}")
        if (version >= 2) != all(name in headers for name in _V2_ARRAYS):
            raise _Refused(f"does not hold the arrays of index format version {version}")
        rows = headers["paths"][0][0] if headers["paths"][0] else -1
        for name, (_, wanted) in _SPEC.items():
            if name not in headers:
                continue
            expected = tuple({"rows": rows, "dim": dim}.get(str(n), n) for n in wanted)
            if headers[name][0] != expected:
                raise _Refused("has inconsistent array shapes")
        for name in headers:
            if name not in arrays:
                arrays[name] = _load(archive, name)
    return arrays


def read_index(index_path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """The arrays of an export, checked before any row is trusted: exact dtypes and shapes
    (from the headers, before the data is read, in memory bounded by the file's size), the
    checksum, then every row (a usable path, a unit-norm finite embedding, sane sizes and
    times)."""
    path = Path(index_path)
    try:
        arrays = _read_arrays(path)
        checksum = _checksum(arrays)
        if checksum != str(arrays["checksum"]):
            raise _Refused("failed its checksum: the file was modified or is corrupt")
        _check_rows(arrays)
    except FileNotFoundError:
        raise ClipdbError(f"index file {path} does not exist") from None
    except _Refused as err:
        raise ClipdbError(f"{path} {err}") from None
    except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as err:  # truncated, flipped
        raise ClipdbError(f"cannot read index file {path}: {first_line(err)}") from None
    except (ValueError, RuntimeError, NotImplementedError, SystemError) as err:
        # A malformed .npy header, an encrypted or oddly compressed member, bad code points.
        raise ClipdbError(f"{path} is not a clipdb index file: {first_line(err)}") from None
    return arrays


def _text(value: Any, what: str) -> str:
    """A string from the file that PostgreSQL can store: non-empty, UTF-8, no NUL."""
    text = str(value)
    if not text or "\0" in text:
        raise _Refused(f"has an empty or NUL-containing {what}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise _Refused(f"has a {what} that is not valid Unicode: {text!r}") from None
    return text


def _config_dim(architecture: str) -> int | None:
    """The embedding size open_clip's JSON config for ``architecture`` declares (read as a
    file: no torch import), or None for an architecture clipdb has no config for."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,200}", architecture):
        return None  # never a file name built from a crafted string
    spec = importlib.util.find_spec("open_clip")
    places = model_config_dirs()
    places += [
        os.path.join(p, "model_configs") for p in (spec and spec.submodule_search_locations) or []
    ]
    for place in filter(None, places):
        try:
            with open(os.path.join(place, f"{architecture}.json"), encoding="utf-8") as handle:
                return int(json.load(handle)["embed_dim"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return None


def _check_rows(arrays: dict[str, np.ndarray]) -> None:
    architecture = _text(arrays["architecture"], "architecture")
    known = _config_dim(architecture)
    if known is not None and known != int(arrays["dim"]):
        # Registering it would make the real model's ingest fail ("registered with dimension").
        raise _Refused(
            f"claims {int(arrays['dim'])}-dimensional {architecture} embeddings; "
            f"{architecture} makes {known}-dimensional ones"
        )
    _text(arrays["pretrained"], "pretrained tag")
    seen: set[str] = set()
    for row, path in enumerate(file_paths(arrays)):
        if not os.path.isabs(path) or path in seen:
            raise _Refused(f"has row {row} with path {display(path)!r}, relative or seen before")
        seen.add(path)

    def first(bad: np.ndarray, what: str) -> None:
        if bad.any():
            row = int(np.argmax(bad))
            raise _Refused(f"has row {row} ({str(arrays['paths'][row])!r}) with {what}")

    first(arrays["size"] < 0, "a negative size")
    first(
        arrays["size"] > MAX_FILE_BYTES, f"a size over {MAX_FILE_BYTES} bytes, which no image has"
    )
    first(arrays["mtime_ns"] < 0, "a modification time before 1970 (negative mtime_ns)")
    first((arrays["width"] <= 0) | (arrays["height"] <= 0), "a width or height below 1")
    embeddings = arrays["embeddings"]
    first(~np.isfinite(embeddings).all(axis=1), "a non-finite embedding")
    norms = np.linalg.norm(embeddings.astype(np.float64), axis=1)
    first(
        np.abs(norms - 1) > UNIT_TOLERANCE,
        "an embedding that is not unit length (zero or not normalised); clipdb stores "
        "L2-normalised embeddings only",
    )


def file_paths(arrays: dict[str, np.ndarray]) -> list[str]:
    """Each row's path as the file system knows it: from its exact bytes (version 2), which
    must match its display form in ``paths``; a version 1 file has only ``paths``."""
    if "path_bytes" not in arrays:
        return [_text(value, f"path in row {row}") for row, value in enumerate(arrays["paths"])]
    found = []
    for row, (raw, shown) in enumerate(zip(arrays["path_bytes"], arrays["paths"], strict=True)):
        path = os.fsdecode(bytes(raw))
        if not raw or b"\0" in bytes(raw) or display(path) != str(shown):
            raise _Refused(f"has row {row} whose path bytes are empty or do not match its path")
        found.append(path)
    return found


def import_index(
    conn: psycopg.Connection[Any], index_path: str | os.PathLike[str]
) -> tuple[Model, int]:
    """Upsert an export's rows under its model (registered if new); one transaction: a row
    the database refuses leaves nothing imported. The rows are marked imported, so ingest
    never re-points one onto another file that happens to have the hash it claims."""
    arrays = read_index(index_path)
    paths = file_paths(arrays)
    records = [
        ImageRecord(
            path=paths[i],
            sha256=arrays["sha256"][i].tobytes(),
            size=int(arrays["size"][i]),
            mtime_ns=int(arrays["mtime_ns"][i]),
            width=int(arrays["width"][i]),
            height=int(arrays["height"][i]),
            embedding=arrays["embeddings"][i],
        )
        for i in range(len(arrays["paths"]))
    ]
    try:
        with conn.transaction():
            model = register_model(
                conn, str(arrays["architecture"]), str(arrays["pretrained"]), int(arrays["dim"])
            )
            upsert_images(conn, model, records, imported=True)
    except psycopg.Error as err:
        raise ClipdbError(
            f"cannot import {index_path}: {first_line(err)}; nothing was imported"
        ) from None
    return model, len(records)
