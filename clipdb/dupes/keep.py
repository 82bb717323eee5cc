"""The keep rule: which file of a duplicate group is the original, and why.

Copies lose what marks an original: converters and editors drop EXIF (a PNG conversion, a
screenshot, most web exports), and every copy is written after its source. Pixel count and
byte count say little: a border, an upscale or a PNG conversion adds pixels or bytes to a copy.
So the rule, first difference wins:

1. a real file over a symbolic link (or a name reached through a linked folder) to a copy;
2. the most capture metadata (date taken, camera, lens, GPS, as read from EXIF at ingest);
3. among files with capture metadata: the oldest (modification time): a copy that kept the
   EXIF (a resize, a border, a re-encode) is written after the camera's file;
4. the most pixels;
5. the oldest;
6. the most bytes;
7. the shortest path, then the path (so the choice is stable).

A copy never wins on bytes alone against an original that the rule can tell: bytes count only
between files of the same metadata, the same pixels and the same modification time (a copy
whose time was forged to its original's, with the EXIF copied verbatim, is told from it by
nothing clipdb stores; BENCHMARKS.md measures that case too).
"""

from __future__ import annotations

from clipdb.db.dupes import DupeRow

KeyType = tuple[bool, int, int, int, int, int, int, str]

RULE = (
    "a real file over a link; then the most capture metadata (date, camera, lens, GPS); "
    "then, among files with capture metadata, the oldest; then the most pixels; then the "
    "oldest; then the most bytes; then the shortest path"
)


def keep_key(row: DupeRow, link: bool = False) -> KeyType:
    """Sort key whose first row is kept (the module's rule); ``link``: the row's name is a
    symbolic link or goes through one."""
    pixels = row.width * row.height
    dated = row.mtime_ns if row.metadata else 0
    return (
        link,
        -len(row.metadata),
        dated,
        -pixels,
        row.mtime_ns,
        -row.size,
        len(row.path),
        row.path,
    )


def reason(best: KeyType, runner_up: KeyType | None, best_row: DupeRow) -> str:
    """Why the row with key ``best`` is kept over the next one (``runner_up``)."""
    if runner_up is None:
        return "only file"
    if best[0] != runner_up[0]:
        return "a real file, not a link"
    if best[1] != runner_up[1]:
        return f"has camera metadata ({', '.join(best_row.metadata)})"
    if best[2] != runner_up[2]:
        return "oldest of the files with camera metadata"
    if best[3] != runner_up[3]:
        return "most pixels"
    if best[4] != runner_up[4]:
        return "oldest file"
    if best[5] != runner_up[5]:
        return "most bytes"
    return "shortest path" if best[6] != runner_up[6] else "first path"


def extra_metadata(dupe: DupeRow, kept: DupeRow) -> tuple[str, ...]:
    """The capture metadata ``dupe`` has that ``kept`` lacks (moving it would lose that)."""
    return tuple(field for field in dupe.metadata if field not in kept.metadata)
