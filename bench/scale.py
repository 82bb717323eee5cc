"""Scale benchmark: load N vectors through clipdb's write path, build HNSW, measure search.

    python bench/scale.py --n 100000             # synthetic clustered vectors (bench/datagen.py)
    python bench/scale.py --n 1000000 --storage vector --insert-rows 0
    python bench/scale.py --encoder-images 1500  # real ViT-B-32 (random-init) embeddings
    python bench/scale.py --plot                 # redraw bench/results/scale_recall_qps.png

Each run uses its own embedded server under --home (never the user's CLIPDB_HOME) and a fresh
database, and writes bench/results/scale_<label>.json after every phase, so a run cut short
still leaves what it measured. Recall@10 is against exact search in numpy; latency is
clipdb.queries.search_vector on one connection; QPS uses 2 threads, one connection each.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchutil import fresh_database  # noqa: E402
from datagen import ClusteredSphere, neighbour_stats  # noqa: E402

from clipdb.db import Database  # noqa: E402
from clipdb.db.explain import nested_plans  # noqa: E402
from clipdb.db.queries import search_vector  # noqa: E402
from clipdb.db.registry import Model, register_model  # noqa: E402
from clipdb.db.store import ImageRecord, bulk_load, copy_new_images  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
K = 10


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def records(chunks: Iterator[np.ndarray], start: int = 0) -> Iterator[ImageRecord]:
    i = start
    for chunk in chunks:
        for vector in chunk:
            path = f"/bench/{i}.jpg"
            yield ImageRecord(path, hashlib.sha256(path.encode()).digest(), 1, 1, 1, 1, vector)
            i += 1


def exact_topk(data: np.ndarray, queries: np.ndarray, k: int = K) -> np.ndarray:
    out = np.empty((len(queries), k), dtype=np.int64)
    for s in range(0, len(queries), 100):
        sims = queries[s : s + 100] @ data.T
        part = np.argpartition(-sims, k, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(sims, part, axis=1), axis=1)
        out[s : s + 100] = np.take_along_axis(part, order, axis=1)
    return out


def numpy_baseline(data: np.ndarray, queries: np.ndarray) -> dict[str, float]:
    """The original tool's search: brute-force cosine over an in-memory matrix, per query."""
    times = []
    for q in queries[:100]:
        t = time.perf_counter()
        sims = data @ q
        top = np.argpartition(-sims, K)[:K]
        top[np.argsort(-sims[top])]
        times.append(time.perf_counter() - t)
    ms = np.array(times) * 1000
    return {
        "p50_ms": float(np.percentile(ms, 50)),
        "p95_ms": float(np.percentile(ms, 95)),
        "memory_mb": data.nbytes / 2**20,
    }


def halfvec_search(conn: Any, model: Model, query: np.ndarray, ef: int) -> list[int]:
    d, mid = model.dim, model.model_id
    dist = f"embedding::halfvec({d}) <=> %(q)s::vector({d})::halfvec({d})"
    with conn.transaction():
        conn.execute("SELECT set_config('hnsw.ef_search', %s, true)", (str(ef),))
        rows = conn.execute(
            f"SELECT path FROM clipdb.images WHERE model_id = {mid} ORDER BY {dist} LIMIT {K}",
            {"q": query},
        ).fetchall()
    return [int(r[0][7:-4]) for r in rows]


def vector_search(conn: Any, model: Model, query: np.ndarray, ef: int) -> list[int]:
    return [int(h.image_path[7:-4]) for h in search_vector(conn, model, query, K, ef_search=ef)]


def measure(
    database: Database, model: Model, storage: str, queries: np.ndarray, truth: np.ndarray,
    ef_values: Sequence[int], qps_seconds: float,
) -> list[dict[str, Any]]:  # fmt: skip
    search = vector_search if storage == "vector" else halfvec_search
    rows = []
    with database.connect(autocommit=True) as conn:
        for q in queries[:50]:  # warm the cache and psycopg's prepared statement
            search(conn, model, q, max(ef_values))
        for ef in ef_values:
            times, hits = [], 0
            for q, true in zip(queries, truth, strict=True):
                t = time.perf_counter()
                found = search(conn, model, q, ef)
                times.append(time.perf_counter() - t)
                hits += len(set(found) & set(true.tolist()))
            ms = np.array(times) * 1000
            row = {
                "storage": storage,
                "ef_search": ef,
                "recall10": hits / (K * len(queries)),
                "p50_ms": float(np.percentile(ms, 50)),
                "p95_ms": float(np.percentile(ms, 95)),
                "qps2": qps_two_clients(database, model, search, queries, ef, qps_seconds),
            }
            log(f"{storage} ef={ef}: {row}")
            rows.append(row)
    return rows


def qps_two_clients(
    database: Database, model: Model, search: Any, queries: np.ndarray, ef: int, seconds: float
) -> float:
    counts = [0, 0]
    start = threading.Barrier(2)

    def client(slot: int) -> None:
        with database.connect(autocommit=True) as conn:
            for q in queries[slot::2][:10]:
                search(conn, model, q, ef)
            start.wait()
            until = time.perf_counter() + seconds
            i = slot
            while time.perf_counter() < until:
                search(conn, model, queries[i % len(queries)], ef)
                counts[slot] += 1
                i += 2

    threads = [threading.Thread(target=client, args=(s,)) for s in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(counts) / seconds


def relation_mb(conn: Any, name: str, function: str = "pg_relation_size") -> float:
    row = conn.execute(f"SELECT {function}(%s::regclass)", (name,)).fetchone()
    return float(row[0]) / 2**20


def encoder_vectors(count: int, queries: int) -> tuple[np.ndarray, np.ndarray, float]:
    """Embeddings of generated, augmented pictures through random-init ViT-B-32."""
    from PIL import Image, ImageDraw, ImageFilter, ImageOps

    from clipdb.encoders import load_encoder

    encoder = load_encoder("ViT-B-32", "none", device="cpu", precision="fp32")
    rng = np.random.default_rng(7)
    scenes = max(1, (count + queries) // 5)  # each scene appears ~5 times, augmented

    def scene(seed: int) -> Image.Image:
        r = np.random.default_rng(seed)
        image = Image.new("RGB", (256, 256), tuple(int(c) for c in r.integers(0, 256, 3)))
        draw = ImageDraw.Draw(image)
        for _ in range(int(r.integers(2, 7))):
            x0, y0 = (int(v) for v in r.integers(0, 200, 2))
            box = (x0, y0, x0 + int(r.integers(20, 120)), y0 + int(r.integers(20, 120)))
            fill = tuple(int(c) for c in r.integers(0, 256, 3))
            [draw.rectangle, draw.ellipse][int(r.integers(0, 2))](box, fill=fill)
        return image

    def augment(image: Image.Image) -> Image.Image:
        x0, y0 = (int(v) for v in rng.integers(0, 48, 2))
        image = image.crop((x0, y0, x0 + 208, y0 + 208)).rotate(float(rng.uniform(-15, 15)))
        if rng.random() < 0.5:
            image = ImageOps.mirror(image)
        if rng.random() < 0.3:
            image = image.filter(ImageFilter.GaussianBlur(1.5))
        gain = float(rng.uniform(0.7, 1.3))
        return Image.eval(image, lambda v: min(255, int(v * gain)))

    order = rng.integers(0, scenes, count + queries)
    started = time.perf_counter()
    vectors = []
    for s in range(0, len(order), 32):
        batch = [augment(scene(int(i))) for i in order[s : s + 32]]
        vectors.append(encoder.encode_pil(batch))
    rate = len(order) / (time.perf_counter() - started)
    allv = np.concatenate(vectors).astype(np.float32)
    return allv[:count], allv[count:], rate


def run(args: argparse.Namespace) -> dict[str, Any]:
    label = args.label or (f"enc{args.encoder_images}" if args.encoder_images else f"n{args.n}")
    out = Path(args.out) / f"scale_{label}.json"
    result: dict[str, Any] = {"label": label, "args": vars(args), "started": time.ctime()}

    def save() -> None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2, default=str))

    if args.encoder_images:
        data, queries, rate = encoder_vectors(args.encoder_images, args.queries)
        result["data"] = {"source": "ViT-B-32 random init", "encode_img_per_s": rate}
        n = len(data)
    else:
        gen = ClusteredSphere(clusters=args.clusters)
        n = args.n
        data = gen.sample(n)
        queries = gen.sample(args.queries, stream=1)
        result["data"] = {"source": "datagen.ClusteredSphere", "clusters": args.clusters}
    result["n"] = n
    result["data"].update(neighbour_stats(data, queries))
    log(f"{label}: data ready {result['data']}")
    truth = exact_topk(data, queries)
    result["numpy"] = numpy_baseline(data, queries)
    save()

    database = fresh_database(Path(args.home), f"bench_{label}")
    with database.connect() as conn:
        model = register_model(conn, f"bench-{label}", "synthetic", data.shape[1])
        conn.commit()
        chunks = (data[s : s + 50_000] for s in range(0, n, 50_000))
        load = bulk_load(
            conn, model, records(chunks), parallel_workers=args.workers,
            maintenance_work_mem=args.maintenance_work_mem,
        )  # fmt: skip
        conn.commit()
        result["load"] = {
            "rows": load.rows,
            "copy_s": load.copy_s,
            "copy_rows_per_s": load.rows / load.copy_s,
            "index_build_s": load.index_s,
            "rows_per_s_incl_build": load.rows / load.total_s,
            "m": 16,
            "ef_construction": 64,
            "parallel_workers": args.workers,
            "maintenance_work_mem": args.maintenance_work_mem,
        }
        result["sizes_mb"] = {
            # 512-d float32 (2056 bytes) is over the TOAST threshold: count the TOAST table too.
            "table_with_toast": relation_mb(conn, "clipdb.images", "pg_table_size"),
            "vector_index": relation_mb(conn, f"clipdb.{model.index_name}"),
        }
        plans = nested_plans(conn, lambda: search_vector(conn, model, queries[0], K, ef_search=40))
        result["plan_uses_index"] = model.index_name in plans
    log(f"load: {result['load']} sizes {result['sizes_mb']}")
    save()
    result["search"] = measure(database, model, "vector", queries, truth, args.ef, args.qps_seconds)
    save()

    if "halfvec" in args.storage:
        with database.connect() as conn:
            for name, value in (
                ("max_parallel_maintenance_workers", str(args.workers)),
                ("maintenance_work_mem", args.maintenance_work_mem),
            ):
                conn.execute("SELECT set_config(%s, %s, true)", (name, value))
            t = time.perf_counter()
            conn.execute(
                f"CREATE INDEX bench_half ON clipdb.images USING hnsw "
                f"((embedding::halfvec({model.dim})) halfvec_cosine_ops) "
                f"WHERE model_id = {model.model_id}"
            )
            conn.commit()
            result["halfvec"] = {
                "index_build_s": time.perf_counter() - t,
                "index_mb": relation_mb(conn, "clipdb.bench_half"),
            }
            row = conn.execute(
                "SELECT avg(pg_column_size(embedding)), "
                f"avg(pg_column_size(embedding::halfvec({model.dim}))) "
                "FROM (SELECT embedding FROM clipdb.images LIMIT 1000) s"
            ).fetchone()
            result["halfvec"]["value_bytes"] = {"vector": float(row[0]), "halfvec": float(row[1])}
        save()
        result["search"] += measure(
            database, model, "halfvec", queries, truth, args.ef, args.qps_seconds
        )
        with database.connect() as conn:
            conn.execute("DROP INDEX clipdb.bench_half")
            conn.commit()
        save()

    if args.insert_rows:
        gen_extra = (
            ClusteredSphere(clusters=args.clusters).chunks(args.insert_rows, stream=2)
            if not args.encoder_images
            else iter([data[: args.insert_rows]])
        )
        extra = list(records(gen_extra, start=10**9))
        with database.connect() as conn:
            t = time.perf_counter()
            for s in range(0, len(extra), 500):  # ingest-sized batches, one commit each
                copy_new_images(conn, model, extra[s : s + 500])
                conn.commit()
            elapsed = time.perf_counter() - t
        result["insert_with_index"] = {
            "rows": len(extra),
            "seconds": elapsed,
            "rows_per_s": len(extra) / elapsed,
            "into_table_of": n,
        }
        log(f"inserts with index: {result['insert_with_index']}")
    result["finished"] = time.ctime()
    save()
    return result


def plot(paths: Sequence[Path], target: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for path in paths:
        result = json.loads(path.read_text())
        for storage in ("vector", "halfvec"):
            rows = [r for r in result.get("search", []) if r["storage"] == storage]
            if rows:
                ax.plot(
                    [r["recall10"] for r in rows], [r["qps2"] for r in rows], marker="o",
                    label=f"{result['label']} {storage}",
                )  # fmt: skip
                for r in rows:
                    ax.annotate(str(r["ef_search"]), (r["recall10"], r["qps2"]), fontsize=7)
    ax.axvline(0.95, color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel("recall@10 (vs exact numpy search)")
    ax.set_ylabel("QPS, 2 clients")
    ax.set_yscale("log")
    ax.set_title("clipdb HNSW (m=16, ef_construction=64), labels = ef_search, 2-core CPU")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(target, dpi=120)


def report(paths: Sequence[Path]) -> str:
    """Markdown tables of every result file (pasted into bench/results/SCALE.md)."""
    lines = [
        "| run | N | storage | ef_search | recall@10 | p50 ms | p95 ms | QPS (2 clients) |",
        "|---|---:|---|---:|---:|---:|---:|---:|",
    ]
    builds = [
        "| run | N | COPY rows/s | vector index build s | index MB | table+TOAST MB "
        "| halfvec index build s | halfvec index MB | numpy p50 ms | numpy MB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for path in paths:
        r = json.loads(path.read_text())
        for row in r.get("search", []):
            lines.append(
                f"| {r['label']} | {r['n']} | {row['storage']} | {row['ef_search']} "
                f"| {row['recall10']:.3f} | {row['p50_ms']:.2f} | {row['p95_ms']:.2f} "
                f"| {row['qps2']:.0f} |"
            )
        load, sizes, half = r.get("load", {}), r.get("sizes_mb", {}), r.get("halfvec", {})

        def f(v: Any, fmt: str = ".0f") -> str:
            return "-" if v is None else format(v, fmt)

        builds.append(
            f"| {r['label']} | {r['n']} | {f(load.get('copy_rows_per_s'))} "
            f"| {f(load.get('index_build_s'), '.1f')} | {f(sizes.get('vector_index'))} "
            f"| {f(sizes.get('table_with_toast'))} | {f(half.get('index_build_s'), '.1f')} "
            f"| {f(half.get('index_mb'))} | {f(r['numpy']['p50_ms'], '.2f')} "
            f"| {f(r['numpy']['memory_mb'])} |"
        )
    return "\n".join([*builds, "", *lines]) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--n", type=int, default=100_000, help="vectors to index (synthetic)")
    parser.add_argument("--queries", type=int, default=500, help="held-out queries")
    parser.add_argument("--clusters", type=int, default=1000, help="generator clusters")
    parser.add_argument("--encoder-images", type=int, default=0, help="use ViT-B-32 embeddings")
    parser.add_argument("--storage", default="vector,halfvec", help="vector[,halfvec]")
    parser.add_argument("--ef", default="20,40,80,160,320", help="ef_search values")
    parser.add_argument("--qps-seconds", type=float, default=5.0, help="2-client QPS window")
    parser.add_argument("--insert-rows", type=int, default=5000, help="rows inserted w/ index")
    parser.add_argument("--workers", type=int, default=1, help="parallel maintenance workers")
    parser.add_argument("--maintenance-work-mem", default="8GB", help="for the index build")
    parser.add_argument("--home", default="/tmp/clipdb-bench-home", help="embedded server dir")
    parser.add_argument("--label", default="", help="result name (default from N)")
    parser.add_argument("--out", default=str(RESULTS), help="where JSON results go")
    parser.add_argument("--plot", action="store_true", help="only redraw the plot")
    parser.add_argument("--report", action="store_true", help="print markdown tables, exit")
    args = parser.parse_args(argv)
    if args.report:
        print(report(sorted(Path(args.out).glob("scale_*.json"))), end="")
        return 0
    if not args.plot:
        args.ef = [int(v) for v in args.ef.split(",")]
        run(args)
    paths = sorted(Path(args.out).glob("scale_*.json"))
    if paths:
        plot(paths, Path(args.out) / "scale_recall_qps.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
