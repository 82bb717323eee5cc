"""Text in images at ingest: the engines on rendered words, the text stage, its resumption."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import pytest
from PIL import Image, ImageDraw, ImageFont

from clipdb.db import text
from clipdb.db.registry import registered_model
from clipdb.ingest import ingest
from clipdb.ocr import load_engine
from clipdb.ocr.words import metadata_words, name_words

FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf"


def render(path: Path, lines: list[str], size: tuple[int, int] = (420, 160)) -> Path:
    """Dark words on a light background, as on a sign or a screenshot."""
    image = Image.new("RGB", size, (235, 232, 220))
    draw = ImageDraw.Draw(image)
    font = ImageFont.truetype(FONT, 36)
    for n, line in enumerate(lines):
        draw.text((20, 20 + 60 * n), line, font=font, fill=(20, 20, 30))
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


def test_name_words_take_the_file_and_its_nearest_folders() -> None:
    words = name_words("/home/ann/pictures/receipts/2023/KX_5172-front.jpg").split()
    assert {"KX_5172-front.jpg", "KX", "5172", "front", "2023", "receipts"} <= set(words)
    assert "home" not in words  # far folders are the same for every image


def test_metadata_words_read_exif_and_xmp() -> None:
    image = Image.new("RGB", (8, 8))
    exif = image.getexif()
    exif[0x010E] = "Harbour at dusk"
    exif[0x9C9E] = "boats;harbour".encode("utf-16-le") + b"\0\0"
    xmp = (
        b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF><rdf:Description>'
        b"<dc:subject><rdf:Bag><rdf:li>lighthouse</rdf:li><rdf:li>Brittany</rdf:li></rdf:Bag>"
        b"</dc:subject></rdf:Description></rdf:RDF></x:xmpmeta>"
    )
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", exif=exif, xmp=xmp)
    buffer.seek(0)
    words = metadata_words(Image.open(buffer))
    for word in ("Harbour", "dusk", "boats;harbour", "lighthouse", "Brittany"):
        assert word in words
    assert metadata_words(Image.new("RGB", (4, 4))) == ""


def _model(database):
    with database.connect() as conn:
        return registered_model(conn, "clipdb-tiny", "none")


def test_names_are_searchable_without_ocr_and_without_re_encoding(
    database, tiny_encoder, tmp_path
) -> None:
    render(tmp_path / "receipts" / "KX_5172.png", ["hello"])
    render(tmp_path / "cats" / "garden.png", ["hello"])
    first = ingest([tmp_path], database=database, encoder=tiny_encoder, workers=0, ocr="off")
    assert first.new == 2 and first.text_stored == 0
    # The next run fills the words of the rows already there, encoding nothing.
    second = ingest([tmp_path], database=database, encoder=tiny_encoder, workers=0)
    assert second.new == 0 and second.text_stored == 2 and second.ocr_read == 0
    model = _model(database)
    with database.connect() as conn:
        hits = text.search_text(conn, model, "5172", 5, match="text")
        assert [Path(h.image_path).name for h in hits] == ["KX_5172.png"]
        assert [h.match for h in hits] == ["text"]
        assert text.search_text(conn, model, "receipts", 5, match="text")[0].image_path.endswith(
            "KX_5172.png"
        )
    # Nothing changed: nothing is stored again.
    third = ingest([tmp_path], database=database, encoder=tiny_encoder, workers=0)
    assert third.text_stored == 0


def test_a_moved_file_gets_its_new_name_and_keeps_its_text(
    database, tiny_encoder, tmp_path
) -> None:
    render(tmp_path / "old_name.png", ["hello"])
    ingest([tmp_path], database=database, encoder=tiny_encoder, workers=0)
    (tmp_path / "old_name.png").rename(tmp_path / "brand_new.png")
    summary = ingest([tmp_path], database=database, encoder=tiny_encoder, workers=0, prune=True)
    assert summary.moved == 1 and summary.text_stored == 1
    with database.connect() as conn:
        model = _model(database)
        assert text.search_text(conn, model, "brand_new", 5, match="text")
        assert not text.search_text(conn, model, "old_name", 5, match="text")


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["rapid", "tesseract"])
def test_engines_read_rendered_words(engine, tmp_path) -> None:
    if engine == "tesseract" and shutil.which("tesseract") is None:
        pytest.skip("tesseract-ocr is not installed")
    path = render(tmp_path / "sign.png", ["INVOICE 2023", "KX 5172"])
    boxes = load_engine(engine).read(Image.open(path))
    words = " ".join(box.text for box in boxes).split()
    assert {"INVOICE", "2023", "KX", "5172"} <= set(words)
    for box in boxes:
        x, y, w, h = box.box
        assert 0 <= x < 420 and 0 <= y < 160 and w > 0 and h > 0 and 0.5 <= box.confidence <= 1


@pytest.mark.slow
def test_ocr_stage_reads_once_and_finds_part_strings(database, tiny_encoder, tmp_path) -> None:
    photos = tmp_path / "photos"
    render(photos / "a.png", ["INVOICE 2023"])
    render(photos / "b.png", ["KX 5172"])
    Image.new("RGB", (200, 120), (90, 140, 60)).save(photos / "blank.png")
    summary = ingest([photos], database=database, encoder=tiny_encoder, workers=0, ocr="on")
    assert summary.new == 3 and summary.ocr_read == 3
    model = _model(database)
    with database.connect() as conn:
        for query, name in (("5172", "b.png"), ('"invoice 2023"', "a.png"), ("voic", "a.png")):
            hits = text.search_text(conn, model, query, 5, match="text")
            assert [Path(h.image_path).name for h in hits] == [name], query
        hit = text.search_text(conn, model, "5172", 1, match="text")[0]
        assert "5172" in (hit.matched_text or "")
        lines = text.ocr_lines(conn, hit.image_id)
        assert lines and lines[0]["text"] == "KX 5172" and len(lines[0]["box"]) == 4
    # Unchanged files are never read again; a copy takes the text already read; auto keeps on.
    shutil.copy(photos / "b.png", photos / "b-copy.png")
    again = ingest([photos], database=database, encoder=tiny_encoder, workers=0)
    assert again.new == 1 and again.text_stored == 1 and again.ocr_read == 0
    with database.connect() as conn:
        assert len(text.search_text(conn, model, "5172", 5, match="text")) == 2


@pytest.mark.slow
def test_ocr_only_reads_rows_already_indexed_and_resumes(database, tiny_encoder, tmp_path) -> None:
    for n in range(3):
        render(tmp_path / f"s{n}.png", [f"ZQ {4000 + n}"])
    ingest([tmp_path], database=database, encoder=tiny_encoder, workers=0, ocr="off")
    model = _model(database)
    with database.connect() as conn:  # one row was read before a run stopped
        work = text.pending(conn, model, ocr=True, limit=1)
        text.write(
            conn,
            [
                text.TextRow(
                    work[0].image_id, work[0].sha256, work[0].path_key, "x", engine="rapid", ocr=[]
                )
            ],
        )
        conn.commit()
    summary = ingest([tmp_path], database=database, encoder=tiny_encoder, workers=0, ocr="only")
    assert summary.found == 0 and summary.new == 0 and summary.ocr_read == 2
    with database.connect() as conn:
        found = {
            Path(h.image_path).name for h in text.search_text(conn, model, "400", 5, match="text")
        }
    assert found == {"s1.png", "s2.png"}


def test_a_file_gone_before_its_text_is_read_keeps_its_name_and_is_not_retried(
    database, tiny_encoder, tmp_path
) -> None:
    render(tmp_path / "gone_soon.png", ["hello"])
    ingest([tmp_path], database=database, encoder=tiny_encoder, workers=0, ocr="off")
    (tmp_path / "gone_soon.png").unlink()
    first = ingest([tmp_path], database=database, encoder=tiny_encoder, workers=0, ocr="only")
    assert first.text_stored == 1 and first.ocr_read == 0
    again = ingest([tmp_path], database=database, encoder=tiny_encoder, workers=0, ocr="only")
    assert again.text_stored == 0
    with database.connect() as conn:
        assert text.search_text(conn, _model(database), "gone_soon", 5, match="text")


def test_names_that_are_not_utf8_and_metadata_with_nul_are_stored(
    database, tiny_encoder, tmp_path
) -> None:
    import os

    folder = os.fsencode(tmp_path)
    render(tmp_path / "plain.png", ["hello"])
    os.rename(folder + b"/plain.png", folder + b"/caf\xe9_menu.png")
    image = Image.new("RGB", (32, 32))
    exif = image.getexif()
    exif[0x010E] = "harbour\x00 at dusk"
    image.save(tmp_path / "described.jpg", exif=exif)
    summary = ingest([tmp_path], database=database, encoder=tiny_encoder, workers=0)
    assert summary.new == 2 and summary.text_stored == 2
    with database.connect() as conn:
        model = _model(database)
        assert len(text.search_text(conn, model, "menu", 5, match="text")) == 1
        assert len(text.search_text(conn, model, "dusk", 5, match="text")) == 1


def test_an_engine_that_cannot_run_stops_the_stage_and_marks_nothing_read(
    database, tiny_encoder, tmp_path, monkeypatch
) -> None:
    from clipdb.errors import ClipdbError

    render(tmp_path / "sign.png", ["hello"])
    monkeypatch.setenv("PATH", str(tmp_path / "nothing-here"))  # no tesseract command
    with pytest.raises(ClipdbError, match="tesseract"):
        ingest(
            [tmp_path],
            database=database,
            encoder=tiny_encoder,
            workers=0,
            ocr="on",
            ocr_engine="tesseract",
        )
    with database.connect() as conn:  # the CLIP row was committed first; its text is still owed
        model = _model(database)
        assert conn.execute("SELECT count(*) FROM clipdb.images").fetchone() == (1,)
        assert text.pending_count(conn, model, ocr=True) == 1
