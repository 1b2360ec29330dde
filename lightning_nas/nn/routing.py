"""Per-example routing: run each group of examples through its own candidate, then reassemble.

This is what makes per-example sampling cost about one path instead of the sum of all paths: the
batch is split by candidate index (one gather per group) and put back in order (one gather).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from lightning_nas.nn.choice import ArchContext

__all__ = ["check_batch_sizes", "group_rows", "pad_widths", "reassemble", "route_examples", "select_rows"]


def group_rows(indices: Tensor, n_candidates: int) -> tuple[list[tuple[int, Tensor]], Tensor]:
    """Split rows by candidate index.

    Args:
        indices: ``LongTensor (n,)`` of candidate indices in ``[0, n_candidates)``.
        n_candidates: number of candidates.

    Returns:
        ``([(candidate, positions), ...], order)``: the non-empty groups, each with the ``(m,)``
        positions of its rows, and ``order`` (their concatenation) for :func:`reassemble`.
    """
    order = torch.argsort(indices, stable=True)
    counts = torch.bincount(indices, minlength=n_candidates).tolist()
    groups, start = [], 0
    for candidate, count in enumerate(counts):
        if count:
            groups.append((candidate, order[start : start + count]))
            start += count
    return groups, order


def reassemble(outputs: Sequence[Tensor], order: Tensor) -> Tensor:
    """Concatenate per-group outputs (rows in ``order``) and restore the original row order."""
    if any(not isinstance(o, Tensor) for o in outputs):
        raise TypeError("per-example routing needs every routed candidate to return one batch-first Tensor")
    stacked = torch.cat(pad_widths(list(outputs)), 0)
    order = order.to(stacked.device)
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(order.numel(), device=order.device)
    return stacked.index_select(0, inverse)


def pad_widths(outputs: list[Tensor]) -> list[Tensor]:
    """Zero-pad the channel dimension (1, else the last) so groups computed at different widths stack.

    A row's channels past its own width are zero by construction, so zero padding is exact.
    """
    shapes = {tuple(o.shape[1:]) for o in outputs}
    if len(shapes) == 1:
        return outputs
    ndim = outputs[0].dim()
    differing = {d for d in range(1, ndim) if len({o.shape[d] for o in outputs}) > 1}
    if any(o.dim() != ndim for o in outputs) or len(differing) != 1 or not differing <= {1, ndim - 1}:
        raise ValueError(
            f"per-example routing: candidates returned shapes {sorted(shapes)} that differ beyond one channel "
            "dimension, so examples running different subnets cannot share a batch"
        )
    dim = differing.pop()
    width = max(o.shape[dim] for o in outputs)
    padded = []
    for o in outputs:
        if o.shape[dim] < width:
            pad = [0, 0] * (ndim - 1 - dim) + [0, width - o.shape[dim]]
            o = torch.nn.functional.pad(o, pad)
        padded.append(o)
    return padded


def take_rows(args: Sequence[Any], positions: Tensor) -> list[Any]:
    """Gather ``positions`` from every batch-first tensor in ``args``; other arguments pass through."""
    return [a.index_select(0, positions.to(a.device)) if isinstance(a, Tensor) else a for a in args]


def check_batch_sizes(args: Sequence[Any], indices: Tensor) -> None:
    """Raise unless every batch-first tensor in ``args`` has one row per entry of ``indices``."""
    for a in args:
        if isinstance(a, Tensor) and a.shape[0] != indices.shape[0]:
            raise ValueError(
                f"per-example mode: an input has batch size {a.shape[0]} but {indices.shape[0]} architectures "
                "are active; activate one architecture per example of the batch (dimension 0)"
            )


def select_rows(outputs: Sequence[Tensor], picks: Sequence[Tensor]) -> Tensor:
    """Each row from its own candidate's output, with static shapes: row ``i`` of ``outputs[k]``
    where ``picks[k][i]`` (``BoolTensor (n,)``; ``picks[0]`` is not read: rows no other mask picks
    keep ``outputs[0]``). ``outputs``: ``(n, ...)`` tensors of one shape. One ``torch.where`` per
    candidate after the first; nothing read on the host."""
    out = outputs[0]
    for y, picked in zip(outputs[1:], picks[1:]):
        out = torch.where(picked.to(y.device).view(-1, *([1] * (y.dim() - 1))), y, out)
    return out


def route_examples(
    context: ArchContext,
    indices: Tensor,
    n_candidates: int,
    run: Callable[..., Tensor],
    args: Sequence[Any],
) -> Tensor:
    """Run ``run(candidate, *rows_of_args)`` on each group of rows and reassemble in batch order.

    Args:
        context: the supernet's context; narrowed to each group's rows while ``run`` executes, so
            nested choices see the indices of exactly those rows.
        indices: ``LongTensor (n,)`` candidate index of each visible row.
        n_candidates: number of candidates.
        run: ``run(candidate_index, *args) -> Tensor`` with the batch in dimension 0.
        args: the module's inputs, batch-first tensors (``(n, ...)``) or constants.
    """
    check_batch_sizes(args, indices)
    groups, order = group_rows(indices, n_candidates)
    if len(groups) == 1:
        return run(groups[0][0], *args)
    outputs = []
    for candidate, positions in groups:
        with context.route(positions):
            outputs.append(run(candidate, *take_rows(args, positions)))
    return reassemble(outputs, order)
