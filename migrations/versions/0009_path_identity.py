"""A file's identity is its exact name bytes, not the display form in ``path``.

Why: a name that is not UTF-8 is stored as a display form (``a\\xff.png`` for the byte 0xFF)
plus its exact bytes in ``path_bytes`` (0005). A valid UTF-8 name can spell the same display
form literally (a backslash, then ``xff``), and ``UNIQUE (model_id, path)`` made the two files
one row: one was never indexed and the row flipped between them on every run. The key is now
``clipdb.path_key(path, path_bytes)``: ``path_bytes`` when set, else the UTF-8 bytes of
``path``, the name exactly as the file system holds it. ``path`` stays what is shown and
searched by people; every match clipdb makes (upsert, plan, prune, ``--like``, ``--under``,
moves, skipped files) goes through the key.

Why a plpgsql function: ``convert_to`` is STABLE (it depends on the database encoding, which a
database never changes), so an index expression needs an IMMUTABLE wrapper; plpgsql evaluates
it about twice as fast as a non-inlined SQL function. The unique indexes replace the old
``(model_id, path)`` ones (no table rewrite: existing rows keep their values, and their keys
are unique already, since distinct display forms of names that are not UTF-8 never equal a
UTF-8 name's bytes).

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-07
"""

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

UPGRADE_SQL = r"""
CREATE FUNCTION clipdb.path_key(p_path text, p_path_bytes bytea)
RETURNS bytea LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $fn$
BEGIN
    -- Bounded like every function the reader may call (no file system has longer names).
    IF octet_length(p_path) > 32768 OR octet_length(p_path_bytes) > 32768 THEN
        RAISE EXCEPTION 'a path must be at most 32768 bytes';
    END IF;
    RETURN coalesce(p_path_bytes, convert_to(p_path, 'UTF8'));
END
$fn$;
COMMENT ON FUNCTION clipdb.path_key(text, bytea) IS
    'A row''s file name as exact bytes (path_bytes, else path in UTF-8): the identity of a file.';

CREATE UNIQUE INDEX images_model_path_key
    ON clipdb.images (model_id, clipdb.path_key(path, path_bytes));
ALTER TABLE clipdb.images DROP CONSTRAINT images_model_id_path_key;

CREATE UNIQUE INDEX skipped_files_model_path_key
    ON clipdb.skipped_files (model_id, clipdb.path_key(path, path_bytes));
ALTER TABLE clipdb.skipped_files DROP CONSTRAINT skipped_files_pkey;

ANALYZE clipdb.images;
"""

DOWNGRADE_SQL = r"""
-- Two files whose names share a display form cannot both stay under the old key: the later
-- row of each such pair goes (a re-run of ingest would have flipped between them anyway).
DELETE FROM clipdb.images a USING clipdb.images b
    WHERE a.model_id = b.model_id AND a.path = b.path AND a.id > b.id;
DELETE FROM clipdb.skipped_files a USING clipdb.skipped_files b
    WHERE a.model_id = b.model_id AND a.path = b.path AND a.ctid > b.ctid;
ALTER TABLE clipdb.images ADD CONSTRAINT images_model_id_path_key UNIQUE (model_id, path);
ALTER TABLE clipdb.skipped_files ADD CONSTRAINT skipped_files_pkey PRIMARY KEY (model_id, path);
DROP INDEX clipdb.images_model_path_key;
DROP INDEX clipdb.skipped_files_model_path_key;
DROP FUNCTION clipdb.path_key(text, bytea);
"""


def upgrade() -> None:
    op.execute(UPGRADE_SQL)


def downgrade() -> None:
    op.execute(DOWNGRADE_SQL)
