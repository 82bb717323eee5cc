"""The similar tier's stored neighbour lists (migration 0017): which images were checked,
their pairs, and the vectors a bulk pass reads.

An image is *checked* for (threshold, neighbours) when ``clipdb.similar_checked`` holds it
with a floor at or below the threshold and at least that many neighbours: its pairs at or
above the floor are then in ``clipdb.similar_pairs``. A change of the row's sha256 or
embedding removes its mark and pairs (the trigger of migration 0017).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import psycopg

from clipdb.db.dupes import ONE_PER_FILE as _ONE_PER_FILE
from clipdb.db.registry import Model

_CHECKED = (
    "EXISTS (SELECT FROM clipdb.similar_checked c WHERE c.image_id = i.id "
    "AND c.floor <= %(threshold)s AND c.neighbours >= %(neighbours)s)"
)
# Rows of halfvec vectors read in one piece of the binary COPY stream.
_READ_ROWS = 65_536


def unchecked(
    conn: psycopg.Connection[Any],
    model: Model,
    ids: list[int] | None,
    threshold: float,
    neighbours: int,
) -> list[int]:
    """Of ``ids`` (None: every row of the model), those not checked for (threshold,
    neighbours)."""
    scope = "" if ids is None else "AND i.id = ANY(%(ids)s)"
    params = {"model": model.model_id, "ids": ids, "threshold": threshold, "neighbours": neighbours}
    if ids is None:
        # As many marks as rows means every row has one (a mark names one existing row of the
        # model, at most once): two counts over indexes, not a join of a million rows each.
        counts = conn.execute(
            "SELECT (SELECT count(*) FROM clipdb.images WHERE model_id = %(model)s) = "
            "(SELECT count(*) FROM clipdb.similar_checked WHERE model_id = %(model)s "
            "AND floor <= %(threshold)s AND neighbours >= %(neighbours)s)",
            params,
        ).fetchone()
        if counts is not None and counts[0]:
            return []
    return [
        row_id
        for (row_id,) in conn.execute(
            f"SELECT i.id FROM clipdb.images i WHERE i.model_id = %(model)s {scope} "
            f"AND NOT {_CHECKED} ORDER BY i.id",
            params,
        )
    ]


def content_of(conn: psycopg.Connection[Any], ids: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """(ids, sha256s as 32-byte strings) of the rows ``ids`` now: what :func:`store` marks
    them checked with (a row that changes meanwhile is not marked, and is looked up again)."""
    rows = conn.execute(
        "SELECT id, sha256 FROM clipdb.images WHERE id = ANY(%s) ORDER BY id", (ids,)
    ).fetchall()
    return (
        np.array([r[0] for r in rows], dtype=np.int64),
        np.array([bytes(r[1]) for r in rows], dtype="S32"),
    )


def checked_setting(conn: psycopg.Connection[Any], model: Model) -> tuple[float, int] | None:
    """The lowest floor and the most neighbours the model's marks were made with; None when
    no image of the model was ever checked."""
    found = conn.execute(
        "SELECT min(floor), max(neighbours) FROM clipdb.similar_checked WHERE model_id = %s",
        (model.model_id,),
    ).fetchone()
    if found is None or found[0] is None:
        return None
    return float(found[0]), int(found[1])


def files_among(conn: psycopg.Connection[Any], ids: list[int]) -> list[int]:
    """Of ``ids``, one row per file (a video's other frames are not looked up: they are the
    same file as its first, which is)."""
    return [
        row_id
        for (row_id,) in conn.execute(
            f"SELECT i.id FROM clipdb.images i WHERE i.id = ANY(%s) AND {_ONE_PER_FILE} "
            "ORDER BY i.id",
            (ids,),
        )
    ]


@dataclass
class ModelVectors:
    """Every row of a model: ids and sha256s (as 32-byte strings); and the embeddings of one
    row per file (``files``: a mask over the rows) as an n_files x dim float32 array."""

    ids: np.ndarray
    sha256: np.ndarray
    files: np.ndarray
    vectors: np.ndarray


def model_vectors(conn: psycopg.Connection[Any], model: Model) -> ModelVectors:
    """The model's rows as :class:`ModelVectors`, read as binary COPY (halfvec: 2 bytes a
    value) and converted in pieces; frames other than a video's first are listed (they are
    marked checked too) but their embeddings are not kept."""
    dim = int(model.dim)
    halfvec = [("dim", ">i2"), ("unused", ">i2"), ("values", ">f2", (dim,))]
    row = _copy_row([("id", ">i8"), ("sha", "S32"), ("file", "?"), ("vec", halfvec)])
    count = conn.execute(
        "SELECT count(*) FROM clipdb.images WHERE model_id = %s", (model.model_id,)
    ).fetchone()
    assert count is not None
    size = int(count[0]) + 1024  # a margin for rows added meanwhile
    ids = np.empty(size, dtype=np.int64)
    shas = np.empty(size, dtype="S32")
    files = np.empty(size, dtype=bool)
    # Pages never written are never resident: the unused tail costs address space only.
    vectors = np.empty((size, dim), dtype=np.float32)
    done = kept = 0
    for piece in _copy_rows(
        conn,
        f"COPY (SELECT i.id, i.sha256, {_ONE_PER_FILE}, i.embedding::halfvec({dim}) "
        f"FROM clipdb.images i WHERE i.model_id = {int(model.model_id)}) "
        "TO STDOUT (FORMAT BINARY)",
        row.itemsize,
    ):
        rows = np.frombuffer(piece, dtype=row)
        if done + len(rows) > size:
            raise RuntimeError("rows were added while reading the vectors; run it again")
        ids[done : done + len(rows)] = rows["id"]
        shas[done : done + len(rows)] = rows["sha"]
        files[done : done + len(rows)] = rows["file"]
        wanted = rows["vec"]["values"][rows["file"]]
        vectors[kept : kept + len(wanted)] = wanted
        done, kept = done + len(rows), kept + len(wanted)
    return ModelVectors(ids[:done], shas[:done], files[:done], vectors[:kept])


def _copy_row(fields: list[tuple[str, Any]]) -> np.dtype[Any]:
    """A binary COPY row of fixed-size fields: the field count (int16), then each field as
    its length (int32) and its value (big-endian, as PostgreSQL sends and takes them)."""
    layout: list[tuple[str, Any]] = [("fields", ">i2")]
    for name, kind in fields:
        layout += [(f"{name}_len", ">i4"), (name, kind)]
    return np.dtype(layout)


def _copy_rows(conn: psycopg.Connection[Any], sql: str, row_size: int) -> Iterator[bytes]:
    """The rows of a binary COPY of fixed-size rows, in pieces of whole rows."""
    header, trailer = 19, b"\xff\xff"  # signature, flags, extension length; field count -1
    # libpq hands over one row at a time: appending to a bytearray is the cheapest step.
    buffer = bytearray()
    started = False
    with conn.cursor() as cur, cur.copy(sql) as copy:
        for data in copy:
            buffer += data
            if len(buffer) < row_size * _READ_ROWS + header:
                continue
            if not started:
                del buffer[:header]
                started = True
            whole = len(buffer) // row_size * row_size
            yield bytes(buffer[:whole])
            del buffer[:whole]
    if not started:
        del buffer[:header]
    if not buffer.endswith(trailer) or (len(buffer) - len(trailer)) % row_size:
        raise RuntimeError("the vectors' COPY stream did not end as rows of one size")
    if len(buffer) > len(trailer):
        yield bytes(buffer[: -len(trailer)])


def store(
    conn: psycopg.Connection[Any],
    model: Model,
    checked: tuple[np.ndarray, np.ndarray],
    pairs: list[tuple[int, int, float]],
    threshold: float,
    neighbours: int,
) -> None:
    """Replace the pairs of the ``checked`` rows (ids, and the sha256 each had when its
    neighbours were looked for) with ``pairs``, and mark them checked; a row whose sha256 is
    another now is not marked. Call in a transaction."""
    model_id = int(model.model_id)
    ids, shas = checked
    # Binary COPY rows built as one array (a million rows: one write, not a million calls).
    fields = [("id", ">i8"), ("sha", "S32")]
    done = np.empty(len(ids), dtype=_copy_row(fields))
    done["fields"] = len(fields)
    for name, _ in fields:
        done[f"{name}_len"] = done.dtype[name].itemsize
    done["id"], done["sha"] = ids, shas
    with conn.cursor() as cur:
        cur.execute(
            "CREATE TEMP TABLE IF NOT EXISTS similar_done (id bigint, sha256 bytea) "
            "ON COMMIT DROP; CREATE TEMP TABLE IF NOT EXISTS similar_found "
            "(a bigint, b bigint, s real) ON COMMIT DROP; TRUNCATE similar_done, similar_found"
        )
        with cur.copy("COPY similar_done FROM STDIN (FORMAT BINARY)") as copy:
            copy.write(_COPY_HEADER + done.tobytes() + _COPY_TRAILER)
        with cur.copy("COPY similar_found FROM STDIN (FORMAT BINARY)") as copy:
            copy.set_types(["int8", "int8", "float4"])
            for a, b, similarity in pairs:
                copy.write_row((min(a, b), max(a, b), similarity))
        for side in ("image_id", "other_id"):  # two hash joins, not one OR join
            cur.execute(
                f"DELETE FROM clipdb.similar_pairs p USING similar_done d WHERE p.{side} = d.id"
            )
        cur.execute(
            "INSERT INTO clipdb.similar_pairs (image_id, other_id, model_id, similarity) "
            "SELECT a, b, %s, max(s) FROM similar_found f "
            # Deleted meanwhile: no pair (the delete's trigger ran before this insert).
            "WHERE EXISTS (SELECT FROM clipdb.images WHERE id = f.a) "
            "AND EXISTS (SELECT FROM clipdb.images WHERE id = f.b) GROUP BY a, b "
            "ON CONFLICT (image_id, other_id) DO UPDATE SET similarity = excluded.similarity",
            (model_id,),
        )
        cur.execute(
            "INSERT INTO clipdb.similar_checked (image_id, model_id, sha256, floor, neighbours) "
            "SELECT d.id, %s, d.sha256, %s, %s FROM similar_done d "
            # Gone or changed meanwhile: not marked (looked up again next time).
            "JOIN clipdb.images i ON i.id = d.id AND i.sha256 = d.sha256 "
            "ON CONFLICT (image_id) DO UPDATE SET sha256 = excluded.sha256, "
            "floor = excluded.floor, neighbours = excluded.neighbours",
            (model_id, threshold, neighbours),
        )


_COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + bytes(8)  # signature, flags, extension length
_COPY_TRAILER = b"\xff\xff"


def stored_pairs(
    conn: psycopg.Connection[Any], model: Model, ids: list[int] | None, threshold: float
) -> list[tuple[int, int, float]]:
    """The stored pairs at or above ``threshold`` with a member among ``ids`` (None: all of
    the model's)."""
    scope = "" if ids is None else "AND (p.image_id = ANY(%(ids)s) OR p.other_id = ANY(%(ids)s))"
    return [
        (a, b, float(similarity))
        for a, b, similarity in conn.execute(
            "SELECT p.image_id, p.other_id, p.similarity FROM clipdb.similar_pairs p "
            f"WHERE p.model_id = %(model)s AND p.similarity >= %(threshold)s {scope}",
            {"model": model.model_id, "threshold": threshold, "ids": ids},
        )
    ]
