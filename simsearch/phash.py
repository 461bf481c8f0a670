"""Perceptual hash of a decoded image: 64 bits that survive re-encoding, resizing, brightness and colour changes.

The hash is a DCT hash of the image's luminance (numpy only, no extra dependency):

1. luminance (Pillow's ``L``: ITU-R 601 luma), so a grayscale copy hashes like its colour original;
2. resized to 32x32 (Lanczos, after a box reduction for speed);
3. 2-D DCT-II; of its coefficients ``C[u, v]`` (``u`` vertical, ``v`` horizontal frequency) the 8x8 lowest
   ``u, v < 8`` are kept, the DC term ``C[0, 0]`` (the mean brightness, always positive) replaced by ``C[8, 0]``;
4. bit ``8*u + v`` (counting from the least significant bit) is 1 when ``C[u, v] > 0``.

A flat image (thumbnail standard deviation below :data:`FLAT_STD` grey levels: blank pages, solid colours) has no
structure to hash: its hash is None, and only the embedding judges it.

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

from functools import cache

import numpy as np
from PIL import Image

from .config import DUPLICATES, DuplicateRule

HASH_VERSION = 1
BITS = 64
SIZE = 32  # side of the thumbnail the DCT is taken of
FLAT_STD = 1.0  # thumbnails flatter than this (grey levels, 0-255) get no hash: their coefficients are noise
MIRROR_MASK = int.from_bytes(b"\xaa" * 8, "big")  # the bits with an odd horizontal frequency v
_MASK64 = (1 << 64) - 1


@cache
def _dct_rows(n: int, size: int = SIZE) -> np.ndarray:
    """The first ``n`` rows of the orthonormal DCT-II matrix of order ``size`` (``n x size``, read-only)."""
    k = np.arange(n, dtype=np.float64)[:, None]
    x = np.arange(size, dtype=np.float64)[None, :]
    m = np.cos(np.pi * (2 * x + 1) * k / (2 * size)) * np.sqrt(2.0 / size)
    m[0] /= np.sqrt(2.0)
    m.flags.writeable = False
    return m


def luminance_thumbnail(img: Image.Image, size: int = SIZE) -> np.ndarray:
    """The image's luminance resized to ``size x size``, as float64 (the input of :func:`phash`)."""
    gray = img if img.mode == "L" else img.convert("L")
    small = gray.resize((size, size), Image.Resampling.LANCZOS, reducing_gap=2.0)
    return np.asarray(small, dtype=np.float64)


def phash_array(thumb: np.ndarray) -> int | None:
    """The hash of a ``SIZE x SIZE`` luminance array (see the module docstring): a signed 64-bit int, or None
    for a flat image."""
    if float(thumb.std()) < FLAT_STD:
        return None
    rows = _dct_rows(9, thumb.shape[0])
    cols = _dct_rows(8, thumb.shape[1])
    c = rows @ thumb @ cols.T  # 9 x 8: C[u, v], u < 9, v < 8
    block = c[:8].copy()
    block[0, 0] = c[8, 0]
    packed = np.packbits(block.ravel() > 0, bitorder="little")  # element i -> bit i
    return to_signed(int.from_bytes(packed.tobytes(), "little"))


def phash(img: Image.Image) -> int | None:
    """Perceptual hash of a decoded PIL image (any mode): a signed 64-bit int (see the module docstring), None
    for a flat image (nothing to hash)."""
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


# ------------------------------------------------------------------------------ the near-duplicate pair rule

NO_HASH = -1  # hash distance of a pair where either item has no hash


def duplicate_reason(cosine: float, hash_distance: int | None, rule: DuplicateRule = DUPLICATES) -> str | None:
    """Why two items are near-duplicates under ``rule`` (:class:`simsearch.config.DuplicateRule`), or None:
    ``"cosine"`` (similarity >= ``rule.threshold``), ``"hash"`` (hash distance <= ``rule.hash_distance`` with
    similarity >= ``rule.hash_threshold``) or ``"cosine+hash"`` (both). ``hash_distance`` None or negative:
    unknown (an item without a hash), only the cosine counts."""
    by_cos = cosine >= rule.threshold
    by_hash = (
        rule.uses_hash
        and hash_distance is not None
        and 0 <= hash_distance <= rule.hash_distance
        and cosine >= rule.hash_threshold
    )
    if by_cos and by_hash:
        return "cosine+hash"
    return "cosine" if by_cos else "hash" if by_hash else None


def is_duplicate(cosine: float, hash_distance: int | None, rule: DuplicateRule = DUPLICATES) -> bool:
    """Whether a pair with this cosine similarity and hash distance is a near-duplicate (:func:`duplicate_reason`)."""
    return duplicate_reason(cosine, hash_distance, rule) is not None


def duplicate_mask(cosines: np.ndarray, hash_distances: np.ndarray, rule: DuplicateRule = DUPLICATES) -> np.ndarray:
    """:func:`is_duplicate` over arrays (hash distance :data:`NO_HASH` = unknown); a boolean array."""
    cosines = np.asarray(cosines)
    out = cosines >= rule.threshold
    if rule.uses_hash:
        hd = np.asarray(hash_distances)
        out |= (hd >= 0) & (hd <= rule.hash_distance) & (cosines >= rule.hash_threshold)
    return out
