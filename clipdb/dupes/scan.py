"""All pairs of embeddings at or above a cosine threshold, in one pass over the vectors.

The similar tier asked the model's HNSW index for each image's neighbours, 2-9 ms an image:
40 minutes to 2 hours at a million images. Here the whole set is read once and compared in
blocks with matrix products (BLAS), the work cut down by a partition:

- Small sets (``EXACT_ROWS`` or fewer) compare every pair: exact, and a second at most.
- Larger sets are split into cells by k-means on a low-dimensional projection (PCA), each
  vector living in its nearest cell. A vector is compared, exactly and in full dimension,
  with the vectors of its ``probes`` nearest cells. Pairs at 0.9+ cosine are close enough
  that one's cell is nearly always among the other's nearest (and the pair is found from
  either side), so the partition loses few of them while comparing ~``probes / cells`` of all
  pairs. The projection only chooses cells; similarities are computed on the stored vectors.

How many pairs are found is measured, not assumed: ``bench/bench_dupes.py scale`` reports the
share of the true pairs (from an exhaustive pass over sampled rows) next to the time.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from threadpoolctl import threadpool_limits

# Up to this many vectors, every pair is compared (1.2e11 multiply-adds at 512-d: ~1 s on
# two cores); above it, the partition pays for itself.
EXACT_ROWS = 20_000
# Cells each vector is compared against (its own and the next nearest).
PROBES = 4
PROJECTED_DIM = 64  # the projection the cells are chosen in (PCA of a sample)
KMEANS_ROUNDS = 6
TRAIN_PER_CELL = 24  # k-means sample: this many vectors per cell
BLOCK = 2048  # query rows per matrix product (bounds memory: BLOCK x cell size floats)


@dataclass(frozen=True)
class Pairs:
    """Directed pairs (query row, other row, cosine similarity) as index arrays."""

    rows: np.ndarray  # int64 index of the query vector
    others: np.ndarray  # int64 index of the other vector
    similarity: np.ndarray  # float32

    def __len__(self) -> int:
        return len(self.rows)


def similar_pairs(
    vectors: np.ndarray,
    threshold: float,
    neighbours: int,
    queries: np.ndarray | None = None,
    *,
    probes: int = PROBES,
    seed: int = 0,
) -> Pairs:
    """Each query vector's (``queries``: a boolean mask, None: all) most similar other
    vectors at cosine >= ``threshold``, at most ``neighbours`` each.

    ``vectors``: n x d, any norm (cosine is computed); a writable float32 array is scaled to
    unit length in place. Deterministic for a given ``seed``."""
    count = len(vectors)
    if queries is None:
        queries = np.ones(count, dtype=bool)
    # The products are small (a cell against its probers): one BLAS thread per product and
    # a product per core beats BLAS's own threads, which spin against each other (3x slower
    # on a busy two-core machine).
    with threadpool_limits(limits=1, user_api="blas"), ThreadPoolExecutor(_cores()) as pool:
        unit = _unit_rows(vectors)
        if count <= EXACT_ROWS:
            rows = np.arange(count)
            blocks: Iterable[tuple[np.ndarray, np.ndarray]] = [
                (rows[queries][start : start + BLOCK], rows)
                for start in range(0, int(queries.sum()), BLOCK)
            ]
        else:
            blocks = _cell_blocks(unit, queries, probes, seed, pool)

        def compare(block: tuple[np.ndarray, np.ndarray]) -> Pairs:
            query_rows, base_rows = block
            similarity = unit[query_rows] @ unit[base_rows].T
            return _hits(similarity, query_rows, base_rows, threshold, neighbours)

        found = list(pool.map(compare, blocks))
    return _best(found, neighbours)


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _unit_rows(vectors: np.ndarray) -> np.ndarray:
    """The rows scaled to unit length, as float32 (what BLAS multiplies): a writable float32
    array is scaled in place (no second copy of a million vectors), anything else copied."""
    if vectors.dtype == np.float32 and vectors.flags.writeable:
        out = vectors
    else:
        out = np.empty(vectors.shape, dtype=np.float32)
    for start in range(0, len(vectors), 65_536):
        part = vectors[start : start + 65_536].astype(np.float32, copy=False)
        norms = np.linalg.norm(part, axis=1, keepdims=True)
        out[start : start + len(part)] = part / np.maximum(norms, np.finfo(np.float32).tiny)
    return out


def _hits(
    similarity: np.ndarray,
    query_rows: np.ndarray,
    base_rows: np.ndarray,
    threshold: float,
    neighbours: int,
) -> Pairs:
    q, b = np.nonzero(similarity >= threshold)
    rows, others = query_rows[q], base_rows[b]
    keep = rows != others
    pairs = Pairs(rows[keep], others[keep], similarity[q[keep], b[keep]])
    return _best([pairs], neighbours)


def _best(parts: list[Pairs], neighbours: int) -> Pairs:
    """The pairs of ``parts`` without repeats, at most ``neighbours`` per query row (the most
    similar)."""
    parts = [p for p in parts if len(p)]
    if not parts:
        empty = np.empty(0, dtype=np.int64)
        return Pairs(empty, empty.copy(), np.empty(0, dtype=np.float32))
    rows = np.concatenate([p.rows for p in parts]).astype(np.int64)
    others = np.concatenate([p.others for p in parts]).astype(np.int64)
    similarity = np.concatenate([p.similarity for p in parts]).astype(np.float32)
    order = np.lexsort((others, -similarity, rows))
    rows, others, similarity = rows[order], others[order], similarity[order]
    # A pair seen from two cells appears twice, adjacent after the sort (same row, same score).
    first = np.ones(len(rows), dtype=bool)
    first[1:] = (rows[1:] != rows[:-1]) | (others[1:] != others[:-1])
    rows, others, similarity = rows[first], others[first], similarity[first]
    starts = np.flatnonzero(np.r_[True, rows[1:] != rows[:-1]])
    rank = np.arange(len(rows)) - np.repeat(starts, np.diff(np.r_[starts, len(rows)]))
    keep = rank < neighbours
    return Pairs(rows[keep], others[keep], similarity[keep])


def _cell_blocks(
    vectors: np.ndarray,
    queries: np.ndarray,
    probes: int,
    seed: int,
    pool: ThreadPoolExecutor,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(query rows, base rows) per cell: the vectors living in the cell, and the query
    vectors that probe it."""
    count = len(vectors)
    cells = max(16, int(math.sqrt(count * probes)))
    rng = np.random.default_rng(seed)
    sample = vectors[np.sort(rng.choice(count, min(count, cells * TRAIN_PER_CELL), replace=False))]
    projection, centre = _pca(sample.astype(np.float32), PROJECTED_DIM)
    centroids = _kmeans(_project(sample, projection, centre), cells, rng)
    nearest = _nearest_cells(vectors, projection, centre, centroids, probes, pool)
    home = nearest[:, 0]
    living = np.argsort(home, kind="stable")
    living_bounds = np.searchsorted(home[living], np.arange(cells + 1))
    query_ids = np.flatnonzero(queries)
    probe_cells = nearest[query_ids].ravel()
    probe_rows = np.repeat(query_ids, nearest.shape[1])
    order = np.argsort(probe_cells, kind="stable")
    probe_cells, probe_rows = probe_cells[order], probe_rows[order]
    probe_bounds = np.searchsorted(probe_cells, np.arange(cells + 1))
    for cell in range(cells):
        base_rows = living[living_bounds[cell] : living_bounds[cell + 1]]
        query_rows = probe_rows[probe_bounds[cell] : probe_bounds[cell + 1]]
        if len(base_rows):
            for start in range(0, len(query_rows), BLOCK):
                yield query_rows[start : start + BLOCK], base_rows


def _pca(sample: np.ndarray, dim: int) -> tuple[np.ndarray, np.ndarray]:
    sample = sample / np.linalg.norm(sample, axis=1, keepdims=True)
    centre = sample.mean(axis=0)
    centred = sample - centre
    _, vectors = np.linalg.eigh(centred.T @ centred)
    return vectors[:, ::-1][:, : min(dim, sample.shape[1])].astype(np.float32), centre


def _project(vectors: np.ndarray, projection: np.ndarray, centre: np.ndarray) -> np.ndarray:
    part = vectors.astype(np.float32)
    part /= np.linalg.norm(part, axis=1, keepdims=True)
    projected: np.ndarray = (part - centre) @ projection
    return projected


def _kmeans(points: np.ndarray, cells: int, rng: np.random.Generator) -> np.ndarray:
    centroids = points[rng.choice(len(points), cells, replace=False)].copy()
    for _ in range(KMEANS_ROUNDS):
        labels = _closest(points, centroids, 1)[:, 0]
        sums = np.zeros_like(centroids)
        np.add.at(sums, labels, points)
        sizes = np.bincount(labels, minlength=cells)
        filled = sizes > 0
        centroids[filled] = sums[filled] / sizes[filled, None]
        # An empty cell restarts at a random point (keeps every cell useful).
        centroids[~filled] = points[rng.choice(len(points), int((~filled).sum()))]
    out: np.ndarray = centroids
    return out


def _closest(points: np.ndarray, centroids: np.ndarray, count: int) -> np.ndarray:
    """Indexes of each point's ``count`` nearest centroids (Euclidean), nearest first."""
    # |p - c|^2 = |p|^2 - 2 p.c + |c|^2; |p|^2 is the same for all of a point's centroids,
    # so the ranking needs only |c|^2 - 2 p.c, computed in place (one temporary).
    distance = points @ centroids.T
    distance *= -2
    distance += np.einsum("ij,ij->i", centroids, centroids)
    if count == 1:
        nearest: np.ndarray = np.argmin(distance, axis=1)[:, None]
        return nearest
    # A few argmin passes beat argpartition over thousands of cells (~10x here).
    out = np.empty((len(points), count), dtype=np.int64)
    rows = np.arange(len(points))
    for rank in range(count):
        out[:, rank] = np.argmin(distance, axis=1)
        distance[rows, out[:, rank]] = np.inf
    return out


def _nearest_cells(
    vectors: np.ndarray,
    projection: np.ndarray,
    centre: np.ndarray,
    centroids: np.ndarray,
    probes: int,
    pool: ThreadPoolExecutor,
) -> np.ndarray:
    count = min(probes, len(centroids))

    def nearest(start: int) -> np.ndarray:
        points = _project(vectors[start : start + 16_384], projection, centre)
        return _closest(points, centroids, count).astype(np.int32)

    return np.concatenate(list(pool.map(nearest, range(0, len(vectors), 16_384))))
