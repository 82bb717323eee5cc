"""OpenVINO conversion benchmark (not a test): each tower converted by clipdb's direct use of
the PyTorch frontend against ``openvino.convert_model``, and what a first text query costs when
a first ingest converted only the image tower.

    python bench/conversion.py --model ViT-B-32

Conversion times alternate the two converters (twice each, best kept), in one process after a
warm-up conversion, so neither pays the frontend's first load. The text-tower row is a fresh
process: load from an image-only cache, encode one text (torch model load, conversion, save,
hash and compile included).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("CLIPDB_MODEL_CONFIGS", str(ROOT / "tests" / "model_configs"))

TEXT_QUERY = """
import sys, time
from clipdb.encoders import load_encoder
from clipdb.encoders.openvino_cache import manifest_towers, read_manifest
encoder = load_encoder(sys.argv[1], "none", device="cpu", precision="fp32", backend="openvino")
start = time.perf_counter()
encoder.encode_texts(["a red car"])
print(time.perf_counter() - start, sorted(manifest_towers(read_manifest(encoder.folder))))
"""


def converter_times(model_name: str) -> dict[str, dict[str, float]]:
    import openvino as ov
    import torch

    from clipdb.encoders.openvino_convert import convert_module, tower_modules
    from clipdb.encoders.spec import resolve_model_spec
    from clipdb.encoders.torch import load_torch, text_is_causal_argmax

    spec = resolve_model_spec(model_name, "none")  # registers CLIPDB_MODEL_CONFIGS too
    encoder = load_torch(spec, "cpu", "fp32")
    clip_model = encoder.model.float().eval()
    towers = tower_modules(clip_model, encoder.image_size, 77, text_is_causal_argmax(clip_model))
    converters = {
        "direct": lambda m, e, s: convert_module(m, e, s),
        "convert_model": lambda m, e, s: ov.convert_model(m, example_input=e, input=[s]),
    }
    best: dict[str, dict[str, float]] = {name: {} for name in converters}
    with torch.inference_mode():
        convert_module(*towers["image"])  # warm-up: the frontend's first load
        for _ in range(2):
            for name, convert in converters.items():
                for tower, args in towers.items():
                    start = time.perf_counter()
                    convert(*args)
                    elapsed = time.perf_counter() - start
                    best[name][tower] = min(best[name].get(tower, elapsed), elapsed)
    return best


def first_text_query(model_name: str) -> tuple[float, float, str]:
    """(seconds to build the image-only cache, seconds of the first text query, towers)."""
    cache = Path(tempfile.mkdtemp(prefix="clipdb-bench-ov-"))
    env = dict(os.environ, CLIPDB_OPENVINO_CACHE=str(cache), PYTHONPATH=str(ROOT))
    try:
        image_only = (
            "import sys, time; from clipdb.encoders import load_encoder; "
            "e = load_encoder(sys.argv[1], 'none', device='cpu', precision='fp32', "
            "backend='openvino', background='wait'); t = time.perf_counter(); "
            "e.join(); print(time.perf_counter() - t)"
        )
        made, done = (
            subprocess.run(
                [sys.executable, "-c", script, model_name],
                env=env,
                check=True,
                capture_output=True,
                text=True,
            ).stdout
            for script in (image_only, TEXT_QUERY)  # in turn: the second reads the first's
        )
        seconds, towers = done.strip().split(" ", 1)
        return float(made.split()[-1]), float(seconds), towers
    finally:
        shutil.rmtree(cache, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="ViT-B-32")
    args = parser.parse_args()
    times = converter_times(args.model)
    load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    print(f"{args.model} random init, load {load}")
    print("| converter | image tower s | text tower s |")
    for name, towers in times.items():
        print(f"| {name} | {towers['image']:.2f} | {towers['text']:.2f} |")
    waited, first_text, towers = first_text_query(args.model)
    print(f"image-only cache: the background conversion ended {waited:.2f} s after the load")
    print(f"first text query on it: {first_text:.2f} s, then towers {towers} in the folder")


if __name__ == "__main__":
    main()
