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

Accuracy and retrieval also take ``--screenshots N`` (HTML pages rendered by Debian's headless
Chromium: settings dialogs, tables, receipts, chat lists; bench/ocr_screens.py) and
``--chinese N`` (Chinese words and prices, in WenQuanYi Micro Hei: ``apt-get install
fonts-wqy-microhei``), and report each kind apart (sign, document, plate, plain, screenshot,
chinese; "accented" counts the accented Latin words wherever they are) as well as overall;
``--kinds screenshot,chinese`` keeps only those. How words are counted (Chinese: as a part of
the read text): bench/ocr_score.py.

    python bench/bench_ocr.py --part accuracy --images 40 --screenshots 16 --chinese 16
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from benchutil import fresh_database  # noqa: E402
from ocr_score import fold, holds, in_part, is_cjk, score, truth_words  # noqa: E402
from ocr_set import ACCENTED, ALL_KINDS, make_labelled, make_set  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
HOME = "/tmp/clipdb-bench-ocr"


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def labelled(args: argparse.Namespace, prefix: str) -> dict[Path, tuple[str, list[str]]]:
    kinds = tuple(args.kinds.split(","))
    if "accented" in kinds:  # accented words sit in the sign, document and plain images
        kinds += ("sign", "document", "plain")
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    return make_labelled(
        folder,
        args.images,
        seed=args.seed,
        blank=args.blank,
        screenshots=args.screenshots,
        chinese=args.chinese,
        kinds=kinds,
        photos=args.captioned,
    )


ACCENTED_FOLDED = {fold(w) for w in ACCENTED}


def _buckets(kind: str, word: str) -> list[str]:
    """The rows a true word counts in: overall, its image's kind, and "accented"."""
    return ["all", kind] + (["accented"] if word in ACCENTED_FOLDED else [])


def accuracy(args: argparse.Namespace) -> dict[str, Any]:
    from PIL import Image

    from clipdb.ocr import load_engine

    truth = labelled(args, "ocr-acc-")
    images: dict[str, int] = {}
    for kind, _ in truth.values():
        images[kind] = images.get(kind, 0) + 1
    result: dict[str, Any] = {"images": images}
    for name in args.engines.split(","):
        engine = load_engine(name)
        started = time.perf_counter()
        engine.read(Image.open(next(iter(truth))))  # models load
        load_s = time.perf_counter() - started
        counts: dict[str, list[int]] = {}  # row: [found, missed, extra, found as a part]
        text_s: list[float] = []
        blank_s: list[float] = []
        skipped: dict[str, str] = {}
        for path, (kind, words) in truth.items():
            if kind == "chinese" and name == "tesseract":
                # Only English trained data is installed for it here (no chi_sim).
                skipped[kind] = "not supported (tesseract has eng trained data only)"
                continue
            t = time.perf_counter()
            boxes = engine.read(Image.open(path))
            (text_s if words else blank_s).append(time.perf_counter() - t)
            read = " ".join(box.text for box in boxes)
            marks, extra = score(words, read)
            for (word, found), part in zip(marks, in_part(words, read), strict=True):
                for row in _buckets(kind, word):
                    counts.setdefault(row, [0, 0, 0, 0])[0 if found else 1] += 1
                    counts[row][3] += part
            for row in ("all", kind):
                counts.setdefault(row, [0, 0, 0, 0])[2] += extra
        per_kind: dict[str, Any] = dict(skipped)
        for row, (found, missed, extra, part) in counts.items():
            if found + missed == 0:  # images without text: only what was read off them counts
                per_kind[row] = {"extra_words": extra}
                continue
            per_kind[row] = {
                "words": found + missed,
                "word_recall": round(found / max(1, found + missed), 3),
                "part_recall": round(part / max(1, found + missed), 3),
                # "accented" counts words, not images: it has no extras of its own.
                "word_precision": None
                if row == "accented"
                else round(found / max(1, found + extra), 3),
            }
        overall = per_kind.pop("all", {"word_recall": None, "word_precision": None})
        result[name] = {
            "word_recall": overall["word_recall"],
            "word_precision": overall["word_precision"],
            # A word inside a longer run of read text (spaces lost): a part-string finds it.
            "part_recall": overall.get("part_recall"),
            "s_per_text_image": round(float(np.mean(text_s)), 3) if text_s else None,
            "s_per_blank_image": round(float(np.mean(blank_s)), 3) if blank_s else None,
            "first_image_s": round(load_s, 2),
            "kinds": per_kind,
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

    truth = labelled(args, "ocr-ret-")
    folder = next(iter(truth)).parent
    database, encoder, summary = _ingested(folder, "on")
    log(f"ingested: {summary.format()}")
    owners: dict[str, set[Path]] = {}
    for path, (_, words) in truth.items():
        for word in truth_words(words):
            owners.setdefault(word, set()).add(path)
    for word in [w for w in owners if is_cjk(w)]:  # a Chinese word is also inside longer ones
        owners[word] = {p for p, (_, words) in truth.items() if holds(words, word)}
    # Latin words of 3+ letters; Chinese ones of 2+ characters (most Chinese words have two).
    unique = {
        w: next(iter(p))
        for w, p in owners.items()
        if len(p) == 1 and (len(w) >= 3 or (is_cjk(w) and len(w) >= 2))
    }
    rng = random.Random(args.seed)
    ranks: dict[str, list[int]] = {}
    parts, misses = [], []
    with database.connect() as conn:
        model = registered_model(conn, "clipdb-tiny", "none")
        for word, path in sorted(unique.items()):
            vector = encoder.encode_texts([word])[0]
            hits = text.search_text(conn, model, word, 10, vector=vector, match="hybrid")
            names = [h.image_path for h in hits]
            rank = names.index(str(path)) + 1 if str(path) in names else 99
            for row in _buckets(truth[path][0], word):
                ranks.setdefault(row, []).append(rank)
            if rank > 1:  # what was read from the image the word names
                read = conn.execute(
                    "SELECT t.ocr_text FROM clipdb.image_text t JOIN clipdb.images i "
                    "ON i.id = t.image_id WHERE i.path = %s",
                    (str(path),),
                ).fetchone()
                misses.append({"word": word, "rank": rank, "read": read and read[0]})
            if len(word) >= 6 and not is_cjk(word):  # a part: 4 letters from inside the word
                start = rng.randrange(1, len(word) - 4)
                piece = word[start : start + 4]
                holders = {p for w, ps in owners.items() if piece in w for p in ps}
                if holders == {path}:
                    found = text.search_text(conn, model, piece, 5, match="text")
                    parts.append(bool(found) and found[0].image_path == str(path))

    def row(values: list[int]) -> dict[str, Any]:
        ranks_a = np.array(values)
        return {
            "unique_words": len(values),
            "rank1": round(float((ranks_a == 1).mean()), 3),
            "top5": round(float((ranks_a <= 5).mean()), 3),
        }

    overall = row(ranks.pop("all", []) or [99])
    return {
        "images": len(truth),
        **overall,
        "kinds": {kind: row(values) for kind, values in sorted(ranks.items())},
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
    parser.add_argument(
        "--screenshots", type=int, default=0, help="accuracy, retrieval: Chromium screenshots"
    )
    parser.add_argument(
        "--chinese", type=int, default=0, help="accuracy, retrieval: images of Chinese text"
    )
    parser.add_argument(
        "--captioned",
        type=int,
        default=0,
        help="accuracy, retrieval: real photographs (bench/sample_photos.py) with words on them",
    )
    parser.add_argument(
        "--kinds",
        default=",".join(ALL_KINDS),
        help="accuracy, retrieval: keep only these kinds (comma-separated; blank images stay)",
    )
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=110)
    parser.add_argument("--text-only", action="store_true", help="latency: time text search only")
    parser.add_argument("--home", default=HOME, help="latency: the embedded server's home")
    parser.add_argument(
        "--database", help="latency: add text rows to this existing database (its rows, index)"
    )
    parser.add_argument("--model", default="bench-filters", help="latency: with --database")
    args = parser.parse_args()
    unknown = set(args.kinds.split(",")) - {*ALL_KINDS, "accented"}
    if unknown:
        parser.error(f"no such kind: {', '.join(sorted(unknown))} (kinds: {', '.join(ALL_KINDS)})")
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
