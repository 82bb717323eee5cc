"""What an ingest pass is asked to do (IngestOptions) and what it did (IngestSummary)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from clipdb.config import BACKENDS, DEVICES, PRECISIONS
from clipdb.errors import UsageError
from clipdb.ingest.plan import SkipCallback

ENGINES = ("local", "ray")
# When the OpenVINO IR is not cached yet, ingest converts it in a thread while it scans, hashes
# and decodes; the first encode waits for it. Encoding with the torch model meanwhile ("torch")
# was slower on 2 cores: both compete with the conversion for the CPU and the GIL (a first run
# at 0.61 of a warm run's rate against 0.89 waiting; 0.55 converting first; BENCHMARKS.md).
FIRST_RUN_CONVERSION = "wait"
DECODE_MODES = ("auto", "cpu", "device")  # auto: on the device when the encoder is on CUDA


@dataclass(frozen=True)
class IngestOptions:
    """How to ingest: the one list of options, shared by ``ingest()``, ``watch()`` and the CLI.

    ``model``/``pretrained`` None: from the settings (flags, CLIPDB_* env, defaults).
    """

    model: str | None = None
    pretrained: str | None = None
    device: str = "auto"
    precision: str = "auto"
    backend: str = "auto"  # auto: OpenVINO on CPU, torch on CUDA/MPS
    batch_size: int = 64
    workers: int | None = None  # None: default_workers(); 0: decode in this process
    exclude: tuple[str, ...] = ()
    prune: bool = False
    # --prune also under a root that yields no files while rows exist (else: offline, kept).
    prune_missing_roots: bool = False
    max_pixels: int | None = None
    progress: bool = True
    on_skip: SkipCallback | None = None  # default: "skipping <path>: <reason>" on stderr
    # Files skipped by an earlier run and unchanged since: through on_skip one by one too
    # (else only counted, IngestSummary.known_bad: a re-run does not repeat the same lines).
    verbose: bool = False
    engine: str = "local"  # "ray": decode + encode on a Ray cluster (clipdb.ingest.ray_engine)
    ray_address: str | None = None  # None: the running ray.init(), else a new local cluster
    gpus_per_worker: float = 0.0  # > 0: one encoder per that many GPUs, else per CPU slot
    decode: str = "auto"  # where JPEGs decode: clipdb.device_decode.DECODE_MODES
    # End any role's sessions that hold up the index DDL past CLIPDB_LOCK_WAIT (clipdb_reader's
    # are ended without it): clipdb.db.blockers.
    terminate_blockers: bool = False
    # The Ray actors' class (None: clipdb.ingest.ray_engine.EncoderWorker); a subclass can
    # wrap ``run``, e.g. to report or hold batches. Library only: the CLI always runs
    # EncoderWorker. Typed loosely so that options import nothing of the engines (the Ray
    # engine imports the pipeline, which imports these options).
    ray_worker_class: type[Any] | None = None
    # The text stage (clipdb.ingest.text): auto, on, off or only; and which OCR engine.
    ocr: str = "auto"
    ocr_engine: str = "rapid"

    def __post_init__(self) -> None:
        object.__setattr__(self, "exclude", tuple(self.exclude))
        if self.batch_size < 1:
            raise UsageError("--batch-size must be at least 1")
        if self.workers is not None and self.workers < 0:
            raise UsageError("--workers must be 0 or more")
        if self.engine not in ENGINES:
            raise UsageError(f"unknown engine {self.engine!r}; use one of {', '.join(ENGINES)}")
        if self.engine == "local" and (self.ray_address or self.gpus_per_worker):
            raise UsageError("--ray-address and --gpus-per-worker need --engine ray")
        if self.gpus_per_worker < 0:
            raise UsageError("--gpus-per-worker must be 0 or more")
        if self.decode not in DECODE_MODES:
            raise UsageError(
                f"unknown decode {self.decode!r}; use one of {', '.join(DECODE_MODES)}"
            )
        if self.ocr not in ("auto", "on", "off", "only"):
            raise UsageError(f"unknown --ocr {self.ocr!r}; use auto, on, off or only")
        if self.ocr_engine not in ("rapid", "tesseract"):
            raise UsageError(f"unknown --ocr-engine {self.ocr_engine!r}; use rapid or tesseract")
        if self.device not in DEVICES:
            raise UsageError(f"unknown device {self.device!r}; use one of {', '.join(DEVICES)}")
        if self.backend not in BACKENDS:
            raise UsageError(f"unknown backend {self.backend!r}; use one of {', '.join(BACKENDS)}")
        if self.precision not in PRECISIONS:
            raise UsageError(
                f"unknown precision {self.precision!r}; use one of {', '.join(PRECISIONS)}"
            )


def images_per_s(images: int, seconds: float) -> float:
    """The one ingest rate, shown live by the progress bar and reported by the summary:
    images encoded (new or updated rows) per second since the pass began."""
    return round(images / seconds, 2) if images and seconds > 0 else 0.0


def rate_text(rate: float) -> str:
    return f"{rate:.1f} images/s"


@dataclass
class IngestSummary:
    """What one ingest pass did. ``--json`` prints exactly these keys."""

    found: int = 0
    new: int = 0
    updated: int = 0
    moved: int = 0
    unchanged: int = 0
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> count
    pruned: int = 0
    seconds: float = 0.0
    images_per_s: float = 0.0
    metadata_read: int = 0  # rows that got photo metadata without re-encoding (backfill)
    known_bad: int = 0  # of skipped: files skipped before, unchanged, not retried
    text_stored: int = 0  # rows whose words (names, keywords, OCR text) were stored
    ocr_read: int = 0  # images read by OCR
    similar_checked: int = 0  # images whose similar-tier neighbours were looked up (dupes)
    # Files under the roots that are not an image or video by name: extension -> count.
    ignored: dict[str, int] = field(default_factory=dict)
    live_photos: int = 0  # .mov files of Live Photos: one item with their photo, not indexed

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def format(self) -> str:
        total = sum(self.skipped.values())
        reasons = ", ".join(f"{reason}: {count}" for reason, count in sorted(self.skipped.items()))
        return (
            f"found {self.found}, new {self.new}, updated {self.updated}, moved {self.moved}, "
            f"unchanged {self.unchanged}, skipped {total}{f' ({reasons})' if reasons else ''}, "
            f"pruned {self.pruned}, {self.seconds:.2f} s"
            + (f", {rate_text(self.images_per_s)}" if self.new + self.updated else "")
            + (f", metadata read {self.metadata_read}" if self.metadata_read else "")
            + (f", text of {self.text_stored}" if self.text_stored else "")
            + (f" (OCR read {self.ocr_read})" if self.ocr_read else "")
            + (f", similar images looked up {self.similar_checked}" if self.similar_checked else "")
            + self._ignored_text()
        )

    def _ignored_text(self) -> str:
        """The summary's tail naming files ignored by type, e.g. "not an image or video 5
        (.txt: 3, .xmp: 2)": every file under a root is accounted for."""
        live = f", live photo videos {self.live_photos}" if self.live_photos else ""
        if not self.ignored:
            return live
        kinds = ", ".join(f"{ext}: {n}" for ext, n in sorted(self.ignored.items()))
        return f", not an image or video {sum(self.ignored.values())} ({kinds}){live}"
