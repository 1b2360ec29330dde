"""Recompute BatchNorm running statistics of a subnet (inherited statistics belong to the supernet)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

__all__ = ["recalibrate_batch_norm"]

_NORMS = (nn.modules.batchnorm._BatchNorm,)


def _first_tensor(batch: Any) -> Any:
    if isinstance(batch, (list, tuple)):
        return batch[0]
    if isinstance(batch, dict):
        return next(iter(batch.values()))
    return batch


@torch.no_grad()
def recalibrate_batch_norm(
    module: nn.Module,
    batches: Iterable[Any],
    *,
    num_batches: int | None = None,
    forward: Callable[[nn.Module, Any], Any] | None = None,
) -> int:
    """Reset every BatchNorm's running statistics and re-estimate them as an exact average over batches.

    Running statistics are cumulative (``momentum=None``) while recalibrating, so the result is the
    plain mean over the batches seen, independent of their order; momenta and train/eval modes are
    restored afterwards. Works on an exported subnet and on a supernet with an architecture active
    (its elastic BatchNorms then recalibrate the active channel prefix).

    Args:
        module: the network.
        batches: an iterable of batches (a ``DataLoader``): tensors, or tuples/dicts whose first
            entry is the input.
        num_batches: stop after this many batches (default: all).
        forward: ``forward(module, batch)``; default ``module(first tensor of batch)``.

    Returns:
        The number of batches used.

    Raises:
        ValueError: if ``num_batches`` is not positive or no batch was seen.
        FloatingPointError: the batches gave non-finite statistics. In both cases (and when a
            forward raises) the previous statistics are put back.
    """
    from lightning_nas.nn.grouped_norm import GroupedBatchNorm2d
    from lightning_nas.nn.norm import ElasticBatchNorm2d

    if num_batches is not None and (isinstance(num_batches, bool) or not isinstance(num_batches, int) or num_batches < 1):
        raise ValueError(f"`num_batches` must be a positive int or None, got {num_batches!r}")
    if forward is not None and not callable(forward):
        raise ValueError(f"`forward` must be callable(module, batch) or None, got {forward!r}")
    norms = [m for m in module.modules() if isinstance(m, (*_NORMS, ElasticBatchNorm2d, GroupedBatchNorm2d)) and m.track_running_stats]
    saved_momentum = [m.momentum for m in norms]
    # Put back if recalibration fails, so a failed call never leaves reset or NaN statistics behind.
    saved_stats = [(m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone()) for m in norms]
    was_training = module.training
    for m in norms:
        m.running_mean.zero_()
        m.running_var.fill_(1.0)
        m.num_batches_tracked.zero_()
        m.momentum = None
    module.train()
    seen = 0
    try:
        for batch in batches:
            if num_batches is not None and seen >= num_batches:
                break
            if forward is None:
                module(_first_tensor(batch))
            else:
                forward(module, batch)
            seen += 1
        if seen == 0:
            raise ValueError("`batches` yielded no batch; BatchNorm statistics cannot be recalibrated")
        # NaN/inf inputs (or a diverged network) would leave statistics that make every output NaN.
        bad = next((name for name, m in module.named_modules() if any(m is n for n in norms)
                    and not (torch.isfinite(m.running_mean).all() and torch.isfinite(m.running_var).all())), None)
        if bad is not None:
            raise FloatingPointError(f"BatchNorm {bad!r} got non-finite running statistics from {seen} batch(es): the "
                                     "batches (or the network's weights) hold NaN or infinite values; statistics left as they were")
    except BaseException:
        with torch.no_grad():
            for m, (mean, var, count) in zip(norms, saved_stats):
                m.running_mean.copy_(mean)
                m.running_var.copy_(var)
                m.num_batches_tracked.copy_(count)
        raise
    finally:
        for m, momentum in zip(norms, saved_momentum):
            m.momentum = momentum
        module.train(was_training)
    return seen
