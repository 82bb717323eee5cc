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

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01
"""

from alembic import op

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
    op.execute(
        "COMMENT ON COLUMN clipdb.images.taken_at IS 'EXIF DateTimeOriginal; "
        "wall clock stored as UTC when taken_at_naive (no OffsetTimeOriginal); NULL: no EXIF date'"
    )
    op.execute(
        "COMMENT ON COLUMN clipdb.images.metadata_version IS "
        "'clipdb.exif.METADATA_VERSION that read this row''s metadata; NULL: never read'"
    )


def downgrade() -> None:
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
