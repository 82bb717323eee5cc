"""The Ray engine against the local pipeline on the same machine (not a test).

    python bench/bench_ray.py [--images 300] [--rounds 2]

Each round ingests the same generated 1600x1200 JPEGs twice into fresh databases, once with
``--engine local`` and once with ``--engine ray`` (a local Ray cluster started once, one
encoder actor per CPU slot), through ``clipdb.ingest.ingest`` with ViT-B-32 random weights
and the default backend. The figures are whole runs: scan, plan, model load (the actors load
their own), decode, encode and write. On one machine Ray can only add overhead; what this
measures is how much, so the multi-node figures people get elsewhere can be read against it.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_ingest import make_photos  # noqa: E402
from benchutil import fresh_database  # noqa: E402

MODEL = "ViT-B-32"


def main() -> None:
    import ray

    from clipdb.ingest import ingest

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--home", default=os.path.join(tempfile.gettempdir(), "clipdb-bench-ray"))
    parser.add_argument("--data", default=os.path.join(tempfile.gettempdir(), "clipdb-bench"))
    args = parser.parse_args()
    photos = make_photos(Path(args.data) / "photos_1600x1200", args.images, (1600, 1200))
    paths = [str(p) for p in photos[: args.images]]
    cpus = os.cpu_count() or 1
    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)
    rates: dict[str, list[float]] = {"local": [], "ray": []}
    try:
        for round_ in range(args.rounds):
            for engine in rates:
                database = fresh_database(args.home, f"bench_ray_{engine}_{round_}")
                started = time.perf_counter()
                with contextlib.redirect_stdout(sys.stderr):
                    summary = ingest(
                        paths, database=database, model=MODEL, pretrained="none",
                        batch_size=64, progress=False, engine=engine,
                    )  # fmt: skip
                seconds = time.perf_counter() - started
                assert summary.new == len(paths), summary
                rates[engine].append(len(paths) / seconds)
                print(f"round {round_ + 1} {engine}: {len(paths) / seconds:.1f} img/s "
                      f"({seconds:.1f} s with model load)", file=sys.stderr)  # fmt: skip
    finally:
        ray.shutdown()
    local, distributed = statistics.mean(rates["local"]), statistics.mean(rates["ray"])
    print(f"{len(paths)} x 1600x1200 JPEGs, {MODEL} random weights, {cpus} CPUs, whole runs")
    print(f"local: {' / '.join(f'{r:.1f}' for r in rates['local'])} img/s (mean {local:.1f})")
    print(f"ray:   {' / '.join(f'{r:.1f}' for r in rates['ray'])} img/s (mean {distributed:.1f})")
    print(f"ray / local: {distributed / local:.2f}")


if __name__ == "__main__":
    main()
