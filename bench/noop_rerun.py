"""A no-op re-run of a folder with bad files: wall time and peak memory, as a user runs it.

The tree is 24 photos plus 5 files that cannot be used (truncated, not an image, empty,
unreadable, a FIFO). Each run is ``python -m clipdb.ingest TREE`` as a whole process; peak
memory is the child's max RSS (getrusage). Baseline in the same run: the same command on the
24 photos alone. Usage::

    python bench/noop_rerun.py [--model ViT-B-32] [--runs 3]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from helpers import make_images  # noqa: E402

# A fresh parent per run, so RUSAGE_CHILDREN's max RSS is this run's alone.
MEASURE = """
import resource, subprocess, sys, time
started = time.perf_counter()
code = subprocess.run([sys.executable, "-m", "clipdb.ingest", *sys.argv[1:]],
                      capture_output=True).returncode
print(code, time.perf_counter() - started,
      resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)
"""


def run(args: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(seconds, peak MB) of one whole ``python -m clipdb.ingest`` process."""
    out = subprocess.run(
        [sys.executable, "-c", MEASURE, *args], env=env, capture_output=True, text=True
    ).stdout.split()
    if not out or out[0] != "0":
        raise SystemExit(f"ingest failed: {out}")
    return float(out[1]), float(out[2])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="clipdb-tiny")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="clipdb-noop-"))
    base.chmod(0o711)
    good, messy = base / "good", base / "messy"
    make_images(good, 24, size=(640, 480))
    make_images(messy, 24, size=(640, 480))
    (messy / "truncated.jpg").write_bytes((messy / "img_0000.jpg").read_bytes()[:300])
    (messy / "text.jpg").write_text("not a picture")
    (messy / "empty.png").write_bytes(b"")
    (messy / "random.png").write_bytes(os.urandom(4096))
    os.mkfifo(messy / "fifo.jpg")
    env = {
        **os.environ,
        "CLIPDB_HOME": str(base / "home"),
        "CLIPDB_MODEL_CONFIGS": str(Path(__file__).resolve().parent.parent / "tests/model_configs"),
    }
    flags = ["--model", args.model, "--pretrained", "none", "--workers", "0"]
    for tree in (good, messy):
        run([str(tree), *flags], env)  # first run: indexes, remembers the bad files
    rows = []
    for tree in (good, messy):
        times = [run([str(tree), *flags], env) for _ in range(args.runs)]
        best = min(t for t, _ in times)
        rows.append((tree.name, best, max(m for _, m in times)))
    print(f"| tree | best of {args.runs} re-runs (s) | peak RSS (MB) |")
    print("|---|---:|---:|")
    for name, seconds, peak in rows:
        label = "24 photos" if name == "good" else "24 photos + 5 bad files"
        print(f"| {label} | {seconds:.2f} | {peak:.0f} |")
    subprocess.run(
        [sys.executable, "-m", "clipdb.db", "stop"], env=env, capture_output=True, check=False
    )


if __name__ == "__main__":
    main()
