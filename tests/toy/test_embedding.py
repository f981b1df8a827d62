"""The frozen embedding's generator, against SplitMix64's published outputs and exact integer arithmetic."""

from fractions import Fraction

import numpy as np
import pytest
import torch

from anatomy.toy.embedding import frozen_embedding, splitmix64, tensor_sha256, uniform_stream

MASK = (1 << 64) - 1
GOLDEN = 0x9E3779B97F4A7C15


def reference_splitmix64(state: int) -> int:
    """Vigna's splitmix64.c ``next()`` on an already advanced state, in Python's unbounded integers."""
    z = state & MASK
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
    return z ^ (z >> 31)


def test_splitmix64_gives_the_published_stream_of_seed_0():
    """The first three outputs of splitmix64.c seeded with 0 (a widely reproduced test vector)."""
    states = np.array([GOLDEN * k & MASK for k in (1, 2, 3)], np.uint64)
    assert [int(x) for x in splitmix64(states)] == [0xE220A8397B1DCDAF, 0x6E789E6AA1B965F4, 0x06C45D188009454F]


@pytest.mark.parametrize("seed", [0, 1, 2**40 + 7])
def test_uniform_stream_equals_exact_integer_arithmetic(seed):
    """The float32 values equal the exact rational (2k + 1 - 2**24) / 2**24 of the documented recipe."""
    key = reference_splitmix64((seed * GOLDEN + GOLDEN) & MASK)
    values = uniform_stream(seed, 500)
    for i, value in enumerate(values):
        top = reference_splitmix64((key + (i + 1) * GOLDEN) & MASK) >> 40
        assert Fraction(float(value)) == Fraction(2 * top + 1 - (1 << 24), 1 << 24)


def test_the_stream_is_the_same_whatever_the_chunking(monkeypatch):
    import anatomy.toy.embedding as embedding

    whole = uniform_stream(3, 10_000)
    monkeypatch.setattr(embedding, "_CHUNK", 999)
    assert np.array_equal(whole, uniform_stream(3, 10_000))


def test_frozen_embedding_has_the_asked_spread_and_a_stable_hash():
    table = frozen_embedding(0, rows=4096, width=128, std=0.08)
    assert table.shape == (4096, 128) and table.dtype == torch.float32
    assert table.std().item() == pytest.approx(0.08, rel=0.01) and table.abs().max() < 0.08 * 3**0.5
    assert tensor_sha256(table) == tensor_sha256(frozen_embedding(0, rows=4096, width=128, std=0.08))
    assert tensor_sha256(table) != tensor_sha256(frozen_embedding(1, rows=4096, width=128, std=0.08))


@pytest.mark.parametrize("seed", [-1, 2**64, 1.5, "0"])
def test_bad_seeds_are_named(seed):
    with pytest.raises(ValueError, match="seed="):
        uniform_stream(seed, 3)
