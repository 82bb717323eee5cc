"""Incremental, online ingest of image files into PostgreSQL (``clipdb ingest`` is its CLI).

One pass: scan (stat) -> plan against the model's rows (size, mtime; sha256 for moves) ->
decode + preprocess in worker processes -> batched encode here -> a writer thread that commits
one transaction per batch. Nothing to encode means the model is never loaded.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from clipdb import files
from clipdb.config import Settings, lock_wait_seconds
from clipdb.db import Database, open_database, require_write_access
from clipdb.db.ingest_lock import ingest_lock
from clipdb.db.registry import Model, register_model, registered_model
from clipdb.errors import UsageError
from clipdb.ingest.bulk import index_window
from clipdb.ingest.decode_pool import MIN_FILES_FOR_POOL, start_server_early
from clipdb.ingest.engine import check_engine, start_engine, write_encoded
from clipdb.ingest.options import ENGINES as ENGINES
from clipdb.ingest.options import FIRST_RUN_CONVERSION, images_per_s
from clipdb.ingest.options import IngestOptions as IngestOptions
from clipdb.ingest.options import IngestSummary as IngestSummary
from clipdb.ingest.phash_backfill import backfill_phashes
from clipdb.ingest.plan import Plan, SkipCallback, make_plan, prune
from clipdb.ingest.skips import Skip, SkipLedger
from clipdb.ingest.text import TextStage
from clipdb.models import ModelSpec, quick_model_spec
from clipdb.terminal import printable

if TYPE_CHECKING:
    from clipdb.encoders import Encoder


def default_workers() -> int:
    """Decode workers: one per core, at most 8. The encoder runs in bursts and the OS shares
    the cores: on 2 cores one worker per core ingested 1.16-1.44x faster than cores - 1 with
    OpenVINO bf16 and as fast with fp32, where the encoder dominates (BENCHMARKS.md)."""
    return max(1, min(8, os.cpu_count() or 1))


def print_skip(path: str, reason: str) -> None:
    from tqdm import tqdm

    # display(): undecodable bytes as \xNN, as stored; printable(): no control characters.
    tqdm.write(f"skipping {printable(files.display(path))}: {reason}", file=sys.stderr)


class Ingester:
    """One configured ingest; :meth:`run` makes a pass (``watch`` makes many).

    Building one does no I/O: the database is opened, names validated and the model loaded
    on the first pass that needs them.
    """

    def __init__(
        self,
        paths: Iterable[str | os.PathLike[str]],
        options: IngestOptions | None = None,
        *,
        database: Database | None = None,
        settings: Settings | None = None,
        encoder: Encoder | None = None,
    ) -> None:
        self.roots = [os.path.abspath(os.fspath(path)) for path in paths]
        self.options = options or IngestOptions()
        self.settings = settings or Settings.resolve(
            model=self.options.model, pretrained=self.options.pretrained
        )
        self.model_name = self.options.model or self.settings.model
        self.pretrained = self.options.pretrained or self.settings.pretrained
        self.encoder = encoder
        self._loaded_encoder = False  # True once load_encoder() made it: then it is ours
        self._database = database
        self._spec: ModelSpec | None = encoder.spec if encoder is not None else None
        self.on_skip = self.options.on_skip or print_skip
        self.known_bad: dict[str, Skip] | None = None  # set by watch(): SkipLedger.watched
        self._offline_roots: set[str] = set()
        self._roots_checked = False

    @property
    def database(self) -> Database:
        if self._database is None:
            self._database = open_database(self.settings)
        return self._database

    def _check_roots(self) -> None:
        if not self.roots:
            raise UsageError("no paths given")
        for root in self.roots:
            if not os.path.lexists(root):
                raise UsageError(f"{root} does not exist")

    def _model_spec(self) -> ModelSpec:
        """The stored identity, without importing open_clip when the names make it clear."""
        if self._spec is None:
            self._spec = quick_model_spec(self.model_name, self.pretrained)
            if self._spec is None:
                self._spec = self._validated_spec()
        return self._spec

    def _validated_spec(self) -> ModelSpec:
        from clipdb.encoders import resolve_model_spec

        return resolve_model_spec(self.model_name, self.pretrained)

    def _lookup_model(self, conn: Any) -> Model | None:
        spec = self._model_spec()
        model = registered_model(conn, spec.architecture, spec.pretrained)
        if model is None and self.encoder is None:
            # Never registered: check the names now (an unknown model is a usage error even
            # when there is nothing to encode).
            self._spec = self._validated_spec()
        return model

    def load_encoder(self) -> Encoder:
        if self.encoder is None:
            from clipdb.encoders import load_encoder

            self._loaded_encoder = True
            self.encoder = load_encoder(
                self._model_spec().architecture,
                self.pretrained,
                device=self.options.device,
                precision=self.options.precision,
                backend=self.options.backend,
                background=FIRST_RUN_CONVERSION,
            )
        return self.encoder

    # --- one pass -------------------------------------------------------------------------

    def run(self) -> IngestSummary:
        if not self._roots_checked:  # --watch: a root that vanishes later is offline, kept
            self._check_roots()
            self._roots_checked = True
        check_engine(self.options)
        require_write_access(self.database)
        wait_s = lock_wait_seconds()
        spec = self._model_spec()
        # Another ingest of a root with this model runs first: this plan then sees its rows.
        label = f"{spec.architecture}/{spec.pretrained}"
        with ingest_lock(self.database, label, self.roots, wait_s=wait_s):
            summary = self._run(wait_s)
        if self._loaded_encoder:  # a conversion the encoder started ends with this call
            getattr(self.encoder, "join", lambda: None)()
        return summary

    def _run(self, wait_s: float) -> IngestSummary:
        """Scan -> plan (and backfills) -> engine -> writer -> prune and remember skips."""
        start = time.perf_counter()
        summary = IngestSummary()
        if self.options.ocr == "only":  # the text of rows already indexed, nothing else
            with self.database.connect(autocommit=True) as conn:
                self._read_text(self._lookup_model(conn), summary)
            summary.seconds = round(time.perf_counter() - start, 3)
            return summary
        skips = SkipLedger(self.on_skip, verbose=self.options.verbose, watched=self.known_bad)
        scan = files.scan(self.roots, self.options.exclude)
        summary.found = len(scan.files) + len(scan.skipped)
        summary.ignored, summary.live_photos = dict(sorted(scan.ignored.items())), scan.live_photos
        # What exists (prune keeps it); a root that could not be listed is not a file in it.
        seen = {f.path for f in scan.files} | {p for p, _ in scan.skipped if p not in self.roots}
        skips.scan_skips(scan.skipped)
        stats = skips.usable({f.path: f for f in scan.files})
        with self.database.connect(autocommit=True) as conn:
            model = self._lookup_model(conn)
            skips.drop_known(conn, model)
            summary.known_bad = skips.known_bad
            plan = make_plan(conn, model, stats, skips.skip)
            summary.unchanged, summary.moved = plan.unchanged, plan.moved
            if model is not None:
                summary.metadata_read = self._backfill(conn, model, plan, stats, skips)
            if self.encoder is None:
                self._drop_unusable_head(plan.to_encode, stats, skips.skip)
            if plan.to_encode:
                model = self._encode(conn, model, plan, stats, skips, summary, wait_s, start)
            elif model is not None:
                with self._index_window(model, 0, wait_s):
                    pass  # heals an index an interrupted bulk run left missing
                self._finish(conn, model, seen, skips, summary)
        if model is not None and plan.to_encode:
            # Encoding may have run for hours, through a server restart that only the writer's
            # connection survived: what is left gets a connection of its own.
            with self.database.connect(autocommit=True) as conn:
                self._finish(conn, model, seen, skips, summary)
        self._read_text(model, summary)  # after the CLIP rows: they are searchable already
        if model is not None and summary.new + summary.updated:
            self._keep_similar_current(model, summary)
        summary.skipped = dict(skips.counts)
        summary.seconds = round(time.perf_counter() - start, 3)
        summary.images_per_s = images_per_s(summary.new + summary.updated, summary.seconds)
        return summary

    def _keep_similar_current(self, model: Model, summary: IngestSummary) -> None:
        """New and changed rows get their similar-tier neighbours now (milliseconds each,
        through the index), where the tier was ever asked for: ``clipdb dupes`` then reads."""
        from clipdb.dupes.similar import keep_current

        with self.database.connect(autocommit=True) as conn:
            summary.similar_checked = keep_current(conn, model)

    def _read_text(self, model: Model | None, summary: IngestSummary) -> None:
        if model is None or self.options.ocr == "off":
            return
        stage = TextStage(
            self.database,
            model,
            self.roots,
            ocr=self.options.ocr,
            engine=self.options.ocr_engine,
            progress=self.options.progress,
            max_pixels=self.options.max_pixels,
        )
        summary.text_stored, summary.ocr_read = stage.run()

    def _backfill(
        self,
        conn: Any,
        model: Model,
        plan: Plan,
        stats: dict[str, files.FileStat],
        skips: SkipLedger,
    ) -> int:
        """Rows kept as they are get what they lack without encoding: photo metadata (rows
        from before 0006) and the pHash (before 0007). Returns the rows that got metadata."""
        from clipdb.ingest.backfill import backfill_metadata

        workers = self._workers()
        read = backfill_metadata(
            conn, plan.lacks_metadata, stats, workers=workers, on_skip=skips.skip
        )
        backfill_phashes(
            conn,
            model,
            [path for path in plan.lacks_phash if path not in skips.new],
            stats,
            workers=workers,
            max_pixels=self.options.max_pixels,
            on_skip=skips.skip,
        )
        return read

    def _encode(
        self,
        conn: Any,
        model: Model | None,
        plan: Plan,
        stats: dict[str, files.FileStat],
        skips: SkipLedger,
        summary: IngestSummary,
        wait_s: float,
        start: float,
    ) -> Model:
        """Run the engine over the plan's files, the writer committing as they come;
        returns the model (registered now on its first run)."""
        architecture = self._model_spec().architecture
        pooled = self._workers() > 0 and len(plan.to_encode) >= MIN_FILES_FOR_POOL
        if self.options.engine == "local" and pooled:
            start_server_early()  # overlaps the model load
        engine = start_engine(
            self.options, self.load_encoder, architecture, self.pretrained, self._workers()
        )
        try:  # the engine is let go also when the run fails before its first batch
            if model is None:
                model = register_model(conn, engine.architecture, engine.pretrained, engine.dim)

            def written(path: str) -> None:
                if path in plan.changed:
                    summary.updated += 1
                else:
                    summary.new += 1

            planned_new = len(plan.to_encode) - len(plan.changed)
            with self._index_window(model, planned_new, wait_s):
                write_encoded(
                    self.database,
                    model,
                    engine.encode(plan.to_encode, stats),
                    len(plan.to_encode),
                    progress=self.options.progress,
                    on_skip=skips.skip,
                    on_written=written,
                    started=start,
                )
                # A first OpenVINO run converted the image tower alone: the text tower
                # converts now, while the index and the rest of the run are finished.
                getattr(self.encoder, "finish_conversion", lambda: None)()
        finally:
            engine.close()
        return model

    def _finish(
        self,
        conn: Any,
        model: Model,
        seen: set[str],
        skips: SkipLedger,
        summary: IngestSummary,
    ) -> None:
        """After the files: prune (if asked) and update clipdb.skipped_files."""
        if self.options.prune:
            offline: set[str] = set()
            summary.pruned = prune(
                conn,
                model,
                self.roots,
                seen,
                missing_roots=self.options.prune_missing_roots,
                on_offline=lambda root, rows: self._offline(root, rows, offline),
            )
            self._offline_roots = offline  # back online: say so again if it goes
        skips.remember(conn, model, self.roots, seen)

    def _index_window(self, model: Model, planned_new: int, wait_s: float) -> Any:
        terminate = self.options.terminate_blockers
        return index_window(
            self.database, model, planned_new, wait_s=wait_s, terminate_blockers=terminate
        )

    def _workers(self) -> int:
        return default_workers() if self.options.workers is None else self.options.workers

    def _drop_unusable_head(
        self, paths: list[str], stats: dict[str, files.FileStat], skip: SkipCallback
    ) -> None:
        """Before loading a model (seconds, GBs): skip the leading files that cannot be
        decoded, until one can; a pass over only bad files then never loads it."""
        from clipdb.ingest.video import unusable

        while paths:
            reason = unusable(paths[0], stats.get(paths[0]), self.options.max_pixels)
            if reason is None:
                return
            skip(paths.pop(0), reason)

    def _offline(self, root: str, rows: int, offline: set[str]) -> None:
        """Say once (while it stays so, in --watch) that a root looks offline: not pruned."""
        offline.add(root)
        if root not in self._offline_roots:
            print(
                f"{printable(files.display(root))}: no files found but {rows} rows indexed "
                "under it; not pruning (offline?)",
                file=sys.stderr,
                flush=True,
            )


def ingest(
    paths: Iterable[str | os.PathLike[str]],
    options: IngestOptions | None = None,
    *,
    database: Database | None = None,
    settings: Settings | None = None,
    encoder: Encoder | None = None,
    **option_values: Any,
) -> IngestSummary:
    """Index image files and directories (recursively) into the database; one pass.

    ``options`` (or keyword values of :class:`IngestOptions`) say how; ``encoder`` (a loaded
    :class:`clipdb.encoders.Encoder`) replaces model loading; ``database`` replaces
    ``open_database(settings)``. Bad files are reported through ``on_skip(path, reason)``
    (default: ``skipping <path>: <reason>`` on stderr) and counted.
    """
    options = replace(options or IngestOptions(), **option_values)
    return Ingester(paths, options, database=database, settings=settings, encoder=encoder).run()


def watch(
    paths: Iterable[str | os.PathLike[str]],
    options: IngestOptions | None = None,
    *,
    interval: float = 1.0,
    on_pass: Callable[[IngestSummary], None] | None = None,
    stop: threading.Event | None = None,
    database: Database | None = None,
    settings: Settings | None = None,
    encoder: Encoder | None = None,
    **option_values: Any,
) -> None:
    """Ingest, then poll the roots every ``interval`` seconds until ``stop`` is set
    (or KeyboardInterrupt). Files that failed are retried only once they change."""
    options = replace(options or IngestOptions(), **option_values)
    ingester = Ingester(paths, options, database=database, settings=settings, encoder=encoder)
    ingester.known_bad = {}
    stop = stop or threading.Event()
    while not stop.is_set():
        summary = ingester.run()
        if on_pass is not None:
            on_pass(summary)
        stop.wait(interval)
