"""CLIP's byte-pair tokenizer without torch: the cold text query path never imports torch.

open_clip's ``SimpleTokenizer`` returns torch tensors (and importing open_clip imports torch,
~2 s); this is the same algorithm over open_clip's own vocabulary file, found through
``importlib.util.find_spec`` without importing the package. ``tests/test_backends.py`` checks
the ids equal ``open_clip.tokenize`` on many strings.
"""

from __future__ import annotations

import gzip
import html
import importlib.util
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np

VOCAB_FILE = "bpe_simple_vocab_16e6.txt.gz"
MERGES = 49152 - 256 - 2  # the merges open_clip keeps
SPECIAL = ("<start_of_text>", "<end_of_text>")


def vocab_path() -> Path:
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("open_clip is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / VOCAB_FILE


@lru_cache
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table (as open_clip)."""
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs], strict=True))


def _clean(text: str) -> str:
    """open_clip's 'lower' cleaning: ftfy, html unescape twice, collapse whitespace, lower."""
    import ftfy

    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return " ".join(text.split()).strip().lower()


class ClipTokenizer:
    """``tokenizer(texts) -> int64 array (N, context_length)``, ids as open_clip's."""

    def __init__(self, context_length: int = 77, path: Path | None = None) -> None:
        import regex

        with gzip.open(path or vocab_path()) as handle:
            lines = handle.read().decode("utf-8").split("\n")
        merges = [tuple(line.split()) for line in lines[1 : MERGES + 1]]
        vocab = list(bytes_to_unicode().values())
        vocab = vocab + [v + "</w>" for v in vocab] + ["".join(m) for m in merges] + list(SPECIAL)
        self.encoder = {token: index for index, token in enumerate(vocab)}
        self.ranks = {(m[0], m[1]): index for index, m in enumerate(merges)}
        self.cache: dict[str, str] = {t: t for t in SPECIAL}
        self.pattern = regex.compile(
            "|".join(SPECIAL) + r"""|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
            regex.IGNORECASE,
        )
        self.sot, self.eot = (self.encoder[t] for t in SPECIAL)
        self.context_length = context_length
        self.byte_encoder = bytes_to_unicode()

    def bpe(self, token: str) -> str:
        if token in self.cache:
            return self.cache[token]
        word: tuple[str, ...] = (*token[:-1], token[-1] + "</w>")
        while len(word) > 1:
            pairs = set(zip(word, word[1:], strict=False))
            best = min(pairs, key=lambda pair: self.ranks.get(pair, float("inf")))
            if best not in self.ranks:
                break
            merged: list[str] = []
            i = 0
            while i < len(word):
                if i < len(word) - 1 and (word[i], word[i + 1]) == best:
                    merged.append(word[i] + word[i + 1])
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = tuple(merged)
        result = " ".join(word)
        self.cache[token] = result
        return result

    def encode(self, text: str) -> list[int]:
        ids: list[int] = []
        for token in self.pattern.findall(_clean(text)):
            mapped = "".join(self.byte_encoder[b] for b in token.encode("utf-8"))
            ids.extend(self.encoder[piece] for piece in self.bpe(mapped).split(" "))
        return ids

    def __call__(self, texts: str | Sequence[str]) -> np.ndarray:
        texts = [texts] if isinstance(texts, str) else list(texts)
        result = np.zeros((len(texts), self.context_length), dtype=np.int64)
        for row, text in enumerate(texts):
            tokens = [self.sot, *self.encode(text), self.eot]
            if len(tokens) > self.context_length:
                tokens = tokens[: self.context_length]
                tokens[-1] = self.eot
            result[row, : len(tokens)] = tokens
        return result
