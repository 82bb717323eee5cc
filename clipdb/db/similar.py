"""The similar tier's stored neighbour lists (migration 0017): which images were checked,
their pairs, and the vectors a bulk pass reads.

An image is *checked* for (threshold, neighbours) when ``clipdb.similar_checked`` holds it
with a floor at or below the threshold and at least that many neighbours: its pairs at or
above the floor are then in ``clipdb.similar_pairs``. A change of the row's sha256 or
embedding removes its mark and pairs (the trigger of migration 0017).
"""

from __future__ import annotations

from collections.abc import Iterator
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
) -> dict[int, bytes]:
    """Of ``ids`` (None: every row of the model), those not checked for (threshold,
    neighbours), with their sha256 now: :func:`store` marks a row checked only while it still
    has it (a row that changes meanwhile is looked up again next time)."""
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
            return {}
    todo = [
        row_id
        for (row_id,) in conn.execute(
            f"SELECT i.id FROM clipdb.images i WHERE i.model_id = %(model)s {scope} "
            f"AND NOT {_CHECKED}",
            params,
        )
    ]
    if not todo:
        return {}
    return {
        row_id: bytes(sha)
        for row_id, sha in conn.execute(
            "SELECT id, sha256 FROM clipdb.images WHERE id = ANY(%s) ORDER BY id", (todo,)
        )
    }


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


def file_vectors(conn: psycopg.Connection[Any], model: Model) -> tuple[np.ndarray, np.ndarray]:
    """(ids, vectors): every file of the model (one row per file), its embedding as an
    n x dim float32 array; read as binary halfvec (2 bytes a value) and converted in pieces,
    so the client holds the float32 array and one piece."""
    dim = int(model.dim)
    # Binary COPY row: field count (int16), id (int32 length + int64), embedding (int32
    # length + halfvec: int16 dim, int16 unused, dim big-endian float16).
    row = np.dtype(
        [("fields", ">i2"), ("id_len", ">i4"), ("id", ">i8"), ("vec_len", ">i4"),
         ("dim", ">i2"), ("unused", ">i2"), ("vec", ">f2", (dim,))]
    )  # fmt: skip
    count = conn.execute(
        f"SELECT count(*) FROM clipdb.images i WHERE i.model_id = %s AND {_ONE_PER_FILE}",
        (model.model_id,),
    ).fetchone()
    assert count is not None
    ids = np.empty(int(count[0]) + 1024, dtype=np.int64)  # a margin for rows added meanwhile
    vectors = np.empty((len(ids), dim), dtype=np.float32)
    filled = 0
    for piece in _copy_rows(
        conn,
        f"COPY (SELECT i.id, i.embedding::halfvec({dim}) FROM clipdb.images i "
        f"WHERE i.model_id = {int(model.model_id)} AND {_ONE_PER_FILE}) "
        "TO STDOUT (FORMAT BINARY)",
        row.itemsize,
    ):
        rows = np.frombuffer(piece, dtype=row)
        if filled + len(rows) > len(ids):
            ids = np.resize(ids, filled + len(rows))
            vectors = np.resize(vectors, (filled + len(rows), dim))
        ids[filled : filled + len(rows)] = rows["id"]
        vectors[filled : filled + len(rows)] = rows["vec"]
        filled += len(rows)
    return ids[:filled], vectors[:filled]


def _copy_rows(conn: psycopg.Connection[Any], sql: str, row_size: int) -> Iterator[bytes]:
    """The rows of a binary COPY of fixed-size rows, in pieces of whole rows."""
    header, trailer = 19, b"\xff\xff"  # signature, flags, extension length; field count -1
    chunks: list[bytes] = []
    size = 0
    started = False
    with conn.cursor() as cur, cur.copy(sql) as copy:
        for data in copy:
            chunks.append(bytes(data))
            size += len(data)
            if size < row_size * _READ_ROWS + header:
                continue
            buffer = b"".join(chunks)
            if not started:
                buffer, started = buffer[header:], True
            whole = len(buffer) // row_size * row_size
            yield buffer[:whole]
            chunks, size = [buffer[whole:]], len(buffer) - whole
    buffer = b"".join(chunks)
    if not started:
        buffer = buffer[header:]
    if not buffer.endswith(trailer) or (len(buffer) - len(trailer)) % row_size:
        raise RuntimeError("the vectors' COPY stream did not end as rows of one size")
    if len(buffer) > len(trailer):
        yield buffer[: -len(trailer)]


def store(
    conn: psycopg.Connection[Any],
    model: Model,
    checked: dict[int, bytes],
    pairs: list[tuple[int, int, float]],
    threshold: float,
    neighbours: int,
) -> None:
    """Replace the pairs of ``checked`` (id: the sha256 its neighbours were looked for with)
    with ``pairs``, and mark them checked. Call in a transaction."""
    model_id = int(model.model_id)
    with conn.cursor() as cur:
        cur.execute(
            "CREATE TEMP TABLE IF NOT EXISTS similar_done (id bigint, sha256 bytea) "
            "ON COMMIT DROP; CREATE TEMP TABLE IF NOT EXISTS similar_found "
            "(a bigint, b bigint, s real) ON COMMIT DROP; TRUNCATE similar_done, similar_found"
        )
        with cur.copy("COPY similar_done FROM STDIN (FORMAT BINARY)") as copy:
            copy.set_types(["int8", "bytea"])
            for row in checked.items():
                copy.write_row(row)
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
            "SELECT a, b, %s, max(s) FROM similar_found GROUP BY a, b "
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
