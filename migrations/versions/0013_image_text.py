"""Text of images: OCR text, file and folder names, keywords; searched by words and part-strings.

Why a table beside ``clipdb.images``: text is found after the row is written (OCR is a later
stage, so CLIP rows are searchable at once), and adding it must not rewrite the images table.
One row per image row (``image_id``), with the ``sha256`` it was read from: a changed file is
read again, an unchanged one never is; a moved file keeps its OCR text and only its name words
change (``path_key`` says which name they were made from).

How it is searched: ``document`` is a ``tsvector`` in ``clipdb.simple_unaccent`` (the
language-neutral ``simple`` parser and dictionary after ``unaccent``, so café matches cafe and
no language's stemming guesses wrong on names and numbers), weighted OCR text A, keywords and
titles B, file and folder names C; a GIN index serves words and quoted phrases. ``haystack``
is the same text folded (lower case, no accents) under a trigram GIN index, which serves
part-strings (``5172`` in ``KX 5172``) as ``LIKE '%5172%'``. Both are generated columns, so
they cannot disagree with the text.

``clipdb.search_text_rows`` ranks one model's rows by text with the metadata and folder filters
of ``clipdb.search_rows``; ``clipdb.search_hybrid`` fuses it with ``clipdb.search_rows`` (called,
not copied) by reciprocal rank fusion.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-07
"""

from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


MAX_RESULTS = 10_000  # clipdb.config.MAX_RESULTS
MAX_QUERY_TEXT = 1000  # clipdb.config.MAX_QUERY_TEXT
MAX_NEAR_KM = 20100  # clipdb.filters.Near
MAX_NAME = 200
MAX_PATH = 32768
RRF_K = 60  # reciprocal rank fusion's constant (Cormack et al. 2009); BENCHMARKS.md, "OCR"

FILTER_PARAMS = (
    "after timestamptz DEFAULT NULL, before timestamptz DEFAULT NULL, camera text DEFAULT NULL, "
    "near_lat double precision DEFAULT NULL, near_lon double precision DEFAULT NULL, "
    "near_km double precision DEFAULT NULL, under bytea DEFAULT NULL"
)
FILTER_TYPES = (
    "timestamptz, timestamptz, text, double precision, double precision, double precision, bytea"
)
TEXT_ROWS_TYPES = f"smallint, text, integer, {FILTER_TYPES}"
HYBRID_TYPES = f"smallint, vector, text, integer, integer, {FILTER_TYPES}, integer, text"


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _schema(trgm: str, unaccent: str) -> str:
    u, t = _ident(unaccent), _ident(trgm)
    dictionary = f"{u}.unaccent".replace("'", "''")
    return rf"""
CREATE TEXT SEARCH CONFIGURATION clipdb.simple_unaccent (COPY = pg_catalog.simple);
ALTER TEXT SEARCH CONFIGURATION clipdb.simple_unaccent
    ALTER MAPPING FOR asciiword, asciihword, hword_asciipart, word, hword, hword_part, numword,
        numhword, hword_numpart
    WITH {u}.unaccent, pg_catalog.simple;
COMMENT ON TEXT SEARCH CONFIGURATION clipdb.simple_unaccent IS
    'clipdb''s text search: no language''s stemming, accents folded (cafe matches café).';

-- unaccent() is STABLE only because its dictionary could be changed; clipdb never changes it,
-- and a generated column needs IMMUTABLE. Bounded like every function the reader may call
-- (a row's words are at most 160,000 characters).
CREATE FUNCTION clipdb.text_fold(p_text text) RETURNS text
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE AS $fn$
BEGIN
    IF length(p_text) > 200000 THEN
        RAISE EXCEPTION 'a text to fold is at most 200000 characters';
    END IF;
    RETURN lower({u}.unaccent('{dictionary}'::regdictionary, p_text));
END
$fn$;
COMMENT ON FUNCTION clipdb.text_fold(text) IS
    'Text as clipdb compares part-strings: lower case, accents removed.';

CREATE TABLE clipdb.image_text (
    image_id bigint PRIMARY KEY REFERENCES clipdb.images (id) ON DELETE CASCADE,
    sha256 bytea NOT NULL CHECK (octet_length(sha256) = 32),
    path_key bytea NOT NULL,
    engine text CHECK (length(engine) <= 40),
    ocr jsonb NOT NULL DEFAULT '[]',
    ocr_text text NOT NULL DEFAULT '' CHECK (length(ocr_text) <= 100000),
    meta_text text NOT NULL DEFAULT '' CHECK (length(meta_text) <= 20000),
    name_text text NOT NULL DEFAULT '' CHECK (length(name_text) <= 40000),
    document tsvector GENERATED ALWAYS AS (
        setweight(to_tsvector('clipdb.simple_unaccent'::regconfig, ocr_text), 'A')
        || setweight(to_tsvector('clipdb.simple_unaccent'::regconfig, meta_text), 'B')
        || setweight(to_tsvector('clipdb.simple_unaccent'::regconfig, name_text), 'C')) STORED,
    haystack text GENERATED ALWAYS AS (
        clipdb.text_fold(ocr_text || ' ' || meta_text || ' ' || name_text)) STORED,
    updated_at timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE clipdb.image_text IS
    'The words of an image row: OCR text (engine NULL: not read yet), keywords and titles, '
    'file and folder names; sha256 and path_key say what they were read from.';
COMMENT ON COLUMN clipdb.image_text.ocr IS
    'Recognised lines: [{{"text", "confidence" (0..1), "box": [x, y, w, h]}}] in image pixels.';
CREATE INDEX image_text_document ON clipdb.image_text USING gin (document);
CREATE INDEX image_text_haystack ON clipdb.image_text USING gin (haystack {t}.gin_trgm_ops);
-- Which other row already read the same content (a second model, a copy): no second OCR.
CREATE INDEX image_text_sha256 ON clipdb.image_text (sha256) WHERE engine IS NOT NULL;

"""


def _text_rows(trgm: str) -> str:
    return TEXT_ROWS.replace("@TRGM@", _ident(trgm))


TEXT_ROWS = rf"""
CREATE FUNCTION clipdb.search_text_rows(
    p_model_id smallint, query_text text, k integer DEFAULT 10, {FILTER_PARAMS})
RETURNS TABLE (rank bigint, id bigint, score double precision, matched_text text)
LANGUAGE plpgsql STABLE AS $fn$
#variable_conflict use_variable
DECLARE
    query tsquery;
    folded text;
    terms text[];
    patterns text[];
    matching text := 't.document @@ $1';
    conditions text := '';
    under_high bytea;
    ids bigint[];
    scores float8[];
    near_ids bigint[];
    near_scores float8[];
BEGIN
    IF query_text IS NULL OR btrim(query_text) = '' THEN
        RAISE EXCEPTION 'the query text is empty';
    END IF;
    IF length(query_text) > {MAX_QUERY_TEXT} THEN
        RAISE EXCEPTION 'the query text is at most {MAX_QUERY_TEXT} characters';
    END IF;
    IF k IS NULL OR k < 1 OR k > {MAX_RESULTS} THEN
        RAISE EXCEPTION 'the number of results must be 1 to {MAX_RESULTS}, not %',
            coalesce(k::text, 'NULL');
    END IF;
    IF length(camera) > {MAX_NAME} THEN
        RAISE EXCEPTION 'camera is at most {MAX_NAME} characters';
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
    IF NOT EXISTS (SELECT FROM clipdb.models m WHERE m.id = p_model_id) THEN
        RAISE EXCEPTION 'no clipdb model with id %', coalesce(p_model_id::text, 'NULL');
    END IF;

    -- Words and "quoted phrases" (websearch syntax: -word excludes, or between alternatives).
    query := websearch_to_tsquery('clipdb.simple_unaccent', query_text);
    folded := clipdb.text_fold(query_text);
    -- Part-strings: each quoted phrase and each other word, all of them in the text.
    SELECT coalesce(array_agg(x.term), '{{}}'),
        coalesce(array_agg('%' || replace(replace(replace(x.term, '\', '\\'), '%', '\%'),
            '_', '\_') || '%'), '{{}}')
    INTO terms, patterns
    FROM (SELECT btrim(coalesce(m[1], m[2])) AS term
          FROM regexp_matches(folded, '"([^"]*)"|([^\s"]+)', 'g') AS m) x
    WHERE x.term <> '' AND x.term <> 'or' AND left(x.term, 1) <> '-';
    -- Part-strings from three characters, or any length in a script written without spaces
    -- between words (Chinese, Japanese): "发票" inside "增值税发票号码". Outside ASCII the trigram
    -- index (C collation) sees no trigrams, so such a pattern is checked row by row.
    IF EXISTS (SELECT FROM unnest(terms) u WHERE length(u) >= 3 OR u ~ '[^\x01-\x7f]') THEN
        -- Each pattern its own LIKE, so the trigram index serves every one of them.
        SELECT '(' || matching || ' OR (' || string_agg(format('t.haystack LIKE $2[%s]', n),
            ' AND ') || '))'
        INTO matching FROM generate_series(1, cardinality(patterns)) n;
    END IF;
    -- The filters of clipdb.search_rows, the same conditions on the same columns.
    IF after IS NOT NULL THEN
        conditions := conditions || ' AND i.taken_at >= $5';
    END IF;
    IF before IS NOT NULL THEN
        conditions := conditions || ' AND i.taken_at < $6';
    END IF;
    IF camera IS NOT NULL THEN
        conditions := conditions || ' AND strpos(lower(i.camera), lower($7)) > 0';
    END IF;
    IF near_lat IS NOT NULL THEN
        conditions := conditions || ' AND i.lat BETWEEN $8 - $10 / 111.0 AND $8 + $10 / 111.0 '
            'AND 2 * 6371.0088 * asin(least(1.0, sqrt(sin(radians(i.lat - $8) / 2) ^ 2 '
            '+ cos(radians($8)) * cos(radians(i.lat)) * sin(radians(i.lon - $9) / 2) ^ 2))) '
            '<= $10';
    END IF;
    IF under IS NOT NULL THEN
        under_high := substring(under FROM 1 FOR octet_length(under) - 1) || '\x30'::bytea;
        conditions := conditions || ' AND clipdb.path_key(i.path, i.path_bytes) >= $11 '
            'AND clipdb.path_key(i.path, i.path_bytes) < $12';
    END IF;
    -- Whole-word matches first (by ts_rank_cd: OCR text counts most), then part-strings,
    -- each ordered by how much of the query the text holds.
    EXECUTE 'SELECT array_agg(r.image_id ORDER BY r.score DESC, r.image_id), '
        'array_agg(r.score ORDER BY r.score DESC, r.image_id) FROM ('
        'SELECT t.image_id, CASE WHEN t.document @@ $1 THEN 1 + ts_rank_cd(t.document, $1) '
        'ELSE 0 END + @TRGM@.word_similarity($3, t.haystack) AS score '
        'FROM clipdb.image_text t JOIN clipdb.images i ON i.id = t.image_id '
        'WHERE i.model_id = $4 AND ' || matching || conditions
        || ' ORDER BY score DESC, t.image_id LIMIT $13) r'
    INTO ids, scores
    USING query, patterns, folded, p_model_id, after, before, camera, near_lat, near_lon,
        near_km, under, under_high, k;
    ids := coalesce(ids, '{{}}');
    scores := coalesce(scores, '{{}}');
    IF cardinality(ids) = 0 AND length(folded) >= 4 AND query_text !~ '"|(^|\s)-' THEN
        -- No exact match: words OCR misread by a letter or so (façade read as "facad"), by
        -- trigram word similarity above pg_trgm's threshold. Not when something matched
        -- exactly (near spellings of it would only crowd it), nor for a "phrase" or a -word.
        EXECUTE 'SELECT array_agg(r.image_id ORDER BY r.score DESC, r.image_id), '
            'array_agg(r.score ORDER BY r.score DESC, r.image_id) FROM ('
            'SELECT t.image_id, @TRGM@.word_similarity($3, t.haystack) - 1 AS score '
            'FROM clipdb.image_text t JOIN clipdb.images i ON i.id = t.image_id '
            'WHERE i.model_id = $4 AND t.haystack OPERATOR(@TRGM@.%>) $3 '
            '' || conditions
            || ' ORDER BY score DESC, t.image_id LIMIT $13) r'
        INTO near_ids, near_scores
        USING ids, patterns, folded, p_model_id, after, before, camera, near_lat, near_lon,
            near_km, under, under_high, k;
        ids := coalesce(near_ids, '{{}}');
        scores := coalesce(near_scores, '{{}}');
    END IF;
    RETURN QUERY
    SELECT h.n, h.id, h.score, clipdb.text_snippet(t, query, terms[1:1])
    FROM unnest(ids, scores) WITH ORDINALITY AS h(id, score, n)
    JOIN clipdb.image_text t ON t.image_id = h.id
    ORDER BY h.n;
END
$fn$;
COMMENT ON FUNCTION clipdb.search_text_rows({TEXT_ROWS_TYPES}) IS
    'One model''s rows ranked by their words (OCR text, keywords, names): whole words, quoted '
    'phrases and part-strings, with the filters of clipdb.search_rows.';

CREATE FUNCTION clipdb.text_snippet(t clipdb.image_text, query tsquery, terms text[])
RETURNS text LANGUAGE plpgsql STABLE AS $fn$
DECLARE
    whole text := concat_ws(' ', t.ocr_text, t.meta_text, t.name_text);
    found integer;
BEGIN
    IF cardinality(terms) > 100 THEN
        RAISE EXCEPTION 'at most 100 terms';
    END IF;
    IF t.document @@ query THEN
        RETURN ts_headline('clipdb.simple_unaccent', whole, query,
            'StartSel="", StopSel="", MaxWords=16, MinWords=6, ShortWord=1');
    END IF;
    -- A part-string: the text around its first place (haystack is whole, folded).
    found := strpos(t.haystack, terms[1]);
    IF found = 0 THEN
        RETURN left(whole, 80);
    END IF;
    RETURN btrim(substr(whole, greatest(1, found - 30), length(terms[1]) + 60));
END
$fn$;
"""

HYBRID = rf"""
CREATE FUNCTION clipdb.search_hybrid(
    p_model_id smallint, p_query vector, query_text text, k integer DEFAULT 10,
    ef_search integer DEFAULT NULL, {FILTER_PARAMS}, skip integer DEFAULT 0,
    mode text DEFAULT 'hybrid')
RETURNS TABLE (rank bigint, id bigint, path text, similarity double precision, match text,
    matched_text text, path_bytes bytea, taken_at timestamptz, taken_at_naive boolean,
    camera_name text, lat double precision, lon double precision)
LANGUAGE plpgsql STABLE AS $fn$
#variable_conflict use_variable
DECLARE
    depth integer;
    clip_ids bigint[] := '{{}}';
    clip_similarities float8[] := '{{}}';
    text_ids bigint[] := '{{}}';
    snippets text[] := '{{}}';
BEGIN
    IF mode IS NULL OR mode NOT IN ('clip', 'text', 'hybrid') THEN
        RAISE EXCEPTION 'mode must be clip, text or hybrid, not %',
            coalesce(quote_literal(left(mode, 40)), 'NULL');
    END IF;
    IF k IS NULL OR k < 1 OR k > {MAX_RESULTS} THEN
        RAISE EXCEPTION 'the number of results must be 1 to {MAX_RESULTS}, not %',
            coalesce(k::text, 'NULL');
    END IF;
    IF skip IS NULL OR skip < 0 OR k + skip > {MAX_RESULTS} THEN
        RAISE EXCEPTION 'skip (the offset) must be 0 or more, with k + skip at most '
            '{MAX_RESULTS}, not %', coalesce(skip::text, 'NULL');
    END IF;
    IF mode <> 'text' AND p_query IS NULL THEN
        RAISE EXCEPTION 'mode % needs the query vector', mode;
    END IF;
    depth := k + skip;
    -- Each list as deep as the page reaches; the CLIP side is clipdb.search_rows itself.
    IF mode <> 'text' THEN
        SELECT array_agg(s.id ORDER BY s.rank), array_agg(s.similarity ORDER BY s.rank)
        INTO clip_ids, clip_similarities
        FROM clipdb.search_rows(p_model_id, p_query, depth, ef_search, after => after,
            before => before, camera => camera, near_lat => near_lat, near_lon => near_lon,
            near_km => near_km, under => under) s;
    END IF;
    IF mode <> 'clip' THEN
        SELECT array_agg(w.id ORDER BY w.rank), array_agg(w.matched_text ORDER BY w.rank)
        INTO text_ids, snippets
        FROM clipdb.search_text_rows(p_model_id, query_text, depth, after, before, camera,
            near_lat, near_lon, near_km, under) w;
    END IF;
    RETURN QUERY
    WITH clip AS (
        SELECT c.id, c.n, c.similarity
        FROM unnest(clip_ids, clip_similarities) WITH ORDINALITY AS c(id, similarity, n)
    ), words AS (
        SELECT w.id, w.n, w.snippet
        FROM unnest(text_ids, snippets) WITH ORDINALITY AS w(id, snippet, n)
    ), fused AS (
        -- Reciprocal rank fusion: each list adds 1 / ({RRF_K} + its rank).
        SELECT coalesce(c.id, w.id) AS id, c.n AS clip_rank, w.n AS text_rank, c.similarity,
            w.snippet,
            coalesce(1.0 / ({RRF_K} + c.n), 0) + coalesce(1.0 / ({RRF_K} + w.n), 0) AS score
        FROM clip c FULL JOIN words w ON w.id = c.id
    ), page AS (
        SELECT f.*, row_number() OVER (ORDER BY f.score DESC, f.text_rank NULLS LAST,
            f.clip_rank NULLS LAST, f.id) AS position
        FROM fused f
        ORDER BY position OFFSET skip LIMIT k
    )
    SELECT p.position, i.id, i.path, p.similarity,
        CASE WHEN p.clip_rank IS NULL THEN 'text' WHEN p.text_rank IS NULL THEN 'clip'
            ELSE 'both' END,
        p.snippet, i.path_bytes, i.taken_at, i.taken_at_naive, i.camera, i.lat, i.lon
    FROM page p JOIN clipdb.images i ON i.id = p.id
    ORDER BY p.position;
END
$fn$;
COMMENT ON FUNCTION clipdb.search_hybrid({HYBRID_TYPES}) IS
    'CLIP similarity (clipdb.search_rows) and words (clipdb.search_text_rows) in one list by '
    'reciprocal rank fusion; mode clip, text or hybrid; match says which list found a hit.';
"""

GRANT = """
DO $do$
BEGIN
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'clipdb_reader') THEN
        GRANT SELECT ON clipdb.image_text TO clipdb_reader;
    END IF;
END
$do$;
"""

DROP = f"""
DROP FUNCTION clipdb.search_hybrid({HYBRID_TYPES});
DROP FUNCTION clipdb.search_text_rows({TEXT_ROWS_TYPES});
DROP FUNCTION clipdb.text_snippet(clipdb.image_text, tsquery, text[]);
DROP TABLE clipdb.image_text;
DROP FUNCTION clipdb.text_fold(text);
DROP TEXT SEARCH CONFIGURATION clipdb.simple_unaccent;
"""


def _extension_schema(name: str) -> str:
    """Where ``name`` is installed (it may predate clipdb, in any schema)."""
    row = op.get_bind().exec_driver_sql(
        "SELECT n.nspname FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace "
        "WHERE e.extname = %(name)s",
        {"name": name},
    )
    found = row.fetchone()
    assert found is not None, name
    return str(found[0])


def upgrade() -> None:
    # Both are trusted extensions (a database owner may create them); they ship with PostgreSQL.
    op.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
    op.execute("CREATE EXTENSION IF NOT EXISTS unaccent")
    trgm, unaccent = _extension_schema("pg_trgm"), _extension_schema("unaccent")
    op.execute(_schema(trgm, unaccent))
    op.execute(_text_rows(trgm))
    op.execute(HYBRID)
    op.execute(GRANT)


def downgrade() -> None:
    op.execute(DROP)
