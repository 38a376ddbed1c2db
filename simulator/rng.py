"""Counter-based random numbers: pure functions of (seed, keys, counter), vectorised with numpy.

A stateful generator would make a value depend on how many draws came before it; here every draw
is a hash of its coordinates (splitmix64 finaliser), so any (node, step) can be evaluated alone
and in any order with the same result.
"""

from __future__ import annotations

import hashlib

import numpy as np
from numpy.typing import ArrayLike, NDArray

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_INV_2_53 = 1.0 / float(1 << 53)


def stream_key(seed: int, *names: str) -> int:
    """Return a 64-bit key for a named random stream (stable across runs and platforms)."""
    text = "\x1f".join((str(seed), *names)).encode()
    return int.from_bytes(hashlib.sha256(text).digest()[:8], "little")


def _mix(x: NDArray[np.uint64]) -> NDArray[np.uint64]:
    """splitmix64 finaliser: a bijective avalanche of 64-bit integers."""
    with np.errstate(over="ignore"):
        x = x ^ (x >> np.uint64(30))
        x = x * _M1
        x = x ^ (x >> np.uint64(27))
        x = x * _M2
        return x ^ (x >> np.uint64(31))


def uniform(key: ArrayLike, counter: ArrayLike) -> NDArray[np.float64]:
    """Uniform numbers in [0, 1) for each (key, counter) pair (numpy broadcasting applies)."""
    k = np.asarray(key, dtype=np.uint64)
    c = np.asarray(counter, dtype=np.int64).astype(np.uint64)
    with np.errstate(over="ignore"):
        x = _mix(k ^ _mix(c * _GOLDEN + _GOLDEN))
    return (x >> np.uint64(11)).astype(np.float64) * _INV_2_53


def normal(key: ArrayLike, counter: ArrayLike) -> NDArray[np.float64]:
    """Standard normal numbers for each (key, counter) pair (Box-Muller on two hashed uniforms)."""
    c = np.asarray(counter, dtype=np.int64)
    u1 = uniform(key, 2 * c)
    u2 = uniform(key, 2 * c + 1)
    return np.sqrt(-2.0 * np.log1p(-u1)) * np.cos(2.0 * np.pi * u2)


def smooth_normal(key: ArrayLike, counter: ArrayLike, width: int) -> NDArray[np.float64]:
    """Unit-variance moving average of `width` consecutive normals: noise correlated in time."""
    c = np.asarray(counter, dtype=np.int64)
    total = sum(normal(key, c - lag) for lag in range(width))
    return np.asarray(total, dtype=np.float64) / np.sqrt(width)
