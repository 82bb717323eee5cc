"""Crafted ``.npz`` imports: refused in one line, in bounded memory, and never another file's row.

A crafted file can carry a valid checksum (anyone can compute it), so every check here is on
what the file says, not on whether it is intact.
"""

from __future__ import annotations

import hashlib
import io
import tracemalloc
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import numpy.lib.format as npformat
import psycopg
import pytest
from helpers import TINY_MODEL, insert_rows, make_images, table, unit_vectors

import clipdb
from clipdb import decode
from clipdb.db.registry import list_models, register_model
from clipdb.db.store import ImageRecord, upsert_images
from clipdb.errors import ClipdbError
from clipdb.export import INDEX_FORMAT, _checksum, read_index


def index_arrays(count: int = 3, dim: int = 32, **overrides: Any) -> dict[str, np.ndarray]:
    """The arrays of a well-formed export of ``count`` random rows, with ``overrides``."""
    arrays: dict[str, np.ndarray] = {
        "format": np.array(INDEX_FORMAT),
        "version": np.array(1, dtype=np.int64),
        "architecture": np.array(TINY_MODEL),
        "pretrained": np.array("none"),
        "dim": np.array(dim, dtype=np.int64),
        "paths": np.array([f"/nowhere/img_{i}.jpg" for i in range(count)]),
        "embeddings": unit_vectors(count, dim, seed=5),
        "sha256": np.arange(count * 32, dtype=np.uint8).reshape(count, 32),
        "size": np.full(count, 100, dtype=np.int64),
        "mtime_ns": np.full(count, 1, dtype=np.int64),
        "width": np.full(count, 8, dtype=np.int32),
        "height": np.full(count, 8, dtype=np.int32),
    }
    arrays.update(overrides)
    return arrays


def write_index(path: Path, arrays: dict[str, np.ndarray], *, compressed: bool = False) -> Path:
    """Save ``arrays`` with a valid checksum, as a crafter would."""
    arrays = {**arrays, "checksum": np.array(_checksum(arrays))}
    (np.savez_compressed if compressed else np.savez)(path, **arrays)  # type: ignore[operator]
    return path


@pytest.fixture
def loader(database) -> clipdb.ClipDB:
    return clipdb.ClipDB(TINY_MODEL, pretrained="none", database_url=database.url)


def _with_row(name: str, row: int, value: Any) -> np.ndarray:
    array = index_arrays()[name].copy()
    array[row] = value
    return array


CRAFTED = {
    "zero embedding": ({"embeddings": _with_row("embeddings", 1, 0.0)}, "not unit length"),
    "NaN embedding": ({"embeddings": _with_row("embeddings", 2, np.nan)}, "non-finite"),
    "unnormalised embedding": (
        {"embeddings": index_arrays()["embeddings"] * 2},
        "not unit length",
    ),
    "float64 embeddings": (
        {"embeddings": index_arrays()["embeddings"].astype(np.float64)},
        "of type <f8",
    ),
    "zero width": ({"width": _with_row("width", 0, 0)}, "width or height below 1"),
    "negative size": ({"size": _with_row("size", 0, -1)}, "negative size"),
    "size 2**62": (
        {"size": _with_row("size", 1, 2**62)},
        "row 1 ('/nowhere/img_1.jpg') with a size over",
    ),
    "mtime_ns -1": ({"mtime_ns": _with_row("mtime_ns", 2, -1)}, "negative mtime_ns"),
    "path bytes naming another file": (
        {
            "version": np.array(2, dtype=np.int64),
            "path_bytes": np.array(
                [b"/nowhere/img_0.jpg", b"/elsewhere.jpg", b"/nowhere/img_2.jpg"]
            ),
        },
        "row 1 whose path bytes are empty or do not match its path",
    ),
    "version 2 without path bytes": (
        {"version": np.array(2, dtype=np.int64)},
        "arrays of index format version 2",
    ),
    "NUL in a path": ({"paths": np.array(["/a", "/b\0c", "/d"])}, "NUL"),
    "relative path": ({"paths": np.array(["/a", "b.jpg", "/d"])}, "relative or seen before"),
    "duplicate path": ({"paths": np.array(["/a", "/b", "/a"])}, "relative or seen before"),
    "paths a scalar": ({"paths": np.array("/a")}, "inconsistent array shapes"),
    "dimension 0": (
        {"dim": np.array(0, dtype=np.int64), "embeddings": np.zeros((3, 0), np.float32)},
        "dimension 0",
    ),
    "structured sizes": (
        {"size": np.zeros(3, dtype=[("a", "<i8")])},
        "of type |V8",
    ),
    "huge path strings": ({"paths": np.array(["/a", "/b", "/" + "x" * 5000])}, "5001 characters"),
    "version 0": ({"version": np.array(0, dtype=np.int64)}, "version 0"),
    "wrong dimension for a known model": (  # would make that model's real ingest fail
        {"dim": np.array(8, dtype=np.int64), "embeddings": unit_vectors(3, 8)},
        f"{TINY_MODEL} makes 32-dimensional ones",
    ),
}


@pytest.mark.parametrize("case", sorted(CRAFTED))
def test_crafted_index_is_refused_in_one_line_and_imports_nothing(
    database, loader, tmp_path, case
) -> None:
    overrides, message = CRAFTED[case]
    crafted = write_index(tmp_path / "crafted.npz", index_arrays(**overrides))
    with pytest.raises(ClipdbError) as caught:
        loader.load_index(crafted)
    assert message in str(caught.value) and "\n" not in str(caught.value), caught.value
    assert table(database) == {}
    with database.connect() as conn:
        assert list_models(conn) == []


def test_zero_vector_never_reaches_a_search(database, loader, tiny_encoder, tmp_path) -> None:
    crafted = write_index(
        tmp_path / "zero.npz", index_arrays(embeddings=_with_row("embeddings", 0, 0.0))
    )
    with pytest.raises(ClipdbError, match="row 0 .* not unit length"):
        loader.load_index(crafted)
    loader.load_index(write_index(tmp_path / "fine.npz", index_arrays()))
    loader._searcher.encoder = tiny_encoder
    hits = loader.search_by_text("anything", top_k=5)
    assert len(hits) == 3 and all(np.isfinite(h["similarity"]) for h in hits)


def test_store_and_table_refuse_zero_vectors(database) -> None:
    with database.connect() as conn:
        model = register_model(conn, "m", "none", 4)
        record = ImageRecord("/z.jpg", b"\0" * 32, 1, 1, 1, 1, np.zeros(4, np.float32))
        with pytest.raises(ClipdbError, match="refusing to store /z.jpg: .* zero"):
            upsert_images(conn, model, [record])
        conn.rollback()
        with pytest.raises(psycopg.errors.CheckViolation, match="images_embedding_nonzero"):
            conn.execute(  # any writer, not only clipdb's code
                "INSERT INTO clipdb.images (model_id, path, sha256, size, mtime_ns, width,"
                " height, embedding) VALUES (%s, '/z.jpg', %s, 1, 1, 1, 1, '[0,0,0,0]')",
                (model.model_id, b"\0" * 32),
            )


def test_database_refusal_is_one_line_and_imports_nothing(database, loader, tmp_path) -> None:
    with database.connect() as conn:
        insert_rows(conn, TINY_MODEL, 8, 2)  # the model exists with another dimension
    crafted = write_index(tmp_path / "other_dim.npz", index_arrays())
    with pytest.raises(ClipdbError, match="registered with dimension 8, not 32; nothing") as caught:
        loader.load_index(crafted)
    assert "\n" not in str(caught.value)
    assert len(table(database)) == 2


def _member(name: str, header: dict[str, Any], data: bytes) -> tuple[str, bytes]:
    buffer = io.BytesIO()
    npformat.write_array_header_1_0(buffer, header)
    return f"{name}.npy", buffer.getvalue() + data


def test_huge_declared_array_is_refused_from_its_header(tmp_path) -> None:
    """A header may declare terabytes over a few bytes of data: nothing is allocated."""
    good = write_index(tmp_path / "good.npz", index_arrays())
    crafted = tmp_path / "huge.npz"
    with zipfile.ZipFile(good) as source, zipfile.ZipFile(crafted, "w") as target:
        for info in source.infolist():
            if info.filename == "embeddings.npy":
                header = {"descr": "<f4", "fortran_order": False, "shape": (10**9, 2000)}
                target.writestr(*_member("embeddings", header, b"\0" * 64))
            else:
                target.writestr(info, source.read(info))
    with pytest.raises(ClipdbError, match="header does not match its size"):
        read_index(crafted)


def test_compressed_bomb_is_refused_before_its_data_is_read(tmp_path) -> None:
    """64 MB of deflated zeros in a file of a few hundred kB: refused in bounded memory."""
    bomb = index_arrays(16_000, 1000, embeddings=np.zeros((16_000, 1000), np.float32))
    crafted = write_index(tmp_path / "bomb.npz", bomb, compressed=True)
    assert crafted.stat().st_size < 1_000_000
    tracemalloc.start()
    try:
        with pytest.raises(ClipdbError, match="expand"):
            read_index(crafted)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8_000_000, peak


def test_imported_row_never_becomes_another_files_row(
    database, loader, tiny_encoder, tmp_path
) -> None:
    """An import claims a real file's sha256 at a path that does not exist: ingest must still
    encode the real file, not re-point the imported row (and its embedding) onto it."""
    (real,) = make_images(tmp_path / "lib", 1, seed=11)
    foreign = unit_vectors(1, 32, seed=99)
    crafted = index_arrays(
        1,
        paths=np.array(["/nowhere/fake.jpg"]),
        embeddings=foreign,
        sha256=np.frombuffer(hashlib.sha256(real.read_bytes()).digest(), np.uint8).reshape(1, 32),
    )
    assert loader.load_index(write_index(tmp_path / "crafted.npz", crafted)) == 1
    loader._searcher.encoder = tiny_encoder
    summary = loader.build_image_index(tmp_path / "lib", progress=False, workers=0)
    assert (summary.new, summary.moved) == (1, 0)
    rows = table(database)
    own = tiny_encoder.encode_pil([decode.open_image(str(real))[0]])[0]
    # Stored as halfvec: each value within half precision (2**-11 relative).
    np.testing.assert_allclose(rows[str(real.resolve())][5], own, atol=1e-3)
    np.testing.assert_allclose(rows["/nowhere/fake.jpg"][5], foreign[0], atol=1e-3)
