"""A first ingest converts the OpenVINO IR in the background while it scans and decodes."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from helpers import TINY_MODEL, make_images

from clipdb.encoders import load_encoder
from clipdb.encoders import openvino as ove
from clipdb.encoders.openvino_background import ConvertingEncoder
from clipdb.errors import ClipdbError
from clipdb.ingest import ingest, pipeline

GUARD_S = 120  # only a guard against a hang: the gates open on events, never on time


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("CLIPDB_OPENVINO_CACHE", str(tmp_path / "ov"))
    return tmp_path / "ov"


def gate_conversion(monkeypatch, gate: threading.Event, order: list[str]) -> threading.Event:
    """The real conversion, held until ``gate`` opens; the event returned is set when done."""
    real, converted = ove.convert_towers, threading.Event()

    def gated(*args, **kwargs):
        gate.wait(GUARD_S)
        order.append("convert")
        try:
            return real(*args, **kwargs)
        finally:
            converted.set()

    monkeypatch.setattr(ove, "convert_towers", gated)
    return converted


@pytest.mark.slow
def test_first_ingest_decodes_while_the_model_converts(database, cache_dir, tmp_path, monkeypatch):
    decoded, order = threading.Event(), []
    converted = gate_conversion(monkeypatch, decoded, order)
    real_batch = pipeline.model_batch

    def first_batch(*args, **kwargs):
        order.append("decoded")
        decoded.set()  # a batch was hashed and decoded: only now may the conversion go on
        return real_batch(*args, **kwargs)

    monkeypatch.setattr(pipeline, "model_batch", first_batch)
    paths = make_images(tmp_path / "photos", 6)
    summary = ingest(
        [tmp_path / "photos"],
        database=database,
        model=TINY_MODEL,
        pretrained="none",
        device="cpu",
        backend="openvino",
        batch_size=4,
    )
    assert summary.new == len(paths)
    assert order[:2] == ["decoded", "convert"]  # before: the conversion came first (or hung)
    assert converted.wait(GUARD_S)  # ingest may end first: torch encoded meanwhile


def test_failing_conversion_is_one_warning_and_torch_encodes(cache_dir, monkeypatch, capsys):
    def broken(*args, **kwargs):
        raise RuntimeError("no space left on device\nsecond line of the trace")

    monkeypatch.setattr(ove, "convert_towers", broken)
    encoder = load_encoder(TINY_MODEL, "none", device="cpu", backend="openvino", background="wait")
    assert isinstance(encoder, ConvertingEncoder)
    size = max(encoder.image_size)
    pixels = np.zeros((2, 3, size, size), dtype=np.float32)
    assert encoder.encode_images(pixels).shape == (2, encoder.dim)
    assert encoder.encode_texts(["a red car"]).shape == (1, encoder.dim)
    lines = [line for line in capsys.readouterr().err.splitlines() if "OpenVINO" in line]
    unavailable = [line for line in lines if "unavailable" in line]
    assert unavailable == [
        "warning: OpenVINO unavailable (no space left on device); encoding with torch"
    ]


def test_clipdb_error_from_conversion_is_raised_not_swallowed(cache_dir, monkeypatch):
    def refused(*args, **kwargs):
        raise ClipdbError("OpenVINO could not compile the image tower: out of memory")

    monkeypatch.setattr(ove, "convert_towers", refused)
    encoder = load_encoder(TINY_MODEL, "none", device="cpu", backend="openvino", background="wait")
    with pytest.raises(ClipdbError, match="could not compile the image tower"):
        encoder.encode_texts(["x"])


def test_torch_meanwhile_then_openvino_give_the_same_vectors(cache_dir, monkeypatch, tmp_path):
    gate, order = threading.Event(), []
    gate_conversion(monkeypatch, gate, order)
    encoder = load_encoder(
        TINY_MODEL, "none", device="cpu", precision="fp32", backend="openvino", background="torch"
    )
    assert isinstance(encoder, ConvertingEncoder)
    from PIL import Image

    pictures = [Image.open(p).convert("RGB") for p in make_images(tmp_path / "p", 3)]
    batch = encoder.pixel_pipeline.images_to_array(pictures)
    before = encoder.encode_images(batch)  # the IR is held back: torch encodes
    assert not encoder.ready() and order == []
    gate.set()
    encoder.join()
    after = encoder.encode_images(batch)  # the IR now
    assert encoder.ready() and isinstance(encoder.target(), ove.OpenVinoEncoder)
    assert float((before * after).sum(axis=1).min()) > 0.999
