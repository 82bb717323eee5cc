"""Initial schema: models, images, per-model HNSW indexes, SQL search functions, reader role.

Why this shape: several CLIP models (different dimensions) share one ``images`` table with an
untyped ``vector`` column. Each model gets a *partial expression* HNSW index
``((embedding::vector(dim)) vector_cosine_ops) WHERE model_id = <id>`` created when the model is
registered. Queries write the model's integer id into the SQL text (it comes from our own
registry, never from user input), so even a prepared statement's generic plan matches the
index predicate; a bound ``model_id = $1`` would make PostgreSQL fall back to a sequential scan.

Revision ID: 0001
Revises:
Create Date: 2026-11-27
"""

from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

UPGRADE_SQL = r"""
CREATE EXTENSION IF NOT EXISTS vector;

CREATE TABLE clipdb.models (
    id smallint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    architecture text NOT NULL,
    pretrained text NOT NULL,
    dim integer NOT NULL CHECK (dim BETWEEN 1 AND 2000),
    created_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (architecture, pretrained)
);
COMMENT ON TABLE clipdb.models IS
    'One row per CLIP model (open_clip architecture + pretrained tag or checkpoint identity).';

CREATE TABLE clipdb.images (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    model_id smallint NOT NULL REFERENCES clipdb.models (id) ON DELETE CASCADE,
    path text NOT NULL,
    sha256 bytea NOT NULL CHECK (octet_length(sha256) = 32),
    size bigint NOT NULL CHECK (size >= 0),
    mtime_ns bigint NOT NULL,
    width integer NOT NULL CHECK (width > 0),
    height integer NOT NULL CHECK (height > 0),
    embedding vector NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (model_id, path)
);
COMMENT ON TABLE clipdb.images IS
    'One row per (model, image file): absolute path, file identity, normalised embedding.';
COMMENT ON COLUMN clipdb.images.embedding IS
    'L2-normalised CLIP image embedding; its dimension is clipdb.models.dim.';
-- Moved/renamed files are found by content hash.
CREATE INDEX images_model_sha256 ON clipdb.images (model_id, sha256);

-- Registers a model and creates its HNSW cosine index. Returns the model id.
CREATE FUNCTION clipdb.register_model(p_architecture text, p_pretrained text, p_dim integer)
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
    EXECUTE format(
        'CREATE INDEX %I ON clipdb.images USING hnsw ((embedding::vector(%s)) vector_cosine_ops) '
        'WHERE model_id = %s',
        'images_hnsw_model_' || found_id, p_dim, found_id);
    RETURN found_id;
END
$fn$;

-- Which model a call means: by name (and tag), or the only model of the query's dimension.
CREATE FUNCTION clipdb.resolve_model(p_model text, p_pretrained text, p_dim integer)
RETURNS clipdb.models LANGUAGE plpgsql STABLE AS $fn$
DECLARE
    matches clipdb.models[];
BEGIN
    SELECT array_agg(m ORDER BY m.id) INTO matches FROM clipdb.models m
        WHERE (p_model IS NULL OR m.architecture = p_model)
          AND (p_pretrained IS NULL OR m.pretrained = p_pretrained)
          AND (p_dim IS NULL OR m.dim = p_dim);
    IF matches IS NULL THEN
        RAISE EXCEPTION 'no clipdb model matches model=% pretrained=% dim=%; see clipdb.models',
            p_model, p_pretrained, p_dim;
    END IF;
    IF cardinality(matches) > 1 THEN
        RAISE EXCEPTION 'several clipdb models match model=% pretrained=% dim=%; name one',
            p_model, p_pretrained, p_dim;
    END IF;
    RETURN matches[1];
END
$fn$;

-- Top-k over one model's index. Dynamic SQL so that each call is planned with the literal
-- model id and dimension, which is what lets the partial HNSW index serve it.
CREATE FUNCTION clipdb.search_model(
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
        '      ORDER BY i.embedding::vector(%1$s) <=> $1::vector(%1$s) LIMIT $2) i '
        'ORDER BY d, i.id',
        model_dim, p_model_id)
    USING p_query, k;
END
$fn$;

CREATE FUNCTION clipdb.search(
    query vector, k integer DEFAULT 10, model text DEFAULT NULL, pretrained text DEFAULT NULL,
    ef_search integer DEFAULT NULL)
RETURNS TABLE (rank bigint, id bigint, path text, similarity double precision)
LANGUAGE sql STABLE AS $fn$
    SELECT s.* FROM clipdb.search_model(
        (clipdb.resolve_model(model, pretrained, vector_dims(query))).id, query, k, ef_search) s
$fn$;
COMMENT ON FUNCTION clipdb.search(vector, integer, text, text, integer) IS
    'Top-k images most similar to a query embedding (cosine); similarity in [-1, 1].';

CREATE FUNCTION clipdb.similar(
    image_id bigint, k integer DEFAULT 10, ef_search integer DEFAULT NULL)
RETURNS TABLE (rank bigint, id bigint, path text, similarity double precision)
LANGUAGE plpgsql STABLE AS $fn$
DECLARE
    row_model smallint;
    row_embedding vector;
BEGIN
    SELECT i.model_id, i.embedding INTO row_model, row_embedding
        FROM clipdb.images i WHERE i.id = image_id;
    IF row_model IS NULL THEN
        RAISE EXCEPTION 'no indexed image with id %', image_id;
    END IF;
    RETURN QUERY SELECT * FROM clipdb.search_model(row_model, row_embedding, k, ef_search);
END
$fn$;

CREATE FUNCTION clipdb.similar(
    image_path text, k integer DEFAULT 10, model text DEFAULT NULL,
    pretrained text DEFAULT NULL, ef_search integer DEFAULT NULL)
RETURNS TABLE (rank bigint, id bigint, path text, similarity double precision)
LANGUAGE plpgsql STABLE AS $fn$
#variable_conflict use_variable
DECLARE
    ids bigint[];
BEGIN
    SELECT array_agg(i.id) INTO ids FROM clipdb.images i JOIN clipdb.models m ON m.id = i.model_id
        WHERE i.path = image_path
          AND (model IS NULL OR m.architecture = model)
          AND (pretrained IS NULL OR m.pretrained = pretrained);
    IF ids IS NULL THEN
        RAISE EXCEPTION 'image % is not indexed', image_path;
    END IF;
    IF cardinality(ids) > 1 THEN
        RAISE EXCEPTION 'image % is indexed by several models; pass model', image_path;
    END IF;
    RETURN QUERY SELECT * FROM clipdb.similar(ids[1], k, ef_search);
END
$fn$;

REVOKE ALL ON FUNCTION clipdb.register_model(text, text, integer) FROM PUBLIC;

-- A role for other applications: may read and search, may not write.
DO $do$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'clipdb_reader') THEN
        CREATE ROLE clipdb_reader LOGIN;
    END IF;
EXCEPTION WHEN insufficient_privilege THEN
    RAISE NOTICE 'clipdb: no CREATEROLE privilege, role clipdb_reader not created';
END
$do$;
DO $do$
BEGIN
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'clipdb_reader') THEN
        GRANT USAGE ON SCHEMA clipdb TO clipdb_reader;
        -- alembic_version too: every command checks the schema revision before it reads.
        GRANT SELECT ON clipdb.models, clipdb.images, clipdb.alembic_version TO clipdb_reader;
        GRANT EXECUTE ON FUNCTION clipdb.search(vector, integer, text, text, integer),
            clipdb.similar(bigint, integer, integer),
            clipdb.similar(text, integer, text, text, integer),
            clipdb.search_model(smallint, vector, integer, integer),
            clipdb.resolve_model(text, text, integer) TO clipdb_reader;
    END IF;
END
$do$;
"""

DOWNGRADE_SQL = r"""
DROP FUNCTION clipdb.similar(text, integer, text, text, integer);
DROP FUNCTION clipdb.similar(bigint, integer, integer);
DROP FUNCTION clipdb.search(vector, integer, text, text, integer);
DROP FUNCTION clipdb.search_model(smallint, vector, integer, integer);
DROP FUNCTION clipdb.resolve_model(text, text, integer);
DROP FUNCTION clipdb.register_model(text, text, integer);
DROP TABLE clipdb.images;
DROP TABLE clipdb.models;
DO $do$
BEGIN
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'clipdb_reader') THEN
        REVOKE ALL ON SCHEMA clipdb FROM clipdb_reader;
    END IF;
END
$do$;
"""


def upgrade() -> None:
    op.execute(UPGRADE_SQL)


def downgrade() -> None:
    op.execute(DOWNGRADE_SQL)
