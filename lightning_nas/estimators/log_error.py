"""A multiplicative-error bilinear accuracy model fit to one-pass records.

BINAS's Eq. 3 adds conditional accuracy gains. On the estimator benchmark the one-shot errors of
subnets combine closer to *multiplicatively*: a bilinear least-squares fit of ``−log(error)`` on
measured subnets ranks held-out subnets better than the same fit of the accuracy on every training
seed measured (Kendall τ 0.833–0.862 vs 0.785–0.840 on four seeds, ``benchmarks/RESULTS.md``). This module fits that model to the per-example records of
:func:`~lightning_nas.estimators.estimate_contributions`::

    P(example x is wrong | arch a) = λ_x · exp(−g(a)),   g(a) = Σ_s depth[s, d_s] + Σ_s Σ_{b ≤ d_s} block[s, b, c_{s,b}]

with a free difficulty ``λ_x`` per held-out example. Conditioning on each example's number of
errors removes ``λ_x`` (the conditional Poisson likelihood, the multiplicative analogue of the
paired estimator's per-example centring): an example contributes through *which* of its
architectures were wrong, so examples that every architecture gets right carry no information and
cost nothing to fit. That is also why :func:`allocate_records` can spend the evaluation budget on
the examples whose outcome varies (``allocation="adaptive"`` of ``estimate_contributions``).

The likelihood treats each record's error count as Poisson, which is exact in the limit of rare
errors; for an example that most architectures get wrong it is an approximation (on synthetic
records with error probabilities up to ~0.7 the fitted gains came out up to ~25 % too large).

The result is a :class:`~lightning_nas.bilinear.BilinearTable` with ``link="log_error"``: its
additive form is ``−log(1 − accuracy)``, so ``table.predict(arch) = 1 − exp(−(constant + g(arch)))``.
Block gains are centred per block position and depth gains per stage (the fit only identifies
differences), and ``constant`` makes the mean predicted error over uniformly sampled archs equal
the measured one (``E[Acc]`` of the records, each example weighted equally).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from scipy import optimize, sparse
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from lightning_nas.bilinear import BilinearTable
from lightning_nas.spaces.staged import StagedSpace

__all__ = ["LogErrorAccumulator", "allocate_records", "check_correct", "check_records", "fit_log_error_table"]

RIDGE = 1e-4  # per informative example; only pins down the directions the one-hot features leave free


def check_correct(correct: Tensor, device: torch.device) -> Tensor:
    """``correct`` as float64 on ``device``; ``ValueError`` unless 1-D with values in [0, 1]."""
    correct = torch.as_tensor(correct)
    if correct.dim() != 1:
        raise ValueError(f"`correct` must be 1-D (one entry per example), got shape {tuple(correct.shape)}")
    correct = correct.detach().to(device=device, dtype=torch.float64)
    if correct.numel() and (correct.min() < 0 or correct.max() > 1):
        raise ValueError(f"`correct` must be bool or lie in [0, 1]; got a per-example score outside [0, 1]: values in "
                         f"[{float(correct.min()):g}, {float(correct.max()):g}]")
    return correct


def check_records(staged: StagedSpace, configs: Tensor, depths: Tensor, correct: Tensor,
                  device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """One-pass records on ``device``: ``configs (N, S, D)`` and ``depths (N, S)`` long, ``correct (N,)``
    float64; ``ValueError`` naming the argument when a shape or an index is out of range."""
    S, D, C = staged.num_stages, staged.max_blocks, staged.num_configs
    nd = torch.tensor([len(st.depths) for st in staged.stages], device=device)
    correct = check_correct(correct, device)
    configs, depths = torch.as_tensor(configs).long().to(device), torch.as_tensor(depths).long().to(device)
    n = correct.shape[0]
    if configs.shape != (n, S, D):
        raise ValueError(f"`configs` must have shape (N, S, D) = ({n}, {S}, {D}), got {tuple(configs.shape)}")
    if depths.shape != (n, S):
        raise ValueError(f"`depths` must have shape (N, S) = ({n}, {S}), got {tuple(depths.shape)}")
    exists = torch.as_tensor(staged.block_exists(), device=device)
    counts = torch.as_tensor(staged.config_counts(), device=device)
    if n and ((configs >= counts.clamp(min=1)) | (exists & (configs < 0))).any():
        raise ValueError(f"`configs` must lie in [0, number of configurations of the block) at every existing block position (at most {C})")
    if n and ((depths < 0) | (depths >= nd)).any():
        raise ValueError(f"`depths` must lie in [0, number of depth options of the stage) = {nd.tolist()}")
    return configs, depths, correct


class LogErrorAccumulator(Metric):
    """Per-example one-pass records; ``compute()`` fits the multiplicative-error table.

    States are lists concatenated across processes (``dist_reduce_fx="cat"``): ``groups`` (int64,
    which held-out example a record belongs to), ``configs`` ``(R, S, D)``, ``depths`` ``(R, S)``
    and ``correct`` ``(R,)``. Records of one example may come in several updates (adaptive
    allocation); a DDP run gives the single-process result because each example's records stay on
    the rank that evaluates its batch and the fit sees the union.

    Args:
        staged: the structure the indices refer to.
        metadata: facts copied into the table's metadata.
        ridge: L2 penalty per informative example on the gains.
    """

    full_state_update = False
    is_differentiable = False
    higher_is_better = None

    def __init__(self, staged: StagedSpace, *, metadata: Mapping[str, Any] | None = None, ridge: float = RIDGE, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not isinstance(staged, StagedSpace):
            raise ValueError(f"`staged` must be a StagedSpace, got {type(staged).__name__}")
        if isinstance(ridge, bool) or not isinstance(ridge, (int, float)) or not 0 <= ridge < float("inf"):
            raise ValueError(f"`ridge` must be a non-negative finite number, got {ridge!r}")
        self.staged, self.ridge = staged, float(ridge)
        self.metadata = dict(metadata or {})
        for name in ("groups", "configs", "depths", "correct"):
            self.add_state(name, [], dist_reduce_fx="cat")
        self.add_state("batches", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self._index_dtype = torch.int8 if max(staged.num_configs, staged.max_depth_options) < 128 else torch.int32

    def update(self, configs: Tensor, depths: Tensor, correct: Tensor, groups: Tensor) -> None:
        """Add records: ``configs (N, S, D)``, ``depths (N, S)`` long, ``correct (N,)`` bool or float
        in [0, 1], and ``groups (N,)`` int64 naming each record's held-out example."""
        # On the metric's device, since a DDP sync gathers them with the process group's backend (NCCL
        # needs CUDA tensors); small index types keep millions of records cheap (gloo cannot gather int16).
        configs, depths, correct = check_records(self.staged, configs, depths, correct, self.device)
        groups = torch.as_tensor(groups).long().to(self.device)
        n = correct.shape[0]
        if groups.shape != (n,):
            raise ValueError(f"`groups` must have shape (N,) = ({n},), one example id per record, got {tuple(groups.shape)}")
        self.groups.append(groups)
        self.configs.append(configs.to(self._index_dtype))
        self.depths.append(depths.to(self._index_dtype))
        self.correct.append(correct)
        self.batches += 1

    def merge_state(self, incoming_state: "dict[str, Any] | Metric") -> None:
        """Add another accumulator's (or a state dict's) records to these, e.g. another rank's."""
        super().merge_state(incoming_state)
        self._computed = None  # torchmetrics keeps a cached compute() result that a merge does not invalidate

    def compute(self) -> BilinearTable:
        """The fitted :class:`~lightning_nas.bilinear.BilinearTable` (see :func:`fit_log_error_table`)."""
        # Lists of per-update tensors here; one gathered tensor each after a DDP sync.
        if isinstance(self.correct, list) and not self.correct:
            raise ValueError("no record to fit; evaluate some held-out batches before compute()")
        cat = {name: dim_zero_cat(getattr(self, name)).cpu().numpy() for name in ("groups", "configs", "depths", "correct")}
        table = fit_log_error_table(self.staged, cat["configs"], cat["depths"], cat["correct"], cat["groups"], ridge=self.ridge)
        table.metadata = {**self.metadata, **table.metadata, "batches": int(self.batches)}
        return table


def _features(staged: StagedSpace, configs: np.ndarray, depths: np.ndarray) -> tuple[sparse.csr_matrix, np.ndarray, np.ndarray]:
    """One-hot design matrix of the additive form: ``(R, F)`` and the (s, j) / (s, b, c) each column is."""
    S, D, C = staged.num_stages, staged.max_blocks, staged.num_configs
    depth_col = np.full((S, staged.max_depth_options), -1)
    block_col = np.full((S, D, C), -1)
    f = 0
    for s, st in enumerate(staged.stages):
        if len(st.depths) > 1:
            depth_col[s, : len(st.depths)] = np.arange(f, f + len(st.depths))
            f += len(st.depths)
        for b in range(min(st.num_blocks, max(st.depths))):
            block_col[s, b] = np.arange(f, f + C)
            f += C
    r = configs.shape[0]
    rows, cols = [], []
    depth_hit = depth_col[np.arange(S)[None, :], depths]  # (R, S)
    ok = depth_hit >= 0
    rows.append(np.nonzero(ok)[0])
    cols.append(depth_hit[ok])
    active = staged.active(depths) & (configs >= 0)  # (R, S, D)
    block_hit = block_col[np.arange(S)[None, :, None], np.arange(D)[None, None, :], np.maximum(configs, 0)]
    ok = active & (block_hit >= 0)
    rows.append(np.nonzero(ok)[0])
    cols.append(block_hit[ok])
    rows, cols = np.concatenate(rows), np.concatenate(cols)
    matrix = sparse.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(r, f))
    return matrix, depth_col, block_col


def fit_log_error_table(
    staged: StagedSpace, configs: np.ndarray, depths: np.ndarray, correct: np.ndarray, groups: np.ndarray, *, ridge: float = RIDGE,
) -> BilinearTable:
    """Fit the multiplicative-error model (module docstring) by conditional Poisson likelihood.

    Args:
        staged: the space structure.
        configs: ``(R, S, D)`` config index per block of each record (-1 for missing positions).
        depths: ``(R, S)`` depth option index per stage.
        correct: ``(R,)`` per-record score in [0, 1] (1 = right); ``1 − correct`` is the error count.
        groups: ``(R,)`` int, the held-out example of each record.
        ridge: L2 penalty per informative example on the gains.

    Returns:
        A :class:`~lightning_nas.bilinear.BilinearTable` (``name="accuracy"``, ``link="log_error"``):
        ``block``/``depth`` are the gains in ``−log(error)`` (nats; higher is better), centred; the
        metadata has ``examples`` (records), ``held_out_examples``, ``informative_examples`` (those
        with an error and at least two records), ``base_accuracy`` and the optimiser's ``fit`` report.

    Raises:
        ValueError: no record was wrong (errors cannot be modelled), or mismatched shapes.
    """
    configs, depths = np.asarray(configs, dtype=np.int64), np.asarray(depths, dtype=np.int64)
    correct, groups = np.asarray(correct, dtype=np.float64), np.asarray(groups, dtype=np.int64)
    r = correct.shape[0]
    if configs.shape[:1] != (r,) or depths.shape[:1] != (r,) or groups.shape != (r,):
        raise ValueError(f"`configs`, `depths` and `groups` must have one row per record ({r}), got {configs.shape}, {depths.shape}, {groups.shape}")
    _, group, counts = np.unique(groups, return_inverse=True, return_counts=True)
    error = 1.0 - correct
    errors_per_example = np.bincount(group, weights=error)
    # E[Acc] with each held-out example weighted equally, however many records it has.
    base_error = float(np.mean(errors_per_example / counts))
    if base_error <= 0:
        raise ValueError("every record is right: the log-error model needs some errors (use the conditional-means estimator)")
    informative = (errors_per_example > 0) & (counts >= 2)
    keep = informative[group]
    # A block's gain depends only on the decisions it owns (StagedSpace.own_configs): fit those,
    # then give every config the gain of its own config.
    own = staged.own_configs()
    S, D = staged.num_stages, staged.max_blocks
    configs = np.where(configs >= 0, own[np.arange(S)[:, None], np.arange(D)[None, :], np.maximum(configs, 0)], -1)
    X, depth_col, block_col = _features(staged, configs[keep], depths[keep])
    e, g = error[keep], np.unique(group[keep], return_inverse=True)[1]
    m = int(informative.sum())
    total = np.bincount(g, weights=e, minlength=m)
    f = X.shape[1]
    Xt = X.T.tocsr()

    def objective(theta: np.ndarray) -> tuple[float, np.ndarray]:
        # θ are log-error gains; per example, −[Σ e_r η_r − E_x log Σ_r exp(η_r)], softmax within the example.
        eta = X @ theta
        top = np.full(m, -np.inf)
        np.maximum.at(top, g, eta)
        w = np.exp(eta - top[g])
        z = np.bincount(g, weights=w, minlength=m)
        nll = -(e @ eta - total @ (np.log(z) + top))
        grad = -(Xt @ e - Xt @ (total[g] * w / z[g]))
        return (nll + ridge * m * theta @ theta) / m, (grad + 2 * ridge * m * theta) / m

    result = optimize.minimize(objective, np.zeros(f), jac=True, method="L-BFGS-B", options={"maxiter": 2000, "gtol": 1e-10, "ftol": 1e-14})
    theta = -result.x  # −log(error) gains: higher is better
    block = np.where(block_col >= 0, theta[np.maximum(block_col, 0)], 0.0)
    block = np.where(staged.config_exists(), np.take_along_axis(block, own, -1), 0.0)
    depth = np.where(depth_col >= 0, theta[np.maximum(depth_col, 0)], 0.0)
    block, depth = _centre(staged, block, depth)
    # E_a[exp(−g(a))] factorises over stages under uniform sampling (each decision's gain sits in
    # one block): match the mean error.
    log_mean = 0.0
    for s, st in enumerate(staged.stages):
        per_block = [np.log(np.mean(np.exp(-block[s, b, : len(c)]))) for b, c in enumerate(st.configs)]  # log E_c exp(−block)
        options = [-depth[s, j] + sum(per_block[:d]) for j, d in enumerate(st.depths)]
        log_mean += float(np.logaddexp.reduce(options) - np.log(len(options)))
    constant = -np.log(base_error) + log_mean
    metadata = {
        "examples": int(r), "held_out_examples": int(len(counts)), "informative_examples": m, "base_accuracy": 1.0 - base_error,
        "fit": {"converged": bool(result.success), "iterations": int(result.nit), "message": str(result.message), "ridge": ridge},
    }
    return BilinearTable(staged, constant, block, depth, name="accuracy", unit="fraction", metadata=metadata, link="log_error")


def _centre(staged: StagedSpace, block: np.ndarray, depth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    # Moves each block position's mean gain onto the depth options that run it (the constant for
    # fixed-depth stages, which the caller sets anyway) and each stage's mean depth gain off:
    # every arch's additive form is unchanged up to a constant.
    block, depth = block.copy(), depth.copy()
    for s, st in enumerate(staged.stages):
        for b in range(min(st.num_blocks, max(st.depths))):
            count = len(st.configs[b])
            mean = block[s, b, :count].mean()
            block[s, b, :count] -= mean
            for j, d in enumerate(st.depths):
                if d > b:
                    depth[s, j] += mean
        depth[s, : len(st.depths)] -= depth[s, : len(st.depths)].mean()
    return block, depth


def allocate_records(spread: Tensor, budget: int, minimum: "int | Tensor", maximum: int) -> Tensor:
    """Records per example for a budget, proportional to how much its outcome varies (Neyman allocation).

    Each example gets ``clamp(floor(λ · spread), minimum, maximum)`` records, with the largest ``λ``
    that keeps the total within ``budget`` (found by bisection).

    Args:
        spread: ``(N,)`` non-negative, an estimate of each example's outcome standard deviation over
            architectures (e.g. ``sqrt(q (1 − q))`` of its records so far).
        budget: total records for the ``N`` examples (forward passes of single examples).
        minimum: records every example keeps (an int, or ``(N,)`` for the records it already has).
        maximum: records no example exceeds (an example already above it keeps what it has).

    Returns:
        ``(N,)`` long, each in ``[minimum, max(minimum, maximum)]``, summing to at most
        ``max(budget, Σ minimum)``; below the budget only by rounding (less than one record per
        example) unless every example with a spread is at ``maximum``.
    """
    spread = torch.as_tensor(spread, dtype=torch.float64)
    if not bool(torch.isfinite(spread).all()):
        raise ValueError("`spread` must be finite (a NaN spread would give an example a meaningless record count)")
    spread = spread.clamp(min=0)
    # Checked here: an infinite `maximum` would keep the bracketing loop below doubling forever.
    for name, value in (("budget", budget), ("maximum", maximum)):
        if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) or not math.isfinite(value) or value < 0:
            raise ValueError(f"`{name}` must be a finite number >= 0, got {value!r}")
    minimum_t = torch.as_tensor(minimum, dtype=torch.float64)
    if not bool(torch.isfinite(minimum_t).all()) or bool((minimum_t < 0).any()):
        raise ValueError(f"`minimum` must be finite and >= 0, got {minimum!r}")
    low = torch.broadcast_to(minimum_t, spread.shape)
    high = torch.maximum(low, torch.full_like(spread, float(maximum)))

    def counts(lam: float) -> Tensor:
        return torch.minimum(torch.maximum((lam * spread).floor(), low), high)

    if float(low.sum()) >= budget or float(spread.sum()) <= 0:
        return low.long()
    top = 1.0
    while float(counts(top).sum()) <= budget and bool((counts(top) < high)[spread > 0].any()):
        top *= 2.0
    bottom = 0.0
    for _ in range(64):  # float64 bisection: λ to machine precision
        middle = (bottom + top) / 2
        bottom, top = (middle, top) if float(counts(middle).sum()) <= budget else (bottom, middle)
    return counts(bottom).long()
