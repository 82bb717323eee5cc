"""The similar tier at scale: the first call (every image looked up), a repeat call and the
API's first page (pairs read back), and new images arriving (looked up through HNSW).

On a database bench/bench_filters.py loaded (ClusteredSphere rows: unrelated images at
cosine ~0.45, nearest neighbours ~0.85-0.9, as CLIP embeddings are), ``--copies`` copies of
random rows are added at cosine 0.955-0.995 (a re-encode, a crop: CLIP moves a little), then:

1. ``find_duplicates(tiers=("similar",))`` with nothing checked: wall time, client peak RSS,
   groups; then the share of true pairs found, from an exhaustive product of ``--sample``
   rows (half of them planted originals) against every vector, each row's ``neighbours``
   nearest at >= the threshold (what the tier promises);
2. the same call again, and ``GET /api/duplicates?tier=similar&limit=50`` (in-process
   app; the rows' files do not exist, so members are stat'ed and reported stale);
3. ``--new`` more copies inserted (live HNSW index), then the call and the first page again.

    python bench/bench_filters.py --n 1000000 --home H      # loads the rows (once)
    python bench/bench_similar.py --home H [--copies 5000 --new 1000 --sample 1000]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import resource
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from clipdb.db import Database  # noqa: E402
from clipdb.db.embedded import ensure_server  # noqa: E402
from clipdb.db.migrate import upgrade  # noqa: E402
from clipdb.db.registry import Model, models_with_rows  # noqa: E402
from clipdb.db.similar import model_vectors  # noqa: E402
from clipdb.db.store import ImageRecord, copy_new_images  # noqa: E402
from clipdb.dupes import DEFAULT_SIMILAR_THRESHOLD, SIMILAR_NEIGHBOURS, find_duplicates  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def load() -> list[float]:
    return [float(v) for v in Path("/proc/loadavg").read_text().split()[:3]]


def add_copies(database: Database, model: Model, count: int, seed: int, tag: str) -> dict[int, int]:
    """Insert ``count`` copies of random rows; {original id: copy id}."""
    rng = np.random.default_rng(seed)
    with database.connect() as conn:
        rows = model_vectors(conn, model)
        ids, vectors = rows.ids[rows.files], rows.vectors
        picked = rng.choice(len(ids), count, replace=False)
        records = []
        for n, row in enumerate(picked):
            original = vectors[row] / np.linalg.norm(vectors[row])
            target = rng.uniform(0.955, 0.995)
            noise = rng.standard_normal(len(original)).astype(np.float32)
            noise -= noise @ original * original
            copy = target * original + np.sqrt(1 - target**2) * noise / np.linalg.norm(noise)
            path = f"/bench/copies-{tag}/{n:07d}.jpg"
            records.append(
                ImageRecord(path, hashlib.sha256(path.encode()).digest(), 1000, 0, 64, 48, copy)
            )
        del vectors
        copy_new_images(conn, model, records)
        conn.commit()
        made = dict(
            conn.execute(
                "SELECT path, id FROM clipdb.images WHERE path LIKE %s", (f"/bench/copies-{tag}/%",)
            ).fetchall()
        )
    return {int(ids[row]): made[r.path] for row, r in zip(picked, records, strict=True)}


def timed_call(database: Database, model: Model, **options: Any) -> dict[str, Any]:
    """find_duplicates(tiers=("similar",)) in a fresh process: its wall time and peak RSS are
    the call's own, not this script's (which holds vectors for its recall check)."""
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
        return pool.submit(_call, database.url, model, options).result()


def _peak_rss_mib() -> int:
    """This process's peak RSS (VmHWM: unlike ru_maxrss, not inherited from the parent)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def _call(url: str, model: Model, options: dict[str, Any]) -> dict[str, Any]:
    before = _peak_rss_mib()
    with Database(url=url).connect() as conn:
        started = time.perf_counter()
        result = find_duplicates(conn, model, tiers=("similar",), check_files=False, **options)
        conn.commit()
        seconds = time.perf_counter() - started
    return {
        "seconds": round(seconds, 2),
        "groups": len(result.groups),
        "members": sum(len(g.images) for g in result.groups),
        "client_peak_rss_mib": _peak_rss_mib(),
        "rss_after_imports_mib": before,
    }


def first_page(database: Database, model: Model) -> dict[str, Any]:
    from fastapi.testclient import TestClient

    from clipdb.serve import create_app

    app = create_app(database, model=model.architecture, pretrained=model.pretrained)
    times = []
    with TestClient(app, base_url="http://127.0.0.1") as client:
        for _ in range(2):  # the first request also opens the server's connection pool
            started = time.perf_counter()
            response = client.get("/api/duplicates", params={"tier": "similar", "limit": 50})
            times.append(round(time.perf_counter() - started, 3))
            assert response.status_code == 200, response.text
    return {"seconds": times, "groups": len(response.json())}


def recall(
    database: Database, model: Model, planted: dict[int, int], sample: int, threshold: float
) -> dict[str, Any]:
    """Share of the true pairs (each sampled row's SIMILAR_NEIGHBOURS nearest at >= threshold,
    exhaustively) that the stored pairs hold."""
    rng = np.random.default_rng(7)
    with database.connect() as conn:
        rows = model_vectors(conn, model)
        ids, vectors = rows.ids[rows.files], rows.vectors
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        position = {int(i): n for n, i in enumerate(ids)}
        originals = rng.choice(sorted(planted), min(sample // 2, len(planted)), replace=False)
        rows = np.unique(
            np.concatenate(
                [[position[int(i)] for i in originals], rng.choice(len(ids), sample // 2)]
            )
        )
        truth: set[tuple[int, int]] = set()
        for start in range(0, len(rows), 256):
            block = rows[start : start + 256]
            similarity = vectors[block] @ vectors.T
            for n, row in enumerate(block):
                hits = np.flatnonzero(similarity[n] >= threshold)
                hits = hits[hits != row]
                hits = hits[np.argsort(-similarity[n][hits])][:SIMILAR_NEIGHBOURS]
                truth.update((int(ids[row]), int(ids[h])) for h in hits)
        asked = sorted({a for a, _ in truth} | {int(ids[r]) for r in rows})
        stored = conn.execute(
            "SELECT image_id, other_id FROM clipdb.similar_pairs WHERE similarity >= %s "
            "AND (image_id = ANY(%s) OR other_id = ANY(%s))",
            (threshold, asked, asked),
        ).fetchall()
    found = {(a, b) for a, b in stored} | {(b, a) for a, b in stored}
    return {
        "sampled_rows": len(rows),
        "true_pairs": len(truth),
        "found": len(truth & found),
        "recall": round(len(truth & found) / max(1, len(truth)), 4),
        "planted_sampled": len(originals),
        "planted_sampled_found": sum(1 for o in originals if (int(o), planted[int(o)]) in found),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", required=True)
    parser.add_argument("--database", default="clipdb_bench_filters")
    parser.add_argument("--copies", type=int, default=5000)
    parser.add_argument("--new", type=int, default=1000)
    parser.add_argument("--sample", type=int, default=1000)
    args = parser.parse_args()
    threshold = DEFAULT_SIMILAR_THRESHOLD
    server = ensure_server(Path(args.home))
    database = Database(url=server.url(database=args.database))
    upgrade(database)
    with database.connect() as conn:
        model = models_with_rows(conn)[0]
        conn.execute("DELETE FROM clipdb.images WHERE path LIKE '/bench/copies-%'")  # a rerun
        conn.execute("DELETE FROM clipdb.similar_checked")
        conn.execute("DELETE FROM clipdb.similar_pairs")
        conn.commit()
    out: dict[str, Any] = {"load_before": load()}
    log(f"adding {args.copies} copies")
    started = time.perf_counter()
    planted = add_copies(database, model, args.copies, 1, "a")
    out["copies"] = {"count": args.copies, "insert_s": round(time.perf_counter() - started, 1)}
    with database.connect() as conn:
        out["files"] = conn.execute(
            "SELECT count(*) FROM clipdb.images WHERE model_id = %s", (model.model_id,)
        ).fetchone()[0]
    out["load_first"] = load()
    log(f"first call on {out['files']} files")
    out["first_call"] = timed_call(database, model)
    log(json.dumps(out["first_call"]))
    out["recall"] = recall(database, model, planted, args.sample, threshold)
    log(json.dumps(out["recall"]))
    out["repeat_call"] = timed_call(database, model)
    out["api_first_page"] = first_page(database, model)
    log(f"repeat {out['repeat_call']}, API page {out['api_first_page']}")
    started = time.perf_counter()
    add_copies(database, model, args.new, 2, "b")
    out["new"] = {"count": args.new, "insert_s": round(time.perf_counter() - started, 1)}
    out["after_new_call"] = timed_call(database, model)
    out["after_new_api_first_page"] = first_page(database, model)
    out["load_after"] = load()
    log(json.dumps(out))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"similar_n{out['files']}.json").write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
