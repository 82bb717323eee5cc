"""``clipdb ingest --all``: index every root the database knows with one model.

Why: re-indexing a library with a second model (a multilingual or SigLIP 2 preset) should
not need the user to remember every folder ever ingested. The roots are the top-most folders
of the files any model has rows for. Each root is an ordinary incremental ingest (resumable:
a rerun skips what the model already has), never pruned: a root that is missing (an unplugged
disk) is reported and left as it is. Searches go on using the default model meanwhile; when
the new model covers every known file, one line suggests switching.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import replace

from clipdb.config import Settings
from clipdb.db import Database, open_database
from clipdb.db.model_admin import default_model, has_default_table, known_directories, model_rows
from clipdb.ingest import IngestOptions, IngestSummary, ingest
from clipdb.terminal import printable


def top_roots(folders: list[str]) -> list[str]:
    """Folders with none of their ancestors in the list (``folders`` sorted)."""
    roots: list[str] = []
    for folder in folders:
        if roots and (folder == roots[-1] or folder.startswith(roots[-1].rstrip("/") + "/")):
            continue
        roots.append(folder)
    return roots


def ingest_all(
    options: IngestOptions,
    settings: Settings,
    report: Callable[[IngestSummary], None],
) -> int:
    """Ingest every known root with ``options``' model; the number of roots not reachable."""
    database = open_database(settings)
    with database.connect() as conn:
        roots = top_roots(known_directories(conn))
    if not roots:
        print("the database knows no files yet; ingest a PATH first", file=sys.stderr)
        return 0
    options = replace(options, prune=False, prune_missing_roots=False)
    missing = 0
    encoder = None
    for number, root in enumerate(roots, 1):
        shown = printable(root)
        if not os.path.isdir(root):
            missing += 1
            message = f"[{number}/{len(roots)}] {shown}: not reachable; skipped, rows kept"
            print(message, file=sys.stderr, flush=True)
            continue
        print(f"[{number}/{len(roots)}] {shown}", file=sys.stderr, flush=True)
        if encoder is None:
            from clipdb.encoders import load_encoder
            from clipdb.ingest.options import FIRST_RUN_CONVERSION

            encoder = load_encoder(
                options.model or settings.model,
                options.pretrained,
                device=options.device,
                precision=options.precision,
                backend=options.backend,
                background=FIRST_RUN_CONVERSION,
            )
        report(ingest([root], options, database=database, encoder=encoder))
    if encoder is not None:
        suggest_switch(database, encoder.architecture, encoder.pretrained)
    return missing


def suggest_switch(database: Database, architecture: str, pretrained: str) -> None:
    """One line when the model now covers every known file and is not the default."""
    wanted = (architecture, pretrained)
    with database.connect() as conn:
        rows = [r for r in model_rows(conn) if (r.model.architecture, r.model.pretrained) == wanted]
        row = rows[0] if rows else None
        current = default_model(conn) if has_default_table(conn) else None
    if row is None or row.covered < row.known or (current is not None and current == row.model):
        return
    print(
        f"{architecture}/{pretrained} now covers all {row.known} files; make it the default "
        f"for every client: clipdb models default {architecture}/{pretrained}",
        file=sys.stderr,
    )
