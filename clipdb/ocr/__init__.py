"""Text in images: OCR engines behind one small interface, loaded lazily.

Two engines (BENCHMARKS.md, "OCR" has the measurements that chose between them):

- ``rapid`` (the default): PP-OCRv4 detection + recognition (ONNX, ~15 MB, inside the
  ``rapidocr-onnxruntime`` wheel). Detection runs first on the whole image; recognition only on
  the boxes it found, so an image without text costs one detection pass.
- ``tesseract``: the ``tesseract`` command (Debian's ``tesseract-ocr``), kept as the option for
  machines without onnxruntime.

Nothing here imports a model at import time: an engine loads on its first image.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import threading
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from clipdb.errors import ClipdbError

ENGINES = ("rapid", "tesseract")
DEFAULT_ENGINE = "rapid"
MIN_CONFIDENCE = 0.5  # words recognised with less are dropped (both engines' scores are 0..1)
MAX_SIDE = 2000  # larger images are scaled down first: text that small is unreadable anyway


@dataclass(frozen=True)
class TextBox:
    """One recognised line or word: its text, confidence (0..1) and box (x, y, w, h in the
    pixels of the image as stored, top-left origin)."""

    text: str
    confidence: float
    box: tuple[int, int, int, int]

    def to_dict(self) -> dict[str, Any]:
        return {"text": self.text, "confidence": round(self.confidence, 3), "box": list(self.box)}


class OcrEngine(Protocol):
    name: str

    def read(self, image: Any) -> list[TextBox]:
        """The text of a PIL image, in reading order."""
        ...


def _rgb_array(image: Any) -> tuple[np.ndarray, float]:
    """The image as an RGB array no larger than MAX_SIDE, and the scale back to its pixels."""
    image = image.convert("RGB")
    scale = 1.0
    if max(image.size) > MAX_SIDE:
        scale = max(image.size) / MAX_SIDE
        image = image.resize((round(image.width / scale), round(image.height / scale)))
    return np.asarray(image), scale


class RapidEngine:
    """PP-OCRv4 through rapidocr-onnxruntime (angle classifier off: it doubles the cost of
    every box and rotated text is rare in photos and screenshots)."""

    name = "rapid"

    def __init__(self, threads: int | None = None) -> None:
        self._threads = threads
        self._ocr: Any = None
        self._lock = threading.Lock()

    def _load(self) -> Any:
        with self._lock:
            if self._ocr is None:
                try:
                    from rapidocr_onnxruntime import RapidOCR
                except ImportError as error:
                    raise ClipdbError(
                        "the rapid OCR engine needs rapidocr-onnxruntime "
                        "(pip install 'clipdb-pg[ocr]'), or use --ocr-engine tesseract"
                    ) from error
                threads = -1 if self._threads is None else self._threads
                # Detection at most 960 px on the long side: the wheel's default scales the
                # short side *up* to 736 px, which costs ~3x on a photo and found no more
                # words on the measured set (BENCHMARKS.md, "OCR").
                self._ocr = RapidOCR(
                    use_cls=False,
                    det_limit_type="max",
                    det_limit_side_len=960,
                    text_score=MIN_CONFIDENCE,
                    intra_op_num_threads=threads,
                    inter_op_num_threads=1,
                )
            return self._ocr

    def read(self, image: Any) -> list[TextBox]:
        ocr = self._load()
        pixels, scale = _rgb_array(image)
        # RapidOCR takes OpenCV's BGR order.
        result, _ = ocr(np.ascontiguousarray(pixels[:, :, ::-1]), use_cls=False)
        boxes = []
        for points, text, score in result or []:
            xs = [p[0] * scale for p in points]
            ys = [p[1] * scale for p in points]
            x, y = int(min(xs)), int(min(ys))
            box = (x, y, int(max(xs)) - x, int(max(ys)) - y)
            if text.strip() and float(score) >= MIN_CONFIDENCE:
                boxes.append(TextBox(text.strip(), float(score), box))
        return boxes


class TesseractEngine:
    """The ``tesseract`` command, words from its TSV output."""

    name = "tesseract"

    def __init__(self, languages: str = "eng") -> None:
        self.languages = languages

    def read(self, image: Any) -> list[TextBox]:
        command = shutil.which("tesseract")
        if command is None:
            raise ClipdbError(
                "the tesseract OCR engine needs the tesseract command (tesseract-ocr)"
            )
        pixels, scale = _rgb_array(image)
        from PIL import Image

        with tempfile.NamedTemporaryFile(suffix=".png") as file:
            Image.fromarray(pixels).save(file.name)
            done = subprocess.run(
                [command, file.name, "stdout", "-l", self.languages, "tsv"],
                capture_output=True,
                text=True,
                check=False,
                env={"OMP_THREAD_LIMIT": "1"},
            )
        if done.returncode != 0:
            raise ClipdbError(f"tesseract failed: {done.stderr.strip()[:200]}")
        return _tsv_boxes(done.stdout, scale)


def _tsv_boxes(tsv: str, scale: float) -> list[TextBox]:
    boxes = []
    for line in tsv.splitlines()[1:]:
        fields = line.split("\t")
        if len(fields) < 12 or not fields[11].strip():
            continue
        confidence = float(fields[10]) / 100
        if confidence < MIN_CONFIDENCE:
            continue
        x, y, w, h = (round(int(v) * scale) for v in fields[6:10])
        boxes.append(TextBox(fields[11].strip(), confidence, (x, y, w, h)))
    return boxes


def load_engine(name: str = DEFAULT_ENGINE) -> OcrEngine:
    """An engine by name (models load on its first image)."""
    if name == "rapid":
        return RapidEngine()
    if name == "tesseract":
        return TesseractEngine()
    raise ClipdbError(f"no OCR engine {name!r}; choose {', '.join(ENGINES)}")
