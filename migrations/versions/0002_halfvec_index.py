"""Per-model HNSW indexes over halfvec (16-bit) copies of the embeddings.

Why: bench/results/SCALE.md measured, at 1M x 512, the same recall@10 for a halfvec index as
for a float32 one (0.975 vs 0.973 at ef_search 320), half the index size (1.3 vs 2.6 GB),
about half the build time (8.5 vs 15.6 min on 2 cores) and lower latency (p50 10.8 vs 14.2 ms).
The ``embedding`` column stays float32 ``vector``: the index only ranks candidates; reported
similarities, thresholds and exports use the exact stored embedding.

Index DDL now lives in one function, ``clipdb.model_index_ddl``, used by ``register_model``,
by bulk loads (``clipdb.store.bulk_load``) and by this migration, so the definition that
queries must match is written once. Upgrading rebuilds every model's index (minutes per
million rows).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

INDEX_DDL_FUNCTION = r"""
CREATE OR REPLACE FUNCTION clipdb.model_index_ddl(p_model_id smallint, p_dim integer)
RETURNS text LANGUAGE sql IMMUTABLE AS $fn$
    SELECT format(
        'CREATE INDEX %I ON clipdb.images USING hnsw ((embedding::{kind}(%s)) {kind}_cosine_ops) '
        'WHERE model_id = %s',
        'images_hnsw_model_' || p_model_id, p_dim, p_model_id)
$fn$;
"""

REGISTER_MODEL = r"""
CREATE OR REPLACE FUNCTION clipdb.register_model(
    p_architecture text, p_pretrained text, p_dim integer)
RETURNS smallint LANGUAGE plpgsql AS $fn$
DECLARE
    found_id smallint;
    found_dim integer;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('clipdb.register_model'));
    SELECT id, dim INTO found_id, found_dim FROM clipdb.models
        WHERE architecture = p_architecture AND pretrained = p_pretrained;
    IF found_id IS NOT NULL THEN
        IF found_dim <> p_dim THEN
            RAISE EXCEPTION 'model % (%) is registered with dimension %, not %',
                p_architecture, p_pretrained, found_dim, p_dim;
        END IF;
        RETURN found_id;
    END IF;
    INSERT INTO clipdb.models (architecture, pretrained, dim)
        VALUES (p_architecture, p_pretrained, p_dim) RETURNING id INTO found_id;
    EXECUTE clipdb.model_index_ddl(found_id, p_dim);
    RETURN found_id;
END
$fn$;
REVOKE ALL ON FUNCTION clipdb.register_model(text, text, integer) FROM PUBLIC;
"""

# Candidates come from the index ({kind} distance); they are ranked and reported by the exact
# float32 distance.
SEARCH_MODEL = r"""
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
        '      ORDER BY i.embedding::{kind}(%1$s) <=> $1::vector(%1$s)::{kind}(%1$s) LIMIT $2) i '
        'ORDER BY d, i.id',
        model_dim, p_model_id)
    USING p_query, k;
END
$fn$;
"""

REBUILD_INDEXES = r"""
DO $do$
DECLARE
    m record;
BEGIN
    FOR m IN SELECT id, dim FROM clipdb.models ORDER BY id LOOP
        EXECUTE format('DROP INDEX IF EXISTS clipdb.%I', 'images_hnsw_model_' || m.id);
        EXECUTE clipdb.model_index_ddl(m.id, m.dim);
    END LOOP;
END
$do$;
"""


def _apply(kind: str) -> None:
    for sql in (INDEX_DDL_FUNCTION, REGISTER_MODEL, SEARCH_MODEL, REBUILD_INDEXES):
        op.execute(sql.replace("{kind}", kind))


def upgrade() -> None:
    _apply("halfvec")


def downgrade() -> None:
    _apply("vector")
    op.execute("DROP FUNCTION clipdb.model_index_ddl(smallint, integer)")
