"""Bayesian optimisation with a deep-ensemble surrogate (Ouertatani's BO thesis, Ch. 5).

Each iteration retrains the :class:`~lightning_nas.strategies.ensemble.DeepEnsemble` on every result
so far, scores the candidate architectures with an acquisition over the members' predictions and
proposes the best-scoring batch. Options, all from the thesis:

- **Pretraining** on zero-cost metrics (``pretrain_metrics``: columns of the cost model such as
  parameters, FLOPs, latency) of ``pretrain_archs`` unevaluated architectures, all metrics at once
  (one head per metric on the shared trunk). The search then starts every refit from the pretrained
  weights and trains the trunk together with fresh fidelity heads. Costly zero-cost proxies
  (:mod:`lightning_nas.proxies`: synflow, NASWOT, jacob_cov), computed on a few archs, go beside
  the free cost columns with ``pretrain_also`` (a metric the cost model gives as NaN for an arch is
  missing there). On both NB201 tables (20 seeds, ``benchmarks/blackbox_nb201.py --proxy-cache``:
  600 cached cells beside 2000 draws) that lowered the mean evaluations to the optimum from 50.8 to
  42.5 (CIFAR-10) and from 40.4 to 39.3 (CIFAR-100) against the cost columns alone.
- **Acquisition**: Monte-Carlo probability of improvement over the members (``"pi"``, default;
  ties broken by the ensemble mean), Monte-Carlo expected improvement (``"ei"``) or mean +
  ``ucb_beta`` · std (``"ucb"``). See :func:`acquisition`.
- **Candidates**: every unevaluated arch when the space has at most ``candidates`` archs; otherwise
  ``candidates`` archs, half uniform draws and half one-decision mutations of the best results.
- **Multi-fidelity** (``fidelities=(low, high)``): every iteration proposes ``p`` low-fidelity
  evaluations, and every ``f``-th iteration also ``q`` high-fidelity ones (the thesis: p=5, q=3, f=10).
  One head per fidelity. Both kinds are chosen by the high-fidelity head against the best
  high-fidelity value, falling back to the low-fidelity head before any high-fidelity result (ours;
  the thesis leaves it open). High-fidelity proposals may re-evaluate archs seen at low fidelity.

Choices of ours where the thesis is silent:

- **Targets on a rank scale** (``targets="rank"``, default): each fidelity head trains on the
  normal scores of its observations (:func:`normal_scores`), not on standardised accuracies.
  NB201's validation accuracies have a long tail of failed archs (~10 %), so after plain
  standardisation the top archs, which are the ones the acquisition must tell apart, sit within a
  few hundredths of a unit of each other, far inside the Huber loss's quadratic zone; the members
  then barely separate them. Normal scores spread the observations evenly, keep the order (so the
  best arch and PI's comparison with the best are unchanged). This was the change that mattered
  in our NB201 runs (BO + pretraining, 20 seeds: 67.8 → 45.3 mean evaluations to the optimum;
  ``benchmarks/blackbox_nb201.py``). That choice, and the cold refits below, were made on the
  CIFAR-10 table alone; RESULTS.md reports every dataset run since, CIFAR-100 included, with the
  same settings.
  ``targets="standard"`` keeps plain standardisation.
- **Refits** start from the pretrained (or a fresh, iteration-seeded) initialisation by default,
  so the members keep the pretraining prior and their independence, the strategy's state is its
  results and the surrogate never needs storing. ``warm_start=True`` instead continues from the
  previous refit's weights (kept in the strategy's state, so a resumed search is identical): a
  few steps per refit then suffice, which is what makes the multi-fidelity schedule (a refit
  every ``p`` evaluations) affordable. In mono-fidelity NB201 runs cold refits searched better
  (BO + pretraining, seeds 0-5: mean 59 evaluations warm vs 47 cold; rechecked on CIFAR-10 with
  100 warm steps per refit and the previous flat-PI rule: 63.2 warm over 16 seeds vs 55.3 cold
  over 20), hence the default.
- **Flat acquisition and stalls** (``stall_window``, ``explore``): MC-PI ranks only the candidates
  some member predicts above the best result; the places it cannot fill (it is 0 everywhere once no
  member does, the normal state of members that under-predict the top of their data) go to each
  member's probability of beating its *own* prediction of the incumbent (shrinkage-immune), then to
  the ensemble mean, PI's tie-break. After ``stall_window`` equivalent evaluations without a better
  full-fidelity result, an ``explore`` share of each batch goes half to trust-region moves (the
  unevaluated archs nearest the incumbent) and half to an exploratory stream (an independent GP-UCB
  search on a pairwise-interaction kernel that learns only from the random start and its own
  results, so the stuck family does not steer it) or, when pretrained and every refit restarts from
  the pretrained weights, to the candidates the members disagree on most (``explore_with="auto"``;
  :func:`~lightning_nas.strategies.exploration.select_batch` with ``flat="exploit"``); with
  ``fidelities``, the same share (rounded up) of the high-fidelity places goes first to the archs
  with the best low-fidelity results not yet evaluated high (successive halving's promotion, which a
  stuck surrogate can skip: see :meth:`_best_measured`). That prior is
  what informs the disagreement outside the stuck family; warm-started refits (the multi-fidelity
  schedule's) keep it only as far as the data since let them. Measured on both NB201 tables (20
  seeds, CIFAR-10 / CIFAR-100): with cold pretrained refits the stream did not help (BO +
  pretraining 50.8 / 40.4 → 53.1 / 40.0); with warm ones it did (BO MF + pretraining 36.2 / 38.2 →
  32.5 / 34.4, worst seed 130 → 70 / 120 → 88; see :mod:`~lightning_nas.strategies.exploration`).
  An earlier version also made every place a flat PI left exploratory; on both NB201 tables that cost
  evaluations (BO + pretraining, 20 seeds, CIFAR-10 / CIFAR-100: 55.3 / 49.0 against 51.1 / 39.4;
  see :mod:`~lightning_nas.strategies.exploration`).
- **Speed**: the ensemble's refits use a hand-written gradient and an in-place Adam, their step loop
  compiled by TorchScript (the same operators, the same bits, less Python per call; opt-in: ATen's
  fused Adam kernel, ``fused_adam``, and hard-swish blocks instead of SiLU, ``activation``; SiLU's
  exponential is a third of the time of scoring the 15,625 NB201 cells every iteration), an
  enumerable space is scored once per iteration (candidates and observed archs by position), a
  batch is picked by partial sorts (:func:`~lightning_nas.strategies.exploration.lexsort_top`), and
  a refit that loads its weights (pretrained or warm) reuses one module instead of initialising a
  new one; see :mod:`~lightning_nas.strategies.ensemble`.
- Targets standardised per head (after the rank transform, if any); ``initial`` uniform proposals
  before the first fit; candidates predicted infeasible by the cost model are dropped when any
  feasible one remains.

Batch-synchronous: a new batch is computed once every proposal of the previous one has a result.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from lightning_nas.seeding import derive_seed
from lightning_nas.strategies.base import BatchStrategy, Proposal, arch_key
from lightning_nas.strategies.candidates import CandidatePool, one_hot
from lightning_nas.strategies.ensemble import DeepEnsemble, check_activation, fit_ensemble
from lightning_nas.strategies.exploration import (EXPLORERS, best_results_at, check_stall_arguments,
                                                  evaluations_since_improvement, hamming_to, normal_scores_np,
                                                  select_batch, stream_explorer)

__all__ = ["ACQUISITIONS", "BayesianOptimization", "TARGET_SCALES", "acquisition", "normal_scores", "pretraining_targets"]

ACQUISITIONS = ("pi", "ei", "ucb")
TARGET_SCALES = ("standard", "rank")


def normal_scores(values: torch.Tensor) -> torch.Tensor:
    """Rank-based normal scores ``Φ⁻¹((rank + 0.5) / N)`` of ``values`` ``(N,)`` (ties share their mean rank),
    float32 ``(N,)``.

    A monotone map, so which arch is best is unchanged, but every target becomes standard-normal
    whatever its distribution: the long tail of failed archs no longer compresses the top of the
    range into a sliver of the Huber loss's unit scale.

    One implementation serves the surrogate and the exploratory stream: this is
    :func:`~lightning_nas.strategies.exploration.normal_scores_np` (float64, SciPy's ``ndtri``) rounded
    to float32. The scores depend only on ``N`` and the ranks (multiples of 0.5), so that could be
    checked exhaustively against the former torch twin (``torch.special.ndtri`` in float64, then
    float32): identical for every input with ``N`` ≤ 5000 (the float64 values differ in the last bit
    for ~16 % of the quantiles, never after rounding to float32), so the searches are unchanged.
    """
    scores = normal_scores_np(values.detach().cpu().double().numpy())
    return torch.from_numpy(scores).float()


def pretraining_targets(values: torch.Tensor) -> torch.Tensor:
    """Zero-cost metric values ``(N, K)`` as pretraining targets: NaN stays missing, ``±inf`` becomes a
    finite extreme.

    A proxy's −inf is a verdict, not a gap: NASWOT's singular kernel or jacob_cov's constant Jacobian
    mark a network whose inputs cannot be told apart, i.e. among the worst. Dropping it would hide that
    from the surrogate, and the number itself cannot be fitted, so −inf becomes the column's finite
    minimum minus one (population) std of its finite values, +inf the maximum plus one std. A column
    without two distinct finite values uses a step of 1. A column with no finite value stays missing.

    Returns:
        ``(N, K)`` float64, finite or NaN.
    """
    out = values.double().clone()
    for k in range(out.shape[1]):
        column = out[:, k]
        finite = column[torch.isfinite(column)]
        if len(finite) == 0:
            column[torch.isinf(column)] = math.nan
            continue
        std = float(finite.std(unbiased=False)) if len(finite) > 1 else 0.0
        step = std if std > 0 else 1.0
        column[column == -math.inf] = float(finite.min()) - step
        column[column == math.inf] = float(finite.max()) + step
    return out


def acquisition(predictions: torch.Tensor, best: float, kind: str = "pi", ucb_beta: float = 1.0) -> torch.Tensor:
    """Acquisition values of candidates from ensemble predictions ``(M, C)`` (larger is better).

    - ``"pi"``: ``(1/M) Σ_m 1[f_m(x) > best]``, the Monte-Carlo probability of improvement.
    - ``"ei"``: ``(1/M) Σ_m max(f_m(x) − best, 0)``, the Monte-Carlo expected improvement.
    - ``"ucb"``: ``mean_m f_m(x) + ucb_beta · std_m f_m(x)`` (population std).

    Returns:
        ``(C,)`` float64 values.
    """
    predictions = predictions.double()
    if kind == "pi":
        return (predictions > best).double().mean(0)
    if kind == "ei":
        return (predictions - best).clamp_min(0.0).mean(0)
    if kind == "ucb":
        return predictions.mean(0) + ucb_beta * predictions.std(0, unbiased=False)
    raise ValueError(f"`acquisition` must be one of {ACQUISITIONS}, got {kind!r}")


class _Positions(Sequence):
    """``[items[i] for i in positions]`` without building the list (a pool of ~15,000 archs of which a
    batch reads 8)."""

    def __init__(self, items: Sequence, positions: np.ndarray) -> None:
        self.items, self.positions = items, positions

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self.items[int(p)] for p in self.positions[i]]
        return self.items[int(self.positions[i])]


class BayesianOptimization(BatchStrategy):
    """BO with a deep-ensemble surrogate (see the module docstring).

    Args:
        space: see :class:`~lightning_nas.strategies.base.Strategy`.
        seed: see :class:`~lightning_nas.strategies.base.Strategy`.
        constraints: see :class:`~lightning_nas.strategies.base.Strategy`.
        cost_model: see :class:`~lightning_nas.strategies.base.Strategy`.
        acquisition: ``"pi"``, ``"ei"`` or ``"ucb"``.
        ucb_beta: UCB's weight of the ensemble std.
        batch_size: proposals per iteration (mono-fidelity).
        initial: uniform proposals before the first surrogate fit.
        candidates: enumerate the space when it has at most this many archs, else sample this many.
        members: ensemble size M.
        trunk: ensemble trunk widths (thesis: :data:`~lightning_nas.strategies.ensemble.THESIS_TRUNK`).
        branch: ensemble branch width (thesis: 512).
        activation: the ensemble blocks' activation (:data:`~lightning_nas.strategies.ensemble.ACTIVATIONS`):
            ``"silu"`` (default) or ``"hardswish"`` (SiLU's shape without its exponential, which is a
            third of the time of scoring an enumerable space every iteration).
        fused_adam: refits with ATen's fused Adam kernel (~9 ms less per 100-step refit; rounds
            differently). ``activation="hardswish", fused_adam=True`` cut the proposal overhead
            at 100 NB201 observations (median of five runs 19.2 ms against 27.9 ms, alternated on a
            shared 2-core VM), but reshuffled the NB201 searches with seeds at the cap that the
            defaults do not have (RESULTS.md, issue 23 notes), hence opt-in.
        steps: Adam steps of each refit.
        lr: Adam learning rate of each refit.
        minibatch: minibatch size of each refit.
        pretrain_metrics: cost-model metrics to pretrain on (needs ``cost_model``); empty: no pretraining.
        pretrain_archs: pretraining set size (uniform draws; the whole space when it is smaller).
        pretrain_on: the pretraining archs themselves, instead of ``pretrain_archs`` draws: e.g. the
            archs whose costly zero-cost proxies were computed and cached.
        pretrain_also: archs pretrained on in addition to the draws (or ``pretrain_on``): e.g. the
            cells whose costly proxies are cached, beside ``pretrain_archs`` draws that carry the free
            cost columns. A metric the cost model gives as NaN for an arch is missing there (the
            ensemble's loss skips it), so every metric is learnt from every arch that has it.
        pretrain_steps: pretraining Adam steps.
        pretrain_lr: pretraining learning rate.
        fidelities: ``(low, high)`` epochs for the multi-fidelity schedule; ``None``: one fidelity
            (the evaluator's full one).
        p: the multi-fidelity schedule: low-fidelity evaluations per iteration.
        q: the multi-fidelity schedule: high-fidelity evaluations every ``f``-th iteration.
        f: the multi-fidelity schedule: the period of the high-fidelity evaluations.
        targets: ``"rank"`` (normal scores of each fidelity's observations) or ``"standard"``.
        warm_start: continue each refit from the previous one's weights instead of the pretrained
            (or fresh) ones; use with fewer ``steps``.
        stall_window: equivalent full evaluations without a better full-fidelity result after which
            an ``explore`` share of every batch goes to exploratory moves until the best improves
            (see :mod:`~lightning_nas.strategies.exploration`), and, with ``fidelities``, that share
            of the high-fidelity places to the best low-fidelity results; ``None``: never.
        explore: the exploratory share of a batch while stalled, in ``[0, 1]``.
        explore_with: what fills the stalled share's places that are not trust-region moves:
            ``"interaction"`` (an exploratory stream: batch UCB of a pairwise-interaction GP fitted
            on the random start and the stream's own results,
            :func:`~lightning_nas.strategies.exploration.stream_explorer`), ``"disagreement"`` (the
            members' largest std) or ``"auto"``: ``"disagreement"`` with ``pretrain_metrics`` and
            cold refits (``warm_start=False``), ``"interaction"`` otherwise (see the module docstring).

    Attributes:
        explorations: ``(iteration, reason)`` of every batch with exploratory places: ``"flat"``
            (the acquisition ranked fewer candidates than the batch needs) or ``"stalled"``.
    """

    def __init__(self, space, *, seed: int = 0, constraints=(), cost_model=None, acquisition: str = "pi",
                 ucb_beta: float = 1.0, batch_size: int = 8, initial: int = 8, candidates: int = 20_000,
                 members: int = 6, trunk: Sequence[int] = (64, 64, 64), branch: int = 64, activation: str = "silu", fused_adam: bool = False, steps: int = 200,
                 lr: float = 5e-3, minibatch: int = 16, pretrain_metrics: Sequence[str] = (),
                 pretrain_archs: int = 2000, pretrain_on: Sequence[dict[str, Any]] | None = None,
                 pretrain_also: Sequence[dict[str, Any]] = (), pretrain_steps: int = 500, pretrain_lr: float = 1e-2,
                 fidelities: tuple[float, float] | None = None, p: int = 5, q: int = 3, f: int = 10,
                 targets: str = "rank", warm_start: bool = False, stall_window: float | None = 16.0,
                 explore: float = 0.5, explore_with: str = "auto") -> None:
        super().__init__(space, seed=seed, constraints=constraints, cost_model=cost_model)
        if explore_with not in ("auto",) + EXPLORERS:
            raise ValueError(f"`explore_with` must be one of {('auto',) + EXPLORERS}, got {explore_with!r}")
        if explore_with == "auto":
            # A pretrained ensemble whose every refit restarts from the pretrained weights knows the
            # whole space through that prior, so its disagreement is informed outside the stuck family.
            # Warm-started refits (each continuing the last) carry the prior only as far as the data
            # seen since let them, and without pretraining there is none: then only an independent
            # stream is informed there.
            explore_with = "disagreement" if pretrain_metrics and not warm_start else "interaction"
        self.explore_with = explore_with
        if acquisition not in ACQUISITIONS:
            raise ValueError(f"`acquisition` must be one of {ACQUISITIONS}, got {acquisition!r}")
        for name, value, low in (("batch_size", batch_size, 1), ("initial", initial, 1), ("candidates", candidates, 1),
                                 ("members", members, 2), ("steps", steps, 1), ("minibatch", minibatch, 1),
                                 ("pretrain_archs", pretrain_archs, 1), ("pretrain_steps", pretrain_steps, 1),
                                 ("p", p, 0), ("q", q, 0), ("f", f, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"`{name}` must be an int >= {low}, got {value!r}")
        for name, value, allow_zero in (("lr", lr, False), ("pretrain_lr", pretrain_lr, False), ("ucb_beta", ucb_beta, True)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < math.inf \
                    or (value == 0 and not allow_zero):
                raise ValueError(f"`{name}` must be a finite number {'>= 0' if allow_zero else '> 0'}, got {value!r}")
        self.pretrain_metrics = tuple(pretrain_metrics)
        if self.pretrain_metrics and cost_model is None:
            raise ValueError(f"`pretrain_metrics`={list(self.pretrain_metrics)} needs a `cost_model` to compute them")
        if fidelities is not None:
            if len(fidelities) != 2 or not 0 < fidelities[0] < fidelities[1]:
                raise ValueError(f"`fidelities` must be (low, high) epochs with 0 < low < high, got {fidelities!r}")
            if p + q == 0:
                raise ValueError("the multi-fidelity schedule needs `p` + `q` >= 1 evaluations per cycle")
        stall_window, explore = check_stall_arguments(stall_window, explore)
        if targets not in TARGET_SCALES:
            raise ValueError(f"`targets` must be one of {TARGET_SCALES}, got {targets!r}")
        self.targets, self.warm_start = targets, bool(warm_start)
        self.kind, self.ucb_beta = acquisition, ucb_beta
        self.batch_size, self.initial, self.candidates = batch_size, initial, candidates
        self.members, self.trunk, self.branch = members, tuple(trunk), branch
        if not isinstance(fused_adam, bool):
            raise ValueError(f"`fused_adam` must be a bool, got {fused_adam!r}")
        self.activation, self.fused_adam = check_activation(activation), fused_adam
        self.steps, self.lr, self.minibatch = steps, lr, minibatch
        self.pretrain_archs, self.pretrain_steps, self.pretrain_lr = pretrain_archs, pretrain_steps, pretrain_lr
        if pretrain_on is not None:
            pretrain_on = [space.validate(a) for a in pretrain_on]
            if not pretrain_on:
                raise ValueError("`pretrain_on` must hold at least one arch, got an empty sequence")
            if not self.pretrain_metrics:
                raise ValueError("`pretrain_on` needs `pretrain_metrics` (the metrics to pretrain on)")
        self.pretrain_on = pretrain_on
        self.pretrain_also = [space.validate(a) for a in pretrain_also]
        if self.pretrain_also and not self.pretrain_metrics:
            raise ValueError("`pretrain_also` needs `pretrain_metrics` (the metrics to pretrain on)")
        self.fidelities = None if fidelities is None else (float(fidelities[0]), float(fidelities[1]))
        self.p, self.q, self.f = p, q, f
        self.stall_window, self.explore = stall_window, explore
        # Search state (the iteration count is BatchStrategy's `batches`).
        self.proposed: set[tuple] = set()  # (arch key, fidelity) asked so far
        self.fit_seconds: list[float] = []
        self.explorations: list[tuple[int, str]] = []  # (iteration, "flat" | "stalled") of exploratory batches
        self.stream: set[tuple] = set()  # keys of the archs the exploratory stream proposed
        self._warm: dict[str, torch.Tensor] | None = None  # the last refit's weights (warm_start)
        # Rebuilt on demand, not stored (see config_attributes).
        self._pretrained: dict[str, torch.Tensor] | None = None
        self._model: DeepEnsemble | None = None  # the module refits load their weights into
        self._candidates = CandidatePool(space, candidates)

    config_attributes = BatchStrategy.config_attributes + ("_pretrained", "_model", "_candidates", "pretrain_on",
                                                           "pretrain_also")

    # -- one iteration -------------------------------------------------------------------------
    def _next_batch(self) -> list[Proposal]:
        high = None if self.fidelities is None else self.fidelities[1]
        low = None if self.fidelities is None else self.fidelities[0]
        if self.fidelities is None:
            plan = [(None, self.batch_size)]
        else:
            plan = [(low, self.p)]
            if self.batches % self.f == self.f - 1:
                plan.append((high, self.q))
        if self.batches == 0 or not self.history:
            return self._random_batch([(low, self.initial)])
        model, head, best = self._fit()
        # An enumerable space is scored in one pass (M, S): every candidate and every observed arch alike,
        # each fidelity's pool then being a subset by position (no re-encoding, one forward pass).
        scored = model.predict(self._candidates.enumeration()[1], head).double() if self._candidates.enumerable \
            else None
        # Each member's prediction of the incumbent (its max over the archs observed on the driving head).
        seen = [o.arch for o in self.history if self._fidelity_head(o.fidelity) == head - len(self.pretrain_metrics)]
        member_best = self._predictions(model, head, seen, scored).amax(1, keepdim=True)
        stalled = self.stall_window is not None and \
            evaluations_since_improvement(self.history, high) >= self.stall_window
        incumbent = self.best() if stalled else None  # the trust region's centre (only a stall explores)
        anchor = one_hot(self.space, [incumbent.arch])[0].numpy() if incumbent is not None else None
        batch = []
        for fidelity, count in plan:
            if stalled and high is not None and fidelity == high:
                # An explore share of the high-fidelity places by measured low-fidelity result (successive
                # halving's promotion): a surrogate stuck in one family can leave unpromoted the very
                # archs whose cheap results lead elsewhere (NB201 CIFAR-10: a stuck run's ten best
                # 12-epoch results, all above its incumbent at 200 epochs, were never evaluated there).
                promoted = self._best_measured(low, high, math.ceil(self.explore * count))
                batch += [self._propose(a, high) for a in promoted]
                count -= len(promoted)
            if count == 0:
                continue
            if scored is not None:
                archs, x_all, _ = self._candidates.enumeration()
                keep = self._candidates.available(self._blocked(fidelity))
                # A view of the pool by position: only the chosen archs (and, with constraints, all) are read.
                pool, x, predictions = _Positions(archs, keep), x_all.numpy()[keep], scored[:, torch.from_numpy(keep)]
            else:
                pool, encoded = self._pool(fidelity)
                x = encoded.numpy()
                predictions = model.predict(encoded, head).double() if pool else None
            if not pool:
                continue
            scores = acquisition(predictions, best, self.kind, self.ucb_beta)
            feasible = np.array([self.predicted_violation(a) <= 0.0 for a in pool]) if self.constraints else None
            explorer = stream_explorer(self.space, self.history, self.initial, self.stream, pool, x) \
                if stalled and self.explore_with == "interaction" else None
            chosen, reason = select_batch(
                scores.numpy(), predictions.mean(0).numpy(), lambda: predictions.std(0, unbiased=False).numpy(), count,
                distance=None if anchor is None else hamming_to(x, anchor), feasible=feasible,
                stalled=stalled, explore=self.explore, fallback=(predictions > member_best).double().mean(0).numpy(),
                flat="exploit", explorer=explorer)
            if reason is not None:
                self.explorations.append((self.batches, reason))
            for i in chosen:
                batch.append(self._propose(pool[int(i)], fidelity))
        return batch

    def _predictions(self, model: DeepEnsemble, head: int, archs: Sequence[dict[str, Any]],
                     scored: torch.Tensor | None) -> torch.Tensor:
        """``(M, len(archs))`` predictions of ``head``: columns of ``scored`` (the whole enumeration's)
        when every arch is in it, else a forward pass."""
        if scored is not None:
            index = self._candidates.enumeration()[2]
            positions = [index.get(arch_key(a)) for a in archs]
            if None not in positions:
                return scored[:, positions]
        return model.predict(one_hot(self.space, archs), head).double()

    def _random_batch(self, plan) -> list[Proposal]:
        """Uniformly random archs not yet proposed at their fidelity; with constraints and a cost model,
        the first draw predicted to meet them (else the least violating of 100 draws), so no evaluation
        goes to an arch that a free cost model already rules out."""
        batch = []
        for fidelity, count in plan:
            for _ in range(count):
                seen = {key for key, f in self.proposed if f == fidelity}
                arch = self.steered_draw(self.random_arch, seen, tries=100) or self.random_arch()
                batch.append(self._propose(arch, fidelity))
        return batch

    def _best_measured(self, low: float, high: float, count: int) -> list[dict[str, Any]]:
        """Up to ``count`` archs with the best results at ``low`` not yet proposed at ``high``, best first
        (ties: the earlier result)."""
        done = {k for k, f in self.proposed if f == high}
        left = [o for key, o in best_results_at(self.history, low).items() if key not in done]
        ranked = sorted(left, key=lambda o: -o.value)  # stable: ties keep the order first measured
        return [dict(o.arch) for o in ranked[:count]]

    def _propose(self, arch: dict[str, Any], fidelity: float | None) -> Proposal:
        self.proposed.add((arch_key(arch), fidelity))
        return Proposal(arch, fidelity)

    def _blocked(self, fidelity: float | None) -> set[tuple]:
        """Keys of the archs not to propose at ``fidelity``: proposed at it (or, for a low fidelity, at the high one)."""
        return {k for k, f in self.proposed if f == fidelity or (self.fidelities and f == self.fidelities[1])}

    def _pool(self, fidelity: float | None) -> tuple[list[dict[str, Any]], torch.Tensor]:
        """Candidates not yet proposed at ``fidelity`` (nor, for a low fidelity, at the high one)."""
        parents = [o.arch for o in sorted(self.history, key=lambda o: o.value, reverse=True)[:10]]
        return self._candidates(self, self._blocked(fidelity), parents)

    # -- the surrogate -------------------------------------------------------------------------
    def _heads(self) -> int:
        return len(self.pretrain_metrics) + (1 if self.fidelities is None else 2)

    def _new_model(self, seed: int) -> DeepEnsemble:
        return DeepEnsemble(self.space.encoding_size, self._heads(), members=self.members, trunk=self.trunk,
                            branch=self.branch, seed=seed, activation=self.activation)

    def _pretrain(self) -> dict[str, torch.Tensor]:
        """Weights after pretraining on the zero-cost metrics (deterministic from the seed)."""
        if self._pretrained is None:
            model = self._new_model(derive_seed(self.seed, 1))
            rng = np.random.default_rng(derive_seed(self.seed, 2))
            if self.pretrain_on is not None:
                archs = [dict(a) for a in self.pretrain_on]
            elif self.space.size <= self.pretrain_archs:
                archs = list(self.space.enumerate())
            else:
                archs = [{d.label: d.values[int(rng.integers(len(d.values)))] for d in self.space}
                         for _ in range(self.pretrain_archs)]
            archs += [dict(a) for a in self.pretrain_also]
            x = one_hot(self.space, archs)
            y = torch.full((len(archs), self._heads()), float("nan"))
            costs = [self.cost_model(a) for a in archs]  # once per arch: a proxy's cost model may be costly
            metrics = torch.tensor([[float(c[m]) for m in self.pretrain_metrics] for c in costs],
                                   dtype=torch.float64).reshape(len(archs), len(self.pretrain_metrics))
            y[:, : len(self.pretrain_metrics)] = pretraining_targets(metrics).float()
            model.set_standardisation(y)
            fit_ensemble(model, x, y, steps=self.pretrain_steps, lr=self.pretrain_lr, batch_size=self.minibatch,
                         seed=derive_seed(self.seed, 3), fused_adam=self.fused_adam)
            self._pretrained = {k: v.clone() for k, v in model.state_dict().items()}
        return self._pretrained

    def _fit(self) -> tuple[DeepEnsemble, int, float]:
        """Refit on every result; returns the model, the head that drives the acquisition and its best value."""
        start = time.perf_counter()
        if (self.warm_start and self._warm is not None) or self.pretrain_metrics:
            # Every weight is loaded: reuse one module instead of initialising a new one only to overwrite it.
            if self._model is None:
                self._model = self._new_model(0)
            model = self._model
            model.load_state_dict(self._warm if self.warm_start and self._warm is not None else self._pretrain())
        else:
            model = self._new_model(derive_seed(self.seed, 4, self.batches))
        n_metrics = len(self.pretrain_metrics)
        x = one_hot(self.space, [o.arch for o in self.history])
        y = torch.full((len(self.history), self._heads()), float("nan"))
        for i, o in enumerate(self.history):
            y[i, n_metrics + self._fidelity_head(o.fidelity)] = o.value
        if self.targets == "rank":
            for column in range(n_metrics, self._heads()):
                seen = ~torch.isnan(y[:, column])
                if seen.any():
                    y[seen, column] = normal_scores(y[seen, column])
        # Standardise the fidelity heads on their data; keep the pretrained metric heads' scaling.
        mean, std = model.target_mean.clone(), model.target_std.clone()
        model.set_standardisation(y)
        model.target_mean[:n_metrics], model.target_std[:n_metrics] = mean[:n_metrics], std[:n_metrics]
        fit_ensemble(model, x, y, steps=self.steps, lr=self.lr, batch_size=self.minibatch,
                     seed=derive_seed(self.seed, 5, self.batches), fused_adam=self.fused_adam)
        if self.warm_start:
            self._warm = {k: v.clone() for k, v in model.state_dict().items()}
        head = n_metrics
        if self.fidelities is not None:
            has_high = any(o.fidelity >= self.fidelities[1] for o in self.history)
            head = n_metrics + (1 if has_high else 0)
        self.fit_seconds.append(time.perf_counter() - start)
        return model, head, float(torch.nan_to_num(y[:, head], nan=-torch.inf).max())

    def _fidelity_head(self, fidelity: float) -> int:
        if self.fidelities is None:
            return 0
        return 1 if fidelity >= self.fidelities[1] else 0
