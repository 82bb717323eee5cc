"""Remember skipped files; a read-only role can no longer block writers.

Why:
- ``clipdb.skipped_files``: a folder with a few files that cannot be used (corrupt, unreadable)
  made every re-run retry them, and so load the model (seconds, over a GB) for nothing. Ingest
  now records (model, path, size, mtime_ns, reason) and retries a file only when it changes.
- ``clipdb.register_model`` serialised on ``pg_advisory_xact_lock(hashtext(...))``, which any
  role can take: ``clipdb_reader`` could hold it and make every new model's ingest, and imports,
  wait forever. It now locks ``clipdb.models`` in SHARE ROW EXCLUSIVE mode, which needs
  UPDATE/DELETE/TRUNCATE rights, so a role that may only read cannot take it; a reader's
  ACCESS SHARE does not conflict with it.
- ``clipdb_reader`` gets a statement timeout and a connection limit, so another app using it
  cannot tie the server up with endless queries or exhaust its connections. (Both are role
  defaults: a session may still ``SET statement_timeout``; the connection limit it cannot lift.)
- ``clipdb.images.source``: 'ingest' for rows clipdb encoded from the file, 'import' for rows
  an ``.npz`` import wrote. Ingest re-points a row whose file is gone onto a new file with the
  same sha256 (a move) only when the row is an ingest row: an imported row may carry any path
  and any sha256, and re-pointing it would give a real file an embedding nobody computed
  from it.
- ``images_embedding_nonzero``: a zero vector has no cosine distance (NaN), which made every
  search that met it fail; no writer may store one. NOT VALID: existing rows are not scanned
  (a database that already holds one must not fail its upgrade), new and updated rows are
  checked.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01
"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

READER_STATEMENT_TIMEOUT = "30s"
READER_CONNECTION_LIMIT = 16

SKIPPED_FILES = r"""
CREATE TABLE clipdb.skipped_files (
    model_id smallint NOT NULL REFERENCES clipdb.models (id) ON DELETE CASCADE,
    path text NOT NULL,
    size bigint NOT NULL,
    mtime_ns bigint NOT NULL,
    reason text NOT NULL,
    skipped_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (model_id, path)
);
COMMENT ON TABLE clipdb.skipped_files IS
    'Files ingest could not use, by model: retried only when their size or mtime changes.';
"""

REGISTER_MODEL = r"""
CREATE OR REPLACE FUNCTION clipdb.register_model(
    p_architecture text, p_pretrained text, p_dim integer)
RETURNS smallint LANGUAGE plpgsql AS $fn$
DECLARE
    found_id smallint;
    found_dim integer;
BEGIN
    {lock}
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
    EXECUTE clipdb.model_index_ddl(found_id, p_dim);
    RETURN found_id;
END
$fn$;
REVOKE ALL ON FUNCTION clipdb.register_model(text, text, integer) FROM PUBLIC;
"""
TABLE_LOCK = "LOCK TABLE clipdb.models IN SHARE ROW EXCLUSIVE MODE;"
ADVISORY_LOCK = "PERFORM pg_advisory_xact_lock(hashtext('clipdb.register_model'));"

IMAGES_COLUMNS = r"""
ALTER TABLE clipdb.images
    ADD COLUMN source text NOT NULL DEFAULT 'ingest'
        CONSTRAINT images_source_known CHECK (source IN ('ingest', 'import')),
    ADD CONSTRAINT images_embedding_nonzero CHECK (vector_norm(embedding) > 0) NOT VALID;
COMMENT ON COLUMN clipdb.images.source IS
    'ingest: encoded by clipdb from the file; import: written by an .npz import (never moved).';
"""
IMAGES_COLUMNS_DOWN = r"""
ALTER TABLE clipdb.images
    DROP CONSTRAINT images_embedding_nonzero,
    DROP COLUMN source;
"""

READER_LIMITS = f"""
DO $do$
BEGIN
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'clipdb_reader') THEN
        GRANT SELECT ON clipdb.skipped_files TO clipdb_reader;
        ALTER ROLE clipdb_reader SET statement_timeout = '{READER_STATEMENT_TIMEOUT}';
        ALTER ROLE clipdb_reader SET idle_in_transaction_session_timeout = '60s';
        ALTER ROLE clipdb_reader CONNECTION LIMIT {READER_CONNECTION_LIMIT};
    END IF;
EXCEPTION WHEN insufficient_privilege THEN
    RAISE NOTICE 'clipdb: no privilege to limit role clipdb_reader';
END
$do$;
"""

READER_UNLIMITED = """
DO $do$
BEGIN
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'clipdb_reader') THEN
        ALTER ROLE clipdb_reader RESET statement_timeout;
        ALTER ROLE clipdb_reader RESET idle_in_transaction_session_timeout;
        ALTER ROLE clipdb_reader CONNECTION LIMIT -1;
    END IF;
EXCEPTION WHEN insufficient_privilege THEN
    NULL;
END
$do$;
"""


def upgrade() -> None:
    op.execute(SKIPPED_FILES)
    op.execute(IMAGES_COLUMNS)
    op.execute(REGISTER_MODEL.replace("{lock}", TABLE_LOCK))
    op.execute(READER_LIMITS)


def downgrade() -> None:
    op.execute(READER_UNLIMITED)
    op.execute(REGISTER_MODEL.replace("{lock}", ADVISORY_LOCK))
    op.execute(IMAGES_COLUMNS_DOWN)
    op.execute("DROP TABLE clipdb.skipped_files")
