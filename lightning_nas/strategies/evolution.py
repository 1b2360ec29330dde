"""Regularised (aging) evolution (Real et al., 2019) as an ask/tell strategy.

The first ``population`` proposals are random. After that, each proposal is the mutation (one
decision changed) of the best of ``sample`` members drawn uniformly from the population, and the
population keeps only the ``population`` most recent results (the oldest dies). Comparisons follow
Deb's rules (:func:`~lightning_nas.strategies.base.rank_key`), so constraints never stall the search.
Asynchronous: a proposal only needs the results told so far.

:func:`lightning_nas.solvers.evolution.solve_evolution` is the same algorithm over a BINAS table,
vectorised on index arrays; this one works on arch dicts through any evaluator.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from lightning_nas.strategies.base import Observation, Proposal, Strategy, arch_key, rank_key

__all__ = ["RegularizedEvolution"]


class RegularizedEvolution(Strategy):
    """Aging evolution.

    Args:
        space: see :class:`~lightning_nas.strategies.base.Strategy`.
        seed: see :class:`~lightning_nas.strategies.base.Strategy`.
        constraints: see :class:`~lightning_nas.strategies.base.Strategy`.
        cost_model: see :class:`~lightning_nas.strategies.base.Strategy`.
        population: population size (at least 2).
        sample: tournament size, in ``[1, population]``.
        max_tries: mutations tried per proposal to find an arch not yet proposed (and, with a cost
            model, predicted feasible); after that the last (least violating) candidate is used.
    """

    def __init__(self, space, *, seed: int = 0, constraints=(), cost_model=None, population: int = 50,
                 sample: int = 10, max_tries: int = 20) -> None:
        super().__init__(space, seed=seed, constraints=constraints, cost_model=cost_model)
        for name, value, low in (("population", population, 2), ("sample", sample, 1), ("max_tries", max_tries, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"`{name}` must be an int >= {low}, got {value!r}")
        if sample > population:
            raise ValueError(f"`sample` ({sample}) must not exceed `population` ({population})")
        self.population_size, self.sample, self.max_tries = population, sample, max_tries
        self.population: deque[Observation] = deque(maxlen=population)
        self.seen: set[tuple] = set()
        self.asked = 0

    def ask(self, n: int = 1) -> list[Proposal]:
        out = []
        for _ in range(n):
            if len(self.seen) >= self.space.size:
                break
            if self.asked < self.population_size or not self.population:
                arch = self._candidate(lambda: self.random_arch())
            else:
                members = list(self.population)
                drawn = self.rng.choice(len(members), size=min(self.sample, len(members)), replace=False)
                parent = max((members[int(i)] for i in drawn), key=lambda o: rank_key(o.value, o.violation))
                arch = self._candidate(lambda: self.mutate(parent.arch))
            self.seen.add(arch_key(arch))
            self.asked += 1
            out.append(Proposal(arch))
        return out

    def _candidate(self, draw) -> dict[str, Any]:
        best = self.steered_draw(draw, self.seen, self.max_tries)
        if best is not None:
            return best
        # Every mutation tried was already proposed: an unseen random arch keeps the search moving.
        for _ in range(10 * self.max_tries):
            arch = self.random_arch()
            if arch_key(arch) not in self.seen:
                return arch
        return next(a for a in self.space.enumerate() if arch_key(a) not in self.seen)

    def tell(self, observation: Observation) -> None:
        super().tell(observation)
        self.population.append(observation)
