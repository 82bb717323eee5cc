"""Text in images: OCR accuracy, retrieval by words, ingest cost, hybrid query latency.

    python bench/bench_ocr.py --part accuracy --images 40      # both engines
    python bench/bench_ocr.py --part retrieval --images 60     # rank of the one image a word names
    python bench/bench_ocr.py --part rate --images 12          # ingest, OCR on vs off
    python bench/bench_ocr.py --part latency --n 100000        # hybrid vs CLIP-only queries
    python bench/bench_ocr.py --part latency --n 1000000 --text-only   # text search at 1M
    python bench/bench_ocr.py --part latency --home H --database clipdb_bench_filters
        # text rows added to bench/bench_filters.py's rows; text and hybrid at its scale

The images are bench/ocr_set.py's: made-up words (no dictionary helps any engine), accented
Latin and plates rendered as signs on photo-like textures, scanned-looking documents, plates
and plain captions, in six fonts, 18-72 px, rotated up to 6 degrees; plus blank photo-like
images. Nothing was tuned to them (the engines' settings were chosen before, on seed 7;
the bench uses seed 11). Retrieval uses the clipdb-tiny model with random weights, so the CLIP
side is noise and every rank comes from the words. Writes bench/results/ocr_<part>.json.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
import tempfile
import time
import unicodedata
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from benchutil import fresh_database  # noqa: E402
from ocr_set import make_set  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
HOME = "/tmp/clipdb-bench-ocr"


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def fold(text: str) -> str:
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(c for c in decomposed if not unicodedata.combining(c)).lower()


def words_of(text: str) -> list[str]:
    return re.findall(r"\w+", fold(text))


def accuracy(args: argparse.Namespace) -> dict[str, Any]:
    from PIL import Image

    from clipdb.ocr import load_engine

    folder = Path(tempfile.mkdtemp(prefix="ocr-acc-"))
    truth = make_set(folder, args.images, seed=args.seed, blank=args.blank)
    result: dict[str, Any] = {"images": args.images, "blank": args.blank}
    for name in args.engines.split(","):
        engine = load_engine(name)
        started = time.perf_counter()
        engine.read(Image.open(next(iter(truth))))  # models load
        load_s = time.perf_counter() - started
        found = missed = extra = 0
        text_s: list[float] = []
        blank_s: list[float] = []
        for path, words in truth.items():
            t = time.perf_counter()
            boxes = engine.read(Image.open(path))
            (text_s if words else blank_s).append(time.perf_counter() - t)
            got = words_of(" ".join(box.text for box in boxes))
            for word in words_of(" ".join(words)):
                if word in got:
                    found += 1
                    got.remove(word)
                else:
                    missed += 1
            extra += len(got)
        result[name] = {
            "word_recall": round(found / (found + missed), 3),
            "word_precision": round(found / max(1, found + extra), 3),
            "s_per_text_image": round(float(np.mean(text_s)), 3),
            "s_per_blank_image": round(float(np.mean(blank_s)), 3) if blank_s else None,
            "first_image_s": round(load_s, 2),
        }
        log(f"{name}: {result[name]}")
    return result


def _ingested(folder: Path, ocr: str) -> tuple[Any, Any, Any]:
    from helpers import TINY_MODEL  # noqa: F401 - sets nothing; the configs dir below does

    from clipdb.encoders import load_encoder
    from clipdb.ingest import ingest

    database = fresh_database(HOME, "clipdb_bench_ocr")
    encoder = load_encoder("clipdb-tiny", "none", device="cpu", precision="fp32", backend="torch")
    summary = ingest([folder], database=database, encoder=encoder, ocr=ocr, progress=False)
    return database, encoder, summary


def retrieval(args: argparse.Namespace) -> dict[str, Any]:
    from clipdb.db import text
    from clipdb.db.registry import registered_model

    folder = Path(tempfile.mkdtemp(prefix="ocr-ret-"))
    truth = make_set(folder, args.images, seed=args.seed, blank=args.blank)
    database, encoder, summary = _ingested(folder, "on")
    log(f"ingested: {summary.format()}")
    owners: dict[str, set[Path]] = {}
    for path, words in truth.items():
        for word in words_of(" ".join(words)):
            owners.setdefault(word, set()).add(path)
    unique = {w: next(iter(p)) for w, p in owners.items() if len(p) == 1 and len(w) >= 3}
    rng = random.Random(args.seed)
    ranks, parts, misses = [], [], []
    with database.connect() as conn:
        model = registered_model(conn, "clipdb-tiny", "none")
        for word, path in sorted(unique.items()):
            vector = encoder.encode_texts([word])[0]
            hits = text.search_text(conn, model, word, 10, vector=vector, match="hybrid")
            names = [h.image_path for h in hits]
            ranks.append(names.index(str(path)) + 1 if str(path) in names else 99)
            if ranks[-1] > 1:  # what was read from the image the word names
                read = conn.execute(
                    "SELECT t.ocr_text FROM clipdb.image_text t JOIN clipdb.images i "
                    "ON i.id = t.image_id WHERE i.path = %s",
                    (str(path),),
                ).fetchone()
                misses.append({"word": word, "rank": ranks[-1], "read": read and read[0]})
            if len(word) >= 6:  # a part-string: 4 letters from inside the word
                start = rng.randrange(1, len(word) - 4)
                piece = word[start : start + 4]
                holders = {p for w, ps in owners.items() if piece in w for p in ps}
                if holders == {path}:
                    found = text.search_text(conn, model, piece, 5, match="text")
                    parts.append(bool(found) and found[0].image_path == str(path))
    ranks_a = np.array(ranks)
    return {
        "images": args.images,
        "unique_words": len(ranks),
        "rank1": round(float((ranks_a == 1).mean()), 3),
        "top5": round(float((ranks_a <= 5).mean()), 3),
        "part_strings": len(parts),
        "part_string_recall_at_1": round(float(np.mean(parts)), 3) if parts else None,
        "misses": misses,
    }


def rate(args: argparse.Namespace) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for kind, count, blank in (("screenshots", args.images, 0), ("photos", 0, args.images)):
        folder = Path(tempfile.mkdtemp(prefix=f"ocr-rate-{kind}-"))
        make_set(folder, count, seed=args.seed, blank=blank)
        for ocr in ("off", "on"):
            _, _, summary = _ingested(folder, ocr)
            # The ingest pass itself (scan, encode, write, text stage), not the model's load.
            result[f"{kind} ocr {ocr}"] = round(args.images / summary.seconds, 2)
            log(f"{kind} ocr {ocr}: {summary.format()}")
    return result


def latency(args: argparse.Namespace) -> dict[str, Any]:
    from datagen import ClusteredSphere
    from text_latency import add_text, load_images, measure, query_kinds

    from clipdb.db import Database, queries
    from clipdb.db.embedded import ensure_server
    from clipdb.db.migrate import upgrade
    from clipdb.db.registry import register_model, registered_model

    result: dict[str, Any] = {"loadavg_start": Path("/proc/loadavg").read_text().split()[:3]}
    if args.database:  # an existing database's rows (bench/bench_filters.py's model)
        server = ensure_server(Path(args.home))
        database = Database(url=server.url(database=args.database))
        upgrade(database)
        with database.connect() as conn:
            model = registered_model(conn, args.model, "none")
            result["text_rows_added"], result["text_load_s"] = add_text(conn, model.model_id)
            conn.commit()
        sphere = ClusteredSphere(dim=model.dim)
    else:
        # --text-only: vectors of 8 dimensions and no HNSW index (the text side never reads
        # them, and a live index would cost a graph search per row loaded).
        sphere = ClusteredSphere(dim=8) if args.text_only else ClusteredSphere()
        database = fresh_database(args.home, "clipdb_bench_ocr_latency")
        with database.connect() as conn:
            model = register_model(conn, "bench-ocr", "none", sphere.dim)
            conn.execute(f"DROP INDEX clipdb.{model.index_name}")
            result["image_load_s"] = load_images(conn, model.model_id, args.n, sphere.dim)
            if not args.text_only:
                ddl = conn.execute(
                    "SELECT clipdb.model_index_ddl(%s::smallint, %s)", (model.model_id, model.dim)
                ).fetchone()
                assert ddl is not None
                conn.execute(ddl[0])
            result["text_rows_added"], result["text_load_s"] = add_text(conn, model.model_id)
            conn.commit()
    log(f"loaded: {result}")
    with database.connect(autocommit=True) as conn:
        rows = conn.execute(
            "SELECT count(*) FROM clipdb.images WHERE model_id = %s", (model.model_id,)
        ).fetchone()
        result["n"] = int(rows[0]) if rows else 0
        kinds = query_kinds(conn, model.model_id, args.queries, args.seed)
        vectors = None if args.text_only else sphere.sample(args.queries, stream=1)
        if vectors is not None:  # the CLIP-only baseline of the same run (first: it warms
            times = []  # the HNSW index that hybrid queries read too)
            for n, vector in enumerate(vectors):
                t = time.perf_counter()
                queries.search_vector(conn, model, vector, 10)
                if n >= 10:
                    times.append(time.perf_counter() - t)
            result["clip_p50_ms"] = round(float(np.median(times)) * 1000, 2)
        result["kinds"] = measure(conn, model.model_id, kinds, vectors)
    result["loadavg"] = Path("/proc/loadavg").read_text().split()[:3]
    return result


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--part", choices=("accuracy", "retrieval", "rate", "latency"))
    parser.add_argument("--images", type=int, default=40)
    parser.add_argument("--blank", type=int, default=8)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--engines", default="rapid,tesseract")
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=110)
    parser.add_argument("--text-only", action="store_true", help="latency: time text search only")
    parser.add_argument("--home", default=HOME, help="latency: the embedded server's home")
    parser.add_argument(
        "--database", help="latency: add text rows to this existing database (its rows, index)"
    )
    parser.add_argument("--model", default="bench-filters", help="latency: with --database")
    args = parser.parse_args()
    import os

    os.environ.setdefault(
        "CLIPDB_MODEL_CONFIGS", str(Path(__file__).resolve().parent.parent / "tests/model_configs")
    )
    part = {"accuracy": accuracy, "retrieval": retrieval, "rate": rate, "latency": latency}
    result = part[args.part](args)
    result["loadavg_end"] = Path("/proc/loadavg").read_text().split()[:3]
    RESULTS.mkdir(exist_ok=True)
    suffix = ("_text_only" if args.text_only else "") + (
        f"_{args.database}" if args.database else ""
    )
    out = RESULTS / f"ocr_{args.part}{suffix}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
