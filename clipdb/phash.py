"""A 64-bit DCT perceptual hash (pHash) of decoded pixels: numpy only, no torch.

Why this shape: the image is reduced to a 32x32 luma square (so resizes, re-encodes and format
changes of the same photo land on nearly the same pixels), a 2-D DCT-II keeps its coarse
structure in the low frequencies, and each of the 64 lowest-frequency AC coefficients (zigzag
order, DC left out: DC is just the mean brightness) becomes one bit, set when it is above their
median. Copies of one photo then differ in a few bits; unrelated photos in about 32. The hash
is computed in the decode worker from the image that is already decoded for the model, so it
costs a 32x32 resize and two 32x32 matrix products.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

SIZE = 32  # side of the square the DCT runs on
BITS = 64
# The 64 lowest-frequency AC coefficients of the 32x32 DCT, in zigzag order (by i + j, then i).
_ORDER = sorted(((i, j) for i in range(12) for j in range(12) if i + j), key=lambda c: (sum(c), c))[
    :BITS
]
_ROWS = np.array([c[0] for c in _ORDER])
_COLS = np.array([c[1] for c in _ORDER])


def _dct_matrix(n: int) -> np.ndarray:
    """The orthonormal DCT-II matrix: ``M @ x`` is the DCT of the column ``x``."""
    k = np.arange(n)[:, None]
    x = np.arange(n)[None, :]
    matrix: np.ndarray = np.cos(np.pi * (2 * x + 1) * k / (2 * n)) * np.sqrt(2.0 / n)
    matrix[0] /= np.sqrt(2.0)
    return matrix


_DCT = _dct_matrix(SIZE)


def phash(image: Image.Image) -> int:
    """The 64-bit pHash of ``image`` as a signed int64 (what PostgreSQL's ``bigint::bit(64)``
    takes); bit 63 (the sign) is the first coefficient."""
    # Draft-decoded or full-size: the box filter averages every source pixel either way.
    gray = image.convert("L").resize((SIZE, SIZE), Image.Resampling.BOX)
    return square_phash(np.asarray(gray))


def square_phash(luma: np.ndarray) -> int:
    """:func:`phash` of the 32x32 uint8 luma square already made (the device decoder makes
    it on the GPU, from the full-size image)."""
    pixels = np.asarray(luma, dtype=np.float64)
    coefficients = (_DCT @ pixels @ _DCT.T)[_ROWS, _COLS]
    bits = coefficients > np.median(coefficients)
    value = 0
    for bit in bits:
        value = (value << 1) | int(bit)
    return value - (1 << BITS) if value >= 1 << (BITS - 1) else value


def distance(a: int, b: int) -> int:
    """Hamming distance between two hashes (as :func:`phash` returns them)."""
    return ((a ^ b) & ((1 << BITS) - 1)).bit_count()
