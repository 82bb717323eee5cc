"""Every read and write of ``clipdb.image_text``: the words of images, and the text search.

The schema and the search functions are migration 0013's: ``clipdb.search_text_rows`` ranks by
words and part-strings with the filters of ``clipdb.search_rows``, and ``clipdb.search_hybrid``
fuses the two lists (it calls ``clipdb.search_rows``, so a change of the CLIP side reaches it).
Everything a user gives is a bound parameter; the model id comes from our registry.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import psycopg
from psycopg.types.json import Jsonb

from clipdb.config import MAX_QUERY_TEXT, MAX_RESULTS
from clipdb.db.paths import key, prefix_range
from clipdb.db.queries import Hit, arrange, check_result_count, under_prefix
from clipdb.db.registry import Model
from clipdb.errors import ClipdbError, UsageError
from clipdb.files import fs_path
from clipdb.filters import NO_FILTERS, Filters

MATCHES = ("clip", "text", "hybrid")
MAX_OCR_TEXT = 100_000  # characters of OCR text kept per image (the table's bound)
MAX_META_TEXT = 20_000
MAX_NAME_TEXT = 40_000


@dataclass(frozen=True)
class TextWork:
    """A row whose words are missing or stale: what the text stage must do for it."""

    image_id: int
    path: str  # as the file system names it
    sha256: bytes
    path_key: bytes
    content_known: bool  # a text row read from this content exists (only the name changed)
    needs_ocr: bool


@dataclass(frozen=True)
class TextRow:
    """The words of one image row, as the text stage found them."""

    image_id: int
    sha256: bytes
    path_key: bytes
    name_text: str
    meta_text: str | None = None  # None: keep the stored one (the content did not change)
    engine: str | None = None  # None: no OCR (yet), or keep the stored OCR (keep_ocr)
    ocr: Sequence[dict[str, Any]] = ()
    keep_ocr: bool = False


def _under(root: str | None) -> tuple[str, tuple[bytes, ...]]:
    if root is None:
        return "", ()
    low, high = prefix_range(key(os.path.join(root, "")))
    path_key = "clipdb.path_key(i.path, i.path_bytes)"
    where = f" AND ({path_key} = %s OR ({path_key} >= %s AND {path_key} < %s))"
    return where, (key(root), low, high)


_PENDING = (
    "FROM clipdb.images i LEFT JOIN clipdb.image_text t ON t.image_id = i.id "
    "WHERE i.model_id = {model} AND i.id > %s "
    "AND (t.image_id IS NULL OR t.sha256 <> i.sha256 "
    "OR t.path_key <> clipdb.path_key(i.path, i.path_bytes) OR (%s AND t.engine IS NULL))"
)


def pending_count(
    conn: psycopg.Connection[Any], model: Model, *, ocr: bool, root: str | None = None
) -> int:
    """How many rows :func:`pending` has to give (for a progress bar)."""
    where, params = _under(root)
    row = conn.execute(
        "SELECT count(*) " + _PENDING.format(model=int(model.model_id)) + where,
        (0, ocr, *params),
    ).fetchone()
    return int(row[0]) if row else 0


def pending(
    conn: psycopg.Connection[Any],
    model: Model,
    *,
    ocr: bool,
    root: str | None = None,
    after_id: int = 0,
    limit: int = 500,
) -> list[TextWork]:
    """Rows of ``model`` (at or under ``root``) with no words, words of another content or
    name, or (``ocr``) no OCR yet; by id from ``after_id``, so a stage can resume anywhere."""
    where, params = _under(root)
    rows = conn.execute(
        "SELECT i.id, i.path, i.path_bytes, i.sha256, clipdb.path_key(i.path, i.path_bytes), "
        "t.sha256 = i.sha256, t.sha256 = i.sha256 AND t.engine IS NOT NULL "
        + _PENDING.format(model=int(model.model_id))
        + where
        + " ORDER BY i.id LIMIT %s",
        (after_id, ocr, *params, limit),
    ).fetchall()
    return [
        TextWork(
            int(row_id),
            fs_path(path, raw),
            bytes(sha),
            bytes(path_key),
            bool(same),
            ocr and not bool(read),
        )
        for row_id, path, raw, sha, path_key, same, read in rows
    ]


def known_ocr(
    conn: psycopg.Connection[Any], hashes: Sequence[bytes]
) -> dict[bytes, tuple[str, list[dict[str, Any]]]]:
    """sha256 -> (engine, lines) for contents some row (any model, any path) was read from:
    a copy or a second model's row is never read twice."""
    found: dict[bytes, tuple[str, list[dict[str, Any]]]] = {}
    for sha, engine, lines in conn.execute(
        "SELECT DISTINCT ON (sha256) sha256, engine, ocr FROM clipdb.image_text "
        "WHERE engine IS NOT NULL AND sha256 = ANY(%s) ORDER BY sha256, updated_at DESC",
        (list(hashes),),
    ):
        found[bytes(sha)] = (engine, lines)
    return found


def _clean(text: str, limit: int) -> str:
    """``text`` as PostgreSQL can hold it: no NUL (metadata may carry one), at most ``limit``."""
    return text.replace("\0", " ")[:limit]


def write(conn: psycopg.Connection[Any], rows: Sequence[TextRow]) -> int:
    """Insert or update the words of ``rows`` (a row deleted meanwhile is left out)."""
    written = 0
    for row in rows:
        ocr_text = _clean("\n".join(line["text"] for line in row.ocr), MAX_OCR_TEXT)
        result = conn.execute(
            "INSERT INTO clipdb.image_text AS t (image_id, sha256, path_key, name_text, "
            "meta_text, engine, ocr, ocr_text) "
            "SELECT %(id)s, %(sha)s, %(key)s, %(name)s, coalesce(%(meta)s, ''), %(engine)s, "
            "%(ocr)s, %(ocr_text)s WHERE EXISTS (SELECT FROM clipdb.images WHERE id = %(id)s) "
            "ON CONFLICT (image_id) DO UPDATE SET sha256 = excluded.sha256, "
            "path_key = excluded.path_key, name_text = excluded.name_text, "
            "meta_text = coalesce(%(meta)s, t.meta_text), "
            "engine = CASE WHEN %(keep)s THEN t.engine ELSE excluded.engine END, "
            "ocr = CASE WHEN %(keep)s THEN t.ocr ELSE excluded.ocr END, "
            "ocr_text = CASE WHEN %(keep)s THEN t.ocr_text ELSE excluded.ocr_text END, "
            "updated_at = now()",
            {
                "id": row.image_id,
                "sha": row.sha256,
                "key": row.path_key,
                "name": _clean(row.name_text, MAX_NAME_TEXT),
                "meta": None if row.meta_text is None else _clean(row.meta_text, MAX_META_TEXT),
                "engine": row.engine,
                "ocr": Jsonb(list(row.ocr)),
                "ocr_text": ocr_text,
                "keep": row.keep_ocr,
            },
        )
        written += result.rowcount
    return written


def has_text(conn: psycopg.Connection[Any], model: Model) -> bool:
    """Whether any row of ``model`` has words stored (the default match is then hybrid)."""
    row = conn.execute(
        "SELECT EXISTS (SELECT FROM clipdb.image_text t JOIN clipdb.images i "
        f"ON i.id = t.image_id WHERE i.model_id = {int(model.model_id)})"
    ).fetchone()
    return bool(row and row[0])


def has_ocr(conn: psycopg.Connection[Any]) -> bool:
    """Whether any image was read by OCR (``--ocr auto`` then keeps reading new ones)."""
    row = conn.execute(
        "SELECT EXISTS (SELECT FROM clipdb.image_text WHERE engine IS NOT NULL)"
    ).fetchone()
    return bool(row and row[0])


def ocr_lines(conn: psycopg.Connection[Any], image_id: int) -> list[dict[str, Any]] | None:
    """The recognised lines (text, confidence, box) of row ``image_id``; None: not read."""
    row = conn.execute(
        "SELECT ocr FROM clipdb.image_text WHERE image_id = %s AND engine IS NOT NULL",
        (image_id,),
    ).fetchone()
    return None if row is None else list(row[0])


# The one text search: clipdb.search_hybrid (migrations/versions/0013_image_text.py).
_SEARCH_HYBRID = (
    "SELECT rank, path, similarity, id, taken_at, camera_name, lat, lon, taken_at_naive, "
    "path_bytes, match, matched_text FROM clipdb.search_hybrid(%(model)s::smallint, "
    "%(query)s::vector, %(text)s, %(k)s, %(ef)s, after => %(after)s, before => %(before)s, "
    "camera => %(camera)s, near_lat => %(near_lat)s, near_lon => %(near_lon)s, "
    "near_km => %(near_km)s, under => %(under)s, skip => %(skip)s, mode => %(mode)s)"
)


def check_text_query(text: str | None, match: str) -> None:
    if match not in MATCHES:
        raise UsageError(f"--match {match!r}: choose one of {', '.join(MATCHES)}")
    if match != "clip" and (text is None or not text.strip()):
        raise UsageError(f"--match {match} needs a --text query")
    if text is not None and len(text) > MAX_QUERY_TEXT:
        raise UsageError(f"a text query is at most {MAX_QUERY_TEXT} characters")


def search_text(
    conn: psycopg.Connection[Any],
    model: Model,
    text: str | None,
    k: int,
    *,
    vector: np.ndarray | None = None,
    match: str = "hybrid",
    ef_search: int | None = None,
    under: str | os.PathLike[str] | None = None,
    filters: Filters | None = None,
) -> list[Hit]:
    """Top-k rows of ``model`` by words (``match`` text), by CLIP (clip) or both fused
    (hybrid), best first; each hit says which list found it and the words around the match.
    ``vector`` is needed for clip and hybrid. The filters are clipdb.search's (dates,
    camera, place, ``under``), ``sort`` and the offset; ``within`` is CLIP-only."""
    check_result_count(k)
    check_text_query(text, match)
    filters = filters or NO_FILTERS
    if filters.within is not None:
        raise UsageError("--within goes with a CLIP search, not a text match")
    if k + filters.offset > MAX_RESULTS:
        raise UsageError("a text search pages through its first 10000 results: lower --offset")
    if match != "text":
        if vector is None:
            raise ClipdbError(f"--match {match} needs a query vector")
        vector = np.asarray(vector, dtype=np.float32).reshape(-1)
        if vector.shape[0] != model.dim:
            raise ClipdbError(
                f"query has {vector.shape[0]} dimensions, model {model} has {model.dim}"
            )
    params: dict[str, Any] = {
        "model": model.model_id,
        "query": vector if match != "text" else None,
        # PostgreSQL text holds no NUL; for matching words it is a separator like a space
        # (the CLIP side tokenizes the text as typed).
        "text": None if text is None else text.replace("\x00", " "),
        "k": k,
        "ef": ef_search,
        **filters.sql_params(),
        "under": None if under is None else key(under_prefix(under)),
        "skip": filters.offset,
        "mode": match,
    }
    if filters.sort != "relevance":  # by date: the best offset+k hits, then ordered by date
        params.update(k=k + filters.offset, skip=0)
        hits = [_hit(row) for row in conn.execute(_SEARCH_HYBRID, params)]
        return arrange(hits, k, filters)
    return [_hit(row) for row in conn.execute(_SEARCH_HYBRID, params)]


def _hit(row: tuple[Any, ...]) -> Hit:
    rank, path, similarity, image_id, taken_at, camera, lat, lon, naive, raw, match, snippet = row
    return Hit(
        int(rank),
        path,
        float("nan") if similarity is None else float(similarity),
        int(image_id),
        taken_at,
        camera,
        lat,
        lon,
        naive,
        raw and bytes(raw),
        match=match,
        matched_text=snippet,
    )
