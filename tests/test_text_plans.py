"""Text search reads what its matches need, not every row: the plans inside the SQL function."""

from __future__ import annotations

from helpers import insert_rows

from clipdb.db import text
from clipdb.db.explain import nested_plans
from clipdb.db.paths import key


def _rows(database, words):
    with database.connect() as conn:
        model, _, paths = insert_rows(conn, "m", 8, len(words))
        ids = [r[0] for r in conn.execute("SELECT id FROM clipdb.images ORDER BY id")]
        text.write(
            conn,
            [
                text.TextRow(
                    i, b"\x01" * 32, key(p), "", engine="rapid", ocr=[{"text": w, "confidence": 1}]
                )
                for i, p, w in zip(ids, paths, words, strict=True)
            ],
        )
        conn.commit()
    return model, ids


def _plans(database, model, query, k):
    with database.connect() as conn:
        return nested_plans(
            conn,
            lambda: conn.execute(
                "SELECT * FROM clipdb.search_text_rows(%s::smallint, %s, %s)",
                (model.model_id, query, k),
            ).fetchall(),
        )


def test_part_strings_are_not_looked_for_when_whole_words_fill_the_page(database):
    model, ids = _rows(database, ["harbour"] * 3 + ["harbourmaster"] * 3)
    # Three rows hold the word: a page of three needs nothing else.
    assert "haystack" not in _plans(database, model, "harbour", 3)
    # A page of five also takes the part-strings ("harbour" inside "harbourmaster").
    assert "haystack ~~" in _plans(database, model, "harbour", 5)  # LIKE
    with database.connect() as conn:
        hits = text.search_text(conn, model, "harbour", 5, match="text")
    assert [h.image_id for h in hits][:3] == ids[:3]
    assert {h.image_id for h in hits[3:]} <= set(ids[3:])


def test_a_misread_word_is_looked_up_among_words_not_rows(database):
    model, ids = _rows(database, ["Grand Hotel facad", "harbour"])
    plans = _plans(database, model, "façade", 5)
    assert "text_words" in plans
    assert "haystack %>" not in plans  # no similarity test of every row's text
    with database.connect() as conn:
        assert [h.image_id for h in text.search_text(conn, model, "façade", 5, match="text")] == [
            ids[0]
        ]


def test_a_phrase_as_part_string_is_found_through_the_document_index(database):
    model, ids = _rows(database, ["KX 5172", "KX 9172", "box 51720", "kx-5172"])
    plans = _plans(database, model, '"kx 517"', 5)
    # Its last word starts a word of the text: a prefix search narrows the rows first.
    assert "document @@ '''517'':*'" in plans
    with database.connect() as conn:
        hits = text.search_text(conn, model, '"kx 517"', 5, match="text")
    assert [h.image_id for h in hits] == [ids[0]]
