"""Text search filters rows exactly as CLIP search does (clipdb.search_filter), at any scale."""

from __future__ import annotations

from datetime import UTC, datetime

import psycopg
import pytest
from helpers import insert_rows

from clipdb.db import text
from clipdb.db.paths import key
from clipdb.db.queries import under_prefix

CAMERAS = ["Canon EOS R5", "CANON R6", "Sony ILCE-7M4", None, "Leica M11", "canon"]


@pytest.fixture
def rows(database):
    """12 rows of one model, every one holding the word "harbour", with varied metadata;
    and a second model whose rows hold the same word."""
    with database.connect() as conn:
        model, vectors, paths = insert_rows(conn, "m", 8, 12, prefix="/photos/a")
        ids = [r[0] for r in conn.execute("SELECT id FROM clipdb.images ORDER BY id")]
        for n, image_id in enumerate(ids):
            conn.execute(
                "UPDATE clipdb.images SET camera = %s, taken_at = %s, lat = %s, lon = %s, "
                "path = %s WHERE id = %s",
                (
                    CAMERAS[n % len(CAMERAS)],
                    datetime(2018 + n % 5, 1 + n, 1, tzinfo=UTC),
                    48.85 + n * 0.05 if n % 3 else None,
                    2.35 if n % 3 else None,
                    f"/photos/{'ab'[n % 2]}/img_{n:05d}.jpg",
                    image_id,
                ),
            )
        other, _, other_paths = insert_rows(conn, "other", 8, 3, prefix="/photos/a", seed=1)
        other_ids = [
            r[0]
            for r in conn.execute(
                "SELECT id FROM clipdb.images WHERE model_id = %s ORDER BY id", (other.model_id,)
            )
        ]
        text.write(
            conn,
            [
                text.TextRow(i, b"\x01" * 32, key(p), name_text="harbour", engine="rapid")
                for i, p in zip(ids + other_ids, paths + other_paths, strict=True)
            ],
        )
        conn.commit()
    return database, model, vectors, ids


FILTERS = [
    {},
    {"camera": "canon"},  # case-insensitive substring: three spellings of Canon
    {"camera": "R"},
    {"camera": "nikon"},
    {"after": datetime(2020, 1, 1, tzinfo=UTC)},
    {"before": datetime(2019, 6, 1, tzinfo=UTC)},
    {"near_lat": 48.85, "near_lon": 2.35, "near_km": 12.0},
    {"under": "/photos/b"},
    {"camera": "canon", "after": datetime(2019, 1, 1, tzinfo=UTC), "under": "/photos/a"},
]


@pytest.mark.parametrize("given", FILTERS, ids=[str(sorted(f)) for f in FILTERS])
def test_the_same_filters_keep_the_same_rows_for_clip_and_text(rows, given):
    database, model, vectors, ids = rows
    params = dict(given)
    if "under" in params:
        params["under"] = key(under_prefix(params["under"]))
    names = ", ".join(f"{name} => %({name})s" for name in params)
    names = ", " + names if names else ""
    with database.connect() as conn:
        clip = {
            r[0]
            for r in conn.execute(
                f"SELECT id FROM clipdb.search_rows(%(model)s::smallint, %(vector)s::vector, "
                f"100{names})",
                {"model": model.model_id, "vector": vectors[0], **params},
            )
        }
        words = {
            r[0]
            for r in conn.execute(
                f"SELECT id FROM clipdb.search_text_rows(%(model)s::smallint, 'harbour', "
                f"100{names})",
                {"model": model.model_id, **params},
            )
        }
        # And a part-string, which takes the other route through the text rows.
        parts = {
            r[0]
            for r in conn.execute(
                f"SELECT id FROM clipdb.search_text_rows(%(model)s::smallint, 'arbou', 100{names})",
                {"model": model.model_id, **params},
            )
        }
    assert words == clip == parts
    assert clip <= set(ids)  # the other model's rows hold the word too, and are not hits
    if not given:
        assert len(clip) == len(ids)


def test_a_misread_word_is_found_through_words_written_later(rows):
    database, model, vectors, ids = rows
    with database.connect() as conn:
        assert text.search_text(conn, model, "lighthouse", 5, match="text") == []
        # An update (a file read again) brings new words: its misreading is found.
        conn.execute(
            "UPDATE clipdb.image_text SET ocr_text = 'lighthous' WHERE image_id = %s", (ids[4],)
        )
        conn.commit()
        hits = text.search_text(conn, model, "lighthouse", 5, match="text")
        assert [h.image_id for h in hits] == [ids[4]]
    # The read-only role reads the words table too.
    url = database.url.replace("postgres@", "clipdb_reader@", 1)
    with psycopg.connect(url) as conn:
        found = conn.execute(
            "SELECT id FROM clipdb.search_text_rows(%s::smallint, 'lighthouse')",
            (model.model_id,),
        ).fetchall()
        assert found == [(ids[4],)]
