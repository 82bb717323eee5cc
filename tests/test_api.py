"""``clipdb.ClipDB``: the original tool's methods, and the .npz export/import."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
from helpers import TINY_MODEL, make_images
from PIL import Image

import clipdb
from clipdb import viz
from clipdb.db import Database
from clipdb.db.migrate import upgrade
from clipdb.errors import ClipdbError
from clipdb.export import read_index


@pytest.fixture
def retriever(database, tiny_encoder, tmp_path):
    """A ClipDB on the test database with 8 images built through build_image_index."""
    db = clipdb.ClipDB(model_name=TINY_MODEL, pretrained="none", database_url=database.url)
    db._searcher.encoder = tiny_encoder  # the session's model, to keep tests fast
    make_images(tmp_path / "lib", 8, seed=3)
    summary = db.build_image_index(tmp_path / "lib", progress=False, workers=0)
    assert summary.new == 8
    return db


@pytest.fixture
def other_database(pg_server, template_database):
    """A second fresh database (for export -> import)."""
    import psycopg

    name = f"clipdb_test_other_{os.getpid()}"
    admin = pg_server.url(database="postgres")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {name} TEMPLATE {template_database}")
    yield Database(url=pg_server.url(database=name))
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def test_constructor_takes_the_original_names_and_loads_nothing() -> None:
    db = clipdb.ClipDB(model_name="ViT-B/32")
    assert db.settings.model == "ViT-B-32"
    assert db._searcher.encoder is None and db._database is None


def test_search_similar_images_returns_the_original_format(retriever, tmp_path) -> None:
    query = tmp_path / "lib" / "img_0005.jpg"
    results = retriever.search_similar_images(str(query), top_k=3)
    assert [r["rank"] for r in results] == [1, 2, 3]
    assert results[0]["image_path"] == str(query.resolve())
    assert results[0]["filename"] == "img_0005.jpg"
    assert results[0]["similarity"] >= 0.999
    under = retriever.search_similar_images(query, top_k=8, threshold=results[2]["similarity"])
    assert [r["image_path"] for r in under] == [r["image_path"] for r in results]


def test_search_by_text(retriever) -> None:
    results = retriever.search_by_text("a photo of a dog", top_k=4)
    assert len(results) == 4
    assert {"rank", "image_path", "similarity", "filename"} <= set(results[0])


def test_print_search_results(retriever, tmp_path, capsys) -> None:
    results = [
        {"rank": 1, "image_path": "/x/a.jpg", "similarity": 0.98765, "filename": "a.jpg"},
        {"rank": 2, "image_path": "/x/b.jpg", "similarity": 0.5, "filename": "b.jpg"},
    ]
    retriever.print_search_results("q.jpg", results)
    assert capsys.readouterr().out == (
        "query: q.jpg\n"
        "rank  similarity  path\n"
        "   1      0.9877  /x/a.jpg\n"
        "   2      0.5000  /x/b.jpg\n"
    )


def test_visualize_search_results(retriever, tmp_path) -> None:
    query = tmp_path / "lib" / "img_0001.jpg"
    results = retriever.search_similar_images(query, top_k=7)
    saved = retriever.visualize_search_results(query, results, save_path=tmp_path / "r.png")
    with Image.open(saved) as image:
        assert image.format == "PNG"
        assert image.size == viz.figure_pixels(7, with_query_image=True)
    figure = retriever.visualize_search_results("a red car", results[:2])
    assert figure.get_size_inches().tolist() == [
        n / viz.DPI for n in viz.figure_pixels(2, with_query_image=False)
    ]


def test_batch_search(retriever, tmp_path, capsys) -> None:
    queries = make_images(tmp_path / "queries", 2, seed=3)
    (tmp_path / "queries" / "bad.png").write_bytes(b"")
    results = retriever.batch_search(tmp_path / "queries", top_k=2, save_dir=tmp_path / "out")
    assert sorted(results) == [str(q.resolve()) for q in queries]
    assert all(hits[0]["similarity"] >= 0.999 for hits in results.values())
    assert "skipping" in capsys.readouterr().err
    written = json.loads((tmp_path / "out" / "batch_search_results.json").read_text())
    assert written == results
    assert len(list((tmp_path / "out").glob("*.png"))) == 2


def test_save_then_load_into_a_fresh_database_gives_identical_results(
    retriever, other_database, tiny_encoder, tmp_path
) -> None:
    index = tmp_path / "clip_index.npz"
    assert retriever.save_index(index) == index
    query = tmp_path / "lib" / "img_0002.jpg"
    before = retriever.search_similar_images(query, top_k=8)

    upgrade(other_database)
    fresh = clipdb.ClipDB(TINY_MODEL, pretrained="none", database_url=other_database.url)
    fresh._searcher.encoder = tiny_encoder
    assert fresh.load_index(index) == 8
    after = fresh.search_similar_images(query, top_k=8)
    assert [(r["image_path"], r["similarity"]) for r in after] == [
        (r["image_path"], r["similarity"]) for r in before
    ]
    assert fresh.load_index(index) == 8  # an upsert: loading again adds nothing
    assert len(fresh.search_similar_images(query, top_k=20)) == 8


def test_index_file_is_plain_arrays(retriever, tmp_path) -> None:
    index = tmp_path / "index.npz"
    retriever.save_index(index)
    arrays = read_index(index)
    assert arrays["embeddings"].dtype == np.float32 and arrays["embeddings"].shape == (8, 32)
    assert str(arrays["architecture"]) == TINY_MODEL and str(arrays["pretrained"]) == "none"
    # Stored as halfvec: unit vectors within half precision.
    assert np.allclose(np.linalg.norm(arrays["embeddings"], axis=1), 1.0, atol=1e-3)


def test_tampered_or_foreign_index_files_are_refused(retriever, tmp_path) -> None:
    index = tmp_path / "index.npz"
    retriever.save_index(index)
    with np.load(index) as data:
        arrays = {name: data[name] for name in data.files}
    arrays["embeddings"][0, 0] += 0.01
    np.savez(tmp_path / "tampered.npz", **arrays)
    with pytest.raises(ClipdbError, match="failed its checksum"):
        retriever.load_index(tmp_path / "tampered.npz")

    (tmp_path / "old.pkl").write_bytes(pickle.dumps({"image_paths": ["a"]}))
    with pytest.raises(ClipdbError, match="never loads"):
        retriever.load_index(tmp_path / "old.pkl")
    np.savez(tmp_path / "objects.npz", paths=np.array([Path("a")], dtype=object))
    with pytest.raises(ClipdbError):
        retriever.load_index(tmp_path / "objects.npz")
    with pytest.raises(ClipdbError, match="does not exist"):
        retriever.load_index(tmp_path / "missing.npz")
    (tmp_path / "junk.npz").write_bytes(b"junk")
    with pytest.raises(ClipdbError):
        retriever.load_index(tmp_path / "junk.npz")


def test_errors_are_clipdb_errors(database, tmp_path) -> None:
    db = clipdb.ClipDB(TINY_MODEL, pretrained="none", database_url=database.url)
    with pytest.raises(ClipdbError, match="no indexed images"):
        db.search_by_text("anything")
    with pytest.raises(ClipdbError, match="does not exist"):
        db.search_similar_images(tmp_path / "nope.jpg")
    assert db._searcher.encoder is None  # nothing was loaded for queries that cannot run


def test_errors_name_clipdbs_arguments_not_cli_flags() -> None:
    from clipdb.encoders import load_encoder
    from clipdb.errors import UsageError

    with pytest.raises(UsageError) as usage:
        clipdb.ClipDB(precision="int8", backend="torch").extract_image_features("x.jpg")
    assert str(usage.value) == "precision='int8' needs backend='openvino'"
    with pytest.raises(UsageError) as cli:  # the same error met by the CLI
        load_encoder(TINY_MODEL, "none", precision="int8", backend="torch")
    assert str(cli.value) == "--precision int8 needs --backend openvino"
    assert str(pickle.loads(pickle.dumps(usage.value))) == str(usage.value)

    with pytest.raises(ClipdbError) as weights:
        clipdb.ClipDB(model_name=TINY_MODEL).extract_image_features("x.jpg")
    assert str(weights.value) == (
        f"open_clip has no standard weights for {TINY_MODEL}; "
        "pass pretrained=FILE (a local checkpoint) or for seeded random weights "
        "(meaningless results, for a trial run) pretrained='none' or CLIPDB_PRETRAINED=none"
    )


def test_extract_image_features_is_the_vector_clipdb_embed_prints(
    database, tiny_encoder, tmp_path, capsys
) -> None:
    from helpers import index_images

    from clipdb.embed.__main__ import main as embed_main

    paths = make_images(tmp_path / "lib", 3, seed=5)
    index_images(database, tiny_encoder, paths)
    engine = ["--device", "cpu", "--precision", "fp32", "--backend", "torch"]
    db = clipdb.ClipDB(TINY_MODEL, "none", database.url, "cpu", "fp32", backend="torch")
    features = db.extract_image_features(paths[1])
    model = ["--model", TINY_MODEL, "--pretrained", "none"]
    assert embed_main([str(paths[1]), "--json", *model, *engine]) == 0
    embedded = np.array(json.loads(capsys.readouterr().out), dtype=np.float32)
    assert isinstance(features, np.ndarray) and features.shape == (32,)
    np.testing.assert_allclose(features, embedded, atol=1e-6)
    assert abs(float(np.linalg.norm(features)) - 1) < 1e-5
