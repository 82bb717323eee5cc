"""``search --hide-duplicates``: each exact or near duplicate among the results is replaced by
its group's kept image (the keep-best rule of :mod:`clipdb.dupes`), shown once.

Only the results' own duplicates are looked up (one index hop from each hit: same sha256, or
pHash within the near distance), so a search stays a few index lookups, not a library scan.
A chain of near copies longer than one hop may therefore keep another member than
``clipdb dupes`` would; files are not stat'ed.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from clipdb.db import dupes as queries
from clipdb.db.queries import Hit
from clipdb.db.registry import Model
from clipdb.dupes import DEFAULT_NEAR_DISTANCE, _UnionFind
from clipdb.dupes.keep import keep_key


def collapse_hits(
    conn: Any,
    model: Model,
    hits: list[Hit],
    query: np.ndarray,
    k: int,
    *,
    near_distance: int = DEFAULT_NEAR_DISTANCE,
    among_hits: bool = False,
) -> list[Hit]:
    """``hits`` (best first) with duplicates collapsed to their kept image; at most ``k``.

    ``among_hits``: a group's kept image is chosen among ``hits`` only (a filtered search must
    not bring in a copy that fails its filters).
    """
    if not hits:
        return hits
    ids = [h.image_id for h in hits]
    groups = _UnionFind()
    for image_id in ids:
        groups.find(image_id)
    allowed = set(ids)
    for a, b in queries.neighbour_pairs(conn, model, ids, near_distance):
        if among_hits and (a not in allowed or b not in allowed):
            continue
        groups.union(a, b)
    rows = {r.image_id: r for r in queries.rows_by_id(conn, list(groups.parent))}
    members: dict[int, list[int]] = {}
    for image_id in groups.parent:
        members.setdefault(groups.find(image_id), []).append(image_id)
    kept = {root: min(ids_, key=lambda i: keep_key(rows[i])) for root, ids_ in members.items()}
    chosen: list[int] = []
    for hit in hits:
        keep = kept[groups.find(hit.image_id)]
        if keep not in chosen:
            chosen.append(keep)
        if len(chosen) == k:
            break
    similarity = queries.query_similarities(
        conn, model, [i for i in chosen if i not in ids], np.asarray(query, dtype=np.float32)
    )
    by_id = {h.image_id: h for h in hits}
    out = []
    for rank, image_id in enumerate(chosen, 1):
        if image_id in by_id:
            hit = by_id[image_id]
            out.append(
                Hit(
                    rank,
                    hit.image_path,
                    hit.similarity,
                    image_id,
                    path_bytes=hit.path_bytes,
                    frame_time=hit.frame_time,  # a video's best frame keeps its time
                )
            )
        else:
            from clipdb.files import db_path

            path, raw = db_path(rows[image_id].path)
            out.append(Hit(rank, path, similarity[image_id], image_id, path_bytes=raw))
    return out
