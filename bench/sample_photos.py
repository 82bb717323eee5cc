"""Real photographs for fidelity and duplicate benchmarks, from wheels on PyPI.

Random CLIP weights make synthetic images useless for judging an encoder's numerics or a
perceptual hash: what matters is real image statistics (edges, textures, skies, faces). The
scikit-image and scikit-learn wheels ship a handful of real photos under permissive licences;
this module fetches the two wheels with ``pip download`` (PyPI is reachable from CI and from
these machines), extracts only the photos, and caches them under ``~/.cache/clipdb-bench``.

Usage: ``photos = sample_photos()`` -> sorted list of paths; ``python bench/sample_photos.py``
prints them.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

WHEELS = ("scikit-image==0.26.0", "scikit-learn==1.9.1")
# Photographs only: test patterns, silhouettes, scans of text and micrographs are left out.
PHOTOS = {
    "skimage/data/astronaut.png",
    "skimage/data/brick.png",
    "skimage/data/camera.png",
    "skimage/data/chelsea.png",
    "skimage/data/coffee.png",
    "skimage/data/coins.png",
    "skimage/data/color.png",
    "skimage/data/grass.png",
    "skimage/data/gravel.png",
    "skimage/data/hubble_deep_field.jpg",
    "skimage/data/ihc.png",
    "skimage/data/moon.png",
    "skimage/data/motorcycle_left.png",
    "skimage/data/motorcycle_right.png",
    "skimage/data/retina.jpg",
    "skimage/data/rocket.jpg",
    "sklearn/datasets/images/china.jpg",
    "sklearn/datasets/images/flower.jpg",
}


def cache_dir() -> Path:
    base = os.environ.get("CLIPDB_BENCH_CACHE") or Path.home() / ".cache" / "clipdb-bench"
    return Path(base) / "photos"


def sample_photos() -> list[Path]:
    """The photos, fetched once; raises RuntimeError with pip's last line if it cannot."""
    target = cache_dir()
    wanted = sorted(target / Path(name).name for name in PHOTOS)
    if all(path.is_file() for path in wanted):
        return wanted
    target.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", tmp, *WHEELS]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["pip download failed"])[-1]
            raise RuntimeError(f"cannot fetch sample photos: {last}")
        for wheel in Path(tmp).glob("*.whl"):
            with zipfile.ZipFile(wheel) as archive:
                for name in archive.namelist():
                    if name in PHOTOS:
                        (target / Path(name).name).write_bytes(archive.read(name))
    missing = [path.name for path in wanted if not path.is_file()]
    if missing:
        raise RuntimeError(f"sample photos missing from the wheels: {', '.join(missing)}")
    return wanted


if __name__ == "__main__":
    for photo in sample_photos():
        print(photo)
