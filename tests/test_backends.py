"""Encoder backends: OpenVINO matches torch, its IR cache is reused and verified, fallbacks."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from helpers import TINY_MODEL, make_images, run_module

from clipdb.encoders import Encoder, load_encoder
from clipdb.encoders import openvino as ove
from clipdb.encoders import openvino_cache as ovc
from clipdb.errors import UsageError

TEXTS = ["a red car", "", "ünïcode ☃ " * 40, "A photo of a DOG."]


def _cos_min(a: np.ndarray, b: np.ndarray) -> float:
    return float((a * b).sum(axis=1).min())


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("CLIPDB_OPENVINO_CACHE", str(tmp_path / "ov"))
    return tmp_path / "ov"


def test_openvino_matches_torch_fp32(tiny_encoder, tmp_path):
    encoder = load_encoder(TINY_MODEL, "none", device="cpu", precision="fp32", backend="openvino")
    assert isinstance(encoder, ove.OpenVinoEncoder)
    # Both backends offer every member ingest, search, embed and serve use.
    assert isinstance(encoder, Encoder) and isinstance(tiny_encoder, Encoder)
    assert encoder.image_size == tiny_encoder.image_size and encoder.dim == tiny_encoder.dim
    assert encoder.text_trim  # a CLIP text tower: its IR takes trimmed token rows
    from PIL import Image

    images = [Image.open(path) for path in make_images(tmp_path, 4)]
    assert _cos_min(encoder.encode_pil(images), tiny_encoder.encode_pil(images)) >= 0.999
    assert _cos_min(encoder.encode_texts(TEXTS), tiny_encoder.encode_texts(TEXTS)) >= 0.999
    alone = np.concatenate([encoder.encode_texts([text]) for text in TEXTS])  # other lengths
    assert _cos_min(alone, encoder.encode_texts(TEXTS)) >= 0.9999


def test_direct_conversion_gives_openvinos_converter_graph(tiny_encoder):
    # clipdb calls the PyTorch frontend itself (no trace re-check, no empty pre-processing
    # pass, no telemetry); the public converter is the reference and the fallback.
    import openvino as ov
    import torch

    from clipdb.encoders.openvino_convert import convert_module, tower_modules

    model = tiny_encoder.model.float().eval()
    towers = tower_modules(model, tiny_encoder.image_size, 77, trim=True)
    core = ov.Core()
    inputs = {
        "image": np.random.default_rng(0).standard_normal((3, 3, *tiny_encoder.image_size)),
        "text": np.asarray(tiny_encoder.tokenizer(["a red car", "x", "two dogs"]))[:, :9],
    }
    for tower, (module, example, shape) in towers.items():
        with torch.inference_mode():
            direct = convert_module(module, example, shape)
            reference = ov.convert_model(module, example_input=example, input=[shape])
        assert len(direct.get_ops()) == len(reference.get_ops())
        assert direct.input(0).get_partial_shape() == reference.input(0).get_partial_shape()
        data = inputs[tower].astype(np.float32 if tower == "image" else np.int64)
        got = core.compile_model(direct, "CPU")(data)[0]
        want = core.compile_model(reference, "CPU")(data)[0]
        assert np.allclose(got, want, atol=1e-5)


@pytest.mark.slow
def test_ir_cache_reused_and_corrupt_bin_rebuilt(cache_dir, capsys):
    before = ovc.conversions
    capsys.readouterr()
    load_encoder(TINY_MODEL, "none", device="cpu", precision="fp32", backend="openvino")
    assert ovc.conversions == before + 1
    converting = f"converting {TINY_MODEL} to OpenVINO fp32 (once per model and precision; "
    assert capsys.readouterr().err.count(converting) == 1  # not minutes of silence
    load_encoder(TINY_MODEL, "none", device="cpu", precision="fp32", backend="openvino")
    assert ovc.conversions == before + 1  # read from the cache, not converted again
    assert converting not in capsys.readouterr().err
    (folder,) = [p for p in cache_dir.iterdir() if not p.name.startswith(".")]
    capsys.readouterr()
    with (folder / "image.bin").open("r+b") as handle:
        handle.seek(64)
        handle.write(b"\xff" * 16)
    encoder = load_encoder(TINY_MODEL, "none", device="cpu", precision="fp32", backend="openvino")
    assert ovc.conversions == before + 2
    assert capsys.readouterr().err.count("corrupt or stale") == 1
    assert ovc.read_manifest(folder) is not None
    assert encoder.encode_texts(["x"]).shape == (1, encoder.dim)


def test_openvino_with_cuda_is_a_usage_error():
    with pytest.raises(UsageError):
        load_encoder(TINY_MODEL, "none", device="cuda", backend="openvino")
    result = run_module("clipdb.embed", "--text", "x", "--backend", "openvino", "--device", "cuda",
                        "--model", TINY_MODEL, "--pretrained", "none")  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr


def test_backend_choices_in_cli():
    result = run_module("clipdb.search", "--text", "x", "--backend", "onnx")
    assert result.returncode == 2
    assert "auto" in result.stderr and "openvino" in result.stderr and "torch" in result.stderr


@pytest.mark.slow
def test_missing_openvino_falls_back_to_torch(tmp_path):
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "openvino.py").write_text("raise ImportError('openvino hidden by the test')\n")
    code = (
        "from clipdb.encoders import Encoder, load_encoder;"
        f"e = load_encoder({TINY_MODEL!r}, 'none', device='cpu', backend='openvino');"
        "print(type(e).__name__, e.encode_texts(['a']).shape)"
    )
    env = {**os.environ, "PYTHONPATH": str(shim)}  # a real process where openvino fails
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "ClipEncoder" in result.stdout
    lines = [line for line in result.stderr.splitlines() if "OpenVINO unavailable" in line]
    assert len(lines) == 1 and "openvino hidden by the test" in lines[0]


def test_int8_needs_openvino():
    with pytest.raises(UsageError):
        load_encoder(TINY_MODEL, "none", device="cpu", precision="int8", backend="torch")


def test_tokenizer_matches_open_clip():
    import open_clip

    from clipdb.encoders.tokenizer import ClipTokenizer

    tokenizer = ClipTokenizer()
    texts = [*TEXTS, "naïve café 東京 😀", "&amp;lt;b&gt; HTML", "word " * 100, " \t\n", "It's 4.5"]
    texts += [f"photo number {i} of a {'big ' * (i % 7)}dog" for i in range(50)]
    assert (tokenizer(texts) == open_clip.tokenize(texts).numpy()).all()


def test_openvino_text_query_does_not_import_torch(database, tiny_encoder, tmp_path):
    from helpers import index_images

    load_encoder(TINY_MODEL, "none", device="cpu", backend="openvino")  # the cache is built
    index_images(database, tiny_encoder, make_images(tmp_path, 3))
    code = (
        "import sys; from clipdb.search.__main__ import main;"
        f"rc = main(['--text', 'a red car', '--model', {TINY_MODEL!r}, '--pretrained', 'none']);"
        "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH'); sys.exit(rc)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=dict(os.environ),
        timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "NO-TORCH" in result.stdout


def test_ir_cache_touched_file_is_rehashed_not_rebuilt(cache_dir):
    load_encoder(TINY_MODEL, "none", device="cpu", precision="fp32", backend="openvino")
    before = ovc.conversions
    (folder,) = [p for p in cache_dir.iterdir() if not p.name.startswith(".")]
    os.utime(folder / "text.bin", ns=(1, 1))  # same bytes, other mtime: a copied cache
    assert ovc.read_manifest(folder) is not None  # hashed again, and the new stat recorded
    assert ovc.read_manifest(folder)["stats"]["text.bin"][1] == 1
    load_encoder(TINY_MODEL, "none", device="cpu", precision="fp32", backend="openvino")
    assert ovc.conversions == before


def test_towers_compile_on_first_use_and_batches_use_streams(tmp_path):
    encoder = load_encoder(TINY_MODEL, "none", device="cpu", precision="fp32", backend="openvino")
    assert isinstance(encoder, ove.OpenVinoEncoder)
    fresh = ove.compile_cached(encoder.folder, encoder.spec, "fp32")
    assert fresh is not None and fresh._compiled == {}
    fresh.encode_texts(["a red car"])
    assert set(fresh._compiled) == {"text"}  # a text query never compiles the image tower
    size = fresh.image_size
    pixels = np.random.default_rng(5).normal(size=(40, 3, *size)).astype(np.float32)
    one_request = np.concatenate([fresh.encode_images(pixels[i : i + 1]) for i in range(40)])
    assert set(fresh._compiled) == {"text", "image"}
    streamed = fresh.encode_images(pixels)  # >= THROUGHPUT_BATCH: parallel requests
    assert "image-throughput" in fresh._compiled
    assert streamed.shape == (40, fresh.dim)
    assert float((streamed * one_request).sum(axis=1).min()) >= 0.99999  # same rows, in order


def test_openvino_manifest_records_the_models_own_pixel_steps(tiny_encoder):
    encoder = load_encoder(TINY_MODEL, "none", device="cpu", precision="fp32", backend="openvino")
    assert encoder.pixel_pipeline.pil_steps == tiny_encoder.pixel_pipeline.pil_steps
    assert encoder.pixel_pipeline.mean == tiny_encoder.pixel_pipeline.mean


@pytest.mark.slow
def test_concurrent_first_loads_convert_once(tmp_path):
    """Two processes loading an uncached model at once: one converts, the other waits on the
    folder's lock and loads the result; both encode."""
    code = (
        "import sys; from clipdb.encoders import openvino_cache as ovc;"
        "from clipdb.encoders import load_encoder;"
        f"e = load_encoder({TINY_MODEL!r}, 'none', device='cpu', precision='fp32',"
        " backend='openvino');"
        "v = e.encode_texts(['a red car']); print('CONVERSIONS', ovc.conversions, v.shape[1])"
    )
    env = {**os.environ, "CLIPDB_OPENVINO_CACHE": str(tmp_path / "shared-ov")}
    runs = [
        subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=env)
        for _ in range(2)
    ]  # fmt: skip
    outputs = [run.communicate(timeout=300) for run in runs]
    assert all(run.returncode == 0 for run in runs), [err for _, err in outputs]
    counts = [int(out.split("CONVERSIONS")[1].split()[0]) for out, _ in outputs]
    assert sorted(counts) == [0, 1]
    assert not any("corrupt" in err for _, err in outputs)
