"""Photo metadata columns: when, with what camera and where each image was taken.

Why: "show me the relevant photos in date order" and date/camera/place filters need the EXIF
metadata next to each embedding, read once at ingest (the file is decoded then anyway).
``taken_at`` is timestamptz; a camera that wrote no ``OffsetTimeOriginal`` gives its wall-clock
time stored as if UTC with ``taken_at_naive`` true (no time zone is invented). There is no mtime
fallback: ``taken_at`` is NULL without an EXIF date. ``lat``/``lon`` are plain double precision
with range CHECKs (no PostGIS dependency; a distance filter is a haversine over a bounding box).
``metadata_version`` is NULL for rows indexed before this revision: the next ingest of their
folder reads only their EXIF (no re-encoding) and sets it. The (model_id, taken_at) index serves
date-ordered pages and date-range filters.

The SQL functions ``clipdb.search``, ``clipdb.similar`` (both forms) and ``clipdb.search_model``
are replaced by versions with the same leading parameters (every existing call keeps working)
plus ``after``, ``before``, ``camera``, ``near_lat``, ``near_lon``, ``near_km``, ``within``,
``sort`` ('relevance', 'date', '-date') and ``skip`` (the offset: OFFSET is a reserved word),
all defaulting to "off". New overloads beside the old ones would make every call ambiguous, so
the old signatures are dropped and re-created on downgrade. Filtered searches keep using the
model's HNSW index with iterative scans; when the scan stops short of k matches the few
matching rows are ranked exactly.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01
"""

from alembic import op

MAX_RESULTS = 10_000  # clipdb.config.MAX_RESULTS
DEFAULT_EF_SEARCH = 320  # clipdb.config.DEFAULT_EF_SEARCH
FILTER_PARAMS = (
    "after timestamptz DEFAULT NULL, before timestamptz DEFAULT NULL, camera text DEFAULT NULL, "
    "near_lat double precision DEFAULT NULL, near_lon double precision DEFAULT NULL, "
    "near_km double precision DEFAULT NULL, within double precision DEFAULT NULL, "
    "sort text DEFAULT 'relevance', skip integer DEFAULT 0"
)
FILTER_TYPES = (
    "timestamptz, timestamptz, text, double precision, double precision, double precision, "
    "double precision, text, integer"
)
FILTER_ARGS = "after, before, camera, near_lat, near_lon, near_km, within, sort, skip"

SEARCH_MODEL = r"""
CREATE FUNCTION clipdb.search_model(
    p_model_id smallint, p_query vector, k integer DEFAULT 10, ef_search integer DEFAULT NULL,
    {filter_params})
RETURNS TABLE (rank bigint, id bigint, path text, similarity double precision)
LANGUAGE plpgsql STABLE AS $fn$
#variable_conflict use_variable
DECLARE
    model_dim integer;
    ef integer;
    wanted integer;
    narrows boolean;
    statement text;
    ids bigint[];
    paths text[];
    distances float8[];
    dates timestamptz[];
    filter_sql text := '(($3::timestamptz IS NULL OR i.taken_at >= $3) '
        'AND ($4::timestamptz IS NULL OR i.taken_at < $4) '
        'AND ($5::text IS NULL OR strpos(lower(i.camera), lower($5)) > 0) '
        'AND ($6::float8 IS NULL OR (i.lat BETWEEN $6 - $8 / 111.0 AND $6 + $8 / 111.0 '
        'AND 2 * 6371.0088 * asin(least(1.0, sqrt(sin(radians(i.lat - $6) / 2) ^ 2 '
        '+ cos(radians($6)) * cos(radians(i.lat)) * sin(radians(i.lon - $7) / 2) ^ 2))) <= $8)))';
BEGIN
    IF k IS NULL OR k < 1 OR k > {max_results} THEN
        RAISE EXCEPTION 'the number of results must be 1 to {max_results}, not %', k;
    END IF;
    IF skip IS NULL OR skip < 0 OR skip > 100000 THEN
        RAISE EXCEPTION 'skip (the offset) must be 0 to 100000, not %', skip;
    END IF;
    IF sort IS NULL OR sort NOT IN ('relevance', 'date', '-date') THEN
        RAISE EXCEPTION 'sort must be relevance, date or -date, not %', sort;
    END IF;
    IF within IS NOT NULL AND NOT (within BETWEEN 0 AND 2) THEN
        RAISE EXCEPTION 'within must be 0 to 2, not %', within;
    END IF;
    IF (near_lat IS NULL) <> (near_lon IS NULL) OR (near_lat IS NULL) <> (near_km IS NULL) THEN
        RAISE EXCEPTION 'near_lat, near_lon and near_km go together';
    END IF;
    IF near_lat IS NOT NULL AND (near_lat NOT BETWEEN -90 AND 90
            OR near_lon NOT BETWEEN -180 AND 180 OR near_km <= 0) THEN
        RAISE EXCEPTION 'near: latitude -90..90, longitude -180..180, km above 0';
    END IF;
    SELECT m.dim INTO model_dim FROM clipdb.models m WHERE m.id = p_model_id;
    IF model_dim IS NULL THEN
        RAISE EXCEPTION 'no clipdb model with id %', p_model_id;
    END IF;
    IF vector_dims(p_query) <> model_dim THEN
        RAISE EXCEPTION 'query has % dimensions, model % has %',
            vector_dims(p_query), p_model_id, model_dim;
    END IF;
    wanted := k + skip;
    narrows := after IS NOT NULL OR before IS NOT NULL OR camera IS NOT NULL
        OR near_lat IS NOT NULL;
    ef := least(1000, greatest(coalesce(ef_search, {default_ef}), least(wanted, 1000)));
    PERFORM set_config('hnsw.ef_search', ef::text, true);
    IF wanted > ef OR narrows THEN
        PERFORM set_config('hnsw.iterative_scan', 'relaxed_order', true);
        PERFORM set_config('hnsw.max_scan_tuples', least(500000, greatest(20000, 4 * wanted,
            CASE WHEN narrows THEN 200 * wanted ELSE 0 END))::text, true);
    END IF;
    -- Candidates go into arrays, not a temporary table: readers run read-only transactions.
    statement := 'SELECT array_agg(c.id ORDER BY c.d, c.id), array_agg(c.path ORDER BY c.d, c.id), '
        'array_agg(c.d ORDER BY c.d, c.id), array_agg(c.taken_at ORDER BY c.d, c.id) FROM ('
        'SELECT i.id, i.path, (i.embedding::vector(%1$s) <=> $1::vector(%1$s)) AS d, i.taken_at '
        'FROM clipdb.images i WHERE i.model_id = %2$s AND %3$s ORDER BY %4$s LIMIT $2) c';
    EXECUTE format(statement, model_dim, p_model_id,
        CASE WHEN narrows THEN filter_sql ELSE 'true' END,
        format('i.embedding::halfvec(%1$s) <=> $1::vector(%1$s)::halfvec(%1$s)', model_dim))
    INTO ids, paths, distances, dates
    USING p_query, wanted, after, before, camera, near_lat, near_lon, near_km;
    IF narrows AND coalesce(cardinality(ids), 0) < wanted THEN
        -- The iterative scan stopped before enough matches: rank the matching rows exactly.
        EXECUTE format(statement, model_dim, p_model_id, filter_sql, 'd, i.id')
        INTO ids, paths, distances, dates
        USING p_query, wanted, after, before, camera, near_lat, near_lon, near_km;
    END IF;
    RETURN QUERY
    WITH best AS (
        SELECT * FROM unnest(ids, paths, distances, dates) AS h(id, path, d, taken_at)
    ), kept AS (
        SELECT b.* FROM best b
        WHERE within IS NULL OR b.d <= (SELECT min(x.d) FROM best x) + within + 1e-9
    ), ordered AS (
        SELECT kept.*, row_number() OVER (ORDER BY
            CASE WHEN sort = 'relevance' THEN NULL
                 WHEN kept.taken_at IS NULL THEN 1 ELSE 0 END,
            CASE WHEN sort = 'date' THEN kept.taken_at END ASC,
            CASE WHEN sort = '-date' THEN kept.taken_at END DESC,
            kept.d, kept.id) AS position
        FROM kept
    )
    SELECT o.position, o.id, o.path, 1 - o.d FROM ordered o
    WHERE o.position > skip ORDER BY o.position LIMIT k;
END
$fn$;
"""

FUNCTIONS = r"""
CREATE FUNCTION clipdb.search(
    query vector, k integer DEFAULT 10, model text DEFAULT NULL, pretrained text DEFAULT NULL,
    ef_search integer DEFAULT NULL, {filter_params})
RETURNS TABLE (rank bigint, id bigint, path text, similarity double precision)
LANGUAGE sql STABLE AS $fn$
    SELECT s.* FROM clipdb.search_model(
        (clipdb.resolve_model(model, pretrained, vector_dims(query))).id, query, k, ef_search,
        {filter_args}) s
$fn$;
COMMENT ON FUNCTION clipdb.search(vector, integer, text, text, integer, {filter_types}) IS
    'Top-k images most similar to a query embedding (cosine); similarity in [-1, 1]; '
    'after/before/camera/near_* filter by photo metadata, within/sort/skip order and page.';

CREATE FUNCTION clipdb.similar(
    image_id bigint, k integer DEFAULT 10, ef_search integer DEFAULT NULL, {filter_params})
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
    RETURN QUERY SELECT * FROM clipdb.search_model(row_model, row_embedding, k, ef_search,
        {filter_args});
END
$fn$;

CREATE FUNCTION clipdb.similar(
    image_path text, k integer DEFAULT 10, model text DEFAULT NULL,
    pretrained text DEFAULT NULL, ef_search integer DEFAULT NULL, {filter_params})
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
    RETURN QUERY SELECT * FROM clipdb.similar(ids[1], k, ef_search, {filter_args});
END
$fn$;

DO $do$
BEGIN
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'clipdb_reader') THEN
        GRANT EXECUTE ON FUNCTION
            clipdb.search(vector, integer, text, text, integer, {filter_types}),
            clipdb.similar(bigint, integer, integer, {filter_types}),
            clipdb.similar(text, integer, text, text, integer, {filter_types}),
            clipdb.search_model(smallint, vector, integer, integer, {filter_types})
            TO clipdb_reader;
    END IF;
END
$do$;
"""

DROP_NEW = r"""
DROP FUNCTION clipdb.similar(text, integer, text, text, integer, {filter_types});
DROP FUNCTION clipdb.similar(bigint, integer, integer, {filter_types});
DROP FUNCTION clipdb.search(vector, integer, text, text, integer, {filter_types});
DROP FUNCTION clipdb.search_model(smallint, vector, integer, integer, {filter_types});
"""

DROP_OLD = r"""
DROP FUNCTION clipdb.similar(text, integer, text, text, integer);
DROP FUNCTION clipdb.similar(bigint, integer, integer);
DROP FUNCTION clipdb.search(vector, integer, text, text, integer);
DROP FUNCTION clipdb.search_model(smallint, vector, integer, integer);
"""


def _sql(text: str) -> str:
    return (
        text.replace("{filter_params}", FILTER_PARAMS)
        .replace("{filter_types}", FILTER_TYPES)
        .replace("{filter_args}", FILTER_ARGS)
        .replace("{max_results}", str(MAX_RESULTS))
        .replace("{default_ef}", str(DEFAULT_EF_SEARCH))
    )


def _old_functions() -> list[str]:
    """0001's search/similar and 0004's search_model, as they were."""
    import importlib.util
    from pathlib import Path

    def load(name: str):  # noqa: ANN202 - a migration module
        path = Path(__file__).with_name(name)
        spec = importlib.util.spec_from_file_location(path.stem, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    initial, limit = load("0001_initial.py"), load("0004_one_result_limit.py")
    text = initial.UPGRADE_SQL
    start = text.index("CREATE FUNCTION clipdb.search(")
    end = text.index("REVOKE ALL ON FUNCTION clipdb.register_model")
    grants = text[text.index("DO $do$", end) :]
    search_model = limit.SEARCH_MODEL.replace("{max_results}", str(limit.MAX_RESULTS)).replace(
        "{default_ef}", str(limit.DEFAULT_EF_SEARCH)
    )
    return [search_model.replace("CREATE OR REPLACE", "CREATE"), text[start:end], grants]


revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        ALTER TABLE clipdb.images
            ADD COLUMN taken_at timestamptz,
            ADD COLUMN taken_at_naive boolean NOT NULL DEFAULT false,
            ADD COLUMN camera text,
            ADD COLUMN lens text,
            ADD COLUMN lat double precision CHECK (lat BETWEEN -90 AND 90),
            ADD COLUMN lon double precision CHECK (lon BETWEEN -180 AND 180),
            ADD COLUMN metadata_version smallint,
            ADD CONSTRAINT images_lat_lon_together CHECK ((lat IS NULL) = (lon IS NULL))
        """
    )
    op.execute("CREATE INDEX images_model_taken_at ON clipdb.images (model_id, taken_at)")
    op.execute(DROP_OLD)
    op.execute(_sql(SEARCH_MODEL))
    op.execute(_sql(FUNCTIONS))
    op.execute(
        "COMMENT ON COLUMN clipdb.images.taken_at IS 'EXIF DateTimeOriginal; "
        "wall clock stored as UTC when taken_at_naive (no OffsetTimeOriginal); NULL: no EXIF date'"
    )
    op.execute(
        "COMMENT ON COLUMN clipdb.images.metadata_version IS "
        "'clipdb.exif.METADATA_VERSION that read this row''s metadata; NULL: never read'"
    )


def downgrade() -> None:
    op.execute(_sql(DROP_NEW))
    for sql in _old_functions():
        op.execute(sql)
    op.execute("DROP INDEX IF EXISTS clipdb.images_model_taken_at")
    op.execute(
        """
        ALTER TABLE clipdb.images
            DROP CONSTRAINT images_lat_lon_together,
            DROP COLUMN metadata_version,
            DROP COLUMN lon, DROP COLUMN lat, DROP COLUMN lens, DROP COLUMN camera,
            DROP COLUMN taken_at_naive, DROP COLUMN taken_at
        """
    )
