"""Text search in SQL (migration 0013): words, phrases, part-strings, accents, filters, fusion."""

from __future__ import annotations

import math

import numpy as np
import psycopg
import pytest
from helpers import insert_rows

from clipdb.db import text
from clipdb.db.paths import key
from clipdb.errors import UsageError
from clipdb.filters import Filters

WORDS = {
    0: "INVOICE 2023 total 41.50",
    1: "KX 5172",
    2: "Café de Flore",
    3: "invoice draft",
    4: "",
    5: "Grand Hotel facad",  # OCR misread "façade"
    6: "增值税发票号码 0042",  # Chinese: no spaces between words
}


@pytest.fixture
def rows(database):
    with database.connect() as conn:
        model, vectors, paths = insert_rows(conn, "m", 8, 7, prefix="/photos/trip")
        ids = [r[0] for r in conn.execute("SELECT id FROM clipdb.images ORDER BY id")]
        text.write(
            conn,
            [
                text.TextRow(
                    ids[n],
                    b"\x01" * 32,
                    key(paths[n]),
                    name_text="trip " + paths[n].rsplit("/", 1)[1],
                    engine="rapid",
                    ocr=[{"text": words, "confidence": 0.9, "box": [0, 0, 1, 1]}] if words else [],
                )
                for n, words in WORDS.items()
            ],
        )
        conn.commit()
    return database, model, vectors, ids


def found(conn, model, query, match="text", **kw):
    return [
        (h.image_id, h.match) for h in text.search_text(conn, model, query, 10, match=match, **kw)
    ]


def test_words_phrases_part_strings_and_accents(rows):
    database, model, vectors, ids = rows
    with database.connect() as conn:
        assert [i for i, _ in found(conn, model, "invoice 2023")][:1] == [ids[0]]
        assert {i for i, _ in found(conn, model, "invoice")} == {ids[0], ids[3]}
        assert [i for i, _ in found(conn, model, "5172")] == [ids[1]]  # part of "KX 5172"
        assert [i for i, _ in found(conn, model, "517")] == [ids[1]]
        assert [i for i, _ in found(conn, model, '"kx 5172"')] == [ids[1]]
        assert found(conn, model, '"5172 kx"') == []
        assert [i for i, _ in found(conn, model, "cafe")] == [ids[2]]  # café
        assert [i for i, _ in found(conn, model, "CAFÉ flore")] == [ids[2]]
        assert [i for i, _ in found(conn, model, "img_00004")] == [ids[4]]  # its file name
        assert found(conn, model, "nothing-like-this") == []
        # Chinese words are two or three characters inside an unspaced run: part-strings.
        assert [i for i, _ in found(conn, model, "发票")] == [ids[6]]
        assert [i for i, _ in found(conn, model, "发票 0042")] == [ids[6]]


def test_a_word_ocr_misread_by_a_letter_is_found_when_nothing_matches_exactly(rows):
    database, model, vectors, ids = rows
    with database.connect() as conn:
        assert [i for i, _ in found(conn, model, "façade")] == [ids[5]]
        assert found(conn, model, '"façade"') == []  # a phrase asks for exactly that
        # An exact match is not crowded by near spellings of it (img_00001, img_00002, ...).
        assert [i for i, _ in found(conn, model, "img_00004")] == [ids[4]]


def test_each_hit_says_why(rows):
    database, model, vectors, ids = rows
    with database.connect() as conn:
        hits = text.search_text(conn, model, "5172", 3, vector=vectors[1], match="hybrid")
        assert hits[0].image_id == ids[1] and hits[0].match == "both"
        assert "5172" in (hits[0].matched_text or "")
        assert {h.match for h in hits[1:]} == {"clip"}
        only_text = text.search_text(conn, model, "5172", 3, match="text")
        assert math.isnan(only_text[0].similarity)
        assert only_text[0].to_dict()["similarity"] is None
        assert only_text[0].to_dict()["match"] == "text"
        clip = text.search_text(conn, model, None, 6, vector=vectors[2], match="clip")
        assert clip[0].image_id == ids[2] and clip[0].similarity == pytest.approx(1, abs=1e-5)


def test_text_found_beats_clip_alone_in_fusion(rows):
    database, model, vectors, ids = rows
    with database.connect() as conn:
        # The vector points at row 5 (no text); the words name row 1 only.
        hits = text.search_text(conn, model, "KX 5172", 6, vector=vectors[5], match="hybrid")
        assert hits[0].image_id == ids[1]
        assert hits[0].similarity == pytest.approx(float(vectors[5] @ vectors[1]), abs=1e-4)


def test_filters_combine_with_text(rows):
    database, model, vectors, ids = rows
    with database.connect() as conn:
        conn.execute("UPDATE clipdb.images SET camera = 'Pixel' WHERE id = %s", (ids[3],))
        conn.commit()
        pixel = Filters(camera="pixel")
        assert [i for i, _ in found(conn, model, "invoice", filters=pixel)] == [ids[3]]
        assert found(conn, model, "invoice", under="/elsewhere") == []
        assert len(found(conn, model, "invoice", under="/photos")) == 2
        assert len(found(conn, model, "invoice", filters=Filters(offset=1))) == 1
        conn.execute("UPDATE clipdb.images SET taken_at = '2020-01-01' WHERE id = %s", (ids[0],))
        conn.execute("UPDATE clipdb.images SET taken_at = '2021-01-01' WHERE id = %s", (ids[3],))
        conn.commit()
        newest = found(conn, model, "invoice", filters=Filters(sort="-date"))
        assert [i for i, _ in newest] == [ids[3], ids[0]]
        assert [i for i, _ in found(conn, model, "invoice", filters=Filters(sort="date"))] == [
            ids[0],
            ids[3],
        ]


def test_bounds(rows):
    database, model, vectors, ids = rows
    with database.connect() as conn:
        for k in (0, 10_001):
            with pytest.raises(UsageError):
                text.search_text(conn, model, "x", k, match="text")
        with pytest.raises(UsageError):
            text.search_text(conn, model, " ", 5, match="text")
        with pytest.raises(UsageError):
            text.search_text(conn, model, "x", 5, match="text", filters=Filters(within=0.1))
        with pytest.raises(psycopg.errors.RaiseException, match="1 to 10000"):
            conn.execute(
                "SELECT * FROM clipdb.search_hybrid(%s::smallint, NULL, 'x', 10001, "
                "mode => 'text')",
                (model.model_id,),
            )
        conn.rollback()
        with pytest.raises(psycopg.errors.RaiseException, match="needs the query vector"):
            conn.execute(
                "SELECT * FROM clipdb.search_hybrid(%s::smallint, NULL, 'x', 5)",
                (model.model_id,),
            )


def test_sql_callers_get_the_same_list(rows):
    database, model, vectors, ids = rows
    with database.connect() as conn:
        got = conn.execute(
            "SELECT id, match FROM clipdb.search_hybrid(%s::smallint, %s::vector, 'invoice', 3)",
            (model.model_id, np.asarray(vectors[3])),
        ).fetchall()
        assert got[0] == (ids[3], "both")
        assert [i for i, _ in got] == [
            h.image_id
            for h in text.search_text(conn, model, "invoice", 3, vector=vectors[3], match="hybrid")
        ]
