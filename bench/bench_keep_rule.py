"""The keep rule of clipdb dupes on real camera photos: how often is the original kept?

Input: a folder of real camera JPEGs (EXIF date and camera; the figures in BENCHMARKS.md use
the camera photos of github.com/ianare/exif-samples). Photos without an EXIF date and camera,
smaller than 240 px or within 8 pHash bits of an earlier one (another exposure of one scene)
are left out, so each group has exactly one original.

Each original gets the copies people make, named ``c<n>.<ext>`` (shorter than any camera name,
so the path rule cannot favour the original):

- a PNG conversion (no EXIF: what converters and most exports do),
- then, with the EXIF kept (as ImageMagick, exiftool-aware editors and phone apps do):
  a re-encode at quality 75, a 50% resize, a 20 px border, +15% brightness, a watermark, a
  grayscale copy, and a rotation by EXIF (pixels turned 90 degrees, Orientation 6 added, so it
  displays as the original).

The library is ingested (tiny random-weight model: only sha256 and pHash matter here) into a
fresh database on the embedded server, and ``find_duplicates`` (exact, near) groups it. Each
group holding an original counts; "kept" when the kept file is the original. Two scenarios:
``written after`` (copies made after the originals, as copies are) and ``times preserved``
(every copy's mtime set to its original's, as ``cp -p`` or ``exiftool -P`` do). The rule on
main before this change (most pixels, most bytes, most EXIF fields, shortest path) is applied
to the same groups as a baseline.

    python bench/bench_keep_rule.py --photos DIR [--home /tmp/clipdb-bench-keep]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("CLIPDB_MODEL_CONFIGS", str(ROOT / "tests" / "model_configs"))

from PIL import Image, ImageDraw, ImageEnhance, ImageOps  # noqa: E402

from clipdb import exif, phash  # noqa: E402
from clipdb.dupes import Member  # noqa: E402

ORIENTATION = 0x0112
KINDS = ("png", "re-encode", "resize", "border", "brightness", "watermark", "grayscale",
         "exif rotation")  # fmt: skip


def originals(folder: Path) -> list[Path]:
    """Distinct camera photos of ``folder``."""
    chosen: list[tuple[Path, int]] = []
    for path in sorted(folder.glob("*.jp*g")):
        try:
            with Image.open(path) as image:
                meta = exif.read_metadata(image)
                if meta.taken_at is None or meta.camera is None or min(image.size) < 240:
                    continue
                image.draft("RGB", (256, 256))
                value = phash.phash(ImageOps.exif_transpose(image).convert("RGB"))
        except OSError:
            continue
        if all(phash.distance(value, other) > 8 for _, other in chosen):
            chosen.append((path, value))
    return [p for p, _ in chosen]


def make_copies(original: Path, folder: Path, first: int) -> list[Path]:
    """The copies of one original (see the module), in ``folder``."""
    with Image.open(original) as source:
        raw_exif = source.info.get("exif", b"")
        image = ImageOps.exif_transpose(source).convert("RGB")
    kept = Image.Exif()
    kept.load(raw_exif)
    kept[ORIENTATION] = 1
    exif_bytes = kept.tobytes()
    w, h = image.size
    out: list[Path] = []

    def save(img: Image.Image, ext: str, **options: object) -> None:
        path = folder / f"c{first + len(out)}.{ext}"
        img.save(path, **options)  # type: ignore[arg-type]
        out.append(path)

    save(image, "png")
    save(image, "jpg", quality=75, exif=exif_bytes)
    save(image.resize((w // 2, h // 2), Image.Resampling.LANCZOS), "jpg", quality=90,
         exif=exif_bytes)  # fmt: skip
    save(ImageOps.expand(image, 20, fill=(255, 255, 255)), "jpg", quality=90, exif=exif_bytes)
    save(ImageEnhance.Brightness(image).enhance(1.15), "jpg", quality=90, exif=exif_bytes)
    marked = image.copy()
    draw = ImageDraw.Draw(marked)
    draw.rectangle((w - w // 5, h - h // 12, w - 4, h - 4), fill=(255, 255, 255))
    draw.text((w - w // 5 + 4, h - h // 12 + 2), "(c) me", fill=(0, 0, 0))
    save(marked, "jpg", quality=90, exif=exif_bytes)
    save(ImageOps.grayscale(image), "jpg", quality=90, exif=exif_bytes)
    turned = Image.Exif()
    turned.load(exif_bytes)
    turned[ORIENTATION] = 6  # "rotate 90 clockwise to display": the stored pixels turned back
    save(image.transpose(Image.Transpose.ROTATE_90), "jpg", quality=90, exif=turned.tobytes())
    return out


def old_rule(m: Member) -> tuple[int, int, int, int, str]:
    """The keep rule before: most pixels, most bytes, most EXIF fields, shortest path."""
    return (-m.width * m.height, -m.size, -len(m.metadata), len(m.image_path), m.image_path)


def measure(home: Path, photos: list[Path], preserve_times: bool) -> None:
    from benchutil import fresh_database

    from clipdb.db.registry import models_with_rows
    from clipdb.dupes import find_duplicates
    from clipdb.encoders import load_encoder
    from clipdb.ingest import ingest

    encoder = load_encoder("clipdb-tiny", "none", device="cpu", precision="fp32", backend="torch")
    with tempfile.TemporaryDirectory(prefix="clipdb-keep-") as tmp:
        library = Path(tmp) / "library"
        library.mkdir()
        names: set[str] = set()
        count = 0
        for photo in photos:
            original = library / photo.name
            original.write_bytes(photo.read_bytes())
            names.add(str(original))
        for photo in photos:  # copies are made after every original exists
            original = library / photo.name
            copies = make_copies(original, library, count)
            count += len(copies)
            if preserve_times:
                stamp = original.stat()
                for copy in copies:
                    os.utime(copy, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))
        database = fresh_database(home, "bench_keep")
        ingest([str(library)], database=database, encoder=encoder, workers=0, progress=False)
        with database.connect() as conn:
            model = models_with_rows(conn)[0]
            result = find_duplicates(conn, model, tiers=("exact", "near"))
    groups = [g for g in result.groups if any(m.image_path in names for m in g.images)]
    kept = sum(1 for g in groups if g.kept.image_path in names)
    before = sum(1 for g in groups if min(g.images, key=old_rule).image_path in names)
    members = sum(len(g.images) - 1 for g in groups)
    scenario = "times preserved" if preserve_times else "written after"
    total = max(len(groups), 1)
    print(
        f"{scenario:>15}: original kept in {kept} of {len(groups)} groups "
        f"({100 * kept / total:.0f}%); the rule before: {before} of {len(groups)} "
        f"({100 * before / total:.0f}%); {members} of {count} copies grouped"
    )
    reasons: dict[str, int] = {}
    for g in groups:
        reasons[g.kept.reason or ""] = reasons.get(g.kept.reason or "", 0) + 1
    print("                 reasons: " + "; ".join(f"{r}: {n}" for r, n in reasons.items()))
    wrong: dict[str, int] = {}
    for g in groups:
        if g.kept.image_path not in names:
            kind = KINDS[int(Path(g.kept.image_path).stem[1:]) % len(KINDS)]
            wrong[f"{kind} ({g.kept.reason})"] = wrong.get(f"{kind} ({g.kept.reason})", 0) + 1
    if wrong:
        print("                 copies kept: " + "; ".join(f"{k}: {n}" for k, n in wrong.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--photos", type=Path, required=True, help="a folder of camera JPEGs")
    parser.add_argument("--home", type=Path, default=Path("/tmp/clipdb-bench-keep"))
    args = parser.parse_args()
    photos = originals(args.photos)
    print(f"{len(photos)} distinct camera photos from {args.photos}")
    for preserve in (False, True):
        measure(args.home, photos, preserve)


if __name__ == "__main__":
    main()
