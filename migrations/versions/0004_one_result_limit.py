"""SQL search functions: the same result limit and ef_search rule as the CLI, API and server.

Why: ``clipdb.search(k => 5000)`` ran with pgvector's default ef_search (40), and one HNSW scan
yields at most ef_search rows, so large k silently returned 40 rows; the CLI failed above 1000
with a raw pgvector message. Now every entry point takes k from 1 to 10,000: ef_search defaults
to the CLI's recall-tuned 320, is raised to k up to pgvector's maximum (1000), and beyond it the
scan continues iteratively (relaxed order, re-ranked by exact distance) until k rows came.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01
"""

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

MAX_RESULTS = 10_000  # clipdb.config.MAX_RESULTS
DEFAULT_EF_SEARCH = 320  # clipdb.config.DEFAULT_EF_SEARCH

SEARCH_MODEL = r"""
CREATE OR REPLACE FUNCTION clipdb.search_model(
    p_model_id smallint, p_query vector, k integer DEFAULT 10, ef_search integer DEFAULT NULL)
RETURNS TABLE (rank bigint, id bigint, path text, similarity double precision)
LANGUAGE plpgsql STABLE AS $fn$
DECLARE
    model_dim integer;
    ef integer;
BEGIN
    IF k IS NULL OR k < 1 OR k > {max_results} THEN
        RAISE EXCEPTION 'the number of results must be 1 to {max_results}, not %', k;
    END IF;
    SELECT m.dim INTO model_dim FROM clipdb.models m WHERE m.id = p_model_id;
    IF model_dim IS NULL THEN
        RAISE EXCEPTION 'no clipdb model with id %', p_model_id;
    END IF;
    IF vector_dims(p_query) <> model_dim THEN
        RAISE EXCEPTION 'query has % dimensions, model % has %',
            vector_dims(p_query), p_model_id, model_dim;
    END IF;
    ef := least(1000, greatest(coalesce(ef_search, {default_ef}), least(k, 1000)));
    PERFORM set_config('hnsw.ef_search', ef::text, true);
    IF k > ef THEN
        PERFORM set_config('hnsw.iterative_scan', 'relaxed_order', true);
        PERFORM set_config('hnsw.max_scan_tuples', greatest(20000, 4 * k)::text, true);
    END IF;
    RETURN QUERY EXECUTE format(
        'SELECT row_number() OVER (ORDER BY d, i.id), i.id, i.path, 1 - d '
        'FROM (SELECT i.id, i.path, (i.embedding::vector(%1$s) <=> $1::vector(%1$s)) AS d '
        '      FROM clipdb.images i WHERE i.model_id = %2$s '
        '      ORDER BY i.embedding::halfvec(%1$s) <=> $1::vector(%1$s)::halfvec(%1$s) '
        '      LIMIT $2) i '
        'ORDER BY d, i.id',
        model_dim, p_model_id)
    USING p_query, k;
END
$fn$;
"""

OLD_SEARCH_MODEL = r"""
CREATE OR REPLACE FUNCTION clipdb.search_model(
    p_model_id smallint, p_query vector, k integer DEFAULT 10, ef_search integer DEFAULT NULL)
RETURNS TABLE (rank bigint, id bigint, path text, similarity double precision)
LANGUAGE plpgsql STABLE AS $fn$
DECLARE
    model_dim integer;
BEGIN
    SELECT m.dim INTO model_dim FROM clipdb.models m WHERE m.id = p_model_id;
    IF model_dim IS NULL THEN
        RAISE EXCEPTION 'no clipdb model with id %', p_model_id;
    END IF;
    IF vector_dims(p_query) <> model_dim THEN
        RAISE EXCEPTION 'query has % dimensions, model % has %',
            vector_dims(p_query), p_model_id, model_dim;
    END IF;
    IF ef_search IS NOT NULL THEN
        PERFORM set_config('hnsw.ef_search', ef_search::text, true);
    END IF;
    RETURN QUERY EXECUTE format(
        'SELECT row_number() OVER (ORDER BY d, i.id), i.id, i.path, 1 - d '
        'FROM (SELECT i.id, i.path, (i.embedding::vector(%1$s) <=> $1::vector(%1$s)) AS d '
        '      FROM clipdb.images i WHERE i.model_id = %2$s '
        '      ORDER BY i.embedding::halfvec(%1$s) <=> $1::vector(%1$s)::halfvec(%1$s) LIMIT $2) i '
        'ORDER BY d, i.id',
        model_dim, p_model_id)
    USING p_query, k;
END
$fn$;
"""


def upgrade() -> None:
    op.execute(
        SEARCH_MODEL.replace("{max_results}", str(MAX_RESULTS)).replace(
            "{default_ef}", str(DEFAULT_EF_SEARCH)
        )
    )


def downgrade() -> None:
    op.execute(OLD_SEARCH_MODEL)
