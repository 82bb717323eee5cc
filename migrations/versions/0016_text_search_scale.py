"""Text search at a million rows: work bounded by the matches, filters shared with CLIP search.

Why: ``clipdb.search_text_rows`` (0013) scored every row holding a word or a part-string with
``word_similarity`` over the whole text (~20 us a row), so a common word or a short
part-string cost a quarter of a second at 100k rows; and a query matching nothing fell back to
a trigram similarity scan of every row's text (seconds). Now:

- whole words first: the rows whose ``document`` matches (the GIN index), ranked by
  ``ts_rank_cd`` alone. Part-strings are looked for only when fewer than k rows match whole
  words, since whole-word rows always ranked first; they rank by how much of the word holding
  them the query covers ("2275" in "w2275" before "w22750"), a few string functions a row.
  A quoted phrase's part-string search starts from the document index (its inner words
  whole, its last word as a prefix) rather than the trigram index, whose common trigrams
  span much of the table.
- a misread word (nothing matched) is looked up in ``clipdb.text_words``, the distinct words
  of all documents (a trigram index over words, not over rows): each query word becomes its
  closest known spellings, whose rows the GIN index finds; at most ``FUZZY_POOL`` of them
  are scored by ``word_similarity``. The table is filled from the documents here, and a
  statement trigger adds the words of each new or changed document (sorted, so two writers
  never wait on each other in opposite orders). Words of deleted rows stay: a stale word
  only expands to a query that finds nothing.
- the metadata and folder filters come from ``clipdb.search_filter``, which writes them as
  ``clipdb.search_rows`` (0011) does: the camera text becomes the model's matching camera
  names (case-insensitive substring, read from the camera index) when there are at most
  ``MAX_CAMERAS`` names; the same date bounds, haversine circle and folder key range.
- with no filter in a database of one model, matches are ranked from the text rows alone:
  looking up each match's image row (for its model) cost as much as ranking it.

``clipdb.search_hybrid`` calls ``search_text_rows`` by name and is unchanged.

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-07
"""

import importlib.util
from pathlib import Path
from typing import Any

from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None

MAX_RESULTS = 10_000  # clipdb.config.MAX_RESULTS
MAX_QUERY_TEXT = 1000  # clipdb.config.MAX_QUERY_TEXT
MAX_NEAR_KM = 20100  # clipdb.filters.Near
MAX_NAME = 200
MAX_PATH = 32768
MAX_CAMERAS = 1000  # as 0011's search_rows: above it, the camera stays a substring test
FUZZY_WORDS = 5  # known spellings a misread query word stands for
FUZZY_POOL = 2000  # rows a misread query's spellings bring that are scored


def _load(name: str) -> Any:
    path = Path(__file__).with_name(name)
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


FILTER_TYPES = (
    "smallint, timestamptz, timestamptz, text, double precision, double precision, "
    "double precision, bytea"
)

# The filters of clipdb.search_rows, checked and written the same way, for the text side.
SEARCH_FILTER = rf"""
CREATE FUNCTION clipdb.search_filter(
    p_model_id smallint, after timestamptz, before timestamptz, camera text,
    near_lat double precision, near_lon double precision, near_km double precision,
    under bytea, OUT conditions text, OUT cameras text[], OUT under_high bytea)
LANGUAGE plpgsql STABLE AS $fn$
#variable_conflict use_variable
DECLARE
    camera_names bigint;
BEGIN
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
    conditions := '';
    IF after IS NOT NULL THEN
        conditions := conditions || ' AND i.taken_at >= $5';
    END IF;
    IF before IS NOT NULL THEN
        conditions := conditions || ' AND i.taken_at < $6';
    END IF;
    IF camera IS NOT NULL THEN
        -- The model's camera names containing the text (a skip scan of the camera index).
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
            conditions := conditions || ' AND strpos(lower(i.camera), lower($7)) > 0';
        ELSE
            conditions := conditions || ' AND lower(i.camera) = ANY($13)';
        END IF;
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
END
$fn$;
COMMENT ON FUNCTION clipdb.search_filter({FILTER_TYPES}) IS
    'The metadata and folder filters of clipdb.search_rows, checked, as SQL conditions on '
    'clipdb.images i naming $5 after, $6 before, $7 camera, $8 near_lat, $9 near_lon, '
    '$10 near_km, $11 under, $12 under_high, $13 cameras (the matching camera names).';
"""

WORDS = r"""
CREATE TABLE clipdb.text_words (word text PRIMARY KEY);
COMMENT ON TABLE clipdb.text_words IS
    'Every distinct word of clipdb.image_text documents (never removed): where a misread '
    'query word finds its known spellings.';
CREATE INDEX text_words_trgm ON clipdb.text_words USING gin (word @TRGM@.gin_trgm_ops);
INSERT INTO clipdb.text_words (word)
    SELECT DISTINCT w FROM clipdb.image_text t, unnest(tsvector_to_array(t.document)) w;

CREATE FUNCTION clipdb.image_text_words() RETURNS trigger LANGUAGE plpgsql AS $fn$
BEGIN
    INSERT INTO clipdb.text_words (word)
        SELECT DISTINCT w FROM new_rows t, unnest(tsvector_to_array(t.document)) w
        ORDER BY w
    ON CONFLICT DO NOTHING;
    RETURN NULL;
END
$fn$;
-- A trigger's own: nobody calls it (firing it needs no EXECUTE right).
REVOKE ALL ON FUNCTION clipdb.image_text_words() FROM PUBLIC;
CREATE TRIGGER image_text_words_insert AFTER INSERT ON clipdb.image_text
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT
    EXECUTE FUNCTION clipdb.image_text_words();
CREATE TRIGGER image_text_words_update AFTER UPDATE ON clipdb.image_text
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT
    EXECUTE FUNCTION clipdb.image_text_words();
DO $do$
BEGIN
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'clipdb_reader') THEN
        GRANT SELECT ON clipdb.text_words TO clipdb_reader;
    END IF;
END
$do$;
"""

TEXT_ROWS = rf"""
CREATE OR REPLACE FUNCTION clipdb.search_text_rows(
    p_model_id smallint, query_text text, k integer DEFAULT 10,
    after timestamptz DEFAULT NULL, before timestamptz DEFAULT NULL, camera text DEFAULT NULL,
    near_lat double precision DEFAULT NULL, near_lon double precision DEFAULT NULL,
    near_km double precision DEFAULT NULL, under bytea DEFAULT NULL)
RETURNS TABLE (rank bigint, id bigint, score double precision, matched_text text)
LANGUAGE plpgsql STABLE AS $fn$
#variable_conflict use_variable
DECLARE
    query tsquery;
    folded text;
    terms text[];
    patterns text[];
    parts text;
    f record;
    ids bigint[];
    scores float8[];
    more_ids bigint[];
    more_scores float8[];
    spellings text;
    found_all boolean;
    narrow text;
    narrow_all boolean;
    source text := 'clipdb.image_text t JOIN clipdb.images i ON i.id = t.image_id '
        'WHERE i.model_id = $4';
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
    f := clipdb.search_filter(p_model_id, after, before, camera, near_lat, near_lon, near_km,
        under);
    IF NOT EXISTS (SELECT FROM clipdb.models m WHERE m.id = p_model_id) THEN
        RAISE EXCEPTION 'no clipdb model with id %', coalesce(p_model_id::text, 'NULL');
    END IF;
    IF f.conditions = '' AND (SELECT count(*) FROM clipdb.models) = 1 THEN
        -- Every text row is this model's, and no filter reads the image row: rank the text
        -- rows alone, without looking up each match's image row (half the cost of a
        -- common word).
        source := 'clipdb.image_text t WHERE true';
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

    -- Whole words (the document index), by ts_rank_cd: OCR text counts most.
    EXECUTE 'SELECT array_agg(r.image_id ORDER BY r.score DESC, r.image_id), '
        'array_agg(r.score ORDER BY r.score DESC, r.image_id) FROM ('
        'SELECT t.image_id, 1 + ts_rank_cd(t.document, $1) AS score '
        'FROM ' || source || ' AND t.document @@ $1' || f.conditions
        || ' ORDER BY score DESC, t.image_id LIMIT $14) r'
    INTO ids, scores
    USING query, patterns, folded, p_model_id, after, before, camera, near_lat, near_lon,
        near_km, under, f.under_high, f.cameras, k, NULL::bigint[], terms, NULL::tsquery;
    ids := coalesce(ids, '{{}}');
    scores := coalesce(scores, '{{}}');

    -- Part-strings from three characters, or any length in a script written without spaces
    -- between words (Chinese, Japanese): "发票" inside "增值税发票号码". Outside ASCII the trigram
    -- index (C collation) sees no trigrams, so such a pattern is checked row by row. Only
    -- while whole words left room: they rank above every part-string.
    IF cardinality(ids) < k
            AND EXISTS (SELECT FROM unnest(terms) u WHERE length(u) >= 3 OR u ~ '[^\x01-\x7f]') THEN
        -- A quoted phrase's inner words are whole words of the text and its last word starts
        -- one: the document index finds the rows that may hold it (a prefix search), far
        -- fewer than the trigram index, whose common trigrams span much of the table. Only
        -- when each of those words is one word to the parser as well.
        SELECT string_agg(p.words, ' & '), bool_and(p.words IS NOT NULL)
        INTO narrow, narrow_all
        FROM (SELECT (SELECT CASE WHEN bool_and(tsvector_to_array(to_tsvector(
                                'clipdb.simple_unaccent', w.piece)) = ARRAY[w.piece])
                                FILTER (WHERE w.n > 1)
                            THEN string_agg('''' || replace(replace(w.piece, '\', '\\'), '''',
                                '''''') || '''' || CASE WHEN w.n = w.total THEN ':*' ELSE '' END,
                                ' & ') FILTER (WHERE w.n > 1) END
                      FROM (SELECT x.piece, x.n, count(*) OVER () AS total
                            FROM unnest(regexp_split_to_array(u, '\s+'))
                                WITH ORDINALITY AS x(piece, n)) w) AS words
              FROM unnest(terms) u WHERE u ~ '\s') p;
        -- Each other pattern its own LIKE, so the trigram index serves every one of them.
        SELECT string_agg(format(CASE WHEN narrow_all AND terms[n] ~ '\s'
                THEN '(t.haystack || '''') LIKE $2[%s]' ELSE 't.haystack LIKE $2[%s]' END, n),
            ' AND ')
            || CASE WHEN narrow_all THEN ' AND t.document @@ $17' ELSE '' END
        INTO parts FROM generate_series(1, cardinality(patterns)) n;
        -- How much of the word holding it each term covers, averaged (at most 1).
        EXECUTE 'SELECT array_agg(r.image_id ORDER BY r.score DESC, r.image_id), '
            'array_agg(r.score ORDER BY r.score DESC, r.image_id) FROM ('
            'SELECT t.image_id, (SELECT avg(length(x)::float8 / (length(x) '
            '+ length(substring(left(t.haystack, p - 1) FROM ''\S*$'')) '
            '+ length(substring(substr(t.haystack, p + length(x)) FROM ''^\S*''))))'
            ' FROM unnest($16) x, LATERAL strpos(t.haystack, x) p) AS score '
            'FROM ' || source || ' AND ' || parts || ' AND t.image_id <> ALL($15)'
            || f.conditions || ' ORDER BY score DESC, t.image_id '
            'LIMIT $14 - cardinality($15)) r'
        INTO more_ids, more_scores
        USING query, patterns, folded, p_model_id, after, before, camera, near_lat, near_lon,
            near_km, under, f.under_high, f.cameras, k, ids, terms, narrow::tsquery;
        ids := ids || coalesce(more_ids, '{{}}');
        scores := scores || coalesce(more_scores, '{{}}');
    END IF;

    IF cardinality(ids) = 0 AND length(folded) >= 4 AND query_text !~ '"|(^|\s)-' THEN
        -- No exact match: words OCR misread by a letter or so (façade read as "facad"). Each
        -- query word stands for its closest known spellings (trigram word similarity above
        -- pg_trgm's threshold, from the words table's own index); rows holding one of each
        -- are scored by how closely their text holds the query. Not when something matched
        -- exactly (near spellings of it would only crowd it), nor for a "phrase" or a -word.
        SELECT bool_and(s.alternatives IS NOT NULL),
            string_agg('(' || s.alternatives || ')', ' & ')
        INTO found_all, spellings
        FROM (SELECT (SELECT string_agg('''' || replace(replace(w.word, '\', '\\'), '''',
                        '''''') || '''', ' | ')
                      FROM (SELECT tw.word FROM clipdb.text_words tw
                            WHERE tw.word OPERATOR(@TRGM@.%>) l
                            ORDER BY @TRGM@.word_similarity(l, tw.word) DESC, tw.word
                            LIMIT {FUZZY_WORDS}) w) AS alternatives
              FROM unnest(tsvector_to_array(to_tsvector('clipdb.simple_unaccent',
                  query_text))) l) s;
        IF found_all THEN
            EXECUTE 'SELECT array_agg(r.image_id ORDER BY r.score DESC, r.image_id), '
                'array_agg(r.score ORDER BY r.score DESC, r.image_id) FROM ('
                'SELECT c.image_id, @TRGM@.word_similarity($3, c.haystack) - 1 AS score FROM ('
                'SELECT t.image_id, t.haystack '
                'FROM ' || source || ' AND t.document @@ $17' || f.conditions
                || ' LIMIT {FUZZY_POOL}) c ORDER BY score DESC, c.image_id LIMIT $14) r'
            INTO ids, scores
            USING query, patterns, folded, p_model_id, after, before, camera, near_lat,
                near_lon, near_km, under, f.under_high, f.cameras, k, ids, terms,
                spellings::tsquery;
            ids := coalesce(ids, '{{}}');
            scores := coalesce(scores, '{{}}');
        END IF;
    END IF;
    RETURN QUERY
    SELECT h.n, h.id, h.score, clipdb.text_snippet(t, query, terms[1:1])
    FROM unnest(ids, scores) WITH ORDINALITY AS h(id, score, n)
    JOIN clipdb.image_text t ON t.image_id = h.id
    ORDER BY h.n;
END
$fn$;
"""


def _extension_schema(name: str) -> str:
    row = op.get_bind().exec_driver_sql(
        "SELECT n.nspname FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace "
        "WHERE e.extname = %(name)s",
        {"name": name},
    )
    found = row.fetchone()
    assert found is not None, name
    return str(found[0])


def upgrade() -> None:
    trgm = _ident(_extension_schema("pg_trgm"))
    op.execute(SEARCH_FILTER)
    op.execute(WORDS.replace("@TRGM@", trgm))
    op.execute(TEXT_ROWS.replace("@TRGM@", trgm))


def downgrade() -> None:
    old = _load("0013_image_text.py")
    op.execute(
        old._text_rows(_extension_schema("pg_trgm"))
        .replace(
            "CREATE FUNCTION clipdb.search_text_rows(",
            "CREATE OR REPLACE FUNCTION clipdb.search_text_rows(",
        )
        .replace(
            "CREATE FUNCTION clipdb.text_snippet(",
            "CREATE OR REPLACE FUNCTION clipdb.text_snippet(",
        )
    )
    op.execute("DROP TRIGGER image_text_words_insert ON clipdb.image_text")
    op.execute("DROP TRIGGER image_text_words_update ON clipdb.image_text")
    op.execute("DROP FUNCTION clipdb.image_text_words()")
    op.execute("DROP TABLE clipdb.text_words")
    op.execute(f"DROP FUNCTION clipdb.search_filter({FILTER_TYPES})")
