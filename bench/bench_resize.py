"""Resize step of the decode pipeline (not a test): speed and embedding fidelity per method.

    python bench/bench_resize.py [--count 64]

Speed: the ingest pipeline's resize + centre crop to 224 on JPEG-draft-decoded 1600x1200
generated JPEGs, one core. Fidelity: random ViT-B-32 (torch fp32) embeddings of the real photos
from bench/sample_photos.py, each also saved upscaled to 1600x1200 as a camera-sized JPEG, with
every method vs today's pixels (PIL bicubic); the issue's bar is min cosine >= 0.9999.
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

from clipdb import decode  # noqa: E402


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

    return {
        "PIL bicubic (today)": pil(None),
        "PIL bicubic reducing_gap=1.0": pil(1.0),
        "PIL bicubic reducing_gap=1.3": pil(1.3),
        "torchvision uint8 bicubic antialias": tv,
    }


def drafted(path: Path) -> Any:
    # As ingest decodes: JPEG draft to the smallest scale whose short side is >= 224 x margin.
    return decode.open_image(str(path), draft_size=224 * decode.DRAFT_MARGIN)[0]


def main() -> None:
    import torch
    from PIL import Image

    from clipdb.encoder import load_encoder

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=64)
    parser.add_argument("--data", default=os.path.join(tempfile.gettempdir(), "clipdb-bench"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    encoder = load_encoder("ViT-B-32", "none", device="cpu", precision="fp32", backend="torch")
    pipeline = decode.PixelPipeline.from_preprocess(encoder.preprocess, 224)
    runs = methods(224)
    photos = make_photos(Path(args.data) / "photos_1600x1200", args.count, (1600, 1200))
    images = [drafted(p) for p in photos[: args.count]]
    speeds: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(2):  # interleaved
        for name, run in runs.items():
            start = time.perf_counter()
            for image in images:
                run(image)
            speeds[name].append(len(images) / (time.perf_counter() - start))
    work = Path(tempfile.mkdtemp(prefix="clipdb-resize-"))
    real: list[Any] = []
    for path in sample_photos():
        with Image.open(path) as opened:
            image = opened.convert("RGB")
        big = work / f"{path.stem}_big.jpg"
        image.resize((1600, 1200), Image.Resampling.LANCZOS).save(big, quality=92)
        real += [drafted(path), drafted(big)]
    today = runs["PIL bicubic (today)"]
    reference = encoder.encode_images(pipeline.to_batch([today(i) for i in real]))
    base = speeds["PIL bicubic (today)"]
    print(
        f"resize+crop to 224, {len(images)} drafted 1600x1200 JPEGs, 1 thread; "
        f"fidelity on {len(real)} real photos (as shipped + 1600x1200 upscales)\n"
    )
    print("| method | img/s | vs today | min cos vs today | mean cos |")
    print("|---|---:|---:|---:|---:|")
    for name, run in runs.items():
        vectors = encoder.encode_images(pipeline.to_batch([run(i) for i in real]))
        cosines = (reference * vectors).sum(axis=1)
        speed = max(speeds[name])
        print(
            f"| {name} | {speed:.0f} | {speed / max(base):.2f} | {cosines.min():.6f} "
            f"| {cosines.mean():.6f} |"
        )


if __name__ == "__main__":
    main()
