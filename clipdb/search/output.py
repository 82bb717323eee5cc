"""How results are printed: a table, the original tool's JSON, bare paths."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from clipdb.db.queries import Hit
from clipdb.terminal import exact_bytes, printable


def format_table(hits: Sequence[Hit]) -> str:
    """``rank  similarity  path`` with aligned columns; ``taken_at (UTC)``, ``camera`` and
    ``place`` columns too when some hit has photo metadata."""
    if any(hit.match is not None for hit in hits):
        return _text_table(hits)
    if any(hit.has_metadata for hit in hits):
        return _metadata_table(hits)
    lines = [f"{'rank':>4}  {'similarity':>10}  path"]
    lines += [f"{hit.rank:>4}  {hit.similarity:>10.4f}  {shown_path(hit)}" for hit in hits]
    return "\n".join(lines)


def shown_path(hit: Hit) -> str:
    """The path as a table shows it; a video's with the time of its best frame, as
    ``clip.mp4 @ 01:23`` (``1:02:03`` past an hour)."""
    path = printable(hit.image_path)
    if hit.frame_time is None:
        return path
    minutes, seconds = divmod(int(hit.frame_time), 60)
    hours, minutes = divmod(minutes, 60)
    clock = f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes:02d}:{seconds:02d}"
    return f"{path} @ {clock}"


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
    return b"".join(exact_bytes(hit.file_path) + b"\0" for hit in hits)


def _metadata_table(hits: Sequence[Hit]) -> str:
    def when(hit: Hit) -> str:
        if hit.taken_at is None:
            return "-"
        # A camera clock without a time zone is shown as it was recorded, marked "*".
        return hit.taken_at.strftime("%Y-%m-%d %H:%M") + ("*" if hit.taken_at_naive else "")

    def place(hit: Hit) -> str:
        return (
            f"{hit.lat:.4f},{hit.lon:.4f}" if hit.lat is not None and hit.lon is not None else "-"
        )

    cameras = [printable(hit.camera or "-") for hit in hits]
    width = max(6, *(len(c) for c in cameras))
    lines = [
        f"{'rank':>4}  {'similarity':>10}  {'taken_at (UTC)':<17}  {'camera':<{width}}  "
        f"{'place':<19}  path"
    ]
    lines += [
        f"{hit.rank:>4}  {hit.similarity:>10.4f}  {when(hit):<17}  {camera:<{width}}  "
        f"{place(hit):<19}  {shown_path(hit)}"
        for hit, camera in zip(hits, cameras, strict=True)
    ]
    return "\n".join(lines)


def _text_table(hits: Sequence[Hit]) -> str:
    """A text search's table: which list found each hit, and the words around the match."""

    def similarity(hit: Hit) -> str:
        return f"{hit.similarity:>10.4f}" if hit.has_similarity else f"{'-':>10}"

    def words(hit: Hit) -> str:
        shown = printable(" ".join((hit.matched_text or "").split()))
        return shown if len(shown) <= 40 else shown[:39] + "…"

    lines = [f"{'rank':>4}  {'similarity':>10}  {'match':<5}  {'matched text':<40}  path"]
    lines += [
        f"{hit.rank:>4}  {similarity(hit)}  {hit.match or '-':<5}  {words(hit):<40}  "
        f"{printable(hit.image_path)}"
        for hit in hits
    ]
    return "\n".join(lines)
