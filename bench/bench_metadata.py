"""Metadata cost at ingest (decode_task with vs without the EXIF read, same run) and the
metadata-only backfill rate over N already indexed rows (small JPEGs with EXIF by Pillow).

    python bench/bench_metadata.py --images 10000 --home /tmp/clipdb-bench-meta
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from benchutil import fresh_database
from PIL import ExifTags, Image, TiffImagePlugin

from clipdb import decode, exif, files, pixels
from clipdb.db.registry import register_model
from clipdb.db.store import ImageRecord, upsert_images
from clipdb.ingest import default_workers
from clipdb.ingest.backfill import backfill_metadata
from clipdb.ingest.plan import make_plan


def make_photos(folder: Path, count: int) -> list[Path]:
    rng = np.random.default_rng(0)
    paths = []
    for index in range(count):
        pixels = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
        data = Image.Exif()
        data[exif.MAKE], data[exif.MODEL] = "Canon", f"Canon EOS {index % 7}"
        sub = data.get_ifd(ExifTags.IFD.Exif)
        sub[exif.DATETIME_ORIGINAL] = f"20{10 + index % 15}:0{1 + index % 9}:11 10:20:30"
        sub[exif.OFFSET_TIME_ORIGINAL] = "+01:00"
        gps = data.get_ifd(ExifTags.IFD.GPSInfo)
        r = TiffImagePlugin.IFDRational
        gps[exif.GPS_LAT], gps[exif.GPS_LAT_REF] = (r(48), r(index % 60), r(0)), "N"
        gps[exif.GPS_LON], gps[exif.GPS_LON_REF] = (r(2), r(17), r(0)), "E"
        path = folder / f"p{index:05d}.jpg"
        Image.fromarray(pixels).save(path, "JPEG", exif=data, quality=85)
        paths.append(path)
    return paths


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--home", default="/tmp/clipdb-bench-meta")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        paths = make_photos(folder, args.images)
        pipeline = pixels.PixelPipeline(input_size=224)
        sample = paths[:1000]
        with_meta, without = [], []
        for path in sample:  # interleaved, same run
            data = path.read_bytes()
            t0 = time.perf_counter()
            decode.decode_task(str(path), pipeline, None)
            t1 = time.perf_counter()
            exif.read_metadata(data, decode.PILLOW_FORMATS)
            t2 = time.perf_counter()
            with_meta.append(t1 - t0)
            without.append((t1 - t0) - (t2 - t1))
        meta_cost = [w - o for w, o in zip(with_meta, without, strict=True)]
        print(
            f"decode_task per image: {statistics.median(with_meta) * 1e3:.3f} ms median "
            f"(of which EXIF read {statistics.median(meta_cost) * 1e3:.3f} ms; "
            f"{100 * statistics.median(meta_cost) / statistics.median(with_meta):.1f}%)"
        )
        database = fresh_database(args.home, "clipdb_bench_meta")
        rng = np.random.default_rng(1)
        with database.connect() as conn:
            model = register_model(conn, "bench-meta", "none", 32)
            records = []
            for path in paths:
                vector = rng.normal(size=32).astype(np.float32)
                stat = path.stat()
                records.append(
                    ImageRecord(str(path), hashlib.sha256(path.read_bytes()).digest(),
                                stat.st_size, stat.st_mtime_ns, 64, 48, vector)
                )  # fmt: skip
            upsert_images(conn, model, records)
            conn.commit()
        stats = {f.path: f for f in files.scan([str(folder)], ()).files}
        with database.connect(autocommit=True) as conn:
            plan = make_plan(conn, model, stats, lambda path, reason: None)  # its one query
            started = time.perf_counter()
            workers = default_workers()  # as ingest runs it: the decode pool
            done = backfill_metadata(conn, plan.lacks_metadata, stats, workers=workers)
            elapsed = time.perf_counter() - started
            dated = conn.execute(
                "SELECT count(*) FROM clipdb.images WHERE taken_at IS NOT NULL"
            ).fetchone()
        print(
            f"backfill: {done} rows in {elapsed:.2f} s = {done / elapsed:.0f} rows/s; dated {dated}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
