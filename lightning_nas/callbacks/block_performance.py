"""``BlockPerformanceEstimation``: MathNAS block performances of the supernet when training ends."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer

from lightning_nas.bilinear import BilinearTable
from lightning_nas.callbacks._checks import check_not_empty, check_supernet_path, is_int, plain_state, require_finite, resolve_split
from lightning_nas.io import check_writable
from lightning_nas.estimators.block_performance import (
    REFERENCES,
    BlockPerformance,
    estimate_block_performance,
    estimate_block_performance_sampled,
    supernet_evaluator,
)
from lightning_nas.spaces.staged import StagedSpace
from lightning_nas.supernet import Supernet, find_supernet

__all__ = ["BlockPerformanceEstimation"]

METHODS = ("algorithm1", "sampled")


class BlockPerformanceEstimation(Callback):
    """Estimates MathNAS block performances (``b^A`` of every block config and depth) on a held-out split.

    When training ends, every subnet the estimator needs is evaluated with the supernet's shared
    weights on ``held_out`` (eval mode, one arch at a time, through your LightningModule's
    ``forward``). The result, a :class:`~lightning_nas.estimators.block_performance.BlockPerformance`,
    is kept as :attr:`performance`, written to ``path`` (atomically, by global rank 0) and carried in
    the callback's ``state_dict`` so that a resumed run keeps it. Every DDP rank runs the same
    deterministic evaluation, so all ranks hold the same result.

    Args:
        held_out: validation batches (not shuffled), or the name of a split of the trainer's
            DataModule (``"held_out"``: its ``held_out_dataloader()``, resolved at ``setup``).
        flops: the FLOPs table of the supernet (e.g. ``build_flops_table(supernet, (3, 32, 32))``),
            or ``(C, H, W)`` to build it at the end of training.
        method: ``"algorithm1"`` (one host, ``O(m·n)`` evaluations) or ``"sampled"`` (Eq. 3).
        num_hosts: hosts of the sampled estimator.
        seed: seed of the sampled hosts.
        reference: ``Ñ``: an arch, or one of :data:`~lightning_nas.estimators.block_performance.REFERENCES`
            (``None``: ``"mean"``, signed deltas against each node's mean option).
        tables: extra additive metrics ``{name: table}`` (latency, energy) to estimate alongside.
        path: JSON file for the result.
        supernet: dotted attribute path of the supernet in the LightningModule, when it has several.
        batch_to_xy: ``batch -> (inputs, labels)``; default ``(batch[0], batch[1])``.

    Attributes:
        performance: the latest result (``None`` before the first estimate).
    """

    def __init__(
        self,
        held_out: Iterable[Any] | str,
        flops: BilinearTable | Sequence[int],
        *,
        method: str = "algorithm1",
        num_hosts: int = 5,
        seed: int = 0,
        reference: Mapping[str, Any] | str | None = None,
        tables: Mapping[str, BilinearTable] | None = None,
        path: str | Path | None = None,
        supernet: str | None = None,
        batch_to_xy: Callable[[Any], tuple[Any, torch.Tensor]] | None = None,
    ) -> None:
        if held_out is None or (isinstance(held_out, str) and not held_out) or not hasattr(held_out, "__iter__"):
            raise ValueError(f"`held_out` must be an iterable of batches (a DataLoader) or the name of a DataModule split "
                             f"(a non-empty str such as 'held_out'), got {held_out!r}")
        if not isinstance(flops, BilinearTable) and not (
            isinstance(flops, Sequence) and flops and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in flops)
        ):
            raise ValueError(f"`flops` must be a FLOPs BilinearTable or an input size (C, H, W) of positive ints, got {flops!r}")
        if method not in METHODS:
            raise ValueError(f"`method` must be one of {METHODS}, got {method!r}")
        if not is_int(num_hosts, 1):
            raise ValueError(f"`num_hosts` must be a positive int, got {num_hosts!r}")
        if not is_int(seed, 0):
            raise ValueError(f"`seed` must be a non-negative int, got {seed!r}")
        if reference is not None and not isinstance(reference, Mapping) and reference not in REFERENCES:
            raise ValueError(f"`reference` must be an arch dict, one of {REFERENCES} or None, got {reference!r}")
        if tables is not None and (not isinstance(tables, Mapping) or not all(isinstance(t, BilinearTable) for t in tables.values())):
            raise ValueError(f"`tables` must be a dict {{name: BilinearTable}} or None, got {tables!r}")
        if batch_to_xy is not None and not callable(batch_to_xy):
            raise ValueError(f"`batch_to_xy` must be callable(batch) -> (inputs, labels) or None, got {batch_to_xy!r}")
        check_supernet_path(supernet, ValueError)
        #: the split name given, or None when a loader was given; `held_out` is the loader (None until resolved).
        self.held_out_split = held_out if isinstance(held_out, str) else None
        self.held_out = None if isinstance(held_out, str) else held_out
        self.flops, self.method = flops, method
        self.num_hosts, self.seed, self.reference = num_hosts, seed, reference
        self.tables = dict(tables or {})
        # Refused now, not when the table is saved at the end of training.
        self.path = check_writable(path, "BlockPerformanceEstimation `path`") if path is not None else None
        self.supernet_path = supernet
        self.batch_to_xy = batch_to_xy
        self._performance: BlockPerformance | None = None
        self._pending: dict[str, Any] | None = None  # a checkpoint's result, until the space is known
        self._staged: StagedSpace | None = None
        self._supernet: Supernet | None = None

    @property
    def state_key(self) -> str:
        return self._generate_state_key(method=self.method, seed=self.seed, supernet=self.supernet_path)

    @property
    def performance(self) -> BlockPerformance | None:
        """The latest block performances, or ``None`` before the first estimate."""
        if self._pending is not None and self._staged is not None:
            self._performance = BlockPerformance.from_dict(self._pending, self._staged)
            self._pending = None
        return self._performance

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._supernet = find_supernet(pl_module, self.supernet_path)
        self._staged = StagedSpace.of(self._supernet)
        if self.held_out_split is not None and stage == "fit":
            self.held_out = resolve_split(self.held_out_split, trainer, "BlockPerformanceEstimation", "held_out")
        if isinstance(self.reference, Mapping):
            try:  # now, not when training has ended
                self._supernet.space.validate(self.reference)
            except ValueError as err:
                raise ValueError(f"BlockPerformanceEstimation: `reference` is not an architecture of the supernet: {err}") from err

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # Now, not when the estimate at the end of training finds nothing to measure.
        check_not_empty(self.held_out, "BlockPerformanceEstimation", "held_out", peek=True)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.estimate(pl_module, is_global_zero=trainer.is_global_zero)

    def estimate(self, pl_module: LightningModule, *, is_global_zero: bool = True) -> BlockPerformance:
        """Estimate now (the hook calls this at the end of training)."""
        if self._supernet is None or self.held_out is None:
            self.setup(getattr(pl_module, "_trainer", None), pl_module, "fit")  # type: ignore[arg-type]
        require_finite(pl_module, "BlockPerformanceEstimation", "block performances measured on it")
        flops = self.flops
        if not isinstance(flops, BilinearTable):
            from lightning_nas.profiling.tables import build_flops_table

            flops = build_flops_table(self._supernet, tuple(flops))
        options = {"batch_to_xy": self.batch_to_xy} if self.batch_to_xy is not None else {}
        evaluate = supernet_evaluator(self._supernet, self.held_out, tables=self.tables, forward=pl_module, model=pl_module, **options)
        if self.method == "algorithm1":
            result = estimate_block_performance(evaluate, self._staged, flops, reference=self.reference)
        else:
            result = estimate_block_performance_sampled(evaluate, self._staged, flops, num_hosts=self.num_hosts,
                                                        seed=self.seed, reference=self.reference)
        self._performance, self._pending = result, None
        if self.path is not None and is_global_zero:
            result.save(self.path)
        return result

    def state_dict(self) -> dict[str, Any]:
        performance = self.performance
        return plain_state({"method": self.method, "seed": self.seed,
                            "performance": None if performance is None else performance.to_dict()}, "BlockPerformanceEstimation state")

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._pending = state_dict.get("performance")
        self._performance = None
