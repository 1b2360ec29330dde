"""``ContributionEstimation``: BINAS's bilinear accuracy table of the supernet, during or after training."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from lightning.pytorch.utilities.model_helpers import is_overridden
from lightning.pytorch.utilities.rank_zero import rank_zero_warn

from lightning_nas.bilinear import BilinearTable
from lightning_nas.callbacks._checks import check_not_empty, check_supernet_path, plain_state, require_finite, resolve_split
from lightning_nas.io import check_writable
from lightning_nas.estimators.contributions import (
    METHODS, SHRINKAGE, SmoothedTop1, check_estimator_options, check_paired, check_score, estimate_contributions, make_accumulator, score_name,
)
from lightning_nas.spaces.staged import StagedSpace
from lightning_nas.supernet import Supernet, find_supernet

__all__ = ["ContributionEstimation"]


class ContributionEstimation(Callback):
    """Estimates the accuracy contribution of every design choice on a held-out split (BINAS Eq. 3).

    The result is a :class:`~lightning_nas.bilinear.BilinearTable` (``name="accuracy"``:
    ``constant = E[Acc]``, ``depth = Δ^s_b``, ``block = Δ^s_{b,c}``; see
    :mod:`lightning_nas.estimators.contributions`) kept as :attr:`accuracy_model`, optionally written
    to ``path`` (atomically, by global rank 0) and carried in the callback's ``state_dict`` so that
    a resumed run keeps it. With ``fit="log_error"`` the table is the multiplicative-error model
    (``link="log_error"``: gains in ``−log(error)``). ``E[Acc]`` (``metadata["base_accuracy"]``) is
    logged as ``"contributions/expected_accuracy"``.

    Under DDP every rank evaluates the held-out batches ``i`` with ``i % world_size == rank`` and the
    sums are reduced across ranks, so all ranks get the single-process result: the per-example
    architectures are a function of ``(seed, pass, batch index)`` only. Pass a ``held_out`` loader
    that yields the same batches in the same order every time (no shuffling, no distributed sampler).

    Args:
        held_out: the held-out batches (BINAS: 20 % of the training set, kept out of training), or
            the name of a split of the trainer's DataModule (``"held_out"``: its ``held_out_dataloader()``,
            resolved at ``setup``; see :func:`~lightning_nas.callbacks._checks.resolve_split`), which
            is how a YAML config (``lightning-nas fit``) names it.
        every_n_epochs: also estimate at the end of every ``n``-th validation epoch (``None``: never).
            Needs a validation loop.
        at_end: estimate when training ends (skipped when the last estimate saw the same weights).
        method: ``"one_pass"`` (every conditional from one record stream) or ``"paper"`` (one
            dedicated evaluation per conditional).
        passes: passes over the held-out data (one-pass, default 1) or per conditional (paper,
            default 10).
        seed: the architecture-sampling seed.
        shrinkage: ``"none"`` (BINAS) or ``"empirical_bayes"`` (each gain pulled toward its group by
            its sampling noise; see :class:`~lightning_nas.estimators.ContributionAccumulator`).
        paired: one-pass with ``passes >= 2`` only: centre each record on its example's other passes
            (see :func:`~lightning_nas.estimators.estimate_contributions`): same records, same expected
            gains, less noise.
        score: ``(logits, labels) -> (N,)`` in [0, 1], the per-example outcome; default top-1
            correctness (:class:`~lightning_nas.estimators.SmoothedTop1` is less noisy; in YAML
            ``score: {class_path: lightning_nas.estimators.SmoothedTop1, init_args: {temperature: 0.25}}``,
            or a function's import path).
        fit: one-pass only: ``"means"`` (BINAS's conditional means) or ``"log_error"`` (the
            multiplicative-error model with a difficulty per example, a ``link="log_error"`` table;
            see :func:`~lightning_nas.estimators.estimate_contributions`).
        allocation: with ``fit="log_error"``: ``"uniform"`` or ``"adaptive"`` (records spent on the
            examples whose outcome varies).
        pilot_passes: adaptive allocation's records per example before allocating.
        path: JSON file for the latest table (overwritten atomically at each estimate).
        supernet: dotted attribute path of the supernet in the LightningModule, when it has several.
        batch_to_xy: ``batch -> (inputs, labels)``; default ``(batch[0], batch[1])``.
        forward: ``(pl_module, inputs) -> logits (N, K)``; default ``pl_module(inputs)``.

    Attributes:
        accuracy_model: the latest table (``None`` before the first estimate).
        history: ``[{"epoch", "global_step", "expected_accuracy", "examples"}]`` of every estimate.
    """

    def __init__(
        self,
        held_out: Iterable[Any] | str,
        *,
        every_n_epochs: int | None = None,
        at_end: bool = True,
        method: str = "one_pass",
        passes: int | None = None,
        seed: int = 0,
        shrinkage: str = "none",
        paired: bool = False,
        score: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | SmoothedTop1 | None = None,
        fit: str = "means",
        allocation: str = "uniform",
        pilot_passes: int = 2,
        path: str | Path | None = None,
        supernet: str | None = None,
        batch_to_xy: Callable[[Any], tuple[Any, torch.Tensor]] | None = None,
        forward: Callable[[LightningModule, Any], torch.Tensor] | None = None,
    ) -> None:
        if held_out is None or (isinstance(held_out, str) and not held_out) or not hasattr(held_out, "__iter__"):
            raise ValueError(f"`held_out` must be an iterable of batches (a DataLoader) or the name of a DataModule split "
                             f"(a non-empty str such as 'held_out'), got {held_out!r}")
        if every_n_epochs is not None and (not isinstance(every_n_epochs, int) or isinstance(every_n_epochs, bool) or every_n_epochs < 1):
            raise ValueError(f"`every_n_epochs` must be a positive int or None, got {every_n_epochs!r}")
        if not isinstance(at_end, bool):
            raise ValueError(f"`at_end` must be a bool, got {at_end!r}")
        if method not in METHODS:
            raise ValueError(f"`method` must be one of {METHODS}, got {method!r}")
        if passes is not None and (not isinstance(passes, int) or isinstance(passes, bool) or passes < 1):
            raise ValueError(f"`passes` must be a positive int or None (method default), got {passes!r}")
        if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
            raise ValueError(f"`seed` must be a non-negative int, got {seed!r}")
        if shrinkage not in SHRINKAGE:
            raise ValueError(f"`shrinkage` must be one of {SHRINKAGE}, got {shrinkage!r}")
        check_paired(paired, method, passes)
        check_estimator_options(method, passes, paired, shrinkage, fit, allocation, pilot_passes)
        score = check_score(score)
        for name, fn in (("batch_to_xy", batch_to_xy), ("forward", forward)):
            if fn is not None and not callable(fn):
                raise ValueError(f"`{name}` must be callable or None, got {fn!r}")
        check_supernet_path(supernet, ValueError)
        if every_n_epochs is None and not at_end:
            raise ValueError("`every_n_epochs=None` with `at_end=False` would never estimate; set one of them")
        #: the split name given, or None when a loader was given; `held_out` is the loader (None until resolved).
        self.held_out_split = held_out if isinstance(held_out, str) else None
        self.held_out = None if isinstance(held_out, str) else held_out
        self.every_n_epochs = every_n_epochs
        self.at_end = at_end
        self.method = method
        self.passes = passes
        self.seed = seed
        self.shrinkage = shrinkage
        self.paired = paired
        self.score = score
        self.fit, self.allocation, self.pilot_passes = fit, allocation, pilot_passes
        # Refused now, not when the table is saved at the end of training.
        self.path = check_writable(path, "ContributionEstimation `path`") if path is not None else None
        self.supernet_path = supernet
        self.batch_to_xy = batch_to_xy
        self.forward = forward
        self.history: list[dict[str, Any]] = []
        self._table: BilinearTable | None = None
        self._pending: dict[str, Any] | None = None  # a checkpoint's table, until the space is known
        self._supernet: Supernet | None = None
        self._staged: StagedSpace | None = None
        self._last_step: int | None = None

    @property
    def state_key(self) -> str:
        # The fit joins the key only when it is not the default, so older checkpoints keep their key.
        fit = {} if self.fit == "means" else {"fit": self.fit}
        return self._generate_state_key(method=self.method, seed=self.seed, supernet=self.supernet_path, **fit)

    @property
    def accuracy_model(self) -> BilinearTable | None:
        """The latest accuracy table, or ``None`` before the first estimate."""
        if self._pending is not None and self._staged is not None:
            self._table = BilinearTable.from_dict(self._pending, self._staged)
            self._pending = None
        return self._table

    # -- hooks -------------------------------------------------------------------------------
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._supernet = find_supernet(pl_module, self.supernet_path)
        self._staged = StagedSpace.of(self._supernet)
        if self.held_out_split is not None and stage == "fit":
            self.held_out = resolve_split(self.held_out_split, trainer, "ContributionEstimation", "held_out")

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # Now, not when the first estimate finds nothing to measure (at the end of training).
        check_not_empty(self.held_out, "ContributionEstimation", "held_out", peek=True)
        if self.every_n_epochs is not None and not self.at_end and (
            not is_overridden("validation_step", pl_module) or trainer.limit_val_batches == 0
        ):
            # The estimates are made at validation epoch ends: without a validation loop there would be none.
            raise MisconfigurationException(
                f"ContributionEstimation: `every_n_epochs={self.every_n_epochs}` estimates at the end of validation epochs, but "
                f"{type(pl_module).__name__} runs no validation (no `validation_step`, or limit_val_batches=0) and "
                "`at_end=False`: no table would ever be made; add a validation loop or set at_end=True"
            )

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.every_n_epochs is None or trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING:
            return
        if (trainer.current_epoch + 1) % self.every_n_epochs == 0:
            table = self._estimate(trainer, pl_module)
            pl_module.log("contributions/expected_accuracy", table.metadata["base_accuracy"], batch_size=1, sync_dist=False)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not self.at_end or self._last_step == trainer.global_step:
            return
        table = self._estimate(trainer, pl_module)
        # pl_module.log is not available in on_train_end; loggers are (they log on rank 0 only).
        for logger in trainer.loggers:
            logger.log_metrics({"contributions/expected_accuracy": table.metadata["base_accuracy"]}, step=trainer.global_step)

    # -- estimation ----------------------------------------------------------------------------
    def _estimate(self, trainer: Trainer, pl_module: LightningModule) -> BilinearTable:
        if self._supernet is None or self.held_out is None:
            self.setup(trainer, pl_module, "fit")
        # A diverged network scores every example alike (argmax of NaN logits): a finite-looking table of noise.
        require_finite(pl_module, "ContributionEstimation", "an accuracy table estimated from it")
        forward = self.forward
        accumulator = make_accumulator(
            self._staged, fit=self.fit, shrinkage=self.shrinkage, metadata={"epoch": trainer.current_epoch, "global_step": trainer.global_step}
        )
        table = estimate_contributions(
            self._supernet, self.held_out, method=self.method, passes=self.passes, seed=self.seed,
            batch_to_xy=self.batch_to_xy, forward=(lambda x: forward(pl_module, x)) if forward else pl_module,
            model=pl_module, rank=trainer.global_rank, world_size=trainer.world_size, accumulator=accumulator,
            staged=self._staged, paired=self.paired, score=self.score, fit=self.fit, allocation=self.allocation,
            pilot_passes=self.pilot_passes,
        )
        self._table, self._pending, self._last_step = table, None, trainer.global_step
        self.history.append({
            "epoch": trainer.current_epoch, "global_step": trainer.global_step,
            "expected_accuracy": table.metadata["base_accuracy"], "examples": table.metadata["examples"],
        })
        if self.path is not None and trainer.is_global_zero:
            table.save(self.path)
        return table

    # -- state -------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        table = self.accuracy_model
        return plain_state({
            "method": self.method,
            "seed": self.seed,
            "passes": self.passes,
            "score": score_name(self.score),
            "fit": self.fit,
            "history": list(self.history),
            "last_step": self._last_step,
            "accuracy_model": table.to_dict() if table is not None else self._pending,
        }, "ContributionEstimation state")

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict.get("seed", self.seed) != self.seed:
            rank_zero_warn(f"ContributionEstimation: the checkpoint used seed {state_dict['seed']}, this run uses {self.seed}")
        score = score_name(self.score)
        if state_dict.get("score", score) != score:
            rank_zero_warn(f"ContributionEstimation: the checkpoint's table scored examples with {state_dict['score']}, this run uses {score}")
        self.history = list(state_dict.get("history", []))
        self._last_step = state_dict.get("last_step")
        self._table, self._pending = None, state_dict.get("accuracy_model")
