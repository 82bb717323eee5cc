"""The online move of embeddings from ``vector`` to ``halfvec`` (migration 0011, large tables).

Why in batches and not one ``ALTER COLUMN ... TYPE``: that rewrites the table under an
exclusive lock (minutes at a million rows, no search meanwhile). Here each step holds only
short locks, commits as it goes and can be interrupted and run again:

1. drop the old HNSW indexes (CONCURRENTLY): with them, every copied row would be a new
   graph entry (an UPDATE that cannot stay on its page inserts into every index), tens of
   rows a second at 512-d on 2 cores, hours at a million rows;
2. fill ``embedding_half`` in batches of ids (a trigger of 0011 fills it for new writes);
3. build each model's HNSW index over it, CONCURRENTLY;
4. switch in one short transaction: drop the old column, rename the copy to ``embedding`` and
   the new indexes to the names ``clipdb.model_index_ddl`` gives.

Searches work throughout: from 1 to 4 they rank the model's rows exactly (right, slower), as
during a bulk ingest's rebuild (clipdb.ingest.bulk); ``clipdb.search_rows`` ranks by
``embedding::halfvec(dim)``, the expression of both the old and the new index.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psycopg

from clipdb.db.model_index import raise_build_memory
from clipdb.db.registry import Model, list_models
from clipdb.errors import ClipdbError

BATCH_ROWS = 5_000
HALF_INDEX_PREFIX = "images_hnsw_half_model_"
SWITCH_LOCK_TIMEOUT = "5s"
SWITCH_ATTEMPTS = 20


@dataclass(frozen=True)
class StorageState:
    """How ``clipdb.images`` stores embeddings now."""

    kind: str  # "halfvec" or "vector"
    converting: bool  # the online copy (``embedding_half``) exists
    rows_left: int | None  # rows the copy still lacks (counted only when asked)


def storage_state(conn: psycopg.Connection[Any], *, count: bool = False) -> StorageState:
    row = conn.execute(
        "SELECT format_type(a.atttypid, NULL), EXISTS (SELECT FROM pg_attribute h "
        "WHERE h.attrelid = a.attrelid AND h.attname = 'embedding_half' AND NOT h.attisdropped) "
        "FROM pg_attribute a WHERE a.attrelid = 'clipdb.images'::regclass "
        "AND a.attname = 'embedding'"
    ).fetchone()
    assert row is not None
    left = None
    if count and row[1]:
        found = conn.execute(
            "SELECT count(*) FROM clipdb.images WHERE embedding_half IS NULL"
        ).fetchone()
        left = int(found[0]) if found else None
    return StorageState(str(row[0]), bool(row[1]), left)


def fill_batches(
    conn: psycopg.Connection[Any],
    batch_rows: int = BATCH_ROWS,
    after_batch: Callable[[int, int], None] | None = None,
) -> int:
    """Step 2 (autocommit connection): copy embeddings in committed batches of ids.

    Rows already copied are skipped, so a run that stopped goes on where it was. Returns the
    rows copied; ``after_batch(copied so far, last id)`` runs after each commit.
    """
    # Where the last run stopped: ids below the first row without a copy are done.
    first = conn.execute(
        "SELECT min(id) FROM clipdb.images WHERE embedding_half IS NULL"
    ).fetchone()
    if first is None or first[0] is None:
        return 0
    copied, last = 0, int(first[0]) - 1
    while True:
        row = conn.execute(
            "WITH batch AS (SELECT id FROM clipdb.images WHERE id > %s ORDER BY id LIMIT %s), "
            "done AS (UPDATE clipdb.images i SET embedding_half = i.embedding::halfvec "
            "FROM batch b WHERE i.id = b.id AND i.embedding_half IS NULL RETURNING 1) "
            "SELECT (SELECT max(id) FROM batch), (SELECT count(*) FROM done)",
            (last, batch_rows),
        ).fetchone()
        assert row is not None
        if row[0] is None:
            return copied
        last, copied = int(row[0]), copied + int(row[1])
        if after_batch is not None:
            after_batch(copied, last)


def _index_valid(conn: psycopg.Connection[Any], name: str) -> bool | None:
    row = conn.execute(
        "SELECT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
        "WHERE c.relname = %s AND c.relnamespace = 'clipdb'::regnamespace",
        (name,),
    ).fetchone()
    return None if row is None else bool(row[0])


def build_half_indexes(conn: psycopg.Connection[Any]) -> list[Model]:
    """Step 3 (autocommit connection): each model's HNSW index over the copy, CONCURRENTLY
    (an invalid leftover of an interrupted build is dropped and built again)."""
    models = list_models(conn)
    for model in models:
        name = f"{HALF_INDEX_PREFIX}{int(model.model_id)}"
        valid = _index_valid(conn, name)
        if valid:
            continue
        if valid is not None:
            conn.execute(f"DROP INDEX CONCURRENTLY IF EXISTS clipdb.{name}")
        raise_build_memory(conn, model)
        conn.execute(
            f"CREATE INDEX CONCURRENTLY {name} ON clipdb.images USING hnsw "
            f"((embedding_half::halfvec({int(model.dim)})) halfvec_cosine_ops) "
            f"WHERE model_id = {int(model.model_id)}"
        )
    return models


def switch(conn: psycopg.Connection[Any]) -> bool:
    """Step 4: the copy becomes ``embedding`` in one transaction (a short exclusive lock,
    waited for at most SWITCH_LOCK_TIMEOUT). False when a model registered meanwhile still
    lacks its index (build_half_indexes again)."""
    # Checked first, outside the lock: a validation scan takes no exclusive lock.
    conn.execute(
        "ALTER TABLE clipdb.images DROP CONSTRAINT IF EXISTS images_embedding_half_nonzero"
    )
    conn.execute(
        "ALTER TABLE clipdb.images ADD CONSTRAINT images_embedding_half_nonzero "
        "CHECK (embedding_half IS NOT NULL AND l2_norm(embedding_half) > 0) NOT VALID"
    )
    conn.execute("ALTER TABLE clipdb.images VALIDATE CONSTRAINT images_embedding_half_nonzero")
    with conn.transaction():
        conn.execute("SELECT set_config('lock_timeout', %s, true)", (SWITCH_LOCK_TIMEOUT,))
        conn.execute("LOCK TABLE clipdb.images IN ACCESS EXCLUSIVE MODE")
        models = list_models(conn)
        if any(not _index_valid(conn, f"{HALF_INDEX_PREFIX}{int(m.model_id)}") for m in models):
            conn.execute("ALTER TABLE clipdb.images DROP CONSTRAINT images_embedding_half_nonzero")
            return False
        conn.execute("DROP TRIGGER images_embedding_half ON clipdb.images")
        conn.execute("DROP FUNCTION clipdb.images_embedding_half()")
        # Drops the old column's HNSW indexes and its CHECK with it.
        conn.execute("ALTER TABLE clipdb.images DROP COLUMN embedding")
        conn.execute("ALTER TABLE clipdb.images RENAME COLUMN embedding_half TO embedding")
        # The validated CHECK proves NOT NULL: no scan under the lock.
        conn.execute("ALTER TABLE clipdb.images ALTER COLUMN embedding SET NOT NULL")
        conn.execute(
            "ALTER TABLE clipdb.images RENAME CONSTRAINT images_embedding_half_nonzero "
            "TO images_embedding_nonzero"
        )
        for model in models:
            conn.execute(
                f"ALTER INDEX clipdb.{HALF_INDEX_PREFIX}{int(model.model_id)} "
                f"RENAME TO {model.index_name}"
            )
    return True


def convert(
    conn: psycopg.Connection[Any],
    batch_rows: int = BATCH_ROWS,
    progress: Callable[[str], None] | None = None,
    after_batch: Callable[[int, int], None] | None = None,
) -> bool:
    """All four steps (autocommit connection); False when there was nothing to convert."""
    if not storage_state(conn).converting:
        return False
    say = progress or (lambda _message: None)

    def batch_done(copied: int, last: int) -> None:
        if copied and copied % (20 * batch_rows) == 0:
            say(f"halfvec storage: {copied} rows copied (up to id {last})")
        if after_batch is not None:
            after_batch(copied, last)

    for model in list_models(conn):
        conn.execute(f"DROP INDEX CONCURRENTLY IF EXISTS clipdb.{model.index_name}")
    copied = fill_batches(conn, batch_rows, batch_done)
    say(f"halfvec storage: {copied} rows copied; building the HNSW index over them")
    for _attempt in range(SWITCH_ATTEMPTS):
        build_half_indexes(conn)
        try:
            if switch(conn):
                break
        except psycopg.errors.LockNotAvailable:
            say("halfvec storage: the table is busy; trying the switch again")
    else:
        raise ClipdbError(
            "halfvec storage: could not take the table's lock for the switch; searches keep "
            "working, run clipdb db upgrade again when it is less busy"
        )
    conn.execute("ANALYZE clipdb.images")
    say("halfvec storage: embeddings are halfvec now")
    return True
