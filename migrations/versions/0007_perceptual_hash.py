"""A perceptual hash per image, an index for "hashes within Hamming distance d", clipdb.duplicates.

Why: ``clipdb dupes`` finds re-encoded, resized and format-converted copies of one photo
(sha256 differs, pixels nearly equal). Each row gets ``phash bit(64)``, a 64-bit DCT pHash of
the decoded pixels (clipdb/phash.py), NULL until the next ingest computes it (rows indexed
before this revision get it without being re-encoded).

Which index: pairs within distance d must be found without comparing every pair. Banding
(pigeonhole) is exact: the 64 bits are split into 4 bands of 16; two hashes within distance d
have at least one band within distance floor(d / 4) of each other. Each band has a B-tree
expression index, so candidates come from equality lookups of the band (d <= 3) or of the band
with one bit flipped (17 lookups, d <= 7); ``bit_count(a # b)`` then checks the full distance.
pgvector's HNSW over ``bit`` with ``bit_hamming_ops`` was the alternative; it is approximate
and many identical hashes (every exact copy) are its worst case, while banding has no recall
loss to measure. The index is not partial per model: a file's hash is the same under every
model, and every query filters on model_id, which leads the index.

``clipdb.duplicates(tier, max_distance, model, pretrained)`` gives other applications the
same pairs ``clipdb dupes`` groups: for 'exact', each image with the lowest id of its sha256
group; for 'near', each pair (lower id first) within ``max_distance``. ``clipdb_reader`` may
call it (its statement timeout bounds it).

Revision ID: 0007
Revises: 0005
Create Date: 2026-12-01
"""

from alembic import op

revision = "0007"
down_revision = "0005"
branch_labels = None
depends_on = None

BANDS = 4
BAND_BITS = 16

INDEXES = "\n".join(
    f"CREATE INDEX images_phash_band{band} ON clipdb.images "
    f"(model_id, substring(phash FROM {band * BAND_BITS + 1} FOR {BAND_BITS})) "
    "WHERE phash IS NOT NULL;"
    for band in range(BANDS)
)

DUPLICATES = r"""
CREATE FUNCTION clipdb.duplicates(
    tier text DEFAULT 'near', max_distance integer DEFAULT 4, model text DEFAULT NULL,
    pretrained text DEFAULT NULL)
RETURNS TABLE (image_id bigint, other_id bigint, distance integer)
LANGUAGE plpgsql STABLE AS $fn$
DECLARE
    model_id smallint;
    branches text[] := '{}';
    band integer;
    probe text;
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
    IF max_distance IS NULL OR max_distance NOT BETWEEN 0 AND 7 THEN
        RAISE EXCEPTION 'clipdb.duplicates: max_distance must be 0..7, not %', max_distance;
    END IF;
    FOR band IN 0..3 LOOP
        probe := format('substring(a.phash FROM %s FOR 16)', band * 16 + 1);
        IF max_distance >= 4 THEN  -- some band is within one bit: probe its 17 neighbours
            probe := probe || ' # m.mask';
        END IF;
        branches := branches || format(
            'SELECT a.id AS a_id, b.id AS b_id, bit_count(a.phash # b.phash)::integer AS d '
            'FROM clipdb.images a %s JOIN clipdb.images b '
            'ON b.model_id = %s AND b.phash IS NOT NULL '
            'AND substring(b.phash FROM %s FOR 16) = %s AND b.id > a.id '
            'WHERE a.model_id = %s AND a.phash IS NOT NULL',
            CASE WHEN max_distance >= 4 THEN
                'CROSS JOIN (SELECT B''0000000000000000''::bit(16) UNION ALL '
                'SELECT B''1000000000000000''::bit(16) >> s FROM generate_series(0, 15) s) m(mask)'
            ELSE '' END,
            model_id, band * 16 + 1, probe, model_id);
    END LOOP;
    RETURN QUERY EXECUTE format(
        'SELECT DISTINCT c.a_id, c.b_id, c.d FROM (%s) c WHERE c.d <= $1',
        array_to_string(branches, ' UNION ALL '))
    USING max_distance;
END
$fn$;
COMMENT ON FUNCTION clipdb.duplicates(text, integer, text, text) IS
    'Duplicate pairs of one model: exact (same sha256: image, lowest id of its group) or near '
    '(pHash Hamming distance <= max_distance, 0..7: each pair once, lower id first).';
DO $do$
BEGIN
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'clipdb_reader') THEN
        GRANT EXECUTE ON FUNCTION clipdb.duplicates(text, integer, text, text) TO clipdb_reader;
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
    op.execute("ALTER TABLE clipdb.images DROP COLUMN phash")  # drops the band indexes too
