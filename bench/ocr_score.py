"""How bench/bench_ocr.py counts words: read text against an image's ground truth.

Latin words are compared whole, after folding (NFKD, accents dropped, lower case): the read
text's words are ``\\w+`` runs, and each true word found takes one of them. Chinese has no
spaces between words and an engine may or may not put one where the set did, so a word with a
CJK character counts as found when the read text, with spaces between CJK characters removed,
contains it; the part it matched is taken out before the Latin words and the leftovers are
counted. Every ``\\w+`` run left over is an extra word (it lowers precision). ``in_part`` also
says which Latin words are in the read text as a part (an engine may run words together).
"""

from __future__ import annotations

import re
import unicodedata

_CJK = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_CJK_GAP = re.compile(rf"(?<=[{_CJK}])\s+(?=[{_CJK}])")
_HAS_CJK = re.compile(rf"[{_CJK}]")


def fold(text: str) -> str:
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(c for c in decomposed if not unicodedata.combining(c)).lower()


def words_of(text: str) -> list[str]:
    return re.findall(r"\w+", fold(text))


def is_cjk(word: str) -> bool:
    return bool(_HAS_CJK.search(word))


def truth_words(words: list[str]) -> list[str]:
    """An image's true words as the bench counts them: folded, split at non-word characters
    (``12.50`` is two words); a word holding CJK stays whole (``28元``)."""
    return [w for piece in words for w in ([fold(piece)] if is_cjk(piece) else words_of(piece))]


def score(words: list[str], read: str) -> tuple[list[tuple[str, bool]], int]:
    """Each true word with whether the read text holds it, and the count of extra words."""
    text = _CJK_GAP.sub("", " ".join(words_of(read)))
    return _score(truth_words(words), text)


def in_part(words: list[str], read: str) -> list[bool]:
    """For each true word: whether the read text holds it at least as a part (``kabex`` in
    ``tormunvorkabexcodlo``, read where the engine lost the spaces): what a part-string
    search still finds."""
    text = "".join(words_of(read))
    return [word in text for word in truth_words(words)]


def _score(truth: list[str], text: str) -> tuple[list[tuple[str, bool]], int]:
    found: dict[int, bool] = {}
    for n, word in enumerate(truth):
        if is_cjk(word):
            found[n] = word in text
            text = text.replace(word, " ", 1)
    got = words_of(text)
    for n, word in enumerate(truth):
        if n not in found:
            found[n] = word in got
            if found[n]:
                got.remove(word)
    return [(word, found[n]) for n, word in enumerate(truth)], len(got)


def holds(words: list[str], query: str) -> bool:
    """Whether an image with these true words holds the query word (CJK: as a part)."""
    truth = truth_words(words)
    if is_cjk(query):
        return query in "".join(truth)
    return query in truth
