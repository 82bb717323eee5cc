"""Encoder backends (not a test): img/s, fidelity vs torch fp32, and ingest vs the ceiling.

    python bench/bench_encoder.py [--rounds 2] [--images 128] [--ingest 200]

Same random ViT-B-32 weights (``--pretrained none``, seeded) in every runtime, 2 threads.
Speed: encoder-only img/s on preprocessed pixels of generated 1600x1200 JPEGs, configs
interleaved round by round so a busy machine slows them alike. Fidelity: real photos from
bench/sample_photos.py (plus their mirror images and centre crops), min / mean cosine vs
torch fp32 and top-5 neighbour agreement. Then ``clipdb.ingest.ingest`` (the library call the
``clipdb ingest`` command makes) with the default backend into a fresh database, against the
torch ceiling (best of fp32 and bf16 autocast at batch 64) and the backend's own ceiling.
Random weights: the fidelity figures show numerics, not retrieval quality.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_ingest import make_photos  # noqa: E402
from benchutil import fresh_database  # noqa: E402
from sample_photos import sample_photos  # noqa: E402

if TYPE_CHECKING:
    from clipdb.encoders.torch import ClipEncoder

MODEL = "ViT-B-32"


def autocast_encode(encoder: ClipEncoder) -> Callable[[Any], np.ndarray]:
    """Today's (pre-issue-13) CPU bf16 path: fp32 weights under torch.autocast."""
    import torch

    from clipdb.encoders.torch import _normalise

    def encode(pixels: Any) -> np.ndarray:
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
            return _normalise(encoder.model.encode_image(pixels))

    return encode


def rate(encode: Callable[[Any], np.ndarray], pixels: Any, batch: int) -> float:
    encode(pixels[:batch])  # warm-up: first-call allocation and kernel selection
    start = time.perf_counter()
    for i in range(0, len(pixels), batch):
        encode(pixels[i : i + batch])
    return len(pixels) / (time.perf_counter() - start)


def fidelity(reference: np.ndarray, other: np.ndarray, k: int = 5) -> tuple[float, float, float]:
    cosines = (reference * other).sum(axis=1)

    def neighbours(vectors: np.ndarray) -> np.ndarray:
        sims = vectors @ vectors.T
        np.fill_diagonal(sims, -np.inf)
        return np.argsort(-sims, axis=1)[:, :k]

    a, b = neighbours(reference), neighbours(other)
    agree = np.mean([len(set(x) & set(y)) / k for x, y in zip(a, b, strict=True)])
    return float(cosines.min()), float(cosines.mean()), float(agree)


def real_images() -> list[Any]:
    from PIL import Image, ImageOps

    images = []
    for path in sample_photos():
        with Image.open(path) as opened:
            image = opened.convert("RGB")
        w, h = image.size
        crop = image.crop((w // 4, h // 4, w - w // 4, h - h // 4))
        images += [image, ImageOps.mirror(image), crop]
    return images


def main() -> None:
    import torch

    from clipdb.db.embedded import ensure_server, stop_server
    from clipdb.decode import decode_task
    from clipdb.encoders import load_encoder, resolve_model_spec
    from clipdb.encoders import openvino as ove
    from clipdb.encoders.device import cpu_has_fast_bf16
    from clipdb.ingest import ingest
    from clipdb.pixels import PixelPipeline

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--images", type=int, default=128)
    parser.add_argument("--ingest", type=int, default=200)
    parser.add_argument("--ingest-only", action="store_true", help="skip the speed/fidelity table")
    parser.add_argument("--data", default=os.path.join(tempfile.gettempdir(), "clipdb-bench"))
    args = parser.parse_args()
    torch.set_num_threads(2)
    spec = resolve_model_spec(MODEL, "none")
    fp32 = load_encoder(MODEL, "none", device="cpu", precision="fp32", backend="torch")
    cast = load_encoder(MODEL, "none", device="cpu", precision="bf16", backend="torch")
    configs: dict[str, Callable[[Any], np.ndarray]] = {
        "torch fp32": fp32.encode_images,
        "torch bf16 autocast (old)": autocast_encode(fp32),
        "torch bf16 cast (fallback)": cast.encode_images,
    }
    print("converting / loading OpenVINO IR ...", file=sys.stderr)
    openvino = {"openvino fp32": ove.load(spec, "fp32")}
    if cpu_has_fast_bf16():
        openvino["openvino bf16 hint"] = ove.load(spec, "bf16")
    openvino["openvino int8"] = ove.load(spec, "int8")
    configs.update({name: enc.encode_images for name, enc in openvino.items()})

    photos = make_photos(Path(args.data) / "photos_1600x1200", max(args.ingest, 64), (1600, 1200))
    pipeline = PixelPipeline.from_preprocess(fp32.preprocess, max(fp32.image_size))
    decoded = [decode_task(str(p), pipeline, None).pixels for p in photos[:64]]
    base = pipeline.to_batch(decoded)
    pixels = torch.cat([base] * (args.images // len(base) + 1))[: args.images]

    speeds: dict[tuple[str, int], list[float]] = {}
    faithful: dict[str, tuple[float, float, float]] = {}
    for round_ in range(0 if args.ingest_only else args.rounds):
        print(f"speed round {round_ + 1} ...", file=sys.stderr)
        for name, encode in configs.items():
            speeds.setdefault((name, 64), []).append(rate(encode, pixels, 64))
    if not args.ingest_only:
        print("batch 16, fidelity ...", file=sys.stderr)
        for name, encode in configs.items():
            speeds[(name, 16)] = [rate(encode, pixels[:64], 16)]
        images = real_images()
        real = torch.stack([fp32.preprocess(image) for image in images])
        reference = fp32.encode_images(real)
        faithful = {name: fidelity(reference, encode(real)) for name, encode in configs.items()}

    print("ingest (default backend), ceilings measured before and after it ...", file=sys.stderr)
    default = load_encoder(MODEL, "none")
    old_path = configs["torch bf16 autocast (old)"]
    before = [rate(fp32.encode_images, pixels, 64), rate(old_path, pixels, 64)]
    own_before = rate(default.encode_images, pixels, 64)
    home = Path(tempfile.mkdtemp(prefix="clipdb-bench-home-"))
    home.chmod(0o711)
    database = fresh_database(ensure_server(home), "bench_encoder")
    try:
        with contextlib.redirect_stdout(sys.stderr):
            summary = ingest(
                [str(p) for p in photos[: args.ingest]],
                database=database,
                encoder=default,
                batch_size=64,
            )
    finally:
        stop_server(home)  # a benchmark leaves no server behind
        shutil.rmtree(home, ignore_errors=True)
    own = statistics.mean([own_before, rate(default.encode_images, pixels, 64)])
    after = [rate(fp32.encode_images, pixels, 64), rate(old_path, pixels, 64)]
    # Today's ceiling: best of fp32 and bf16 autocast, each the mean of before and after.
    torch_ceiling = max(
        statistics.mean([before[0], after[0]]), statistics.mean([before[1], after[1]])
    )

    print(f"\n{MODEL} random weights, 2 threads, {platform.processor() or platform.machine()}")
    print(
        f"cpu_has_fast_bf16: {cpu_has_fast_bf16()}, default backend: {default.backend} "
        f"{default.precision}, rounds {args.rounds} x {args.images} images\n"
    )
    print("| runtime | img/s bs64 | vs old autocast | img/s bs16 | min cos | mean cos | top-5 |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name in configs if faithful else ():
        old = statistics.mean(speeds[("torch bf16 autocast (old)", 64)])
        bs64 = statistics.mean(speeds[(name, 64)])
        low, mean, top5 = faithful[name]
        print(
            f"| {name} | {bs64:.1f} | {bs64 / old:.2f} | {speeds[(name, 16)][0]:.1f} "
            f"| {low:.5f} | {mean:.5f} | {top5:.3f} |"
        )
    print(
        f"\ningest {summary.images_per_s:.1f} img/s ({args.ingest} x 1600x1200 JPEGs, "
        f"{default.backend}); torch ceiling {torch_ceiling:.1f} -> "
        f"{summary.images_per_s / torch_ceiling:.2f}x (target >= 1.5; fp32 {before[0]:.1f}/"
        f"{after[0]:.1f}, autocast {before[1]:.1f}/{after[1]:.1f} before/after); own ceiling "
        f"{own:.1f} ({own_before:.1f} before) "
        f"-> {summary.images_per_s / own:.2f} (target >= 0.9)"
    )


if __name__ == "__main__":
    main()
