"""Multilingual models with a Hugging Face text tower (open_clip's xlm-roberta-base-ViT-B-32
family): a tiny random-init XLM-RoBERTa tower, its tokenizer trained in the test, on torch and
OpenVINO, from seeded random weights and from a ``--pretrained DIR`` snapshot folder, with the
hub unreachable."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from snapshots import make_hf_text_snapshot, make_xlmr_tower

from clipdb.encoders import load_encoder
from clipdb.encoders.hf_tokenizer import HubTokenizer

XLMR = "clipdb-tiny-xlmr"  # written by the fixture: a 32-d ViT + a tiny XLM-R tower
QUERIES = ["红色的汽车", "ein rotes Auto auf der Strasse", "سيارة حمراء", "a red car"]


@pytest.fixture(scope="module")
def tower(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    import open_clip
    from open_clip import factory

    root = tmp_path_factory.mktemp("xlmr")
    make_xlmr_tower(root / "xlm-roberta-tiny", XLMR, root / "configs")
    open_clip.add_model_config(root / "configs")
    yield root / "xlm-roberta-tiny"
    factory._MODEL_CONFIGS.pop(XLMR, None)  # the architecture lives only as long as its files


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("CLIPDB_HOME", str(tmp_path / "home"))


def test_hub_tokenizer_gives_open_clip_s_xlm_r_ids(tower: Path) -> None:
    """clipdb reads tokenizer.json without transformers; open_clip's HFTokenizer (through
    transformers) gives the same ids: <s> first, </s> last, <pad> (id 1) to the context."""
    import open_clip

    texts = [*QUERIES, "ein rotes Auto " * 20]
    ours = HubTokenizer(tower / "tokenizer.json", 16)(texts)
    theirs = open_clip.get_tokenizer(XLMR)(texts).numpy()
    assert ours.shape == (len(texts), 16)
    assert (ours == theirs).all()
    assert (ours[:, 0] == 0).all() and ours[0][-1] == 1  # <s>; short text padded with <pad>
    assert ours[-1][-1] == 2  # truncated to the context, </s> kept


@pytest.mark.slow
def test_hf_text_tower_on_torch_and_openvino_from_a_snapshot_folder(
    tower: Path, tmp_path: Path
) -> None:
    snapshot = make_hf_text_snapshot(tmp_path / "snapshot", XLMR, tower)
    cpu = {"device": "cpu", "precision": "fp32"}
    torch_encoder = load_encoder(XLMR, str(snapshot), backend="torch", **cpu)
    images = [Image.new("RGB", (60, 30), colour) for colour in ("red", "navy", "olive")]
    expected = torch_encoder.encode_pil(images), torch_encoder.encode_texts(QUERIES)
    assert len({row.tobytes() for row in expected[1]}) == len(QUERIES)  # the text counts
    ov_encoder = load_encoder(XLMR, str(snapshot), backend="openvino", **cpu)
    assert ov_encoder.backend == "openvino"
    got = ov_encoder.encode_pil(images), ov_encoder.encode_texts(QUERIES)
    for want, have in zip(expected, got, strict=True):
        assert have.shape == want.shape and want.shape[1] == 32
        assert np.isfinite(have).all()
        assert (want * have).sum(axis=1).min() > 0.999


@pytest.mark.slow
def test_hf_text_tower_with_random_weights_needs_no_hub(tower: Path) -> None:
    encoder = load_encoder(XLMR, "none", backend="torch", device="cpu", precision="fp32")
    again = load_encoder(XLMR, "none", backend="torch", device="cpu", precision="fp32")
    vectors = encoder.encode_texts(QUERIES[:1])
    assert vectors.shape == (1, 32)
    assert np.allclose(vectors, again.encode_texts(QUERIES[:1]))  # seeded: the same model


def test_a_text_tower_whose_config_is_not_cached_is_one_clear_error(
    tower: Path, tmp_path: Path
) -> None:
    import json

    import open_clip
    from open_clip import factory

    from clipdb.errors import ClipdbError

    config = json.loads((tower.parent / "configs" / f"{XLMR}.json").read_text())
    config["text_cfg"]["hf_model_name"] = "clipdb-tests/no-such-text-tower"
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "clipdb-tiny-uncached.json").write_text(json.dumps(config))
    open_clip.add_model_config(tmp_path / "configs")
    try:
        with pytest.raises(ClipdbError, match="no-such-text-tower .*not in the Hugging Face cache"):
            load_encoder("clipdb-tiny-uncached", "none", backend="torch", device="cpu")
    finally:
        factory._MODEL_CONFIGS.pop("clipdb-tiny-uncached", None)
