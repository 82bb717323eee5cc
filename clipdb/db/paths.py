"""How rows are matched to files: by the exact bytes of the name, never its display form.

``path`` holds a display form for names that are not UTF-8 (``clipdb.files.db_path``), which a
valid UTF-8 name can spell too; ``clipdb.path_key(path, path_bytes)`` (migration 0009) is the
exact bytes, and the unique key of ``clipdb.images`` and ``clipdb.skipped_files``.
"""

from __future__ import annotations

import os

import psycopg

# The indexed expression: a WHERE or ON CONFLICT must spell it exactly so to use the index.
PATH_KEY = "clipdb.path_key(path, path_bytes)"


def key(path: str | os.PathLike[str]) -> bytes:
    """A file system path (as Python holds it) as the key it is stored under."""
    raw = os.fsencode(path)
    if b"\0" in raw:
        # No file has such a name. Text parameters used to meet PostgreSQL's own refusal; a
        # bytea key would not, so the same error is raised here (one line, HTTP 400).
        raise psycopg.DataError("a file name cannot contain NUL (0x00) bytes")
    return raw


def prefix_range(prefix: bytes) -> tuple[bytes, bytes]:
    """(low, high): the keys ``k`` with ``low <= k < high`` (bytea compares bytewise) are
    exactly those that start with ``prefix``, a directory's path ending in ``/``. A range,
    unlike a prefix function, is what the B-tree on the key can serve and estimate."""
    if not prefix.endswith(b"/"):
        raise ValueError(f"not a directory prefix: {prefix!r}")
    return prefix, prefix[:-1] + b"0"  # "0" is the byte after "/"
