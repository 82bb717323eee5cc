"""What ``--within D`` keeps, on labelled "same picture" sets of real photos.

Each real photo of bench/sample_photos.py plus its copies (bench/bench_dupes.py ``variants``:
re-encodes, resizes, PNG<->JPEG, small crops and rotations, colour shifts) is one labelled set.
All are decoded as ingest decodes them, embedded with a seeded random-init open_clip model
(no CLIP weights can be downloaded here), stored in a fresh database on the embedded server,
and each original photo is used as an image query (its stored embedding, as "more like this"
does) through clipdb.db.queries.search_vector with Filters(within=D) and k = every row, so
``within`` is the only cutoff. For each D: how many of the query's own set are kept and how
many unrelated photos.

Random weights: this checks the machinery only. The similarities of a random-init tower say
nothing about what D means for real CLIP weights.

    python bench/bench_within.py --model ViT-B-32
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
from bench_dupes import variants  # noqa: E402
from benchutil import fresh_database  # noqa: E402
from PIL import Image  # noqa: E402
from sample_photos import sample_photos  # noqa: E402

from clipdb.config import DEFAULT_EF_SEARCH  # noqa: E402
from clipdb.db.queries import search_vector  # noqa: E402
from clipdb.db.registry import register_model  # noqa: E402
from clipdb.db.store import ImageRecord, upsert_images  # noqa: E402
from clipdb.decode import open_image  # noqa: E402
from clipdb.filters import Filters  # noqa: E402

D_VALUES = (0.01, 0.02, 0.05, 0.1, 0.15, 0.2)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--home", default="/tmp/clipdb-bench-within")
    args = parser.parse_args()

    import torch

    from clipdb.encoders import load_encoder

    torch.manual_seed(0)
    encoder = load_encoder(args.model, "none", device="cpu", precision="fp32")
    names: list[str] = []  # "photo/kind"
    images: list[Image.Image] = []
    for path in sample_photos():
        with Image.open(path) as opened:
            original = opened.convert("RGB")
        copies = {"original": path.read_bytes(), **variants(original)}
        for kind, data in copies.items():
            names.append(f"{path.stem}/{kind}")
            images.append(open_image(data)[0])
    started = time.perf_counter()
    vectors = np.concatenate(
        [encoder.encode_pil(images[s : s + 32]) for s in range(0, len(images), 32)]
    )
    print(f"{len(images)} images embedded in {time.perf_counter() - started:.1f} s ({args.model})")

    database = fresh_database(args.home, "clipdb_bench_within")
    with database.connect() as conn:
        model = register_model(conn, encoder.architecture, encoder.pretrained, encoder.dim)
        records = [
            ImageRecord(
                f"/within/{name}.jpg", hashlib.sha256(name.encode()).digest(), 1, 1, 1, 1, v
            )
            for name, v in zip(names, vectors, strict=True)
        ]
        upsert_images(conn, model, records)
        conn.commit()
    groups = {name.split("/")[0] for name in names}
    set_size = len(names) // len(groups)
    queries = [i for i, name in enumerate(names) if name.endswith("/original")]
    print(f"{len(groups)} sets of {set_size} (the photo + {set_size - 1} copies); "
          f"{len(queries)} image queries, k = {len(names)}")  # fmt: skip
    sims = vectors @ vectors.T
    own = np.array([[n.split("/")[0] == names[q].split("/")[0] for n in names] for q in queries])
    print(
        f"cosine to own copies: median {np.median(sims[queries][own]):.4f}; "
        f"to unrelated photos: median {np.median(sims[queries][~own]):.4f}, "
        f"max {sims[queries][~own].max():.4f}"
    )
    print("| D | own set kept (of the photo + copies) | unrelated kept (of "
          f"{len(names) - set_size}) | queries keeping every copy |")  # fmt: skip
    print("|---|---|---|---|")
    with database.connect(autocommit=True) as conn:
        for d in D_VALUES:
            kept_own, kept_other, complete = [], [], 0
            for q in queries:
                hits = search_vector(
                    conn, model, vectors[q], len(names), ef_search=DEFAULT_EF_SEARCH,
                    filters=Filters(within=d),
                )  # fmt: skip
                stem = names[q].split("/")[0]
                mine = sum(h.image_path.split("/")[2] == stem for h in hits)
                kept_own.append(mine)
                kept_other.append(len(hits) - mine)
                complete += mine == set_size
            print(
                f"| {d} | {np.mean(kept_own):.1f} (min {min(kept_own)}) "
                f"| {np.mean(kept_other):.1f} (max {max(kept_other)}) "
                f"| {complete}/{len(queries)} |"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
