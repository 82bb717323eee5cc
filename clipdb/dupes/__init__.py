"""Duplicate groups among one model's images: exact (sha256), near (pHash), similar (CLIP).

Tiers, strongest first:
- ``exact``: the same bytes (sha256).
- ``near``: perceptual hashes within ``near_distance`` bits (re-encoded, resized, converted
  copies); pairs come from the banded pHash index (``clipdb.duplicates``), never all pairs.
- ``similar``: CLIP cosine similarity >= ``similar_threshold`` (the same scene, another shot);
  pairs are each image's nearest neighbours in the model's HNSW index, from the stored
  embeddings (no model is loaded).

Groups are the connected components (union-find) of the selected tiers' pairs. Exact pairs
are also near pairs, so with both tiers an exact group that near copies join becomes one near
group (each member says how far it is from the kept image); a group whose members all share
one sha256 is ``exact``. Similar pairs only join images that no exact/near group holds: each
image is in at most one group, in its strongest tier.

Keep-best (:func:`keep_key`): most pixels, then most bytes, then most EXIF fields (of
taken_at, camera, lens and place, as stored at ingest: migration 0006), then the shortest path
(then the path, so the choice is stable).

Files whose size or mtime differ from their row (or that are gone) are reported as stale and
not grouped: their row no longer describes them.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from clipdb import phash
from clipdb.db import dupes as queries
from clipdb.db.dupes import DupeRow
from clipdb.db.registry import Model
from clipdb.errors import UsageError

TIERS = ("exact", "near", "similar")
DEFAULT_TIERS = ("exact", "near")
# Chosen from the labelled set in BENCHMARKS.md ("Duplicates and metadata").
DEFAULT_NEAR_DISTANCE = 4
MAX_NEAR_DISTANCE = 8  # the banded index answers up to 8 (clipdb.duplicates)
# Cannot be measured with random weights (see BENCHMARKS.md): a conservative cut for real CLIP.
DEFAULT_SIMILAR_THRESHOLD = 0.95
SIMILAR_NEIGHBOURS = 10  # nearest neighbours per image that the similar tier looks at


@dataclass(frozen=True)
class Member:
    """One image of a group; ``distance`` (exact/near: pHash bits from the kept image) or
    ``similarity`` (similar: cosine to the kept image)."""

    image_id: int
    image_path: str
    width: int
    height: int
    size: int
    keep: bool
    distance: int | None = None
    similarity: float | None = None

    def to_dict(self) -> dict[str, Any]:
        from clipdb.files import display

        data: dict[str, Any] = {
            "image_path": display(self.image_path),
            "image_id": self.image_id,
            "width": self.width,
            "height": self.height,
            "size": self.size,
            "keep": self.keep,
        }
        if self.distance is not None:
            data["distance"] = self.distance
        if self.similarity is not None:
            data["similarity"] = round(self.similarity, 6)
        return data


@dataclass(frozen=True)
class Group:
    tier: str
    images: tuple[Member, ...]

    @property
    def kept(self) -> Member:
        return next(m for m in self.images if m.keep)

    def to_dict(self) -> dict[str, Any]:
        return {"tier": self.tier, "images": [m.to_dict() for m in self.images]}


@dataclass
class DupesResult:
    """Groups, and what could not be judged."""

    groups: list[Group] = field(default_factory=list)
    images: int = 0  # rows looked at (under the paths)
    stale: list[str] = field(default_factory=list)  # changed or gone since indexing
    unhashed: int = 0  # rows without a pHash yet (near tier blind to them)


def parse_tiers(text: str) -> tuple[str, ...]:
    """``exact,near`` -> ("exact", "near"); a usage error for anything else."""
    tiers = tuple(dict.fromkeys(t.strip() for t in text.split(",") if t.strip()))
    unknown = [t for t in tiers if t not in TIERS]
    if unknown or not tiers:
        raise UsageError(f"--tier takes a comma list of {', '.join(TIERS)}, not {text!r}")
    return tiers


def keep_key(row: DupeRow) -> tuple[int, int, int, int, str]:
    """Sort key whose first row is kept: most pixels, most bytes, most EXIF fields, shortest
    path, path."""
    return (-row.width * row.height, -row.size, -row.exif_fields, len(row.path), row.path)


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


def is_stale(row: DupeRow) -> bool:
    """Gone, or not the file the row describes (size or mtime differ)."""
    try:
        found = os.stat(row.path)
    except OSError:
        return True
    return (found.st_size, found.st_mtime_ns) != (row.size, row.mtime_ns)


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
) -> DupesResult:
    """Duplicate groups of ``model``'s images under ``paths`` (absolute; None: all).

    ``check_files``: stat each file and leave out (as stale) those changed since indexing.
    """
    tiers = tuple(tiers)
    if not 0 <= near_distance <= MAX_NEAR_DISTANCE:
        raise UsageError(f"--near-distance must be 0..{MAX_NEAR_DISTANCE}")
    if not -1.0 <= similar_threshold <= 1.0:
        raise UsageError("--similar-threshold must be in [-1, 1]")
    prefixes = None if paths is None else [os.path.abspath(p) for p in paths]
    rows = queries.dupe_rows(conn, model, prefixes)
    result = DupesResult(images=len(rows))
    if check_files:
        result.stale = sorted(r.path for r in rows if is_stale(r))
        stale = set(result.stale)
        rows = [r for r in rows if r.path not in stale]
    by_id = {r.image_id: r for r in rows}
    result.unhashed = sum(1 for r in rows if r.phash is None)
    hard, grouped = _hard_groups(conn, model, by_id, tiers, near_distance)
    result.groups.extend(hard)
    if "similar" in tiers:
        result.groups.extend(
            _similar_groups(conn, model, by_id, grouped, similar_threshold, neighbours)
        )
    order = {tier: n for n, tier in enumerate(TIERS)}
    result.groups.sort(key=lambda g: (order[g.tier], g.kept.image_path))
    return result


def _hard_groups(
    conn: Any,
    model: Model,
    by_id: dict[int, DupeRow],
    tiers: tuple[str, ...],
    near_distance: int,
) -> tuple[list[Group], set[int]]:
    """The exact and near groups among ``by_id``'s rows, and the ids they hold."""
    hard = _UnionFind()
    if "exact" in tiers:
        for first, other, _ in queries.pairs(conn, model, "exact", 0):
            if first != other and first in by_id and other in by_id:
                hard.union(first, other)
    if "near" in tiers:
        for a, b, _ in queries.pairs(conn, model, "near", near_distance):
            if a in by_id and b in by_id:
                hard.union(a, b)
    groups: list[Group] = []
    grouped: set[int] = set()
    for component in hard.components():
        members = [by_id[i] for i in component]
        grouped.update(component)
        groups.append(_hard_group(members, "near" in tiers))
    return groups, grouped


def _similar_groups(
    conn: Any,
    model: Model,
    by_id: dict[int, DupeRow],
    grouped: set[int],
    similar_threshold: float,
    neighbours: int,
) -> list[Group]:
    """The similar groups among ``by_id``'s rows not already in an exact or near group."""
    soft = _UnionFind()
    for a, b, _ in queries.similar_pairs(conn, model, similar_threshold, neighbours):
        if a in by_id and b in by_id and a not in grouped and b not in grouped:
            soft.union(a, b)
    components = soft.components()
    kept = {tuple(c): min(c, key=lambda i: keep_key(by_id[i])) for c in components}
    wanted = [(k, i) for c, k in kept.items() for i in c if i != k]
    similarity = queries.similarities(conn, model, wanted)
    groups: list[Group] = []
    for ids, keep in kept.items():
        members = sorted((by_id[i] for i in ids), key=keep_key)
        groups.append(
            Group(
                "similar",
                tuple(
                    _member(r, r.image_id == keep, similarity=similarity.get((keep, r.image_id)))
                    for r in members
                ),
            )
        )
    return groups


def _hard_group(members: list[DupeRow], near: bool) -> Group:
    members.sort(key=keep_key)
    best = members[0]
    tier = "exact" if len({r.sha256 for r in members}) == 1 or not near else "near"
    return Group(
        tier,
        tuple(
            _member(
                r,
                r is best,
                distance=0
                if r.sha256 == best.sha256
                else (
                    phash.distance(r.phash, best.phash)
                    if r.phash is not None and best.phash is not None
                    else None
                ),
            )
            for r in members
        ),
    )


def _member(
    row: DupeRow, keep: bool, *, distance: int | None = None, similarity: float | None = None
) -> Member:
    return Member(
        row.image_id, row.path, row.width, row.height, row.size, keep, distance, similarity
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
