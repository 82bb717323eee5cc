"""Ingest against a real database with a tiny random open_clip model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from clipdb.ingest import IngestSummary, ingest

SUMMARY_KEYS = [
    "found",
    "new",
    "updated",
    "moved",
    "unchanged",
    "skipped",
    "pruned",
    "seconds",
    "images_per_s",
]


def rows(database, model_id=None):  # type: ignore[no-untyped-def]
    with database.connect() as conn:
        return {
            path: (row_id, bytes(sha), size, mtime_ns, width, height, _vec(emb))
            for row_id, path, sha, size, mtime_ns, width, height, emb in conn.execute(
                "SELECT id, path, sha256, size, mtime_ns, width, height, embedding "
                "FROM clipdb.images ORDER BY path"
            )
        }


def run(paths, database, encoder, **kwargs) -> IngestSummary:  # type: ignore[no-untyped-def]
    kwargs.setdefault("workers", 0)
    kwargs.setdefault("progress", False)
    return ingest([str(p) for p in paths], database=database, encoder=encoder, **kwargs)


def test_smoke(database, tiny_encoder, image_factory, tmp_path: Path) -> None:
    paths = image_factory(tmp_path / "pics", 5)
    summary = run([tmp_path / "pics"], database, tiny_encoder)
    assert (summary.found, summary.new) == (5, 5)
    stored = rows(database)
    assert sorted(stored) == [str(p) for p in paths]
    for path in paths:
        expected = tiny_encoder.encode_pil([Image.open(path).convert("RGB")])[0]
        np.testing.assert_allclose(stored[str(path)][6], expected, atol=1e-6)
    again = run([tmp_path / "pics"], database, tiny_encoder)
    assert (again.new, again.unchanged) == (0, 5)


def _vec(value) -> np.ndarray:  # type: ignore[no-untyped-def]
    return np.asarray(value.to_numpy() if hasattr(value, "to_numpy") else value, dtype=np.float32)
