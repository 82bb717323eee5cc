"""Duplicate finding: near-tier quality on real photos, and dupes at scale.

quality: each real photo of bench/sample_photos.py and copies of it (JPEG re-encoded at
several qualities, 25-75% resizes, PNG<->JPEG, 2-10% crops, 1-3 degree rotations, colour
shifts) are decoded as ingest decodes them and hashed (clipdb.phash). Pairs within one photo's
family are duplicates; pairs across photos are not. Prints precision/recall of "pHash distance
<= d" for each d, and the recall of each kind of copy.

scale: N synthetic rows (random unit vectors, random hashes) with planted groups (exact copies
and near copies a few bits away) in a fresh database on the embedded server; times each tier
of clipdb.dupes.find_duplicates (files are not stat'ed: there are none) and its peak memory.

    python bench/bench_dupes.py quality
    python bench/bench_dupes.py scale --rows 100000 --home /tmp/clipdb-bench-dupes
    python bench/bench_dupes.py scale --reuse --home /tmp/clipdb-bench-dupes   # time again
"""

from __future__ import annotations

import argparse
import io
import itertools
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
from PIL import Image, ImageEnhance  # noqa: E402

from clipdb import phash  # noqa: E402
from clipdb.decode import PHASH_DRAFT_SIZE, open_image  # noqa: E402


def _jpeg(image: Image.Image, quality: int) -> bytes:
    out = io.BytesIO()
    image.convert("RGB").save(out, "JPEG", quality=quality)
    return out.getvalue()


def _png(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


def _crop(image: Image.Image, fraction: float) -> Image.Image:
    w, h = image.size
    dx, dy = int(w * fraction / 2), int(h * fraction / 2)
    return image.crop((dx, dy, w - dx, h - dy))


def variants(image: Image.Image) -> dict[str, bytes]:
    """Copies of one photo, by kind of change."""
    image = image.convert("RGB")
    w, h = image.size
    out: dict[str, bytes] = {}
    for quality in (95, 75, 50, 30):
        out[f"jpeg q{quality}"] = _jpeg(image, quality)
    for scale in (0.25, 0.5, 0.75):
        size = (max(1, int(w * scale)), max(1, int(h * scale)))
        out[f"resize {int(scale * 100)}%"] = _jpeg(image.resize(size, Image.Resampling.LANCZOS), 85)
    out["png <-> jpeg"] = _png(Image.open(io.BytesIO(_jpeg(image, 90))))
    for fraction in (0.02, 0.05, 0.10):
        out[f"crop {int(fraction * 100)}%"] = _jpeg(_crop(image, fraction), 90)
    for degrees in (1, 2, 3):
        rotated = image.rotate(degrees, Image.Resampling.BICUBIC, expand=False)
        out[f"rotate {degrees} deg"] = _jpeg(rotated, 90)
    out["brighter 10%"] = _jpeg(ImageEnhance.Brightness(image).enhance(1.1), 90)
    out["saturation +30%"] = _jpeg(ImageEnhance.Color(image).enhance(1.3), 90)
    warm = np.asarray(image, dtype=np.int16) + np.array([12, 0, -12])
    out["warmer (R+12, B-12)"] = _jpeg(Image.fromarray(np.clip(warm, 0, 255).astype(np.uint8)), 90)
    return out


def hash_bytes(data: bytes) -> int:
    image, _, _ = open_image(data, draft_size=PHASH_DRAFT_SIZE)  # as ingest decodes
    return phash.phash(image)


def quality(max_d: int) -> None:
    from sample_photos import sample_photos

    families: list[list[tuple[str, int]]] = []
    for path in sample_photos():
        original = path.read_bytes()
        members = [("original", hash_bytes(original))]
        members += [(kind, hash_bytes(data)) for kind, data in variants(Image.open(path)).items()]
        families.append(members)
    positives = [(a, b) for family in families for a, b in itertools.combinations(family, 2)]
    negatives = [(a, b) for f1, f2 in itertools.combinations(families, 2) for a in f1 for b in f2]
    pos_d = np.array([phash.distance(a[1], b[1]) for a, b in positives])
    neg_d = np.array([phash.distance(a[1], b[1]) for a, b in negatives])
    print(
        f"{len(families)} photos, {sum(map(len, families))} images, "
        f"{len(positives)} duplicate pairs, {len(negatives)} non-duplicate pairs"
    )
    print(
        f"non-duplicate pairs: min distance {neg_d.min()}, 1st percentile "
        f"{np.percentile(neg_d, 1):.0f}, median {np.median(neg_d):.0f}"
    )
    print("| d | precision | recall | false pairs |")
    print("|---|---|---|---|")
    for d in range(max_d + 1):
        tp, fp = int((pos_d <= d).sum()), int((neg_d <= d).sum())
        precision = tp / (tp + fp) if tp + fp else 1.0
        print(f"| {d} | {precision:.4f} | {tp / len(pos_d):.4f} | {fp} |")
    kinds = [kind for kind, _ in families[0][1:]]
    print("\nrecall of copy vs original, by kind (d = 4 / 6 / 7 / 10):")
    for index, kind in enumerate(kinds, 1):
        dist = np.array([phash.distance(f[0][1], f[index][1]) for f in families])
        cells = " / ".join(f"{(dist <= d).mean():.2f}" for d in (4, 6, 7, 10))
        print(f"  {kind:<22} {cells}   (median {np.median(dist):.0f} bits)")


def scale(
    rows: int, home: str, dim: int, group_every: int, tiers: list[str], reuse: bool = False
) -> None:
    from benchutil import fresh_database

    from clipdb.db.registry import register_model
    from clipdb.db.store import ImageRecord, bulk_load

    if reuse:
        time_tiers(home, tiers)
        return
    database = fresh_database(Path(home), "bench_dupes")
    rng = np.random.default_rng(0)
    started = time.perf_counter()
    hashes = rng.integers(-(2**63), 2**63 - 1, rows, dtype=np.int64, endpoint=True)
    shas = [rng.bytes(32) for _ in range(rows)]
    vectors = rng.standard_normal((rows, dim)).astype(np.float32)
    planted = 0
    for start in range(0, rows - 3, group_every):  # groups of 3: original, exact, near copy
        shas[start + 1] = shas[start]
        hashes[start + 1] = hashes[start]
        flip = np.int64(1) << np.int64(rng.integers(0, 62))
        hashes[start + 2] = hashes[start] ^ flip ^ (flip << np.int64(1))  # 2 bits away
        vectors[start + 1] = vectors[start]
        vectors[start + 2] = vectors[start] + 0.05 * rng.standard_normal(dim)
        planted += 1
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    with database.connect() as conn:
        model = register_model(conn, "bench-dupes", "none", dim)
        conn.commit()
        records = (
            ImageRecord(f"/bench/{i:08d}.jpg", shas[i], 1000 + i % 7, 0, 64, 48, vectors[i])
            for i in range(rows)
        )
        # Hashes are set before the HNSW index is built: an UPDATE under a live HNSW index
        # costs a graph insert per row.
        with conn.transaction():
            conn.execute(f"DROP INDEX IF EXISTS clipdb.{model.index_name}")
            bulk_load(conn, model, records, rebuild_index=False)
            conn.execute(
                "UPDATE clipdb.images i SET phash = h.v::bit(64) FROM unnest(%s::bigint[]) "
                "WITH ORDINALITY h(v, n) WHERE i.path = '/bench/' || lpad((h.n - 1)::text, 8, "
                "'0') || '.jpg'",
                (hashes.tolist(),),
            )
        # VACUUM before the index build: vacuuming an HNSW index walks its whole graph (at
        # 100k 512-d rows on a loaded machine it ran over 10 minutes after the build).
        conn.autocommit = True
        conn.execute("VACUUM ANALYZE clipdb.images")
        loaded = time.perf_counter()
        if "similar" in tiers:  # only the similar tier reads the HNSW index
            ddl = conn.execute(
                "SELECT clipdb.model_index_ddl(%s::smallint, %s)", (model.model_id, dim)
            ).fetchone()
            assert ddl is not None
            conn.execute(ddl[0])
            conn.execute("ANALYZE clipdb.images")
        print(f"HNSW build {time.perf_counter() - loaded:.1f} s")
        print(
            f"{rows} rows, {planted} planted groups loaded in {time.perf_counter() - started:.1f} s"
        )
    time_tiers(home, tiers)


def time_tiers(home: str, tiers: list[str]) -> None:
    """Time each tier of find_duplicates on the database the last scale run loaded, and the
    first page of the similar tier's pairs (one kNN batch)."""
    import psycopg

    from clipdb.db.dupes import knn_pairs
    from clipdb.db.embedded import ensure_server
    from clipdb.db.registry import models_with_rows
    from clipdb.dupes import find_duplicates

    server = ensure_server(Path(home))
    print(f"load average {Path('/proc/loadavg').read_text().split()[:3]}")
    with psycopg.connect(server.url(database="bench_dupes"), autocommit=True) as conn:
        model = models_with_rows(conn)[0]
        t0 = time.perf_counter()
        first = list(itertools.islice(knn_pairs(conn, model, None, 0.99, 10), 1))
        print(f"  first kNN batch (1000 images) {time.perf_counter() - t0:.2f} s, {len(first)}")
        runs = [("exact",), ("near",), ("exact", "near"), ("similar",)]
        for selected in [run for run in runs if set(run) <= set(tiers)]:
            before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            t0 = time.perf_counter()
            result = find_duplicates(
                conn, model, tiers=selected, similar_threshold=0.99, check_files=False
            )
            seconds = time.perf_counter() - t0
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            sizes = np.bincount([len(g.images) for g in result.groups]) if result.groups else []
            print(
                f"  {','.join(selected):<12} {seconds:7.2f} s  groups {len(result.groups):>7}  "
                f"sizes {dict((i, int(n)) for i, n in enumerate(sizes) if n)}  "
                f"client peak RSS {peak / 1024:.0f} MiB (was {before / 1024:.0f})"
            )
    print(f"load average {Path('/proc/loadavg').read_text().split()[:3]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    q = sub.add_parser("quality")
    q.add_argument("--max-d", type=int, default=12)
    s = sub.add_parser("scale")
    s.add_argument("--rows", type=int, default=100_000)
    s.add_argument("--home", default="/tmp/clipdb-bench-dupes")
    s.add_argument("--dim", type=int, default=64)
    s.add_argument("--group-every", type=int, default=100)
    s.add_argument("--tiers", default="exact,near,similar", help="tiers to time")
    s.add_argument("--reuse", action="store_true", help="time the database the last run loaded")
    args = parser.parse_args()
    if args.what == "quality":
        quality(args.max_d)
    else:
        scale(args.rows, args.home, args.dim, args.group_every, args.tiers.split(","), args.reuse)


if __name__ == "__main__":
    main()
