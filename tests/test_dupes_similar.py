"""The similar tier's groups (stars around the kept image, never chains), the paged
duplicates API, and the keep-rule benchmark's smoke run."""

from __future__ import annotations

import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import make_images

from clipdb.db.registry import models_with_rows
from clipdb.dupes import find_duplicates
from clipdb.ingest import ingest


def set_embeddings(database, vectors: dict[str, np.ndarray]) -> None:
    with database.connect() as conn:
        for path, vector in vectors.items():
            text = "[" + ",".join(f"{v:.7f}" for v in vector) + "]"
            conn.execute(
                "UPDATE clipdb.images SET embedding = %s::vector WHERE path = %s", (text, path)
            )
        conn.commit()


def test_similar_groups_hold_only_images_within_the_threshold_of_the_kept_one(
    database, tiny_encoder, tmp_path
):
    """A chain a-b-c (0.96 each step, a-c 0.84): single link would put a and c in one group
    under a 0.95 threshold; every member must be within 0.95 of the kept image."""
    paths = make_images(tmp_path / "lib", 3, size=(64, 48))
    ingest([str(tmp_path / "lib")], database=database, encoder=tiny_encoder, workers=0,
           progress=False)  # fmt: skip
    step = math.acos(0.96)
    dim = 32
    vectors = {}
    for n, path in enumerate(paths):
        vector = np.zeros(dim)
        vector[0], vector[1] = math.cos(n * step), math.sin(n * step)
        vectors[str(path)] = vector
    set_embeddings(database, vectors)
    with database.connect() as conn:
        model = models_with_rows(conn)[0]
        result = find_duplicates(conn, model, tiers=("similar",), similar_threshold=0.95)
    assert result.groups, "the chain's pairs are found"
    for group in result.groups:
        assert group.tier == "similar"
        kept = group.kept
        for member in group.images:
            if member is not kept:
                assert member.similarity is not None and member.similarity >= 0.95
        names = {m.image_path for m in group.images}
        assert not {str(paths[0]), str(paths[2])} <= names  # never the chain's two ends


def test_duplicates_api_pages_with_limit_and_cursor(database, tiny_encoder, tmp_path):
    from fastapi.testclient import TestClient

    from clipdb.serve import create_app

    pictures = make_images(tmp_path / "lib", 3, size=(64, 48))
    for n, picture in enumerate(pictures):
        shutil.copyfile(picture, tmp_path / "lib" / f"copy{n}.jpg")
    ingest([str(tmp_path / "lib")], database=database, encoder=tiny_encoder, workers=0,
           progress=False)  # fmt: skip
    with TestClient(create_app(database, encoder=tiny_encoder), base_url="http://127.0.0.1") as c:
        whole = c.get("/api/duplicates", params={"tier": "exact"}).json()
        assert len(whole) == 3
        pages, cursor = [], None
        while True:
            params = {"tier": "exact", "limit": 2, **({"cursor": cursor} if cursor else {})}
            response = c.get("/api/duplicates", params=params)
            assert response.status_code == 200
            pages.append(response.json())
            cursor = response.headers.get("X-Next-Cursor")
            if cursor is None:
                break
        assert [len(p) for p in pages] == [2, 1]
        assert [g for p in pages for g in p] == whole
        bad = c.get("/api/duplicates", params={"cursor": "x; DROP"})
        assert bad.status_code == 422
        assert c.get("/api/duplicates", params={"limit": 0}).status_code == 422


@pytest.mark.slow
def test_keep_rule_benchmark_smoke(tmp_path, embedded_home):
    """bench/bench_keep_rule.py end to end on three made-up camera photos (its figure is
    measured on real ones)."""
    from PIL import ExifTags, Image

    photos = tmp_path / "photos"
    for n, picture in enumerate(make_images(tmp_path / "src", 3, size=(320, 240), seed=7)):
        exif = Image.Exif()
        exif[ExifTags.Base.Make], exif[ExifTags.Base.Model] = "NIKON", f"D{n}"
        exif.get_ifd(ExifTags.IFD.Exif)[ExifTags.Base.DateTimeOriginal] = "2008:10:22 16:28:39"
        photos.mkdir(exist_ok=True)
        Image.open(picture).save(photos / f"DSCN{n:04d}.jpg", quality=92, exif=exif)
    script = Path(__file__).resolve().parent.parent / "bench" / "bench_keep_rule.py"
    try:
        done = subprocess.run(
            [sys.executable, str(script), "--photos", str(photos), "--home", str(embedded_home)],
            capture_output=True, text=True, timeout=300, check=True,
        )  # fmt: skip
    finally:
        subprocess.run(
            [sys.executable, "-c", "import sys; from pathlib import Path; "
             "from clipdb.db.embedded import stop_server; stop_server(Path(sys.argv[1]))",
             str(embedded_home)],
            check=False, timeout=60,
        )  # fmt: skip
    assert "written after: original kept in" in done.stdout
    assert "times preserved: original kept in" in done.stdout
