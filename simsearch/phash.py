"""Perceptual hash of a decoded image: 64 bits that survive re-encoding, resizing, brightness and colour changes.

The hash is a DCT hash of the image's luminance (numpy only, no extra dependency):

1. luminance (Pillow's ``L``: ITU-R 601 luma), so a grayscale copy hashes like its colour original;
2. resized to 32x32 (Lanczos, after a box reduction for speed);
3. 2-D DCT-II; of its coefficients ``C[u, v]`` (``u`` vertical, ``v`` horizontal frequency) the 8x8 lowest
   ``u, v < 8`` are kept, the DC term ``C[0, 0]`` (the mean brightness, always positive) replaced by ``C[8, 0]``;
4. bit ``8*u + v`` (counting from the least significant bit) is 1 when ``C[u, v] > 0``.

Signs of AC coefficients do not change when the image is made brighter or darker (a scale or an offset of the
pixels), unlike a median threshold. Mirroring the image left-right multiplies ``C[u, v]`` by ``(-1)**v``,
which flips exactly the bits with odd ``v`` (:data:`MIRROR_MASK`): the hash of the mirror image is
``h ^ MIRROR_MASK``, so one stored hash covers both orientations and :func:`distance` is the Hamming distance
to the nearer of the two (``mirror=True``, the default).

Format: a Python ``int`` in the signed 64-bit range (``-2**63 .. 2**63-1``: the bit pattern above read as a
two's-complement integer), so it fits an SQLite ``INTEGER`` column as is; :func:`to_unsigned` gives the bit
pattern back. Hashes made here are comparable across versions as long as :data:`HASH_VERSION` is unchanged.

Measured (``scripts/bench_duplicates.py``): see the table in :mod:`simsearch.duplicates`.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

HASH_VERSION = 1
BITS = 64
SIZE = 32  # side of the thumbnail the DCT is taken of
MIRROR_MASK = int.from_bytes(b"\xaa" * 8, "big")  # the bits with an odd horizontal frequency v
_MASK64 = (1 << 64) - 1


def _dct_rows(n: int, size: int = SIZE) -> np.ndarray:
    """The first ``n`` rows of the orthonormal DCT-II matrix of order ``size`` (``n x size``)."""
    k = np.arange(n, dtype=np.float64)[:, None]
    x = np.arange(size, dtype=np.float64)[None, :]
    m = np.cos(np.pi * (2 * x + 1) * k / (2 * size)) * np.sqrt(2.0 / size)
    m[0] /= np.sqrt(2.0)
    return m


def luminance_thumbnail(img: Image.Image, size: int = SIZE) -> np.ndarray:
    """The image's luminance resized to ``size x size``, as float64 (the input of :func:`phash`)."""
    gray = img if img.mode == "L" else img.convert("L")
    small = gray.resize((size, size), Image.Resampling.LANCZOS, reducing_gap=2.0)
    return np.asarray(small, dtype=np.float64)


def phash_array(thumb: np.ndarray) -> int:
    """The hash of a ``SIZE x SIZE`` luminance array (see the module docstring); signed 64-bit int."""
    rows = _dct_rows(9, thumb.shape[0])
    cols = _dct_rows(8, thumb.shape[1])
    c = rows @ thumb @ cols.T  # 9 x 8: C[u, v], u < 9, v < 8
    block = c[:8].copy()
    block[0, 0] = c[8, 0]
    bits = (block.ravel() > 0).astype(np.uint64)
    value = int((bits << np.arange(BITS, dtype=np.uint64)).sum(dtype=np.uint64))
    return to_signed(value)


def phash(img: Image.Image) -> int:
    """Perceptual hash of a decoded PIL image (any mode); a signed 64-bit int (see the module docstring)."""
    return phash_array(luminance_thumbnail(img))


def to_signed(value: int) -> int:
    """A 64-bit pattern as a signed int (what SQLite stores)."""
    value &= _MASK64
    return value - (1 << 64) if value >= 1 << 63 else value


def to_unsigned(value: int) -> int:
    """The 64-bit pattern of a stored (signed) hash."""
    return int(value) & _MASK64


def mirrored(h: int) -> int:
    """The hash the left-right mirror image has."""
    return to_signed(to_unsigned(h) ^ MIRROR_MASK)


def distance(a: int, b: int, *, mirror: bool = True) -> int:
    """Hamming distance (0-64) between two hashes; with ``mirror``, to whichever orientation of ``b`` is nearer."""
    x = (int(a) ^ int(b)) & _MASK64
    d = x.bit_count()
    return min(d, (x ^ MIRROR_MASK).bit_count()) if mirror else d


def distances(h: int, others: np.ndarray, *, mirror: bool = True) -> np.ndarray:
    """:func:`distance` from one hash to an array of hashes (int64), vectorised; int array."""
    arr = np.asarray(others, dtype=np.int64).view(np.uint64)
    x = arr ^ np.uint64(to_unsigned(h))
    d = np.bitwise_count(x)
    if mirror:
        d = np.minimum(d, np.bitwise_count(x ^ np.uint64(MIRROR_MASK)))
    return d.astype(np.int64)


def pair_distances(a: np.ndarray, b: np.ndarray, *, mirror: bool = True) -> np.ndarray:
    """Element-wise :func:`distance` between two int64 arrays of hashes (same shape, or broadcastable)."""
    x = np.asarray(a, dtype=np.int64).view(np.uint64) ^ np.asarray(b, dtype=np.int64).view(np.uint64)
    d = np.bitwise_count(x)
    if mirror:
        d = np.minimum(d, np.bitwise_count(x ^ np.uint64(MIRROR_MASK)))
    return d.astype(np.int64)
