"""The similar tier's neighbour lists live in the database, each image checked once.

Why: finding each image's CLIP neighbours cost 2-9 ms an image through the HNSW index, so
`clipdb dupes --tier similar` and `GET /api/duplicates?tier=similar` redid 40 minutes to 2
hours of work at a million images on every call, and paging the API made answers smaller,
not faster. Now the pairs found are kept: ``clipdb.similar_pairs`` holds each pair at or
above the threshold it was looked for at (once, lower id first), ``clipdb.similar_checked``
the images whose neighbours were looked for, with the sha256 they had then, that floor and
the neighbour count. A later call looks only for images not checked yet and reads the rest:
a new row has no mark; a row whose sha256 or embedding an upsert changes loses its mark and
its pairs (trigger ``similar_forget``); rows deleted or dropped with their model take theirs
with them (trigger ``similar_forget_deleted``). The index on (model_id, id) lets "which rows
have no mark" read the index instead of the table (1.3 GB at a million 512-d rows).

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-07
"""

from alembic import op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None

TABLES = """
CREATE TABLE clipdb.similar_checked (
    image_id bigint PRIMARY KEY,
    model_id smallint NOT NULL,
    sha256 bytea NOT NULL,
    floor real NOT NULL,
    neighbours smallint NOT NULL
);
CREATE INDEX similar_checked_model ON clipdb.similar_checked (model_id, floor, neighbours);
COMMENT ON TABLE clipdb.similar_checked IS
    'Images whose CLIP neighbours (at most neighbours, cosine >= floor) are in '
    'clipdb.similar_pairs, while the image keeps this sha256.';
CREATE TABLE clipdb.similar_pairs (
    image_id bigint NOT NULL,
    other_id bigint NOT NULL,
    model_id smallint NOT NULL,
    similarity real NOT NULL,
    PRIMARY KEY (image_id, other_id),
    CHECK (image_id < other_id)
);
CREATE INDEX similar_pairs_other ON clipdb.similar_pairs (other_id);
CREATE INDEX similar_pairs_model ON clipdb.similar_pairs (model_id, similarity);
COMMENT ON TABLE clipdb.similar_pairs IS
    'Pairs of one model''s images at CLIP cosine similarity >= the floor they were looked for '
    'at (clipdb.similar_checked); lower id first.';
CREATE INDEX images_model_id ON clipdb.images (model_id, id);
CREATE FUNCTION clipdb.similar_forget() RETURNS trigger LANGUAGE plpgsql AS $fn$
BEGIN
    IF OLD.sha256 IS DISTINCT FROM NEW.sha256 OR OLD.embedding IS DISTINCT FROM NEW.embedding THEN
        DELETE FROM clipdb.similar_checked WHERE image_id = NEW.id;
        DELETE FROM clipdb.similar_pairs WHERE image_id = NEW.id;
        DELETE FROM clipdb.similar_pairs WHERE other_id = NEW.id;
    END IF;
    RETURN NULL;
END
$fn$;
-- A trigger's function, not for callers (the reader role calls only bounded functions).
REVOKE ALL ON FUNCTION clipdb.similar_forget() FROM PUBLIC;
-- Deleted rows take their marks and pairs with them. A trigger, not foreign keys: a key
-- check locks the image row it names (FOR KEY SHARE), which for a million marks dirtied
-- every page of clipdb.images (26 s of a 70 s first call at a million rows).
CREATE FUNCTION clipdb.similar_forget_deleted() RETURNS trigger LANGUAGE plpgsql AS $fn$
BEGIN
    DELETE FROM clipdb.similar_checked c USING gone g WHERE c.image_id = g.id;
    DELETE FROM clipdb.similar_pairs p USING gone g WHERE p.image_id = g.id;
    DELETE FROM clipdb.similar_pairs p USING gone g WHERE p.other_id = g.id;
    RETURN NULL;
END
$fn$;
REVOKE ALL ON FUNCTION clipdb.similar_forget_deleted() FROM PUBLIC;
CREATE TRIGGER similar_forget_deleted AFTER DELETE ON clipdb.images
    REFERENCING OLD TABLE AS gone FOR EACH STATEMENT
    EXECUTE FUNCTION clipdb.similar_forget_deleted();
-- The columns are compared in the function, not named by the trigger (UPDATE OF, WHEN): a
-- trigger naming a column depends on it, and the online move to halfvec storage (clipdb db
-- upgrade) drops the old embedding column and renames the new one.
CREATE TRIGGER similar_forget AFTER UPDATE ON clipdb.images
    FOR EACH ROW EXECUTE FUNCTION clipdb.similar_forget();
DO $do$
BEGIN
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'clipdb_reader') THEN
        GRANT SELECT ON clipdb.similar_checked, clipdb.similar_pairs TO clipdb_reader;
    END IF;
END
$do$;
"""


def upgrade() -> None:
    op.execute(TABLES)


def downgrade() -> None:
    op.execute("DROP TRIGGER similar_forget_deleted ON clipdb.images")
    op.execute("DROP FUNCTION clipdb.similar_forget_deleted()")
    op.execute("DROP TRIGGER similar_forget ON clipdb.images")
    op.execute("DROP FUNCTION clipdb.similar_forget()")
    op.execute("DROP INDEX clipdb.images_model_id")
    op.execute("DROP TABLE clipdb.similar_pairs")
    op.execute("DROP TABLE clipdb.similar_checked")
