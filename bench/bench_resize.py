"""Decode + resize step of the ingest pipeline (not a test): speed and embedding fidelity.

    python bench/bench_resize.py [--count 64]

Each variant turns JPEG bytes into the 224x224 pixels the model takes: JPEG draft decoding at
the scale ``decode.open_image`` picks for a short side of at least 224 x margin, then a resize
+ centre crop. Speed: generated 1600x1200 JPEGs, one core, bytes to pixels. Fidelity: random
ViT-B-32 (torch fp32) embeddings of real photos (bench/sample_photos.py) in three forms, each
variant vs the previous default (margin 2, PIL bicubic): as shipped, upscaled to 1600x1200, and
1600x1200 mosaics of the photos at their native resolution (fine detail a camera would have,
which an upscale lacks). The issue's bar is min cosine >= 0.9999.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_ingest import make_photos  # noqa: E402
from sample_photos import sample_photos  # noqa: E402

from clipdb import decode, pixels  # noqa: E402


def methods(size: int) -> dict[str, Callable[[Any], np.ndarray]]:
    import torch
    from PIL import Image
    from torchvision.transforms.v2 import functional as F

    def scaled(image: Any) -> tuple[int, int]:
        w, h = image.size
        return (size, round(size * h / w)) if w <= h else (round(size * w / h), size)

    def crop(array: np.ndarray) -> np.ndarray:
        h, w = array.shape[:2]
        top, left = round((h - size) / 2), round((w - size) / 2)
        return array[top : top + size, left : left + size]

    def pil(gap: float | None) -> Callable[[Any], np.ndarray]:
        def run(image: Any) -> np.ndarray:
            resized = image.resize(scaled(image), Image.Resampling.BICUBIC, reducing_gap=gap)
            return crop(np.asarray(resized))

        return run

    def tv(image: Any) -> np.ndarray:
        tensor = torch.from_numpy(np.asarray(image)).permute(2, 0, 1)
        w, h = scaled(image)
        out = F.resize(tensor, [h, w], F.InterpolationMode.BICUBIC, antialias=True)
        return crop(out.permute(1, 2, 0).numpy())

    return {"PIL bicubic": pil(None), "torchvision uint8 bicubic antialias": tv}


def pixels_of(data: bytes, margin: int, resize: Callable[[Any], np.ndarray]) -> np.ndarray:
    return resize(decode.open_image(data, draft_size=224 * margin)[0])


def mosaics(photos: list[Path], count: int) -> list[bytes]:
    """1600x1200 JPEGs tiled from the photos at native resolution (no resampling)."""
    import io

    from PIL import Image

    tiles = []
    for path in photos:
        with Image.open(path) as opened:
            tiles.append(opened.convert("RGB"))
    out = []
    for index in range(count):
        canvas = Image.new("RGB", (1600, 1200))
        y = 0
        order = tiles[index % len(tiles) :] + tiles[: index % len(tiles)]
        for tile in order:
            x = 0
            while x < 1600 and y < 1200:
                canvas.paste(tile, (x, y))
                x += tile.width
            y += tile.height
            if y >= 1200:
                break
        buffer = io.BytesIO()
        canvas.save(buffer, "JPEG", quality=92)
        out.append(buffer.getvalue())
    return out


def main() -> None:
    import io

    import torch
    from PIL import Image

    from clipdb.encoders import load_encoder

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=64)
    parser.add_argument("--data", default=os.path.join(tempfile.gettempdir(), "clipdb-bench"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    encoder = load_encoder("ViT-B-32", "none", device="cpu", precision="fp32", backend="torch")
    pipeline = pixels.PixelPipeline.from_preprocess(encoder.preprocess, 224)
    resizers = methods(224)
    variants = {
        f"margin {m}, {name}": (m, resizers[name])
        for m in (2, 1)
        for name in ("PIL bicubic", "torchvision uint8 bicubic antialias")
    }
    photos = make_photos(Path(args.data) / "photos_1600x1200", args.count, (1600, 1200))
    datas = [p.read_bytes() for p in photos[: args.count]]
    speeds: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(2):  # interleaved
        for name, (margin, resize) in variants.items():
            start = time.perf_counter()
            for data in datas:
                pixels_of(data, margin, resize)
            speeds[name].append(len(datas) / (time.perf_counter() - start))
    samples = sample_photos()
    forms: dict[str, list[bytes]] = {"as shipped": [p.read_bytes() for p in samples]}
    upscaled = []
    for path in samples:
        with Image.open(path) as opened:
            big = opened.convert("RGB").resize((1600, 1200), Image.Resampling.LANCZOS)
        buffer = io.BytesIO()
        big.save(buffer, "JPEG", quality=92)
        upscaled.append(buffer.getvalue())
    forms["1600x1200 upscales"] = upscaled
    forms["1600x1200 native mosaics"] = mosaics(samples, len(samples))
    baseline = next(iter(variants))
    print(
        f"JPEG bytes -> 224x224 pixels, {len(datas)} generated 1600x1200 JPEGs, 1 thread; "
        f"fidelity vs '{baseline}' on {len(samples)} real photos in each form\n"
    )
    header = " | ".join(f"min / mean cos, {form}" for form in forms)
    print(f"| variant | img/s | vs {baseline} | {header} |")
    print("|---|---:|---:|" + "---:|" * len(forms))
    reference = {
        form: encoder.encode_images(
            pipeline.to_batch([pixels_of(d, *variants[baseline]) for d in datas_])
        )
        for form, datas_ in forms.items()
    }
    for name, (margin, resize) in variants.items():
        cells = []
        for form, datas_ in forms.items():
            vectors = encoder.encode_images(
                pipeline.to_batch([pixels_of(d, margin, resize) for d in datas_])
            )
            cosines = (reference[form] * vectors).sum(axis=1)
            cells.append(f"{cosines.min():.6f} / {cosines.mean():.6f}")
        speed = max(speeds[name])
        print(
            f"| {name} | {speed:.0f} | {speed / max(speeds[baseline]):.2f} | "
            + " | ".join(cells)
            + " |"
        )


if __name__ == "__main__":
    main()
