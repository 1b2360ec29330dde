"""Random search: uniform proposals without repeats, steered into the constraints when a cost model
predicts them."""

from __future__ import annotations

from typing import Any

from lightning_nas.strategies.base import Proposal, Strategy, arch_key

__all__ = ["RandomSearch"]


class RandomSearch(Strategy):
    """Uniformly random archs, each proposed at most once.

    With a ``cost_model`` and constraints, each proposal is the first of up to ``max_tries`` draws
    that the cost model predicts feasible, else the least violating of them (never an endless loop).
    Once every arch of a small space was proposed, :meth:`ask` returns nothing.

    Args:
        space: see :class:`~lightning_nas.strategies.base.Strategy`.
        seed: see :class:`~lightning_nas.strategies.base.Strategy`.
        constraints: see :class:`~lightning_nas.strategies.base.Strategy`.
        cost_model: see :class:`~lightning_nas.strategies.base.Strategy`.
        max_tries: draws per proposal to find an unseen (and predicted feasible) arch.
    """

    def __init__(self, space, *, seed: int = 0, constraints=(), cost_model=None, max_tries: int = 100) -> None:
        super().__init__(space, seed=seed, constraints=constraints, cost_model=cost_model)
        if isinstance(max_tries, bool) or not isinstance(max_tries, int) or max_tries < 1:
            raise ValueError(f"`max_tries` must be an int >= 1, got {max_tries!r}")
        self.max_tries = max_tries
        self.seen: set[tuple] = set()

    def ask(self, n: int = 1) -> list[Proposal]:
        out = []
        for _ in range(n):
            arch = self._draw()
            if arch is None:
                break
            self.seen.add(arch_key(arch))
            out.append(Proposal(arch))
        return out

    def _draw(self) -> dict[str, Any] | None:
        if len(self.seen) >= self.space.size:
            return None
        best = self.steered_draw(self.random_arch, self.seen, self.max_tries)
        if best is None and self.space.size <= 100_000:
            # A nearly exhausted small space: take an unseen arch directly rather than fail to find one.
            unseen = [a for a in self.space.enumerate() if arch_key(a) not in self.seen]
            best = unseen[int(self.rng.integers(len(unseen)))] if unseen else None
        return best
