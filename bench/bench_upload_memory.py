"""The web server's memory under a burst of big query uploads.

    python bench/bench_upload_memory.py                        # ViT-B-32 (random init)
    python bench/bench_upload_memory.py --model clipdb-tiny --model-configs tests/model_configs

Starts ``python -m clipdb.serve`` as a user would, on a fresh database in its own embedded
server under --home (never the user's CLIPDB_HOME) with a few rows of the model, warms it up
with one small upload, then sends --uploads concurrent POST /api/search of one
--megapixels PNG (a PNG cannot be draft-decoded: the worst case). The server's resident memory
is sampled every 5 ms from /proc (Linux only). Prints, as Markdown: RSS before, the peak
growth during the burst, RSS right after it, and the status codes.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchutil import free_port, fresh_database, wait_until_serving  # noqa: E402

from clipdb.db import Database  # noqa: E402
from clipdb.db.registry import register_model  # noqa: E402
from clipdb.db.store import ImageRecord, upsert_images  # noqa: E402


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def big_png(megapixels: float) -> bytes:
    """A square PNG of about ``megapixels`` with shapes on it (compressible, so it stays under
    the upload limit, yet decodes to the full 3 bytes a pixel)."""
    side = int((megapixels * 1e6) ** 0.5)
    rng = np.random.default_rng(0)
    image = Image.new("RGB", (side, side), (70, 110, 150))
    draw = ImageDraw.Draw(image)
    for _ in range(40):
        x0, y0 = (int(v) for v in rng.integers(0, side - side // 8, 2))
        size = int(rng.integers(side // 20, side // 4))
        fill = tuple(int(c) for c in rng.integers(0, 256, 3))
        (draw.rectangle if rng.random() < 0.5 else draw.ellipse)(
            (x0, y0, x0 + size, y0 + size), fill=fill
        )
    output = io.BytesIO()
    image.save(output, "PNG", compress_level=6)
    return output.getvalue()


def model_dim(model: str) -> int:
    import open_clip

    from clipdb.encoders import register_model_configs

    register_model_configs()
    config = open_clip.get_model_config(model)
    if config is None:
        raise SystemExit(f"unknown model {model!r} (tiny ones need --model-configs)")
    return int(config["embed_dim"])


def fill(database: Database, model: str, dim: int, rows: int) -> None:
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((rows, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    records = [
        ImageRecord(f"/bench/pic_{i:05d}.jpg", i.to_bytes(32, "big"), 1, 1, 1, 1, vector)
        for i, vector in enumerate(vectors)
    ]
    with database.connect() as conn:
        upsert_images(conn, register_model(conn, model, "none", dim), records)
        conn.commit()


def rss(pid: int, field: str = "VmRSS") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise SystemExit(f"no {field} for process {pid}")


class Sampler:
    """The highest VmRSS of a process, sampled every 5 ms while in the with block."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak, self._stop = pid, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss(self.pid))
            time.sleep(0.005)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def measure(command: list[str], env: dict[str, str], url: str, args: Any) -> dict[str, Any]:
    upload = big_png(args.megapixels)
    log(f"upload: {len(upload) / 1e6:.1f} MB PNG of {args.megapixels:g} MP")
    process = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)
    try:
        wait_until_serving(process, url)
        small = io.BytesIO()
        Image.new("RGB", (320, 240), (200, 30, 30)).save(small, "PNG")
        files = {"image": ("warm.png", small.getvalue(), "image/png")}
        httpx.post(f"{url}/api/search", files=files, timeout=120).raise_for_status()
        before = rss(process.pid)

        def post(_: int) -> int:
            files = {"image": ("big.png", upload, "image/png")}
            return httpx.post(f"{url}/api/search", files=files, timeout=300).status_code

        started = time.perf_counter()
        with Sampler(process.pid) as sampler, ThreadPoolExecutor(args.uploads) as pool:
            codes = list(pool.map(post, range(args.uploads)))
        seconds = time.perf_counter() - started
        after = rss(process.pid)
        time.sleep(2)
        settled = rss(process.pid)
    finally:
        process.terminate()
        process.wait(timeout=30)
    return {
        "uploads": args.uploads,
        "megapixels": args.megapixels,
        "upload_mb": len(upload) / 1e6,
        "burst_s": seconds,
        "rss_before_mb": before / 1e6,
        "peak_growth_mb": (max(sampler.peak, after) - before) / 1e6,
        "rss_after_mb": after / 1e6,
        "rss_after_2s_mb": settled / 1e6,
        "status": dict(Counter(codes)),
    }


def markdown(result: dict[str, Any], model: str) -> str:
    status = ", ".join(f"{count}x {code}" for code, count in sorted(result["status"].items()))
    return "\n".join(
        [
            f"# Server memory: {result['uploads']} concurrent {result['megapixels']:g} MP PNG "
            f"uploads ({model})",
            "",
            "| RSS before | peak growth | RSS right after | RSS 2 s later | burst | answers |",
            "|---|---|---|---|---|---|",
            f"| {result['rss_before_mb']:.0f} MB | {result['peak_growth_mb']:.0f} MB "
            f"| {result['rss_after_mb']:.0f} MB | {result['rss_after_2s_mb']:.0f} MB "
            f"| {result['burst_s']:.1f} s | {status} |",
            "",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--model", default="ViT-B-32", help="architecture (random weights)")
    parser.add_argument("--model-configs", help="a dir of open_clip JSON configs (tiny models)")
    parser.add_argument("--uploads", type=int, default=16, help="concurrent uploads")
    parser.add_argument("--megapixels", type=float, default=36, help="size of each upload")
    parser.add_argument("--rows", type=int, default=50, help="indexed rows")
    parser.add_argument("--home", default="/tmp/clipdb-bench-home", help="embedded server dir")
    parser.add_argument("--json", dest="json_out", help="also write the raw numbers here")
    args = parser.parse_args(argv)

    env = dict(os.environ)
    if args.model_configs:
        env["CLIPDB_MODEL_CONFIGS"] = str(Path(args.model_configs).resolve())
        os.environ["CLIPDB_MODEL_CONFIGS"] = env["CLIPDB_MODEL_CONFIGS"]
    database = fresh_database(Path(args.home), "bench_upload_memory")
    fill(database, args.model, model_dim(args.model), args.rows)
    port = free_port()
    serve = f"--port {port} --model {args.model} --pretrained none --device cpu".split()
    command = [sys.executable, "-m", "clipdb.serve", *serve, "--database-url", database.url]
    result = measure(command, env, f"http://127.0.0.1:{port}", args)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(result, indent=2))
    print(markdown(result, args.model))
    return 0


if __name__ == "__main__":
    sys.exit(main())
