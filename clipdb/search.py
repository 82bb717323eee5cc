"""Search by image, text or an already indexed image, and ``python -m clipdb.search``.

A query becomes one unit vector, then a top-k SQL query on the chosen model's rows. An indexed
image (``--like``) needs no model at all: its stored embedding is the query, so that path never
imports torch (``clipdb.encoder`` is imported lazily, only when something must be encoded).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import psycopg

from clipdb.config import DEFAULT_EF_SEARCH, DEFAULT_TOP_K, Settings, add_common_arguments
from clipdb.db import (
    Database,
    open_database,
)
from clipdb.errors import ClipdbError, UsageError
from clipdb.queries import Hit, Model, find_model, models_with_rows, search_vector

if TYPE_CHECKING:
    from PIL import Image

    from clipdb.encoder import ClipEncoder

BATCH_RESULTS_FILE = "batch_search_results.json"
DEFAULT_WEIGHTS = (1.0, 1.0, 0.5)  # image, text, minus


@dataclass(frozen=True)
class Weights:
    """How much each part of a combined query counts (only the ratios matter)."""

    image: float = DEFAULT_WEIGHTS[0]
    text: float = DEFAULT_WEIGHTS[1]
    minus: float = DEFAULT_WEIGHTS[2]

    @classmethod
    def parse(cls, value: str) -> Weights:
        """``"IMAGE,TEXT"`` or ``"IMAGE,TEXT,MINUS"``, non-negative numbers."""
        try:
            numbers = [float(part) for part in value.split(",")]
        except ValueError:
            raise UsageError(f"--weights {value!r}: expected numbers like 0.7,0.3") from None
        if len(numbers) not in (2, 3) or any(not np.isfinite(n) or n < 0 for n in numbers):
            raise UsageError(
                f"--weights {value!r}: expected two or three non-negative numbers "
                "(IMAGE,TEXT[,MINUS])"
            )
        return cls(*numbers)


def normalise(vector: np.ndarray) -> np.ndarray:
    vector = np.asarray(vector, dtype=np.float32).reshape(-1)
    norm = float(np.linalg.norm(vector))
    if norm < 1e-6:
        raise ClipdbError("the combined query is (almost) zero; change --weights or --minus")
    return (vector / norm).astype(np.float32)


def combine_query(
    image: np.ndarray | None = None,
    text: np.ndarray | None = None,
    minus: Sequence[np.ndarray] = (),
    weights: Weights = Weights(),
) -> np.ndarray:
    """``normalise(Wi*image + Wt*text - Wm*mean(minus))``, each part a unit vector first."""
    parts = []
    if image is not None:
        parts.append(weights.image * normalise(image))
    if text is not None:
        parts.append(weights.text * normalise(text))
    if not parts:
        raise UsageError("a query needs an image, --like or --text")
    if minus:
        away = normalise(np.mean([normalise(m) for m in minus], axis=0))
        parts.append(-weights.minus * away)
    return normalise(np.sum(parts, axis=0))


# --- reading queries ----------------------------------------------------------------------------


def open_image(path: str | os.PathLike[str], encoder: ClipEncoder | None = None) -> Image.Image:
    """A query image decoded exactly as ingest decodes it (so an indexed file finds itself).

    With ``encoder``, JPEGs use ingest's draft scale for that model; without, full size (to
    check a file early, before a model is loaded). Missing/unreadable files: one-line errors.
    """
    from clipdb import files

    file = Path(path)
    if not file.exists():
        raise ClipdbError(f"query image {path} does not exist")
    if file.is_dir():
        raise ClipdbError(f"query image {path} is a directory; use --batch DIR --out DIR")
    draft = max(encoder.image_size) * files.DRAFT_MARGIN if encoder is not None else None
    try:
        image, _, _ = files.open_image(os.fspath(file), draft_size=draft)
    except files.ImageError as err:
        raise ClipdbError(f"cannot read image {path}: {err}") from None
    return image


def image_files(directory: str | os.PathLike[str]) -> list[Path]:
    """Image files under ``directory`` (recursive, hidden ones left out), sorted."""
    from clipdb import files

    root = Path(directory)
    if not root.is_dir():
        raise ClipdbError(f"{directory} is not a directory")
    return sorted(
        path
        for path in root.rglob("*")
        if files.is_image_name(path.name) and not path.name.startswith(".") and path.is_file()
    )


# --- opening the database -----------------------------------------------------------------------

# --- choosing the model's rows ------------------------------------------------------------------


def model_for_encoding(conn: psycopg.Connection[Any], settings: Settings) -> Model:
    """The rows an image/text query searches: exactly the model ingest would name.

    The database is asked first (pure SQL), so a model without rows fails fast with the list of
    models that have some, before open_clip is imported.
    """
    architecture = settings.model
    if not any(model.architecture == architecture for model, _ in models_with_rows(conn)):
        find_model(conn, architecture, settings.pretrained)  # raises, listing indexed models
    from clipdb.model_names import quick_model_spec

    spec = quick_model_spec(architecture, settings.pretrained)
    if spec is None:
        from clipdb.encoder import resolve_model_spec

        spec = resolve_model_spec(architecture, settings.pretrained)
    return find_model(conn, spec.architecture, spec.pretrained)


def _pretrained_identity(pretrained: str | None) -> str | None:
    """--pretrained as stored, without importing torch unless it names a checkpoint file."""
    if pretrained is None or pretrained.lower() == "none":
        return None if pretrained is None else "none"
    if Path(pretrained).expanduser().is_file():
        from clipdb.model_names import file_identity

        return file_identity(Path(pretrained).expanduser())
    return pretrained


def model_for_indexed(
    conn: psycopg.Connection[Any], settings: Settings, path_or_id: str, *, model_given: bool
) -> Model:
    """The rows a ``--like`` query searches.

    With ``--model`` (or CLIPDB_MODEL) given, that model. Otherwise the model the image is indexed
    under when that is exactly one; when it is indexed under several, the default model.
    """
    pretrained = _pretrained_identity(settings.pretrained)
    if model_given:
        return find_model(conn, settings.model, pretrained)
    row_id = int(path_or_id) if path_or_id.isdigit() else None
    rows = conn.execute(
        "SELECT DISTINCT model_id FROM clipdb.images WHERE path = %s OR id = %s",
        (os.path.abspath(path_or_id), row_id),
    ).fetchall()
    owner_ids = {row[0] for row in rows}
    owners = [
        m
        for m, _ in models_with_rows(conn)
        if m.model_id in owner_ids and pretrained in (None, m.pretrained)
    ]
    if len(owners) == 1:
        return owners[0]
    if not owners and models_with_rows(conn):
        raise ClipdbError(f"{path_or_id} is not indexed")
    return find_model(conn, settings.model, pretrained)


def indexed_hit_path(conn: psycopg.Connection[Any], model: Model, path_or_id: str) -> str | None:
    """The stored path of an indexed image (for plots of ``--like`` queries)."""
    absolute = os.path.abspath(path_or_id)
    row_id = int(path_or_id) if path_or_id.isdigit() else None
    row = conn.execute(
        "SELECT path FROM clipdb.images WHERE model_id = %s AND (id = %s OR path = %s) "
        "ORDER BY (id = %s) DESC LIMIT 1",
        (model.model_id, row_id, absolute, row_id),
    ).fetchone()
    return row[0] if row else None


# --- searching ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class SearchOptions:
    """How many results, and which rows may be among them."""

    k: int = DEFAULT_TOP_K
    ef_search: int = DEFAULT_EF_SEARCH
    under: str | None = None
    threshold: float | None = None


def search(
    conn: psycopg.Connection[Any], model: Model, query: np.ndarray, options: SearchOptions
) -> list[Hit]:
    """Top-k images of ``model`` by cosine similarity to ``query`` (best first)."""
    # An HNSW scan returns at most ef_search rows, so it must be at least k.
    return search_vector(
        conn,
        model,
        query,
        options.k,
        ef_search=max(options.ef_search, options.k),
        under=options.under,
        threshold=options.threshold,
    )


def load_model_encoder(model: Model, settings: Settings, device: str = "auto") -> ClipEncoder:
    """Load the encoder that made ``model``'s rows (a checkpoint file must be passed again)."""
    from clipdb.encoder import load_encoder

    pretrained = settings.pretrained if model.pretrained.startswith("file:") else model.pretrained
    if pretrained is None:
        raise ClipdbError(f"{model} was made from a checkpoint file; pass it with --pretrained")
    encoder = load_encoder(model.architecture, pretrained, device=device)
    if (encoder.architecture, encoder.pretrained) != (model.architecture, model.pretrained):
        raise ClipdbError(f"--pretrained {settings.pretrained} is not the checkpoint of {model}")
    return encoder


@dataclass(frozen=True)
class BatchItem:
    """One query of a batch: its results, or why it was skipped."""

    query_path: Path
    hits: list[Hit] | None
    error: str | None = None


def batch_search(
    conn: psycopg.Connection[Any],
    model: Model,
    encoder: ClipEncoder,
    query_paths: Iterable[Path],
    options: SearchOptions,
    *,
    chunk_size: int = 16,
) -> Iterator[BatchItem]:
    """Search every image in turn; unreadable ones come back with ``error`` set."""
    pending: list[tuple[Path, Image.Image]] = []

    def flush() -> Iterator[BatchItem]:
        if not pending:
            return
        vectors = encoder.encode_pil([image for _, image in pending])
        for (path, _), vector in zip(pending, vectors, strict=True):
            yield BatchItem(path, search(conn, model, vector, options))
        pending.clear()

    for path in query_paths:
        try:
            pending.append((path, open_image(path, encoder)))
        except ClipdbError as err:
            yield BatchItem(path, None, str(err))
            continue
        if len(pending) >= chunk_size:
            yield from flush()
    yield from flush()


# --- output -------------------------------------------------------------------------------------


def format_table(hits: Sequence[Hit]) -> str:
    """``rank  similarity  path`` with aligned columns."""
    lines = [f"{'rank':>4}  {'similarity':>10}  path"]
    lines += [f"{hit.rank:>4}  {hit.similarity:>10.4f}  {hit.image_path}" for hit in hits]
    return "\n".join(lines)


def result_dicts(hits: Sequence[Hit]) -> list[dict[str, Any]]:
    """The original tool's result format (plus ``image_id``)."""
    return [
        {
            "rank": hit.rank,
            "image_path": hit.image_path,
            "similarity": hit.similarity,
            "filename": hit.filename,
            "image_id": hit.image_id,
        }
        for hit in hits
    ]


def format_json(hits: Sequence[Hit]) -> str:
    return json.dumps(result_dicts(hits), indent=2, ensure_ascii=False)


def format_paths(hits: Sequence[Hit]) -> str:
    return "\n".join(hit.image_path for hit in hits)


def batch_plot_name(index: int, query_path: Path) -> str:
    return f"batch_search_result_{index:04d}_{query_path.stem}.png"


# --- CLI ----------------------------------------------------------------------------------------

EXAMPLES = """\
query = normalise(Wi*image + Wt*text - Wm*mean(minus)), each part a unit CLIP embedding
(--weights Wi,Wt[,Wm], default 1,1,0.5); similarity = cosine similarity in [-1, 1].

examples:
  python -m clipdb.search photo.jpg                   # 5 most similar indexed images
  python -m clipdb.search --text "a red car" -k 10    # by text (CLIP text tower)
  python -m clipdb.search --like ~/pics/cat.jpg       # an indexed image: SQL only, no model
  python -m clipdb.search photo.jpg --text "at night" --weights 0.7,0.3
  python -m clipdb.search --text "a beach" --minus "people" --json
  python -m clipdb.search photo.jpg --under ~/pics/2024 --threshold 0.8 --paths
  python -m clipdb.search photo.jpg --plot result.png
  python -m clipdb.search --batch queries/ --out results/
"""


def positive_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}")
    return number


def similarity_value(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {value!r}") from None
    if not -1.0 <= number <= 1.0:
        raise argparse.ArgumentTypeError(f"a cosine similarity is in [-1, 1], got {value!r}")
    return number


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m clipdb.search",
        description="Find indexed images similar to an image, a text, or an indexed image.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
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
        "-k",
        "--top",
        type=positive_int,
        default=DEFAULT_TOP_K,
        metavar="K",
        help=f"number of results (default {DEFAULT_TOP_K})",
    )
    parser.add_argument(
        "--threshold",
        type=similarity_value,
        metavar="SIM",
        help="only results with at least this cosine similarity (default: off)",
    )
    parser.add_argument("--under", metavar="DIR", help="only images under this folder")
    parser.add_argument(
        "--ef-search",
        type=positive_int,
        default=DEFAULT_EF_SEARCH,
        metavar="N",
        help=f"HNSW candidates per search: higher = better recall, slower "
        f"(default {DEFAULT_EF_SEARCH}; raised to K when K is larger)",
    )
    output = parser.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="print results as a JSON list")
    output.add_argument("--paths", action="store_true", help="print bare paths, one a line")
    parser.add_argument("--plot", metavar="PNG", help="save a grid of query and results")
    parser.add_argument("--batch", metavar="DIR", help="use every image in DIR as a query")
    parser.add_argument("--out", metavar="DIR", help="with --batch: where results go")
    parser.add_argument(
        "--device", default="auto", help="cpu, cuda, mps or auto (default auto) for encoding"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar for --batch")
    add_common_arguments(parser)
    return parser


def check_arguments(args: argparse.Namespace) -> None:
    """Flag combinations argparse cannot express (UsageError: exit 2)."""
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
    if args.weights is not None:
        Weights.parse(args.weights)


def run_query(args: argparse.Namespace, settings: Settings, database: Database) -> list[Hit]:
    """One query from the parsed flags: encode what must be encoded, then search."""
    weights = Weights.parse(args.weights) if args.weights else Weights()
    options = SearchOptions(args.top, args.ef_search, args.under, args.threshold)
    image = open_image(args.query_image) if args.query_image else None
    needs_encoder = image is not None or args.text is not None or bool(args.minus)
    with database.connect() as conn:
        if args.like is not None:
            model_given = bool(args.model or os.environ.get("CLIPDB_MODEL"))
            model = model_for_indexed(conn, settings, args.like, model_given=model_given)
            from clipdb.queries import indexed_embedding

            image_vector = indexed_embedding(conn, model, args.like)
        else:
            model = model_for_encoding(conn, settings)
            image_vector = None
        text_vector, minus_vectors = None, []
        if needs_encoder:
            encoder = load_model_encoder(model, settings, args.device)
            if image is not None:
                image = open_image(args.query_image, encoder)  # at ingest's decoding scale
                image_vector = encoder.encode_pil([image])[0]
            if args.text is not None:
                text_vector = encoder.encode_texts([args.text])[0]
            minus_vectors = list(encoder.encode_texts(args.minus)) if args.minus else []
        query = combine_query(image_vector, text_vector, minus_vectors, weights)
        hits = search(conn, model, query, options)
        if args.plot:
            from clipdb.viz import plot_results

            query_path = args.query_image or (
                indexed_hit_path(conn, model, args.like) if args.like else None
            )
            plot_results(hits, args.plot, query_image=query_path, query_text=args.text)
    return hits


def run_batch(args: argparse.Namespace, settings: Settings, database: Database) -> int:
    """``--batch DIR --out DIR``: a JSON of all results and one grid per query."""
    from tqdm import tqdm

    from clipdb.viz import plot_results

    options = SearchOptions(args.top, args.ef_search, args.under, args.threshold)
    queries = image_files(args.batch)
    if not queries:
        raise ClipdbError(f"no images in {args.batch}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, list[dict[str, Any]]] = {}
    skipped = 0
    with database.connect() as conn:
        model = model_for_encoding(conn, settings)
        encoder = load_model_encoder(model, settings, args.device)
        progress = tqdm(
            total=len(queries), desc="searching", unit="query", file=sys.stderr,
            disable=args.no_progress,
        )  # fmt: skip
        with progress:
            items = batch_search(conn, model, encoder, queries, options)
            for index, item in enumerate(items, start=1):
                progress.update(1)
                if item.hits is None:
                    skipped += 1
                    progress.write(f"skipping {item.query_path}: {item.error}", file=sys.stderr)
                    continue
                results[str(item.query_path.resolve())] = result_dicts(item.hits)
                plot_results(
                    item.hits, out / batch_plot_name(index, item.query_path),
                    query_image=item.query_path,
                )  # fmt: skip
    results_file = out / BATCH_RESULTS_FILE
    results_file.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
    if args.json:
        print(json.dumps(results, indent=2, ensure_ascii=False))
    else:
        print(f"searched {len(results)} queries ({skipped} skipped); results in {results_file}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    from clipdb.cli import run_guarded

    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # argparse: --help (0) or a usage error (2)
        return exit_.code if isinstance(exit_.code, int) else 2

    def body() -> int:
        check_arguments(args)
        settings = Settings.from_args(args)
        database = open_database(settings)
        if args.batch is not None:
            return run_batch(args, settings, database)
        hits = run_query(args, settings, database)
        if args.json:
            print(format_json(hits))
        elif hits:
            print(format_paths(hits) if args.paths else format_table(hits))
        if not hits:
            print("no results", file=sys.stderr)
        return 0

    return run_guarded(parser, body)


if __name__ == "__main__":
    sys.exit(main())
