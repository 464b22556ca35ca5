"""Perceptual hashing for near-duplicate detection of source videos (64-bit DCT hash, Hamming distance)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def _dct_matrix(n: int) -> np.ndarray:
    """Orthonormal DCT-II matrix ``D [n, n]``: ``D @ x`` is the DCT of ``x``."""
    k = np.arange(n)[:, None]
    i = np.arange(n)[None, :]
    d = np.cos(np.pi * (2 * i + 1) * k / (2 * n)) * np.sqrt(2.0 / n)
    d[0] /= np.sqrt(2.0)
    return d


def phash(image: np.ndarray, *, size: int = 32, bits: int = 8) -> int:
    """64-bit DCT perceptual hash of an ``[H, W, 3]`` (or ``[H, W]``) uint8 image.

    Grayscale, resize to ``size x size``, 2-D DCT, keep the ``bits x bits`` lowest frequencies, set a bit where a
    coefficient is above their median (the DC term excluded from the median). Similar images differ in few bits.
    """
    from PIL import Image

    gray = Image.fromarray(np.asarray(image, dtype=np.uint8)).convert("L").resize((size, size), Image.BILINEAR)
    pixels = np.asarray(gray, dtype=np.float64)
    d = _dct_matrix(size)
    low = (d @ pixels @ d.T)[:bits, :bits].ravel()
    median = np.median(low[1:])
    value = 0
    for bit in low > median:
        value = (value << 1) | int(bit)
    return value


def hamming(a: int, b: int) -> int:
    return bin(a ^ b).count("1")


def video_distance(a: Sequence[int], b: Sequence[int]) -> float:
    """Mean Hamming distance between two videos' frame hashes taken at the same relative positions."""
    n = min(len(a), len(b))
    if n == 0:
        return float("inf")
    return sum(hamming(x, y) for x, y in zip(a[:n], b[:n])) / n
