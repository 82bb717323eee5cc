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
from collections import Counter
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
from clipdb.ingest.options import ENGINES as ENGINES
from clipdb.ingest.options import IngestOptions as IngestOptions
from clipdb.ingest.options import IngestSummary as IngestSummary
from clipdb.ingest.options import images_per_s
from clipdb.ingest.phash_backfill import backfill_phashes
from clipdb.ingest.plan import (
    SkipCallback,
    identity,
    known_skips,
    make_plan,
    prune,
    remember_skips,
)
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
        self._database = database
        self._spec: ModelSpec | None = encoder.spec if encoder is not None else None
        self.on_skip = self.options.on_skip or print_skip
        self.known_bad: dict[str, tuple[int, int, str]] | None = None  # set by watch()
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

            self.encoder = load_encoder(
                self._model_spec().architecture,
                self.pretrained,
                device=self.options.device,
                precision=self.options.precision,
                backend=self.options.backend,
            )
        return self.encoder

    def _run_encoder(self) -> Any:
        """This pass's encoder: the local one, or the actors of a Ray cluster."""
        if self.options.engine != "ray":
            return self.load_encoder()
        from clipdb.ingest.ray_engine import EncoderWorker, RayEncoders

        return RayEncoders(
            self._model_spec().architecture,
            self.pretrained,
            address=self.options.ray_address,
            gpus_per_worker=self.options.gpus_per_worker,
            device=self.options.device,
            precision=self.options.precision,
            backend=self.options.backend,
            max_pixels=self.options.max_pixels,
            decode_mode=self.options.decode,
            worker_class=self.options.ray_worker_class or EncoderWorker,
        )

    # --- one pass -------------------------------------------------------------------------

    def run(self) -> IngestSummary:
        if not self._roots_checked:  # --watch: a root that vanishes later is offline, kept
            self._check_roots()
            self._roots_checked = True
        if self.options.engine == "ray":
            from clipdb.ingest.ray_engine import require_ray

            require_ray()  # before any work: one line saying how to install it
        require_write_access(self.database)
        wait_s = lock_wait_seconds()
        spec = self._model_spec()
        # Another ingest of a root with this model runs first: this plan then sees its rows.
        label = f"{spec.architecture}/{spec.pretrained}"
        with ingest_lock(self.database, label, self.roots, wait_s=wait_s):
            return self._run(wait_s)

    def _run(self, wait_s: float) -> IngestSummary:
        from clipdb.ingest.pipeline import encode_and_write

        start = time.perf_counter()
        summary = IngestSummary()
        skipped: Counter[str] = Counter()
        new_skips: dict[str, tuple[int, int, str]] = {}  # for clipdb.skipped_files

        def skip(path: str, reason: str) -> None:
            skipped[reason] += 1
            self.on_skip(path, reason)
            if path in stats:
                new_skips[path] = (*identity(stats[path]), reason)
                if self.known_bad is not None:
                    self.known_bad[path] = new_skips[path]

        scan = files.scan(self.roots, self.options.exclude)
        summary.found = len(scan.files) + len(scan.skipped)
        # What exists (prune keeps it); a root that could not be listed is not a file in it.
        seen = {f.path for f in scan.files} | {p for p, _ in scan.skipped if p not in self.roots}
        for path, reason in scan.skipped:
            if self.known_bad is not None and self.known_bad.get(path, (0, 0, ""))[2] == reason:
                skipped[reason] += 1  # --watch: reported once
                continue
            skipped[reason] += 1
            self.on_skip(path, reason)
            if self.known_bad is not None:
                self.known_bad[path] = (-1, -1, reason)
        stats = self._drop_known_bad({f.path: f for f in scan.files}, skipped)
        with self.database.connect(autocommit=True) as conn:
            model = self._lookup_model(conn)
            # Known-bad files that have not changed are reported, not retried: a tree with a
            # few bad files must not load the model on every run.
            known, still_bad = known_skips(conn, model, stats)
            summary.known_bad = len(still_bad)
            for path, reason in still_bad.items():
                skipped[reason] += 1
                if self.options.verbose and (self.known_bad is None or path not in self.known_bad):
                    self.on_skip(path, reason)
                if self.known_bad is not None:
                    self.known_bad[path] = (*known[path][:2], reason)
            plan = make_plan(conn, model, stats, skip)
            summary.unchanged, summary.moved = plan.unchanged, plan.moved
            if model is not None:
                from clipdb.ingest.backfill import backfill_metadata

                summary.metadata_read = backfill_metadata(conn, plan.lacks_metadata, stats)
                # rows from before 0007: their pHash, without encoding
                backfill_phashes(
                    conn, model, plan.lacks_phash, stats,
                    workers=self._workers(), max_pixels=self.options.max_pixels,
                )  # fmt: skip
            if self.encoder is None:
                self._drop_unusable_head(plan.to_encode, stats, skip)
            if plan.to_encode:
                encoder = self._run_encoder()
                if model is None:
                    model = register_model(
                        conn, encoder.architecture, encoder.pretrained, encoder.dim
                    )

                def written(path: str) -> None:
                    if path in plan.changed:
                        summary.updated += 1
                    else:
                        summary.new += 1

                planned_new = len(plan.to_encode) - len(plan.changed)
                try:
                    with self._index_window(model, planned_new, wait_s):
                        if self.options.engine == "ray":
                            encoder.encode_and_write(
                                self.database, model, plan.to_encode, stats,
                                batch_size=self.options.batch_size, progress=self.options.progress,
                                on_skip=skip, on_written=written, started=start,
                            )  # fmt: skip
                        else:
                            encode_and_write(
                                self.database, model, encoder, plan.to_encode, stats,
                                batch_size=self.options.batch_size,
                                workers=default_workers() if self.options.workers is None
                                else self.options.workers,
                                max_pixels=self.options.max_pixels,
                                decode_mode=self.options.decode,
                                progress=self.options.progress,
                                on_skip=skip,
                                on_written=written,
                                started=start,
                            )  # fmt: skip
                finally:
                    if self.options.engine == "ray":
                        encoder.close()  # also when the run fails before its first batch
            elif model is not None:
                with self._index_window(model, 0, wait_s):
                    pass  # heals an index an interrupted bulk run left missing
            if model is not None and not plan.to_encode:
                self._finish(conn, model, seen, known, still_bad, new_skips, summary)
        if model is not None and plan.to_encode:
            # Encoding may have run for hours, through a server restart that only the writer's
            # connection survived: what is left gets a connection of its own.
            with self.database.connect(autocommit=True) as conn:
                self._finish(conn, model, seen, known, still_bad, new_skips, summary)
        summary.skipped = dict(skipped)
        summary.seconds = round(time.perf_counter() - start, 3)
        summary.images_per_s = images_per_s(summary.new + summary.updated, summary.seconds)
        return summary

    def _finish(
        self,
        conn: Any,
        model: Model,
        seen: set[str],
        known: dict[str, tuple[int, int, str]],
        still_bad: dict[str, str],
        new_skips: dict[str, tuple[int, int, str]],
        summary: IngestSummary,
    ) -> None:
        """After the files: prune (if asked) and update clipdb.skipped_files."""
        if self.options.prune:
            offline: set[str] = set()
            summary.pruned = prune(
                conn, model, self.roots, seen,
                missing_roots=self.options.prune_missing_roots,
                on_offline=lambda root, rows: self._offline(root, rows, offline),
            )  # fmt: skip
            self._offline_roots = offline  # back online: say so again if it goes
        retried = [path for path in known if path not in still_bad]
        remember_skips(conn, model, self.roots, seen, retried, new_skips)

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
        from clipdb.decode import unusable

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

    def _drop_known_bad(
        self, stats: dict[str, files.FileStat], skipped: Counter[str]
    ) -> dict[str, files.FileStat]:
        """In --watch, a file skipped before is not retried (or reported) until it changes."""
        if self.known_bad is None:
            return stats
        todo = {}
        for path, stat in stats.items():
            bad = self.known_bad.get(path)
            if bad is not None and bad[:2] == identity(stat):
                skipped[bad[2]] += 1
            else:
                todo[path] = stat
        return todo


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
    :class:`clipdb.encoder.Encoder`) replaces model loading; ``database`` replaces
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
