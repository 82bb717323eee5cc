"""``clipdb search`` (``python -m clipdb.search``): parse, search, print, exit code."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from clipdb.cli import (
    add_encoder_arguments,
    command_parser,
    positive_int,
    result_count,
    run_command,
    similarity_value,
)
from clipdb.config import (
    DEFAULT_EF_SEARCH,
    DEFAULT_TOP_K,
    MAX_RESULTS,
    Settings,
    add_common_arguments,
    add_read_url_argument,
)
from clipdb.db import Database, open_database
from clipdb.db.queries import Hit, indexed_path
from clipdb.db.text import MATCHES
from clipdb.errors import ClipdbError, UsageError
from clipdb.filters import SORTS, Filters, Near, offset_value, within_value
from clipdb.query import Connect, EncoderOptions, Query, Searcher, Weights
from clipdb.search import BATCH_RESULTS_FILE, SearchOptions, image_files
from clipdb.search.output import (
    format_json,
    format_paths,
    format_table,
    null_separated_paths,
)
from clipdb.terminal import printable

if TYPE_CHECKING:
    import psycopg

EXAMPLES = """\
query = normalise(Wi*image + Wt*text - Wm*mean(minus)), each part a unit CLIP embedding
(--weights Wi,Wt[,Wm], default 1,1,0.5); similarity = cosine similarity in [-1, 1].

examples:
  clipdb search photo.jpg                   # 5 most similar indexed images
  clipdb search --text "a red car" -k 10    # by text (CLIP text tower)
  clipdb search --like ~/pics/cat.jpg       # an indexed image: SQL only, no model
  clipdb search photo.jpg --text "at night" --weights 0.7,0.3
  clipdb search --text "a beach" --minus "people" --json
  clipdb search --text 'invoice "KX 5172"' --match text   # words in images and names
  clipdb search photo.jpg --under ~/pics/2024 --threshold 0.8 --paths
  clipdb search photo.jpg --plot result.png
  clipdb search --batch queries/ --out results/
"""


def build_parser() -> argparse.ArgumentParser:
    parser = command_parser(
        "search", "Find indexed images similar to an image, a text, or an indexed image.", EXAMPLES
    )
    _add_query_arguments(parser)
    _add_result_arguments(parser)
    _add_output_arguments(parser)
    parser.add_argument("--batch", metavar="DIR", help="use every image in DIR as a query")
    parser.add_argument("--out", metavar="DIR", help="with --batch: where results go")
    add_encoder_arguments(parser)
    parser.add_argument("--no-progress", action="store_true", help="no progress bar for --batch")
    add_common_arguments(parser)
    add_read_url_argument(parser)
    return parser


def _add_query_arguments(parser: argparse.ArgumentParser) -> None:
    """What is searched for: an image, a text, an indexed image, and how they mix."""
    parser.add_argument("query_image", nargs="?", metavar="QUERY_IMAGE", help="image file")
    parser.add_argument("--text", metavar="TEXT", help="search by text (or mix it with an image)")
    parser.add_argument(
        "--like",
        metavar="PATH_OR_ID",
        help="an already indexed image (path or row id): its stored embedding is the query, "
        "no model is loaded; without --model, the model it is indexed under",
    )
    parser.add_argument(
        "--minus",
        metavar="TEXT",
        action="append",
        default=[],
        help="push results away from this concept (repeatable)",
    )
    parser.add_argument(
        "--weights",
        metavar="WI,WT[,WM]",
        help="weights of image, text and minus parts (default 1,1,0.5)",
    )
    parser.add_argument(
        "--match",
        choices=MATCHES,
        help="how --text matches: clip (its CLIP embedding), text (words in the images, "
        'their keywords and file names: whole words, "phrases", part-strings; no model), '
        "hybrid (both, fused); default hybrid when the images' words are indexed, else clip",
    )


def _add_result_arguments(parser: argparse.ArgumentParser) -> None:
    """Which results: how many, how similar, where, which filters, how hard to look."""
    parser.add_argument(
        "-k",
        "--top",
        type=result_count,
        default=DEFAULT_TOP_K,
        metavar="K",
        help=f"number of results, 1 to {MAX_RESULTS} (default {DEFAULT_TOP_K})",
    )
    parser.add_argument(
        "--threshold",
        type=similarity_value,
        metavar="SIM",
        help="only results with at least this cosine similarity (default: off)",
    )
    parser.add_argument("--under", metavar="DIR", help="only images under this folder")
    add_filter_arguments(parser)
    parser.add_argument(
        "--hide-duplicates",
        action="store_true",
        help="show each exact or near duplicate group once, as its kept image (see dupes)",
    )
    parser.add_argument(
        "--ef-search",
        type=positive_int,
        default=DEFAULT_EF_SEARCH,
        metavar="N",
        help=f"HNSW candidates per search: higher = better recall, slower "
        f"(default {DEFAULT_EF_SEARCH}; raised to K when K is larger)",
    )


def _add_output_arguments(parser: argparse.ArgumentParser) -> None:
    """How results are shown: a table, JSON, bare paths or a picture grid."""
    output = parser.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="print results as a JSON list")
    output.add_argument(
        "--paths",
        action="store_true",
        help="print bare paths, one a line (control characters escaped)",
    )
    parser.add_argument(
        "-0",
        "--null",
        action="store_true",
        help="with --paths: exact path bytes, each ended by NUL (for xargs -0)",
    )
    parser.add_argument("--plot", metavar="PNG", help="save a grid of query and results")


def check_arguments(args: argparse.Namespace) -> None:
    """Flag combinations argparse cannot express (UsageError: exit 2)."""
    search_filters(args)  # bad dates or places are refused before the database is opened
    if args.batch is not None:
        clash = [
            flag
            for flag, value in (
                ("QUERY_IMAGE", args.query_image),
                ("--like", args.like),
                ("--text", args.text),
                ("--minus", args.minus),
                ("--plot", args.plot),
                ("--paths", args.paths),
                ("--match", args.match),
            )
            if value
        ]
        if clash:
            raise UsageError(f"--batch cannot be combined with {', '.join(clash)}")
        if args.out is None:
            raise UsageError("--batch needs --out RESULTS_DIR")
        return
    if args.out is not None:
        raise UsageError("--out goes with --batch")
    if args.query_image is not None and args.like is not None:
        raise UsageError("give a QUERY_IMAGE or --like, not both")
    if args.query_image is None and args.like is None and args.text is None:
        raise UsageError("give a QUERY_IMAGE, --text, --like or --batch")
    if args.query_image is not None:
        check_query_image(args.query_image)
    if args.null and not args.paths:
        raise UsageError("--null goes with --paths")
    if args.text is not None and not args.text.strip():
        raise UsageError("--text is empty; give words to search for")
    if any(not text.strip() for text in args.minus):
        raise UsageError("--minus is empty; give words to push away from")
    if args.weights is not None:
        Weights.parse(args.weights)


def check_query_image(query: str) -> None:
    """A QUERY_IMAGE that is not there is a usage error; one that reads like words (spaces,
    no image extension) was most likely meant for --text, so the line says so."""
    import shlex

    from clipdb.files import is_image_name

    if os.path.lexists(query):
        return
    shown = printable(query)
    if " " in query or not is_image_name(query):
        raise UsageError(
            f"no image file {shown!r}; to search by text use --text {shlex.quote(shown)}"
        )
    raise UsageError(f"query image {shown} does not exist")


def add_filter_arguments(parser: argparse.ArgumentParser) -> None:
    """Photo-metadata filters, relative cutoff, order and paging (clipdb.filters)."""
    group = parser.add_argument_group("metadata filters, order and paging")
    group.add_argument("--after", metavar="DATE", help="taken at or after (ISO date/datetime)")
    group.add_argument("--before", metavar="DATE", help="taken before (ISO date/datetime)")
    group.add_argument(
        "--camera", metavar="TEXT", help="camera make/model contains TEXT (any case)"
    )
    group.add_argument("--near", metavar="LAT,LON,KM", help="taken within KM km of LAT,LON")
    group.add_argument(
        "--within",
        type=within_value,
        metavar="D",
        help="keep hits whose similarity is at least the best hit's minus D",
    )
    group.add_argument(
        "--sort",
        choices=SORTS,
        default="relevance",
        help="relevance picks the top K, then date/-date orders them by date, undated last",
    )
    group.add_argument(
        "--offset", type=offset_value, default=0, metavar="N", help="skip the first N results"
    )


def search_filters(args: argparse.Namespace) -> Filters:
    return Filters(
        after=args.after,
        before=args.before,
        camera=args.camera,
        near=Near.parse(args.near) if args.near is not None else None,
        within=args.within,
        sort=args.sort,
        offset=args.offset,
    )


def search_options(args: argparse.Namespace) -> SearchOptions:
    return SearchOptions(
        args.top,
        args.ef_search,
        args.under,
        args.threshold,
        filters=search_filters(args),
        hide_duplicates=args.hide_duplicates,
    )


@contextmanager
def one_connection(database: Database) -> Iterator[Connect]:
    """A :data:`Connect` that lends the same autocommit connection every time (closed at the
    end): the model choice, the stored embedding and the top-k of one command then share one
    connection, where each used to open its own (a server process and the pgvector type
    lookups each, a good part of a ``--like`` search's own time)."""
    with database.connect(autocommit=True) as conn:

        @contextmanager
        def lend() -> Iterator[psycopg.Connection[Any]]:
            yield conn

        yield lend


def searcher(args: argparse.Namespace, settings: Settings, connect: Connect) -> Searcher:
    return Searcher(settings, EncoderOptions.from_args(args, settings), connect)


def run_query(args: argparse.Namespace, settings: Settings, connect: Connect) -> list[Hit]:
    """One query from the parsed flags, through the one query pipeline (clipdb.query)."""
    query = Query(
        image=args.query_image,
        text=args.text,
        like=args.like,
        minus=tuple(args.minus),
        weights=Weights.parse(args.weights) if args.weights else Weights(),
        match=args.match,
    )
    query.check()  # a missing or broken image fails before the database is asked
    pipeline = searcher(args, settings, connect)
    model = pipeline.model(args.like)
    hits = pipeline.search(query, search_options(args), model)
    if args.plot:
        from clipdb.viz import plot_results

        query_path = args.query_image
        if args.like:
            with connect() as conn:
                query_path = indexed_path(conn, model, args.like)
        saved = plot_results(hits, args.plot, query_image=query_path, query_text=args.text)
        print(f"saved plot to {printable(str(saved))}", file=sys.stderr)
    return hits


def batch(args: argparse.Namespace, settings: Settings, connect: Connect) -> int:
    """``--batch DIR --out DIR``: a JSON of all results and one grid per query."""
    import json

    from tqdm import tqdm

    queries = image_files(args.batch)
    if not queries:
        raise ClipdbError(f"no images in {args.batch}")
    out = Path(args.out)
    skipped = 0
    pipeline = searcher(args, settings, connect)
    model = pipeline.model()
    pipeline.encoder_for(model)  # loaded (or refused) before the progress bar shows
    progress = tqdm(
        total=len(queries),
        desc="searching",
        unit="query",
        file=sys.stderr,
        disable=args.no_progress,
    )

    def skip(path: Path, reason: str) -> None:
        nonlocal skipped
        skipped += 1
        progress.write(f"skipping {printable(str(path))}: {reason}", file=sys.stderr)

    with progress:
        results = pipeline.batch(
            queries, search_options(args), model, out=out, on_skip=skip, on_done=progress.update
        )
    if args.json:
        print(json.dumps(results, indent=2, ensure_ascii=False))
    else:
        print(
            f"searched {len(results)} queries ({skipped} skipped); "
            f"results in {out / BATCH_RESULTS_FILE}"
        )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    def body(args: argparse.Namespace) -> int:
        check_arguments(args)
        settings = Settings.from_args(args)
        database = open_database(settings, reads=True)
        with one_connection(database) as connect:
            if args.batch is not None:
                return batch(args, settings, connect)
            hits = run_query(args, settings, connect)
        if args.json:
            print(format_json(hits))
        elif args.null:
            sys.stdout.flush()
            sys.stdout.buffer.write(null_separated_paths(hits))
            sys.stdout.buffer.flush()
        elif hits:
            print(format_paths(hits) if args.paths else format_table(hits))
        if not hits:
            print("no results", file=sys.stderr)
        return 0

    return run_command(build_parser(), argv, body)


if __name__ == "__main__":
    sys.exit(main())
