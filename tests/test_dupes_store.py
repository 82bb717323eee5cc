"""The similar tier's pairs: the bulk pass over every vector (exact for small sets, a
partition for large ones), and pairs kept in the database, each image checked once per
content."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from helpers import make_images
from test_dupes_similar import set_embeddings

from clipdb.db.registry import models_with_rows
from clipdb.dupes import find_duplicates, scan
from clipdb.dupes import similar as similar_module
from clipdb.ingest import ingest


def planted(count: int, copies: int, dim: int = 64, seed: int = 3) -> tuple[np.ndarray, set]:
    """``count`` clustered unit vectors, the first ``copies`` of them copied once at cosine
    0.96-0.99 (appended): the vectors, and the pairs (i, j) at >= 0.95 by exhaustive product."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((8, dim))
    base = centres[rng.integers(0, 8, count)] + 0.6 * rng.standard_normal((count, dim))
    base /= np.linalg.norm(base, axis=1, keepdims=True)
    extra = []
    for original in base[:copies]:
        target = rng.uniform(0.96, 0.99)
        noise = rng.standard_normal(dim)
        noise -= noise @ original * original
        extra.append(target * original + np.sqrt(1 - target**2) * noise / np.linalg.norm(noise))
    vectors = np.concatenate([base, np.array(extra)]).astype(np.float32)
    similarity = vectors @ vectors.T
    truth = {(i, j) for i, j in zip(*np.nonzero(similarity >= 0.95), strict=True) if i != j}
    return vectors, truth


def found_pairs(pairs: scan.Pairs) -> set:
    return set(zip(pairs.rows.tolist(), pairs.others.tolist(), strict=True))


def test_small_sets_compare_every_pair():
    vectors, truth = planted(300, 40)
    pairs = scan.similar_pairs(vectors.copy(), 0.95, 10)
    assert found_pairs(pairs) == truth
    exact = np.sum(vectors[pairs.rows] * vectors[pairs.others], axis=1)
    assert np.allclose(pairs.similarity, exact, atol=1e-5)


def test_the_partition_finds_the_planted_copies_and_only_true_pairs(monkeypatch):
    monkeypatch.setattr(scan, "EXACT_ROWS", 100)  # 1,100 vectors: 66 cells, 4 probed each
    vectors, truth = planted(1000, 100)
    pairs = scan.similar_pairs(vectors.copy(), 0.95, 10)
    found = found_pairs(pairs)
    assert found <= truth  # every pair reported is a true one
    copies = {(i, 1000 + i) for i in range(100)}
    assert copies <= found | {(b, a) for a, b in found}  # each copy found (from either side)
    assert len(found) >= 0.95 * len(truth)


def test_only_the_asked_rows_are_queried_and_each_keeps_its_nearest():
    vectors, truth = planted(300, 40)
    wanted = np.zeros(len(vectors), dtype=bool)
    wanted[:20] = True
    pairs = scan.similar_pairs(vectors.copy(), 0.95, 1, wanted)
    assert set(pairs.rows.tolist()) <= set(range(20))
    similarity = vectors @ vectors.T
    np.fill_diagonal(similarity, -1)
    for row, other in found_pairs(pairs):
        assert other == int(np.argmax(similarity[row]))  # the nearest of one neighbour


@pytest.fixture
def copies(database, tiny_encoder, tmp_path):
    """Three pictures and a byte copy of each, ingested: paths, and the model."""
    pictures = make_images(tmp_path / "lib", 3, size=(64, 48))
    for n, picture in enumerate(pictures):
        shutil.copyfile(picture, tmp_path / "lib" / f"copy{n}.jpg")
    ingest([str(tmp_path / "lib")], database=database, encoder=tiny_encoder, workers=0,
           progress=False)  # fmt: skip
    with database.connect() as conn:
        model = models_with_rows(conn)[0]
    # Vectors of known similarity (random weights map every picture nearly alike): picture n
    # along axis n, its copy at cosine 0.99 to it, the pictures orthogonal to each other.
    vectors = {}
    for n, picture in enumerate(pictures):
        vector = np.zeros(int(model.dim))
        vector[n] = 1.0
        vectors[str(picture)] = vector
        vector = vector.copy()
        vector[n + 3] = np.sqrt(1 / 0.99**2 - 1)
        vectors[str(picture.parent / f"copy{n}.jpg")] = vector
    set_embeddings(database, vectors)
    return pictures, model


def similar_names(database, model, **options) -> set[frozenset[str]]:
    with database.connect() as conn:
        result = find_duplicates(conn, model, tiers=("similar",), check_files=False, **options)
        conn.commit()
    return {frozenset(m.image_path.rsplit("/", 1)[1] for m in g.images) for g in result.groups}


def member_similarities(database, model) -> dict[str, float]:
    with database.connect() as conn:
        result = find_duplicates(conn, model, tiers=("similar",), check_files=False)
        conn.commit()
    return {
        m.image_path.rsplit("/", 1)[1]: m.similarity
        for g in result.groups
        for m in g.images
        if not m.keep
    }


def test_pairs_are_looked_for_once_per_content_and_kept(database, copies):
    pictures, model = copies
    first = similar_names(database, model)
    assert frozenset({pictures[0].name, "copy0.jpg"}) in first
    with database.connect() as conn:
        checked = conn.execute("SELECT count(*) FROM clipdb.similar_checked").fetchone()[0]
        stored = conn.execute("SELECT count(*) FROM clipdb.similar_pairs").fetchone()[0]
        # A kept pair is what the next call shows (no image is looked up again)...
        conn.execute("UPDATE clipdb.similar_pairs SET similarity = 0.9625")
        conn.commit()
    assert checked == 6 and stored == 3
    assert set(member_similarities(database, model).values()) == {0.9625}
    # ...until the row changes: a new embedding (or sha256) drops its mark and pairs, and the
    # next call looks it up afresh.
    dim = int(model.dim)
    far = np.zeros(dim)
    far[dim - 1] = 1.0
    set_embeddings(database, {str(pictures[0].parent / "copy0.jpg"): far})
    after = similar_names(database, model)
    assert frozenset({pictures[0].name, "copy0.jpg"}) not in after
    assert frozenset({pictures[1].name, "copy1.jpg"}) in after
    with database.connect() as conn:
        conn.execute(
            "UPDATE clipdb.images SET sha256 = sha256(sha256) WHERE path LIKE %s", ("%/copy1.jpg",)
        )
        conn.commit()
    assert member_similarities(database, model)["copy1.jpg"] == pytest.approx(0.99, abs=1e-3)
    # A lower threshold than the one rows were checked at looks them up again.
    with database.connect() as conn:
        floor = conn.execute("SELECT max(floor) FROM clipdb.similar_checked").fetchone()[0]
    similar_names(database, model, similar_threshold=0.5)
    with database.connect() as conn:
        assert conn.execute("SELECT max(floor) FROM clipdb.similar_checked").fetchone()[0] < floor


def test_a_deleted_image_takes_its_marks_and_pairs_with_it(database, copies):
    pictures, model = copies
    similar_names(database, model)
    with database.connect() as conn:
        conn.execute("DELETE FROM clipdb.images WHERE path LIKE %s", ("%/copy2.jpg",))
        conn.commit()
        marks = conn.execute("SELECT count(*) FROM clipdb.similar_checked").fetchone()[0]
        pairs = conn.execute("SELECT count(*) FROM clipdb.similar_pairs").fetchone()[0]
    assert (marks, pairs) == (5, 2)
    assert frozenset({pictures[2].name, "copy2.jpg"}) not in similar_names(database, model)


def test_the_bulk_pass_and_the_index_find_the_same_pairs(database, copies, monkeypatch):
    """The bulk pass reads every vector through binary COPY (halfvec) and compares them in
    this process; the index path asks HNSW per image: same pairs, same similarities."""
    _, model = copies
    by_index = similar_names(database, model)
    with database.connect() as conn:
        index_pairs = conn.execute(
            "SELECT image_id, other_id, similarity FROM clipdb.similar_pairs ORDER BY 1, 2"
        ).fetchall()
        conn.execute("DELETE FROM clipdb.similar_checked")
        conn.commit()
    monkeypatch.setattr(similar_module, "INDEX_MAX_IMAGES", 0)
    assert similar_names(database, model) == by_index
    with database.connect() as conn:
        bulk_pairs = conn.execute(
            "SELECT image_id, other_id, similarity FROM clipdb.similar_pairs ORDER BY 1, 2"
        ).fetchall()
    assert [p[:2] for p in bulk_pairs] == [p[:2] for p in index_pairs]
    assert np.allclose([p[2] for p in bulk_pairs], [p[2] for p in index_pairs], atol=1e-3)


def test_a_read_only_connection_gets_the_pairs_and_keeps_nothing(database, copies):
    pictures, model = copies
    with database.connect() as conn:
        conn.execute("SET TRANSACTION READ ONLY")
        result = find_duplicates(conn, model, tiers=("similar",), check_files=False)
        conn.rollback()
    assert len(result.groups) == 3
    with database.connect() as conn:
        assert conn.execute("SELECT count(*) FROM clipdb.similar_checked").fetchone()[0] == 0


def test_ingest_looks_up_new_images_once_the_tier_was_asked_for(
    database, tiny_encoder, copies, tmp_path
):
    """Before any similar-tier call, ingest does nothing for it; after one, ingest looks up
    the images it adds, so the next call finds nothing left to look up."""
    pictures, model = copies
    extra = make_images(tmp_path / "more", 1, size=(64, 48), seed=9)
    first = ingest([str(tmp_path / "more")], database=database, encoder=tiny_encoder,
                   workers=0, progress=False)  # fmt: skip
    assert first.new == 1 and first.similar_checked == 0
    similar_names(database, model)  # the tier is asked for: every image checked
    shutil.copyfile(extra[0], tmp_path / "more" / "again.jpg")
    second = ingest([str(tmp_path / "more")], database=database, encoder=tiny_encoder,
                    workers=0, progress=False)  # fmt: skip
    assert second.new == 1 and second.similar_checked == 1
    with database.connect() as conn:
        from clipdb.db.similar import unchecked

        assert unchecked(conn, model, None, 0.95, 10) == []
        pair = conn.execute(
            "SELECT count(*) FROM clipdb.similar_pairs p JOIN clipdb.images a ON a.id = p.image_id "
            "JOIN clipdb.images b ON b.id = p.other_id WHERE a.sha256 = b.sha256 "
            "AND (a.path LIKE '%%/again.jpg' OR b.path LIKE '%%/again.jpg')"
        ).fetchone()[0]
    assert pair == 1  # the byte copy and its source: cosine 1
