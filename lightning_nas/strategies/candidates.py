"""The candidate set a surrogate scores: the whole space when it is small, else a sample around the best.

Shared by the predictor-based strategies (BO, RANK-NOSH). An enumerable space is listed and encoded
once per process and cached (never stored with the strategy state: it is rebuilt on demand).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from lightning_nas.spaces.search_space import SearchSpace
from lightning_nas.strategies.base import Strategy, arch_key

__all__ = ["CandidatePool", "one_hot"]


def one_hot(space: SearchSpace, archs: Sequence[Mapping[str, Any]]) -> torch.Tensor:
    """:meth:`SearchSpace.encode_many`, vectorised for large candidate sets: ``float32 (N, encoding_size)``.

    ``archs`` must be valid archs of ``space`` in canonical form (as proposals and enumerations are).
    """
    offsets = np.cumsum([0] + [len(d.values) for d in space])
    position = [{v: i for i, v in enumerate(d.values)} for d in space]
    index = np.array([[pos[a[d.label]] for d, pos in zip(space, position)] for a in archs], dtype=np.int64)
    x = np.zeros((len(archs), int(offsets[-1])), dtype=np.float32)
    if len(archs):
        x[np.arange(len(archs))[:, None], index + offsets[:-1]] = 1.0
    return torch.from_numpy(x)


class CandidatePool:
    """Candidates for an acquisition.

    Args:
        space: the search space.
        limit: enumerate the space when it has at most this many archs; otherwise each call draws
            ``limit`` candidates, half uniform and half one-decision mutations of the given parents.
    """

    def __init__(self, space: SearchSpace, limit: int) -> None:
        self.space, self.limit = space, limit
        self._all: tuple[list[dict[str, Any]], list[tuple], torch.Tensor, dict[tuple, int]] | None = None

    @property
    def enumerable(self) -> bool:
        return self.space.size <= self.limit

    def enumeration(self) -> tuple[list[dict[str, Any]], torch.Tensor, dict[tuple, int]]:
        """Every arch of an enumerable space, their encodings ``(S, encoding_size)`` and the position of
        each :func:`arch_key` (listed and encoded once per process: a surrogate can score the whole
        space in one pass and pick any subset by index, without re-encoding).

        Raises:
            ValueError: the space has more than ``limit`` archs.
        """
        if not self.enumerable:
            raise ValueError(f"the space has {self.space.size} archs, more than the candidate limit {self.limit}: "
                             "it is sampled, not enumerated")
        if self._all is None:
            archs = list(self.space.enumerate())
            keys = [arch_key(a) for a in archs]
            self._all = (archs, keys, one_hot(self.space, archs), {k: i for i, k in enumerate(keys)})
        archs, _, x, index = self._all
        return archs, x, index

    def available(self, exclude: Collection[tuple] = ()) -> np.ndarray:
        """Positions in :meth:`enumeration` of the archs whose key is not in ``exclude``, ascending
        (``O(len(exclude))``, not a pass over the space)."""
        archs, _, index = self.enumeration()
        keep = np.ones(len(archs), dtype=bool)
        keep[[index[k] for k in exclude if k in index]] = False
        return np.flatnonzero(keep)

    def __call__(self, strategy: Strategy, exclude: Collection[tuple] = (),
                 parents: Sequence[Mapping[str, Any]] = ()) -> tuple[list[dict[str, Any]], torch.Tensor]:
        """Candidates whose :func:`arch_key` is not in ``exclude``, and their encodings ``(N, encoding_size)``.
        Random draws use ``strategy``'s generator."""
        if self.enumerable:
            archs, x, _ = self.enumeration()
            keep = self.available(exclude)
            return [archs[i] for i in keep], x[torch.from_numpy(keep)]
        pool: dict[tuple, dict[str, Any]] = {}
        for i in range(2 * self.limit):
            if len(pool) >= self.limit:
                break
            arch = strategy.mutate(parents[i % len(parents)]) if parents and i % 2 else strategy.random_arch()
            key = arch_key(arch)
            if key not in exclude:
                pool[key] = arch
        archs = list(pool.values())
        return archs, one_hot(self.space, archs)
