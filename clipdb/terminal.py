"""Text that is safe to show on a terminal: file names can carry escape sequences.

A file name may contain ESC sequences (retitle or clear the terminal), newlines (forge extra
output lines: a name ending in ``\\n/etc/passwd`` would print a line that is exactly that
path), bidi overrides that reorder what is shown, or bytes that are not UTF-8 (Python keeps
them as lone surrogates). Human output shows all of these escaped; ``--null`` output gives
the exact bytes for pipes instead.
"""

from __future__ import annotations

import os
import unicodedata

_KEEP = {"\u200d"}  # zero-width joiner: part of emoji sequences, harmless


def _escape(char: str) -> str:
    code = ord(char)
    if 0xDC80 <= code <= 0xDCFF:  # surrogateescape: the original byte
        return f"\\x{code - 0xDC00:02x}"
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def printable(text: str) -> str:
    """``text`` with control, format and undecodable characters escaped (``\\x1b``, ``\\n``
    -> ``\\x0a``, ``\\u202e``); everything else, accents and emoji included, as is."""
    if text.isprintable():
        return text
    out = []
    for char in text:
        category = unicodedata.category(char)
        if char in _KEEP or (category not in ("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp")):
            out.append(char)
        else:
            out.append(_escape(char))
    return "".join(out)


def exact_bytes(path: str) -> bytes:
    """The file name's bytes as the filesystem has them (undecodable bytes restored)."""
    return os.fsencode(path)
