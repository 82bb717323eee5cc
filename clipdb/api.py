"""``ClipDB``: the original ``CLIPImageRetrieval`` class's methods, backed by PostgreSQL.

Code written for the original tool switches by changing the import and the class name::

    from clipdb import ClipDB
    retriever = ClipDB(model_name="ViT-B/32")
    retriever.build_image_index("./images")          # persists in the database
    results = retriever.search_similar_images("query.jpg", top_k=5)
    retriever.print_search_results("query.jpg", results)

Differences: the index lives in the database (``build_image_index`` adds to it, so there is no
need to save and load between runs); ``save_index``/``load_index`` are a portable export/import
in ``.npz`` form (never pickle); the model is loaded on first use, not in ``__init__``. This
class is a thin facade: queries go through :mod:`clipdb.query` (the pipeline the CLI and the
server use too), indexing through :mod:`clipdb.ingest`, export through :mod:`clipdb.export`.
"""

from __future__ import annotations

import functools
import os
import sys
import warnings
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, cast

import numpy as np

from clipdb.config import DEFAULT_EF_SEARCH, Settings
from clipdb.db import Database, open_database
from clipdb.db.queries import Hit
from clipdb.db.registry import Model
from clipdb.errors import PYTHON, ClipdbError, UsageError
from clipdb.export import export_index, import_index
from clipdb.filters import Filters, Near
from clipdb.query import EncoderOptions, Query, Searcher
from clipdb.search import SearchOptions, image_files
from clipdb.search.output import format_table

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from clipdb.encoders import Encoder


_Callable = TypeVar("_Callable", bound=Callable[..., Any])
_T = TypeVar("_T")


def _python_names(function: _Callable) -> _Callable:
    """Errors raised through ``function`` name settings as ClipDB's arguments
    (``pretrained='none'``), not as the CLI's flags (``--pretrained none``)."""

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return function(*args, **kwargs)
        except ClipdbError as err:
            err.surface = PYTHON
            raise

    return cast(_Callable, wrapper)


def _speaks_python(cls: type[_T]) -> type[_T]:
    """:func:`_python_names` on ``__init__`` and every public method and property of ``cls``."""
    for name, member in list(vars(cls).items()):
        if name.startswith("_") and name != "__init__":
            continue
        if isinstance(member, property) and member.fget is not None:
            setattr(cls, name, property(_python_names(member.fget), member.fset, member.fdel))
        elif callable(member):
            setattr(cls, name, _python_names(member))
    return cls


@_speaks_python
class ClipDB:
    """Image retrieval with CLIP, the method names of the original ``CLIPImageRetrieval``."""

    def __init__(
        self,
        model_name: str | None = None,
        pretrained: str | None = None,
        database_url: str | None = None,
        device: str = "auto",
        precision: str = "auto",
        read_database_url: str | None = None,
        backend: str = "auto",
    ) -> None:
        self.settings = Settings.resolve(
            database_url=database_url,
            model=model_name,  # None: CLIPDB_MODEL, else the database's default, else ViT-B-32
            pretrained=pretrained,
            read_database_url=read_database_url,
        )
        self.device = device
        self.precision = precision
        self.backend = backend
        self._database: Database | None = None
        self._read_database: Database | None = None
        options = EncoderOptions.of(
            self.settings, device=device, precision=precision, backend=backend
        )
        self._searcher = Searcher(self.settings, options, lambda: self.read_database.connect())

    @property
    def database(self) -> Database:
        """The database, opened (and migrated) on first use."""
        if self._database is None:
            self._database = open_database(self.settings)
        return self._database

    @property
    def read_database(self) -> Database:
        """Where searches go: ``read_database_url`` (CLIPDB_READ_DATABASE_URL), else
        :attr:`database`. Writes (``build_image_index``, ``load_index``) stay on the primary."""
        if self.settings.read_database_url is None:
            return self.database
        if self._read_database is None:
            self._read_database = open_database(self.settings, reads=True)
        return self._read_database

    @property
    def encoder(self) -> Encoder:
        """The CLIP model named by the settings (what ``build_image_index`` encodes with):
        with no model named, the database's default model, as ``clipdb ingest``."""
        if self._searcher.encoder is None:
            from clipdb.query import settings_with_stored_default

            chosen = settings_with_stored_default(self.settings)
            self._searcher.options = replace(
                self._searcher.options, model=chosen.model, pretrained=chosen.pretrained
            )
        return self._searcher.encoder_for(None)

    def _searched_model(self) -> Model:
        """The rows searches use: :func:`clipdb.search.choose_model`, as the CLI and server."""
        return self._searcher.model()

    # --- indexing -------------------------------------------------------------------------

    def extract_image_features(self, image_path: str | os.PathLike[str]) -> np.ndarray:
        """The normalised embedding of one image file."""
        return self._searcher.vector(Query(image=image_path))

    def build_image_index(self, image_dir: str | os.PathLike[str], **options: Any) -> Any:
        """Index (or update) the images under ``image_dir``; returns ingest's summary.

        ``options`` are :class:`clipdb.ingest.IngestOptions` fields (``batch_size``,
        ``exclude``, ``prune``...).
        """
        from clipdb.ingest import ingest

        return ingest([image_dir], database=self.database, encoder=self.encoder, **options)

    # --- searching ------------------------------------------------------------------------

    def search_similar_images(
        self,
        query_image_path: str | os.PathLike[str],
        top_k: int = 5,
        *,
        under: str | os.PathLike[str] | None = None,
        threshold: float | None = None,
        ef_search: int = DEFAULT_EF_SEARCH,
        hide_duplicates: bool = False,
        **filters: Any,
    ) -> list[dict[str, Any]]:
        """``[{"rank", "image_path", "similarity", "filename", "image_id", "taken_at", "camera",
        "lat", "lon"}, ...]`` best first. ``filters``: :class:`clipdb.filters.Filters` keywords
        (``after``, ``before``, ``camera``, ``near=(lat, lon, km)``, ``within``, ``sort``,
        ``offset``)."""
        query = Query(image=query_image_path)
        options = SearchOptions(
            top_k, ef_search, _str(under), threshold, _filters(filters), hide_duplicates
        )
        return [hit.to_dict() for hit in self._searcher.search(query, options)]

    def search_by_text(
        self,
        text: str,
        top_k: int = 5,
        *,
        under: str | os.PathLike[str] | None = None,
        threshold: float | None = None,
        ef_search: int = DEFAULT_EF_SEARCH,
        hide_duplicates: bool = False,
        match: str | None = None,
        **filters: Any,
    ) -> list[dict[str, Any]]:
        """Images matching a text, best first: ``match`` "clip" by its CLIP embedding (a
        description), "text" by the words in the images, their keywords and file names,
        "hybrid" both fused; None: hybrid when the images' words are indexed, else clip.
        Hits of text and hybrid searches also have ``match`` and ``matched_text``."""
        options = SearchOptions(
            top_k, ef_search, _str(under), threshold, _filters(filters), hide_duplicates
        )
        query = Query(text=text, match=match)
        return [hit.to_dict() for hit in self._searcher.search(query, options)]

    def print_search_results(
        self, query: str | os.PathLike[str], results: Sequence[dict[str, Any]]
    ) -> None:
        """Print the query and a rank/similarity/path table."""
        print(f"query: {query}")
        print(format_table(_hits(results)))

    def visualize_search_results(
        self,
        query: str | os.PathLike[str],
        results: Sequence[dict[str, Any]],
        save_path: str | os.PathLike[str] | None = None,
    ) -> Path | Figure:
        """A grid of the query (an image file, else a text) and its results.

        Saved as PNG when ``save_path`` is given (returns the path); otherwise returns the
        matplotlib Figure, which notebooks display.
        """
        from clipdb import viz

        is_image = Path(query).is_file()
        kwargs: dict[str, Any] = (
            {"query_image": query} if is_image else {"query_text": os.fspath(query)}
        )
        if save_path is None:
            return viz.build_figure(_hits(results), **kwargs)
        return viz.plot_results(_hits(results), save_path, **kwargs)

    def batch_search(
        self,
        query_dir: str | os.PathLike[str],
        top_k: int = 5,
        save_dir: str | os.PathLike[str] | None = None,
    ) -> dict[str, list[dict[str, Any]]]:
        """Search with every image in ``query_dir``: ``{query path: results}``.

        Unreadable images are reported on stderr and left out. With ``save_dir``, also writes
        ``batch_search_results.json`` and one grid PNG per query there.
        """
        return self._searcher.batch(
            image_files(query_dir),
            SearchOptions(k=top_k),
            out=Path(save_dir) if save_dir is not None else None,
            on_skip=lambda path, reason: print(f"skipping {path}: {reason}", file=sys.stderr),
        )

    # --- portable export / import ---------------------------------------------------------

    def save_index(self, index_path: str | os.PathLike[str]) -> Path:
        """Write this model's rows (paths, file identity, embeddings) to an ``.npz`` file."""
        model = self._searched_model()
        with self.database.connect() as conn:
            return export_index(conn, model, index_path)

    def load_index(self, index_path: str | os.PathLike[str]) -> int:
        """Upsert the rows of an ``.npz`` export into the current database; returns the count."""
        with self.database.connect() as conn:
            model, count = import_index(conn, index_path)
        if model.architecture != self.settings.model or self.settings.pretrained not in (
            None,
            model.pretrained,
        ):
            warnings.warn(
                f"{index_path} holds {model} embeddings; this ClipDB searches "
                f"{self.settings.model} rows",
                stacklevel=2,
            )
        return count


def _str(path: str | os.PathLike[str] | None) -> str | None:
    return None if path is None else os.fspath(path)


def _filters(values: dict[str, Any]) -> Filters:
    """ClipDB keyword arguments as Filters; an unknown keyword is a usage error."""
    known = {"after", "before", "camera", "near", "within", "sort", "offset"}
    unknown = sorted(set(values) - known)
    if unknown:
        raise UsageError(f"unknown search option(s): {', '.join(unknown)}")
    near = values.get("near")
    if near is not None and not isinstance(near, str | Near):
        try:
            lat, lon, km = (float(v) for v in near)
        except (TypeError, ValueError):
            raise UsageError("near: expected (lat, lon, km)") from None
        values = {**values, "near": Near(lat, lon, km)}
    return Filters(**values)


def _hits(results: Sequence[dict[str, Any]]) -> list[Hit]:
    return [
        Hit(
            rank=int(r["rank"]),
            image_path=str(r["image_path"]),
            similarity=float("nan") if r["similarity"] is None else float(r["similarity"]),
            image_id=int(r.get("image_id", 0)),
            taken_at=datetime.fromisoformat(r["taken_at"]) if r.get("taken_at") else None,
            camera=r.get("camera"),
            lat=r.get("lat"),
            lon=r.get("lon"),
            taken_at_naive=bool(r.get("taken_at_naive", False)),
            match=r.get("match"),
            matched_text=r.get("matched_text"),
            frame_time=r.get("time"),
        )
        for r in results
    ]
