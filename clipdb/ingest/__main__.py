"""``clipdb ingest`` (``python -m clipdb.ingest``): parse, ingest, report, exit code."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence

from clipdb.cli import (
    add_encoder_arguments,
    command_parser,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
    run_command,
)
from clipdb.config import Settings, add_common_arguments, add_read_url_argument
from clipdb.errors import UsageError
from clipdb.ingest import ENGINES, IngestOptions, IngestSummary, default_workers, ingest, watch
from clipdb.ingest.options import DECODE_MODES
from clipdb.ingest.text import OCR_MODES
from clipdb.ocr import DEFAULT_ENGINE as DEFAULT_OCR_ENGINE
from clipdb.ocr import ENGINES as OCR_ENGINES
from clipdb.terminal import printable

EXAMPLES = """\
examples:
  clipdb ingest ~/Pictures                      # index a directory tree
  clipdb ingest photos/ --prune                 # ... and forget deleted files
  clipdb ingest --all --model ViT-B-32-SigLIP2-256  # every known root with another model
  clipdb ingest photos/ --watch --prune         # keep indexing until Ctrl-C
  clipdb ingest a.jpg b.png --json              # summary as one JSON object
  clipdb ingest photos/ --model ViT-B/16 --exclude '*.thumb.jpg'
  clipdb ingest tests/ --model ViT-B-32 --pretrained none   # offline smoke run
"""


def build_parser() -> argparse.ArgumentParser:
    parser = command_parser(
        "ingest",
        "Encode image files with CLIP and store their embeddings in PostgreSQL. "
        "Unchanged files are skipped, moved files re-pointed, changed files re-encoded.",
        EXAMPLES,
    )
    parser.add_argument("paths", nargs="*", metavar="PATH", help="image files or directories")
    parser.add_argument(
        "--all",
        action="store_true",
        help="every root the database knows (e.g. with a new --model; never prunes)",
    )
    add_common_arguments(parser)
    add_encoder_arguments(parser)
    _add_batch_arguments(parser)
    _add_file_arguments(parser)
    _add_output_arguments(parser)
    _add_engine_arguments(parser)
    _add_finish_arguments(parser)
    _add_text_arguments(parser)
    return parser


def _add_text_arguments(parser: argparse.ArgumentParser) -> None:
    """The text stage: names and keywords always, OCR when asked (clipdb.ingest.text)."""
    parser.add_argument(
        "--ocr",
        choices=OCR_MODES,
        default="auto",
        help="read the text in images after their CLIP rows are committed (searchable with "
        "search --text): on; off; only (no scan or encoding: the text of rows already "
        "indexed); auto (default): on once this database has OCR text (OCR costs ~1 s an "
        "image on 2 cores). File names and keywords are indexed in every mode but off",
    )
    parser.add_argument(
        "--ocr-engine",
        choices=OCR_ENGINES,
        default=DEFAULT_OCR_ENGINE,
        help="rapid: PP-OCRv4 (default, the more accurate); tesseract: the tesseract command",
    )


def _add_batch_arguments(parser: argparse.ArgumentParser) -> None:
    """How much work at once: images per batch, decode processes."""
    parser.add_argument(
        "--batch-size", type=positive_int, default=64, metavar="N", help="images per batch (64)"
    )
    parser.add_argument(
        "--workers",
        type=non_negative_int,
        default=None,
        metavar="N",
        help=f"decode processes (default {default_workers()} here: one per core, at most 8; "
        "0 = none)",
    )


def _add_file_arguments(parser: argparse.ArgumentParser) -> None:
    """Which files: what is skipped, whether gone ones are forgotten, whether to keep watching."""
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
        "--prune-missing-roots",
        action="store_true",
        help="--prune even under a PATH that yields no files while rows exist under it "
        "(otherwise taken for an unmounted or offline volume and left alone)",
    )
    parser.add_argument(
        "--watch", action="store_true", help="keep polling PATH for changes until Ctrl-C"
    )
    parser.add_argument(
        "--interval",
        type=positive_float,
        default=1.0,
        metavar="SECONDS",
        help="--watch poll interval in seconds (1.0)",
    )
    parser.add_argument(
        "--max-pixels",
        type=positive_int,
        default=None,
        metavar="N",
        help="skip images with more pixels (default: Pillow's decompression-bomb limit)",
    )


def _add_output_arguments(parser: argparse.ArgumentParser) -> None:
    """What the summary says and how."""
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.add_argument(
        "--verbose",
        action="store_true",
        help="also list files skipped by an earlier run and unchanged since (default: one "
        "line counts them)",
    )


def _add_engine_arguments(parser: argparse.ArgumentParser) -> None:
    """Where decoding and encoding run: here or on a Ray cluster, JPEGs on the CPU or device."""
    parser.add_argument(
        "--engine",
        choices=ENGINES,
        default="local",
        help="local: decode + encode here (default); ray: on a Ray cluster (extra [ray]), "
        "rows still written from here",
    )
    parser.add_argument(
        "--ray-address",
        default=None,
        metavar="ADDR",
        help="--engine ray: the cluster to join (host:port or auto; default: a local one)",
    )
    parser.add_argument(
        "--gpus-per-worker",
        type=non_negative_float,
        default=0.0,
        metavar="N",
        help="--engine ray: one encoder per N GPUs (default 0: one per CPU slot)",
    )
    parser.add_argument(
        "--decode",
        choices=DECODE_MODES,
        default="auto",
        help="where JPEGs are decoded: device (batched on the encoder's device, nvJPEG on "
        "CUDA), cpu (the decode workers) or auto (device when encoding on CUDA; default)",
    )


def _add_finish_arguments(parser: argparse.ArgumentParser) -> None:
    """How the run ends: which replicas it waits for, whom it may end, when it fails."""
    parser.add_argument(
        "--wait-replicas",
        action="store_true",
        help="return only when every streaming standby (and --read-database-url's server) "
        "has replayed this run's commits, so searches there see them",
    )
    add_read_url_argument(parser)
    parser.add_argument(
        "--terminate-blockers",
        action="store_true",
        help="end sessions of any role that hold up an index build for longer than "
        "CLIPDB_LOCK_WAIT seconds (default 30; clipdb_reader sessions are ended without it)",
    )
    parser.add_argument(
        "--strict",
        action="store_true",
        help="exit 1 if any file was skipped (the good files are still indexed and committed)",
    )


def ingest_options(args: argparse.Namespace, settings: Settings) -> IngestOptions:
    """The IngestOptions that parsed ``clipdb ingest`` flags ask for."""
    return IngestOptions(
        model=settings.model,
        pretrained=settings.pretrained,
        device=args.device,
        precision=args.precision,
        backend=args.backend,
        batch_size=args.batch_size,
        workers=args.workers,
        exclude=tuple(args.exclude),
        prune=args.prune or args.prune_missing_roots,
        prune_missing_roots=args.prune_missing_roots,
        max_pixels=args.max_pixels,
        engine=args.engine,
        ray_address=args.ray_address,
        gpus_per_worker=args.gpus_per_worker,
        decode=args.decode,
        terminate_blockers=args.terminate_blockers,
        verbose=args.verbose,
        ocr=args.ocr,
        ocr_engine=args.ocr_engine,
    )


def main(argv: Sequence[str] | None = None) -> int:
    def body(args: argparse.Namespace) -> int:
        if args.strict and args.watch:
            raise UsageError("--strict cannot be combined with --watch")
        if args.wait_replicas and args.watch:
            raise UsageError("--wait-replicas cannot be combined with --watch")
        if bool(args.paths) == bool(args.all):
            raise UsageError("give PATH... or --all (every root the database knows), not both")
        if args.all and (args.watch or args.prune or args.prune_missing_roots):
            raise UsageError("--all never prunes nor watches; run those on a PATH")
        settings = Settings.from_args(args)
        if not args.all:  # --all means another model; the stored default is what searches use
            from clipdb.query import settings_with_stored_default

            settings = settings_with_stored_default(settings)
        options = ingest_options(args, settings)

        def report(summary: IngestSummary) -> None:
            print(json.dumps(summary.to_dict()) if args.json else summary.format(), flush=True)
            if summary.known_bad and not args.verbose:
                files = "file" if summary.known_bad == 1 else "files"
                print(
                    f"{summary.known_bad} known bad {files}, unchanged; --verbose lists them",
                    file=sys.stderr,
                    flush=True,
                )

        if args.all:
            from clipdb.ingest.all_roots import ingest_all

            return 1 if ingest_all(options, settings, report) else 0
        if args.watch:
            roots = ", ".join(printable(os.path.abspath(p)) for p in args.paths)
            announce = (
                f"watching {roots} for changes every {args.interval:g} s"
                f"{' (pruning deleted files)' if args.prune else ''}; press Ctrl-C to stop"
            )
            try:
                watch(
                    args.paths,
                    options,
                    settings=settings,
                    interval=args.interval,
                    on_pass=_watch_reporter(report, announce),
                )
            except KeyboardInterrupt:
                print("stopped watching", file=sys.stderr)
            return 0
        summary = ingest(args.paths, options, settings=settings)
        report(summary)
        if args.wait_replicas:
            from clipdb.db import open_database
            from clipdb.db.replica import wait_for_replicas

            count = wait_for_replicas(open_database(settings), settings.read_database_url)
            print(f"{count} replica(s) caught up", file=sys.stderr)
        skipped = sum(summary.skipped.values())
        if args.strict and skipped:
            print(f"error: {skipped} file(s) skipped (--strict)", file=sys.stderr)
            return 1
        return 0

    return run_command(
        build_parser(),
        argv,
        body,
        interrupted="interrupted: committed batches are kept; run again to finish",
    )


def _watch_reporter(
    report: Callable[[IngestSummary], None], announce: str
) -> Callable[[IngestSummary], None]:
    """Report the first pass (then say what is watched and how to stop), and after that only
    passes that changed something."""
    first = [True]

    def on_pass(summary: IngestSummary) -> None:
        busy = summary.new or summary.updated or summary.moved or summary.pruned
        if first[0] or busy:
            report(summary)
        if first[0]:
            print(announce, file=sys.stderr, flush=True)
        first[0] = False

    return on_pass


if __name__ == "__main__":
    sys.exit(main())
