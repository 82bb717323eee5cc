"""Hugging Face tokenizers (SigLIP's Gemma/T5 vocabularies, XLM-R) without transformers or torch.

open_clip's ``HFTokenizer`` wraps ``transformers.AutoTokenizer``; clipdb reads the same
``tokenizer.json`` with the ``tokenizers`` library alone and applies open_clip's settings: its
text cleaning (``tokenizer_kwargs.clean``: SigLIP canonicalises, lower-cases and drops
punctuation), truncation to the context length with the special tokens kept, and padding to the
full context length (SigLIP's text tower pools the last position, so padding is part of the
input). Where the file comes from: a ``--pretrained DIR`` snapshot folder, the folder of a
checkpoint file, or the Hugging Face cache of the config's ``hf_tokenizer_name`` (offline when
the hub cannot be reached).
"""

from __future__ import annotations

import html
import json
import string
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from clipdb.errors import ClipdbError

TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG = "tokenizer_config.json"
_PUNCTUATION = str.maketrans("", "", string.punctuation)


def _basic(text: str) -> str:
    import ftfy

    return html.unescape(html.unescape(ftfy.fix_text(text))).strip()


def _whitespace(text: str) -> str:
    return " ".join(text.split()).strip()


def clean_text(text: str, mode: str) -> str:
    """open_clip's ``get_clean_fn(mode)`` (``whitespace``, ``lower``, ``canonicalize``)."""
    text = _basic(text)
    if mode == "canonicalize":  # big_vision's: underscores to spaces, no punctuation, lower
        return _whitespace(text.replace("_", " ").translate(_PUNCTUATION).lower())
    if mode == "lower":
        return _whitespace(text).lower()
    return _whitespace(text)


def _pad_id(folder: Path, tokenizer: Any) -> int:
    """The padding id AutoTokenizer would use: tokenizer_config.json's pad_token, else the
    tokenizer file's own padding, else ``<pad>``, else 0."""
    names: list[str] = []
    config = folder / TOKENIZER_CONFIG
    if config.is_file():
        pad = json.loads(config.read_text(encoding="utf-8")).get("pad_token")
        if isinstance(pad, dict):
            pad = pad.get("content")
        if isinstance(pad, str):
            names.append(pad)
    padding = tokenizer.padding
    if padding and padding.get("pad_id") is not None and not names:
        return int(padding["pad_id"])
    for name in [*names, "<pad>"]:
        found = tokenizer.token_to_id(name)
        if found is not None:
            return int(found)
    return 0


class HubTokenizer:
    """``tokenizer(texts) -> int64 array (N, context_length)`` from a ``tokenizer.json``."""

    kind = "hf"

    def __init__(self, file: Path, context_length: int, clean: str = "whitespace") -> None:
        from tokenizers import Tokenizer

        self.file = file
        self.context_length = context_length
        self.clean = clean
        self.tokenizer = Tokenizer.from_file(str(file))
        self.pad_id = _pad_id(file.parent, self.tokenizer)
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(max_length=context_length)

    def __call__(self, texts: str | Sequence[str]) -> np.ndarray:
        texts = [texts] if isinstance(texts, str) else list(texts)
        encoded = self.tokenizer.encode_batch([clean_text(t, self.clean) for t in texts])
        result = np.full((len(texts), self.context_length), self.pad_id, dtype=np.int64)
        for row, encoding in enumerate(encoded):
            ids = encoding.ids[: self.context_length]
            result[row, : len(ids)] = ids
        return result


def hub_tokenizer_settings(architecture: str) -> dict[str, Any] | None:
    """The architecture's HF tokenizer settings (name, context length, cleaning), or None
    when it uses CLIP's byte-pair tokenizer."""
    import open_clip

    text = (open_clip.get_model_config(architecture) or {}).get("text_cfg", {})
    name = text.get("hf_tokenizer_name")
    if not name:
        return None
    return {
        "name": name,
        "context_length": int(text.get("context_length", 77)),
        "clean": (text.get("tokenizer_kwargs") or {}).get("clean", "whitespace"),
    }


def find_tokenizer_file(name: str, checkpoint: Path | None) -> Path:
    """The ``tokenizer.json`` beside the checkpoint, in the folder ``name`` names, or in the
    Hugging Face cache for repository ``name``; one clear error when none is there."""
    candidates = [checkpoint.parent / TOKENIZER_FILE] if checkpoint is not None else []
    if Path(name).expanduser().is_absolute():  # a folder, never relative to the cwd
        candidates.append(Path(name).expanduser() / TOKENIZER_FILE)
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    try:
        from huggingface_hub import hf_hub_download

        from clipdb.encoders.hub import offline_hub_if_unreachable

        with offline_hub_if_unreachable():
            return Path(hf_hub_download(name, TOKENIZER_FILE))
    except Exception:  # offline and not cached, no such repository, ...
        raise ClipdbError(
            f"the tokenizer {name} ({TOKENIZER_FILE}) is not in the Hugging Face cache and "
            "could not be downloaded; pass the model's snapshot folder with --pretrained DIR"
        ) from None


class LazyHubTokenizer:
    """A :class:`HubTokenizer` found on first use: indexing images needs no tokenizer, so a
    model whose tokenizer is not on this machine still ingests."""

    kind = "hf"

    def __init__(self, settings: dict[str, Any], checkpoint: Path | None) -> None:
        self.settings = settings
        self.checkpoint = checkpoint
        self._loaded: HubTokenizer | None = None

    @property
    def context_length(self) -> int:
        return int(self.settings["context_length"])

    @property
    def clean(self) -> str:
        return str(self.settings["clean"])

    def loaded(self) -> HubTokenizer:
        if self._loaded is None:
            file = find_tokenizer_file(self.settings["name"], self.checkpoint)
            self._loaded = HubTokenizer(file, self.context_length, self.clean)
        return self._loaded

    def __call__(self, texts: str | Sequence[str]) -> np.ndarray:
        return self.loaded()(texts)
