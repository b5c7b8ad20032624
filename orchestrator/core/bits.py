"""Integers below 2^b packed densely, b bits each (eight 3-bit values in three bytes).

    >>> values = np.array([5, 0, 7, 1, 2], dtype=np.uint8)
    >>> len(pack_bits(values, 3)), unpack_bits(pack_bits(values, 3), 3, 5).tolist()
    (2, [5, 0, 7, 1, 2])
"""

from __future__ import annotations

import numpy as np


def pack_bits(values: np.ndarray, bits: int) -> bytes:
    """Pack unsigned integers < 2^bits densely, `bits` bits each, little-endian bit order."""
    v = np.ascontiguousarray(values, dtype=np.uint8).reshape(-1, 1)
    planes = np.unpackbits(v, axis=1, bitorder="little")[:, :bits]  # (n, bits)
    return np.packbits(planes.reshape(-1), bitorder="little").tobytes()


def unpack_bits(buf: bytes, bits: int, count: int) -> np.ndarray:
    """Inverse of `pack_bits` for `count` values."""
    planes = np.unpackbits(np.frombuffer(buf, dtype=np.uint8), bitorder="little")[: count * bits]
    planes = np.pad(planes.reshape(count, bits), ((0, 0), (0, 8 - bits)))
    return np.packbits(planes, axis=1, bitorder="little").reshape(count)
