"""Benchmark vectors: 512-d unit vectors clustered on the sphere, with a fixed seed.

Each vector is ``normalise(a * mean + b * centre_k + c * noise)``:

- ``mean``: one direction shared by every vector. CLIP image embeddings live in a narrow cone
  (unrelated images still have cosine ~0.4-0.5), not spread over the whole sphere.
- ``centre_k``: one of ``clusters`` random directions (semantic groups: cats, receipts,
  beaches...). Cluster sizes follow a Zipf-like law (a few big topics, a long tail).
- ``noise``: Gaussian with a power-law spectrum (variance of the i-th axis ~ 1/i) in a random
  rotation, so the spread inside a cluster has a low effective dimension (participation ratio
  ~ 28 of 512), like the ~20-50 intrinsic dimensions reported for CLIP embeddings; isotropic
  noise in 512-d would make all neighbours nearly equidistant, which no real data does.

With the default weights, random pairs have cosine ~0.45, pairs in one cluster ~0.75, and a
query's true 10 nearest neighbours ~0.85-0.9: neighbours are meaningful but not trivial.
Queries are drawn from the same distribution and never inserted (held out).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

DIM = 512
SEED = 20240601
MEAN_WEIGHT = 0.45**0.5  # squared weights: shares of the (pre-normalisation) norm
CENTRE_WEIGHT = 0.30**0.5
NOISE_WEIGHT = 0.25**0.5


class ClusteredSphere:
    """A deterministic stream of clustered unit vectors (same seed, same vectors)."""

    def __init__(self, clusters: int = 1000, dim: int = DIM, seed: int = SEED) -> None:
        rng = np.random.default_rng(seed)
        self.dim = dim
        self.seed = seed
        self.mean = _unit(rng.normal(size=dim))
        self.centres = _unit(rng.normal(size=(clusters, dim)))
        weights = 1.0 / np.arange(1, clusters + 1) ** 0.7
        self.cluster_p = rng.permutation(weights / weights.sum())
        rotation, _ = np.linalg.qr(rng.normal(size=(dim, dim)))
        spectrum = 1.0 / np.arange(1, dim + 1)
        # Row-vector noise z @ scale maps N(0, I) to N(0, R diag(spectrum) R^T), unit trace.
        self.noise_map = (np.sqrt(spectrum / spectrum.sum())[:, None] * rotation.T).astype(
            np.float32
        )

    def chunks(self, count: int, *, stream: int = 0, chunk: int = 50_000) -> Iterator[np.ndarray]:
        """``count`` vectors in float32 chunks; ``stream`` 0 = data, 1 = queries."""
        rng = np.random.default_rng([self.seed, stream])
        done = 0
        while done < count:
            size = min(chunk, count - done)
            labels = rng.choice(len(self.centres), size=size, p=self.cluster_p)
            noise = rng.standard_normal((size, self.dim), dtype=np.float32) @ self.noise_map
            raw = (
                MEAN_WEIGHT * self.mean
                + CENTRE_WEIGHT * self.centres[labels]
                + NOISE_WEIGHT * noise
            )
            yield _unit(raw).astype(np.float32)
            done += size

    def sample(self, count: int, *, stream: int = 0) -> np.ndarray:
        return np.concatenate(list(self.chunks(count, stream=stream)))


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def neighbour_stats(data: np.ndarray, queries: np.ndarray, k: int = 10) -> dict[str, float]:
    """How clustered a set is: cosine of random pairs vs a query's 1st and k-th neighbour."""
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, len(data), (2, 2000))
    sims = queries @ data.T if len(data) * len(queries) <= 2e8 else None
    if sims is None:
        sims = queries[:200] @ data.T
    top = -np.sort(-sims, axis=1)[:, :k]
    return {
        "random_pair_cos": float(np.mean(np.sum(data[a] * data[b], axis=1))),
        "nn1_cos": float(np.mean(top[:, 0])),
        f"nn{k}_cos": float(np.mean(top[:, k - 1])),
    }
