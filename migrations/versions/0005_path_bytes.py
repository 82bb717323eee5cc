"""File names that are not valid UTF-8 keep their exact bytes.

Why: PostgreSQL ``text`` (UTF8) cannot hold a name such as ``caf\\xe9.png`` from an old
Windows/zip tree (Python sees it as a str with surrogate escapes), so ingest failed with a
UnicodeEncodeError for the whole tree, on every run. Such a name is now stored in ``path`` as a
display form (undecodable bytes written ``\\xe9``, backslashes doubled) and its exact bytes in
the new nullable ``path_bytes``, from which clipdb opens, moves and prunes the file
(``clipdb.files.fs_path``). Valid UTF-8 names leave ``path_bytes`` NULL: nothing changes for
existing rows.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01
"""

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE clipdb.images ADD COLUMN path_bytes bytea")
    op.execute("ALTER TABLE clipdb.skipped_files ADD COLUMN path_bytes bytea")
    op.execute(
        "COMMENT ON COLUMN clipdb.images.path_bytes IS "
        "'The exact file name bytes when they are not valid UTF-8 (path is then a display form)'"
    )


def downgrade() -> None:
    op.execute("ALTER TABLE clipdb.skipped_files DROP COLUMN path_bytes")
    op.execute("ALTER TABLE clipdb.images DROP COLUMN path_bytes")
