"""The default model lives in the database, so every client means the same one.

Why: with two models indexed (a library being re-indexed with a multilingual or SigLIP 2
model), which one a command means when none is named was decided per client: the CLI and the
server by ``CLIPDB_MODEL`` or ViT-B-32, SQL by ``clipdb.choose_model``'s built-in ViT-B-32. Now
``clipdb models default NAME`` stores one model in ``clipdb.default_model`` (one row at most)
and both sides read it: ``clipdb.choose_model`` with no ``model =>`` and several models with rows
picks it, as ``clipdb.search.choose_model`` does for the CLI, the server and ``ClipDB``. Dropping
the model (its rows go with it) clears the default (ON DELETE CASCADE). The reader role may read
it, never change it.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-07
"""

import importlib.util
from pathlib import Path

from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None

MAX_NAME = 200  # 0008's bound on a model or pretrained argument
MAX_PATH = 32768  # 0008's bound on an image path argument
DEFAULT_ARCHITECTURE = "ViT-B-32"  # clipdb.config.DEFAULT_MODEL
STANDARD_WEIGHTS = "openai"  # clipdb.models.STANDARD_WEIGHTS

TABLE = """
CREATE TABLE clipdb.default_model (
    one boolean PRIMARY KEY DEFAULT true CHECK (one),
    model_id smallint NOT NULL REFERENCES clipdb.models (id) ON DELETE CASCADE,
    set_at timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE clipdb.default_model IS
    'The model a client means when none is named (clipdb models default NAME); one row at most.';
DO $do$
BEGIN
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'clipdb_reader') THEN
        GRANT SELECT ON clipdb.default_model TO clipdb_reader;
    END IF;
END
$do$;
"""

CHOOSE_MODEL = rf"""
CREATE OR REPLACE FUNCTION clipdb.choose_model(
    p_model text, p_pretrained text, p_dim integer, p_path text DEFAULT NULL)
RETURNS clipdb.models LANGUAGE plpgsql STABLE AS $fn$
DECLARE
    matches clipdb.models[];
    picked clipdb.models[];
    asked text;
    names text;
BEGIN
    IF length(p_model) > {MAX_NAME} OR length(p_pretrained) > {MAX_NAME} THEN
        RAISE EXCEPTION 'model and pretrained are names of at most {MAX_NAME} characters';
    END IF;
    IF length(p_path) > {MAX_PATH} THEN
        RAISE EXCEPTION 'an image path is at most {MAX_PATH} characters';
    END IF;
    IF p_dim IS NOT NULL AND p_dim NOT BETWEEN 1 AND 2000 THEN
        RAISE EXCEPTION 'a model has 1 to 2000 dimensions, not %', p_dim;
    END IF;
    SELECT array_agg(m ORDER BY m.id) INTO matches FROM clipdb.models m
        WHERE (p_model IS NULL OR m.architecture = p_model
               OR m.architecture || '/' || m.pretrained = p_model)
          AND (p_pretrained IS NULL OR m.pretrained = p_pretrained)
          AND (p_dim IS NULL OR m.dim = p_dim)
          AND (p_path IS NULL OR EXISTS (SELECT 1 FROM clipdb.images i
                                         WHERE i.model_id = m.id AND i.path = p_path));
    IF cardinality(matches) > 1 THEN  -- as the CLI: models that have rows
        SELECT array_agg(m ORDER BY m.id) INTO picked FROM unnest(matches) m
            WHERE EXISTS (SELECT 1 FROM clipdb.images i WHERE i.model_id = m.id);
        matches := coalesce(picked, matches);
    END IF;
    IF cardinality(matches) > 1 AND p_model IS NULL AND p_pretrained IS NULL THEN
        -- No model named: the database's default model (clipdb models default NAME).
        SELECT array_agg(m ORDER BY m.id) INTO picked FROM unnest(matches) m
            JOIN clipdb.default_model d ON d.model_id = m.id;
        IF cardinality(picked) = 1 THEN
            matches := picked;
        END IF;
    END IF;
    IF cardinality(matches) > 1 AND p_pretrained IS NULL THEN
        -- The named architecture's standard weights, else the built-in default model's.
        SELECT array_agg(m ORDER BY m.id) INTO picked FROM unnest(matches) m
            WHERE m.architecture = coalesce(p_model, '{DEFAULT_ARCHITECTURE}')
              AND m.pretrained = '{STANDARD_WEIGHTS}';
        IF cardinality(picked) = 1 THEN
            matches := picked;
        END IF;
    END IF;
    IF cardinality(matches) = 1 THEN
        RETURN matches[1];
    END IF;
    asked := concat_ws(', ', 'model => ' || quote_literal(p_model),
        'pretrained => ' || quote_literal(p_pretrained), p_dim || ' dimensions');
    IF matches IS NULL THEN
        IF p_path IS NOT NULL THEN
            RAISE EXCEPTION 'image % is not indexed%', p_path,
                coalesce(' (' || nullif(asked, '') || ')', '');
        END IF;
        SELECT string_agg(quote_literal(m.architecture || '/' || m.pretrained), ', '
                          ORDER BY m.id) INTO names FROM clipdb.models m;
        RAISE EXCEPTION 'no clipdb model matches%; indexed: %',
            coalesce(' (' || nullif(asked, '') || ')', ''), coalesce(names, 'none');
    END IF;
    SELECT string_agg(quote_literal(m.architecture || '/' || m.pretrained), ', ' ORDER BY m.id)
        INTO names FROM unnest(matches) m;
    IF p_path IS NOT NULL THEN
        RAISE EXCEPTION 'image % is indexed by several models; pass model => one of %',
            p_path, names;
    END IF;
    RAISE EXCEPTION 'several clipdb models match%; pass model => one of %',
        coalesce(' (' || nullif(asked, '') || ')', ''), names;
END
$fn$;
COMMENT ON FUNCTION clipdb.choose_model(text, text, integer, text) IS
    'Which model a SQL call means (the CLI''s policy): model => architecture or '
    'architecture/pretrained; an image path indexed by one model means that model; else the '
    'named architecture''s {STANDARD_WEIGHTS} weights; with no name, the database''s default '
    'model (clipdb.default_model), else {DEFAULT_ARCHITECTURE}''s {STANDARD_WEIGHTS} weights.';
"""


# 0008's function, restored by a downgrade.
def _old_choose_model() -> str:
    """0008's ``choose_model`` (and ``resolve_model``), replacing this one on downgrade."""
    path = Path(__file__).with_name("0008_reader_bounds_model_policy.py")
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sql: str = module.CHOOSE_MODEL
    return sql.replace(
        "CREATE FUNCTION clipdb.choose_model(", "CREATE OR REPLACE FUNCTION clipdb.choose_model(", 1
    )


def upgrade() -> None:
    op.execute(TABLE)
    op.execute(CHOOSE_MODEL)


def downgrade() -> None:
    op.execute(_old_choose_model())
    op.execute("DROP TABLE clipdb.default_model")
