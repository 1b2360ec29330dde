"""Deterministic seeds from ``(seed, key...)``: the same on every process, run and platform."""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["derive_seed", "derive_generator"]


def derive_seed(seed: int, *keys: int) -> int:
    """A 63-bit seed mixed from ``seed`` and integer ``keys`` (e.g. a stream id and a step).

    Uses NumPy's ``SeedSequence`` hashing, so nearby keys give unrelated streams and the result
    never depends on Python's per-process string hashing.
    """
    if any(int(k) < 0 for k in (seed, *keys)):
        raise ValueError(f"seed and keys must be non-negative ints, got {(seed, *keys)!r}")
    state = np.random.SeedSequence([int(seed), *map(int, keys)]).generate_state(2, dtype=np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1]))


def derive_generator(seed: int, *keys: int) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded with :func:`derive_seed`."""
    return torch.Generator().manual_seed(derive_seed(seed, *keys))
