"""The filtered top-k lives once, in SQL: ``clipdb.search_rows``.

Why: the top-k existed twice, as a statement clipdb's Python built and as ``clipdb.search_model``,
with filters only one of them had (``under``, a similarity floor) and parity tested for two
cases. ``clipdb.search_rows`` is now the one definition: Python calls it, and ``search_model``
(so ``search`` and both ``similar``) returns its first four columns. It takes everything a
search narrows by: the metadata filters, ``within``, ``sort``, ``skip`` (the offset), ``under``
(a folder: the exact bytes of its path ending in ``/``, matched as a byte range on
``clipdb.path_key``) and ``min_similarity``; it returns what a result shows (path bytes, date,
camera, place), and each argument is bounded like 0008's.

How it stays fast: the search settings (``hnsw.ef_search``, ``hnsw.iterative_scan``,
``hnsw.max_scan_tuples``) are set inside, in the same call (no round trips), and restored when
it returns (the ``SET`` clauses scope them to the function, so a caller's transaction keeps its
own). The candidate statement is planned per call with the real values (a generic plan cannot
know how selective a folder or a date range is and guesses a sequential scan); it carries only
ids, distances and dates, and the page's other columns are read by id once the page is known.
It names only the filters in use, so the planner sees no dead ``$n IS NULL OR ...`` branches.
When a metadata or folder filter is so selective that the iterative index scan stops short of
the rows wanted, the matching rows are ranked exactly (the planner then uses the date or path
index where that is cheaper).

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-07
"""

import importlib.util
from pathlib import Path
from typing import Any

from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

MAX_RESULTS = 10_000  # clipdb.config.MAX_RESULTS
DEFAULT_EF_SEARCH = 320  # clipdb.config.DEFAULT_EF_SEARCH
MAX_OFFSET = 100_000  # clipdb.filters.MAX_OFFSET
MAX_NEAR_KM = 20100  # clipdb.filters.Near
MAX_NAME = 200
MAX_PATH = 32768

FILTER_TYPES = (
    "timestamptz, timestamptz, text, double precision, double precision, double precision, "
    "double precision, text, integer"
)
SEARCH_ROWS_TYPES = f"smallint, vector, integer, integer, {FILTER_TYPES}, bytea, double precision"

SEARCH_ROWS = rf"""
CREATE FUNCTION clipdb.search_rows(
    p_model_id smallint, p_query vector, k integer DEFAULT 10, ef_search integer DEFAULT NULL,
    after timestamptz DEFAULT NULL, before timestamptz DEFAULT NULL, camera text DEFAULT NULL,
    near_lat double precision DEFAULT NULL, near_lon double precision DEFAULT NULL,
    near_km double precision DEFAULT NULL, within double precision DEFAULT NULL,
    sort text DEFAULT 'relevance', skip integer DEFAULT 0, under bytea DEFAULT NULL,
    min_similarity double precision DEFAULT NULL)
RETURNS TABLE (rank bigint, id bigint, path text, similarity double precision,
    path_bytes bytea, taken_at timestamptz, taken_at_naive boolean, camera_name text,
    lat double precision, lon double precision)
LANGUAGE plpgsql STABLE
-- Scoped to the call: what is set inside is undone on return.
SET hnsw.ef_search = {DEFAULT_EF_SEARCH}
SET hnsw.iterative_scan = 'off'
SET hnsw.max_scan_tuples = 20000
AS $fn$
#variable_conflict use_variable
DECLARE
    model_dim integer;
    ef integer;
    wanted integer;
    narrows boolean;
    under_high bytea;
    conditions text := '';
    statement text;
    ids bigint[];
    distances float8[];
    dates timestamptz[];
BEGIN
    IF p_query IS NULL THEN
        RAISE EXCEPTION 'the query vector is NULL';
    END IF;
    IF vector_norm(p_query) = 0 THEN
        RAISE EXCEPTION 'the query vector is all zeros: it has no direction to compare';
    END IF;
    IF ef_search IS NOT NULL AND ef_search NOT BETWEEN 1 AND 1000 THEN
        RAISE EXCEPTION 'ef_search must be 1 to 1000, not %', ef_search;
    END IF;
    IF length(camera) > {MAX_NAME} THEN
        RAISE EXCEPTION 'camera is at most {MAX_NAME} characters';
    END IF;
    IF k IS NULL OR k < 1 OR k > {MAX_RESULTS} THEN
        RAISE EXCEPTION 'the number of results must be 1 to {MAX_RESULTS}, not %',
            coalesce(k::text, 'NULL');
    END IF;
    IF skip IS NULL OR skip < 0 OR skip > {MAX_OFFSET} THEN
        RAISE EXCEPTION 'skip (the offset) must be 0 to {MAX_OFFSET}, not %',
            coalesce(skip::text, 'NULL');
    END IF;
    IF sort IS NULL OR sort NOT IN ('relevance', 'date', '-date') THEN
        RAISE EXCEPTION 'sort must be relevance, date or -date, not %',
            coalesce(quote_literal(left(sort, 40)), 'NULL');
    END IF;
    IF within IS NOT NULL AND NOT (within BETWEEN 0 AND 2) THEN
        RAISE EXCEPTION 'within must be 0 to 2, not %', within;
    END IF;
    IF min_similarity IS NOT NULL AND NOT (min_similarity BETWEEN -1 AND 1) THEN
        RAISE EXCEPTION 'min_similarity must be -1 to 1, not %', min_similarity;
    END IF;
    IF under IS NOT NULL AND (octet_length(under) NOT BETWEEN 1 AND {MAX_PATH}
            OR get_byte(under, octet_length(under) - 1) <> 47) THEN
        RAISE EXCEPTION 'under is a folder''s path of at most {MAX_PATH} bytes ending in /';
    END IF;
    IF (near_lat IS NULL) <> (near_lon IS NULL) OR (near_lat IS NULL) <> (near_km IS NULL) THEN
        RAISE EXCEPTION 'near_lat, near_lon and near_km go together';
    END IF;
    IF near_lat IS NOT NULL AND (near_lat NOT BETWEEN -90 AND 90
            OR near_lon NOT BETWEEN -180 AND 180
            OR NOT (near_km > 0 AND near_km <= {MAX_NEAR_KM})) THEN
        RAISE EXCEPTION 'near: latitude -90..90, longitude -180..180, km above 0 and at most '
            '{MAX_NEAR_KM}';
    END IF;
    SELECT m.dim INTO model_dim FROM clipdb.models m WHERE m.id = p_model_id;
    IF model_dim IS NULL THEN
        RAISE EXCEPTION 'no clipdb model with id %', coalesce(p_model_id::text, 'NULL');
    END IF;
    IF vector_dims(p_query) <> model_dim THEN
        RAISE EXCEPTION 'query has % dimensions, model % has %',
            vector_dims(p_query), p_model_id, model_dim;
    END IF;

    wanted := k + skip;
    narrows := after IS NOT NULL OR before IS NOT NULL OR camera IS NOT NULL
        OR near_lat IS NOT NULL;
    -- Only the filters in use are written into the statement.
    IF after IS NOT NULL THEN
        conditions := conditions || ' AND i.taken_at >= $3';
    END IF;
    IF before IS NOT NULL THEN
        conditions := conditions || ' AND i.taken_at < $4';
    END IF;
    IF camera IS NOT NULL THEN
        conditions := conditions || ' AND strpos(lower(i.camera), lower($5)) > 0';
    END IF;
    IF near_lat IS NOT NULL THEN
        -- A bounding box the planner can check cheaply, then the haversine distance.
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
    IF min_similarity IS NOT NULL THEN
        conditions := conditions || ' AND (i.embedding::vector(%1$s) <=> $1::vector(%1$s)) <= $11';
    END IF;

    ef := least(1000, greatest(coalesce(ef_search, {DEFAULT_EF_SEARCH}), least(wanted, 1000)));
    PERFORM set_config('hnsw.ef_search', ef::text, true);
    IF wanted > ef OR conditions <> '' THEN
        -- Filters apply after the HNSW scan, and one scan yields at most ef_search rows:
        -- iterative scans go on until enough rows pass. Rows are re-ordered by the exact
        -- distance below, so relaxed order is enough.
        PERFORM set_config('hnsw.iterative_scan', 'relaxed_order', true);
    END IF;
    IF wanted > ef OR narrows OR under IS NOT NULL THEN
        -- A 1% filter needs ~100 tuples scanned per hit: enough for that, bounded.
        PERFORM set_config('hnsw.max_scan_tuples', least(500000, greatest(20000, 4 * wanted,
            CASE WHEN narrows THEN 200 * wanted ELSE 0 END))::text, true);
    END IF;
    -- The index ranks by a halfvec copy (clipdb.model_index_ddl); rows are ordered, filtered
    -- and reported by the exact float32 distance. Candidates go into arrays, not a temporary
    -- table: readers run read-only transactions.
    statement := 'SELECT array_agg(c.id ORDER BY c.d, c.id), '
        'array_agg(c.d ORDER BY c.d, c.id), array_agg(c.taken_at ORDER BY c.d, c.id) FROM ('
        'SELECT i.id, (i.embedding::vector(%1$s) <=> $1::vector(%1$s)) AS d, i.taken_at '
        'FROM clipdb.images i WHERE i.model_id = %2$s' || conditions
        || ' ORDER BY %3$s LIMIT $2) c';
    EXECUTE format(statement, model_dim, p_model_id,
        format('i.embedding::halfvec(%1$s) <=> $1::vector(%1$s)::halfvec(%1$s)', model_dim))
    INTO ids, distances, dates
    USING p_query, wanted, after, before, camera, near_lat, near_lon, near_km, under,
        under_high, 1 - min_similarity;
    IF (narrows OR under IS NOT NULL) AND coalesce(cardinality(ids), 0) < wanted THEN
        -- The iterative scan stopped before enough matches: rank the matching rows exactly.
        EXECUTE format(statement, model_dim, p_model_id, 'd, i.id')
        INTO ids, distances, dates
        USING p_query, wanted, after, before, camera, near_lat, near_lon, near_km, under,
            under_high, 1 - min_similarity;
    END IF;
    RETURN QUERY
    WITH best AS (
        SELECT * FROM unnest(ids, distances, dates) AS h(id, d, taken_at)
    ), kept AS (
        SELECT b.* FROM best b
        WHERE within IS NULL OR b.d <= distances[1] + within + 1e-9
    ), page AS (
        SELECT kept.id, kept.d, row_number() OVER (ORDER BY
            CASE WHEN sort = 'relevance' THEN NULL
                 WHEN kept.taken_at IS NULL THEN 1 ELSE 0 END,
            CASE WHEN sort = 'date' THEN kept.taken_at END ASC,
            CASE WHEN sort = '-date' THEN kept.taken_at END DESC,
            kept.d, kept.id) AS position
        FROM kept
        ORDER BY position OFFSET skip LIMIT k
    )
    SELECT p.position, i.id, i.path, 1 - p.d, i.path_bytes, i.taken_at, i.taken_at_naive,
        i.camera, i.lat, i.lon
    FROM page p JOIN clipdb.images i ON i.id = p.id
    ORDER BY p.position;
END
$fn$;
COMMENT ON FUNCTION clipdb.search_rows({SEARCH_ROWS_TYPES}) IS
    'The top-k of one model (cosine) after every filter clipdb has, with what a result shows; '
    'clipdb.search_model returns its first four columns.';
"""

SEARCH_MODEL = r"""
CREATE OR REPLACE FUNCTION clipdb.search_model(
    p_model_id smallint, p_query vector, k integer DEFAULT 10, ef_search integer DEFAULT NULL,
    {filter_params})
RETURNS TABLE (rank bigint, id bigint, path text, similarity double precision)
LANGUAGE sql STABLE AS $fn$
    SELECT s.rank, s.id, s.path, s.similarity FROM clipdb.search_rows(
        p_model_id, p_query, k, ef_search, after, before, camera, near_lat, near_lon, near_km,
        within, sort, skip) s
$fn$;
"""

GRANT = f"""
DO $do$
BEGIN
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'clipdb_reader') THEN
        GRANT EXECUTE ON FUNCTION clipdb.search_rows({SEARCH_ROWS_TYPES}) TO clipdb_reader;
    END IF;
END
$do$;
"""


def _load(name: str) -> Any:
    path = Path(__file__).with_name(name)
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def upgrade() -> None:
    metadata = _load("0006_photo_metadata.py")
    op.execute(SEARCH_ROWS)
    op.execute(GRANT)
    # search_model was plpgsql; a SQL function of the same signature replaces it.
    op.execute(metadata._sql(SEARCH_MODEL))


def downgrade() -> None:
    bounds, metadata = _load("0008_reader_bounds_model_policy.py"), _load("0006_photo_metadata.py")
    op.execute(bounds._search_model(metadata, checked=True))
    op.execute(f"DROP FUNCTION clipdb.search_rows({SEARCH_ROWS_TYPES})")
