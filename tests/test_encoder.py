"""Model loading through open_clip's real code paths, with tiny configs and no downloads."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from helpers import TINY_MODEL, run_module
from PIL import Image

from clipdb.db import Database
from clipdb.encoders import load_encoder, resolve_model_spec
from clipdb.encoders.torch import _encode_text_trimmed, _normalise
from clipdb.errors import ClipdbError, UsageError
from clipdb.models import STANDARD_WEIGHTS, quick_model_spec


def test_random_weights_are_identical_in_every_process(tiny_encoder) -> None:
    again = load_encoder(TINY_MODEL, "none", device="cpu", precision="fp32", backend="torch")
    for ours, theirs in zip(
        tiny_encoder.model.state_dict().values(), again.model.state_dict().values(), strict=True
    ):
        assert torch.equal(ours, theirs)
    # Loading must not disturb the caller's random stream.
    torch.manual_seed(1)
    expected = torch.rand(3)
    torch.manual_seed(1)
    load_encoder(TINY_MODEL, "none", device="cpu", precision="fp32", backend="torch")
    assert torch.equal(torch.rand(3), expected)


def test_encodings_are_unit_vectors_of_the_model_dimension(tiny_encoder) -> None:
    images = tiny_encoder.encode_pil([Image.new("RGB", (40, 30), "red"), Image.new("L", (9, 50))])
    texts = tiny_encoder.encode_texts(["a red car", "night"])
    for vectors in (images, texts):
        assert vectors.shape == (2, 32) and vectors.dtype == np.float32
        assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_trimmed_text_encoding_equals_open_clips(tiny_encoder) -> None:
    texts = ["a red car", "x", "a photo of a cat on a long couch in the living room at night"]
    tokens = tiny_encoder.tokenizer(texts)
    with torch.inference_mode():
        full = _normalise(tiny_encoder.model.encode_text(tokens))
        trimmed = _normalise(_encode_text_trimmed(tiny_encoder.model, tokens))
    assert np.abs(full - trimmed).max() < 1e-5
    assert np.allclose(tiny_encoder.encode_texts(texts), full, atol=1e-5)


def test_local_checkpoint_file_loads_through_open_clip(tiny_encoder, tmp_path: Path) -> None:
    # A checkpoint the way users have them: a state dict saved by torch.
    checkpoint = tmp_path / "tiny.pt"
    state = {k: v + 0.01 for k, v in tiny_encoder.model.state_dict().items()}
    torch.save(state, checkpoint)
    loaded = load_encoder(
        TINY_MODEL, str(checkpoint), device="cpu", precision="fp32", backend="torch"
    )
    assert loaded.pretrained.startswith("file:sha256:")
    assert loaded.pretrained == resolve_model_spec(TINY_MODEL, str(checkpoint)).pretrained
    first = next(iter(loaded.model.state_dict().values()))
    assert torch.allclose(first, next(iter(state.values())))
    copy = tmp_path / "copy.pt"
    copy.write_bytes(checkpoint.read_bytes())
    assert resolve_model_spec(TINY_MODEL, str(copy)).pretrained == loaded.pretrained


_watched: dict[str, list[str]] = {}  # real path -> one entry per open(), while watched


def _count_opens(event: str, args: tuple[Any, ...]) -> None:
    if event == "open" and _watched and isinstance(args[0], (str, Path)):
        opened = _watched.get(os.path.realpath(args[0]))
        if opened is not None:
            opened.append(event)


sys.addaudithook(_count_opens)  # for the rest of the process, but it counts only when asked


@contextlib.contextmanager
def opens_of(path: Path) -> Iterator[list[str]]:
    """Every open() of ``path`` in this process while inside: Python's audit events see the
    real code path, nothing is replaced."""
    opened = _watched[os.path.realpath(path)] = []
    try:
        yield opened
    finally:
        del _watched[os.path.realpath(path)]


def test_a_checkpoint_is_read_once_per_process_until_it_changes(tmp_path: Path) -> None:
    checkpoint = tmp_path / "weights.pt"
    checkpoint.write_bytes(b"weights " * 1000)
    with opens_of(checkpoint) as opened:
        # What one command asks: ingest's and load_encoder's quick identity, then the full one.
        quick = quick_model_spec(TINY_MODEL, str(checkpoint))
        assert quick_model_spec(TINY_MODEL, str(checkpoint)) == quick
        assert resolve_model_spec(TINY_MODEL, str(checkpoint)) == quick
    assert quick is not None and quick.pretrained.startswith("file:sha256:")
    assert len(opened) == 1
    checkpoint.write_bytes(b"other weights " * 1000)  # rewritten: a new size and mtime
    with opens_of(checkpoint) as opened:
        again = resolve_model_spec(TINY_MODEL, str(checkpoint))
    assert len(opened) == 1 and again.pretrained != quick.pretrained


def test_broken_checkpoint_and_missing_weights_are_one_line_errors(tmp_path: Path) -> None:
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ClipdbError, match="cannot load checkpoint") as caught:
        load_encoder(TINY_MODEL, str(junk), device="cpu")
    assert "\n" not in str(caught.value)
    with pytest.raises(ClipdbError, match="does not exist"):
        resolve_model_spec(TINY_MODEL, str(tmp_path / "missing.pt"))
    with pytest.raises(ClipdbError, match="pass --pretrained FILE"):
        resolve_model_spec(TINY_MODEL, None)  # a custom architecture has no standard weights


def test_names_from_the_original_tool_and_bad_names() -> None:
    assert resolve_model_spec("ViT-B/32", None).architecture == "ViT-B-32"
    assert resolve_model_spec("ViT-B/32", None).pretrained == "openai"
    with pytest.raises(UsageError, match="unknown model"):
        resolve_model_spec("ViT-Z/99", None)
    with pytest.raises(UsageError, match="unknown pretrained tag"):
        resolve_model_spec("ViT-B-32", "no_such_tag")


def test_quick_identities_agree_with_open_clip() -> None:
    for architecture in STANDARD_WEIGHTS:
        quick = quick_model_spec(architecture, None)
        assert quick == resolve_model_spec(architecture, None)
    assert quick_model_spec("ViT-B/16", "none") == resolve_model_spec("ViT-B-16", "none")
    assert quick_model_spec("coca_ViT-B-32", None) is None  # only open_clip knows


@pytest.mark.slow
def test_standard_weights_offline_say_how_to_run_with_random_ones(
    database: Database, tmp_path: Path
) -> None:
    """No network and an empty hub cache: one line that names CLIPDB_PRETRAINED=none and the
    command to run again, without the --pretrained that would beat the variable."""
    args = ["--text", "a red car", "--model", "ViT-B-32", "--pretrained", "openai"]
    offline = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    result = run_module("clipdb", "embed", *args, "--backend", "torch", env=offline)
    assert result.returncode == 1
    (line,) = result.stderr.splitlines()
    assert "'openai' for ViT-B-32 are not in the local cache and could not be downloaded" in line
    assert line.endswith(
        "or CLIPDB_PRETRAINED=none; rerun: CLIPDB_PRETRAINED=none clipdb embed"
        " --text 'a red car' --model ViT-B-32 --backend torch"
    )
