"""Duplicate groups among one model's images: exact (sha256), near (pHash), similar (CLIP).

Tiers, strongest first:
- ``exact``: the same bytes (sha256).
- ``near``: perceptual hashes within ``near_distance`` bits (re-encoded, resized, converted
  copies); pairs come from the banded pHash index (``clipdb.duplicates``), never all pairs.
- ``similar``: CLIP cosine similarity >= ``similar_threshold`` (the same scene, another shot);
  pairs are each image's nearest neighbours among the stored embeddings (no model is
  loaded), looked for once per image and kept in the database (:mod:`clipdb.dupes.similar`).

Exact and near groups are the connected components (union-find) of the selected tiers'
pairs. Exact pairs are also near pairs, so with both tiers an exact group that near copies
join becomes one near group (each member says how far it is from the kept image); a group
whose members all share one sha256 is ``exact``. Similar groups are stars, never chains: each
member's cosine similarity to the kept image is at least the threshold (see
:func:`_similar_groups`). Similar pairs only join images that no exact/near group holds: each
image is in at most one group, in its strongest tier.

The kept image: :mod:`clipdb.dupes.keep` (the original: capture metadata and age before pixels
and bytes); each kept member says why (``reason``).

Files are one file, not duplicates, when their names lead to one inode (a symbolic link and
its target, hard links, a name through a linked folder): only one name (a real one, not a link)
takes part, the others are listed as its ``aliases``. Files whose size or mtime differ from
their row (or that are gone) are reported as stale and not grouped: their row no longer
describes them.

Paths: a group is shown when at least one member is under the paths; members anywhere else
in the index are found too (every tier) and marked ``outside``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from clipdb import phash
from clipdb.db import dupes as queries
from clipdb.db.dupes import DupeRow
from clipdb.db.registry import Model
from clipdb.dupes.files import Files, stat_rows
from clipdb.dupes.groups import DupesResult as DupesResult
from clipdb.dupes.groups import Group as Group
from clipdb.dupes.groups import Member as Member
from clipdb.dupes.keep import extra_metadata, keep_key, reason
from clipdb.dupes.similar import similar_pairs
from clipdb.errors import UsageError

TIERS = ("exact", "near", "similar")
DEFAULT_TIERS = ("exact", "near")
# Chosen from the labelled set in BENCHMARKS.md ("Duplicates and metadata").
DEFAULT_NEAR_DISTANCE = 4
MAX_NEAR_DISTANCE = 8  # the banded index answers up to 8 (clipdb.duplicates)
# Cannot be measured with random weights (see BENCHMARKS.md): a conservative cut for real CLIP.
DEFAULT_SIMILAR_THRESHOLD = 0.95
SIMILAR_NEIGHBOURS = 10  # nearest neighbours per image that the similar tier looks at
HOP_CHUNK = 5000  # ids per index hop statement when following groups out of the paths


def parse_tiers(text: str) -> tuple[str, ...]:
    """``exact,near`` -> ("exact", "near"); a usage error for anything else."""
    tiers = tuple(dict.fromkeys(t.strip() for t in text.split(",") if t.strip()))
    unknown = [t for t in tiers if t not in TIERS]
    if unknown or not tiers:
        raise UsageError(f"--tier takes a comma list of {', '.join(TIERS)}, not {text!r}")
    return tiers


class _UnionFind:
    def __init__(self) -> None:
        self.parent: dict[int, int] = {}

    def find(self, item: int) -> int:
        parent = self.parent.setdefault(item, item)
        while parent != self.parent[parent]:
            self.parent[parent] = self.parent[self.parent[parent]]
            parent = self.parent[parent]
        self.parent[item] = parent
        return parent

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)

    def components(self) -> list[list[int]]:
        groups: dict[int, list[int]] = {}
        for item in self.parent:
            groups.setdefault(self.find(item), []).append(item)
        return [sorted(g) for g in groups.values() if len(g) > 1]


def find_duplicates(
    conn: Any,
    model: Model,
    paths: Sequence[str] | None = None,
    *,
    tiers: Iterable[str] = DEFAULT_TIERS,
    near_distance: int = DEFAULT_NEAR_DISTANCE,
    similar_threshold: float = DEFAULT_SIMILAR_THRESHOLD,
    neighbours: int = SIMILAR_NEIGHBOURS,
    check_files: bool = True,
    counts: bool = True,
) -> DupesResult:
    """Duplicate groups of ``model``'s images with a member under ``paths`` (absolute; None:
    all); members outside ``paths`` are marked so.

    ``check_files``: stat each file and leave out (as stale) those changed since indexing,
    and take the names of one file (links) as one member. ``counts``: count the files and
    those without a pHash (``images``, ``unhashed``); over the whole index that reads the
    table (~1 s at a million rows), which an API page that shows neither skips.
    """
    tiers = tuple(tiers)
    if not 0 <= near_distance <= MAX_NEAR_DISTANCE:
        raise UsageError(f"--near-distance must be 0..{MAX_NEAR_DISTANCE}")
    if not -1.0 <= similar_threshold <= 1.0:
        raise UsageError("--similar-threshold must be in [-1, 1]")
    prefixes = None if paths is None else [os.path.abspath(p) for p in paths]
    hard_pairs: list[tuple[int, int]] = []
    soft_pairs: list[tuple[int, int, float]] = []
    if prefixes is None:
        # The whole index: the pairs first, then only the rows they name (a million-row
        # library is not read, nor its files stat'ed, to show its duplicates).
        files_count, unhashed = queries.file_counts(conn, model) if counts else (0, 0)
        result = DupesResult(images=files_count, unhashed=unhashed)
        hard_pairs = _global_pairs(conn, model, tiers, near_distance)
        if "similar" in tiers:
            soft_pairs = similar_pairs(conn, model, None, similar_threshold, neighbours)
        named = {i for pair in hard_pairs for i in pair} | {
            i for a, b, _ in soft_pairs for i in (a, b)
        }
        rows = queries.rows_by_id(conn, sorted(named), one_per_file=True)
        inside = {r.image_id for r in rows}
    else:
        rows = queries.dupe_rows(conn, model, prefixes)
        result = DupesResult(images=len(rows))
        inside = {r.image_id for r in rows}
        if rows and ("exact" in tiers or "near" in tiers):
            hard_pairs, found = _pairs_around(conn, model, sorted(inside), tiers, near_distance)
            rows += queries.rows_by_id(conn, sorted(found - inside))
        if "similar" in tiers and rows:
            soft_pairs = similar_pairs(conn, model, sorted(inside), similar_threshold, neighbours)
            known = {r.image_id for r in rows}
            rows += queries.rows_by_id(
                conn, sorted({i for a, b, _ in soft_pairs for i in (a, b)} - known)
            )
    files = stat_rows(rows) if check_files else Files()
    stale = set(files.stale)
    result.stale = sorted({r.path for r in rows if r.path in stale and r.image_id in inside})
    by_id = {r.image_id: r for r in rows if r.path not in stale and r.image_id not in files.dropped}
    if prefixes is not None:
        result.unhashed = sum(1 for r in by_id.values() if r.phash is None and r.image_id in inside)
    context = _Context(by_id, files, None if prefixes is None else inside)
    hard, grouped = _hard_groups(context, hard_pairs, "near" in tiers)
    result.groups.extend(hard)
    if "similar" in tiers:
        result.groups.extend(_similar_groups(context, grouped, soft_pairs))
    order = {tier: n for n, tier in enumerate(TIERS)}
    result.groups.sort(key=lambda g: (order[g.tier], g.kept.image_path))
    return result


@dataclass
class _Context:
    by_id: dict[int, DupeRow]
    files: Files
    inside: set[int] | None  # None: every row is asked about

    def key(self, image_id: int) -> Any:
        row = self.by_id[image_id]
        return keep_key(row, self.files.is_link(row.path))

    def reason(self, ordered: Sequence[int]) -> str:
        """Why the first of ``ordered`` (in keep order) is kept over the second."""
        second = self.key(ordered[1]) if len(ordered) > 1 else None
        return reason(self.key(ordered[0]), second, self.by_id[ordered[0]])

    def wanted(self, ids: Iterable[int]) -> bool:
        return self.inside is None or any(i in self.inside for i in ids)


def _global_pairs(
    conn: Any, model: Model, tiers: tuple[str, ...], near_distance: int
) -> list[tuple[int, int]]:
    """The model's exact and near pairs (``clipdb.duplicates``)."""
    found: list[tuple[int, int]] = []
    if "exact" in tiers:
        found.extend((a, b) for a, b, _ in queries.pairs(conn, model, "exact", 0) if a != b)
    if "near" in tiers:
        found.extend((a, b) for a, b, _ in queries.pairs(conn, model, "near", near_distance))
    return found


def _pairs_around(
    conn: Any, model: Model, ids: list[int], tiers: tuple[str, ...], near_distance: int
) -> tuple[list[tuple[int, int]], set[int]]:
    """Exact and near pairs reachable from ``ids`` (hop by hop by index, anywhere in the
    index), and every id they reach."""
    distance = near_distance if "near" in tiers else None
    found: list[tuple[int, int]] = []
    seen = set(ids)
    frontier = ids
    while frontier:
        step = [
            pair
            for offset in range(0, len(frontier), HOP_CHUNK)
            for pair in queries.neighbour_pairs(
                conn, model, frontier[offset : offset + HOP_CHUNK], distance
            )
        ]
        found.extend(step)
        frontier = sorted({b for _, b in step} - seen)
        seen.update(frontier)
    return found, seen


def _hard_groups(
    context: _Context, pairs: list[tuple[int, int]], near: bool
) -> tuple[list[Group], set[int]]:
    """The exact and near groups among the context's rows, and the ids they hold."""
    hard = _UnionFind()
    for a, b in pairs:
        if a in context.by_id and b in context.by_id:
            hard.union(a, b)
    groups: list[Group] = []
    grouped: set[int] = set()
    for component in hard.components():
        grouped.update(component)  # shown or not, never also a similar group's member
        if not context.wanted(component):
            continue
        groups.append(_hard_group(context, component, near))
    return groups, grouped


def _similar_groups(
    context: _Context, grouped: set[int], pairs: list[tuple[int, int, float]]
) -> list[Group]:
    """Similar groups among rows no exact or near group holds: stars, not chains.

    Images are taken in keep order; each one not yet in a group starts one with every
    neighbour (at or above the threshold) not yet in a group. Earlier images were offered this
    one already, so the start is the best of its group: the kept image, and every member is
    within the threshold of it (single-link chains would show members far below it).
    """
    near: dict[int, dict[int, float]] = {}
    for a, b, similarity in pairs:
        if a in context.by_id and b in context.by_id and a not in grouped and b not in grouped:
            near.setdefault(a, {})[b] = similarity
            near.setdefault(b, {})[a] = similarity
    taken: set[int] = set()
    groups: list[Group] = []
    for start in sorted(near, key=context.key):
        if start in taken:
            continue
        members = [b for b in near[start] if b not in taken]
        if not members:
            continue
        taken.add(start)
        taken.update(members)
        if not context.wanted([start, *members]):
            continue
        to_start = {b: near[start][b] for b in members}
        ordered = sorted([start, *members], key=context.key)
        why = context.reason(ordered)
        groups.append(
            Group(
                "similar",
                tuple(
                    _member(context, i, start, similarity=to_start.get(i), why=why) for i in ordered
                ),
            )
        )
    return groups


def _hard_group(context: _Context, ids: list[int], near: bool) -> Group:
    ordered = sorted(ids, key=context.key)
    best = context.by_id[ordered[0]]
    why = context.reason(ordered)
    tier = "exact" if len({context.by_id[i].sha256 for i in ids}) == 1 or not near else "near"
    members = []
    for image_id in ordered:
        row = context.by_id[image_id]
        distance = (
            0
            if row.sha256 == best.sha256
            else (
                phash.distance(row.phash, best.phash)
                if row.phash is not None and best.phash is not None
                else None
            )
        )
        members.append(_member(context, image_id, best.image_id, distance=distance, why=why))
    return Group(tier, tuple(members))


def _member(
    context: _Context,
    image_id: int,
    kept_id: int,
    *,
    distance: int | None = None,
    similarity: float | None = None,
    why: str | None = None,
) -> Member:
    row, kept = context.by_id[image_id], context.by_id[kept_id]
    keep = image_id == kept_id
    return Member(
        row.image_id,
        row.path,
        row.width,
        row.height,
        row.size,
        keep,
        distance,
        similarity,
        mtime_ns=row.mtime_ns,
        metadata=row.metadata,
        reason=why if keep else None,
        extra_metadata=() if keep else extra_metadata(row, kept),
        identical=row.sha256 == kept.sha256,
        outside=context.inside is not None and image_id not in context.inside,
        aliases=context.files.aliases.get(image_id, ()),
        link=context.files.is_link(row.path),
    )


def dupes_for(
    database: Any,
    settings: Any,
    paths: Sequence[str] | None,
    *,
    with_trees: bool = False,
    **options: Any,
) -> tuple[DupesResult, list[str]]:
    """:func:`find_duplicates` for the model the settings choose (``choose_model``), and the
    indexed trees (the model's rows' common directory, for ``--move-to`` checks). An empty
    database is no error: no groups."""
    from clipdb.db.registry import models_with_rows
    from clipdb.search import choose_model

    with database.connect() as conn:
        if not models_with_rows(conn):
            return DupesResult(), []
        model = choose_model(conn, settings)
        result = find_duplicates(conn, model, paths, **options)
        trees = queries.indexed_trees(conn, model) if with_trees else []
    return result, trees
