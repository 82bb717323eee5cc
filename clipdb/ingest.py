"""Incremental, online ingest of image files into PostgreSQL; ``python -m clipdb.ingest``.

One pass: scan (stat) -> diff against the model's rows by (path, size, mtime_ns) -> hash the
new and changed files to find moves and touched-but-identical files (no decode, no encode) ->
decode + preprocess in worker processes -> batched encode here -> a writer thread that commits
one transaction per batch. Nothing to encode means the model is never loaded.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from functools import partial
from queue import Queue
from typing import Any

import psycopg

from clipdb import files
from clipdb.cli import first_line, run_guarded
from clipdb.config import Settings, add_common_arguments
from clipdb.db import Database, open_database, require_write_access
from clipdb.errors import ClipdbError, UsageError
from clipdb.queries import Model, register_model

SkipCallback = Callable[[str, str], None]
ID_CHUNK = 10_000  # paths / hashes per "= ANY(%s)" lookup
MIN_FILES_FOR_POOL = 16  # fewer files decode faster here than a pool starts
WRITE_RETRIES = 3  # deadlocks between concurrent ingesters are retried
# Seconds to wait before each new try of a batch whose connection was lost (server restart).
RECONNECT_DELAYS = (1.0, 2.0, 4.0)


@dataclass
class IngestSummary:
    """What one ingest pass did. ``--json`` prints exactly these keys."""

    found: int = 0
    new: int = 0
    updated: int = 0
    moved: int = 0
    unchanged: int = 0
    skipped: dict[str, int] | None = None  # reason -> count
    pruned: int = 0
    seconds: float = 0.0
    images_per_s: float = 0.0

    def __post_init__(self) -> None:
        if self.skipped is None:
            self.skipped = {}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def format(self) -> str:
        skipped = self.skipped or {}
        total = sum(skipped.values())
        reasons = ", ".join(f"{reason}: {count}" for reason, count in sorted(skipped.items()))
        return (
            f"found {self.found}, new {self.new}, updated {self.updated}, moved {self.moved}, "
            f"unchanged {self.unchanged}, skipped {total}{f' ({reasons})' if reasons else ''}, "
            f"pruned {self.pruned}, {self.seconds:.2f} s, {self.images_per_s:.1f} images/s"
        )


def print_skip(path: str, reason: str) -> None:
    from tqdm import tqdm

    tqdm.write(f"skipping {path}: {reason}", file=sys.stderr)


class _Writer:
    """Commits batches of rows on its own connection, off the encoding thread."""

    def __init__(self, database: Database, model: Model) -> None:
        self.database, self.model = database, model
        self.queue: Queue[list[Any] | None] = Queue(maxsize=2)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="clipdb-writer", daemon=True)
        self.thread.start()

    def put(self, records: list[Any]) -> None:
        if self.error is not None:
            raise self.error
        self.queue.put(records)

    def close(self) -> None:
        self.queue.put(None)
        self.thread.join()
        if self.error is not None:
            raise self.error

    def _run(self) -> None:
        conn = None
        while (records := self.queue.get()) is not None:
            if self.error is not None:
                continue  # drain so the producer never blocks
            try:
                conn = self._write(conn, records)
            except BaseException as err:  # re-raised in the producer
                self.error = err
        if conn is not None:
            conn.close()

    def _write(self, conn: Any, records: list[Any]) -> Any:
        """Commit one batch; returns the connection to use for the next one.

        A lost connection (server restart) is replaced and the batch sent again after each of
        RECONNECT_DELAYS; the upsert is idempotent, so a batch whose commit did reach the
        server before the connection dropped is not duplicated.
        """
        from clipdb.store import upsert_images

        deadlocks = reconnects = 0
        while True:
            try:
                conn = conn or self.database.connect()
                with conn.transaction():
                    upsert_images(conn, self.model, records)
                return conn
            except (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure):
                deadlocks += 1
                if deadlocks == WRITE_RETRIES:
                    raise
            except (psycopg.OperationalError, ClipdbError) as err:
                if conn is not None and not conn.broken:
                    raise  # a statement failed on a live connection: not ours to retry
                if conn is not None:
                    conn.close()
                    conn = None
                if reconnects == len(RECONNECT_DELAYS):
                    raise ClipdbError(
                        f"lost the database connection and {reconnects} reconnects failed "
                        f"({first_line(err)}); committed batches are kept, run again to finish"
                    ) from None
                time.sleep(RECONNECT_DELAYS[reconnects])
                reconnects += 1


class Ingester:
    """One configured ingest; :meth:`run` makes a pass (``--watch`` makes many)."""

    def __init__(
        self,
        paths: Iterable[str | os.PathLike[str]],
        *,
        database: Database | None = None,
        settings: Settings | None = None,
        encoder: Any = None,
        model: str | None = None,
        pretrained: str | None = None,
        device: str = "auto",
        precision: str = "auto",
        batch_size: int = 64,
        workers: int | None = None,
        exclude: Sequence[str] = (),
        prune: bool = False,
        max_pixels: int | None = None,
        progress: bool = True,
        on_skip: SkipCallback | None = None,
    ) -> None:
        self.roots = [os.path.abspath(os.fspath(path)) for path in paths]
        if not self.roots:
            raise UsageError("no paths given")
        for root in self.roots:
            if not os.path.lexists(root):
                raise UsageError(f"{root} does not exist")
        if batch_size < 1:
            raise UsageError("--batch-size must be at least 1")
        if workers is not None and workers < 0:
            raise UsageError("--workers must be 0 or more")
        settings = settings or Settings.resolve(model=model, pretrained=pretrained)
        self.encoder = encoder
        if encoder is not None:
            self.spec = encoder.spec
        else:
            from clipdb.model_names import quick_model_spec

            # Without importing open_clip (seconds) when the identity is clear from the names;
            # _lookup_model validates names fully the first time a model is seen.
            name, weights = model or settings.model, pretrained or settings.pretrained
            self.spec = quick_model_spec(name, weights) or self._validated_spec(name, weights)
        self.pretrained_arg = pretrained or settings.pretrained
        self.database = database or open_database(settings)
        require_write_access(self.database)
        self.device, self.precision = device, precision
        self.batch_size = batch_size
        self.workers = default_workers() if workers is None else workers
        self.exclude, self.prune, self.max_pixels = tuple(exclude), prune, max_pixels
        self.progress = progress
        self.on_skip = on_skip or print_skip
        self.known_bad: dict[str, tuple[int, int, str]] | None = None  # set by watch()

    # --- one pass -------------------------------------------------------------------------

    def run(self) -> IngestSummary:
        start = time.perf_counter()
        summary = IngestSummary()
        skipped: Counter[str] = Counter()

        def skip(path: str, reason: str) -> None:
            skipped[reason] += 1
            self.on_skip(path, reason)

        scan = files.scan(self.roots, self.exclude)
        summary.found = len(scan.files) + len(scan.skipped)
        for path, reason in scan.skipped:
            if self.known_bad is not None and self.known_bad.get(path, (0, 0, ""))[2] == reason:
                skipped[reason] += 1  # --watch: reported once
                continue
            skip(path, reason)
            if self.known_bad is not None:
                self.known_bad[path] = (-1, -1, reason)
        stats = {f.path: f for f in scan.files}
        todo = self._drop_known_bad(stats, skipped)
        with self.database.connect(autocommit=True) as conn:
            model = self._lookup_model(conn)
            rows = self._rows(conn, model, list(todo)) if model else {}
            changed = {p: rows[p] for p in todo if p in rows}
            new = [p for p in todo if p not in rows]
            summary.unchanged = sum(
                1 for p in changed if (changed[p][0], changed[p][1]) == _identity(stats[p])
            )
            changed = {p: r for p, r in changed.items() if (r[0], r[1]) != _identity(stats[p])}
            if model is not None and (changed or (new and self._has_rows(conn, model))):
                new, touched, moved = self._reuse_by_hash(conn, model, new, changed, stats, skip)
                summary.unchanged += touched
                summary.moved = moved
                changed = {p: r for p, r in changed.items() if p in stats and p in todo}
            to_encode = sorted(set(new) | set(changed))
            if to_encode:
                model = self._encode(conn, model, to_encode, changed, stats, summary, skip)
            if self.prune and model is not None:
                summary.pruned = self._prune(conn, model, stats)
        summary.skipped = dict(skipped)
        summary.seconds = round(time.perf_counter() - start, 3)
        encoded = summary.new + summary.updated
        summary.images_per_s = round(encoded / summary.seconds, 2) if summary.seconds else 0.0
        return summary

    def _drop_known_bad(
        self, stats: dict[str, files.FileStat], skipped: Counter[str]
    ) -> dict[str, files.FileStat]:
        """In --watch, a file skipped before is not retried (or reported) until it changes."""
        if self.known_bad is None:
            return stats
        todo = {}
        for path, stat in stats.items():
            bad = self.known_bad.get(path)
            if bad is not None and bad[:2] == _identity(stat):
                skipped[bad[2]] += 1
            else:
                todo[path] = stat
        return todo

    def _remember_bad(self, path: str, reason: str, stats: dict[str, files.FileStat]) -> None:
        if self.known_bad is not None and path in stats:
            self.known_bad[path] = (*_identity(stats[path]), reason)

    def _has_rows(self, conn: Any, model: Model) -> bool:
        query = f"SELECT EXISTS (SELECT 1 FROM clipdb.images WHERE model_id = {model.model_id})"
        return bool(conn.execute(query).fetchone()[0])

    @staticmethod
    def _validated_spec(model: str, pretrained: str | None) -> Any:
        from clipdb.encoder import resolve_model_spec

        return resolve_model_spec(model, pretrained)

    def _lookup_model(self, conn: Any) -> Model | None:
        row = conn.execute(
            "SELECT id, architecture, pretrained, dim FROM clipdb.models "
            "WHERE architecture = %s AND pretrained = %s",
            (self.spec.architecture, self.spec.pretrained),
        ).fetchone()
        if row is None and self.encoder is None:
            # Never registered: check the names now (an unknown model is a usage error even
            # when there is nothing to encode).
            self.spec = self._validated_spec(self.spec.architecture, self.pretrained_arg)
        return Model(*row) if row else None

    def _rows(self, conn: Any, model: Model, paths: list[str]) -> dict[str, tuple[int, int, bytes]]:
        """path -> (size, mtime_ns, sha256) of this model's rows for ``paths``."""
        found: dict[str, tuple[int, int, bytes]] = {}
        for offset in range(0, len(paths), ID_CHUNK):
            for path, size, mtime_ns, sha in conn.execute(
                f"SELECT path, size, mtime_ns, sha256 FROM clipdb.images "
                f"WHERE model_id = {int(model.model_id)} AND path = ANY(%s)",
                (paths[offset : offset + ID_CHUNK],),
            ):
                found[path] = (size, mtime_ns, bytes(sha))
        return found

    def _reuse_by_hash(
        self,
        conn: Any,
        model: Model,
        new: list[str],
        changed: dict[str, tuple[int, int, bytes]],
        stats: dict[str, files.FileStat],
        skip: SkipCallback,
    ) -> tuple[list[str], int, int]:
        """Hash new and changed files: re-point moved rows, refresh touched ones.

        Returns the new paths still to encode, and the counts of touched and moved files.
        """
        paths = sorted([*new, *changed])
        hashes: dict[str, bytes] = {}
        with ThreadPoolExecutor(max_workers=4) as pool:  # hashlib releases the GIL
            for path, sha, reason in pool.map(files.hash_task, paths):
                if sha is None:
                    skip(path, reason or files.UNREADABLE)
                    self._remember_bad(path, reason or files.UNREADABLE, stats)
                    stats.pop(path, None)
                else:
                    hashes[path] = sha
        model_sql = int(model.model_id)
        touched = 0
        with conn.transaction():
            for path, (_, _, old_sha) in list(changed.items()):
                if hashes.get(path) == old_sha:
                    conn.execute(
                        f"UPDATE clipdb.images SET size = %s, mtime_ns = %s, updated_at = now() "
                        f"WHERE model_id = {model_sql} AND path = %s",
                        (stats[path].size, stats[path].mtime_ns, path),
                    )
                    touched += 1
                    del changed[path]
        new = [p for p in new if p in hashes]
        by_sha: dict[bytes, list[tuple[int, str]]] = {}
        wanted = list({hashes[p] for p in new})
        for offset in range(0, len(wanted), ID_CHUNK):
            for row_id, path, sha in conn.execute(
                f"SELECT id, path, sha256 FROM clipdb.images "
                f"WHERE model_id = {model_sql} AND sha256 = ANY(%s) ORDER BY id",
                (wanted[offset : offset + ID_CHUNK],),
            ):
                by_sha.setdefault(bytes(sha), []).append((row_id, path))
        remaining, moved = [], 0
        with conn.transaction():
            for path in new:
                orphan = next(
                    (
                        (row_id, old)
                        for row_id, old in by_sha.get(hashes[path], [])
                        if old not in stats and not os.path.exists(old)
                    ),
                    None,
                )
                if orphan is None or not self._move(conn, model, orphan[0], stats[path]):
                    remaining.append(path)
                    continue
                by_sha[hashes[path]].remove(orphan)
                moved += 1
        return remaining, touched, moved

    def _move(self, conn: Any, model: Model, row_id: int, stat: files.FileStat) -> bool:
        import psycopg

        try:
            with conn.transaction():  # a savepoint: a concurrent ingester may own the path
                cursor = conn.execute(
                    "UPDATE clipdb.images SET path = %s, size = %s, mtime_ns = %s, "
                    "updated_at = now() WHERE id = %s",
                    (stat.path, stat.size, stat.mtime_ns, row_id),
                )
                return bool(cursor.rowcount)
        except psycopg.errors.UniqueViolation:
            return False

    def _prune(self, conn: Any, model: Model, stats: dict[str, files.FileStat]) -> int:
        """Delete this model's rows under the roots whose files no longer exist."""
        pruned = 0
        for root in self.roots:
            prefix = os.path.join(root, "") if os.path.isdir(root) else root
            rows = conn.execute(
                f"SELECT id, path FROM clipdb.images WHERE model_id = {int(model.model_id)} "
                "AND (path = %s OR starts_with(path, %s))",
                (root, prefix),
            ).fetchall()
            gone = [row_id for row_id, path in rows if path not in stats and not _exists(path)]
            if gone:
                cursor = conn.execute("DELETE FROM clipdb.images WHERE id = ANY(%s)", (gone,))
                pruned += cursor.rowcount
        return pruned

    # --- decode + encode ------------------------------------------------------------------

    def load_encoder(self) -> Any:
        if self.encoder is None:
            from clipdb.encoder import load_encoder

            self.encoder = load_encoder(
                self.spec.architecture,
                self.pretrained_arg,
                device=self.device,
                precision=self.precision,
            )
        return self.encoder

    def _encode(
        self,
        conn: Any,
        model: Model | None,
        paths: list[str],
        changed: dict[str, Any],
        stats: dict[str, files.FileStat],
        summary: IngestSummary,
        skip: SkipCallback,
    ) -> Model:
        from tqdm import tqdm

        from clipdb.store import ImageRecord

        encoder = self.load_encoder()
        if model is None:
            model = register_model(conn, encoder.architecture, encoder.pretrained, encoder.dim)
        pipeline = files.PixelPipeline.from_preprocess(encoder.preprocess, max(encoder.image_size))
        writer = _Writer(self.database, model)
        bar = tqdm(
            total=len(paths),
            unit="img",
            file=sys.stderr,
            disable=None if self.progress else True,
            dynamic_ncols=True,
        )
        batch: list[files.Decoded] = []

        def flush() -> None:
            embeddings = encoder.encode_images(
                pipeline.to_batch([d.pixels for d in batch if d.pixels is not None])
            )
            records = []
            for item, embedding in zip(batch, embeddings, strict=True):
                stat = stats[item.path]
                assert item.sha256 is not None
                records.append(
                    ImageRecord(
                        item.path,
                        item.sha256,
                        stat.size,
                        stat.mtime_ns,
                        item.width,
                        item.height,
                        embedding,
                    )
                )
                if item.path in changed:
                    summary.updated += 1
                else:
                    summary.new += 1
            writer.put(records)
            bar.update(len(batch))
            batch.clear()

        try:
            for item in self._decoded(paths, pipeline):
                if item.reason is not None:
                    skip(item.path, item.reason)
                    self._remember_bad(item.path, item.reason, stats)
                    bar.update(1)
                    continue
                batch.append(item)
                if len(batch) >= self.batch_size:
                    flush()
            if batch:
                flush()
        finally:
            bar.close()
            writer.close()  # commits what was queued, also on Ctrl-C
        return model

    def _decoded(self, paths: list[str], pipeline: files.PixelPipeline) -> Iterator[files.Decoded]:
        task = partial(files.decode_task, pipeline=pipeline, max_pixels=self.max_pixels)
        if self.workers == 0 or len(paths) < MIN_FILES_FOR_POOL:
            yield from map(task, paths)
            return
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(["clipdb.files"])
        pool = ProcessPoolExecutor(
            max_workers=self.workers, mp_context=context, initializer=files.worker_init
        )
        # Bounded read-ahead: decoding may outrun encoding, and decoded pixels are big.
        ahead = max(2 * self.batch_size, 4 * self.workers)
        pending: deque[Future[files.Decoded]] = deque()
        remaining = iter(paths)
        try:
            for path in remaining:
                pending.append(pool.submit(task, path))
                if len(pending) >= ahead:
                    break
            while pending:
                result = pending.popleft().result()
                next_path = next(remaining, None)
                if next_path is not None:
                    pending.append(pool.submit(task, next_path))
                yield result
        finally:
            pool.shutdown(wait=False, cancel_futures=True)


def _identity(stat: files.FileStat) -> tuple[int, int]:
    return (stat.size, stat.mtime_ns)


def _exists(path: str) -> bool:
    try:
        return os.path.exists(path)
    except OSError:
        return True  # cannot tell: keep the row


def default_workers() -> int:
    """Decode workers: one core is left to the encoder (which uses all cores in bursts)."""
    return max(1, min(8, (os.cpu_count() or 2) - 1))


def ingest(
    paths: Iterable[str | os.PathLike[str]],
    *,
    database: Database | None = None,
    settings: Settings | None = None,
    encoder: Any = None,
    model: str | None = None,
    pretrained: str | None = None,
    device: str = "auto",
    precision: str = "auto",
    batch_size: int = 64,
    workers: int | None = None,
    exclude: Sequence[str] = (),
    prune: bool = False,
    max_pixels: int | None = None,
    progress: bool = True,
    on_skip: SkipCallback | None = None,
) -> IngestSummary:
    """Index image files and directories (recursively) into the database; one pass.

    ``encoder`` (a loaded :class:`clipdb.encoder.ClipEncoder`) replaces model loading;
    ``database`` replaces ``open_database(settings)``. Bad files are reported through
    ``on_skip(path, reason)`` (default: ``skipping <path>: <reason>`` on stderr) and counted.
    """
    return Ingester(
        paths,
        database=database,
        settings=settings,
        encoder=encoder,
        model=model,
        pretrained=pretrained,
        device=device,
        precision=precision,
        batch_size=batch_size,
        workers=workers,
        exclude=exclude,
        prune=prune,
        max_pixels=max_pixels,
        progress=progress,
        on_skip=on_skip,
    ).run()


def watch(
    paths: Iterable[str | os.PathLike[str]],
    *,
    interval: float = 1.0,
    on_pass: Callable[[IngestSummary], None] | None = None,
    stop: threading.Event | None = None,
    **options: Any,
) -> None:
    """Ingest, then poll the roots every ``interval`` seconds until ``stop`` is set
    (or KeyboardInterrupt). Files that failed are retried only once they change."""
    ingester = Ingester(paths, **options)
    ingester.known_bad = {}
    stop = stop or threading.Event()
    while not stop.is_set():
        summary = ingester.run()
        if on_pass is not None:
            on_pass(summary)
        stop.wait(interval)


# --- CLI ------------------------------------------------------------------------------------

EXAMPLES = """\
examples:
  python -m clipdb.ingest ~/Pictures                      # index a directory tree
  python -m clipdb.ingest photos/ --prune                 # ... and forget deleted files
  python -m clipdb.ingest photos/ --watch --prune         # keep indexing until Ctrl-C
  python -m clipdb.ingest a.jpg b.png --json              # summary as one JSON object
  python -m clipdb.ingest photos/ --model ViT-B/16 --exclude '*.thumb.jpg'
  python -m clipdb.ingest tests/ --model ViT-B-32 --pretrained none   # offline smoke run
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m clipdb.ingest",
        description="Encode image files with CLIP and store their embeddings in PostgreSQL. "
        "Unchanged files are skipped, moved files re-pointed, changed files re-encoded.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("paths", nargs="+", metavar="PATH", help="image files or directories")
    add_common_arguments(parser)
    parser.add_argument(
        "--device", default="auto", choices=["auto", "cpu", "cuda", "mps"], help="default auto"
    )
    parser.add_argument(
        "--precision",
        default="auto",
        choices=["auto", "fp32", "fp16", "bf16"],
        help="auto: fp16 on CUDA, bf16 on CPUs with native bf16, else fp32",
    )
    parser.add_argument("--batch-size", type=int, default=64, help="images per batch (64)")
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help=f"decode processes (default {default_workers()} here: cores - 1; 0 = none)",
    )
    parser.add_argument(
        "--exclude",
        action="append",
        default=[],
        metavar="GLOB",
        help="skip files/dirs whose name, path relative to PATH, or absolute path matches "
        "(repeatable)",
    )
    parser.add_argument(
        "--prune", action="store_true", help="delete rows of files under PATH that are gone"
    )
    parser.add_argument(
        "--watch", action="store_true", help="keep polling PATH for changes until Ctrl-C"
    )
    parser.add_argument(
        "--interval", type=float, default=1.0, help="--watch poll interval in seconds (1.0)"
    )
    parser.add_argument(
        "--max-pixels",
        type=int,
        default=None,
        metavar="N",
        help="skip images with more pixels (default: Pillow's decompression-bomb limit)",
    )
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.add_argument(
        "--strict",
        action="store_true",
        help="exit 1 if any file was skipped (the good files are still indexed and committed)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.strict and args.watch:
        parser.error("--strict cannot be combined with --watch")
    settings = Settings.from_args(args)

    def report(summary: IngestSummary) -> None:
        print(json.dumps(summary.to_dict()) if args.json else summary.format(), flush=True)

    options: dict[str, Any] = dict(
        settings=settings,
        pretrained=settings.pretrained,
        device=args.device,
        precision=args.precision,
        batch_size=args.batch_size,
        workers=args.workers,
        exclude=args.exclude,
        prune=args.prune,
        max_pixels=args.max_pixels,
    )

    def body() -> int:
        if args.watch:
            try:
                watch(
                    args.paths, interval=args.interval, on_pass=_watch_reporter(report), **options
                )
            except KeyboardInterrupt:
                print("stopped watching", file=sys.stderr)
            return 0
        summary = ingest(args.paths, **options)
        report(summary)
        skipped = sum((summary.skipped or {}).values())
        if args.strict and skipped:
            print(f"error: {skipped} file(s) skipped (--strict)", file=sys.stderr)
            return 1
        return 0

    return run_guarded(
        parser, body, interrupted="interrupted: committed batches are kept; run again to finish"
    )


def _watch_reporter(report: Callable[[IngestSummary], None]) -> Callable[[IngestSummary], None]:
    """Report the first pass and then only passes that changed something."""
    first = [True]

    def on_pass(summary: IngestSummary) -> None:
        busy = summary.new or summary.updated or summary.moved or summary.pruned
        if first[0] or busy:
            report(summary)
        first[0] = False

    return on_pass


if __name__ == "__main__":
    sys.exit(main())
