"""Per preset family, on this machine, with random weights (the compute is the same):
image encoder img/s on torch and OpenVINO, text query latency warm and cold, IR conversion
time, memory, and the index size per 1 M rows by dimension; then search p95 while a second
model re-indexes a folder, against idle.

    python bench/bench_models.py --out bench/results/models.json
    python bench/bench_models.py --families ViT-B-32 --images 8 --reindex 0   # a smoke run

SigLIP text towers need their Hugging Face tokenizer; offline, a small one is trained here and
the SigLIP configs are registered again under ``bench-*`` names that point at it (same
architecture, same compute).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import numpy as np  # noqa: E402
from benchutil import fresh_database  # noqa: E402

FAMILIES = ("ViT-B-32", "ViT-B-32-SigLIP2-256", "ViT-B-16-SigLIP2", "ViT-L-14")
TEXTS = ["a red car", "two dogs playing in the park", "mountains under snow at sunset"]

CHILD = r"""
import json, os, resource, sys, time
import numpy as np
sys.path.insert(0, {root!r})
from clipdb.encoders import load_encoder, register_model_configs
register_model_configs()
name, backend, images = {name!r}, {backend!r}, {images}
start = time.perf_counter()
encoder = load_encoder(name, "none", device="cpu", precision="auto", backend=backend)
load_s = time.perf_counter() - start
size = encoder.image_size
pixels = np.random.default_rng(0).normal(size=(images, 3, *size)).astype(np.float32)
encoder.encode_images(pixels[:1])  # compile / warm
start = time.perf_counter()
encoder.encode_images(pixels)
image_s = time.perf_counter() - start
start = time.perf_counter()
encoder.encode_texts([{first_text!r}])
first_text_s = time.perf_counter() - start
warm = []
for text in {texts!r}:
    start = time.perf_counter()
    encoder.encode_texts([text])
    warm.append(time.perf_counter() - start)
print(json.dumps(dict(load_s=load_s, img_per_s=images / image_s, first_text_s=first_text_s,
                      warm_text_ms=1000 * float(np.median(warm)), dim=int(encoder.dim),
                      max_rss_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)))
"""

COLD = r"""
import time
start = time.perf_counter()
import sys
sys.path.insert(0, {root!r})
from clipdb.encoders import load_encoder, register_model_configs
register_model_configs()
encoder = load_encoder({name!r}, "none", device="cpu", precision="auto", backend="openvino")
encoder.encode_texts(["a red car"])
print(time.perf_counter() - start)
"""

ROOT = str(Path(__file__).resolve().parent.parent)


def siglip_configs(folder: Path) -> dict[str, str]:
    """``bench-<name>`` configs for the SigLIP families, their tokenizer trained here."""
    import open_clip
    from snapshots import train_tokenizer

    names = {}
    tokenizer_dir = folder / "tokenizer"
    tokenizer_dir.mkdir(parents=True, exist_ok=True)
    train_tokenizer(tokenizer_dir, 2000)
    for family in FAMILIES:
        config = open_clip.get_model_config(family)
        if "hf_tokenizer_name" not in config.get("text_cfg", {}):
            continue
        config["text_cfg"]["hf_tokenizer_name"] = str(tokenizer_dir)
        (folder / f"bench-{family}.json").write_text(json.dumps(config))
        names[family] = f"bench-{family}"
    return names


def run_child(code: str, env: dict[str, str]) -> str:
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=1800
    )
    if result.returncode != 0:
        raise SystemExit(f"child failed: {result.stderr[-2000:]}")
    return result.stdout.strip().splitlines()[-1]


def family_figures(family: str, name: str, images: int, env: dict[str, str]) -> dict[str, object]:
    figures: dict[str, object] = {"family": family}
    for backend in ("torch", "openvino"):
        code = CHILD.format(
            root=ROOT, name=name, backend=backend, images=images, first_text=TEXTS[0], texts=TEXTS
        )
        figures[backend] = json.loads(run_child(code, env))
    # The conversion is the first OpenVINO load (the home is fresh); a second load reads it.
    figures["ir_conversion_s"] = figures["openvino"]["load_s"]  # type: ignore[index]
    start = time.perf_counter()
    figures["cold_text_s"] = float(run_child(COLD.format(root=ROOT, name=name), env))
    figures["cold_text_wall_s"] = time.perf_counter() - start
    return figures


def index_bytes_per_row(dims: list[int], rows: int, home: Path) -> dict[int, dict[str, float]]:
    """Measured bytes per row (HNSW index, table with its TOAST) at each dimension."""
    from helpers import unit_vectors

    from clipdb.db.registry import register_model

    database = fresh_database(home, "bench_models")
    out = {}
    with database.connect() as conn:
        for dim in dims:
            model = register_model(conn, f"bench-{dim}", "none", dim)
            vectors = unit_vectors(rows, dim, seed=dim)
            with conn.cursor() as cur:
                cur.executemany(
                    "INSERT INTO clipdb.images (model_id, path, sha256, size, mtime_ns, width,"
                    " height, embedding) VALUES (%s, %s, %s, 1, 1, 1, 1, %s)",
                    [
                        (model.model_id, f"/b/{dim}/{i}.jpg", os.urandom(32), v)
                        for i, v in enumerate(vectors)
                    ],
                )
            conn.commit()
            index = conn.execute(
                "SELECT pg_relation_size(%s::regclass)", (f"clipdb.{model.index_name}",)
            ).fetchone()[0]
            out[dim] = {"index_bytes_per_row": index / rows}
        table = conn.execute("SELECT pg_total_relation_size('clipdb.images')").fetchone()[0]
    for dim in dims:
        out[dim]["table_bytes_per_row_all_dims"] = table / (rows * len(dims))
    return out


def search_during_reindex(home: Path, images: int, searches: int, rows: int) -> dict[str, float]:
    """p95 of vector searches on model A, idle and while ``clipdb ingest`` indexes a folder
    with model B in another process."""
    from helpers import insert_rows, make_images, unit_vectors

    from clipdb.db.queries import search_vector

    database = fresh_database(home, "bench_reindex")
    with database.connect() as conn:
        model, _, _ = insert_rows(conn, "bench-a", 512, rows, prefix="/lib")
    queries = unit_vectors(searches, 512, seed=7)

    def p95() -> float:
        times = []
        with database.connect() as conn:
            for query in queries:
                start = time.perf_counter()
                search_vector(conn, model, query, 10, ef_search=320)
                times.append(time.perf_counter() - start)
        return 1000 * float(np.percentile(times, 95))

    idle = p95()
    folder = Path(tempfile.mkdtemp()) / "photos"
    make_images(folder, images, size=(640, 480))
    env = dict(
        os.environ,
        CLIPDB_DATABASE_URL=database.url,
        PYTHONPATH=ROOT,
        CLIPDB_HOME=str(home.parent / "home"),  # its OpenVINO cache: the run's, not the user's
    )
    ingest = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "clipdb",
            "ingest",
            str(folder),
            "--model",
            "ViT-B-32",
            "--pretrained",
            "none",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    rounds = []
    while ingest.poll() is None:
        rounds.append(p95())
    out, err = ingest.communicate()
    if ingest.returncode != 0:
        raise SystemExit(f"ingest failed: {err[-2000:]}")
    return {
        "idle_p95_ms": idle,
        "during_p95_ms": max(rounds) if rounds else float("nan"),
        "rounds_during": len(rounds),
        "images": images,
        "ingest": out.strip(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", nargs="*", default=list(FAMILIES))
    parser.add_argument("--images", type=int, default=16, help="images per encoder timing")
    parser.add_argument("--large-images", type=int, default=4, help="... for ViT-L-14")
    parser.add_argument("--index-rows", type=int, default=5000)
    parser.add_argument("--reindex", type=int, default=300, help="images re-indexed (0: skip)")
    parser.add_argument("--search-rows", type=int, default=20_000, help="rows searched")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-models-"))
    work.chmod(0o755)  # the embedded server's user must reach its home inside
    configs = work / "configs"
    configs.mkdir()
    names = siglip_configs(configs)
    env = dict(
        os.environ,
        CLIPDB_HOME=str(work / "home"),
        PYTHONPATH=ROOT,
        CLIPDB_MODEL_CONFIGS=os.pathsep.join(
            [str(configs), *filter(None, [os.environ.get("CLIPDB_MODEL_CONFIGS")])]
        ),
    )
    result: dict[str, object] = {"loadavg_start": Path("/proc/loadavg").read_text().strip()}
    families = []
    for family in args.families:
        images = args.large_images if "L-14" in family else args.images
        figures = family_figures(family, names.get(family, family), images, env)
        figures["images_timed"] = images
        print(json.dumps(figures), flush=True)
        families.append(figures)
    result["families"] = families
    home = work / "db"
    try:
        result["index"] = index_bytes_per_row([512, 768], args.index_rows, home)
        print(json.dumps(result["index"]), flush=True)
        if args.reindex:
            result["reindex"] = search_during_reindex(home, args.reindex, 100, args.search_rows)
            print(json.dumps(result["reindex"]), flush=True)
    finally:
        from clipdb.db.embedded import stop_server

        stop_server(home)  # the embedded server this run started
    result["loadavg_end"] = Path("/proc/loadavg").read_text().strip()
    result["max_rss_parent_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
