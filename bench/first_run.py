"""First-run benchmark (not a test): an ingest whose OpenVINO IR must first be converted vs
the same ingest with the IR already cached, end to end (model load included), same run.

    python bench/first_run.py --count 600 --model ViT-B-32

Modes of the first run: ``off`` (convert, then ingest), ``wait`` (convert in a thread while
ingest decodes), ``torch`` (also encode with the torch model until the IR is ready). Each
first run gets an empty OpenVINO cache folder; the warm run reuses the last one.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
os.environ.setdefault("CLIPDB_MODEL_CONFIGS", str(ROOT / "tests" / "model_configs"))

from bench_ingest import make_photos  # noqa: E402
from benchutil import fresh_database  # noqa: E402

from clipdb.db.embedded import ensure_server, stop_server  # noqa: E402
from clipdb.ingest import ingest  # noqa: E402


def timed_run(server, paths: list[Path], model: str, mode: str, cache: Path) -> float:  # type: ignore[no-untyped-def]
    """Images per second of one ingest into a fresh database, the model load included."""
    from clipdb.encoders import load_encoder

    os.environ["CLIPDB_OPENVINO_CACHE"] = str(cache)
    database = fresh_database(server, "bench_first_run")
    start = time.perf_counter()
    encoder = load_encoder(model, "none", device="cpu", backend="openvino", background=mode)
    summary = ingest([str(p) for p in paths], database=database, encoder=encoder, progress=False)
    elapsed = time.perf_counter() - start
    join = getattr(encoder, "join", None)
    if join is not None:
        join()  # the conversion ends before the next run starts
    assert summary.new == len(paths), summary
    return len(paths) / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=600)
    parser.add_argument("--size", default="1600x1200")
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--modes", default="off,wait,torch")
    parser.add_argument("--data", default=os.path.join(tempfile.gettempdir(), "clipdb-bench"))
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.split("x"))
    paths = make_photos(Path(args.data) / f"first_run_{args.size}", args.count, (width, height))
    home = Path(tempfile.mkdtemp(prefix="clipdb-bench-home-"))
    home.chmod(0o711)
    server = ensure_server(home)
    caches = Path(tempfile.mkdtemp(prefix="clipdb-bench-ov-"))
    import open_clip  # noqa: F401 - imported once up front, so no mode pays for the import

    try:
        rows: list[str] = []
        for mode in args.modes.split(","):
            cache = caches / mode
            first = timed_run(server, paths, args.model, mode, cache)
            warm = timed_run(server, paths, args.model, mode, cache)  # the IR now cached
            load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
            rows.append(f"| {mode} | {first:.1f} | {warm:.1f} | {first / warm:.2f} | {load} |")
            print(rows[-1], flush=True)
        print(f"\n{args.count} photos {args.size}, {args.model} random init")
        print("| first-run mode | first img/s | warm img/s | first / warm | load |")
        print("\n".join(rows))
    finally:
        stop_server(home)
        shutil.rmtree(home, ignore_errors=True)
        shutil.rmtree(caches, ignore_errors=True)


if __name__ == "__main__":
    main()
