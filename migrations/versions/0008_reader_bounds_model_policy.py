"""Every SQL function bounds its arguments; SQL picks the model as the CLI does; reader temp files.

Why:
- Functions the read-only role may call ran on any argument: ``phash_band_masks(3000, 2)``
  made 4.5 M rows (cost grows with width squared), ``search(NULL, 5)`` and a zero query vector
  returned rows whose similarity was NULL or NaN, and text arguments of any length were taken.
  Now each argument out of its range (k, ef_search, skip, widths, radii, distances, the radius
  of ``near``, text lengths) raises one clear error, and a NULL or all-zero query vector is
  refused before any model is picked.
- ``clipdb.similar(path)`` and ``clipdb.duplicates()`` failed as soon as two models were
  indexed, while the CLI used its default. ``clipdb.choose_model`` is now the SQL side of
  ``clipdb.search.choose_model``: an image path indexed by exactly one model means that model;
  otherwise, among the models that match (and have rows), the named architecture's standard
  ('openai') weights, or with no name ViT-B-32's (clipdb.config.DEFAULT_MODEL). When it still
  cannot decide, the error names every candidate as the argument to pass:
  ``model => 'ViT-B-32/openai'`` (``model`` now also takes ``architecture/pretrained``).
  Messages never print ``<NULL>`` for an argument that was not given.
- ``clipdb_reader`` gets ``temp_file_limit`` (a superuser-only setting, so the role cannot
  raise it): one session's sorts and hashes spilling to disk can no longer fill it. A server
  where clipdb is not a superuser says so once, here, and goes on without it.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07
"""

import importlib.util
import sys
from pathlib import Path
from typing import Any

from alembic import op
from sqlalchemy import text

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

READER_TEMP_FILE_LIMIT = "1GB"
DEFAULT_ARCHITECTURE = "ViT-B-32"  # clipdb.config.DEFAULT_MODEL
STANDARD_WEIGHTS = "openai"  # clipdb.models.STANDARD_WEIGHTS
MAX_NAME = 200  # characters of a model, pretrained or camera argument (the CLI's --camera)
MAX_PATH = 32768  # characters of an image path argument
MAX_NEAR_KM = 20100  # clipdb.filters.Near: half the Earth's circumference and a margin

CHOOSE_MODEL = rf"""
CREATE FUNCTION clipdb.choose_model(
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
    IF cardinality(matches) > 1 AND p_pretrained IS NULL THEN
        -- The default: the named architecture's standard weights, else the default model's.
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
    'named architecture''s (or {DEFAULT_ARCHITECTURE}''s) {STANDARD_WEIGHTS} weights.';

CREATE OR REPLACE FUNCTION clipdb.resolve_model(p_model text, p_pretrained text, p_dim integer)
RETURNS clipdb.models LANGUAGE sql STABLE AS $fn$
    SELECT clipdb.choose_model(p_model, p_pretrained, p_dim, NULL)
$fn$;
"""

# Before the model is picked: a NULL query has no dimension, and would match any model.
QUERY_CHECKS = r"""
    IF {query} IS NULL THEN
        RAISE EXCEPTION 'the query vector is NULL';
    END IF;
    IF vector_norm({query}) = 0 THEN
        RAISE EXCEPTION 'the query vector is all zeros: it has no direction to compare';
    END IF;
"""

SEARCH_MODEL_CHECKS = (
    QUERY_CHECKS.replace("{query}", "p_query")
    + rf"""    IF ef_search IS NOT NULL AND ef_search NOT BETWEEN 1 AND 1000 THEN
        RAISE EXCEPTION 'ef_search must be 1 to 1000, not %', ef_search;
    END IF;
    IF length(camera) > {MAX_NAME} THEN
        RAISE EXCEPTION 'camera is at most {MAX_NAME} characters';
    END IF;
"""
)

SEARCH_QUERY_CHECKS = QUERY_CHECKS.replace("{query}", "query")
SEARCH = rf"""
CREATE OR REPLACE FUNCTION clipdb.search(
    query vector, k integer DEFAULT 10, model text DEFAULT NULL, pretrained text DEFAULT NULL,
    ef_search integer DEFAULT NULL, {{filter_params}})
RETURNS TABLE (rank bigint, id bigint, path text, similarity double precision)
LANGUAGE plpgsql STABLE AS $fn$
#variable_conflict use_variable
BEGIN
{SEARCH_QUERY_CHECKS}
    RETURN QUERY SELECT s.* FROM clipdb.search_model(
        (clipdb.choose_model(model, pretrained, vector_dims(query))).id, query, k, ef_search,
        {{filter_args}}) s;
END
$fn$;

CREATE OR REPLACE FUNCTION clipdb.similar(
    image_path text, k integer DEFAULT 10, model text DEFAULT NULL,
    pretrained text DEFAULT NULL, ef_search integer DEFAULT NULL, {{filter_params}})
RETURNS TABLE (rank bigint, id bigint, path text, similarity double precision)
LANGUAGE plpgsql STABLE AS $fn$
#variable_conflict use_variable
DECLARE
    chosen clipdb.models;
    row_id bigint;
BEGIN
    IF image_path IS NULL THEN
        RAISE EXCEPTION 'the image path is NULL';
    END IF;
    chosen := clipdb.choose_model(model, pretrained, NULL, image_path);
    SELECT i.id INTO row_id FROM clipdb.images i
        WHERE i.model_id = chosen.id AND i.path = image_path;
    RETURN QUERY SELECT * FROM clipdb.similar(row_id, k, ef_search, {{filter_args}});
END
$fn$;
"""

BOUNDED_HELPERS = r"""
CREATE OR REPLACE FUNCTION clipdb.phash_band_masks(p_width integer, p_radius integer)
RETURNS SETOF bit varying LANGUAGE plpgsql IMMUTABLE AS $fn$
BEGIN
    -- A pHash has 64 bits; its bands are narrower, and probes flip at most 2 bits.
    IF p_width IS NULL OR p_width NOT BETWEEN 1 AND 64 THEN
        RAISE EXCEPTION 'clipdb.phash_band_masks: width must be 1 to 64, not %',
            coalesce(p_width::text, 'NULL');
    END IF;
    IF p_radius IS NULL OR p_radius NOT BETWEEN 0 AND 2 THEN
        RAISE EXCEPTION 'clipdb.phash_band_masks: radius must be 0 to 2, not %',
            coalesce(p_radius::text, 'NULL');
    END IF;
    RETURN QUERY
    SELECT repeat('0', p_width)::bit varying
    UNION ALL
    SELECT (('1' || repeat('0', p_width - 1))::bit varying >> s)
        FROM generate_series(0, p_width - 1) s WHERE p_radius >= 1
    UNION ALL
    SELECT (('1' || repeat('0', p_width - 1))::bit varying >> s1)
         | (('1' || repeat('0', p_width - 1))::bit varying >> s2)
        FROM generate_series(0, p_width - 1) s1, generate_series(0, p_width - 1) s2
        WHERE p_radius >= 2 AND s1 < s2;
END
$fn$;

CREATE OR REPLACE FUNCTION clipdb.model_index_ddl(p_model_id smallint, p_dim integer)
RETURNS text LANGUAGE plpgsql IMMUTABLE AS $fn$
BEGIN
    IF p_model_id IS NULL OR p_model_id < 1 OR p_dim IS NULL OR p_dim NOT BETWEEN 1 AND 2000 THEN
        RAISE EXCEPTION 'clipdb.model_index_ddl: a model id from 1 and 1 to 2000 dimensions';
    END IF;
    RETURN format(
        'CREATE INDEX %I ON clipdb.images USING hnsw ((embedding::halfvec(%s)) '
        'halfvec_cosine_ops) WHERE model_id = %s',
        'images_hnsw_model_' || p_model_id, p_dim, p_model_id);
END
$fn$;
"""

DUPLICATES_CHECKS_OLD = """    IF tier IS DISTINCT FROM 'near' THEN
        RAISE EXCEPTION 'clipdb.duplicates: tier must be exact or near, not %', tier;
    END IF;
    IF max_distance IS NULL OR max_distance NOT BETWEEN 0 AND 8 THEN
        RAISE EXCEPTION 'clipdb.duplicates: max_distance must be 0..8, not %', max_distance;
    END IF;"""
DUPLICATES_CHECKS_NEW = """    IF tier IS DISTINCT FROM 'near' THEN
        RAISE EXCEPTION 'clipdb.duplicates: tier must be ''exact'' or ''near''';
    END IF;
    IF max_distance IS NULL OR max_distance NOT BETWEEN 0 AND 8 THEN
        RAISE EXCEPTION 'clipdb.duplicates: max_distance must be 0 to 8, not %',
            coalesce(max_distance::text, 'NULL');
    END IF;"""

READER_TEMP_LIMIT = f"""
DO $do$
BEGIN
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'clipdb_reader') THEN
        ALTER ROLE clipdb_reader SET temp_file_limit = '{READER_TEMP_FILE_LIMIT}';
    END IF;
EXCEPTION WHEN insufficient_privilege THEN
    NULL;  -- said once, below, from Python
END
$do$;
"""
READER_TEMP_UNLIMITED = """
DO $do$
BEGIN
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'clipdb_reader') THEN
        ALTER ROLE clipdb_reader RESET temp_file_limit;
    END IF;
EXCEPTION WHEN insufficient_privilege THEN
    NULL;
END
$do$;
"""
GRANT = """
DO $do$
BEGIN
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'clipdb_reader') THEN
        GRANT EXECUTE ON FUNCTION clipdb.choose_model(text, text, integer, text)
            TO clipdb_reader;
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


def _replaced(sql: str, old: str, new: str) -> str:
    assert sql.count(old) == 1, old  # the revision text this one builds on
    return sql.replace(old, new)


# search_model's messages that printed <NULL> for a NULL argument: (argument, what to print).
NOT_NULL_MESSAGES = (
    ("k", "coalesce(k::text, 'NULL')"),
    ("skip", "coalesce(skip::text, 'NULL')"),
    ("sort", "coalesce(quote_literal(left(sort, 40)), 'NULL')"),
    ("p_model_id", "coalesce(p_model_id::text, 'NULL')"),
)


def _search_model(metadata: Any, *, checked: bool) -> str:
    """0006's search_model, with this revision's argument checks when ``checked``."""
    sql = metadata._sql(metadata.SEARCH_MODEL).replace(
        "CREATE FUNCTION", "CREATE OR REPLACE FUNCTION"
    )
    if not checked:
        return sql
    sql = _replaced(
        sql, "BEGIN\n    IF k IS NULL", "BEGIN\n" + SEARCH_MODEL_CHECKS + "    IF k IS NULL"
    )
    sql = _replaced(sql, "OR near_km <= 0)", f"OR NOT (near_km > 0 AND near_km <= {MAX_NEAR_KM}))")
    sql = _replaced(sql, "km above 0'", f"km above 0 and at most {MAX_NEAR_KM}'")
    for value, shown in NOT_NULL_MESSAGES:
        sql = _replaced(sql, f"%', {value};", f"%', {shown};")
    return sql


def _similar_by_id(metadata: Any) -> str:
    """0006's clipdb.similar(image_id bigint, ...), its message without <NULL>."""
    functions = metadata._sql(metadata.FUNCTIONS)
    start = functions.index("CREATE FUNCTION clipdb.similar(\n    image_id bigint")
    end = functions.index("$fn$;", start) + len("$fn$;")
    sql = functions[start:end].replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION")
    return _replaced(sql, "%', image_id;", "%', coalesce(image_id::text, 'NULL');")


def _duplicates(phash: Any, *, checked: bool) -> str:
    sql = phash.DUPLICATES
    start = sql.index("CREATE FUNCTION clipdb.duplicates(")
    end = sql.index("COMMENT ON FUNCTION clipdb.duplicates")
    sql = sql[start:end].replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION")
    return _replaced(sql, DUPLICATES_CHECKS_OLD, DUPLICATES_CHECKS_NEW) if checked else sql


def _old_helpers(phash: Any) -> list[str]:
    """0007's phash_band_masks and 0002's model_index_ddl, as they were."""
    masks = phash.DUPLICATES[: phash.DUPLICATES.index("CREATE FUNCTION clipdb.duplicates(")]
    halfvec = _load("0002_halfvec_index.py")
    return [
        masks.replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION"),
        halfvec.INDEX_DDL_FUNCTION.replace("{kind}", "halfvec"),
    ]


def _warn_unless_limited() -> None:
    """Say once (this revision runs once) when the reader's temp file limit could not be set."""
    row = (
        op.get_bind()
        .execute(
            text(
                "SELECT EXISTS (SELECT FROM pg_roles WHERE rolname = 'clipdb_reader'), "
                "EXISTS (SELECT FROM pg_db_role_setting s JOIN pg_roles r ON r.oid = s.setrole "
                "WHERE r.rolname = 'clipdb_reader' AND s.setdatabase = 0 "
                "AND 'temp_file_limit=' || :limit = ANY (s.setconfig))"
            ),
            {"limit": READER_TEMP_FILE_LIMIT},
        )
        .one()
    )
    if row[0] and not row[1]:
        print(
            "clipdb: this role is not a superuser, so clipdb_reader's temp_file_limit is not "
            f"set; a superuser can run: ALTER ROLE clipdb_reader SET temp_file_limit = "
            f"'{READER_TEMP_FILE_LIMIT}'",
            file=sys.stderr,
        )


def upgrade() -> None:
    metadata, phash = _load("0006_photo_metadata.py"), _load("0007_perceptual_hash.py")
    op.execute(CHOOSE_MODEL)
    op.execute(_search_model(metadata, checked=True))
    op.execute(metadata._sql(SEARCH))
    op.execute(_similar_by_id(metadata))
    op.execute(BOUNDED_HELPERS)
    op.execute(_duplicates(phash, checked=True))
    op.execute(GRANT)
    op.execute(READER_TEMP_LIMIT)
    _warn_unless_limited()


def downgrade() -> None:
    metadata, phash = _load("0006_photo_metadata.py"), _load("0007_perceptual_hash.py")
    op.execute(READER_TEMP_UNLIMITED)
    op.execute(_duplicates(phash, checked=False))
    for sql in _old_helpers(phash):
        op.execute(sql)
    functions = metadata._sql(metadata.FUNCTIONS)
    start = functions.index("CREATE FUNCTION clipdb.search(")
    end = functions.index("DO $do$")
    search = functions[start:end].replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION")
    op.execute(search)
    op.execute(_search_model(metadata, checked=False))
    op.execute(
        "CREATE OR REPLACE FUNCTION clipdb.resolve_model(p_model text, p_pretrained text, "
        "p_dim integer) RETURNS clipdb.models LANGUAGE plpgsql STABLE AS " + _initial_resolve_body()
    )
    op.execute("DROP FUNCTION clipdb.choose_model(text, text, integer, text)")


def _initial_resolve_body() -> str:
    initial = _load("0001_initial.py").UPGRADE_SQL
    start = initial.index("$fn$", initial.index("CREATE FUNCTION clipdb.resolve_model("))
    end = initial.index("$fn$;", start + 4) + len("$fn$")
    return initial[start:end]
