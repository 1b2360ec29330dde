"""RANK-NOSH: a pairwise-ranking predictor driving non-uniform successive halving.

Accuracies after different numbers of epochs are not comparable, so the predictor learns a *ranking*:
an MLP score ``s(x)`` trained with the logistic pairwise loss ``softplus(−(s(a) − s(b)))`` on pairs
of archs evaluated at the *same* fidelity, ``a`` the better of the two (RankNet). Every round:

1. the predictor is refitted on all pairs;
2. ``new_per_round`` new candidates enter the lowest level, the best-scored unevaluated archs
   (uniform draws in the first round);
3. the pyramid is restored: level ``k + 1`` may hold ``⌈|level k| / eta⌉`` archs; the free places go to
   the paused archs of level ``k`` with the highest predicted score, whose training is *resumed* up to
   the next level's epochs. Nothing is discarded: a paused arch is promoted in a later round when the
   predictor (which improves as results arrive) ranks it higher.

The thesis (Wang, 2021) states only the principles (pyramid, resume, pairwise ranking loss); the rest
is ours: the RankNet loss on same-fidelity pairs, the ``⌈n/eta⌉`` pyramid with promotion by predicted
score, an ensemble-averaged score (``members`` MLPs, the same batched network as the BO surrogate),
and candidates taken from the whole space when it has at most ``candidates`` archs (sampled plus
mutations of the best otherwise), and the stall fallback shared with BO (``stall_window``, ``explore``):
the predictor's ranking never goes flat, but it can keep feeding one family, so after
``stall_window`` equivalent evaluations without a better top-level result part of each round's entries
are trust-region moves and the picks of an exploratory stream (``explore_with``: an independent
GP-UCB search on a pairwise-interaction kernel; ``"disagreement"``: the members' largest std), and the
same share of each level's promotions goes to the paused archs with the best *measured* results there
(plain successive halving), which a predictor fitted on the stuck family may rank low.
Zero-cost proxies are not used to seed the pool. With an evaluator that resumes training
(``resumes = True``) a promotion is charged only its extra epochs.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from lightning_nas.seeding import derive_seed
from lightning_nas.strategies.base import BatchStrategy, Proposal, arch_key
from lightning_nas.strategies.candidates import CandidatePool, one_hot
from lightning_nas.strategies.ensemble import DeepEnsemble, _adam
from lightning_nas.strategies.exploration import (EXPLORERS, best_results_at, check_stall_arguments,
                                                  evaluations_since_improvement, hamming_to, select_batch,
                                                  stream_explorer)

__all__ = ["RankNOSH", "pairwise_ranking_loss"]


def pairwise_ranking_loss(scores: torch.Tensor, better: torch.Tensor, worse: torch.Tensor) -> torch.Tensor:
    """Mean RankNet loss ``softplus(−(s[better] − s[worse]))`` over pairs.

    Args:
        scores: ``(..., N)`` scores of N archs (leading dims, e.g. ensemble members, are averaged).
        better: ``(P,)`` indices: arch ``better[i]`` measured above arch ``worse[i]``.
        worse: ``(P,)`` indices, paired with ``better``.
    """
    return F.softplus(-(scores[..., better] - scores[..., worse])).mean()


class RankNOSH(BatchStrategy):
    """Ranking-predictor-guided non-uniform successive halving (see the module docstring).

    Args:
        space: see :class:`~lightning_nas.strategies.base.Strategy`.
        seed: see :class:`~lightning_nas.strategies.base.Strategy`.
        constraints: see :class:`~lightning_nas.strategies.base.Strategy`.
        cost_model: see :class:`~lightning_nas.strategies.base.Strategy`.
        levels: ascending fidelities (epochs) of the pyramid, e.g. ``(12, 200)`` on NAS-Bench-201.
        eta: ratio of sizes between consecutive levels.
        new_per_round: new candidates entering the lowest level each round.
        candidates: enumerate the space when it has at most this many archs, else sample this many.
        members: the score network's ensemble size (the members' scores are averaged).
        trunk: the score network's trunk widths.
        branch: the score network's branch width.
        steps: predictor training steps per round.
        lr: predictor learning rate.
        pairs_per_step: arch pairs per predictor training step.
        stall_window: equivalent full evaluations without a better top-level result after which an
            ``explore`` share of each round's entries are trust-region moves around the incumbent and
            the picks of ``explore_with`` (see :mod:`~lightning_nas.strategies.exploration`), and an
            ``explore`` share (rounded up) of each level's promotions goes by measured result;
            ``None``: never.
        explore: the exploratory share of the entries (and promotions) while stalled, in ``[0, 1]``.
        explore_with: what fills the stalled entries that are not trust-region moves: ``"interaction"``
            (a pairwise-interaction GP's upper confidence bound) or ``"disagreement"`` (see
            :class:`~lightning_nas.strategies.bo.BayesianOptimization`).
    """

    def __init__(self, space, *, seed: int = 0, constraints=(), cost_model=None, levels: Sequence[float] = (12, 200),
                 eta: float = 3.0, new_per_round: int = 8, candidates: int = 20_000, members: int = 3,
                 trunk: Sequence[int] = (64, 64), branch: int = 32, steps: int = 150, lr: float = 5e-3,
                 pairs_per_step: int = 64, stall_window: float | None = 16.0, explore: float = 0.5,
                 explore_with: str = "interaction") -> None:
        super().__init__(space, seed=seed, constraints=constraints, cost_model=cost_model)
        if explore_with not in EXPLORERS:
            raise ValueError(f"`explore_with` must be one of {EXPLORERS}, got {explore_with!r}")
        self.explore_with = explore_with
        levels = tuple(float(x) for x in levels)
        if not levels or not all(0 < x < math.inf for x in levels) or any(b <= a for a, b in zip(levels, levels[1:])):
            raise ValueError(f"`levels` must be positive, strictly ascending fidelities, got {levels!r}")
        if not (isinstance(lr, (int, float)) and 0 < lr < math.inf):
            raise ValueError(f"`lr` must be a finite number > 0, got {lr!r}")
        if not (isinstance(eta, (int, float)) and 1 < eta < math.inf):
            raise ValueError(f"`eta` must be a number > 1, got {eta!r}")
        for name, value in (("new_per_round", new_per_round), ("candidates", candidates), ("members", members),
                            ("steps", steps), ("pairs_per_step", pairs_per_step)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"`{name}` must be an int >= 1, got {value!r}")
        stall_window, explore = check_stall_arguments(stall_window, explore)
        self.stall_window, self.explore = stall_window, explore
        self.explorations: list[tuple[int, str]] = []  # (round, "stalled") of rounds with exploratory entries
        self.stream: set[tuple] = set()  # keys of the archs the exploratory stream entered
        self.levels, self.eta, self.new_per_round, self.candidates = levels, float(eta), new_per_round, candidates
        self.members, self.trunk, self.branch = members, tuple(trunk), branch
        self.steps, self.lr, self.pairs_per_step = steps, lr, pairs_per_step
        self.level_of: dict[tuple, int] = {}  # arch key -> highest level asked
        self.archs: dict[tuple, dict[str, Any]] = {}
        self.fit_seconds: list[float] = []
        self._candidates = CandidatePool(space, candidates)

    #: Besides the base's: the candidate cache (rebuilt on demand).
    config_attributes = BatchStrategy.config_attributes + ("_candidates",)

    # -- one round -----------------------------------------------------------------------------
    def _next_batch(self) -> list[Proposal]:
        predict = self._fit() if self.history else None
        score = None if predict is None else (lambda archs: predict(archs).mean(0))
        batch: list[Proposal] = []
        pool = self._pool()
        if pool:
            if predict is None:
                chosen = [pool[int(i)] for i in self.rng.permutation(len(pool))[: self.new_per_round]]
            else:
                chosen = [pool[int(i)] for i in self._entries(pool, predict)]
            batch += [self._propose(a, 0) for a in chosen]
        # Restore the pyramid, counting this round's entries; an arch whose evaluation failed has left it.
        failed = {arch_key(f.arch) for f in self.failures}
        stalled = self._stalled()
        for k in range(len(self.levels) - 1):
            live = {key: lvl for key, lvl in self.level_of.items() if key not in failed}
            at_k = [key for key, lvl in live.items() if lvl >= k]
            above = sum(1 for lvl in live.values() if lvl >= k + 1)
            free = math.ceil(len(at_k) / self.eta) - above
            measured = best_results_at(self.history, self.levels[k])
            paused = [key for key, lvl in live.items() if lvl == k and key in measured]
            if free <= 0 or not paused:
                continue
            results = np.array([measured[key].value for key in paused])
            picks: list[int] = []
            if score is not None and stalled:
                # Plain successive halving for an explore share of the places: the best measured at this
                # level. A predictor fitted while the search is stuck in one family can rank low the
                # very arch whose result says it leads elsewhere (on NB201 CIFAR-100 the best 12-epoch
                # result of a stuck run, one edit from the optimum, was never promoted).
                picks = [int(i) for i in np.argsort(-results, kind="stable")[:math.ceil(self.explore * free)]]
            values = results if score is None else score([self.archs[key] for key in paused])
            picks += [int(i) for i in np.argsort(-values, kind="stable") if int(i) not in picks][:free - len(picks)]
            for i in picks:
                batch.append(self._propose(self.archs[paused[i]], k + 1))
        return batch

    def _stalled(self) -> bool:
        """No better top-level result for ``stall_window`` equivalent evaluations."""
        return self.stall_window is not None and \
            evaluations_since_improvement(self.history, self.levels[-1]) >= self.stall_window

    def _entries(self, pool: list[dict[str, Any]], predict) -> np.ndarray:
        """Indices of the pool archs entering the lowest level: the best-scored, or, once the best
        top-level result has not improved for ``stall_window`` equivalent evaluations, an ``explore``
        share of trust-region moves and the exploratory stream's (or disagreement) picks
        (:func:`select_batch`)."""
        members = predict(pool)
        mean = members.mean(0)
        feasible = np.array([self.predicted_violation(a) <= 0.0 for a in pool]) if self.constraints else None
        stalled = self._stalled()
        incumbent = self.best() if stalled else None
        distance, explorer = None, None
        if incumbent is not None:
            x = one_hot(self.space, pool).numpy()
            distance = hamming_to(x, one_hot(self.space, [incumbent.arch])[0].numpy())
            if self.explore_with == "interaction":
                explorer = stream_explorer(self.space, self.history, self.new_per_round, self.stream, pool, x)
        chosen, reason = select_batch(mean, mean, members.std(0), self.new_per_round, distance=distance,
                                      feasible=feasible, stalled=stalled, explore=self.explore, explorer=explorer)
        if reason is not None:
            self.explorations.append((self.batches, reason))
        return chosen

    def _propose(self, arch: dict[str, Any], level: int) -> Proposal:
        key = arch_key(arch)
        self.level_of[key] = level
        self.archs[key] = dict(arch)
        return Proposal(dict(arch), self.levels[level])

    def _pool(self) -> list[dict[str, Any]]:
        parents = [o.arch for o in sorted(self.history, key=lambda o: o.value, reverse=True)[:10]]
        return self._candidates(self, self.level_of.keys(), parents)[0]

    # -- the ranking predictor -----------------------------------------------------------------
    def _pairs(self) -> tuple[list[dict[str, Any]], torch.Tensor, torch.Tensor]:
        archs: dict[tuple, int] = {}
        ordered: list[dict[str, Any]] = []
        better, worse = [], []
        for fidelity in self.levels:
            at = [o for o in self.history if o.fidelity == fidelity]
            for o in at:
                if arch_key(o.arch) not in archs:
                    archs[arch_key(o.arch)] = len(ordered)
                    ordered.append(o.arch)
            for a in at:
                for b in at:
                    if a.value > b.value:
                        better.append(archs[arch_key(a.arch)])
                        worse.append(archs[arch_key(b.arch)])
        return ordered, torch.tensor(better, dtype=torch.long), torch.tensor(worse, dtype=torch.long)

    def _fit(self):
        """Train the score network on same-fidelity pairs; returns ``predict(archs)``, the members'
        scores ``(M, N)``."""
        start = time.perf_counter()
        archs, better, worse = self._pairs()
        model = DeepEnsemble(self.space.encoding_size, 1, members=self.members, trunk=self.trunk, branch=self.branch,
                             seed=derive_seed(self.seed, 6, self.batches))
        x = one_hot(self.space, archs)
        if len(better):
            generator = torch.Generator().manual_seed(derive_seed(self.seed, 7, self.batches))
            optimizer = _adam(model.parameters(), self.lr)
            model.train()
            for _ in range(self.steps):
                pick = torch.randint(len(better), (self.pairs_per_step,), generator=generator)
                loss = pairwise_ranking_loss(model(x)[..., 0], better[pick], worse[pick])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
        model.eval()
        self.fit_seconds.append(time.perf_counter() - start)

        def predict(candidates: Sequence[dict[str, Any]]) -> np.ndarray:
            return model.predict(one_hot(self.space, candidates), 0).double().numpy()

        return predict
