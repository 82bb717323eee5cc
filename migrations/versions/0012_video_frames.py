"""Video frames are rows: ``frame_time``, and one search hit per file.

Why: a video is indexed as a few frames sampled from it (scene changes, at least one per 10 s,
at most one per second), each a row with the video's path and the frame's time in seconds.
``frame_time`` is NULL for a photo, so existing rows stay exactly as they are (a nullable
column without a default: no table rewrite). The unique key of a row becomes (model, exact
name bytes, ``coalesce(frame_time, -1)``), so a photo stays one row per file and a video one
row per sampled time; the (model_id, path_key) prefix still serves every lookup by file.

Delta applied to 0011's ``clipdb.search_rows`` (0011 keeps 0010's argument checks and result
page word for word and replaces the plan in between; this function is that text with exactly
these three replacements, asserted when this migration runs):

1. ``RETURNS TABLE (...)`` gains a last output column ``frame_time double precision``.
2. The ``best`` CTE collapses the candidates to one per file: it joins ``clipdb.images`` on id
   and keeps ``DISTINCT ON (clipdb.path_key(i.path, i.path_bytes))`` the nearest candidate
   (``ORDER BY path_key, d, id``), so a video is returned once, at its best frame. (A search
   whose candidates are many frames of one video may then return fewer than k rows.)
3. The final ``SELECT`` adds ``i.frame_time`` as its last column.

The function's return type changes, so it is dropped and created again (and granted again to
``clipdb_reader``); ``clipdb.search_model`` reads it by column name and is unaffected.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-07
"""

import importlib.util
from pathlib import Path
from typing import Any

from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

UPGRADE_TABLE = r"""
ALTER TABLE clipdb.images ADD COLUMN frame_time double precision;
ALTER TABLE clipdb.images ADD CONSTRAINT images_frame_time_check
    CHECK (frame_time IS NULL OR (frame_time >= 0 AND frame_time < 1e7)) NOT VALID;
COMMENT ON COLUMN clipdb.images.frame_time IS
    'Seconds into the video of this frame; NULL for a photo.';
-- A photo's NULL time counts as one value: coalesce, not NULLS NOT DISTINCT (PostgreSQL 15+).
CREATE UNIQUE INDEX images_model_path_frame_key
    ON clipdb.images (model_id, clipdb.path_key(path, path_bytes), coalesce(frame_time, -1));
DROP INDEX clipdb.images_model_path_key;
"""

DOWNGRADE_TABLE = r"""
-- A video's frames share a path: the old key holds one row per file, so frames go.
DELETE FROM clipdb.images WHERE frame_time IS NOT NULL;
CREATE UNIQUE INDEX images_model_path_key
    ON clipdb.images (model_id, clipdb.path_key(path, path_bytes));
DROP INDEX clipdb.images_model_path_frame_key;
ALTER TABLE clipdb.images DROP COLUMN frame_time;
"""

# (0010's text, the replacement): the delta the docstring lists, in its order.
SEARCH_ROWS_DELTA = (
    (
        "    lat double precision, lon double precision)\n",
        "    lat double precision, lon double precision, frame_time double precision)\n",
    ),
    (
        "    WITH best AS (\n"
        "        SELECT * FROM unnest(ids, distances, dates) AS h(id, d, taken_at)\n"
        "    ), kept AS (",
        "    WITH best AS (\n"
        "        -- One hit per file: a video's frames collapse to the nearest one.\n"
        "        SELECT DISTINCT ON (clipdb.path_key(i.path, i.path_bytes)) h.id, h.d, h.taken_at\n"
        "        FROM unnest(ids, distances, dates) AS h(id, d, taken_at)\n"
        "        JOIN clipdb.images i ON i.id = h.id\n"
        "        ORDER BY clipdb.path_key(i.path, i.path_bytes), h.d, h.id\n"
        "    ), kept AS (",
    ),
    (
        "        i.camera, i.lat, i.lon\n    FROM page p",
        "        i.camera, i.lat, i.lon, i.frame_time\n    FROM page p",
    ),
)


def _load(name: str) -> Any:
    path = Path(__file__).with_name(name)
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def search_rows_with_frames(sql: str) -> str:
    """0011's CREATE FUNCTION text with the delta applied (each part must match once)."""
    for old, new in SEARCH_ROWS_DELTA:
        assert sql.count(old) == 1, f"0012: search_rows delta does not apply: {old!r}"
        sql = sql.replace(old, new)
    return sql


def upgrade() -> None:
    topk = _load("0010_one_topk.py")
    plans = _load("0011_halfvec_storage.py")
    op.execute(UPGRADE_TABLE)
    op.execute(f"DROP FUNCTION clipdb.search_rows({topk.SEARCH_ROWS_TYPES})")
    op.execute(search_rows_with_frames(plans.search_rows_sql(topk)))
    op.execute(topk.GRANT)


def downgrade() -> None:
    topk = _load("0010_one_topk.py")
    plans = _load("0011_halfvec_storage.py")
    op.execute(f"DROP FUNCTION clipdb.search_rows({topk.SEARCH_ROWS_TYPES})")
    op.execute(DOWNGRADE_TABLE)
    op.execute(plans.search_rows_sql(topk))
    op.execute(topk.GRANT)
