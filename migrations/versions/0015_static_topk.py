"""An unfiltered ``clipdb.search_rows`` runs one plan-cached statement per model.

Why: an unfiltered search spent most of its overhead over a bare ``ORDER BY embedding <=> q
LIMIT k`` planning its dynamic candidate statement on every call (measured at 100k rows as
backend CPU per call: ~0.65 ms over the bare query, ~0.4 ms of it planning). A static
statement in PL/pgSQL keeps its plan for the session, but only if the plan is generic, and a
generic plan of ``WHERE model_id = $1`` cannot use the model's partial HNSW index (``WHERE
model_id = 3``). So each model gets its own function, ``clipdb.topk_model_<id>``, whose
statement names the model's id and dimension as constants and whose plan is generic (forced:
its ``LIMIT`` is a parameter, which the planner would otherwise keep re-planning for).

What it returns is what ``search_rows`` returns for the same call without filters: the
``k + skip`` nearest by the index's halfvec distance, re-ranked by the exact distance, one hit
per file (a video's nearest frame), ranks counted before the offset. ``search_rows`` takes
this path when the call has no filter, no similarity floor, no ``within``, relevance order and
``k + skip`` at most 1000 (one graph walk, no iterative scan); every other call plans as
before.

The functions follow the models: a trigger on ``clipdb.models`` creates one when a model is
registered and drops it when the model is deleted (as the migration's owner, so a writer needs
no right to create functions); this migration creates them for the models already there.
``search_rows`` checks that the model's function exists and plans as before when it does not.

``clipdb.search`` also finds its model without calling ``choose_model`` when no model is named
and exactly one model has the query's dimension (what ``choose_model`` returns then): the call
was a fifth of the remaining overhead. Any other case goes through ``choose_model`` as before.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-07
"""

import importlib.util
from pathlib import Path
from typing import Any

from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None

MAX_STATIC = 1000  # k + skip on the static path: at most one graph walk (ef_search <= 1000)
DEFAULT_EF_SEARCH = 320  # clipdb.config.DEFAULT_EF_SEARCH

TOPK_DDL = rf"""
CREATE OR REPLACE FUNCTION clipdb.model_topk_ddl(p_model_id smallint, p_dim integer)
RETURNS text LANGUAGE plpgsql STABLE AS $fn$
DECLARE
    -- The argument's type, qualified: the trigger runs with a search_path of pg_catalog only.
    vector_type text := (SELECT format('%I.vector', n.nspname) FROM pg_extension e
        JOIN pg_namespace n ON n.oid = e.extnamespace WHERE e.extname = 'vector');
BEGIN
    IF p_model_id IS NULL OR p_model_id < 1 OR p_dim IS NULL OR p_dim NOT BETWEEN 1 AND 2000 THEN
        RAISE EXCEPTION 'clipdb.model_topk_ddl: a model id from 1 and 1 to 2000 dimensions';
    END IF;
    -- Only integers and a quoted schema name are written into the text.
    RETURN format($ddl$
CREATE OR REPLACE FUNCTION clipdb.topk_model_%1$s(p_query %3$s, k integer, skip integer)
RETURNS TABLE (rank bigint, id bigint, path text, similarity double precision,
    path_bytes bytea, taken_at timestamptz, taken_at_naive boolean, camera_name text,
    lat double precision, lon double precision, frame_time double precision)
LANGUAGE plpgsql STABLE
-- One generic plan for the session: the model's partial HNSW index matches its constants.
SET plan_cache_mode = force_generic_plan
-- A generic plan guesses LIMIT k + skip as a tenth of the rows, so on a small table it chose
-- to read and sort every row (2,000 rows: a test caught it). The index is what this statement
-- is for, at any size: every other way to order the rows is a sort of them, so with sorts
-- and sequential scans disabled the plan with the fewest disabled steps is the index scan
-- (the sorts of the pool's few rows stay: nothing else can do them).
SET enable_seqscan = off
SET enable_sort = off
AS $topk$
#variable_conflict use_variable
BEGIN
    IF p_query IS NULL OR vector_dims(p_query) <> %2$s OR vector_norm(p_query) = 0
            OR k IS NULL OR skip IS NULL OR k < 1 OR skip < 0 OR k + skip > {MAX_STATIC} THEN
        RAISE EXCEPTION 'clipdb.topk_model_%1$s: a non-zero %2$s-dimensional query, k from 1, '
            'skip from 0, k + skip at most {MAX_STATIC}';
    END IF;
    RETURN QUERY
    WITH pool AS (
        -- The rows' own columns come along: the heap tuple is read here anyway.
        SELECT i.id, (i.embedding::vector(%2$s) <=> p_query::vector(%2$s)) AS d,
            clipdb.path_key(i.path, i.path_bytes) AS key, i.path, i.path_bytes, i.taken_at,
            i.taken_at_naive, i.camera, i.lat, i.lon, i.frame_time
        FROM clipdb.images i WHERE i.model_id = %1$s
        ORDER BY i.embedding::halfvec(%2$s) <=> p_query::vector(%2$s)::halfvec(%2$s)
        LIMIT k + skip
    ), best AS (
        -- One hit per file: a video's frames collapse to the nearest one.
        SELECT DISTINCT ON (pool.key) * FROM pool ORDER BY pool.key, pool.d, pool.id
    )
    SELECT row_number() OVER (ORDER BY b.d, b.id), b.id, b.path, 1 - b.d, b.path_bytes,
        b.taken_at, b.taken_at_naive, b.camera, b.lat, b.lon, b.frame_time
    FROM best b ORDER BY b.d, b.id OFFSET skip LIMIT k;
END
$topk$;
$ddl$, p_model_id, p_dim, vector_type);
END
$fn$;

-- As the migration's owner: registering a model needs no right to create functions.
CREATE OR REPLACE FUNCTION clipdb.models_topk() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
BEGIN
    IF TG_OP = 'INSERT' THEN
        EXECUTE clipdb.model_topk_ddl(NEW.id, NEW.dim);
        RETURN NEW;
    END IF;
    EXECUTE format('DROP FUNCTION IF EXISTS clipdb.%I',
        'topk_model_' || OLD.id);
    RETURN OLD;
END
$fn$;
REVOKE ALL ON FUNCTION clipdb.models_topk() FROM PUBLIC;
REVOKE ALL ON FUNCTION clipdb.model_topk_ddl(smallint, integer) FROM PUBLIC;
CREATE TRIGGER models_topk AFTER INSERT OR DELETE ON clipdb.models
    FOR EACH ROW EXECUTE FUNCTION clipdb.models_topk();

DO $do$
DECLARE
    m record;
BEGIN
    FOR m IN SELECT id, dim FROM clipdb.models LOOP
        EXECUTE clipdb.model_topk_ddl(m.id, m.dim);
    END LOOP;
END
$do$;
"""

# Inserted after the argument checks and the model lookup of 0012's search_rows.
STATIC_PATH_BEFORE = "    wanted := k + skip;\n"
STATIC_PATH = rf"""    IF after IS NULL AND before IS NULL AND camera IS NULL AND near_lat IS NULL
            AND under IS NULL AND min_similarity IS NULL AND within IS NULL
            AND sort = 'relevance' AND k + skip <= {MAX_STATIC}
            AND to_regproc('clipdb.topk_model_' || p_model_id) IS NOT NULL THEN
        -- Unfiltered: the model's plan-cached statement (one graph walk of ef_search).
        ef := least(1000, greatest(coalesce(ef_search, {DEFAULT_EF_SEARCH}), k + skip));
        IF ef <> {DEFAULT_EF_SEARCH} THEN
            PERFORM set_config('hnsw.ef_search', ef::text, true);
        END IF;
        RETURN QUERY EXECUTE format('SELECT * FROM clipdb.%I($1, $2, $3)',
            'topk_model_' || p_model_id) USING p_query, k, skip;
        RETURN;
    END IF;
"""


def _load(name: str) -> Any:
    path = Path(__file__).with_name(name)
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def search_rows_0012() -> str:
    topk, plans = _load("0010_one_topk.py"), _load("0011_halfvec_storage.py")
    return str(_load("0012_video_frames.py").search_rows_with_frames(plans.search_rows_sql(topk)))


def search_rows_sql() -> str:
    """0012's ``search_rows`` with the static path in front of its plan choice."""
    sql = search_rows_0012()
    assert sql.count(STATIC_PATH_BEFORE) == 1, "0015: search_rows does not have its plan start"
    return sql.replace(STATIC_PATH_BEFORE, STATIC_PATH + STATIC_PATH_BEFORE)


SEARCH_CHOICE_OLD = """#variable_conflict use_variable
BEGIN
"""
SEARCH_CHOICE_NEW = """#variable_conflict use_variable
DECLARE
    chosen smallint;
    candidates bigint;
BEGIN
"""
SEARCH_CALL_OLD = """    RETURN QUERY SELECT s.* FROM clipdb.search_model(
        (clipdb.choose_model(model, pretrained, vector_dims(query))).id, query, k, ef_search,
"""
SEARCH_CALL_NEW = """    IF model IS NULL AND pretrained IS NULL THEN
        -- One model of the query's dimension is the one choose_model returns (its further
        -- steps only break ties), found here without its call.
        SELECT min(m.id), count(*) INTO chosen, candidates FROM clipdb.models m
            WHERE m.dim = vector_dims(query);
    END IF;
    IF candidates IS DISTINCT FROM 1 THEN
        chosen := (clipdb.choose_model(model, pretrained, vector_dims(query))).id;
    END IF;
    RETURN QUERY SELECT s.* FROM clipdb.search_model(chosen, query, k, ef_search,
"""


def search_0008() -> str:
    """0008's ``clipdb.search`` (the vector form), as it is up to this revision."""
    functions = _load("0006_photo_metadata.py")._sql(
        _load("0008_reader_bounds_model_policy.py").SEARCH
    )
    start = functions.index("CREATE OR REPLACE FUNCTION clipdb.search(")
    return functions[start : functions.index("CREATE OR REPLACE FUNCTION clipdb.similar(")]


def search_sql() -> str:
    """0008's ``clipdb.search`` with the one-model case found without ``choose_model``."""
    sql = search_0008()
    for old, new in ((SEARCH_CHOICE_OLD, SEARCH_CHOICE_NEW), (SEARCH_CALL_OLD, SEARCH_CALL_NEW)):
        assert sql.count(old) == 1, f"0015: clipdb.search delta does not apply: {old!r}"
        sql = sql.replace(old, new)
    return sql


def upgrade() -> None:
    op.execute(TOPK_DDL)
    op.execute(search_rows_sql())
    op.execute(search_sql())


def downgrade() -> None:
    op.execute(search_0008())
    op.execute(search_rows_0012())
    op.execute("DROP TRIGGER models_topk ON clipdb.models")
    op.execute("DROP FUNCTION clipdb.models_topk()")
    op.execute(
        """
DO $do$
DECLARE
    m record;
BEGIN
    FOR m IN SELECT id FROM clipdb.models LOOP
        EXECUTE format('DROP FUNCTION IF EXISTS clipdb.%I',
            'topk_model_' || m.id);
    END LOOP;
END
$do$;
"""
    )
    op.execute("DROP FUNCTION clipdb.model_topk_ddl(smallint, integer)")
