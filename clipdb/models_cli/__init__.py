"""The models a database holds, side by side (``clipdb models`` is the CLI).

A library re-indexed with a second model keeps both sets of rows; the default model (stored in
the database, :mod:`clipdb.db.model_admin`) is what every client searches when none is named.
Switching it is refused until the new model covers every file the database knows, so a search
never loses images by a switch.
"""

from __future__ import annotations

from typing import Any

import psycopg

from clipdb.db.model_admin import ModelRow, missing_paths, model_rows
from clipdb.db.registry import Model, list_models
from clipdb.errors import ClipdbError, Option, UsageError
from clipdb.models import canonical_model_name

SHOWN_MISSING = 5  # paths --force names of what the new default would not find


def model_name(model: Model) -> str:
    """How the commands and SQL's ``model =>`` name one model: ``architecture/pretrained``."""
    return f"{model.architecture}/{model.pretrained}"


def models_named(models: list[Model], name: str) -> list[Model]:
    """Those of ``models`` that ``name`` means: the one named ``architecture/pretrained``, else
    every one with that architecture (one match is an answer, several are ambiguous)."""
    exact = [m for m in models if model_name(m) == name]
    return exact or [m for m in models if m.architecture == name]


def find_model(conn: psycopg.Connection[Any], name: str) -> Model:
    """The registered model ``name`` means: ``architecture/pretrained``, or an architecture
    registered with one set of weights. Anything else: one line naming the choices."""
    models = list_models(conn)
    matches = models_named(models, canonical_model_name(name))
    if len(matches) == 1:
        return matches[0]
    known = ", ".join(model_name(m) for m in models) or "none"
    if matches:
        raise UsageError(f"{name} names several models; use one of {known}")
    raise ClipdbError(f"no model {name} in the database; models: {known}")


def row_json(row: ModelRow) -> dict[str, Any]:
    return {
        "name": model_name(row.model),
        "architecture": row.model.architecture,
        "pretrained": row.model.pretrained,
        "dim": row.model.dim,
        "images": row.images,
        "covered": row.covered,
        "known_files": row.known,
        "coverage_percent": round(row.coverage, 2),
        "index_bytes": row.index_bytes,
        "default": row.default,
        "last_ingest": row.last_ingest.isoformat() if row.last_ingest else None,
    }


def format_rows(rows: list[ModelRow]) -> str:
    if not rows:
        return "no indexed images yet; run clipdb ingest (models: clipdb models presets)"
    header = ("", "MODEL", "DIM", "IMAGES", "COVERAGE", "INDEX", "LAST INGEST")
    lines = [
        (
            "*" if row.default else "",
            model_name(row.model),
            str(row.model.dim),
            str(row.images),
            f"{row.covered} of {row.known} ({row.coverage:.0f}%)",
            f"{row.index_bytes / 2**20:.1f} MiB",
            row.last_ingest.strftime("%Y-%m-%d %H:%M") if row.last_ingest else "-",
        )
        for row in rows
    ]
    widths = [max(len(line[i]) for line in [header, *lines]) for i in range(len(header))]
    table = [
        "  ".join(f"{cell:<{widths[i]}}" for i, cell in enumerate(line)).rstrip()
        for line in [header, *lines]
    ]
    if not any(row.default for row in rows):
        table.append("no default stored: commands use --model (default ViT-B-32)")
    else:
        table.append("* the default: what every client searches when no model is named")
    return "\n".join(table)


def check_switch(conn: psycopg.Connection[Any], model: Model, *, force: bool) -> list[str]:
    """Refuse a default that would find fewer files than the database knows (without
    ``force``); with it, the lines saying what searches would now miss."""
    row = next((r for r in model_rows(conn) if r.model == model), None)
    covered, known = (row.covered, row.known) if row else (0, 0)
    if row is None and not force:
        raise ClipdbError(f"{model_name(model)} has no indexed images; ingest with it first")
    if covered >= known:
        return []
    missing = known - covered
    if not force:
        raise ClipdbError(
            f"{model_name(model)} covers {covered} of {known} files ({missing} missing); "
            f"finish: clipdb ingest --model {model.architecture} --pretrained "
            f"{model.pretrained} PATH..., or pass ",
            Option("force"),
        )
    lines = [f"searches will miss {missing} of {known} files, e.g.:"]
    lines += [f"  {path}" for path in missing_paths(conn, model, SHOWN_MISSING)]
    return lines
