"""``UniformSampling``: single-path one-shot (SPOS) training of a supernet, rank-consistent."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from lightning.pytorch.utilities.rank_zero import rank_zero_warn

from lightning_nas.callbacks._checks import check_supernet_path, plain_state
from lightning_nas.seeding import derive_generator
from lightning_nas.supernet import Supernet, find_supernet

__all__ = ["UniformSampling", "batch_size_of"]

_EVAL_MODES = ("per_sample", "largest", "smallest", "default")
# Stream ids keep the train, validation and test draws independent of each other.
_TRAIN, _VALIDATION, _TEST = 0, 1, 2


def batch_size_of(batch: Any) -> int:
    """Size of dimension 0 of the first tensor found in a (nested) batch."""
    if isinstance(batch, torch.Tensor):
        return batch.shape[0]
    values = batch.values() if isinstance(batch, Mapping) else batch if isinstance(batch, (list, tuple)) else ()
    for value in values:
        try:
            return batch_size_of(value)
        except ValueError:
            continue
    raise ValueError(f"cannot find a tensor in the batch to read its size from (got {type(batch).__name__})")


class UniformSampling(Callback):
    """Samples the active subnet uniformly before every training batch (SPOS).

    The architecture of a batch is a pure function of ``(seed, global_step, micro-batch index)``:
    every DDP rank activates the same subnet, and a run resumed from a checkpoint (even
    mid-epoch) continues the identical sequence. With ``per_sample=True`` every example gets its
    own architecture (the BINAS training scheme); examples of one batch use independent draws,
    again identical on every rank.

    Under DDP not every parameter gets a gradient at every step: use
    ``Trainer(strategy="ddp_find_unused_parameters_true")``.

    Args:
        seed: the sampling seed.
        per_sample: one architecture per example instead of one per batch.
        eval_arch: what validation and test batches run: ``"per_sample"`` (an independent uniform
            architecture per example, deterministic per batch index: measures the supernet's
            one-shot accuracy), ``"largest"``, ``"smallest"``, ``"default"``, or a fixed arch dict.
        supernet: dotted attribute path of the supernet in the LightningModule, when it has several.

    Raises:
        MisconfigurationException: for a bad argument (message names it and the allowed values).
    """

    def __init__(
        self,
        seed: int = 0,
        *,
        per_sample: bool = False,
        eval_arch: str | Mapping[str, Any] = "per_sample",
        supernet: str | None = None,
    ) -> None:
        if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
            raise MisconfigurationException(f"`seed` must be a non-negative int, got {seed!r}")
        if not isinstance(per_sample, bool):
            raise MisconfigurationException(f"`per_sample` must be a bool, got {per_sample!r}")
        if not isinstance(eval_arch, Mapping) and eval_arch not in _EVAL_MODES:
            raise MisconfigurationException(f"`eval_arch` must be one of {_EVAL_MODES} or an arch dict, got {eval_arch!r}")
        check_supernet_path(supernet, MisconfigurationException)
        self.seed = seed
        self.per_sample = per_sample
        self.eval_arch = dict(eval_arch) if isinstance(eval_arch, Mapping) else eval_arch
        self.supernet_path = supernet
        self.sampled = 0  # training batches sampled so far, over the run (restored on resume)
        self._supernet: Supernet | None = None

    @property
    def state_key(self) -> str:
        return self._generate_state_key(supernet=self.supernet_path)

    # -- hooks -------------------------------------------------------------------------------
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        try:
            self._supernet = find_supernet(pl_module, self.supernet_path)
        except (ValueError, AttributeError) as err:
            raise MisconfigurationException(f"UniformSampling: {err}") from err
        if isinstance(self.eval_arch, dict):
            try:
                self._supernet.space.validate(self.eval_arch)
            except ValueError as err:
                raise MisconfigurationException(f"`eval_arch` is not an architecture of the supernet: {err}") from err

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        micro = batch_idx % max(1, trainer.accumulate_grad_batches)
        self._sample(batch, derive_generator(self.seed, _TRAIN, trainer.global_step, micro), self.per_sample)
        self.sampled += 1

    def on_validation_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        self._activate_eval(batch, _VALIDATION, batch_idx, dataloader_idx)

    def on_test_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        self._activate_eval(batch, _TEST, batch_idx, dataloader_idx)

    # -- decisions ---------------------------------------------------------------------------
    def _sample(self, batch: Any, generator: torch.Generator, per_sample: bool) -> None:
        space = self._supernet.space
        if per_sample:
            self._supernet.activate_indices(space.sample_indices(batch_size_of(batch), generator))
        else:
            self._supernet.activate(space.sample(generator))

    def _activate_eval(self, batch: Any, stream: int, batch_idx: int, dataloader_idx: int) -> None:
        mode, space = self.eval_arch, self._supernet.space
        if mode == "per_sample":
            # The same examples see the same architectures at every validation: comparable epochs.
            self._sample(batch, derive_generator(self.seed, stream, dataloader_idx, batch_idx), per_sample=True)
        elif isinstance(mode, dict):
            self._supernet.activate(mode)
        else:
            self._supernet.activate({"largest": space.largest, "smallest": space.smallest, "default": space.default}[mode]())

    # -- state -------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return plain_state({"seed": self.seed, "per_sample": self.per_sample, "sampled": self.sampled}, "UniformSampling state")

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        seed = state_dict.get("seed", self.seed)
        if seed != self.seed:
            rank_zero_warn(f"UniformSampling: resuming with the checkpoint's seed {seed} instead of {self.seed}")
        self.seed = seed
        self.per_sample = state_dict.get("per_sample", self.per_sample)
        self.sampled = state_dict.get("sampled", self.sampled)
