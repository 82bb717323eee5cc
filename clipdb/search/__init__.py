"""Search by image, text or an already indexed image (``clipdb search`` is its CLI).

Which model's rows a search means (:func:`choose_model`), the top-k search on them
(:func:`search`, with ``--hide-duplicates``) and batches of image queries. Queries become
vectors in :mod:`clipdb.query`, the pipeline every surface calls; ``clipdb.encoders`` is
imported lazily, only when something must be encoded.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import psycopg

from clipdb.config import DEFAULT_EF_SEARCH, DEFAULT_TOP_K, MAX_RESULTS, Settings
from clipdb.db.queries import Hit, arrange, check_result_count, search_vector
from clipdb.db.registry import Model, image_counts, models_indexing, models_with_rows
from clipdb.errors import ClipdbError, Option
from clipdb.filters import NO_FILTERS, Filters
from clipdb.models import quick_model_spec

if TYPE_CHECKING:
    from PIL import Image

    from clipdb.encoders import Encoder

BATCH_RESULTS_FILE = "batch_search_results.json"


# --- reading queries ----------------------------------------------------------------------------


def open_image(path: str | os.PathLike[str], encoder: Encoder | None = None) -> Image.Image:
    """A query image decoded exactly as ingest decodes it (so an indexed file finds itself).

    With ``encoder``, JPEGs use ingest's draft scale for that model; without, full size (to
    check a file early, before a model is loaded). Missing/unreadable files: one-line errors.
    """
    from clipdb import decode

    file = Path(path)
    if not file.exists():
        raise ClipdbError(f"query image {path} does not exist")
    if file.is_dir():
        raise ClipdbError(f"query image {path} is a directory; use --batch DIR --out DIR")
    draft = max(encoder.image_size) * decode.DRAFT_MARGIN if encoder is not None else None
    try:
        image, _, _ = decode.open_image(os.fspath(file), draft_size=draft)
    except decode.ImageError as err:
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


# --- THE model-choice policy ---------------------------------------------------------------------


def choose_model(
    conn: psycopg.Connection[Any],
    settings: Settings,
    *,
    like: str | None = None,
) -> Model:
    """Which model's rows a search means: the one policy for the CLI, ``ClipDB`` and the server.

    1. ``like`` (an indexed image) without an explicit ``--model``
       (``settings.model_explicit``): the model that image is indexed under, when that is
       exactly one (narrowed by ``--pretrained`` when given).
    2. No model named (neither ``--model`` nor ``--pretrained``): the database's default model
       (``clipdb models default``, :func:`stored_default`) when it has rows.
    3. ``--pretrained`` given: exactly those weights of ``settings.model``.
    4. ``--pretrained`` omitted: the only weights of ``settings.model`` that have rows; when
       several have rows, the architecture's standard weights if they are among them.

    Anything else is a one-line error naming the indexed models. No count over the table is
    made unless an error has to list them; open_clip is imported only to learn a standard tag
    that clipdb.models does not know, and only when several weights are indexed.
    """
    wanted = _pretrained_identity(settings.pretrained)
    with_rows = models_with_rows(conn)
    if like is not None and not settings.model_explicit:
        owner_ids = models_indexing(conn, like)
        owners = [
            m for m in with_rows if m.model_id in owner_ids and wanted in (None, m.pretrained)
        ]
        if len(owners) == 1:
            return owners[0]
        if not owners and with_rows:
            raise ClipdbError(f"{like} is not indexed")
    if not settings.model_explicit and wanted is None:
        stored = stored_default(conn)
        if stored is not None and stored in with_rows:
            return stored
    candidates = [
        m for m in with_rows if m.architecture == settings.model and wanted in (None, m.pretrained)
    ]
    if len(candidates) == 1:
        return candidates[0]
    if len(candidates) > 1:
        standard = _standard_identity(settings.model)
        for model in candidates:
            if model.pretrained == standard:
                return model
    raise _no_model_error(conn, settings.model, wanted, several=len(candidates) > 1)


def stored_default(conn: psycopg.Connection[Any]) -> Model | None:
    """The database's default model; None when none is set, or on a server whose schema
    predates it (a standby behind its primary)."""
    from clipdb.db.model_admin import default_model, has_default_table

    return default_model(conn) if has_default_table(conn) else None


def _pretrained_identity(pretrained: str | None) -> str | None:
    """--pretrained as stored, without importing torch (a checkpoint file is hashed)."""
    if pretrained is None:
        return None
    spec = quick_model_spec("", pretrained)
    return spec.pretrained if spec is not None else pretrained


def _standard_identity(architecture: str) -> str | None:
    spec = quick_model_spec(architecture, None)
    if spec is not None:
        return spec.pretrained
    from clipdb.encoders import resolve_model_spec

    try:
        return resolve_model_spec(architecture, None).pretrained
    except ClipdbError:
        return None


def _no_model_error(
    conn: psycopg.Connection[Any], architecture: str, pretrained: str | None, *, several: bool
) -> ClipdbError:
    counts = image_counts(conn)
    available = ", ".join(f"{m} [{n} images]" for m, n in counts)
    if several:
        return ClipdbError(
            f"several weights of {architecture} are indexed ({available}); pass ",
            Option("pretrained"),
        )
    if not available:
        return ClipdbError("the database has no indexed images yet; run clipdb ingest")
    wanted = architecture if pretrained is None else f"{architecture} ({pretrained})"
    return ClipdbError(f"no images indexed with model {wanted}; indexed models: {available}")


# --- searching ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class SearchOptions:
    """How many results, and which rows may be among them."""

    k: int = DEFAULT_TOP_K
    ef_search: int = DEFAULT_EF_SEARCH
    under: str | None = None
    threshold: float | None = None
    filters: Filters = NO_FILTERS  # date/camera/place, --within, --sort, --offset
    hide_duplicates: bool = False  # exact/near duplicates collapse to their kept image

    def __post_init__(self) -> None:
        check_result_count(self.k)  # the same limit in the CLI, Python, HTTP and SQL


def search(
    conn: psycopg.Connection[Any], model: Model, query: np.ndarray, options: SearchOptions
) -> list[Hit]:
    """Top-k images of ``model`` by cosine similarity to ``query`` (best first)."""
    if options.hide_duplicates:
        return _search_collapsed(conn, model, query, options)
    # An HNSW scan returns at most ef_search rows, so it must be at least k.
    return search_vector(
        conn,
        model,
        query,
        options.k,
        ef_search=max(options.ef_search, options.k),
        under=options.under,
        threshold=options.threshold,
        filters=options.filters,
    )


def _search_collapsed(
    conn: psycopg.Connection[Any], model: Model, query: np.ndarray, options: SearchOptions
) -> list[Hit]:
    """``--hide-duplicates``: collapse first, then --within, --sort and --offset on what is
    left, so a page never counts a hidden copy and date order applies to kept images."""
    from clipdb.dupes.collapse import collapse_hits

    wanted = options.k + options.filters.offset
    # Hidden duplicates leave gaps: more candidates are fetched, then collapsed.
    fetch = min(MAX_RESULTS, 3 * wanted)
    rows_only = replace(options.filters, within=None, sort="relevance", offset=0)
    hits = search_vector(
        conn,
        model,
        query,
        fetch,
        ef_search=max(options.ef_search, fetch),
        under=options.under,
        threshold=options.threshold,
        filters=rows_only,
    )
    # With filters, a group's kept image is chosen among the hits (which passed them), never
    # one outside --under or the date range.
    narrowed = options.under is not None or options.threshold is not None or rows_only.narrows
    hits = collapse_hits(conn, model, hits, query, wanted, among_hits=narrowed)
    return arrange(hits, options.k, options.filters)


@dataclass(frozen=True)
class BatchItem:
    """One query of a batch: its results, or why it was skipped."""

    query_path: Path
    hits: list[Hit] | None
    error: str | None = None


def batch_search(
    conn: psycopg.Connection[Any],
    model: Model,
    encoder: Encoder,
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


def batch_plot_name(index: int, query_path: Path) -> str:
    return f"batch_search_result_{index:04d}_{query_path.stem}.png"


def run_batch(
    conn: psycopg.Connection[Any],
    model: Model,
    encoder: Encoder,
    query_paths: Sequence[Path],
    options: SearchOptions,
    *,
    out: Path | None = None,
    on_skip: Callable[[Path, str], None] | None = None,
    on_done: Callable[[], None] | None = None,
) -> dict[str, list[dict[str, Any]]]:
    """Search with every image: ``{query path: results}``; unreadable queries go to
    ``on_skip``. With ``out``: one grid PNG per query and ``batch_search_results.json`` there."""
    from clipdb.viz import plot_results

    results: dict[str, list[dict[str, Any]]] = {}
    if out is not None:
        try:  # the results folder itself may be new; a missing parent is a mistyped path
            out.mkdir(exist_ok=True)
        except OSError as err:
            raise ClipdbError(f"cannot create {out}: {err.strerror or err}") from None
    for index, item in enumerate(batch_search(conn, model, encoder, query_paths, options), 1):
        if on_done is not None:
            on_done()
        if item.hits is None:
            if on_skip is not None:
                on_skip(item.query_path, item.error or "unreadable")
            continue
        results[str(item.query_path.resolve())] = [hit.to_dict() for hit in item.hits]
        if out is not None:
            plot_name = batch_plot_name(index, item.query_path)
            plot_results(item.hits, out / plot_name, query_image=item.query_path)
    if out is not None:
        text = json.dumps(results, indent=2, ensure_ascii=False) + "\n"
        (out / BATCH_RESULTS_FILE).write_text(text)
    return results
