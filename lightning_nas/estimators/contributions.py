"""BINAS's bilinear accuracy estimator: the accuracy gain of every single design choice.

All quantities are top-1 accuracies of the supernet on a held-out split, with every choice that is
not fixed sampled uniformly *per example* (BINAS §3.2 / Eq. 3)::

    E[Acc]                                      base accuracy, everything uniform
    Δ^s_j   = E[Acc | d_s = depths[j]] − E[Acc]  depth of stage s fixed
    Δ^s_b,c = E[Acc | c_{s,b} = c, d_s = b] − E[Acc]

so that ``ACC(arch) = E[Acc] + Σ_s Δ^s_{d_s} + Σ_s Σ_{b ≤ d_s} Δ^s_{b,c_{s,b}}``, which is exactly a
:class:`~lightning_nas.bilinear.BilinearTable` with ``constant=E[Acc]``, ``depth=Δ^s_j`` and
``block=Δ^s_{b,c}``.

**Conditioning rule** (:func:`conditioning_depths`), for block position ``b`` (1-based) of stage ``s``:

* ``b`` is one of the stage's depth options → condition on the configuration **and** ``d_s = b``
  (Eq. 3; this includes a block active at every depth, e.g. block 2 with depths {2, 3, 4}, as in the
  official code's 12 + 3 × (1 + 12) conditionals per stage);
* ``b`` is below every depth option (always active, never the last block) → condition on the
  configuration only, depth uniform (the code's linear ``q_α`` term);
* ``b`` lies between depth options (depths {2, 4}, block 3) → condition on the configuration and the
  shallowest depth at which the block runs (``d_s = 4``): the closest there is to "last block";
* ``b`` above every depth option never runs: no gain (0), no conditional.

Two estimators produce the same table:

* :func:`estimate_one_pass`: one stream of per-example ``(architecture, correct)`` records; each
  record counts towards the base mean, its stages' depth means and every block mean whose
  condition it satisfies, so one pass estimates every Δ at once;
* :func:`estimate_paper_protocol`: BINAS's protocol, one dedicated evaluation (``passes`` passes of
  the held-out data) per conditional with the conditioned decisions fixed for every example.

With ``paired=True`` the one-pass records of each example are centred on its other passes
(:meth:`ContributionAccumulator.update_paired`): same expectation, less noise. ``score=`` swaps the
per-example outcome, e.g. :class:`SmoothedTop1` for top-1 correctness smoothed by the logit margin.
With ``fit="log_error"`` the one-pass records are fit instead as a multiplicative-error model with
a difficulty per example (:mod:`lightning_nas.estimators.log_error`), and ``allocation="adaptive"``
spends the records on the examples whose outcome varies; the table has ``link="log_error"``.

Both accumulate in :class:`ContributionAccumulator`, a ``torchmetrics.Metric`` whose sum-reduced
states make a DDP run give the result of a single process.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from lightning.pytorch.utilities import move_data_to_device
from lightning.fabric.utilities.apply_func import apply_to_collection
from torch import Tensor, nn
from torchmetrics import Metric
from torchmetrics.utilities import rank_zero_warn

from lightning_nas.bilinear import BilinearTable
from lightning_nas.estimators.log_error import LogErrorAccumulator, allocate_records, check_correct, check_records
from lightning_nas.seeding import derive_generator
from lightning_nas.spaces.staged import StagedSpace
from lightning_nas.supernet import Supernet

__all__ = [
    "ALLOCATIONS",
    "CONFIG_ONLY",
    "FITS",
    "NEVER_ACTIVE",
    "METHODS",
    "Conditional",
    "ContributionAccumulator",
    "SmoothedTop1",
    "StagedIndexer",
    "ablate",
    "check_estimator_options",
    "check_paired",
    "check_score",
    "conditioning_depths",
    "default_batch_to_xy",
    "estimate_contributions",
    "estimate_one_pass",
    "estimate_paper_protocol",
    "evaluation_mode",
    "logit_margin",
    "make_accumulator",
    "paper_protocol_conditionals",
    "paper_protocol_passes",
    "score_name",
    "shrink_gains",
    "to_vector_form",
    "top1_correct",
]

CONFIG_ONLY = -1  # conditioning_depths: the block's gain conditions on its configuration only
NEVER_ACTIVE = -2  # conditioning_depths: no block there, or one that runs at no depth
METHODS = ("one_pass", "paper")
FITS = ("means", "log_error")
ALLOCATIONS = ("uniform", "adaptive")
SHRINKAGE = ("none", "empirical_bayes")
ALLOCATION_TEMPERATURE = 0.25  # logits: an example's pilot outcome spread is sqrt(q(1-q)), q = mean sigmoid(margin / this)
MAX_RECORDS_FACTOR = 4  # adaptive allocation: no example gets more than this many times `passes` records
_GROUP_STRIDE = 1 << 32  # record group (held-out example) id = batch index * stride + position in the batch
ABLATIONS = ("full", "q_beta", "Q", "q_alpha")

RULE = (
    "block b conditions on (config, depth=b) when b is a depth option; on config only when b is below every "
    "depth option; on (config, shallowest depth >= b) otherwise"
)


# -- structure ---------------------------------------------------------------------------------
def conditioning_depths(staged: StagedSpace) -> np.ndarray:
    """``(S, D)`` int: per block position, the index into ``stage.depths`` its gain conditions on.

    ``CONFIG_ONLY`` (-1) marks blocks conditioned on their configuration only (the linear ``q_α``
    group) and ``NEVER_ACTIVE`` (-2) positions that do not exist or never run. See the module
    docstring for the rule.
    """
    out = np.full((staged.num_stages, staged.max_blocks), NEVER_ACTIVE, dtype=np.int64)
    for s, st in enumerate(staged.stages):
        options = sorted(st.depths)
        for b in range(st.num_blocks):
            position = b + 1
            if len(st.depths) == 1 and position <= st.depths[0]:
                out[s, b] = CONFIG_ONLY  # fixed depth: conditioning on it changes nothing
            elif position in st.depths:
                out[s, b] = st.depths.index(position)
            elif position < options[0]:
                out[s, b] = CONFIG_ONLY
            elif position < options[-1]:
                out[s, b] = st.depths.index(min(d for d in options if d >= position))
    return out


def own_configs(own: Tensor, configs: Tensor) -> Tensor:
    """``configs (..., S, D)`` mapped to the configs whose accuracy gain they take (``own (S, D, C)``,
    :meth:`~lightning_nas.spaces.staged.StagedSpace.own_configs`); -1 entries stay -1."""
    picked = own.expand(*configs.shape, own.shape[-1]).gather(-1, configs.clamp(min=0)[..., None])[..., 0]
    return torch.where(configs >= 0, picked, configs)


class StagedIndexer:
    """Converts between per-label candidate indices (``SearchSpace.sample_indices``) and staged indices.

    Args:
        staged: the staged view of the supernet's space.
    """

    def __init__(self, staged: StagedSpace) -> None:
        self.staged = staged
        space = staged.space
        self._blocks: list[tuple[int, int, tuple[str, ...], Tensor]] = []
        self._depths: list[tuple[int, str | None, Tensor | None]] = []
        for s, st in enumerate(staged.stages):
            for b, labels in enumerate(st.block_labels):
                lookup = torch.full(tuple(len(space[lab].values) for lab in labels), -1, dtype=torch.long)
                for c, values in enumerate(st.configs[b]):
                    lookup[tuple(space[lab].index(v) for lab, v in zip(labels, values))] = c
                self._blocks.append((s, b, labels, lookup))
            if st.depth_label is None:
                self._depths.append((s, None, None))
            else:
                lookup = torch.full((len(space[st.depth_label].values),), -1, dtype=torch.long)
                for j, d in enumerate(st.depths):
                    lookup[space[st.depth_label].index(d)] = j
                self._depths.append((s, st.depth_label, lookup))

    def to_staged(self, indices: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
        """``(configs (N, S, D), depths (N, S))`` long tensors from ``{label: LongTensor (N,)}``.

        Missing block positions get config -1.
        """
        first = torch.as_tensor(next(iter(indices.values())))
        n = first.shape[0]
        configs = torch.full((n, self.staged.num_stages, self.staged.max_blocks), -1, dtype=torch.long)
        depths = torch.zeros((n, self.staged.num_stages), dtype=torch.long)
        for s, b, labels, lookup in self._blocks:
            configs[:, s, b] = lookup[tuple(torch.as_tensor(indices[lab]).long().cpu() for lab in labels)]
        for s, label, lookup in self._depths:
            if label is not None:
                depths[:, s] = lookup[torch.as_tensor(indices[label]).long().cpu()]
        if (configs[:, self.staged.block_exists()] < 0).any() or (depths < 0).any():
            raise ValueError("`indices` name a combination of values that is not a configuration of the staged space")
        return configs, depths

    def fixed(self, conditional: "Conditional") -> dict[str, int]:
        """``{label: candidate index}`` that a conditional fixes for every example."""
        space, st = self.staged.space, self.staged.stages[conditional.stage] if conditional.stage is not None else None
        out: dict[str, int] = {}
        if conditional.block is not None:
            # Only the decisions the block owns: a shared decision owned elsewhere stays random.
            unit = (conditional.stage, conditional.block)
            values = st.configs[conditional.block][conditional.config]
            out.update({
                lab: space[lab].index(v) for lab, v in zip(st.block_labels[conditional.block], values)
                if self.staged.owner.get(lab, unit) == unit
            })
        if conditional.depth is not None and st.depth_label is not None:
            out[st.depth_label] = space[st.depth_label].index(st.depths[conditional.depth])
        return out


@dataclass(frozen=True)
class Conditional:
    """One conditional expectation of the estimator.

    ``stage is None``: the base ``E[Acc]``; ``block is None``: the depth of ``stage`` fixed to
    option ``depth``; otherwise block ``block`` fixed to configuration ``config`` and, unless
    ``depth is None`` (a config-only block), the depth fixed to option ``depth``.
    """

    stage: int | None = None
    depth: int | None = None
    block: int | None = None
    config: int | None = None

    @property
    def kind(self) -> str:
        return "base" if self.stage is None else "depth" if self.block is None else "block"


def paper_protocol_conditionals(staged: StagedSpace) -> list[Conditional]:
    """BINAS's dedicated evaluations: the base, each depth option of stages with several, and each
    ``(stage, block, config)`` of blocks that can run.

    With BINAS's space (5 stages, 4 blocks, depths {2, 3, 4}, 12 configs) this is
    ``1 + 5 × (3 + 4 × 12) = 256``.
    """
    cond = conditioning_depths(staged)
    own = staged.own_configs()
    out = [Conditional()]
    for s, st in enumerate(staged.stages):
        if len(st.depths) > 1:
            out += [Conditional(s, j) for j in range(len(st.depths))]
        for b in range(st.num_blocks):
            if cond[s, b] != NEVER_ACTIVE:
                depth = None if cond[s, b] == CONFIG_ONLY else int(cond[s, b])
                # One conditional per value of the decisions the block owns (see StagedSpace.own_configs).
                out += [Conditional(s, depth, b, c) for c in range(len(st.configs[b])) if own[s, b, c] == c]
    return out


def paper_protocol_passes(staged: StagedSpace, passes: int = 10) -> int:
    """Passes over the held-out data the paper protocol needs: ``len(conditionals) × passes``."""
    return len(paper_protocol_conditionals(staged)) * _positive_int(passes, "passes")


# -- accumulator -----------------------------------------------------------------------------------
class ContributionAccumulator(Metric):
    """Sums of per-example correctness per conditional; ``compute()`` gives the accuracy table.

    States (all ``dist_reduce_fx="sum"``, float64): ``base_count``/``base_correct`` (scalars),
    ``depth_count``/``depth_correct`` ``(S, max_depth_options)``, ``block_count``/``block_correct``
    ``(S, D, C)``, ``examples`` and ``batches`` (evaluation cost). Feed it either one-pass records
    (:meth:`update`) or paper-protocol evaluations (:meth:`update_conditional`), not both.

    Args:
        staged: the structure the indices refer to.
        metadata: facts copied into the table's metadata (method, passes, seed, ...).
        shrinkage: ``"none"`` (BINAS: raw differences of means) or ``"empirical_bayes"``: each gain
            pulled toward its group by its sampling noise (:func:`shrink_gains`). A search maximises a
            sum of gains, so it picks the ones whose noise happens to be positive (the winner's curse);
            shrinking removes most of that optimism when there are few records per conditional.
    """

    full_state_update = False
    is_differentiable = False
    higher_is_better = None

    def __init__(
        self, staged: StagedSpace, *, metadata: Mapping[str, Any] | None = None, shrinkage: str = "none", **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        if not isinstance(staged, StagedSpace):
            raise ValueError(f"`staged` must be a StagedSpace, got {type(staged).__name__}")
        if shrinkage not in SHRINKAGE:
            raise ValueError(f"`shrinkage` must be one of {SHRINKAGE}, got {shrinkage!r}")
        self.staged = staged
        self.shrinkage = shrinkage
        self.metadata = dict(metadata or {})
        self._mode: str | None = None
        S, D, C, nd = staged.num_stages, staged.max_blocks, staged.num_configs, staged.max_depth_options
        f64 = torch.float64
        for name, shape in (("base", ()), ("depth", (S, nd)), ("block", (S, D, C))):
            self.add_state(f"{name}_count", torch.zeros(shape, dtype=f64), dist_reduce_fx="sum")
            self.add_state(f"{name}_correct", torch.zeros(shape, dtype=f64), dist_reduce_fx="sum")
        self.add_state("examples", torch.zeros((), dtype=f64), dist_reduce_fx="sum")
        self.add_state("batches", torch.zeros((), dtype=f64), dist_reduce_fx="sum")
        self.add_state("residual_sq", torch.zeros((), dtype=f64), dist_reduce_fx="sum")  # paired records only
        self._cond = torch.as_tensor(conditioning_depths(staged))
        self._nd = torch.tensor([len(st.depths) for st in staged.stages])
        self._own = torch.as_tensor(staged.own_configs())

    def _set_mode(self, mode: str) -> None:
        if self._mode not in (None, mode):
            raise ValueError(f"this accumulator holds {self._mode!r} records; use a fresh one for {mode!r} records")
        self._mode = mode

    def reset(self) -> None:
        super().reset()
        self._mode = None

    def merge_state(self, incoming_state: "dict[str, Any] | Metric") -> None:
        """Add another accumulator's (or a state dict's) sums to these, e.g. another rank's.

        Raises:
            ValueError: when the two hold records of different methods (one-pass and paper).
        """
        if isinstance(incoming_state, ContributionAccumulator):
            if incoming_state._mode is not None:
                self._set_mode(incoming_state._mode)
        super().merge_state(incoming_state)
        # torchmetrics keeps a cached compute() result that a merge does not invalidate.
        self._computed = None
        self._update_count += 1

    def update(
        self, configs: Tensor | None = None, depths: Tensor | None = None, correct: Tensor | None = None,
        *, conditional: "Conditional | None" = None, paired: bool = False,
    ) -> None:
        """Add one-pass records: per example its architecture and whether it was right.

        Args:
            configs: ``(N, S, D)`` long, config index per block (-1 for missing positions).
            depths: ``(N, S)`` long, depth option index per stage.
            correct: ``(N,)`` bool or float in [0, 1] (1 = top-1 correct).
            conditional: instead of ``configs`` and ``depths``, the conditional these examples were
                evaluated under (paper protocol; see :meth:`update_conditional`).
            paired: the records are ``P`` draws for the same examples (see :meth:`update_paired`).
        """
        if correct is None:
            raise ValueError("`correct` is required: one bool or float in [0, 1] per example")
        if conditional is not None:
            self._update_conditional(conditional, correct)
            return
        if paired:
            self._update_paired(configs, depths, correct)
            return
        configs, depths, correct = self._check(configs, depths, correct)
        self._set_mode("one_pass")
        self._add_records(configs, depths, correct, correct)

    def update_paired(self, configs: Tensor, depths: Tensor, correct: Tensor) -> None:
        """Add one-pass records of the same examples under ``P >= 2`` independent draws.

        Each record counts towards the conditionals with its correctness *centred on its example*:
        minus the mean of the same example's other ``P − 1`` records (whose architectures are
        independent of it). Its expectation under a conditional is still ``Δ`` (the leave-one-out
        mean estimates the example's accuracy over uniform architectures), but the noise of which
        examples happened to land in the conditional (easy or hard ones) is removed; what remains
        is how an example's outcome varies with the whole architecture. On the estimator benchmark
        this raised Kendall τ by 0.03–0.05 at 21 passes. ``E[Acc]`` is the plain mean. Do not mix
        with :meth:`update`.

        Args:
            configs: ``(P, N, S, D)`` long: per draw and example, config index per block.
            depths: ``(P, N, S)`` long.
            correct: ``(P, N)`` bool or float in [0, 1].
        """
        self.update(configs, depths, correct, paired=True)

    def _update_paired(self, configs: Tensor, depths: Tensor, correct: Tensor) -> None:
        correct = torch.as_tensor(correct)
        if correct.dim() != 2 or correct.shape[0] < 2:
            raise ValueError(f"`correct` must have shape (P, N) with P >= 2 draws per example, got {tuple(correct.shape)}")
        draws, n = correct.shape
        configs, depths = torch.as_tensor(configs), torch.as_tensor(depths)
        if configs.shape[:2] != (draws, n) or depths.shape[:2] != (draws, n):
            raise ValueError(
                f"`configs` and `depths` must start with (P, N) = ({draws}, {n}) like `correct`, got "
                f"{tuple(configs.shape)} and {tuple(depths.shape)}"
            )
        configs, depths, flat = self._check(configs.flatten(0, 1), depths.flatten(0, 1), correct.flatten())
        self._set_mode("one_pass_paired")
        correct = flat.view(draws, n)
        others = (correct.sum(0, keepdim=True) - correct) / (draws - 1)
        residual = (correct - others).flatten()
        self.residual_sq += (residual * residual).sum()
        self._add_records(configs, depths, flat, residual)

    def _add_records(self, configs: Tensor, depths: Tensor, correct: Tensor, value: Tensor) -> None:
        # ``correct`` feeds E[Acc]; ``value`` (``correct`` itself, or its paired residual) the conditionals.
        n = correct.shape[0]
        self.base_count += n
        self.base_correct += correct.sum()
        depth_hot = nn.functional.one_hot(depths, self.staged.max_depth_options).to(torch.float64)  # (N, S, nd)
        self.depth_count += depth_hot.sum(0)
        self.depth_correct += torch.einsum("nsj,n->sj", depth_hot, value)
        cond = self._cond.to(configs.device)
        configs = own_configs(self._own.to(configs.device), configs)
        satisfied = (cond == CONFIG_ONLY) | ((cond >= 0) & (depths[:, :, None] == cond))  # (N, S, D)
        config_hot = nn.functional.one_hot(configs.clamp(min=0), self.staged.num_configs).to(torch.float64) * satisfied[..., None]
        self.block_count += config_hot.sum(0)
        self.block_correct += torch.einsum("nsdc,n->sdc", config_hot, value)
        self.examples += n
        self.batches += 1

    def update_conditional(self, conditional: "Conditional", correct: Tensor) -> None:
        """Add a paper-protocol evaluation: ``correct (N,)`` measured with ``conditional`` fixed."""
        self.update(correct=correct, conditional=conditional)

    def _update_conditional(self, conditional: "Conditional", correct: Tensor) -> None:
        if not isinstance(conditional, Conditional):
            raise ValueError(f"`conditional` must be a Conditional, got {type(conditional).__name__}")
        correct = self._check_correct(correct)
        self._set_mode("paper")
        n = correct.shape[0]
        total = correct.sum()
        if conditional.kind == "base":
            self.base_count += n
            self.base_correct += total
        elif conditional.kind == "depth":
            self.depth_count[conditional.stage, conditional.depth] += n
            self.depth_correct[conditional.stage, conditional.depth] += total
        else:
            index = (conditional.stage, conditional.block, conditional.config)
            self.block_count[index] += n
            self.block_correct[index] += total
        self.examples += n
        self.batches += 1

    def compute(self) -> BilinearTable:
        """The :class:`~lightning_nas.bilinear.BilinearTable` ``name="accuracy"`` (fractions).

        Conditionals without any record get a gain of 0; they are listed in
        ``metadata["missing"]`` and a warning names how many.

        Raises:
            ValueError: when the base accuracy has no record at all.
        """
        if float(self.base_count) <= 0:
            raise ValueError("no record of the base accuracy E[Acc]; evaluate some held-out batches before compute()")
        base = float(self.base_correct / self.base_count)
        depth_count, block_count = self.depth_count.cpu().numpy(), self.block_count.cpu().numpy()
        with np.errstate(invalid="ignore", divide="ignore"):
            depth_mean = self.depth_correct.cpu().numpy() / depth_count
            block_mean = self.block_correct.cpu().numpy() / block_count
        nd = self._nd.numpy()
        # Single-option stages: conditioning on the depth is conditioning on nothing.
        depth_needed = self.staged.depth_exists() & (nd[:, None] > 1)
        own = self._own.numpy()
        # Configs whose gain is another config's (shared decisions owned by another block) are filled in below.
        block_needed = (self._cond.numpy() != NEVER_ACTIVE)[..., None] & (own == np.arange(own.shape[-1])) & self.staged.config_exists()
        depth_missing = depth_needed & (depth_count <= 0)
        block_missing = block_needed & (block_count <= 0)
        depth_valid, block_valid = depth_needed & ~depth_missing, block_needed & ~block_missing
        # Paired residuals sum to 0 over all records: their conditional means are the gains.
        offset = 0.0 if self._mode == "one_pass_paired" else base
        depth_gain = np.where(depth_valid, depth_mean - offset, 0.0)
        block_gain = np.where(block_valid, block_mean - offset, 0.0)
        if self.shrinkage == "empirical_bayes":
            depth_gain, block_gain = self._shrink(base, depth_gain, depth_count, depth_valid, block_gain, block_count, block_valid)
        block_gain = np.where(self.staged.config_exists(), np.take_along_axis(block_gain, own, -1), 0.0)
        missing = {"depth": np.argwhere(depth_missing).tolist(), "block": np.argwhere(block_missing).tolist()}
        if missing["depth"] or missing["block"]:
            rank_zero_warn(
                f"contribution estimate: {len(missing['depth'])} depth and {len(missing['block'])} block conditionals "
                "have no record and get a gain of 0 (listed in table.metadata['missing']); evaluate more passes or "
                "held-out examples"
            )
        metadata = {
            **self.metadata,
            "base_accuracy": base,
            "conditioning": RULE,
            "examples": int(self.examples),
            "batches": int(self.batches),
            "min_count": {
                "base": int(self.base_count),
                "depth": int(depth_count[depth_needed].min()) if depth_needed.any() else None,
                "block": int(block_count[block_needed].min()) if block_needed.any() else None,
            },
            "missing": missing,
            "shrinkage": self.shrinkage,
        }
        return BilinearTable(self.staged, base, block_gain, depth_gain, name="accuracy", unit="fraction", metadata=metadata)

    def _shrink(self, base, depth_gain, depth_count, depth_valid, block_gain, block_count, block_valid):
        # Sampling variance of a gain Δ = mean_cond − mean_base, with the pooled Bernoulli variance
        # p(1−p) (an upper bound for fractional `correct`). One-pass: the conditional's records are a
        # subset of the base's, so var = σ²(1/n_c − 1/n_0); paper protocol: separate evaluations,
        # var = σ²(1/n_c + 1/n_0) (common random numbers make it somewhat smaller: conservative).
        n0 = float(self.base_count)
        # Paired records: the residuals' own variance (what is left once each example is centred).
        sigma2 = max(float(self.residual_sq) / n0 if self._mode == "one_pass_paired" else base * (1.0 - base), 1e-12)
        sign = 1.0 if self._mode == "paper" else -1.0
        with np.errstate(divide="ignore"):
            depth_var = sigma2 * np.maximum(1.0 / depth_count + sign / n0, 0.0)
            block_var = sigma2 * np.maximum(1.0 / block_count + sign / n0, 0.0)
        # Depth gains: one pooled group shrunk toward 0 (few options per stage). Block gains: each
        # (stage, position) row toward its own mean, which carries the depth condition all its
        # configurations share.
        depth_gain = shrink_gains(depth_gain.reshape(1, -1), depth_var.reshape(1, -1), depth_valid.reshape(1, -1), center=False)
        block_gain = shrink_gains(block_gain, block_var, block_valid, center=True)
        return depth_gain.reshape(depth_count.shape), block_gain

    # -- checks ------------------------------------------------------------------------------
    def _check_correct(self, correct: Tensor) -> Tensor:
        return check_correct(correct, self.base_count.device)

    def _check(self, configs: Tensor, depths: Tensor, correct: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return check_records(self.staged, configs, depths, correct, self.base_count.device)


def shrink_gains(gains: np.ndarray, variances: np.ndarray, valid: np.ndarray, *, center: bool) -> np.ndarray:
    """Empirical-Bayes (normal–normal) shrinkage of noisy gains, row by row along the last axis.

    Within a row the true gains are modelled as ``N(m, τ²)`` and each estimate as the truth plus
    ``N(0, variance)`` noise; ``m`` is the row's mean (``center=True``) or 0, and ``τ²`` the
    method-of-moments estimate ``max(0, mean((g − m)²) − mean(variance))``. Each valid gain becomes
    its posterior mean ``m + (g − m)·τ²/(τ² + variance)``: noise-dominated rows collapse to ``m``,
    precisely measured gains barely move.

    Args:
        gains: ``(..., K)`` estimated gains.
        variances: ``(..., K)`` their sampling variances (≥ 0).
        valid: ``(..., K)`` bool, entries that are estimates (others are returned unchanged).
        center: shrink toward the row mean instead of 0.

    Returns:
        An array shaped like ``gains``.
    """
    gains, variances, valid = np.asarray(gains, float), np.asarray(variances, float), np.asarray(valid, bool)
    if not gains.shape == variances.shape == valid.shape:
        raise ValueError(f"`gains`, `variances` and `valid` must have one shape, got {gains.shape}, {variances.shape}, {valid.shape}")
    if (variances[valid] < 0).any() or not np.isfinite(variances[valid]).all():
        raise ValueError("`variances` must be finite and non-negative at every valid entry")
    out = gains.copy()
    flat_g, flat_v, flat_ok, flat_out = (a.reshape(-1, gains.shape[-1]) for a in (gains, variances, valid, out))
    for g, v, ok, row in zip(flat_g, flat_v, flat_ok, flat_out):
        if not ok.any():
            continue
        m = float(np.average(g[ok])) if center else 0.0
        tau2 = max(float(np.mean((g[ok] - m) ** 2) - np.mean(v[ok])), 0.0)
        factor = np.divide(tau2, tau2 + v[ok], out=np.ones(int(ok.sum())), where=(tau2 + v[ok]) > 0)
        row[ok] = m + (g[ok] - m) * factor
    return flat_out.reshape(gains.shape)


# -- vector form and ablations -------------------------------------------------------------------
def to_vector_form(table: BilinearTable) -> tuple[float, np.ndarray, np.ndarray, np.ndarray]:
    """BINAS's vector form ``ACC = r + αᵀq_α + βᵀq_β + αᵀ Q_αβ β``.

    ``α`` is ``staged.one_hot(arch)[0].ravel()`` (length ``S·D·C``) and ``β`` is
    ``staged.one_hot(arch)[1].ravel()`` (length ``S·max_depth_options``, one-hot over each stage's
    depth *options*). Config-only blocks (see :func:`conditioning_depths`) go to ``q_α``, the others
    to ``Q_αβ`` with entry ``[(s,b,c),(s,j)] = block[s,b,c]`` when depth option ``j`` runs block ``b``
    (the block upper-triangular structure), 0 otherwise.

    Returns:
        ``(r, q_alpha (S·D·C,), q_beta (S·nd,), Q (S·D·C, S·nd))``.
    """
    staged = table.staged
    S, D, C, nd = staged.num_stages, staged.max_blocks, staged.num_configs, staged.max_depth_options
    cond = conditioning_depths(staged)
    linear = (cond == CONFIG_ONLY)[..., None]
    q_alpha = np.where(linear, table.block, 0.0).reshape(-1)
    Q = np.zeros((S, D, C, S, nd))
    for s, st in enumerate(staged.stages):
        for b in range(st.num_blocks):
            if cond[s, b] >= 0:
                for j, d in enumerate(st.depths):
                    if d >= b + 1:
                        Q[s, b, :, s, j] = table.block[s, b]
    return table.constant, q_alpha, table.depth.reshape(-1).copy(), Q.reshape(S * D * C, S * nd)


def ablate(table: BilinearTable, term: str) -> BilinearTable:
    """Table 2's ablations: a copy of ``table`` with one group of terms set to zero.

    Args:
        term: ``"full"`` (unchanged copy), ``"q_beta"`` (depth gains ``q_β ≡ 0``), ``"Q"`` (the
            depth-conditioned block gains ``Q_αβ ≡ 0``) or ``"q_alpha"`` (config-only block gains).
    """
    if term not in ABLATIONS:
        raise ValueError(f"`term` must be one of {ABLATIONS}, got {term!r}")
    block, depth = table.block.copy(), table.depth.copy()
    cond = conditioning_depths(table.staged)
    if term == "q_beta":
        depth[:] = 0.0
    elif term == "Q":
        block[cond >= 0] = 0.0
    elif term == "q_alpha":
        block[cond == CONFIG_ONLY] = 0.0
    metadata = {**table.metadata, "ablation": term}
    return BilinearTable(table.staged, table.constant, block, depth, name=table.name, unit=table.unit, metadata=metadata, link=table.link)


# -- evaluation core -----------------------------------------------------------------------------
def default_batch_to_xy(batch: Any) -> tuple[Any, Tensor]:
    """``(batch[0], batch[1])``: the inputs and the class labels of a ``(x, y, ...)`` batch."""
    if isinstance(batch, Tensor):
        # Indexing would "work": x = the first example, y = the second, and everything after is wrong.
        raise ValueError(f"a held-out batch is a single tensor of shape {tuple(batch.shape)}; batches must be (inputs, labels) "
                         "pairs, or pass `batch_to_xy` returning (inputs, labels)")
    try:
        return batch[0], batch[1]
    except (TypeError, IndexError, KeyError):
        raise ValueError(
            f"cannot read (x, y) from a batch of type {type(batch).__name__}; pass `batch_to_xy` returning (inputs, labels)"
        ) from None


def _check_logits(logits: Tensor, target: Tensor) -> Tensor:
    # Shared by the per-example scores: logits (N, K), class indices (N,) on the logits' device.
    if not isinstance(logits, Tensor) or logits.dim() != 2:
        raise ValueError(f"the forward function must return logits of shape (N, num_classes), got {getattr(logits, 'shape', type(logits))}")
    target = torch.as_tensor(target, device=logits.device)
    if target.shape != logits.shape[:1]:
        raise ValueError(f"labels must have shape (N,) = {tuple(logits.shape[:1])} (class indices), got {tuple(target.shape)}")
    if target.dtype.is_floating_point or target.dtype == torch.bool:
        raise ValueError(f"labels must be integer class indices, got dtype {target.dtype}")
    if target.numel() and (int(target.min()) < 0 or int(target.max()) >= logits.shape[1]):
        # An out-of-range label is never the arg-max: every subnet would silently score 0 on it.
        raise ValueError(f"labels must be class indices in [0, {logits.shape[1]}) (the logits' classes), "
                         f"got values in [{int(target.min())}, {int(target.max())}]")
    if not bool(torch.isfinite(logits).all()):
        raise ValueError("the network returned non-finite logits (NaN or inf): its weights (a diverged training run, a NaN "
                         "loss) or its inputs are not finite, so no accuracy can be measured from it")
    return target


def top1_correct(logits: Tensor, target: Tensor) -> Tensor:
    """``(N,)`` bool: whether the arg-max of ``logits (N, K)`` equals the class index ``target (N,)``."""
    target = _check_logits(logits, target)
    return logits.argmax(-1) == target


def logit_margin(logits: Tensor, target: Tensor) -> Tensor:
    """``(N,)``: the true class's logit minus the largest other one (> 0 exactly when top-1 is right)."""
    target = _check_logits(logits, target)
    true = logits.gather(1, target[:, None])
    others = logits.scatter(1, target[:, None], float("-inf")).amax(1, keepdim=True)
    return (true - others)[:, 0]


class SmoothedTop1:
    """Top-1 correctness smoothed by the logit margin, a per-example score for the estimators.

    ``sigmoid((z_y − max_{k≠y} z_k) / temperature)`` for logits ``z (N, K)`` and class index ``y``:
    ``(N,)`` floats in (0, 1) that tend to :func:`top1_correct` as ``temperature → 0``. An example
    whose margin is within a few ``temperature`` of zero counts fractionally, so a subnet that moves
    it toward or away from the decision boundary gets partial credit instead of a rare 0/1 flip:
    the estimate of top-1 contributions is slightly biased and less noisy. ``temperature`` is in
    logit units; on the gratings benchmark 0.25 was the best or within 0.013 τ of the best of
    0.05–0.35, and raised paired one-pass τ at 5 passes from 0.70 / 0.68 to 0.75 / 0.76 (two seeds;
    ``benchmarks/RESULTS.md``).
    """

    def __init__(self, temperature: float = 0.25) -> None:
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not 0 < temperature < float("inf"):
            raise ValueError(f"`temperature` must be a positive finite number (logit units), got {temperature!r}")
        self.temperature = float(temperature)

    def __call__(self, logits: Tensor, target: Tensor) -> Tensor:
        target = _check_logits(logits, target)
        if logits.shape[1] < 2:
            raise ValueError(f"SmoothedTop1 needs at least 2 classes, got logits of shape {tuple(logits.shape)}")
        return torch.sigmoid(logit_margin(logits, target).double() / self.temperature)

    def __repr__(self) -> str:
        return f"SmoothedTop1(temperature={self.temperature:g})"


def score_name(score: Callable[[Tensor, Tensor], Tensor]) -> str:
    """How a per-example score is recorded in a table's metadata (its ``repr`` or function name)."""
    return getattr(score, "__name__", None) or repr(score)


@contextlib.contextmanager
def evaluation_mode(model: nn.Module, supernet: Supernet) -> Iterator[None]:
    """Eval mode and no gradients inside; every submodule's train/eval flag and the supernet's
    active architecture are restored on exit."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with torch.no_grad(), supernet.activated(supernet.space.default()):
            yield
    finally:
        for m, training in modes:
            m.training = training


def _shard(held_out: Iterable[Any], rank: int, world_size: int) -> Iterator[tuple[int, Any]]:
    # Batch i belongs to rank i % world_size: the union over ranks is every batch once.
    for i, batch in enumerate(held_out):
        if i % world_size == rank:
            yield i, batch


def check_paired(paired: Any, method: str, passes: int | None) -> None:
    """Raise ``ValueError`` unless ``paired`` is a bool, and one-pass with ``passes >= 2`` when true."""
    if not isinstance(paired, bool):
        raise ValueError(f"`paired` must be a bool, got {paired!r}")
    if paired and (method != "one_pass" or (passes or 1) < 2):
        raise ValueError(f"`paired=True` needs method='one_pass' and passes >= 2, got method={method!r}, passes={passes!r}")


def check_score(score: Any) -> Callable[[Tensor, Tensor], Tensor]:
    """``score`` itself, :func:`top1_correct` for ``None``; ``ValueError`` unless callable."""
    if score is None:
        return top1_correct
    if not callable(score):
        raise ValueError(f"`score` must be a callable (logits (N, K), labels (N,)) -> (N,) in [0, 1], e.g. SmoothedTop1(), got {score!r}")
    return score


def _checked_score(score: Callable[[Tensor, Tensor], Tensor]) -> Callable[[Tensor, Tensor], Tensor]:
    # A user's score is checked where it returns, so a NaN or a wrong shape is reported as the
    # score's, not later as a non-finite table entry or a records-shape mismatch.
    def checked(logits: Tensor, target: Tensor) -> Tensor:
        out = score(logits, target)
        n = int(logits.shape[0])
        if not isinstance(out, Tensor) or tuple(out.shape) != (n,):
            raise ValueError(f"`score` {score_name(score)} must return a tensor of shape ({n},) (one value per example), "
                             f"got {tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__}")
        if out.dtype != torch.bool and not bool(torch.isfinite(out).all()):
            raise ValueError(f"`score` {score_name(score)} returned non-finite values (NaN or inf); it must return values in [0, 1]")
        return out

    return checked


def _positive_int(value: Any, name: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"`{name}` must be a positive int, got {value!r}")
    return value


def _check_common(seed: Any, rank: Any, world_size: Any) -> None:
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"`seed` must be a non-negative int, got {seed!r}")
    _positive_int(world_size, "world_size")
    if not isinstance(rank, int) or not 0 <= rank < world_size:
        raise ValueError(f"`rank` must be an int in [0, world_size={world_size}), got {rank!r}")


def estimate_contributions(
    supernet: Supernet,
    held_out: Iterable[Any],
    *,
    method: str = "one_pass",
    passes: int | None = None,
    seed: int = 0,
    batch_to_xy: Callable[[Any], tuple[Any, Tensor]] | None = None,
    forward: Callable[[Any], Tensor] | None = None,
    model: nn.Module | None = None,
    rank: int = 0,
    world_size: int = 1,
    accumulator: ContributionAccumulator | None = None,
    staged: StagedSpace | None = None,
    shrinkage: str = "none",
    paired: bool = False,
    score: Callable[[Tensor, Tensor], Tensor] | None = None,
    fit: str = "means",
    allocation: str = "uniform",
    pilot_passes: int = 2,
) -> BilinearTable:
    """Estimate the accuracy table of ``supernet`` on ``held_out`` (see the module docstring).

    Per held-out batch ``i`` and pass ``p`` the per-example architectures are drawn with
    ``space.sample_indices(n, derive_generator(seed, p, i))``, so the estimate depends on the seed
    but not on how batches are split over ranks. The paper protocol reuses that draw for every
    conditional (common random numbers: only the conditioned decisions change), which makes the
    differences ``Δ`` less noisy.

    Args:
        supernet: the weight-sharing supernet; its space must be staged (``stage{s}.block{b}.*`` labels).
        held_out: an iterable of batches, the same batches in the same order on every call (a
            ``DataLoader`` without shuffling).
        method: ``"one_pass"`` or ``"paper"``.
        passes: passes over the held-out data (one-pass) or per conditional (paper); default 1 and 10.
        seed: sampling seed.
        batch_to_xy: ``batch -> (inputs, labels (N,))``; default ``(batch[0], batch[1])``.
        forward: ``inputs -> logits (N, K)``; default ``supernet(inputs)``.
        model: the module put in eval mode during the estimate (default the supernet).
        rank: this process evaluates the batches ``i`` with ``i % world_size == rank``.
        world_size: the number of processes sharing the batches (see ``rank``).
        accumulator: accumulate into this (fresh) metric, e.g. one living on the right device for
            DDP; a new one is made otherwise.
        staged: the staged view of ``supernet.space`` (inferred from labels by default).
        shrinkage: ``"none"`` or ``"empirical_bayes"`` (see :class:`ContributionAccumulator`); a
            given ``accumulator`` keeps its own setting.
        paired: one-pass only, ``passes >= 2``: centre each record on its example's other passes
            (:meth:`ContributionAccumulator.update_paired`): the same records, the same expected
            gains, much less noise from which examples fall in which conditional.
        score: ``(logits (N, K), labels (N,)) -> (N,)`` bool or float in [0, 1], the per-example
            outcome whose contributions are estimated; default :func:`top1_correct`.
            :class:`SmoothedTop1` trades a little bias for less noise.
        fit: one-pass only. ``"means"``: BINAS's conditional means (Eq. 3); ``"log_error"``: the
            multiplicative-error model fit to the same kind of records with a difficulty per
            example (:mod:`lightning_nas.estimators.log_error`; a ``link="log_error"`` table).
        allocation: with ``fit="log_error"``. ``"uniform"``: every example ``passes`` records;
            ``"adaptive"``: every example ``pilot_passes`` records, then the rest of the batch's
            ``passes × n`` budget in two rounds (half, then the rest), each spread over the
            examples in proportion to how much their outcomes so far vary
            (:func:`~lightning_nas.estimators.log_error.allocate_records`; the spread of an
            example is ``sqrt(q(1 − q))``, ``q`` the mean of ``sigmoid(margin / 0.25)`` over its
            records), at most ``4 × passes`` each. Examples every architecture gets right cost little.
        pilot_passes: adaptive allocation's records per example before allocating (>= 2, <= passes).

    Returns:
        The :class:`~lightning_nas.bilinear.BilinearTable` (``name="accuracy"``). Its metadata has
        ``method``, ``passes`` (per conditional), ``data_passes`` (passes over the held-out data in
        total), ``conditionals``, ``examples`` (forward passes of single examples, all ranks),
        ``batches``, ``seed``, ``score`` (:func:`score_name`) and ``missing`` conditionals.
    """
    if not isinstance(supernet, Supernet):
        raise ValueError(f"`supernet` must be a lightning_nas.Supernet, got {type(supernet).__name__}")
    if method not in METHODS:
        raise ValueError(f"`method` must be one of {METHODS}, got {method!r}")
    passes = _positive_int(passes if passes is not None else (1 if method == "one_pass" else 10), "passes")
    check_paired(paired, method, passes)
    check_estimator_options(method, passes, paired, shrinkage, fit, allocation, pilot_passes)
    _check_common(seed, rank, world_size)
    score = check_score(score)
    staged = staged if staged is not None else StagedSpace.of(supernet)
    batch_to_xy = batch_to_xy or default_batch_to_xy
    forward = forward or supernet
    model = model if model is not None else supernet
    indexer = StagedIndexer(staged)
    conditionals = paper_protocol_conditionals(staged) if method == "paper" else None
    fixed = [indexer.fixed(c) for c in conditionals] if conditionals else None
    if accumulator is None:
        accumulator = make_accumulator(staged, fit=fit, shrinkage=shrinkage)
    if not isinstance(accumulator, LogErrorAccumulator if fit == "log_error" else ContributionAccumulator):
        raise ValueError(f"`accumulator` must be what make_accumulator(staged, fit={fit!r}) makes, got {type(accumulator).__name__}")
    accumulator.to(_device_of(model))
    accumulator.metadata.update(
        method=method, passes=passes, seed=seed, world_size=world_size, paired=paired, score=score_name(score),
        conditionals=len(conditionals) if conditionals else None,
        data_passes=passes * (len(conditionals) if conditionals else 1), fit=fit,
        **({"allocation": allocation, "pilot_passes": pilot_passes if allocation == "adaptive" else None} if fit == "log_error" else {}),
    )
    space = supernet.space
    device = _device_of(model)
    score = _checked_score(score)
    seen = 0
    failure: Exception | None = None
    try:
        with evaluation_mode(model, supernet):
            # Batch by batch, all passes of a batch back to back: the held-out data is read once, and
            # paired records need every pass of an example together. Draws depend on (seed, p, i) only.
            for i, batch in _shard(held_out, rank, world_size):
                seen += 1
                x, y = batch_to_xy(batch)
                x, y = move_data_to_device(x, device), move_data_to_device(y, device)
                n = int(torch.as_tensor(y).shape[0])
                if fit == "log_error":
                    _log_error_records(supernet, indexer, accumulator, forward, score, x, y, n, i, seed, passes, allocation, pilot_passes)
                    continue
                records = []  # one-pass: (configs, depths, correct) per pass
                for p in range(passes):
                    draw = space.sample_indices(n, derive_generator(seed, p, i))
                    if conditionals is None:
                        supernet.activate_indices(draw)
                        records.append((*indexer.to_staged(draw), score(forward(x), y)))
                        continue
                    for conditional, fix in zip(conditionals, fixed):
                        supernet.activate_indices({**draw, **{lab: torch.full((n,), v) for lab, v in fix.items()}})
                        accumulator.update_conditional(conditional, score(forward(x), y))
                if paired:
                    accumulator.update_paired(*(torch.stack(column) for column in zip(*records)))
                else:
                    for record in records:
                        accumulator.update(*record)
    except (ValueError, FloatingPointError) as err:
        if world_size == 1:
            raise
        failure = err  # raised below on every rank: the others would otherwise wait for this one in compute()
    _agree_on_failure(failure, rank, world_size, device)
    if seen == 0 and world_size == 1:
        # (Under DDP a rank may hold no batch; the merged records are checked when computed.)
        raise ValueError("`held_out` yielded no batches: give the held-out DataLoader (or list of (x, y) batches) to estimate on")
    return accumulator.compute()


def _agree_on_failure(failure: Exception | None, rank: int, world_size: int, device: torch.device) -> None:
    # Every rank learns whether any rank failed before the accumulator's collective compute().
    import torch.distributed as dist

    if world_size > 1 and dist.is_available() and dist.is_initialized():
        failed = torch.tensor([rank + 1 if failure is not None else 0], device=device)
        dist.all_reduce(failed, op=dist.ReduceOp.MAX)
        if failure is None and int(failed) > 0:
            raise RuntimeError(f"estimating contributions failed on rank {int(failed) - 1} (its error is in its log); "
                               "every rank stops rather than wait for it")
    if failure is not None:
        raise failure


def _log_error_records(supernet, indexer, accumulator, forward, score, x, y, n, i, seed, passes, allocation, pilot_passes) -> None:
    # One batch's records for the log-error fit. Record p of an example is drawn with (seed, p, i)
    # however many records the example gets, so the pilot equals the first passes of a uniform run.
    # Adaptive: after the pilot, half of the rest of the budget by the pilot's spreads, then the
    # rest by the spreads of all records so far (better estimates where they matter most).
    groups = i * _GROUP_STRIDE + torch.arange(n)
    margins = torch.full((MAX_RECORDS_FACTOR * passes, n), float("nan"), dtype=torch.float64)
    have = torch.zeros(n, dtype=torch.long)

    def run_to(target: Tensor) -> None:
        # Every record still owed, pass by pass, each arch drawn as above; then run in forward calls of
        # n records whatever their passes (each example runs its own arch, so a record does not depend
        # on the others in its call). Pass by pass, the adaptive passes made many small calls: 39 of the
        # demo's 46 s of estimation, against ~15 s for the same records in calls of n.
        owed = [(p, torch.nonzero((have <= p) & (target > p))[:, 0]) for p in range(int(have.min()), int(target.max()))]
        owed = [(p, rows) for p, rows in owed if len(rows)]
        if owed:
            passes_of = torch.cat([torch.full((len(rows),), p) for p, rows in owed])
            rows_of = torch.cat([rows for _, rows in owed])
            draws = [supernet.space.sample_indices(len(rows), derive_generator(seed, p, i)) for p, rows in owed]
            draw_of = {label: torch.cat([d[label] for d in draws]) for label in draws[0]}
            whole = torch.arange(n)
            for start in range(0, len(rows_of), n):
                rows = rows_of[start:start + n]
                draw = {label: v[start:start + n] for label, v in draw_of.items()}
                index = rows.to(y.device)
                full = len(rows) == n and bool((rows == whole).all())
                supernet.activate_indices(draw)
                logits = forward(x if full else apply_to_collection(x, Tensor, lambda t: t[index]))
                target_y = y if full else y[index]
                accumulator.update(*indexer.to_staged(draw), score(logits, target_y), groups[rows])
                margins[passes_of[start:start + n], rows] = logit_margin(logits, target_y).detach().double().cpu()
        have.copy_(torch.maximum(have, target))

    def spread() -> Tensor:
        q = torch.sigmoid(margins / ALLOCATION_TEMPERATURE).nanmean(0)
        return (q * (1 - q)).sqrt()

    if allocation == "uniform":
        run_to(torch.full((n,), passes))
        return
    cap = MAX_RECORDS_FACTOR * passes
    run_to(torch.full((n,), pilot_passes))
    run_to(allocate_records(spread(), (pilot_passes + passes) * n // 2, have, cap))
    run_to(allocate_records(spread(), passes * n, have, cap))


def make_accumulator(staged: StagedSpace, *, fit: str = "means", shrinkage: str = "none",
                     metadata: Mapping[str, Any] | None = None) -> "ContributionAccumulator | LogErrorAccumulator":
    """The metric :func:`estimate_contributions` accumulates into for ``fit`` (pass one for DDP or metadata)."""
    if fit not in FITS:
        raise ValueError(f"`fit` must be one of {FITS}, got {fit!r}")
    if fit == "log_error":
        return LogErrorAccumulator(staged, metadata=metadata)
    return ContributionAccumulator(staged, metadata=metadata, shrinkage=shrinkage)


def check_estimator_options(method: str, passes: int | None, paired: bool, shrinkage: str, fit: str, allocation: str,
                            pilot_passes: int) -> None:
    """Raise ``ValueError`` for a combination of estimator options that does not exist."""
    if fit not in FITS:
        raise ValueError(f"`fit` must be one of {FITS}, got {fit!r}")
    if allocation not in ALLOCATIONS:
        raise ValueError(f"`allocation` must be one of {ALLOCATIONS}, got {allocation!r}")
    if fit == "log_error":
        if method != "one_pass":
            raise ValueError(f"`fit='log_error'` fits one-pass records; it needs method='one_pass', got {method!r}")
        if paired or shrinkage != "none":
            raise ValueError("`fit='log_error'` already centres each example (its difficulty is a parameter): "
                             f"use paired=False and shrinkage='none', got paired={paired!r}, shrinkage={shrinkage!r}")
    elif allocation != "uniform":
        raise ValueError(f"`allocation={allocation!r}` needs fit='log_error' (the conditional means weigh every record alike)")
    if allocation == "adaptive":
        if not isinstance(pilot_passes, int) or isinstance(pilot_passes, bool) or not 2 <= pilot_passes <= (passes or 1):
            raise ValueError(f"`pilot_passes` must be an int in [2, passes={passes}] for adaptive allocation, got {pilot_passes!r}")


def estimate_one_pass(supernet: Supernet, held_out: Iterable[Any], *, passes: int = 1, seed: int = 0, **kwargs: Any) -> BilinearTable:
    """One-pass estimate: every conditional from one stream of per-example records
    (:func:`estimate_contributions` with ``method="one_pass"``; same keyword arguments)."""
    return estimate_contributions(supernet, held_out, method="one_pass", passes=passes, seed=seed, **kwargs)


def estimate_paper_protocol(supernet: Supernet, held_out: Iterable[Any], *, passes: int = 10, seed: int = 0, **kwargs: Any) -> BilinearTable:
    """BINAS's protocol: ``passes`` dedicated passes per conditional, the conditioned decisions fixed
    (:func:`estimate_contributions` with ``method="paper"``; uses
    :func:`paper_protocol_passes` passes of the held-out data)."""
    return estimate_contributions(supernet, held_out, method="paper", passes=passes, seed=seed, **kwargs)


def _device_of(model: nn.Module) -> torch.device:
    tensor = next(iter(model.parameters()), None)
    if tensor is None:
        tensor = next(iter(model.buffers()), None)
    return tensor.device if tensor is not None else torch.device("cpu")
