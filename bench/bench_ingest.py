"""Ingest benchmark (not a test): pipeline vs encoder-only ceiling vs a naive loop.

    python bench/bench_ingest.py                      # writes bench/results/INGEST.md

All figures come from the same run, same model, batch size and precision, so a busy machine
slows them alike. Uses random-init ViT-B-32 (``--pretrained none``): speed does not depend on
the weights. Images are generated photo-like JPEGs (smooth gradients, shapes, sensor noise).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("CLIPDB_MODEL_CONFIGS", str(ROOT / "tests" / "model_configs"))

from benchutil import fresh_database  # noqa: E402

from clipdb import decode, files, pixels  # noqa: E402
from clipdb.db import Database  # noqa: E402
from clipdb.db.embedded import ensure_server, stop_server  # noqa: E402
from clipdb.db.registry import register_model  # noqa: E402
from clipdb.db.store import ImageRecord, upsert_images  # noqa: E402
from clipdb.ingest import ingest  # noqa: E402


def photo(rng: np.random.Generator, width: int, height: int):  # type: ignore[no-untyped-def]
    from PIL import Image, ImageDraw, ImageFilter

    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack(
        [
            rng.uniform(40, 200)
            + rng.uniform(-60, 60) * np.sin(x / rng.uniform(80, 400) + c)
            + rng.uniform(-50, 50) * (y / height)
            for c in range(3)
        ],
        axis=-1,
    )
    image = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(image)
    for _ in range(12):
        x0, y0 = int(rng.integers(0, width)), int(rng.integers(0, height))
        x1, y1 = x0 + int(rng.integers(40, width // 3)), y0 + int(rng.integers(40, height // 3))
        fill = tuple(int(c) for c in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x0, y0, x1, y1), fill=fill)
    image = image.filter(ImageFilter.GaussianBlur(1.5))
    noisy = np.asarray(image, dtype=np.int16) + rng.normal(0, 6, (height, width, 3))
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8), "RGB")


def make_photos(directory: Path, count: int, size: tuple[int, int]) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = [directory / f"photo_{i:05d}.jpg" for i in range(count)]
    rng = np.random.default_rng(1234)
    for path in paths:
        if not path.exists():
            photo(rng, *size).save(path, "JPEG", quality=90)
    return paths


def make_small(directory: Path, count: int) -> list[Path]:
    from PIL import Image

    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    paths = []
    for i in range(count):
        path = directory / f"d{i // 1000:02d}" / f"small_{i:05d}.jpg"
        path.parent.mkdir(exist_ok=True)
        if not path.exists():
            pixels = rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)
            Image.fromarray(pixels, "RGB").save(path, "JPEG", quality=80)
        paths.append(path)
    return paths


def ceiling(encoder, batch_size: int, batches: int) -> float:  # type: ignore[no-untyped-def]
    import torch

    size = max(encoder.image_size)
    pixels = torch.randn(batch_size, 3, size, size)
    encoder.encode_images(pixels)  # warm-up
    start = time.perf_counter()
    for _ in range(batches):
        encoder.encode_images(pixels)
    return batch_size * batches / (time.perf_counter() - start)


def naive(encoder, database: Database, paths: list[Path]) -> float:  # type: ignore[no-untyped-def]
    """The original tool's shape: open, preprocess, encode and store one image at a time."""
    from PIL import Image

    with database.connect() as conn:
        model = register_model(conn, "naive-" + encoder.architecture, "none", encoder.dim)
        conn.commit()
        start = time.perf_counter()
        for path in paths:
            image = Image.open(path).convert("RGB")
            embedding = encoder.encode_pil([image])[0]
            stat = path.stat()
            record = ImageRecord(
                str(path),
                files.sha256_file(str(path)),
                stat.st_size,
                stat.st_mtime_ns,
                image.width,
                image.height,
                embedding,
            )
            upsert_images(conn, model, [record])
            conn.commit()
        return len(paths) / (time.perf_counter() - start)


def drift(encoder, paths: list[Path]) -> tuple[float, float, int]:  # type: ignore[no-untyped-def]
    """Cosine between embeddings of draft-decoded and fully decoded JPEGs: min, mean, scale."""
    pipeline = pixels.PixelPipeline.from_preprocess(encoder.preprocess, max(encoder.image_size))
    fast = [decode.decode_task(str(p), pipeline, None, draft=True) for p in paths]
    full = [decode.decode_task(str(p), pipeline, None, draft=False) for p in paths]
    a = encoder.encode_images(pipeline.to_batch([d.pixels for d in fast]))
    b = encoder.encode_images(pipeline.to_batch([d.pixels for d in full]))
    cosines = (a * b).sum(axis=1)
    image, _, _ = decode.open_image(
        str(paths[0]), draft_size=pipeline.input_size * decode.DRAFT_MARGIN
    )
    scale = round(fast[0].width / image.width)
    return float(cosines.min()), float(cosines.mean()), scale


def precision_check(encoder, paths: list[Path]) -> float:  # type: ignore[no-untyped-def]
    pipeline = pixels.PixelPipeline.from_preprocess(encoder.preprocess, max(encoder.image_size))
    batch = pipeline.to_batch([decode.decode_task(str(p), pipeline, None).pixels for p in paths])
    fp32 = dataclasses.replace(encoder, precision="fp32").encode_images(batch)
    other = encoder.encode_images(batch)
    return float((fp32 * other).sum(axis=1).min())


def main() -> None:
    # Imported here, not at the top: decode workers re-import this module as __mp_main__,
    # and a top-level torch import would add seconds to every pool start in the measurement.
    from clipdb.encoders import load_encoder

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=500)
    parser.add_argument("--size", default="1600x1200")
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--naive-count", type=int, default=64)
    parser.add_argument("--noop-count", type=int, default=10_000)
    parser.add_argument("--data", default=os.path.join(tempfile.gettempdir(), "clipdb-bench"))
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "INGEST.md"))
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.split("x"))
    data = Path(args.data)
    print(f"generating {args.count} {args.size} JPEGs in {data} ...", file=sys.stderr)
    photos = make_photos(data / f"photos_{args.size}", args.count, (width, height))
    home = Path(tempfile.mkdtemp(prefix="clipdb-bench-home-"))
    home.chmod(0o711)  # as root, the server user must enter it; clipdb will not chmod it
    server = ensure_server(home)
    lines: list[str] = []
    try:
        encoder = load_encoder(args.model, "none", device="cpu", precision=args.precision)
        bs = args.batch_size
        batches = max(2, args.count // bs // 2)
        print("ceiling ...", file=sys.stderr)
        ceil_before = ceiling(encoder, bs, batches)
        db = fresh_database(server, "bench_ingest")
        print("ingest ...", file=sys.stderr)
        summary = ingest(
            [str(p) for p in photos],
            database=db,
            encoder=encoder,
            batch_size=bs,
            workers=args.workers,
            progress=True,
        )
        print("ceiling again, naive ...", file=sys.stderr)
        ceil_after = ceiling(encoder, bs, batches)
        naive_rate = naive(encoder, db, photos[: args.naive_count])
        fp32_ceiling = ceiling(dataclasses.replace(encoder, precision="fp32"), bs, 2)
        low_ceiling = ceiling(encoder, bs, 2)
        cosine = precision_check(encoder, photos[:32])
        ceil = statistics.mean([ceil_before, ceil_after])
        print("drift ...", file=sys.stderr)
        drift_b32 = drift(encoder, photos[:64])
        tiny = load_encoder("clipdb-tiny", "none", device="cpu", precision="fp32")
        drift_tiny = drift(tiny, photos[:64])

        print("no-op rerun ...", file=sys.stderr)
        small = make_small(data / "small", args.noop_count)
        noop_db = fresh_database(server, "bench_noop")
        first = ingest([str(data / "small")], database=noop_db, encoder=tiny, progress=False)
        rerun = ingest(
            [str(data / "small")],
            database=noop_db,
            model="clipdb-tiny",
            pretrained="none",
            progress=False,
        )
        command = [
            sys.executable, "-m", "clipdb.ingest", str(data / "small"), "--model", "clipdb-tiny",
            "--pretrained", "none", "--json", "--database-url", noop_db.url,
        ]  # fmt: skip
        start = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True, cwd=ROOT)
        cli_seconds = time.perf_counter() - start
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import open_clip"], check=True, capture_output=True)
        import_seconds = time.perf_counter() - start
        assert rerun.new == 0 and rerun.unchanged == len(small), rerun
    finally:
        stop_server(home)
        shutil.rmtree(home, ignore_errors=True)

    cpu = _cpu_name()
    ratio = summary.images_per_s / ceil
    lines += [
        "# Ingest benchmark",
        "",
        f"Machine: {cpu}, {os.cpu_count()} CPUs (`lscpu`), {platform.system()}, no GPU; "
        f"Python {platform.python_version()}. Other work may share the machine: every figure "
        "in one table comes from the same run.",
        "",
        "Command: `python bench/bench_ingest.py "
        + " ".join(a for a in sys.argv[1:])
        + "`"
        + f" (model {args.model} random init, {args.count} JPEGs {args.size} q90, batch {bs}, "
        f"precision {encoder.precision}, workers {summary and _workers(args.workers)})",
        "",
        "| measure | images/s | vs ceiling | vs naive |",
        "|---|---:|---:|---:|",
        f"| ingest (scan, decode, encode, write; fresh DB with HNSW index) | "
        f"{summary.images_per_s:.1f} | {ratio:.2f} | {summary.images_per_s / naive_rate:.1f}x |",
        f"| encoder-only ceiling (random tensors, mean of before/after: "
        f"{ceil_before:.1f} / {ceil_after:.1f}) | {ceil:.1f} | 1.00 | {ceil / naive_rate:.1f}x |",
        f"| naive loop, one image at a time ({args.naive_count} images) | {naive_rate:.1f} | "
        f"{naive_rate / ceil:.2f} | 1.0x |",
        "",
        f"Ingest wall time {summary.seconds:.1f} s for {summary.new} images.",
        "",
        "## Precision (CPU)",
        "",
        f"Encoder-only, back to back: fp32 {fp32_ceiling:.1f} images/s, {encoder.precision} "
        f"{low_ceiling:.1f} images/s ({low_ceiling / fp32_ceiling:.2f}x); min cosine "
        f"{encoder.precision} vs fp32 over 32 images: {cosine:.6f}.",
        "",
        "## JPEG draft decode drift",
        "",
        f"Draft decoding keeps the short side >= {decode.DRAFT_MARGIN}x the model input; cosine "
        "between embeddings of draft-decoded and fully decoded images (64 photos):",
        "",
        "| model | input | draft scale | min cosine | mean cosine |",
        "|---|---:|---:|---:|---:|",
        f"| {args.model} (random init) | {max(encoder.image_size)} | 1/{drift_b32[2]} | "
        f"{drift_b32[0]:.6f} | {drift_b32[1]:.6f} |",
        f"| clipdb-tiny (random init) | {max(tiny.image_size)} | 1/{drift_tiny[2]} | "
        f"{drift_tiny[0]:.6f} | {drift_tiny[1]:.6f} |",
        "",
        f"## No-op rerun, {len(small)} unchanged files",
        "",
        f"First ingest (tiny model): {first.seconds:.1f} s. Rerun through `ingest()` "
        f"(model by name, so not loaded): {rerun.seconds:.3f} s (scan + diff). The same rerun "
        f"as a CLI process: {cli_seconds:.2f} s wall; it imports neither torch nor open_clip "
        f"(`import open_clip` alone takes {import_seconds:.2f} s).",
        "",
    ]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines))
    print("\n".join(lines))


def _workers(workers: int | None) -> int:
    from clipdb.ingest import default_workers

    return default_workers() if workers is None else workers


def _cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    except OSError:
        return platform.processor()
    for line in out.splitlines():
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


if __name__ == "__main__":
    main()
