"""Where ingest time goes, stage by stage, on the same files (bench/gpu.sh runs it per model).

Each stage alone, as img/s (rows/s for the write):
  prepare      the device path's job for a JPEG: read, sha256, header, EXIF (in threads),
               and the same in worker processes (bytes pickled back), with what each costs
               the encoding process in CPU ms per file
  cpu_decode   the CPU path's worker job: read, hash, draft decode, resize (a process pool)
  dev_decode   DeviceDecoder.batch on prepared items: decode, turn, resize, normalise, pHash
  encode       the image tower on a ready batch, device to host included
  write        the ingest writer with precomputed vectors into a model without its HNSW index
               (the bulk path a first load takes), then the one index build, timed apart

And end to end: ``ingest()`` with the encoder already loaded (model load left out), into a
fresh database, once per decode path (device, cpu), with GPU utilisation sampled by nvidia-smi.

    python bench/gpu_stages.py generate DIR --count 10000
    python bench/gpu_stages.py measure DIR --model ViT-B-32 --home H [--device cuda] [--batch 256]
    python bench/gpu_stages.py fidelity [--model ViT-B-32] [--device cuda] [--scale 3]

``--device cpu`` runs the same stages here (a smoke test of the script, not a GPU figure).
``generate`` makes 400 distinct 1600x1200 photo-like JPEGs in parallel and the rest as copies
with a JPEG comment of their own (another sha256, the same pixels), so 10,000 files take
seconds instead of minutes.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from bench_ingest import photo
from bench_write import records, write_batches
from benchutil import fresh_database

from clipdb import decode, device_decode
from clipdb.db.model_index import build_model_index, drop_model_index
from clipdb.db.registry import register_model
from clipdb.encoders import Encoder, load_encoder
from clipdb.ingest import default_workers, ingest

DISTINCT = 400  # photos generated; the rest are copies with a comment segment of their own


def pooled(
    task: Any, paths: list[str], workers: int, threads: bool = False
) -> tuple[list[Any], float, float]:
    """``task`` over ``paths`` in a decode pool (or, ``threads``, the thread pool the device
    path prepares JPEGs in): results, img/s (the pool's start left out) and this process's
    CPU ms per file, all its threads: what the pool costs the encoding process."""
    pool = (
        ThreadPoolExecutor(workers)
        if threads
        else ProcessPoolExecutor(
            workers, mp_context=decode.worker_context(), initializer=decode.worker_init
        )
    )
    with pool:
        list(pool.map(task, paths[: 2 * workers]))  # every worker started and warm
        started, cpu = time.perf_counter(), time.process_time()
        done = list(pool.map(task, paths, chunksize=8))
        rate = len(paths) / (time.perf_counter() - started)
    return done, rate, (time.process_time() - cpu) / len(paths) * 1000


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def stages(paths: list[str], encoder: Encoder, batch: int, home: str, rows: int) -> dict[str, Any]:
    pipeline = encoder.pixel_pipeline
    device = str(encoder.device)
    workers = default_workers()
    result: dict[str, Any] = {"images": len(paths), "workers": workers}
    prepared, result["prepare"], result["prepare_main_cpu_ms"] = pooled(
        partial(device_decode.prepare_task, pipeline=pipeline, max_pixels=None),
        paths,
        workers,
        threads=True,
    )
    _, result["prepare_in_workers"], result["prepare_in_workers_main_cpu_ms"] = pooled(
        partial(device_decode.prepare_task, pipeline=pipeline, max_pixels=None), paths, workers
    )
    decoded, result["cpu_decode"], _ = pooled(
        partial(decode.decode_task, pipeline=pipeline, max_pixels=None), paths, workers
    )
    decoder = device_decode.DeviceDecoder(pipeline, device, None)
    chunks = [prepared[i : i + batch] for i in range(0, len(prepared), batch)]
    decoder.batch(chunks[0], lambda path, reason: None)  # warm-up: nvJPEG handles, kernels
    synchronize(device)
    started = time.perf_counter()
    for chunk in chunks:
        decoder.batch(chunk, lambda path, reason: None).finished()  # pHashes included
    synchronize(device)
    result["dev_decode"] = len(prepared) / (time.perf_counter() - started)
    ready = decoder.batch(chunks[0], lambda path, reason: None).pixels  # one full batch
    encoder.encode_images(ready)  # warm-up
    rounds, started = 0, time.perf_counter()
    while rounds < 3 or (time.perf_counter() - started < 5 and rounds < 200):
        encoder.encode_images(ready)  # returns host arrays: synchronised
        rounds += 1
    result["encode"] = rounds * len(ready) / (time.perf_counter() - started)
    database = fresh_database(home, "bench_gpu_stages")
    with database.connect() as conn:
        row_model = register_model(conn, "bench-gpu", "none", int(encoder.dim))
        conn.commit()
    with database.connect(autocommit=True) as conn:
        drop_model_index(conn, row_model)
    started = time.perf_counter()
    write_batches(database, row_model, records(rows, int(encoder.dim), 0, 1))
    result["write"] = rows / (time.perf_counter() - started)
    started = time.perf_counter()
    with database.connect(autocommit=True) as conn:
        build_model_index(conn, row_model)
    result["index_build_s"] = time.perf_counter() - started
    sample = min(len(decoded), batch)
    cpu = encoder.encode_images(pipeline.to_array([d.pixels for d in decoded[:sample]]))
    dev = encoder.encode_images(decoder.batch(prepared[:sample], lambda p, r: None).pixels)
    result["cpu_vs_device_min_cos"] = float(np.min(np.sum(cpu * dev, axis=1)))
    return result


def _one_photo(path: str, seed: int) -> None:
    photo(np.random.default_rng(seed), 1600, 1200).save(path, "JPEG", quality=90)


def generate(folder: Path, count: int, distinct: int = DISTINCT) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    bases = [str(folder / f"photo_{i:05d}.jpg") for i in range(min(count, distinct))]
    todo = [(path, i) for i, path in enumerate(bases) if not os.path.exists(path)]
    if todo:
        with ProcessPoolExecutor(os.cpu_count()) as pool:
            list(pool.map(_one_photo, *zip(*todo, strict=True)))
    for index in range(len(bases), count):
        data = Path(bases[index % len(bases)]).read_bytes()
        note = f"copy {index}".encode()
        comment = b"\xff\xfe" + (len(note) + 2).to_bytes(2, "big") + note  # a COM segment
        (folder / f"photo_{index:05d}.jpg").write_bytes(data[:2] + comment + data[2:])


def end_to_end(paths: list[str], encoder: Encoder, mode: str, batch: int, home: str) -> dict:
    """One ingest pass over ``paths`` into a fresh database: img/s and GPU utilisation."""
    folder = Path(paths[0]).parent
    database = fresh_database(home, f"bench_gpu_{mode}")
    sampler = None
    if shutil.which("nvidia-smi") and str(encoder.device).startswith("cuda"):
        query = ["nvidia-smi", "--query-gpu=utilization.gpu,memory.used", "--format=csv,noheader"]
        sampler = subprocess.Popen(
            [*query, "-lms", "200"], stdout=subprocess.PIPE, text=True, env={**os.environ}
        )
    started = time.perf_counter()
    summary = ingest(
        [str(folder)], database=database, encoder=encoder, decode=mode, batch_size=batch,
        progress=False,
    )  # fmt: skip
    seconds = time.perf_counter() - started
    found: dict[str, Any] = {"images_per_s": summary.new / seconds, "new": summary.new}
    if sampler is not None:
        sampler.terminate()
        lines = (sampler.communicate()[0] or "").splitlines()
        utilisation = [float(line.split(",")[0].split()[0]) for line in lines if line.strip()]
        memory = [float(line.split(",")[1].split()[0]) for line in lines if "," in line]
        found["gpu_util_mean"] = float(np.mean(utilisation)) if utilisation else None
        found["gpu_util_max"] = max(utilisation, default=None)
        found["gpu_mem_max_mib"] = max(memory, default=None)
    return found


def fidelity(model: str, device: str, precision: str, scale: int) -> dict[str, Any]:
    """Device path vs the exact preprocessing (full decode, no draft) and vs the CPU path, on
    real photos re-saved as JPEG at ``scale`` times their size (camera-sized, so the CPU
    path's draft decoding applies): min/mean cosine and the most pHash bits that differ."""
    import tempfile

    from PIL import Image
    from sample_photos import sample_photos

    from clipdb.phash import distance

    encoder = load_encoder(model, "none", device=device, precision=precision, backend="torch")
    pipeline = encoder.pixel_pipeline
    folder = Path(tempfile.mkdtemp(prefix="clipdb-fidelity-"))
    paths = []
    for index, source in enumerate(sample_photos()):
        image = Image.open(source).convert("RGB")
        image = image.resize((image.width * scale, image.height * scale), Image.Resampling.LANCZOS)
        paths.append(str(folder / f"photo_{index:02d}.jpg"))
        image.save(paths[-1], "JPEG", quality=92)
    exact = [decode.decode_task(path, pipeline, None, draft=False) for path in paths]
    drafted = [decode.decode_task(path, pipeline, None) for path in paths]
    prepared = [device_decode.prepare_task(path, pipeline, None) for path in paths]
    decoder = device_decode.DeviceDecoder(pipeline, device, None)
    ready = decoder.batch(prepared, lambda path, reason: None)
    kept, pixels = ready.finished(), ready.pixels
    shutil.rmtree(folder)
    vectors = {
        "exact": encoder.encode_images(pipeline.to_array([d.pixels for d in exact])),
        "cpu": encoder.encode_images(pipeline.to_array([d.pixels for d in drafted])),
        "device": encoder.encode_images(pixels),
    }

    def cosines(a: str, b: str) -> dict[str, float]:
        values = np.sum(vectors[a] * vectors[b], axis=1)
        return {"min": round(float(values.min()), 6), "mean": round(float(values.mean()), 6)}

    return {
        "photos": len(paths),
        "device_vs_exact": cosines("device", "exact"),
        "cpu_vs_exact": cosines("cpu", "exact"),
        "device_vs_cpu": cosines("device", "cpu"),
        "phash_bits_device_vs_cpu_max": max(
            distance(a.phash or 0, b.phash or 0) for a, b in zip(kept, drafted, strict=True)
        ),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    make = commands.add_parser("generate")
    make.add_argument("folder")
    make.add_argument("--count", type=int, default=10000)
    make.add_argument("--distinct", type=int, default=DISTINCT)
    measure = commands.add_parser("measure")
    measure.add_argument("folder")
    measure.add_argument("--model", default="ViT-B-32")
    measure.add_argument("--device", default="cuda")
    measure.add_argument("--precision", default="fp16")
    measure.add_argument("--batch", type=int, default=256)
    measure.add_argument("--home", required=True, help="CLIPDB_HOME of the embedded server")
    measure.add_argument("--limit", type=int, default=0, help="use only the first N files")
    measure.add_argument("--rows", type=int, default=20000, help="rows for the write stage")
    check = commands.add_parser("fidelity")
    check.add_argument("--model", default="ViT-B-32")
    check.add_argument("--device", default="cuda")
    check.add_argument("--precision", default="fp32")
    check.add_argument("--scale", type=int, default=3)
    args = parser.parse_args(argv)
    if args.command == "fidelity":
        found = fidelity(args.model, args.device, args.precision, args.scale)
        print(f"{args.model} fidelity on {args.device}: {json.dumps(found)}")
        return 0
    if args.command == "generate":
        generate(Path(args.folder), args.count, args.distinct)
        return 0
    paths = sorted(glob.glob(str(Path(args.folder) / "*.jpg")))[: args.limit or None]
    encoder = load_encoder(
        args.model, "none", device=args.device, precision=args.precision, backend="torch"
    )
    found = {"model": args.model, **stages(paths, encoder, args.batch, args.home, args.rows)}
    parts = [
        f"prepare {found['prepare']:.0f}/s in threads "
        f"({found['prepare_main_cpu_ms']:.2f} ms CPU here per file), "
        f"{found['prepare_in_workers']:.0f}/s in workers "
        f"({found['prepare_in_workers_main_cpu_ms']:.2f} ms CPU here per file)",
        f"cpu_decode {found['cpu_decode']:.0f}/s ({found['workers']} workers)",
        f"dev_decode {found['dev_decode']:.0f}/s",
        f"encode {found['encode']:.0f}/s",
        f"write {found['write']:.0f} rows/s (+ index build {found['index_build_s']:.1f} s)",
        f"cpu vs device min cos {found['cpu_vs_device_min_cos']:.5f}",
    ]
    print(f"{found['model']} stages: " + ", ".join(parts))
    for mode in ("device", "cpu"):
        found[f"ingest_{mode}"] = e2e = end_to_end(paths, encoder, mode, args.batch, args.home)
        print(f"{args.model} ingest --decode {mode}: {json.dumps(e2e)}")
    print(json.dumps(found))
    return 0


if __name__ == "__main__":
    sys.exit(main())
