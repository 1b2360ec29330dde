"""In-place distillation: the largest subnet teaches the sampled ones within the same step.

BINAS trains its one-shot model this way (multipath sampling plus distillation from the heaviest
path, after Once-for-All and BigNAS). The teacher is trained on the labels; the sampled subnets
match the teacher's softened predictions. Every subnet then learns the same function at its own
capacity, which makes one-shot accuracies far more consistent with each other: on the estimator
benchmark it raises the bilinear estimator's Kendall τ from 0.44 to 0.70 (benchmarks/RESULTS.md).

The sandwich rule (largest, smallest and random subnets every step, the others distilled from the
largest) needs no code here: ``UniformSampling(sandwich=True)`` runs it from callback hooks around an
unchanged ``training_step``, using :func:`distillation_kl` and :func:`logits_of`. Or use the loss
below inside an ordinary ``training_step``; :class:`~lightning_nas.callbacks.UniformSampling`
activates the students before the step, as without distillation::

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss, logits = inplace_distillation_loss(self.supernet, x, y)
        return loss
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from torch import Tensor
from torch.nn import functional as F

from lightning_nas.supernet import Supernet

__all__ = ["distillation_kl", "inplace_distillation_loss", "logits_of"]


def distillation_kl(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 1.0) -> Tensor:
    """``T² · KL(softmax(teacher / T) ‖ softmax(student / T))``, averaged over the predictions.

    Every position of a sequence is one prediction: ``(B, T, K)`` logits of a language model are
    averaged over the ``B · T`` next-token distributions (as its cross-entropy is).

    Args:
        student_logits: ``(B, K)`` or ``(B, ..., K)``.
        teacher_logits: the same shape; treated as a constant (detached).
        temperature: softening ``T > 0``; the ``T²`` factor keeps gradient magnitudes comparable
            across temperatures (Hinton et al.).

    Returns:
        A scalar tensor (nats).
    """
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not 0 < temperature < math.inf:
        raise ValueError(f"`temperature` must be a finite float > 0, got {temperature!r}")
    if student_logits.shape != teacher_logits.shape or student_logits.dim() < 2:
        raise ValueError(
            f"`student_logits` and `teacher_logits` must both be (B, K) or (B, ..., K) of one shape, got "
            f"{tuple(student_logits.shape)} and {tuple(teacher_logits.shape)}"
        )
    classes = student_logits.shape[-1]
    target = F.log_softmax(teacher_logits.detach().reshape(-1, classes) / temperature, dim=1)
    student = F.log_softmax(student_logits.reshape(-1, classes) / temperature, dim=1)
    return F.kl_div(student, target, reduction="batchmean", log_target=True) * temperature**2


def logits_of(output: Any) -> Tensor:
    """The logits in a network's output: the tensor itself, ``output.logits`` (Hugging Face
    models), ``output["logits"]``, or the first element of a tuple or list.

    Raises:
        ValueError: when none of these is a tensor.
    """
    if isinstance(output, Tensor):
        return output
    for found in (getattr(output, "logits", None), output.get("logits") if isinstance(output, Mapping) else None,
                  output[0] if isinstance(output, (tuple, list)) and output else None):
        if isinstance(found, Tensor):
            return found
    raise ValueError(
        f"cannot find the logits in the network's output of type {type(output).__name__}: expected a tensor, an object "
        "with a `logits` tensor attribute, a dict with a 'logits' tensor, or a tuple whose first element is the logits"
    )


def inplace_distillation_loss(
    supernet: Supernet,
    x: Tensor,
    target: Tensor,
    *,
    temperature: float = 1.0,
    teacher_arch: Mapping[str, Any] | None = None,
) -> tuple[Tensor, Tensor]:
    """Cross-entropy of the teacher subnet plus the distillation loss of the active subnets.

    The active architecture (one per batch, or one per example after
    ``activate_indices``/``UniformSampling(per_sample=True)``) is the student. The teacher runs
    under :meth:`Supernet.activated`, so the student's activation is untouched. Both forwards
    are in the same autograd graph; the teacher's logits are detached for the student's term.
    A step costs one teacher forward/backward more than plain training.

    Args:
        supernet: the supernet being trained.
        x: the input batch, ``(B, ...)``.
        target: class indices ``(B,)``.
        temperature: distillation temperature (BINAS, OFA: 1).
        teacher_arch: the teacher subnet; default ``supernet.space.largest()``.

    Returns:
        ``(loss, student_logits)``: the scalar loss to backpropagate and the students' ``(B, K)``
        logits (for metrics).
    """
    if not isinstance(supernet, Supernet):
        raise TypeError(f"`supernet` must be a lightning_nas.Supernet, got {type(supernet).__name__}")
    with supernet.activated(supernet.space.largest() if teacher_arch is None else teacher_arch):
        teacher_logits = supernet(x)
    student_logits = supernet(x)
    loss = F.cross_entropy(teacher_logits, target) + distillation_kl(student_logits, teacher_logits, temperature)
    return loss, student_logits
