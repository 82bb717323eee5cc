"""Every preset family on both backends: SigLIP-style models (their own preprocessing and
Hugging Face tokenizer) from a ``--pretrained DIR`` snapshot folder, offline; the warning for
a query in a script the model cannot read."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers import TINY_MODEL
from PIL import Image
from snapshots import make_snapshot

from clipdb.encoders import load_encoder, resolve_model_spec
from clipdb.encoders.hf_tokenizer import HubTokenizer, clean_text
from clipdb.errors import ClipdbError
from clipdb.models import quick_model_spec
from clipdb.presets import PRESETS, language_warning, unreadable_script

SIGLIP = "clipdb-tiny-siglip"  # tests/model_configs: timm ViT + SigLIP's text tower, 192-d


@pytest.fixture(scope="module")
def snapshot(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_snapshot(tmp_path_factory.mktemp("snapshot") / "tiny-siglip", SIGLIP)


def test_hub_tokenizer_cleans_as_open_clip_and_pads_to_the_context(snapshot: Path) -> None:
    tokenizer = HubTokenizer(snapshot / "tokenizer.json", 16, "canonicalize")
    assert clean_text("A Red_Car!!  &amp; more", "canonicalize") == "a red car more"
    ids = tokenizer(["A Red_Car!!", "a red car", "a red car " * 20])
    assert ids.shape == (3, 16) and ids.dtype == np.int64
    assert (ids[0] == ids[1]).all()  # SigLIP's cleaning: case and punctuation do not count
    eos = tokenizer.tokenizer.token_to_id("</s>")
    assert ids[1][(ids[1] != 0).sum() - 1] == eos and ids[1][-1] == 0  # padded with <pad>
    assert ids[2][-1] == eos  # truncated to the context, the end token kept


def test_snapshot_folder_is_named_by_its_weights_file(snapshot: Path, tmp_path: Path) -> None:
    quick = quick_model_spec(SIGLIP, str(snapshot))
    full = resolve_model_spec(SIGLIP, str(snapshot))
    assert quick == full
    assert full.checkpoint == (snapshot / "open_clip_model.safetensors").resolve()
    assert full.pretrained.startswith("file:sha256:")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ClipdbError, match="holds no open_clip weights"):
        resolve_model_spec(SIGLIP, str(tmp_path / "empty"))


@pytest.mark.slow
def test_siglip_family_on_torch_and_openvino_gives_the_same_vectors(
    snapshot: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CLIPDB_HOME", str(tmp_path / "home"))
    cpu = {"device": "cpu", "precision": "fp32"}
    torch_encoder = load_encoder(SIGLIP, str(snapshot), backend="torch", **cpu)
    pixels = torch_encoder.pixel_pipeline  # SigLIP's: squashed to a square, mean/std 0.5
    assert pixels.pil_steps == (("resize", (224, 224), 3, None),)
    assert (pixels.mean, pixels.std) == ((0.5,) * 3, (0.5,) * 3)
    images = [Image.new("RGB", (60, 30), colour) for colour in ("red", "navy", "olive")]
    texts = ["a red car", "two dogs in the park"]
    expected = torch_encoder.encode_pil(images), torch_encoder.encode_texts(texts)
    ov_encoder = load_encoder(SIGLIP, str(snapshot), backend="openvino", **cpu)
    assert ov_encoder.backend == "openvino"
    assert (ov_encoder.folder / "tokenizer.json").is_file()  # kept with the IR, verified
    got = ov_encoder.encode_pil(images), ov_encoder.encode_texts(texts)
    for want, have in zip(expected, got, strict=True):
        assert have.shape == want.shape and want.shape[1] == 192
        assert (want * have).sum(axis=1).min() > 0.999


def no_database() -> Any:
    raise AssertionError("a text query's vector needs no database")


def test_a_query_in_a_script_the_model_cannot_read_warns_once_naming_a_preset(
    tiny_encoder, capsys: pytest.CaptureFixture[str]
) -> None:
    from clipdb.config import Settings
    from clipdb.query import EncoderOptions, Query, Searcher

    assert unreadable_script("红色的汽车") == "CJK"
    assert unreadable_script("سيارة حمراء") == "ARABIC"
    assert unreadable_script("a red car, São Paulo") is None
    assert language_warning("ViT-B-16-SigLIP2", "红色的汽车") is None  # it reads it
    assert language_warning("ViT-B-16-SigLIP", "红色的汽车") is not None  # SigLIP 1: English
    searcher = Searcher(
        Settings.resolve(), EncoderOptions(TINY_MODEL), no_database, encoder=tiny_encoder
    )
    for text in ("红色的汽车", "一只猫", "a red car"):
        searcher.vector(Query(text=text))
    warnings = [line for line in capsys.readouterr().err.splitlines() if "English only" in line]
    assert len(warnings) == 1
    multilingual = [p.name for p in PRESETS if p.multilingual and p.commercial_use]
    assert any(name in warnings[0] for name in multilingual)
