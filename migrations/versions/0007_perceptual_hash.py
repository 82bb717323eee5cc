"""A perceptual hash per image, an index for "hashes within Hamming distance d", clipdb.duplicates.

Why: ``clipdb dupes`` finds re-encoded, resized and format-converted copies of one photo
(sha256 differs, pixels nearly equal). Each row gets ``phash bit(64)``, a 64-bit DCT pHash of
the decoded pixels (clipdb/phash.py), NULL until the next ingest computes it (rows indexed
before this revision get it without being re-encoded).

Which index: pairs within distance d must be found without comparing every pair. Banding
(pigeonhole, "multi-index hashing") is exact: the 64 bits are split into 3 bands (22, 21, 21
bits); two hashes within distance d have at least one band within distance floor(d / 3). Each
band has a B-tree expression index, so candidates come from equality lookups of the band
(d <= 2), of the band with one bit flipped (~22 lookups, d <= 5) or two (~250, d <= 8);
``bit_count(a # b)`` then checks the full distance. Three wide bands rather than four of 16
bits: random band collisions grow with N^2 / 2^bits, and at 1M rows 16-bit bands probed with
one flipped bit gave ~5e8 candidate pairs against ~1.6e7 for 21-bit bands (BENCHMARKS.md).
pgvector's HNSW over ``bit`` with ``bit_hamming_ops`` was the alternative; it is approximate,
and many identical hashes (every exact copy) are its worst case, while banding has no recall
loss to measure. The indexes are not partial per model: a file's hash is the same under every
model, and every query filters on model_id, which leads each index.

``clipdb.duplicates(tier, max_distance, model, pretrained)`` gives other applications the
same pairs ``clipdb dupes`` groups: for 'exact', each image with the lowest id of its sha256
group; for 'near', each pair (lower id first) within ``max_distance``. ``clipdb_reader`` may
call it (its statement timeout bounds it).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01
"""

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

BANDS = ((1, 22), (23, 21), (44, 21))  # (first bit, width): clipdb.db.dupes uses the same
MAX_DISTANCE = 8  # radius 2 per band

INDEXES = "\n".join(
    f"CREATE INDEX images_phash_band{band} ON clipdb.images "
    f"(model_id, substring(phash FROM {first} FOR {width})) WHERE phash IS NOT NULL;"
    for band, (first, width) in enumerate(BANDS)
)

DUPLICATES = r"""
-- Masks of 0, 1 or 2 set bits in a band of p_width bits: what a probe XORs into a band value.
CREATE FUNCTION clipdb.phash_band_masks(p_width integer, p_radius integer)
RETURNS SETOF bit varying LANGUAGE sql IMMUTABLE AS $fn$
    SELECT repeat('0', p_width)::bit varying
    UNION ALL
    SELECT (('1' || repeat('0', p_width - 1))::bit varying >> s)
        FROM generate_series(0, p_width - 1) s WHERE p_radius >= 1
    UNION ALL
    SELECT (('1' || repeat('0', p_width - 1))::bit varying >> s1)
         | (('1' || repeat('0', p_width - 1))::bit varying >> s2)
        FROM generate_series(0, p_width - 1) s1, generate_series(0, p_width - 1) s2
        WHERE p_radius >= 2 AND s1 < s2
$fn$;

CREATE FUNCTION clipdb.duplicates(
    tier text DEFAULT 'near', max_distance integer DEFAULT 4, model text DEFAULT NULL,
    pretrained text DEFAULT NULL)
RETURNS TABLE (image_id bigint, other_id bigint, distance integer)
LANGUAGE plpgsql STABLE AS $fn$
DECLARE
    model_id smallint;
    branches text[] := '{}';
    firsts integer[] := '{1, 23, 44}';
    widths integer[] := '{22, 21, 21}';
    band integer;
BEGIN
    model_id := (clipdb.resolve_model(model, pretrained, NULL)).id;
    IF tier = 'exact' THEN
        RETURN QUERY EXECUTE format(
            'SELECT min(i.id) OVER (PARTITION BY i.sha256), i.id, 0 FROM clipdb.images i '
            'WHERE i.model_id = %s', model_id);
        RETURN;
    END IF;
    IF tier IS DISTINCT FROM 'near' THEN
        RAISE EXCEPTION 'clipdb.duplicates: tier must be exact or near, not %', tier;
    END IF;
    IF max_distance IS NULL OR max_distance NOT BETWEEN 0 AND 8 THEN
        RAISE EXCEPTION 'clipdb.duplicates: max_distance must be 0..8, not %', max_distance;
    END IF;
    FOR band IN 1..3 LOOP
        -- Each band value of a, XORed with every mask of radius floor(d / 3), looked up
        -- exactly in b's band index: every pair within d meets in some band (pigeonhole).
        branches := branches || format(
            'SELECT a.id AS a_id, b.id AS b_id, bit_count(a.phash # b.phash)::integer AS d '
            'FROM clipdb.images a CROSS JOIN clipdb.phash_band_masks(%3$s, %4$s) m(mask) '
            'JOIN clipdb.images b ON b.model_id = %1$s AND b.phash IS NOT NULL '
            'AND substring(b.phash FROM %2$s FOR %3$s) = '
            '(substring(a.phash FROM %2$s FOR %3$s) # m.mask::bit(%3$s)) AND b.id > a.id '
            'WHERE a.model_id = %1$s AND a.phash IS NOT NULL',
            model_id, firsts[band], widths[band], max_distance / 3);
    END LOOP;
    RETURN QUERY EXECUTE format(
        'SELECT DISTINCT c.a_id, c.b_id, c.d FROM (%s) c WHERE c.d <= $1',
        array_to_string(branches, ' UNION ALL '))
    USING max_distance;
END
$fn$;
COMMENT ON FUNCTION clipdb.duplicates(text, integer, text, text) IS
    'Duplicate pairs of one model: exact (same sha256: image, lowest id of its group) or near '
    '(pHash Hamming distance <= max_distance, 0..8: each pair once, lower id first).';
DO $do$
BEGIN
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'clipdb_reader') THEN
        GRANT EXECUTE ON FUNCTION clipdb.duplicates(text, integer, text, text),
            clipdb.phash_band_masks(integer, integer) TO clipdb_reader;
    END IF;
END
$do$;
"""


def upgrade() -> None:
    op.execute("ALTER TABLE clipdb.images ADD COLUMN phash bit(64)")
    op.execute(
        "COMMENT ON COLUMN clipdb.images.phash IS "
        "'64-bit DCT perceptual hash of the decoded pixels (clipdb/phash.py); NULL until the "
        "next ingest computes it'"
    )
    op.execute(INDEXES)
    op.execute(DUPLICATES)


def downgrade() -> None:
    op.execute("DROP FUNCTION clipdb.duplicates(text, integer, text, text)")
    op.execute("DROP FUNCTION clipdb.phash_band_masks(integer, integer)")
    op.execute("ALTER TABLE clipdb.images DROP COLUMN phash")  # drops the band indexes too
