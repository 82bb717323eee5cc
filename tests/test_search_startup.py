"""What ``clipdb search --like`` loads and opens: its own work is milliseconds of SQL, so its
time is its start-up, and modules it does not need must stay unimported (bench/cli_start.py
measures the time itself)."""

from __future__ import annotations

import subprocess
import sys

from helpers import insert_rows

# A model, a decoder, the migration tool, the web server, OCR, plotting: none of them is needed
# to search by an already indexed image.
HEAVY = (
    "PIL",
    "alembic",
    "av",
    "fastapi",
    "matplotlib",
    "onnxruntime",
    "open_clip",
    "openvino",
    "pillow_heif",
    "rapidocr_onnxruntime",
    "rawpy",
    "sqlalchemy",
    "tokenizers",
    "torch",
    "tqdm",
    "transformers",
)

PROBE = """
import sys

import psycopg

real_connect = psycopg.connect
opened = []


def counting_connect(*args, **kwargs):
    opened.append(args)
    return real_connect(*args, **kwargs)


psycopg.connect = counting_connect
from clipdb.__main__ import main

code = main(["search", "--like", sys.argv[1], "--paths", "-k", "2"])
heavy = sorted(name for name in {heavy!r} if name in sys.modules)
print("CODE", code, "HEAVY", heavy, "CONNECTIONS", len(opened), file=sys.stderr)
"""


def test_like_search_imports_nothing_heavy_and_opens_two_connections(database) -> None:
    """The schema check's connection, then one for the model choice, the stored embedding
    and the top-k together (each opened its own: a server process and pgvector's four type
    lookups apiece). Nothing of PIL either: clipdb.exif is imported for a constant."""
    with database.connect() as conn:
        _, _, paths = insert_rows(conn, "startup-probe", 8, 5)
    done = subprocess.run(
        [sys.executable, "-c", PROBE.format(heavy=HEAVY), paths[3]],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.stdout.splitlines()[0] == paths[3], done.stderr
    assert done.stderr.splitlines()[-1] == "CODE 0 HEAVY [] CONNECTIONS 2", done.stderr
