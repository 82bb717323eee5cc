"""The text stage of ingest: the words of every row, after its CLIP row is committed.

Each row gets its file and folder names and its keywords (cheap: no pixels decoded) and, when
OCR is on, the text OCR reads in it. Work is found in the database (clipdb.db.text.pending),
not in the scan: a stage that was interrupted, or a later ``clipdb ingest --ocr only``, goes
on where it stopped; an unchanged file is never read twice, a copy or a second model's row of
the same content takes the text already read, and a moved file keeps its OCR text.

``--ocr auto`` (the default) reads text when this database already has OCR text, i.e. once
someone ran ``--ocr on``: OCR costs ~1 s per image on 2 CPU cores, ~50x a CLIP encoding
(BENCHMARKS.md, "OCR"), too much to start unasked.
"""

from __future__ import annotations

import sys
from typing import Any

from PIL import ImageOps

from clipdb import decode, files
from clipdb.db import Database
from clipdb.db import text as text_db
from clipdb.db.registry import Model
from clipdb.ocr import ENGINES, OcrEngine, load_engine
from clipdb.ocr.words import metadata_words, name_words

OCR_MODES = ("auto", "on", "off", "only")
BATCH = 32  # rows per transaction: a kill loses at most this much OCR work


class TextStage:
    """One pass of the text stage over the rows of ``model`` under ``roots``."""

    def __init__(
        self,
        database: Database,
        model: Model,
        roots: list[str],
        *,
        ocr: str = "auto",
        engine: str = "rapid",
        progress: bool = True,
        max_pixels: int | None = None,
    ) -> None:
        if ocr not in OCR_MODES or engine not in ENGINES:
            raise ValueError((ocr, engine))
        self.database = database
        self.model = model
        self.roots = roots
        self.mode = ocr
        self.engine_name = engine
        self.progress = progress
        self.max_pixels = max_pixels
        self._engine: OcrEngine | None = None
        self.stored = 0  # rows whose words were written
        self.read = 0  # images read by OCR

    def engine(self) -> OcrEngine:
        if self._engine is None:
            self._engine = load_engine(self.engine_name)
        return self._engine

    def run(self) -> tuple[int, int]:
        """(rows whose words were stored, images OCR read)."""
        with self.database.connect(autocommit=True) as conn:
            ocr = self.mode in ("on", "only") or (self.mode == "auto" and text_db.has_ocr(conn))
            for root in self.roots:
                self._root(conn, root, ocr)
        return self.stored, self.read

    def _root(self, conn: Any, root: str, ocr: bool) -> None:
        from tqdm import tqdm

        total = text_db.pending_count(conn, self.model, ocr=ocr, root=root)
        if not total:
            return
        bar = tqdm(
            total=total,
            desc="reading text" if ocr else "indexing names",
            unit="img",
            file=sys.stderr,
            disable=None if self.progress else True,
            dynamic_ncols=True,
        )
        after = 0
        try:
            while work := text_db.pending(conn, self.model, ocr=ocr, root=root, after_id=after):
                known = text_db.known_ocr(conn, [w.sha256 for w in work if w.needs_ocr])
                rows = [self._row(item, known) for item in work]
                with conn.transaction():
                    self.stored += text_db.write(conn, rows)
                after = work[-1].image_id
                bar.update(len(work))
        finally:
            bar.close()

    def _row(self, item: text_db.TextWork, known: dict[bytes, Any]) -> text_db.TextRow:
        names = name_words(files.display(item.path))  # a name not UTF-8: its stored form
        if item.content_known and not item.needs_ocr:  # moved or renamed: only its name
            return text_db.TextRow(item.image_id, item.sha256, item.path_key, names, keep_ocr=True)
        meta, lines, engine, image = "", [], None, None
        try:
            data = decode.read_file(item.path)
            with decode.opened_image(data, self.max_pixels) as opened:
                meta = metadata_words(opened)
                if item.needs_ocr and item.sha256 not in known:
                    opened.load()
                    image = decode.to_rgb(ImageOps.exif_transpose(opened) or opened)
        except (OSError, decode.ImageError):
            # Gone or unreadable since it was encoded: its name still counts, and it is not
            # tried again while the row is unchanged (a changed file gets a new sha256).
            engine = self.engine_name
        if item.needs_ocr and item.sha256 in known:
            engine, lines = known[item.sha256]
        elif image is not None:  # outside the decoder's guard: an engine's failure is its own
            engine = self.engine().name
            lines = [box.to_dict() for box in self.engine().read(image)]
            known[item.sha256] = (engine, lines)  # a copy later in this batch takes it
            self.read += 1
        return text_db.TextRow(
            item.image_id,
            item.sha256,
            item.path_key,
            names,
            meta_text=meta,
            engine=engine if item.needs_ocr else None,
            ocr=lines,
            keep_ocr=not item.needs_ocr and item.content_known,
        )
