"""Stall detection and the exploration fallback shared by the surrogate-driven strategies (BO, RANK-NOSH).

A surrogate-driven search can stop learning in two ways, and each has a cheap, general signal:

- **A flat acquisition.** Monte-Carlo PI (or EI) is 0 for every candidate once no ensemble member
  predicts any candidate above the best result. Regression to the mean makes this the rule rather
  than the exception: fitted members under-predict the top of their training data, the incumbent
  included. :func:`select_batch` gives the acquisition only the places it can fill with candidates
  it actually distinguishes (a value above its minimum), then a ``fallback`` acquisition (BO: each
  member is a sample of the function, so compare it with its *own* prediction of the incumbent,
  the ensemble version of a noisy PI, which shrinkage cannot flatten). What fills the places
  neither ranks is ``flat``: ``"exploit"`` (BO) continues the same order by the ensemble mean, the
  acquisition's tie-break; ``"explore"`` makes them exploratory moves.
- **No progress.** The best full-fidelity result has not improved for ``window`` equivalent full
  evaluations (:func:`evaluations_since_improvement`): the surrogate keeps proposing from one family.

Why BO treats flatness as no reason to explore: flatness is the normal state of a fitted ensemble
(on both NB201 tables, MC-PI ranked fewer than a batch's 8 candidates in most iterations after the
third), so making those places exploratory turned a fixed, large share of every batch into
exploration whether or not the search was stuck. Measured on both NB201 tables (CIFAR-10 and
CIFAR-100, 20 seeds each, BO + pretraining, evaluations to the optimum): exploratory flat places
55.3 / 49.0; the mean alone (no fallback) 45.3 / 49.9; fallback then mean 51.1 / 39.4, the best
mean over the two tables. Exploration is kept for the stall signal.

The places a stall makes exploratory (an ``explore`` share of the batch), or a flat acquisition with
``flat="explore"``, go to two kinds of exploratory moves, half each:

1. **Trust-region moves**: the unevaluated candidates closest to the incumbent in Hamming distance
   (decisions that differ), nearest first, ties by the acquisition, then by the optimistic
   ``mean + std`` of the members. On NAS benchmarks local search around the best arch is a strong
   baseline (White et al., 2021), and it needs nothing but the space's decisions.
2. **An exploratory stream** (``explorer``, :func:`stream_explorer`: RANK-NOSH's default, and BO's
   without pretraining), or without one the candidates the members disagree on most (largest std,
   ties by the mean).

Why a stream. A search stuck in one family has seen each of the other families' values almost only
*inside* the stuck family, where they can be poor: on NB201 CIFAR-10 (BO, seed 10) every one of the
table's 15 best cells has a skip on edge 3←0, a value the search tried 7 times in 300, always next to
the family's own skips on edges 1←0 and 3←1, where a second skip makes the cell poor. The ensemble
learns "skip on 3←0 is bad" as a main effect, its members agree (same data), and so neither the
acquisition, nor disagreement, nor moves near the incumbent (whose identity is 2-3 decisions, the
rest varying freely) leave the family: 8 such rules left seed 10 or 16 at the cap (RESULTS.md). The
stream is an independent search started by the stall, like a restart (TuRBO, Eriksson et al., 2019),
that learns only from the shared random start and its own results, so the stuck family's evidence
does not steer it. Its model is :class:`InteractionGP`, Bayesian regression on every value and every
*pair* of values (the kernel of BOCS's second-order model, Baptista & Poloczek, 2018): cheap on a few
dozen results, deterministic, and its variance stays large for pairs of values never observed
together, which is what a family's interactions are. It proposes by batch GP-UCB (Desautels et al.,
2014). Measured on both NB201 tables (CIFAR-10 / CIFAR-100, evaluations to the optimum, a run that
misses it counting as the cap of 300): BO without pretraining, 20 seeds, 78.3 / 56.8 with 2 / 0 seeds
at the cap → 68.7 / 54.6 with none (the two stuck CIFAR-10 seeds reach it after 166 and 246);
RANK-NOSH, 10 seeds, its CIFAR-100 seed at the cap reaches it after 93.4 (the other 19 runs are
unchanged). With pretraining and cold refits the stream did not help on both tables (BO + pretraining,
20 seeds: 50.8 / 40.4 → 53.1 / 40.0): an ensemble that restarts every refit from its zero-cost prior
knows the whole space through it, so its disagreement is informed outside the stuck family too; BO's
``explore_with="auto"`` keeps the disagreement there. Warm-started refits (multi-fidelity BO's) carry
the prior only as far as the data since let them, and there the stream helped on both tables (BO MF +
pretraining, 20 seeds, paired by seed: 36.2 / 38.2 → 32.5 / 34.4; it changes only the seeds that
stall, 5 of 20 / 4 of 20, by −77, −29, +7, +7, +18 / −49, −32, −1, +6 equivalent evaluations, the
worst seed 130 → 70 / 120 → 88), so ``"auto"`` streams there.

Both signals are functions of the results told, so a resumed search makes the same choices.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
from scipy.linalg import cho_factor, cho_solve, solve_triangular
from scipy.special import ndtri
from threadpoolctl import threadpool_limits

from lightning_nas.strategies.base import Observation, arch_key, rank_key

__all__ = ["EXPLORERS", "FLAT_FILLS", "InteractionGP", "best_results_at", "check_stall_arguments",
           "evaluations_since_improvement", "hamming_to", "interaction_explorer", "lexsort_top", "normal_scores_np",
           "select_batch", "stream_explorer"]


def check_stall_arguments(stall_window: float | None, explore: float) -> tuple[float | None, float]:
    """``(stall_window, explore)`` as floats, checked: a strategy's stall settings.

    Raises:
        ValueError: ``stall_window`` is neither ``None`` nor a finite number > 0, or ``explore`` is
            not a number in ``[0, 1]``.
    """
    if stall_window is not None and (isinstance(stall_window, bool) or not isinstance(stall_window, (int, float))
                                     or not 0 < stall_window < math.inf):
        raise ValueError(f"`stall_window` must be None or a finite number > 0 (equivalent evaluations), "
                         f"got {stall_window!r}")
    if isinstance(explore, bool) or not isinstance(explore, (int, float)) or not 0 <= explore <= 1:
        raise ValueError(f"`explore` must be a number in [0, 1], got {explore!r}")
    return (None if stall_window is None else float(stall_window)), float(explore)


def evaluations_since_improvement(history: Sequence[Observation], full_fidelity: float | None = None) -> float:
    """Equivalent full evaluations spent since the best full-fidelity result last improved.

    Args:
        history: observations in the order they were told.
        full_fidelity: the fidelity whose best result counts (epochs); ``None``: the highest fidelity
            in ``history``. An observation at fidelity ``f`` costs ``f / full_fidelity`` evaluations.

    Returns:
        The cost told after the last improvement (all of it when no full-fidelity result exists yet;
        0 for an empty history).
    """
    if not history:
        return 0.0
    full = max(o.fidelity for o in history) if full_fidelity is None else float(full_fidelity)
    best, spent, at_best = None, 0.0, 0.0
    for o in history:
        spent += min(o.fidelity / full, 1.0) if full > 0 else 1.0
        if o.fidelity >= full:
            key = rank_key(o.value, o.violation)
            if best is None or key > best:
                best, at_best = key, spent
    return spent - at_best


def best_results_at(history: Sequence[Observation], fidelity: float) -> dict[tuple, Observation]:
    """Each arch's best result at ``fidelity`` (ties: the earlier), keyed by
    :func:`~lightning_nas.strategies.base.arch_key` in the order first measured there: what the
    promotion fallback of a stalled multi-fidelity search ranks (plain successive halving)."""
    best: dict[tuple, Observation] = {}
    for o in history:
        if o.fidelity == fidelity:
            key = arch_key(o.arch)
            if key not in best or o.value > best[key].value:
                best[key] = o
    return best


def hamming_to(x: np.ndarray, incumbent: np.ndarray) -> np.ndarray:
    """Decisions in which each one-hot encoded candidate differs from the incumbent.

    Args:
        x: ``(N, E)`` one-hot encodings (one 1 per decision, as :func:`~lightning_nas.strategies.candidates.one_hot`).
        incumbent: ``(E,)`` the incumbent's encoding.

    Returns:
        ``(N,)`` int distances.
    """
    hot = incumbent > 0.5
    # A column selection, not ``x @ incumbent``: that product goes to numpy's BLAS, whose thread pool
    # (not governed by torch.set_num_threads) then kept a second core spinning, ~14 ms of CPU per BO
    # proposal on 2 cores for no wall time.
    return int(hot.sum()) - np.count_nonzero(x[:, hot], axis=1).astype(np.int64)


def lexsort_top(keys: Sequence[np.ndarray], count: int) -> np.ndarray:
    """``np.lexsort(keys)[:count]`` (the last key primary, ties by the keys before it, then by index)
    without sorting everything: ``O(N)`` per key by partitioning, then a sort of at most ``count``
    rows. A batch takes ~8 of ~15,500 NB201 candidates: 0.15 ms instead of 2.0 ms for four keys on one
    CPU thread, and a stalled BO batch sorts three times.

    Args:
        keys: arrays of one length ``N``, as for ``np.lexsort`` (ascending; the last key first).
        count: how many indices.

    Returns:
        ``(min(count, N),)`` int64 indices, in ``np.lexsort``'s order.
    """
    keys = [np.asarray(k) for k in keys]
    if len({k.shape for k in keys}) > 1 or any(k.ndim != 1 for k in keys):
        raise ValueError(f"lexsort_top: `keys` must be 1-D arrays of one length; got shapes {[k.shape for k in keys]}")
    n = len(keys[0]) if keys else 0
    count = max(0, min(int(count), n))
    out: list[np.ndarray] = []
    idx = np.arange(n)
    level = len(keys) - 1
    while count > 0 and len(idx):
        if len(idx) <= count or level < 0:
            # Every remaining index is taken (or the keys are exhausted: ties in all keys, by index).
            take = idx[np.lexsort([k[idx] for k in keys[:level + 1]])] if level >= 0 else idx
            out.append(take[:count])
            break
        key = keys[level][idx]
        threshold = np.partition(key, count - 1)[count - 1]  # the count-th smallest at this level
        if threshold != threshold:  # NaN, which both sorts put last: every number is ahead, NaNs tie
            below, tie = key == key, key != key
        else:
            below, tie = key < threshold, key == threshold
        ahead = idx[below]  # certainly taken; ordered by every key
        if len(ahead):
            out.append(ahead[np.lexsort([k[ahead] for k in keys])])
        count -= len(ahead)
        idx = idx[tie]  # the rest come from the tie at the threshold, by the next keys
        level -= 1
    return np.concatenate(out).astype(np.int64) if out else np.zeros(0, dtype=np.int64)


FLAT_FILLS = ("explore", "exploit")


def select_batch(acq: np.ndarray, mean: np.ndarray, std: np.ndarray | Callable[[], np.ndarray], count: int, *,
                 distance: np.ndarray | None = None, feasible: np.ndarray | None = None,
                 stalled: bool = False, explore: float = 0.5,
                 fallback: np.ndarray | None = None, flat: str = "explore",
                 explorer: Callable[[int, np.ndarray], np.ndarray] | None = None) -> tuple[np.ndarray, str | None]:
    """Indices of up to ``count`` candidates: by the acquisition where it ranks them, else exploratory.

    Args:
        acq: ``(N,)`` acquisition values (larger is better).
        mean: ``(N,)`` ensemble mean (the acquisition's tie-break).
        std: ``(N,)`` ensemble std (disagreement), or a function returning it, called only when an
            exploratory place needs it (BO: the std of 6 members over ~15,500 candidates takes ~4.5 ms,
            more than the rest of choosing a batch, and most batches have no exploratory place).
        count: batch size.
        distance: ``(N,)`` Hamming distance to the incumbent (``None``: no trust-region moves; the
            exploratory places all go to disagreement).
        feasible: ``(N,)`` bool, candidates the cost model predicts to meet the constraints; the
            others are taken only once no feasible one is left.
        stalled: no progress for the caller's window: at least ``ceil(explore · count)`` places are
            exploratory.
        explore: the exploratory share of a stalled batch, in ``[0, 1]``.
        fallback: ``(N,)`` a second acquisition for the places a flat ``acq`` leaves (BO: each
            member's probability of beating its *own* prediction of the incumbent).
        flat: what fills the places neither ``acq`` nor ``fallback`` ranks: ``"explore"``
            (exploratory moves) or ``"exploit"`` (the mean, as the acquisition's tie-break: flatness
            alone then makes no place exploratory, only ``stalled`` does).
        explorer: ``explorer(count, blocked)`` -> up to ``count`` indices of candidates not ``blocked``
            (``(N,)`` bool): what fills the exploratory places that are not trust-region moves
            (e.g. :meth:`InteractionGP.ucb_batch`); ``None``: the members' largest disagreement.

    Returns:
        ``(indices, reason)``: ``reason`` is ``None`` when the acquisition chose the whole batch,
        ``"stalled"`` when a stall made places exploratory, ``"flat"`` when the acquisition could not
        rank enough candidates otherwise (with ``flat="exploit"`` the fallback and mean then filled
        them; with ``"explore"`` exploratory moves did, after the fallback).

    Raises:
        ValueError: arrays of different lengths, or ``explore`` outside ``[0, 1]``.
    """
    n = len(acq)
    arrays = {"mean": mean, "std": None if callable(std) else std, "distance": distance, "feasible": feasible}
    for name, a in arrays.items():
        if a is not None and len(a) != n:
            raise ValueError(f"`{name}` must have one entry per candidate ({n}), got {len(a)}")
    if not 0.0 <= explore <= 1.0:
        raise ValueError(f"`explore` must be in [0, 1], got {explore!r}")
    if flat not in FLAT_FILLS:
        raise ValueError(f"`flat` must be one of {FLAT_FILLS}, got {flat!r}")
    if fallback is not None and len(fallback) != n:
        raise ValueError(f"`fallback` must have one entry per candidate ({n}), got {len(fallback)}")
    count = min(int(count), n)
    if count <= 0:
        return np.zeros(0, dtype=np.int64), None
    acq, mean = (np.asarray(a, dtype=np.float64) for a in (acq, mean))
    infeasible = np.zeros(n, dtype=bool) if feasible is None else ~np.asarray(feasible, dtype=bool)
    if infeasible.all():
        infeasible[:] = False
    pick = np.ones(n, dtype=bool)
    pick[infeasible] = False
    # What the acquisition ranks: feasible candidates above its minimum among the feasible.
    informative = pick & (acq > acq[pick].min())
    n_acq = min(count, int(informative.sum()))
    reason = "flat" if n_acq < count else None
    if stalled:
        keep = count - math.ceil(explore * count)
        if keep < n_acq:
            n_acq, reason = keep, "stalled"
    if flat == "exploit":
        # One order for every place that is not exploratory: feasible, acquisition, fallback, mean.
        second = np.zeros(n) if fallback is None else np.asarray(fallback, dtype=np.float64)
        n_exploit = count - (math.ceil(explore * count) if stalled else 0)
        chosen = list(lexsort_top((-mean, -second, -acq, infeasible), n_exploit))
        if n_exploit < count:
            reason = "stalled"
        return np.asarray(chosen + _exploratory(chosen, count - n_exploit, mean, std, acq, distance, infeasible,
                                                explorer), dtype=np.int64), reason
    chosen = list(lexsort_top((-mean, -acq, infeasible), n_acq))  # feasible, then acquisition, then mean
    if fallback is not None and reason == "flat":
        fallback = np.asarray(fallback, dtype=np.float64)
        free = pick.copy()
        free[chosen] = False
        if free.any():
            ranked = free & (fallback > fallback[free].min())
            n_more = min(count - len(chosen), int(ranked.sum()))
            more = lexsort_top((-mean, -fallback, ~ranked), n_more)
            chosen += list(more)
            n_acq += n_more
    return np.asarray(chosen + _exploratory(chosen, count - n_acq, mean, std, acq, distance, infeasible, explorer),
                      dtype=np.int64), reason


def _exploratory(chosen: list, left: int, mean: np.ndarray, std: np.ndarray | Callable[[], np.ndarray], acq: np.ndarray,
                 distance: np.ndarray | None, infeasible: np.ndarray,
                 explorer: Callable[[int, np.ndarray], np.ndarray] | None = None) -> list:
    """``left`` exploratory places not in ``chosen``: half (rounded up) trust-region moves, the rest
    ``explorer``'s picks or disagreement (see the module docstring); feasible candidates first."""
    if left <= 0:
        return []
    std = np.asarray(std() if callable(std) else std, dtype=np.float64)
    if len(std) != len(mean):
        raise ValueError(f"`std` must have one entry per candidate ({len(mean)}), got {len(std)}")
    taken = np.zeros(len(mean), dtype=bool)
    taken[chosen] = True
    out = []
    n_local = math.ceil(left / 2) if distance is not None else 0
    if n_local:
        local = lexsort_top((-(mean + std), -acq, np.asarray(distance), infeasible | taken), n_local)
        out += list(local)
        taken[local] = True
    if explorer is not None and left > n_local:
        picks = [int(i) for i in explorer(left - n_local, infeasible | taken)]
        taken[picks] = True
        if len(picks) < left - n_local:  # the feasible ones ran out
            picks += [int(i) for i in explorer(left - n_local - len(picks), taken)]
        return out + picks
    spread = lexsort_top((-mean, -std, infeasible | taken), left - n_local)
    return out + list(spread)


def normal_scores_np(values: np.ndarray) -> np.ndarray:
    """Rank-based normal scores ``Φ⁻¹((rank + 0.5) / N)`` of ``values`` ``(N,)``, ties sharing their mean rank,
    float64 ``(N,)``: the exploratory stream's GP targets, and, rounded to float32, the BO surrogate's
    (:func:`lightning_nas.strategies.bo.normal_scores` calls this: one implementation for both)."""
    values = np.asarray(values, dtype=np.float64)
    _, group, counts = np.unique(values, return_inverse=True, return_counts=True)
    first = np.cumsum(counts) - counts
    ranks = (first + (counts - 1) / 2.0)[group]
    return ndtri((ranks + 0.5) / len(values))


class InteractionGP:
    """A Gaussian process whose kernel is Bayesian linear regression on every decision's value and every
    *pair* of decisions' values (second-order, as BOCS, Baptista & Poloczek 2018), for stalled searches.

    Why: a stalled surrogate search keeps sampling one family, so every value of a decision it has seen
    was seen in (nearly) one context, and an ensemble fitted to those results learns the value's effect
    *in that context* as if it held everywhere, with no doubt about it (its members agree: same data).
    The pairwise model's posterior variance is exactly the missing doubt: a candidate whose pairs of
    values were rarely observed together keeps a large variance however often each value was seen
    alone. Its upper confidence bound (``mean + beta · std``) therefore puts under-observed values into
    the contexts the data rate best, instead of the one context they were tried in.

    For one-hot encodings with ``D`` decisions, the features' inner product is the number ``m`` of
    matching decisions and the number of matching pairs is ``m (m − 1) / 2``, so the kernel is
    ``k(x, x') = a · ((1 − w) · m / D + w · m (m − 1) / (D (D − 1)))`` (``k(x, x) = a``), with no
    feature ever built: any categorical space, ``O(n²)`` per candidate. The targets are centred; the
    pair share ``w`` and the noise are chosen by marginal likelihood on a fixed grid (no tuning to a
    dataset), ``a`` is the targets' variance. Deterministic: no random draw.

    Args:
        x: ``(n, E)`` one-hot encodings of the observed archs (one 1 per decision).
        y: ``(n,)`` their targets (e.g. normal scores: larger is better).

    Raises:
        ValueError: shapes that do not match, or fewer than 2 observations.
    """

    #: The grid the marginal likelihood chooses from: the pairwise share of the prior variance and the
    #: noise variance (fractions of the targets' variance).
    PAIR_SHARES = (0.0, 0.25, 0.5, 0.75)
    NOISES = (0.01, 0.05, 0.2)

    def __init__(self, x: np.ndarray, y: np.ndarray) -> None:
        x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
        if x.ndim != 2 or y.shape != (len(x),):
            raise ValueError(f"InteractionGP: `x` must be (n, E) and `y` (n,), got {x.shape} and {y.shape}")
        if len(x) < 2:
            raise ValueError(f"InteractionGP: needs at least 2 observations, got {len(x)}")
        self.x, self.decisions = x, int(round(float(x[0].sum())))
        self.offset = float(y.mean())
        self.scale = float(y.var()) or 1.0
        r = y - self.offset
        matches = x @ x.T
        best = None
        for w in (self.PAIR_SHARES if self.decisions > 1 else (0.0,)):
            gram = self._kernel(matches, w)
            for noise in self.NOISES:
                try:
                    factor = cho_factor(gram + noise * self.scale * np.eye(len(x)), lower=True)
                except np.linalg.LinAlgError:
                    continue
                alpha = cho_solve(factor, r)
                # log marginal likelihood, up to a constant: -(r' K^-1 r + log det K) / 2
                evidence = -0.5 * float(r @ alpha) - float(np.log(np.diag(factor[0])).sum())
                if best is None or evidence > best[0]:
                    best = (evidence, w, noise, factor, alpha)
        if best is None:
            raise ValueError("InteractionGP: no kernel of the grid gives a positive definite covariance")
        _, self.pair_share, noise, self._factor, self._alpha = best
        self.noise = noise * self.scale

    def _kernel(self, matches: np.ndarray, w: float | None = None) -> np.ndarray:
        w = self.pair_share if w is None else w
        d = self.decisions
        pairs = matches * (matches - 1) / (d * (d - 1)) if d > 1 else 0.0
        return self.scale * ((1.0 - w) * matches / d + w * pairs)

    def posterior(self, candidates: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(mean (N,), variance (N,), v (n, N))`` at ``(N, E)`` candidates; ``v = L⁻¹ k(X, candidates)``
        gives posterior covariances (``k(a, b) − v_a · v_b``)."""
        k = self._kernel(np.asarray(candidates, dtype=np.float64) @ self.x.T)  # (N, n)
        mean = self.offset + k @ self._alpha
        v = solve_triangular(self._factor[0], k.T, lower=True, check_finite=False)
        variance = np.maximum(self.scale - np.einsum("ij,ij->j", v, v), 0.0)
        return mean, variance, v

    def ucb_batch(self, candidates: np.ndarray, count: int, blocked: np.ndarray | None = None,
                  beta: float = 2.0) -> np.ndarray:
        """Indices of ``count`` candidates by batch UCB (Desautels et al., 2014): the best
        ``mean + beta · std``, then the variances updated as if it had been observed (a pick's
        neighbours lose their doubt; the mean is not), and so on; ``blocked`` ``(N,)`` bool never taken.

        Returns:
            ``(≤ count,)`` int64 indices, in the order picked (ties by index).
        """
        candidates = np.asarray(candidates, dtype=np.float64)
        n = len(candidates)
        free = np.ones(n, dtype=bool) if blocked is None else ~np.asarray(blocked, dtype=bool)
        count = min(int(count), int(free.sum()))
        if count <= 0:
            return np.zeros(0, dtype=np.int64)
        mean, variance, v = self.posterior(candidates)
        out: list[int] = []
        updates: list[np.ndarray] = []  # rank-one downdates of the covariance, one per pick
        for _ in range(count):
            score = np.where(free, mean + beta * np.sqrt(variance), -np.inf)
            i = int(np.argmax(score))
            out.append(i)
            free[i] = False
            if len(out) < count:
                # Covariance with the pick under the current posterior (the earlier picks observed).
                cov = self._kernel(candidates @ candidates[i]) - v[:, i] @ v
                for u in updates:
                    cov -= u * u[i]
                u = cov / math.sqrt(variance[i] + self.noise)
                updates.append(u)
                variance = np.maximum(variance - u * u, 0.0)
        return np.asarray(out, dtype=np.int64)


EXPLORERS = ("interaction", "disagreement")


def interaction_explorer(space, history: Sequence[Observation], candidates: np.ndarray,
                         beta: float = 2.0) -> Callable[[int, np.ndarray], np.ndarray]:
    """``explorer(count, blocked)`` for :func:`select_batch`: :meth:`InteractionGP.ucb_batch` over
    ``candidates`` ``(N, E)`` (one-hot), the GP fitted on every result in ``history`` as the normal
    scores of its fidelity's results (fidelities are not comparable; their ranks are), only when a
    place needs it."""
    from lightning_nas.strategies.candidates import one_hot  # candidates imports nothing from here

    fitted: list[InteractionGP] = []

    def explore(count: int, blocked: np.ndarray) -> np.ndarray:
        # One BLAS thread: numpy's pool is not governed by torch.set_num_threads, and at these sizes its
        # second thread mostly spun (a stalled multi-fidelity BO run on 2 cores: CPU 44.8 -> 30.6 s,
        # wall 36.7 -> 29.5 s, the same proposals).
        with threadpool_limits(limits=1, user_api="blas"):
            if not fitted:
                y = np.zeros(len(history))
                fidelities = np.array([o.fidelity for o in history])
                values = np.array([o.value for o in history], dtype=np.float64)
                for f in np.unique(fidelities):
                    at = fidelities == f
                    y[at] = normal_scores_np(values[at])
                fitted.append(InteractionGP(one_hot(space, [o.arch for o in history]).numpy(), y))
            return fitted[0].ucb_batch(candidates, count, blocked, beta)

    return explore


def stream_explorer(space, history: Sequence[Observation], first: int, stream: set, pool: Sequence,
                    candidates: np.ndarray) -> Callable[[int, np.ndarray], np.ndarray] | None:
    """The exploratory stream's ``explorer`` for :func:`select_batch` (BO and RANK-NOSH while stalled).

    An independent search inside the stalled one: GP-UCB with the pairwise-interaction kernel
    (:func:`interaction_explorer`) fitted only on the first ``first`` results (the random start) and the
    stream's own results, so the family the main search is stuck in, whose results say every other
    family's values are worse *in that family's context*, does not steer it. Each pick's key
    (:func:`~lightning_nas.strategies.base.arch_key` of ``pool[i]``) is added to ``stream``, the
    strategy's stored record, so a resumed search continues the same stream.

    Args:
        space: the search space.
        history: every observation, in the order told.
        first: how many leading observations form the shared random start.
        stream: the keys of the archs the stream proposed so far (updated in place).
        pool: the candidates (archs).
        candidates: ``(len(pool), E)`` their one-hot encodings.

    Returns:
        ``explorer(count, blocked)``, or ``None`` when fewer than 2 results would fit the GP.
    """
    data = [o for i, o in enumerate(history) if i < first or arch_key(o.arch) in stream]
    if len(data) < 2:
        return None
    base = interaction_explorer(space, data, candidates)

    def explorer(count: int, blocked: np.ndarray) -> np.ndarray:
        picks = base(count, blocked)
        stream.update(arch_key(pool[int(i)]) for i in picks)
        return picks

    return explorer
