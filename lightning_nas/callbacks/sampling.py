"""``UniformSampling``: single-path one-shot (SPOS) training of a supernet, rank-consistent,
optionally with the sandwich rule and in-place distillation (BigNAS, Once-for-All)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import math

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from lightning.pytorch.utilities.rank_zero import rank_zero_warn

from lightning_nas.callbacks._checks import check_supernet_path, plain_state
from lightning_nas.distillation import distillation_kl, logits_of
from lightning_nas.seeding import derive_generator
from lightning_nas.supernet import Supernet, find_supernet

__all__ = ["UniformSampling", "batch_size_of"]

_EVAL_MODES = ("per_sample", "largest", "smallest", "default")
# Stream ids keep the train, validation and test draws independent of each other.
_TRAIN, _VALIDATION, _TEST, _SANDWICH = 0, 1, 2, 3


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

    **The sandwich rule** (``sandwich=True``; BigNAS, Once-for-All, the transformer supernets of
    AutoFormer and whittle): every training step trains the largest subnet, the smallest and
    ``num_random`` random ones, with in-place distillation. The ``training_step`` runs unchanged
    under the *largest* subnet, which this callback activates, and its loss (on the labels)
    teaches the teacher. Then, inside the same optimisation step (``on_after_backward``, before
    gradient clipping and ``optimizer.step``), the callback runs the same input through the
    smallest and the random subnets and backpropagates ``T² · KL(teacher ‖ student)`` of each
    against the largest subnet's soft targets (detached), adding to the gradients the step applies.
    Nothing in the LightningModule is wrapped or changed, and automatic optimisation is used as
    usual; the conditions are:

    * the ``training_step`` calls the supernet once on the batch's input and computes its loss
      on the labels (no own distillation: :func:`~lightning_nas.distillation.inplace_distillation_loss`
      would distil the teacher into itself); the first call of the step is the teacher's;
    * the supernet returns logits ``(B, K)`` or ``(B, ..., K)`` (a language model's ``(B, T, V)``),
      or an output whose ``logits`` are (see :func:`~lightning_nas.distillation.logits_of`);
    * under data parallelism (DDP) the students' backward runs after the strategy has averaged the
      teacher's gradients, outside its forward: the callback averages the students' part of every
      supernet gradient over the ranks itself (one all-reduce through ``trainer.strategy.reduce``),
      so every rank applies the same step, the one a single process would on the whole batch.

    The random students of a step are a pure function of ``(seed, global_step, micro-batch)``
    (one arch each, or one per example with ``per_sample=True``); gradient accumulation divides
    the students' losses by ``accumulate_grad_batches`` as Lightning divides the teacher's.
    Each student loss is logged as ``sandwich/<name>_kd`` (``smallest``, ``random0``, ...) when
    ``log_students=True``.

    Args:
        seed: the sampling seed.
        per_sample: one architecture per example instead of one per batch (with ``sandwich``:
            for the random students).
        eval_arch: what validation and test batches run: ``"per_sample"`` (an independent uniform
            architecture per example, deterministic per batch index: measures the supernet's
            one-shot accuracy), ``"largest"``, ``"smallest"``, ``"default"``, or a fixed arch dict.
        supernet: dotted attribute path of the supernet in the LightningModule, when it has several.
        sandwich: train the largest, the smallest and ``num_random`` random subnets every step,
            the last ones distilled from the largest (see above).
        num_random: random students per step with ``sandwich`` (BigNAS: 2).
        temperature: distillation temperature with ``sandwich`` (BigNAS, OFA: 1).
        log_students: log each student's distillation loss with ``sandwich``.

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
        sandwich: bool = False,
        num_random: int = 2,
        temperature: float = 1.0,
        log_students: bool = True,
    ) -> None:
        if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
            raise MisconfigurationException(f"`seed` must be a non-negative int, got {seed!r}")
        if not isinstance(per_sample, bool):
            raise MisconfigurationException(f"`per_sample` must be a bool, got {per_sample!r}")
        if not isinstance(eval_arch, Mapping) and eval_arch not in _EVAL_MODES:
            raise MisconfigurationException(f"`eval_arch` must be one of {_EVAL_MODES} or an arch dict, got {eval_arch!r}")
        check_supernet_path(supernet, MisconfigurationException)
        for name, value in (("sandwich", sandwich), ("log_students", log_students)):
            if not isinstance(value, bool):
                raise MisconfigurationException(f"`{name}` must be a bool, got {value!r}")
        if not isinstance(num_random, int) or isinstance(num_random, bool) or num_random < 0:
            raise MisconfigurationException(f"`num_random` must be an int >= 0 (random students per step), got {num_random!r}")
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not 0 < temperature < math.inf:
            raise MisconfigurationException(f"`temperature` must be a finite float > 0, got {temperature!r}")
        self.sandwich = sandwich
        self.num_random = num_random
        self.temperature = float(temperature)
        self.log_students = log_students
        self.seed = seed
        self.per_sample = per_sample
        self.eval_arch = dict(eval_arch) if isinstance(eval_arch, Mapping) else eval_arch
        self.supernet_path = supernet
        self.sampled = 0  # training batches sampled so far, over the run (restored on resume)
        self._supernet: Supernet | None = None
        # The teacher's call in this training step: ((args, kwargs), output), and the hook recording it.
        self._teacher: tuple[tuple[tuple, dict], Any] | None = None
        self._hook = None
        self._micro = 0

    @property
    def state_key(self) -> str:
        return self._generate_state_key(supernet=self.supernet_path)

    # -- hooks -------------------------------------------------------------------------------
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if self.sandwich and not pl_module.automatic_optimization:
            raise MisconfigurationException(
                "UniformSampling(sandwich=True) adds the students' gradients in on_after_backward, under automatic "
                "optimisation; with manual optimisation, train the sandwich in your training_step instead"
            )
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
        if self.sandwich:
            self._supernet.activate(self._supernet.space.largest())
            self._record_teacher()
            self._micro = micro
        else:
            self._sample(batch, derive_generator(self.seed, _TRAIN, trainer.global_step, micro), self.per_sample)
        self.sampled += 1

    def on_after_backward(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not self.sandwich or self._teacher is None:
            return
        self._release_hook()
        (args, kwargs), output = self._teacher
        self._teacher = None
        losses = self._train_students(trainer, args, kwargs, logits_of(output).detach(), self._micro)
        if self.log_students:
            for name, value in losses.items():
                pl_module.log(f"sandwich/{name}_kd", value, on_step=True, on_epoch=False, batch_size=batch_size_of(args))

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        # A step that returned no loss has no backward: drop its teacher record.
        self._release_hook()
        self._teacher = None

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._release_hook()
        self._teacher = None

    def on_validation_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        self._activate_eval(batch, _VALIDATION, batch_idx, dataloader_idx)

    def on_test_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        self._activate_eval(batch, _TEST, batch_idx, dataloader_idx)

    # -- the sandwich --------------------------------------------------------------------------
    def _record_teacher(self) -> None:
        """Record the first supernet call of the coming training step: the teacher's input and output."""
        self._release_hook()
        self._teacher = None

        def hook(module, args, kwargs, output):
            if self._teacher is None:
                self._teacher = ((args, kwargs), output)

        self._hook = self._supernet.register_forward_hook(hook, with_kwargs=True)

    def _release_hook(self) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None

    def student_archs(self, batch_size: int, global_step: int, micro: int) -> dict[str, Any]:
        """The students of one sandwich step: ``{"smallest": arch, "random0": arch or {label: (B,)
        indices}, ...}``, a pure function of ``(seed, global_step, micro)``."""
        space = self._supernet.space
        generator = derive_generator(self.seed, _SANDWICH, global_step, micro)
        students: dict[str, Any] = {"smallest": space.smallest()}
        for i in range(self.num_random):
            students[f"random{i}"] = space.sample_indices(batch_size, generator) if self.per_sample else space.sample(generator)
        return students

    def _train_students(self, trainer: Trainer, args: tuple, kwargs: dict, teacher: torch.Tensor, micro: int) -> dict[str, torch.Tensor]:
        """Forward and backward every student against the teacher's logits; their gradients add to the step's."""
        supernet = self._supernet
        scale = 1.0 / max(1, trainer.accumulate_grad_batches)
        scaler = getattr(trainer.precision_plugin, "scaler", None)  # AMP: the teacher's loss was scaled too
        losses = {}
        saved = (supernet.context.values, supernet.context.indices, supernet.context.bounds)
        # Under data parallelism the students' backward runs after the strategy has averaged the
        # teacher's gradients: those are set aside so the students' backward writes only their part,
        # which is averaged here, so every rank applies the same step.
        params = [p for p in supernet.parameters() if p.requires_grad] if trainer.world_size > 1 else []
        synced = [p.grad for p in params]
        for p in params:
            p.grad = None
        try:
            for name, arch in self.student_archs(teacher.shape[0], trainer.global_step, micro).items():
                if isinstance(arch, dict) and all(isinstance(v, torch.Tensor) for v in arch.values()) and arch:
                    supernet.activate_indices(arch)
                else:
                    supernet.activate(arch)
                with trainer.precision_plugin.forward_context():
                    student = logits_of(supernet(*args, **kwargs))
                    loss = distillation_kl(student.float(), teacher.float(), self.temperature)
                (loss * scale if scaler is None else scaler.scale(loss * scale)).backward()
                losses[name] = loss.detach()
        except BaseException:
            for p, grad in zip(params, synced):
                p.grad = grad
            raise
        finally:
            supernet.context.values, supernet.context.indices, supernet.context.bounds = saved
            supernet.context.rows = None
        if params:
            _average_students_gradients(trainer, params, synced)
        return losses

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
        return plain_state(
            {"seed": self.seed, "per_sample": self.per_sample, "sampled": self.sampled, "sandwich": self.sandwich,
             "num_random": self.num_random, "temperature": self.temperature},
            "UniformSampling state",
        )

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        seed = state_dict.get("seed", self.seed)
        if seed != self.seed:
            rank_zero_warn(f"UniformSampling: resuming with the checkpoint's seed {seed} instead of {self.seed}")
        self.seed = seed
        self.per_sample = state_dict.get("per_sample", self.per_sample)
        self.sampled = state_dict.get("sampled", self.sampled)
        for key in ("sandwich", "num_random", "temperature"):
            value = state_dict.get(key, getattr(self, key))
            if value != getattr(self, key):
                rank_zero_warn(f"UniformSampling: resuming with the checkpoint's {key}={value!r} instead of {getattr(self, key)!r}")
            setattr(self, key, value)


def _average_students_gradients(trainer: Trainer, params: list[torch.Tensor], synced: list[torch.Tensor | None]) -> None:
    """Average the students' gradients (each ``p.grad``, none counting as zero) over the ranks in one
    all-reduce of one flat buffer, and add them to the teacher's averaged ``synced`` gradients, which
    become the parameters' gradients again (the same tensors: a strategy may keep them as views of
    its buckets)."""
    flat = torch.cat([(torch.zeros_like(p) if p.grad is None else p.grad).reshape(-1) for p in params])
    flat = trainer.strategy.reduce(flat, reduce_op="mean")
    offset = 0
    for p, teacher in zip(params, synced):
        mean = flat[offset : offset + p.numel()].view_as(p)
        offset += p.numel()
        p.grad = mean.clone() if teacher is None else teacher.add_(mean)
