"""``ClipDB``: the original ``CLIPImageRetrieval`` class's methods, backed by PostgreSQL.

Code written for the original tool switches by changing the import and the class name::

    from clipdb import ClipDB
    retriever = ClipDB(model_name="ViT-B/32")
    retriever.build_image_index("./images")          # persists in the database
    results = retriever.search_similar_images("query.jpg", top_k=5)
    retriever.print_search_results("query.jpg", results)

Differences: the index lives in the database (``build_image_index`` adds to it, so there is no
need to save and load between runs); ``save_index``/``load_index`` are a portable export/import
in ``.npz`` form (never pickle); the model is loaded on first use, not in ``__init__``.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import psycopg

from clipdb.config import DEFAULT_EF_SEARCH, DEFAULT_MODEL, Settings
from clipdb.db import Database, open_database
from clipdb.errors import ClipdbError
from clipdb.queries import Hit, Model, register_model
from clipdb.search import (
    BATCH_RESULTS_FILE,
    SearchOptions,
    batch_plot_name,
    format_table,
    image_files,
    model_for_encoding,
    open_image,
    result_dicts,
    search,
)
from clipdb.store import ImageRecord, upsert_images

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from clipdb.encoder import ClipEncoder

INDEX_FORMAT = "clipdb-index"
INDEX_VERSION = 1
# Arrays covered by the checksum, in this order.
_INDEX_ARRAYS = (
    "format",
    "version",
    "architecture",
    "pretrained",
    "dim",
    "paths",
    "embeddings",
    "sha256",
    "size",
    "mtime_ns",
    "width",
    "height",
)


class ClipDB:
    """Image retrieval with CLIP, the method names of the original ``CLIPImageRetrieval``."""

    def __init__(
        self,
        model_name: str = "ViT-B/32",
        pretrained: str | None = None,
        database_url: str | None = None,
        device: str = "auto",
        precision: str = "auto",
    ) -> None:
        self.settings = Settings.resolve(
            database_url=database_url, model=model_name or DEFAULT_MODEL, pretrained=pretrained
        )
        self.device = device
        self.precision = precision
        self._database: Database | None = None
        self._encoder: ClipEncoder | None = None

    @property
    def database(self) -> Database:
        """The database, opened (and migrated) on first use."""
        if self._database is None:
            self._database = open_database(self.settings)
        return self._database

    @property
    def encoder(self) -> ClipEncoder:
        """The CLIP model, loaded on first use."""
        if self._encoder is None:
            from clipdb.encoder import load_encoder

            self._encoder = load_encoder(
                self.settings.model,
                self.settings.pretrained,
                device=self.device,
                precision=self.precision,
            )
        return self._encoder

    # --- indexing -------------------------------------------------------------------------

    def extract_image_features(self, image_path: str | os.PathLike[str]) -> np.ndarray:
        """The normalised embedding of one image file."""
        return self.encoder.encode_pil([open_image(image_path, self.encoder)])[0]

    def build_image_index(self, image_dir: str | os.PathLike[str], **options: Any) -> Any:
        """Index (or update) the images under ``image_dir``; returns ingest's summary.

        ``options`` go to :func:`clipdb.ingest.ingest` (``batch_size``, ``exclude``, ``prune``...).
        """
        from clipdb.ingest import ingest

        return ingest([image_dir], database=self.database, encoder=self.encoder, **options)

    # --- searching ------------------------------------------------------------------------

    def _search(self, query: np.ndarray, options: SearchOptions) -> list[dict[str, Any]]:
        with self.database.connect() as conn:
            model = model_for_encoding(conn, self.settings)
            return result_dicts(search(conn, model, query, options))

    def search_similar_images(
        self,
        query_image_path: str | os.PathLike[str],
        top_k: int = 5,
        *,
        under: str | os.PathLike[str] | None = None,
        threshold: float | None = None,
        ef_search: int = DEFAULT_EF_SEARCH,
    ) -> list[dict[str, Any]]:
        """``[{"rank", "image_path", "similarity", "filename", "image_id"}, ...]`` best first."""
        open_image(query_image_path)  # a missing or broken file fails before anything loads
        options = SearchOptions(top_k, ef_search, _str(under), threshold)
        with self.database.connect() as conn:
            model_for_encoding(conn, self.settings)  # no rows: fail before loading the model
        return self._search(self.extract_image_features(query_image_path), options)

    def search_by_text(
        self,
        text: str,
        top_k: int = 5,
        *,
        under: str | os.PathLike[str] | None = None,
        threshold: float | None = None,
        ef_search: int = DEFAULT_EF_SEARCH,
    ) -> list[dict[str, Any]]:
        """Images matching a text description (CLIP text tower), best first."""
        options = SearchOptions(top_k, ef_search, _str(under), threshold)
        with self.database.connect() as conn:
            model_for_encoding(conn, self.settings)
        return self._search(self.encoder.encode_texts([text])[0], options)

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
        import sys

        from clipdb.search import batch_search
        from clipdb.viz import plot_results

        queries = image_files(query_dir)
        options = SearchOptions(k=top_k)
        results: dict[str, list[dict[str, Any]]] = {}
        out = Path(save_dir) if save_dir is not None else None
        with self.database.connect() as conn:
            model = model_for_encoding(conn, self.settings)
            items = batch_search(conn, model, self.encoder, queries, options)
            for index, item in enumerate(items, start=1):
                if item.hits is None:
                    print(f"skipping {item.query_path}: {item.error}", file=sys.stderr)
                    continue
                results[str(item.query_path.resolve())] = result_dicts(item.hits)
                if out is not None:
                    plot_name = batch_plot_name(index, item.query_path)
                    plot_results(item.hits, out / plot_name, query_image=item.query_path)
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
            text = json.dumps(results, indent=2, ensure_ascii=False) + "\n"
            (out / BATCH_RESULTS_FILE).write_text(text)
        return results

    # --- portable export / import ---------------------------------------------------------

    def save_index(self, index_path: str | os.PathLike[str]) -> Path:
        """Write this model's rows (paths, file identity, embeddings) to an ``.npz`` file."""
        with self.database.connect() as conn:
            model = model_for_encoding(conn, self.settings)
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


def _hits(results: Sequence[dict[str, Any]]) -> list[Hit]:
    return [
        Hit(
            rank=int(r["rank"]),
            image_path=str(r["image_path"]),
            similarity=float(r["similarity"]),
            image_id=int(r.get("image_id", 0)),
        )
        for r in results
    ]


def _checksum(arrays: dict[str, np.ndarray]) -> str:
    digest = hashlib.sha256()
    for name in _INDEX_ARRAYS:
        array = np.ascontiguousarray(arrays[name])
        digest.update(f"{name}:{array.dtype.str}:{array.shape};".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def export_index(
    conn: psycopg.Connection[Any], model: Model, index_path: str | os.PathLike[str]
) -> Path:
    """Write ``model``'s rows to ``index_path`` (.npz, plain arrays + sha256 checksum)."""
    rows = conn.execute(
        "SELECT path, sha256, size, mtime_ns, width, height, embedding FROM clipdb.images "
        f"WHERE model_id = {int(model.model_id)} ORDER BY path"
    ).fetchall()
    embeddings = np.zeros((len(rows), model.dim), dtype=np.float32)
    for position, row in enumerate(rows):
        value = row[6]
        embeddings[position] = value.to_numpy() if hasattr(value, "to_numpy") else value
    arrays: dict[str, np.ndarray] = {
        "format": np.array(INDEX_FORMAT),
        "version": np.array(INDEX_VERSION, dtype=np.int64),
        "architecture": np.array(model.architecture),
        "pretrained": np.array(model.pretrained),
        "dim": np.array(model.dim, dtype=np.int64),
        "paths": np.array([row[0] for row in rows], dtype=str).reshape(len(rows)),
        "embeddings": embeddings,
        "sha256": np.frombuffer(b"".join(bytes(row[1]) for row in rows), dtype=np.uint8)
        .reshape(len(rows), 32)
        .copy(),
        "size": np.array([row[2] for row in rows], dtype=np.int64),
        "mtime_ns": np.array([row[3] for row in rows], dtype=np.int64),
        "width": np.array([row[4] for row in rows], dtype=np.int32),
        "height": np.array([row[5] for row in rows], dtype=np.int32),
    }
    arrays["checksum"] = np.array(_checksum(arrays))
    path = Path(index_path)
    partial = path.with_name(path.name + ".partial")
    try:
        with open(partial, "wb") as handle:  # a handle keeps the name as given (no .npz added)
            np.savez(handle, **arrays)  # type: ignore[arg-type]
        os.replace(partial, path)
    except OSError as err:
        raise ClipdbError(f"cannot write index {path}: {err.strerror or err}") from None
    return path


def read_index(index_path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """The arrays of an export, checked: format, version, shapes and checksum."""
    path = Path(index_path)
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {name: data[name] for name in data.files}
    except FileNotFoundError:
        raise ClipdbError(f"index file {path} does not exist") from None
    except ValueError as err:
        if "pickle" in str(err):
            raise ClipdbError(
                f"{path} holds pickled data, which clipdb never loads; "
                "export it again with ClipDB.save_index"
            ) from None
        raise ClipdbError(f"{path} is not a clipdb index file: {err}") from None
    except (OSError, EOFError, zipfile.BadZipFile) as err:  # truncated or bytes flipped
        raise ClipdbError(f"cannot read index file {path}: {err}") from None
    missing = [name for name in (*_INDEX_ARRAYS, "checksum") if name not in arrays]
    if missing or str(arrays["format"]) != INDEX_FORMAT:
        raise ClipdbError(f"{path} is not a clipdb index file")
    if int(arrays["version"]) > INDEX_VERSION:
        raise ClipdbError(
            f"{path} is index format version {int(arrays['version'])}; "
            f"this clipdb reads up to {INDEX_VERSION}"
        )
    try:
        checksum = _checksum(arrays)
    except (TypeError, ValueError):
        checksum = ""
    if checksum != str(arrays["checksum"]):
        raise ClipdbError(f"{path} failed its checksum: the file was modified or is corrupt")
    count, dim = len(arrays["paths"]), int(arrays["dim"])
    if arrays["embeddings"].shape != (count, dim) or arrays["sha256"].shape != (count, 32):
        raise ClipdbError(f"{path} has inconsistent array shapes")
    return arrays


def import_index(
    conn: psycopg.Connection[Any], index_path: str | os.PathLike[str]
) -> tuple[Model, int]:
    """Upsert an export's rows under its model (registered if new); one transaction."""
    arrays = read_index(index_path)
    model = register_model(
        conn, str(arrays["architecture"]), str(arrays["pretrained"]), int(arrays["dim"])
    )
    records = [
        ImageRecord(
            path=str(arrays["paths"][i]),
            sha256=arrays["sha256"][i].tobytes(),
            size=int(arrays["size"][i]),
            mtime_ns=int(arrays["mtime_ns"][i]),
            width=int(arrays["width"][i]),
            height=int(arrays["height"][i]),
            embedding=arrays["embeddings"][i],
        )
        for i in range(len(arrays["paths"]))
    ]
    with conn.transaction():
        upsert_images(conn, model, records)
    return model, len(records)
