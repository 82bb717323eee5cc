"""How results are printed: a table, the original tool's JSON, bare paths."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from clipdb.db.queries import Hit
from clipdb.terminal import exact_bytes, printable


def format_table(hits: Sequence[Hit]) -> str:
    """``rank  similarity  path`` with aligned columns."""
    lines = [f"{'rank':>4}  {'similarity':>10}  path"]
    lines += [
        f"{hit.rank:>4}  {hit.similarity:>10.4f}  {printable(hit.image_path)}" for hit in hits
    ]
    return "\n".join(lines)


def result_dicts(hits: Sequence[Hit]) -> list[dict[str, Any]]:
    """The original tool's result format (plus ``image_id``)."""
    return [hit.to_dict() for hit in hits]


def format_json(hits: Sequence[Hit]) -> str:
    return json.dumps(result_dicts(hits), indent=2, ensure_ascii=False)


def format_paths(hits: Sequence[Hit]) -> str:
    """One path a line, control characters escaped (a name cannot forge a line)."""
    return "\n".join(printable(hit.image_path) for hit in hits)


def null_separated_paths(hits: Sequence[Hit]) -> bytes:
    """Exact path bytes, each followed by NUL (``--paths --null``, for ``xargs -0``)."""
    return b"".join(exact_bytes(hit.image_path) + b"\0" for hit in hits)
