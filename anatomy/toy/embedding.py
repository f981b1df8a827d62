"""The toy's frozen embedding, regenerated from its seed, bit for bit, on every machine.

The tied embedding / unembedding ``(151936, 128)`` stays at its initial values
while the toy trains, so it is not shipped: 78 MB of float32 that a seed
describes. But ``torch.randn`` is not promised to give the same stream across
platforms and versions, so the values come from a counter-based generator
written with integer operations only:

- SplitMix64 (Steele, Lea & Flood 2014) of ``key + (i + 1) * 0x9E3779B97F4A7C15``,
  where ``i`` is the flat index of the value and ``key`` is SplitMix64 of the seed;
- the top 24 bits ``k`` of each 64-bit word -> ``(2k + 1 - 2**24) / 2**24``, an
  odd multiple of ``2**-24`` in ``(-1, 1)``: exact in float32, no rounding;
- times ``sqrt(3) * std`` rounded once to float32: one IEEE multiplication,
  correctly rounded everywhere. The values are uniform with standard deviation ``std``.

The sha256 of the float32 bytes (little-endian) is stored with the shipped
weights, and ``load`` checks it.

>>> frozen_embedding(0, rows=2, width=3, std=0.08)
tensor([[ 0.0422,  0.0558, -0.0313],
        [ 0.0433,  0.0798, -0.0980]])
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch

GENERATOR = "splitmix64-uniform24-v1"  # recorded in manifests; change the name if the stream ever changes
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1, _MIX2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)
_CHUNK = 1 << 21  # values generated at a time, to bound the temporary uint64 arrays (16 MB each)


def splitmix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64's output function of each uint64 in ``x`` (wrapping arithmetic), same shape.

    >>> hex(int(splitmix64(np.array([0x9E3779B97F4A7C15], np.uint64))[0]))   # the first output for seed 0
    '0xe220a8397b1dcdaf'
    """
    x = x.astype(np.uint64)
    x = (x ^ (x >> np.uint64(30))) * _MIX1
    x = (x ^ (x >> np.uint64(27))) * _MIX2
    return x ^ (x >> np.uint64(31))


def uniform_stream(seed: int, count: int) -> np.ndarray:
    """``count`` float32 values uniform in ``(-1, 1)``, odd multiples of ``2**-24``, from ``seed``."""
    if not (isinstance(seed, (int, np.integer)) and 0 <= seed < 2**64):
        raise ValueError(f"seed={seed!r}; expected an integer in [0, 2**64)")
    key = splitmix64(np.array([seed], np.uint64) * _GOLDEN + _GOLDEN)[0]
    out = np.empty(count, np.float32)
    with np.errstate(over="ignore"):
        for start in range(0, count, _CHUNK):
            index = np.arange(start + 1, min(start + _CHUNK, count) + 1, dtype=np.uint64)
            top = (splitmix64(key + index * _GOLDEN) >> np.uint64(40)).astype(np.int64)  # 24 bits
            out[start : start + len(index)] = (2 * top + 1 - (1 << 24)).astype(np.float32) / np.float32(1 << 24)
    return out


def frozen_embedding(seed: int, rows: int, width: int, std: float) -> torch.Tensor:
    """The ``(rows, width)`` float32 embedding of ``seed``: uniform, standard deviation ``std``."""
    scale = np.float32(np.sqrt(3.0) * std)
    return torch.from_numpy((uniform_stream(seed, rows * width) * scale).reshape(rows, width))


def tensor_sha256(tensor: torch.Tensor) -> str:
    """Hex sha256 of a float32 tensor's bytes, little-endian, row-major."""
    array = tensor.detach().cpu().contiguous().numpy().astype("<f4", copy=False)
    return hashlib.sha256(array.tobytes()).hexdigest()
