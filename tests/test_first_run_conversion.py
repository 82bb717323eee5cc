"""A first ingest converts the OpenVINO IR in the background while it scans and decodes."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from helpers import TINY_MODEL, make_images

from clipdb.encoders import load_encoder
from clipdb.encoders import openvino as ove
from clipdb.encoders import openvino_cache as ovc
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


def first_ingest(database, folder, *, batch_size: int):
    """An ingest of ``folder`` that loads its own model: OpenVINO, the IR still to convert."""
    return ingest(
        [folder],
        database=database,
        model=TINY_MODEL,
        pretrained="none",
        device="cpu",
        backend="openvino",
        batch_size=batch_size,
    )


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
    assert first_ingest(database, tmp_path / "photos", batch_size=4).new == len(paths)
    assert order[:2] == ["decoded", "convert"]  # before: the conversion came first (or hung)
    assert converted.wait(GUARD_S)  # ingest may end first: torch encoded meanwhile


@pytest.mark.slow
def test_first_ingest_decodes_every_batch_while_the_model_converts(
    database, cache_dir, tmp_path, monkeypatch
):
    # Six batches, where the read-ahead is two: the conversion is held until every image is
    # decoded, which happens only if ingest goes on decoding instead of waiting in an encode.
    decoded, order = threading.Event(), []
    gate_conversion(monkeypatch, decoded, order)
    real_decoded = pipeline.decoded_images

    def counted(paths, *args, **kwargs):
        for count, item in enumerate(real_decoded(paths, *args, **kwargs), 1):
            if count == len(paths):
                order.append("all decoded")
                decoded.set()
            yield item

    monkeypatch.setattr(pipeline, "decoded_images", counted)
    paths = make_images(tmp_path / "photos", 12)
    assert first_ingest(database, tmp_path / "photos", batch_size=2).new == len(paths)
    assert order == ["all decoded", "convert"]  # before: the first encode waited (the guard)


def only_towers(cache_dir) -> frozenset[str]:
    (folder,) = [p for p in cache_dir.iterdir() if not p.name.startswith(".")]
    manifest = ovc.read_manifest(folder)
    assert manifest is not None
    return ovc.manifest_towers(manifest)


def test_first_run_converts_the_image_tower_and_the_first_text_adds_the_text_tower(
    cache_dir, tiny_encoder, tmp_path, capsys
):
    before = ovc.conversions
    encoder = load_encoder(
        TINY_MODEL, "none", device="cpu", precision="fp32", backend="openvino", background="wait"
    )
    from PIL import Image

    pictures = [Image.open(p).convert("RGB") for p in make_images(tmp_path / "p", 3)]
    images = encoder.encode_pil(pictures)
    encoder.join()
    # What ingest needs, and no more: the text tower was 1.4 of ViT-B-32's 2.9 s.
    assert only_towers(cache_dir) == {"image"} and ovc.conversions == before + 1
    capsys.readouterr()
    texts = encoder.encode_texts(["a red car", "a dog"])
    assert only_towers(cache_dir) == {"image", "text"} and ovc.conversions == before + 2
    assert capsys.readouterr().err.count(f"converting the text tower of {TINY_MODEL}") == 1
    expected = tiny_encoder.encode_texts(["a red car", "a dog"])
    assert float((texts * expected).sum(axis=1).min()) > 0.999
    again = load_encoder(TINY_MODEL, "none", device="cpu", precision="fp32", backend="openvino")
    assert isinstance(again, ove.OpenVinoEncoder) and again.towers == {"image", "text"}
    assert np.allclose(again.encode_texts(["a red car", "a dog"]), texts, atol=1e-5)
    assert np.allclose(again.encode_pil(pictures), images, atol=1e-5)
    assert ovc.conversions == before + 2  # both read from the folder


@pytest.mark.slow
def test_first_ingest_ends_by_adding_the_text_tower_from_the_model_it_loaded(
    database, cache_dir, tmp_path, monkeypatch
):
    loads, real_load = [], ove.load_torch

    def counted_load(*args, **kwargs):
        loads.append(args)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(ove, "load_torch", counted_load)
    paths = make_images(tmp_path / "photos", 4)
    encoder = load_encoder(
        TINY_MODEL, "none", device="cpu", precision="fp32", backend="openvino", background="wait"
    )
    summary = ingest([tmp_path / "photos"], database=database, encoder=encoder)
    assert summary.new == len(paths)
    encoder.join()  # what the process does at its end
    assert only_towers(cache_dir) == {"image", "text"}
    assert loads == []  # the torch model of the first conversion, not a second load
    conversions = ovc.conversions
    assert encoder.encode_texts(["a red car"]).shape == (1, encoder.dim)
    assert ovc.conversions == conversions


def test_a_cache_folder_that_cannot_be_locked_gets_its_text_tower_in_memory(
    cache_dir, tiny_encoder, monkeypatch
):
    encoder = load_encoder(
        TINY_MODEL, "none", device="cpu", precision="fp32", backend="openvino", background="wait"
    )
    encoder.join()
    assert only_towers(cache_dir) == {"image"}

    def no_lock(folder):
        raise PermissionError(13, "Permission denied", str(folder))

    monkeypatch.setattr(ovc, "converting", no_lock)  # e.g. another user's cache folder
    cached = load_encoder(TINY_MODEL, "none", device="cpu", precision="fp32", backend="openvino")
    assert isinstance(cached, ove.OpenVinoEncoder) and cached.towers == {"image"}
    texts = cached.encode_texts(["a red car"])
    assert float((texts * tiny_encoder.encode_texts(["a red car"])).sum()) > 0.999
    assert only_towers(cache_dir) == {"image"}  # the folder is left as it was
    assert not list(cache_dir.glob("*/text.*"))


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
