"""Embeddings stored as ``halfvec``; ``clipdb.search_rows`` picks its plan by the filter's size.

Why halfvec storage: a 512-d ``vector`` is 2 KB, so at 1M rows 2.6 GB of embeddings sat in
TOAST, which a cold query reads from disk; a ``halfvec`` row (1 KB) stays inline. Similarities
computed from halfvec are within 2.4e-5 of float32 (bench/halfvec_storage.py) and the HNSW
index already ranked by a halfvec copy (0002). No feature keeps float32: exports carry the
stored halfvec values widened to float32.

How existing databases move: a table of at most ``INLINE_ROWS`` rows is converted here, in the
migration's transaction (``ALTER COLUMN ... TYPE halfvec``: seconds). A larger one gets a
nullable ``embedding_half`` column that a trigger keeps filled for new writes; ``clipdb db
upgrade`` (clipdb.db.storage) then fills it in committed batches by id (resumable), builds
each model's HNSW index over it CONCURRENTLY and switches the columns in one short
transaction. Searches run throughout: the old index serves them until the switch, and
``search_rows`` spells the index expression ``embedding::halfvec(dim)`` for either column type.

Why the plan choice: the HNSW iterative scan returns the first matches it meets, not the
nearest, and under a 1% filter it visits ~100 rows for each one it keeps; ranking the matching
rows exactly is cheaper and exact when they are few. ``search_rows`` asks the planner how many
rows the filters keep (the statistics of the date, camera, latitude and path indexes) and
ranks them exactly below ``2 * sqrt(ef_search * rows)`` (where the exact scan and the filtered
graph walk read about as many rows), else takes a candidate pool from the iterative scan and
re-ranks it exactly. The camera filter (a case-insensitive substring) becomes the list of the
model's matching camera names, read from the new (model_id, lower(camera)) index, which the
planner can estimate and use.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-07
"""

import importlib.util
from pathlib import Path
from typing import Any

from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

INLINE_ROWS = 20_000  # converted in the migration itself; larger tables online (batches)
DEFAULT_EF_SEARCH = 320  # clipdb.config.DEFAULT_EF_SEARCH
POOL_FACTOR = 4  # candidates re-ranked per row wanted on the filtered HNSW plan
MAX_RESULTS = 10_000  # clipdb.config.MAX_RESULTS
MAX_OFFSET = 100_000  # clipdb.filters.MAX_OFFSET
MAX_CAMERAS = 1000  # distinct camera names read to turn the substring into a list

# pg_prewarm reads what a search needs into memory (clipdb.db.prewarm); pg_buffercache says
# what is there (clipdb db status). Both ship with PostgreSQL's contrib; a server without
# them (or a role that may not create them) searches the same, only colder.
EXTENSIONS = """
DO $do$
DECLARE
    name text;
BEGIN
    FOREACH name IN ARRAY ARRAY['pg_prewarm', 'pg_buffercache'] LOOP
        BEGIN
            EXECUTE format('CREATE EXTENSION IF NOT EXISTS %I SCHEMA clipdb', name);
        EXCEPTION WHEN OTHERS THEN
            RAISE NOTICE 'clipdb: % is not available here (%)', name, SQLERRM;
        END;
    END LOOP;
    -- Their functions (evicting buffers, starting workers) are the owner's, not the reader's.
    FOR name IN SELECT p.oid::regprocedure::text FROM pg_proc p
            JOIN pg_depend d ON d.classid = 'pg_proc'::regclass AND d.objid = p.oid
                AND d.deptype = 'e'
            JOIN pg_extension e ON e.oid = d.refobjid
            WHERE e.extname IN ('pg_prewarm', 'pg_buffercache') LOOP
        EXECUTE format('REVOKE ALL ON FUNCTION %s FROM PUBLIC', name);
    END LOOP;
END
$do$;
"""

FILTER_INDEXES = """
CREATE INDEX IF NOT EXISTS images_model_camera ON clipdb.images (model_id, lower(camera));
CREATE INDEX IF NOT EXISTS images_model_lat ON clipdb.images (model_id, lat);
ANALYZE clipdb.images;
"""

CONVERT_INLINE = """
ALTER TABLE clipdb.images DROP CONSTRAINT images_embedding_nonzero;
ALTER TABLE clipdb.images ALTER COLUMN embedding TYPE halfvec USING embedding::halfvec;
ALTER TABLE clipdb.images
    ADD CONSTRAINT images_embedding_nonzero CHECK (l2_norm(embedding) > 0);
"""

# The online route: new writes fill the copy; clipdb.db.storage fills the rest.
PREPARE_ONLINE = """
ALTER TABLE clipdb.images ADD COLUMN embedding_half halfvec;
CREATE FUNCTION clipdb.images_embedding_half() RETURNS trigger LANGUAGE plpgsql AS $fn$
BEGIN
    NEW.embedding_half := NEW.embedding::halfvec;
    RETURN NEW;
END
$fn$;
CREATE TRIGGER images_embedding_half BEFORE INSERT OR UPDATE OF embedding ON clipdb.images
    FOR EACH ROW EXECUTE FUNCTION clipdb.images_embedding_half();
"""


def _load(name: str) -> Any:
    path = Path(__file__).with_name(name)
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# From the argument checks of 0010's function (kept word for word) to the model lookup.
_HEAD_END = "    wanted := k + skip;\n"
_TAIL_START = "    RETURN QUERY\n    WITH best AS ("

BODY = rf"""    wanted := k + skip;
    narrows := after IS NOT NULL OR before IS NOT NULL OR camera IS NOT NULL
        OR near_lat IS NOT NULL OR under IS NOT NULL;
    -- Only the filters in use are written into the statement.
    IF after IS NOT NULL THEN
        conditions := conditions || ' AND i.taken_at >= $3';
    END IF;
    IF before IS NOT NULL THEN
        conditions := conditions || ' AND i.taken_at < $4';
    END IF;
    IF camera IS NOT NULL THEN
        -- The model's camera names containing the text (a skip scan of the camera index): a
        -- list the planner can estimate from the index statistics and look up.
        SELECT array_agg(c.name) FILTER (WHERE strpos(c.name, lower(camera)) > 0), count(*)
        INTO cameras, camera_names
        FROM (WITH RECURSIVE names(name) AS (
                SELECT min(lower(i.camera)) FROM clipdb.images i WHERE i.model_id = p_model_id
                UNION ALL
                SELECT (SELECT min(lower(i.camera)) FROM clipdb.images i
                        WHERE i.model_id = p_model_id AND lower(i.camera) > n.name)
                FROM names n WHERE n.name IS NOT NULL)
              SELECT n.name FROM names n WHERE n.name IS NOT NULL LIMIT {MAX_CAMERAS + 1}) c;
        IF camera_names > {MAX_CAMERAS} THEN
            conditions := conditions || ' AND strpos(lower(i.camera), lower($5)) > 0';
        ELSE
            conditions := conditions || ' AND lower(i.camera) = ANY($12)';
        END IF;
    END IF;
    IF near_lat IS NOT NULL THEN
        -- A bounding box the latitude index serves, then the haversine distance.
        conditions := conditions || ' AND i.lat BETWEEN $6 - $8 / 111.0 AND $6 + $8 / 111.0 '
            'AND 2 * 6371.0088 * asin(least(1.0, sqrt(sin(radians(i.lat - $6) / 2) ^ 2 '
            '+ cos(radians($6)) * cos(radians(i.lat)) * sin(radians(i.lon - $7) / 2) ^ 2))) <= $8';
    END IF;
    IF under IS NOT NULL THEN
        -- Keys starting with the folder's bytes: a range the (model_id, path_key) index serves.
        under_high := substring(under FROM 1 FOR octet_length(under) - 1) || '\x30'::bytea;
        conditions := conditions || ' AND clipdb.path_key(i.path, i.path_bytes) >= $9 '
            'AND clipdb.path_key(i.path, i.path_bytes) < $10';
    END IF;

    ef := least(1000, greatest(coalesce(ef_search, {DEFAULT_EF_SEARCH}), least(wanted, 1000)));
    pool := wanted;
    IF narrows THEN
        -- How many rows the filters keep, as the planner estimates it from the indexes.
        EXECUTE format('EXPLAIN (FORMAT JSON) SELECT 1 FROM clipdb.images i '
            'WHERE i.model_id = %s', p_model_id) || conditions
        INTO plan
        USING p_query, wanted, after, before, camera, near_lat, near_lon, near_km, under,
            under_high, NULL::float8, cameras;
        matching := (plan -> 0 -> 'Plan' ->> 'Plan Rows')::float8;
        SELECT greatest(c.reltuples, 1) INTO total FROM pg_class c
            WHERE c.oid = 'clipdb.images'::regclass;
        exact := matching <= sqrt(ef::float8 * total);
        IF exact THEN
            -- Ordered by the halfvec query, re-ranked by the float32 one: a margin for ties.
            pool := least({POOL_FACTOR} * wanted, {MAX_RESULTS + MAX_OFFSET});
        ELSE
            -- The matches the first ef_search candidates hold (they come sorted), up to 4 per
            -- row wanted: asking for more starts another round of the graph walk.
            pool := least(greatest(wanted, least({POOL_FACTOR} * wanted,
                floor(ef * matching / total)::integer)), {MAX_RESULTS + MAX_OFFSET});
        END IF;
    END IF;
    IF min_similarity IS NOT NULL THEN
        conditions := conditions || ' AND (i.embedding::vector(%1$s) <=> $1::vector(%1$s)) <= $11';
    END IF;

    PERFORM set_config('hnsw.ef_search', ef::text, true);
    IF NOT exact AND (pool > ef OR conditions <> '') THEN
        -- Filters apply after the HNSW scan, and one scan yields at most ef_search rows:
        -- iterative scans go on until enough rows pass. The pool is re-ranked by the exact
        -- distance below, so relaxed order is enough.
        PERFORM set_config('hnsw.iterative_scan', 'relaxed_order', true);
        PERFORM set_config('hnsw.max_scan_tuples', least(500000, greatest(20000, 4 * pool,
            CASE WHEN narrows THEN (2 * pool * total / greatest(matching, 1))::bigint
                 ELSE 0 END))::text, true);
    END IF;
    -- The candidates (ordered by the index's halfvec distance, or exactly when the filter is
    -- narrow) are re-ranked by the distance to the float32 query. They go into arrays, not a
    -- temporary table: readers run read-only transactions.
    statement := 'SELECT array_agg(c.id ORDER BY c.d, c.id), '
        'array_agg(c.d ORDER BY c.d, c.id), array_agg(c.taken_at ORDER BY c.d, c.id) FROM ('
        'SELECT p.id, (p.e::vector(%1$s) <=> $1::vector(%1$s)) AS d, p.taken_at FROM ('
        -- The exact distance only for the pool: the rows the filters keep are only ordered.
        'SELECT i.id, i.embedding AS e, i.taken_at '
        'FROM clipdb.images i WHERE i.model_id = %2$s' || conditions
        || ' ORDER BY %3$s LIMIT $13) p ORDER BY d, p.id LIMIT $2) c';
    EXECUTE format(statement, model_dim, p_model_id, format(
        CASE WHEN exact
            -- "+ 0": an order the HNSW index cannot serve, so the filter's index is used.
            THEN '(i.embedding::halfvec(%1$s) <=> $1::vector(%1$s)::halfvec(%1$s)) + 0, i.id'
            ELSE 'i.embedding::halfvec(%1$s) <=> $1::vector(%1$s)::halfvec(%1$s)' END,
        model_dim))
    INTO ids, distances, dates
    USING p_query, wanted, after, before, camera, near_lat, near_lon, near_km, under,
        under_high, 1 - min_similarity, cameras, pool;
    IF narrows AND NOT exact AND coalesce(cardinality(ids), 0) < wanted THEN
        -- The iterative scan stopped before enough matches: rank the matching rows exactly.
        EXECUTE format(statement, model_dim, p_model_id,
            format('(i.embedding::vector(%1$s) <=> $1::vector(%1$s)), i.id', model_dim))
        INTO ids, distances, dates
        USING p_query, wanted, after, before, camera, near_lat, near_lon, near_km, under,
            under_high, 1 - min_similarity, cameras, wanted;
    END IF;
"""

DECLARATIONS_OLD = "    conditions text := '';\n"
DECLARATIONS_NEW = """    conditions text := '';
    pool integer;
    cameras text[];
    camera_names bigint;
    plan json;
    matching float8;
    total float8;
    exact boolean := false;
"""


def search_rows_sql(topk: Any) -> str:
    """0010's ``search_rows`` (checks and result page unchanged) with this plan choice."""
    sql = topk.SEARCH_ROWS.replace(
        "CREATE FUNCTION clipdb.search_rows(", "CREATE OR REPLACE FUNCTION clipdb.search_rows("
    )
    head, rest = sql.split(_HEAD_END, 1)
    _, tail = rest.split(_TAIL_START, 1)
    head = head.replace(DECLARATIONS_OLD, DECLARATIONS_NEW, 1)
    # VOLATILE: the estimate is an EXPLAIN, which a STABLE function may not run. The function
    # still writes nothing.
    head = head.replace("LANGUAGE plpgsql STABLE\n", "LANGUAGE plpgsql VOLATILE\n", 1)
    assert "LANGUAGE plpgsql VOLATILE" in head
    assert DECLARATIONS_NEW in head
    return head + BODY + _TAIL_START + tail


def _small(bind: Any) -> bool:
    row = bind.exec_driver_sql(
        f"SELECT count(*) FROM (SELECT FROM clipdb.images LIMIT {INLINE_ROWS + 1}) s"
    ).fetchone()
    return int(row[0]) <= INLINE_ROWS


def upgrade() -> None:
    topk = _load("0010_one_topk.py")
    op.execute(search_rows_sql(topk))
    op.execute(FILTER_INDEXES)
    op.execute(EXTENSIONS)
    if _small(op.get_bind()):
        op.execute(CONVERT_INLINE)
    else:
        op.execute(PREPARE_ONLINE)


def downgrade() -> None:
    topk = _load("0010_one_topk.py")
    op.execute(f"DROP FUNCTION clipdb.search_rows({topk.SEARCH_ROWS_TYPES}) CASCADE")
    op.execute(topk.SEARCH_ROWS)
    op.execute(topk.GRANT)
    op.execute(_load("0006_photo_metadata.py")._sql(topk.SEARCH_MODEL))
    op.execute("DROP EXTENSION IF EXISTS pg_buffercache")
    op.execute("DROP EXTENSION IF EXISTS pg_prewarm")
    op.execute("DROP INDEX IF EXISTS clipdb.images_model_camera")
    op.execute("DROP INDEX IF EXISTS clipdb.images_model_lat")
    op.execute("DROP TRIGGER IF EXISTS images_embedding_half ON clipdb.images")
    op.execute("DROP FUNCTION IF EXISTS clipdb.images_embedding_half()")
    op.execute("ALTER TABLE clipdb.images DROP COLUMN IF EXISTS embedding_half")
    # Back to float32 (a rewrite of the table: downgrades are offline).
    op.execute("ALTER TABLE clipdb.images DROP CONSTRAINT images_embedding_nonzero")
    op.execute(
        "ALTER TABLE clipdb.images ALTER COLUMN embedding TYPE vector USING embedding::vector"
    )
    op.execute(
        "ALTER TABLE clipdb.images "
        "ADD CONSTRAINT images_embedding_nonzero CHECK (vector_norm(embedding) > 0)"
    )
