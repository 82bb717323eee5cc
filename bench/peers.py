"""Search peers on the same vectors as bench/scale.py: faiss HNSW (clip-retrieval's engine)
and numpy brute force (rclip's and llm's approach), recall@10 and p50/p95 per query.

Same data and queries as ``bench/scale.py --n N`` (datagen.ClusteredSphere, seed 20240601,
queries from stream 1), same HNSW parameters as clipdb's index (M = 16, efConstruction = 64),
one query at a time on one thread (as a single search request is served). pgvector's figures
for the same N are in bench/results/scale_n<N>.json (bench/scale.py); the report puts them side
by side.

    python bench/peers.py --n 100000 --queries 500
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from datagen import ClusteredSphere  # noqa: E402

K = 10


def exact_topk(data: np.ndarray, queries: np.ndarray) -> np.ndarray:
    sims = queries @ data.T
    part = np.argpartition(-sims, K, axis=1)[:, :K]
    order = np.argsort(-np.take_along_axis(sims, part, axis=1), axis=1)
    return np.take_along_axis(part, order, axis=1)


def timed(search: Callable[[np.ndarray], np.ndarray], queries: np.ndarray, truth: np.ndarray):
    for q in queries[:20]:  # warm-up
        search(q)
    times, hits = [], 0
    for q, expected in zip(queries, truth, strict=True):
        started = time.perf_counter()
        found = search(q)
        times.append(time.perf_counter() - started)
        hits += len(set(found.tolist()) & set(expected.tolist()))
    ms = np.array(times) * 1000
    return {
        "recall10": round(hits / (K * len(queries)), 4),
        "p50_ms": round(float(np.percentile(ms, 50)), 3),
        "p95_ms": round(float(np.percentile(ms, 95)), 3),
    }


def run(n: int, query_count: int, efs: Sequence[int]) -> dict[str, object]:
    import faiss

    faiss.omp_set_num_threads(1)
    gen = ClusteredSphere(clusters=1000)
    data = gen.sample(n).astype(np.float32)
    queries = gen.sample(query_count, stream=1).astype(np.float32)
    truth = exact_topk(data, queries)
    result: dict[str, object] = {"n": n, "queries": query_count}

    def brute(q: np.ndarray) -> np.ndarray:
        sims = data @ q
        top = np.argpartition(-sims, K)[:K]
        return top[np.argsort(-sims[top])]

    result["numpy"] = {**timed(brute, queries, truth), "memory_mb": round(data.nbytes / 2**20)}
    index = faiss.IndexHNSWFlat(data.shape[1], 16, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = 64
    started = time.perf_counter()
    faiss.omp_set_num_threads(2)  # the build may use both cores, as pgvector's did
    index.add(data)
    faiss.omp_set_num_threads(1)
    result["faiss_build_s"] = round(time.perf_counter() - started, 1)
    rows = []
    for ef in efs:
        index.hnsw.efSearch = ef
        rows.append(
            {"ef_search": ef, **timed(lambda q: index.search(q[None], K)[1][0], queries, truth)}
        )
    result["faiss_hnsw"] = rows
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--ef", default="20,40,80,160")
    parser.add_argument("--out", type=Path, default=None, help="write the JSON here too")
    args = parser.parse_args(argv)
    result = run(args.n, args.queries, [int(v) for v in args.ef.split(",")])
    text = json.dumps(result, indent=2)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
