"""SearchSpace: sampling, enumeration, validation and one-hot encoding."""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from lightning_nas.spaces import Decision, SearchSpace

SPACE = SearchSpace(
    [
        Decision("w", (8, 16, 32), 8),
        Decision("op", ("conv", "pool"), "conv"),
        Decision("in", ((0, 1), (0, 2), (1, 2)), (0, 1)),
    ]
)


def test_size_and_enumeration_agree():
    archs = list(SPACE.enumerate())
    assert SPACE.size == len(archs) == 18
    assert len({json.dumps(a) for a in archs}) == 18
    assert all(SPACE.contains(a) for a in archs)
    with pytest.raises(ValueError, match="more than `limit`=10"):
        list(SPACE.enumerate(limit=10))


@given(st.integers(0, 2**40))
def test_sampling_is_a_pure_function_of_the_seed(seed):
    assert SPACE.sample(seed) == SPACE.sample(seed) == SPACE.sample(torch.Generator().manual_seed(seed))
    assert SPACE.contains(SPACE.sample(seed))


def test_sampling_is_uniform():
    draws = SPACE.sample_indices(30_000, 0)
    for label, n in (("w", 3), ("op", 2), ("in", 3)):
        freq = torch.bincount(draws[label], minlength=n).float() / 30_000
        assert torch.allclose(freq, torch.full((n,), 1 / n), atol=0.015)


@given(st.integers(0, 17))
def test_encode_decode_round_trip(i):
    arch = list(SPACE.enumerate())[i]
    vector = SPACE.encode(arch)
    assert vector.shape == (SPACE.encoding_size,) == (8,)
    assert vector.sum() == len(SPACE)
    assert SPACE.decode(vector) == arch
    assert SPACE.encoding_names()[int(vector[:3].argmax())] == ("w", arch["w"])
    # JSON turns tuples into lists; those are the same architecture.
    assert torch.equal(SPACE.encode(json.loads(json.dumps(arch))), vector)


def test_named_architectures():
    assert SPACE.default() == {"w": 8, "op": "conv", "in": (0, 1)}
    assert SPACE.largest() == {"w": 32, "op": "pool", "in": (1, 2)}
    assert SPACE.smallest() == {"w": 8, "op": "conv", "in": (0, 1)}


@pytest.mark.parametrize(
    ("arch", "message"),
    [
        ({"w": 8, "op": "conv"}, r"missing label 'in'; allowed values: \[\[0, 1\], \[0, 2\], \[1, 2\]\]"),
        ({"w": 8, "op": "conv", "in": [0, 1], "x": 1}, r"unknown label\(s\) \['x'\]"),
        ({"w": 9, "op": "conv", "in": [0, 1]}, r"value 9 for label 'w' is not a candidate; allowed values: \[8, 16, 32\]"),
        (["w"], r"must be a dict"),
    ],
)
def test_validation_errors(arch, message):
    with pytest.raises(ValueError, match=message):
        SPACE.validate(arch)
    assert not SPACE.contains(arch)


def test_duplicate_labels_rejected():
    with pytest.raises(ValueError, match="labels must be unique"):
        SearchSpace([Decision("a", (1,), 1), Decision("a", (2,), 2)])
