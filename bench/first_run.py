"""First-run benchmark (not a test): an ingest whose OpenVINO IR must first be converted vs
the same ingest with the IR already cached, end to end (model load included), same run.

    python bench/first_run.py --count 600 --model ViT-B-32

Modes of the first run: ``off`` (convert, then ingest), ``wait`` (convert in a thread while
ingest decodes), ``torch`` (also encode with the torch model until the IR is ready). Each
first run gets an empty OpenVINO cache folder; the warm run reuses the last one.

Each run is a process of its own, timed from after its imports (open_clip's among them, which
a real first run pays and a warm one does not), so one-time costs of a process (OpenVINO's CPU
plugin, oneDNN's generated kernels, the decode pool's fork server) fall on both runs alike:
in one shared process they fell on the first run only. ``--cli`` times what a user runs
instead: the ``python -m clipdb.ingest`` command, the whole process, imports included.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
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


def timed_run(server, paths: list[Path], model: str, mode: str, cache: Path) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    """Images per second of one ingest into a fresh database, the model load included, in a
    process of its own (``--child``): until ingest returns, and until the conversion threads
    end too (a first run converts the text tower once the images are encoded)."""
    import subprocess

    database = fresh_database(server, "bench_first_run")
    command = [sys.executable, __file__, "--child", mode, "--cache", str(cache)]
    command += ["--url", database.url, "--model", model, *map(str, paths)]
    done = subprocess.run(command, check=True, stdout=subprocess.PIPE, text=True)
    stored, ended = done.stdout.split()[-2:]
    return float(stored), float(ended)


def child_run(url: str, paths: list[str], model: str, mode: str, cache: Path) -> str:
    """:func:`timed_run`'s measurement, in the child process."""
    import open_clip  # noqa: F401 - before the clock: only a real first run pays it

    from clipdb.db import Database
    from clipdb.encoders import load_encoder
    from clipdb.ingest.options import FIRST_RUN_CONVERSION

    os.environ["CLIPDB_OPENVINO_CACHE"] = str(cache)
    database = Database(url=url)
    start = time.perf_counter()
    if mode == FIRST_RUN_CONVERSION:  # ingest's own path: it loads the model when it needs it
        summary = ingest(
            paths, database=database, model=model, pretrained="none", progress=False, device="cpu"
        )  # the backend: auto, OpenVINO on this CPU
        stored = ended = time.perf_counter() - start  # it ends with its conversion threads
    else:
        encoder = load_encoder(model, "none", device="cpu", backend="openvino", background=mode)
        summary = ingest(paths, database=database, encoder=encoder, progress=False)
        stored = time.perf_counter() - start
        getattr(encoder, "join", lambda: None)()  # as the process does at its end
        ended = time.perf_counter() - start
    assert summary.new == len(paths), summary
    return f"{len(paths) / stored} {len(paths) / ended}"


def cli_run(server, paths: list[Path], model: str, cache: Path) -> float:  # type: ignore[no-untyped-def]
    """Images per second of ``python -m clipdb.ingest PATH...`` into a fresh database, the
    whole process timed."""
    import subprocess

    database = fresh_database(server, "bench_first_run")
    env = dict(os.environ, CLIPDB_OPENVINO_CACHE=str(cache), PYTHONPATH=str(ROOT))
    command = [sys.executable, "-m", "clipdb.ingest", *map(str, paths), "--model", model]
    command += ["--pretrained", "none", "--database-url", database.url, "--json"]
    start = time.perf_counter()
    subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL)
    return len(paths) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=600)
    parser.add_argument("--size", default="1600x1200")
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--modes", default="off,wait,torch")
    parser.add_argument("--data", default=os.path.join(tempfile.gettempdir(), "clipdb-bench"))
    parser.add_argument("--cli", action="store_true", help="time the ingest command instead")
    parser.add_argument(
        "--repeat", type=int, default=1, help="(first, warm) pairs per mode; the median ratio"
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)  # one timed run: its mode
    parser.add_argument("--cache", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("paths", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(child_run(args.url, args.paths, args.model, args.child, Path(args.cache)))
        return
    width, height = (int(v) for v in args.size.split("x"))
    paths = make_photos(Path(args.data) / f"first_run_{args.size}", args.count, (width, height))
    home = Path(tempfile.mkdtemp(prefix="clipdb-bench-home-"))
    home.chmod(0o711)
    server = ensure_server(home)
    caches = Path(tempfile.mkdtemp(prefix="clipdb-bench-ov-"))
    try:
        rows: list[str] = []
        ratios: dict[str, list[float]] = {}
        for attempt in range(args.repeat):
            for mode in ["cli"] if args.cli else args.modes.split(","):
                cache = caches / f"{mode}-{attempt}"  # empty: this pair's first run converts
                if args.cli:
                    first = ended = cli_run(server, paths, args.model, cache)
                    warm = cli_run(server, paths, args.model, cache)
                else:
                    first, ended = timed_run(server, paths, args.model, mode, cache)
                    warm, _ = timed_run(server, paths, args.model, mode, cache)  # IR cached
                ratios.setdefault(mode, []).append(ended / warm)
                load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
                rows.append(
                    f"| {mode} | {first:.1f} | {ended:.1f} | {warm:.1f} | {first / warm:.2f} | "
                    f"{ended / warm:.2f} | {load} |"
                )
                print(rows[-1], flush=True)
        print(f"\n{args.count} photos {args.size}, {args.model} random init")
        print(
            "| first-run mode | first img/s | to its end | warm img/s | first / warm "
            "| to its end / warm | load |"
        )
        print("\n".join(rows))
        for mode, found in ratios.items():
            listed = ", ".join(f"{ratio:.2f}" for ratio in found)
            print(f"{mode}: median to its end / warm {statistics.median(found):.2f} ({listed})")
    finally:
        stop_server(home)
        shutil.rmtree(home, ignore_errors=True)
        shutil.rmtree(caches, ignore_errors=True)


if __name__ == "__main__":
    main()
