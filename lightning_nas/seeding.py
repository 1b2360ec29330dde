"""Deterministic seeds from ``(seed, key...)``: the same on every process, run and platform; and
bitwise-reproducible CPU matrix products for a run to repeat itself (:func:`reproducible_blas`)."""

from __future__ import annotations

import os

import numpy as np
import torch

__all__ = ["MKL_REPRODUCIBLE", "derive_generator", "derive_seed", "reproducible_blas"]

#: Intel MKL's conditional numerical reproducibility setting that :func:`reproducible_blas` asks for.
MKL_REPRODUCIBLE = "AUTO,STRICT"


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


def reproducible_blas() -> bool:
    """Ask Intel MKL, torch's CPU BLAS on x86, for bitwise-reproducible results: sets
    ``MKL_CBWR=AUTO,STRICT`` (:data:`MKL_REPRODUCIBLE`) unless ``MKL_CBWR`` is already set.

    Why: with more than one thread, MKL's rounding of some products depends on where their operands
    lie in memory, which differs from process to process. The BINAS demo's supernet, trained twice
    with the same seed on 2 threads, differed from the 306th step on (a 1×1 convolution's input
    gradient on a batch of 4, the last of an epoch) in 2 of 4 processes; with this setting, 4 of 4
    agreed bit for bit. Results still depend on the number of threads (other kernels split their
    sums by thread).

    MKL reads the variable once, at its first call in the process: call this before any tensor
    arithmetic (``lightning-nas`` does, first thing), or set ``MKL_CBWR`` in the environment.

    Returns:
        Whether this call set it (``False``: it was set before, by the user or an earlier call).
    """
    if "MKL_CBWR" in os.environ:
        return False
    os.environ["MKL_CBWR"] = MKL_REPRODUCIBLE
    return True
