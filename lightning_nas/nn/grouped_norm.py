"""BatchNorm over groups of rows: ``GroupedBatchNorm2d`` and ``grouped_batch_norm``.

A per-example supernet whose candidates keep their own BatchNorm (BINAS: a depthwise norm per
kernel size, an output norm per (expansion, SE) pair) meets, in one batch, rows that use different
norms and different channel prefixes. Each row must come out as its own subnet computes it: in
training, channel ``c`` of norm ``g`` takes its statistics over the rows of group ``g`` that use
channel ``c``. ``grouped_batch_norm`` does that for all norms at once in a fixed number of operator
calls (no gathers, no host reads), and ``GroupedBatchNorm2d`` stores the ``G`` norms as ``(G, C)``
tensors, so that they make one parameter each (one gradient, one optimizer update) instead of
``G``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_nas.nn.elastic_size import prefix
from lightning_nas.nn.norm import lerp_running_stats

__all__ = ["GroupedBatchNorm2d", "batch_norm", "grouped_batch_norm", "member_state"]

_STATE = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


class GroupedBatchNorm2d(nn.Module):
    """``num_groups`` BatchNorm2d layers of ``num_features`` channels, stored as ``(G, C)`` tensors.

    ``norm(x, group, mask)`` normalises row ``i`` of ``x`` by norm ``group[i]`` with each norm's
    statistics over its own rows (see :func:`grouped_batch_norm`); :func:`batch_norm` applies one of
    them to a whole batch, and :meth:`norm` returns norm ``g`` as an ``nn.BatchNorm2d`` (export).
    The norms are affine and track running statistics, as ``nn.BatchNorm2d``'s defaults do; they
    share ``eps``, ``momentum`` and the train/eval mode.

    A state dict holding the norms as a list of ``nn.BatchNorm2d`` (keys ``"{g}.weight"``, ...,
    as an ``nn.ModuleList`` stores them) loads as well.

    A norm no row used in a step gets a zero gradient row, not ``None``: an optimizer with momentum
    or weight decay keeps updating it, as it does the unused channels of any shared weight (with
    separate ``nn.BatchNorm2d`` it would skip them; per-example steps gave every norm a gradient
    either way).

    Args:
        num_groups: ``G``, the number of norms.
        num_features: ``C``, their width.
        eps: added to the variance.
        momentum: running-average factor, or ``None`` for a cumulative average.

    Shapes: ``weight``, ``bias``, ``running_mean``, ``running_var``: ``(G, C)``;
    ``num_batches_tracked``: ``(G,)``; input and output ``(n, C', H, W)``, ``C' <= C``.
    """

    track_running_stats = True  # (read by recalibrate_batch_norm and as nn.BatchNorm2d's attribute)
    affine = True

    def __init__(self, num_groups: int, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1,
                 device: Any = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        for name, value in (("num_groups", num_groups), ("num_features", num_features)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"`{name}` must be a positive int, got {value!r}")
        if momentum is not None and not 0.0 <= momentum <= 1.0:
            raise ValueError(f"`momentum` must be in [0, 1] or None, got {momentum!r}")
        self.num_groups, self.num_features, self.eps, self.momentum = num_groups, num_features, eps, momentum
        factory = dict(device=device, dtype=dtype)
        self.weight = nn.Parameter(torch.ones(num_groups, num_features, **factory))
        self.bias = nn.Parameter(torch.zeros(num_groups, num_features, **factory))
        self.register_buffer("running_mean", torch.zeros(num_groups, num_features, **factory))
        self.register_buffer("running_var", torch.ones(num_groups, num_features, **factory))
        self.register_buffer("num_batches_tracked", torch.zeros(num_groups, dtype=torch.long, device=device))

    def __len__(self) -> int:
        return self.num_groups

    def forward(self, x: Tensor, group: Tensor | None = None, mask: Tensor | None = None, *,
                cache: Callable[[tuple, Callable[[], Any]], Any] | None = None, input_masked: bool = False) -> Tensor:
        """:func:`grouped_batch_norm` with these norms."""
        return grouped_batch_norm(x, self, group, mask, cache=cache, input_masked=input_masked)

    def reset_running_stats(self) -> None:
        self.running_mean.zero_()
        self.running_var.fill_(1.0)
        self.num_batches_tracked.zero_()

    def norm(self, g: int) -> nn.BatchNorm2d:
        """Norm ``g`` as a separate ``nn.BatchNorm2d`` (a copy: parameters, statistics, mode)."""
        if isinstance(g, bool) or not isinstance(g, int) or not 0 <= g < self.num_groups:
            raise ValueError(f"`g` must be an int in [0, {self.num_groups}), got {g!r}")
        bn = nn.BatchNorm2d(self.num_features, self.eps, self.momentum, device=self.weight.device, dtype=self.weight.dtype)
        with torch.no_grad():
            for name, value in member_state(self, g).items():
                getattr(bn, name).copy_(value)
        return bn.train(self.training)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
        # A list of G nn.BatchNorm2d (what these norms were stored as before): stack its entries.
        listed = [f"{prefix}{g}.{name}" for name in _STATE for g in range(self.num_groups)]
        if f"{prefix}weight" not in state_dict and all(key in state_dict for key in listed):
            for name in _STATE:
                state_dict[f"{prefix}{name}"] = torch.stack([state_dict.pop(f"{prefix}{g}.{name}") for g in range(self.num_groups)])
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs)

    def extra_repr(self) -> str:
        return f"{self.num_groups}, {self.num_features}, eps={self.eps}, momentum={self.momentum}"


def member_state(norm: nn.BatchNorm2d | GroupedBatchNorm2d, index: int | None = None) -> dict[str, Tensor]:
    """``{name: tensor}`` of ``norm``'s weight, bias, running statistics and batch count, those of its
    norm ``index`` for a :class:`GroupedBatchNorm2d` (views: ``(C,)`` each, the count ``()``)."""
    return {name: getattr(norm, name) if index is None else getattr(norm, name)[index] for name in _STATE}


def batch_norm(x: Tensor, norm: nn.BatchNorm2d | GroupedBatchNorm2d, index: int | None = None) -> Tensor:
    """``norm`` (norm ``index`` of a :class:`GroupedBatchNorm2d`) on a batch whose rows all use it,
    with ``x``'s channels the first ``x.shape[1]`` of the norm's: exactly what an ``nn.BatchNorm2d``
    of that width holding the norm's prefix computes, running statistics included.

    Shapes: ``(n, C', H, W) -> (n, C', H, W)``.
    """
    c = x.shape[1]
    weight, bias, running_mean, running_var, count = member_state(norm, index).values()
    training = norm.training or not norm.track_running_stats
    factor = 0.0
    if norm.training and norm.track_running_stats:
        count.add_(1)
        factor = 1.0 / float(count) if norm.momentum is None else norm.momentum
    return F.batch_norm(x, prefix(running_mean, c), prefix(running_var, c), prefix(weight, c), prefix(bias, c), training, factor, norm.eps)


def grouped_batch_norm(
    x: Tensor,
    norm: nn.BatchNorm2d | GroupedBatchNorm2d,
    group: Tensor | None = None,
    mask: Tensor | None = None,
    *,
    cache: Callable[[tuple, Callable[[], Any]], Any] | None = None,
    input_masked: bool = False,
) -> Tensor:
    """Row ``i`` of ``x`` normalised by norm ``group[i]``, each norm's statistics over its own rows.

    In training mode, channel ``c`` of norm ``g`` takes its batch statistics over the rows ``i`` with
    ``group[i] == g`` and ``mask[i, c] == 1``, and only those norms and channels update their
    running statistics (only norms some row uses count the batch in ``num_batches_tracked``): what
    each row's own subnet computes. Two reductions over ``x`` (each row's sums and sums of squares)
    and one ``(G, n) @ (n, 2C)`` product give the statistics of all norms, and one pass the output
    (backward: two reductions, one product and two passes); no gathers, no host reads, and a fixed
    number of operator calls whatever ``G``. One ``nn.BatchNorm2d`` in training takes the native
    kernels for its output and its weight and bias gradients (see ``_SingleBatchNormFunction``).

    Args:
        x: ``(n, C', H, W)``; ``C'`` is at most the norms' width (their channel prefixes are used).
        norm: a :class:`GroupedBatchNorm2d`, or one ``nn.BatchNorm2d`` (affine, tracking running
            statistics) that every row uses.
        group: ``LongTensor (n,)`` in ``[0, G)``; ``None`` for one norm (``G = 1``).
        mask: ``(n, C')`` of 0/1 (same dtype as ``x``): the channels each row uses; ``None`` for all.
        cache: ``cache(key, make)`` to reuse what depends on ``group`` and ``mask`` only (one-hot
            form, counts) across calls with the same tensors, e.g.
            :meth:`~lightning_nas.nn.ArchContext.cached`; ``None`` computes it each call.
        input_masked: ``x`` is already zero where ``mask`` is 0 (e.g. a bias-free depthwise
            convolution of masked channels): its statistics skip masking it (one call fewer).

    Statistics are taken in at least float32 and outside autocast (as ``F.batch_norm`` keeps them for
    half-precision inputs: a half-precision element count overflows past 65,504), so mixed-precision
    training works; the output has ``x``'s dtype.

    Returns:
        ``(n, C', H, W)``, zero where ``mask`` is 0 (whatever ``x`` holds there).
    """
    groups = norm.num_groups if isinstance(norm, GroupedBatchNorm2d) else 1
    if group is None and groups != 1:
        raise ValueError(f"`group` is required with {groups} norms")
    # Shapes only: checking group's values would read them back on the host (a GPU sync per call).
    if x.dim() != 4 or x.shape[1] > norm.num_features:
        raise ValueError(f"`x` must be (n, C', H, W) with C' <= {norm.num_features} channels, got shape {tuple(x.shape)}")
    if group is not None and (group.shape != (x.shape[0],) or group.dtype not in (torch.int64, torch.int32)):
        raise ValueError(f"`group` must be an integer tensor of shape ({x.shape[0]},) with values in [0, {groups}), "
                         f"got {group.dtype} of shape {tuple(group.shape)}")
    if mask is not None and mask.shape != x.shape[:2]:
        raise ValueError(f"`mask` must have shape {tuple(x.shape[:2])} (rows, channels), got {tuple(mask.shape)}")
    with torch.autocast(x.device.type, enabled=False):
        return _grouped_batch_norm(x, norm, groups, group, mask, cache, input_masked)


def _grouped_batch_norm(x: Tensor, norm, groups: int, group: Tensor | None, mask: Tensor | None, cache, input_masked: bool) -> Tensor:
    n, c, h, w = x.shape
    stat = x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32  # (torch.promote_types is an operator call)
    batch_stats = norm.training or not norm.track_running_stats
    update = norm.training and norm.track_running_stats
    stacked = norm.weight.dim() == 2
    with torch.no_grad():
        momentum = norm.momentum if update else None  # a float (or None) in the layout's table
        make = lambda: _Layout(group, mask, groups, n, c, h * w, stat, x.device, momentum)  # noqa: E731
        layout = make() if cache is None else cache(("grouped_bn", id(group), id(mask), groups, n, c, h * w, stat, momentum), make)
        if batch_stats:
            wide_x = _cast(x, stat)  # a float32 copy for half inputs only: their squares overflow past 256
            # Each row's sums and sums of squares, summed over the rows of each statistic and divided
            # by its elements (on a CPU a per-row ``var_mean`` over the pixels, one call fewer, is ~10× slower).
            sums = torch.cat((wide_x.sum((2, 3)), (wide_x * wide_x).sum((2, 3))), 1)  # (n, 2C)
            moments = layout.group_sum(sums, input_masked).mul_(layout.inv_elements2)
            mean, square = moments.split(c, 1)  # (G, C) each
            var = torch.addcmul(square, mean, mean, value=-1).clamp_min_(0)
            if update:
                _update_running_stats(norm, layout, mean, var, c)
        else:
            mean, var = (_cast(_rows2d(t, c), stat) for t in (norm.running_mean, norm.running_var))
        invstd = (var + norm.eps).rsqrt_()
    columns = (groups, c) if stacked else (c,)
    weight, bias = prefix(norm.weight, *columns), prefix(norm.bias, *columns)
    if not stacked and batch_stats and weight.dtype == stat:  # (mixed kernels need float32 parameters)
        return _SingleBatchNormFunction.apply(x, layout.mask4, layout, mean, var, invstd, norm.eps, weight, bias)
    if not stacked:
        weight, bias = weight.view(1, -1), bias.view(1, -1)
    return _GroupedBatchNormFunction.apply(x, layout, mean, invstd, batch_stats, weight, bias)


def _rows2d(t: Tensor, c: int) -> Tensor:
    """A norm's ``(C,)`` or ``(G, C)`` statistic as ``(G, C')`` (its first ``c`` channels)."""
    return prefix(t, t.shape[0], c) if t.dim() == 2 else prefix(t, c).view(1, -1)


class _GroupedBatchNormFunction(torch.autograd.Function):
    """``y = (x * scale[group] + shift[group]) * mask`` with BatchNorm's backward per group.

    Every pass gathers the per-row coefficients of all norms in one call, so forward and backward
    take a fixed handful of calls each (about 7 and 15) whatever ``G``, each a fused pass over ``x``
    or a small ``(G, C)`` product.
    """

    @staticmethod
    def forward(ctx, x, layout, mean, invstd, batch_stats, weight, bias):
        # layout: _Layout (what depends on the rows' groups and masks only); mean, invstd: (G, C) in
        # the statistics' precision; batch_stats: whether the statistics are the batch's (so depend
        # on x); weight, bias: (G, C).
        scale = weight * invstd
        shift = torch.addcmul(bias, mean, scale, value=-1)
        row_scale, row_shift = _cast(layout.rows(torch.stack((scale, shift))), x.dtype)
        ctx.save_for_backward(x, mean, invstd, scale)
        ctx.layout, ctx.batch_stats, ctx.param_dtype = layout, batch_stats, weight.dtype
        return torch.addcmul(row_shift, x, row_scale)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy):
        x, mean, invstd, scale = ctx.saved_tensors
        layout = ctx.layout
        c, stat = x.shape[1], mean.dtype  # reductions in the statistics' precision (float32 for half inputs)
        # Per (norm, channel): the sums of dy and dy * x over the elements behind its statistics.
        sums = torch.cat((dy.sum((2, 3), dtype=stat), (dy * x).sum((2, 3), dtype=stat)), 1)  # (n, 2C)
        sum_dy, sum_dy_x = layout.group_sum(sums).split(c, 1)  # (G, C) each
        sum_dy_xhat = torch.addcmul(sum_dy_x, mean, sum_dy, value=-1).mul_(invstd)
        # (sum_dy is a column slice: contiguous now, or autograd copies it in two calls to accumulate it)
        d_weight, d_bias = _cast(sum_dy_xhat, ctx.param_dtype), _cast(sum_dy, ctx.param_dtype).contiguous()
        if not ctx.needs_input_grad[0]:
            return None, None, None, None, None, d_weight, d_bias
        if not ctx.batch_stats:
            return dy * _cast(layout.rows(scale[None])[0], x.dtype), None, None, None, None, d_weight, d_bias
        # dx = scale * (dy - mean(dy) - xhat * mean(dy * xhat)) for batch statistics (means over the
        # M elements of the statistic): dx = scale * dy + k_0 - k_x * x with
        # k_x = scale * invstd * sum(dy * xhat) / M and k_0 = k_x * mean - scale * sum(dy) / M.
        a = scale * layout.inv_elements
        k_x = (a * invstd).mul_(sum_dy_xhat)
        k_0 = torch.addcmul(k_x * mean, a, sum_dy, value=-1)
        row_k0, row_scale, row_kx = _cast(layout.rows(torch.stack((k_0, scale, k_x))), x.dtype)
        return torch.addcmul(row_k0, dy, row_scale).addcmul_(x, row_kx, value=-1), None, None, None, None, d_weight, d_bias


class _SingleBatchNormFunction(torch.autograd.Function):
    """One ``nn.BatchNorm2d`` with batch statistics over masked rows: ``_GroupedBatchNormFunction``
    for ``G = 1`` in fewer calls, through the native kernels.

    Forward: the native inference-mode kernel with the batch statistics (taken, as for every ``G``,
    from each row's sums), then the mask: 2 calls where the per-row coefficients take 10. Backward:
    the native training-mode backward without its input gradient gives the weight and bias
    gradients (the sums of ``dy * xhat`` and ``dy`` over the masked rows, as ``dy`` comes in
    masked), and the input gradient is the grouped one (no ``N / count`` factor whose rounding
    grows with the number of rows a channel leaves out): 14 calls where the grouped pass takes 22.
    """

    @staticmethod
    def forward(ctx, x, mask4, layout, mean, var, invstd, eps, weight, bias):
        # mask4: layout.mask4 (made outside: a graph cannot keep a tensor first made inside the
        # function); mean, var, invstd: (1, C) in the statistics' precision; weight, bias: (C,).
        y = torch.ops.aten._native_batch_norm_legit_no_training(x, weight, bias, mean.view(-1), var.view(-1), 0.0, eps)[0]
        ctx.save_for_backward(x, mask4, weight, mean, invstd)
        ctx.layout, ctx.eps = layout, eps
        return y if mask4 is None else y * mask4

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy):
        x, mask4, weight, mean, invstd = ctx.saved_tensors
        layout = ctx.layout
        if mask4 is not None:
            dy = dy * mask4  # only the rows and channels behind the statistics
        _, d_weight, d_bias = torch.ops.aten.native_batch_norm_backward(
            dy, x, weight, None, None, mean.view(-1), invstd.view(-1), True, ctx.eps, [False, True, True]
        )  # d_weight = sum(dy * xhat), d_bias = sum(dy), per channel
        if not ctx.needs_input_grad[0]:
            return None, None, None, None, None, None, None, d_weight, d_bias
        # The input gradient as in _GroupedBatchNormFunction.backward, with sum(dy * xhat) and sum(dy) from the kernel.
        scale = weight * invstd  # (1, C)
        a = scale * layout.inv_elements
        k_x = (a * invstd).mul_(d_weight)
        k_0 = torch.addcmul(k_x * mean, a, d_bias, value=-1)
        row_k0, row_scale, row_kx = _cast(layout.rows(torch.stack((k_0, scale, k_x))), x.dtype)
        dx = torch.addcmul(row_k0, dy, row_scale).addcmul_(x, row_kx, value=-1)
        return dx, None, None, None, None, None, None, d_weight, d_bias


class _Layout:
    """What a grouped BatchNorm call needs from the rows' groups and masks only (no values of ``x``).

    Computed once per activation for all the norms that share a group and a mask when a ``cache``
    is given (the blocks of one decision share them); it keeps ``group`` and ``mask`` alive, so a
    cache keyed by their ids cannot meet a new tensor at a reused id.

    Attributes (``G`` norms, ``n`` rows, ``C`` channels; ``stat`` the statistics' dtype):
        group: ``(n,)`` or ``None``; mask: ``(n, C)`` in ``x``'s dtype or ``None``; mask2:
            ``(n, 2C)`` ``mask`` twice, in ``stat`` (for the per-row sums and sums of squares).
        inv_elements, unbias: ``(G, C)`` ``1 / M`` and ``M / (M - 1)``, ``M`` the elements behind
            each statistic (clamped to at least 1); inv_elements2: ``(G, 2C)``, ``1 / M`` twice (for
            the sums and the sums of squares).
        seen: ``(G, C)`` 1.0 where some row uses the statistic, else 0.0.
        lerp_weight: ``(G, C)`` the running-average weight, ``momentum`` where seen, else 0 (with
            a float ``momentum`` only).
    """

    def __init__(self, group: Tensor | None, mask: Tensor | None, groups: int, n: int, c: int, pixels: int, stat: torch.dtype, device,
                 momentum: float | None = None) -> None:
        self.group, self.mask, self._mask4 = group, mask, None
        # onehot_t: (G, n) one-hot of each row's group, transposed for the sums over rows.
        self.onehot_t = None if group is None else _eye(groups, stat, device).index_select(1, group)
        used = None if mask is None else _cast(mask, stat)
        self.mask2 = None if used is None else torch.cat((used, used), 1)
        if used is not None:
            rows = used.sum(0, keepdim=True) if group is None else self.onehot_t @ used
        elif group is not None:
            rows = self.onehot_t.sum(1, keepdim=True).expand(groups, c)
        else:
            rows = torch.full((1, c), float(n), dtype=stat, device=device)
        # The factors and whether a statistic is seen are functions of its row count k in 0..n: one
        # lookup in a table built once per (n, pixels).
        table = _count_factors(n, pixels, stat, device, momentum)[:, rows.to(torch.long)]  # (F, G, C)
        self.inv_elements, self.unbias, self.seen, *weight = table.unbind(0)
        self.lerp_weight = weight[0] if weight else None
        self.inv_elements2 = torch.cat((self.inv_elements, self.inv_elements), 1)

    def group_sum(self, per_row: Tensor, masked: bool = False) -> Tensor:
        """``(n, 2C)`` per-row values to ``(G, 2C)`` sums over the rows (and channels) of each
        statistic (``masked``: ``per_row`` is already zero where the mask is, so it is not masked again)."""
        if self.mask2 is not None and not masked:
            per_row = per_row * self.mask2
        return per_row.sum(0, keepdim=True) if self.onehot_t is None else self.onehot_t @ per_row

    def rows(self, per_group: Tensor) -> Tensor:
        """``(K, G, C)`` coefficients to ``(K, n, C, 1, 1)`` per row (zero where ``mask`` is 0)."""
        rows = per_group.index_select(1, self.group) if self.group is not None else per_group
        if self.mask is not None:
            rows = rows * self.mask  # broadcasts a single group's (K, 1, C) over the rows too
        return rows.reshape(*rows.shape, 1, 1)  # (K, 1, C, 1, 1) broadcasts over the rows

    @property
    def mask4(self) -> Tensor | None:
        """``mask`` as ``(n, C, 1, 1)`` (for the single-norm kernels; made when first asked for, by
        hand: ``functools.cached_property`` takes a lock, which breaks a ``torch.compile`` graph)."""
        if self._mask4 is None and self.mask is not None:
            self._mask4 = self.mask.view(*self.mask.shape, 1, 1)
        return self._mask4


def _update_running_stats(norm, layout: _Layout, mean: Tensor, var: Tensor, c: int) -> None:
    """Move the running statistics of ``norm`` (each of its norms: rows of the ``(G, C)`` batch
    statistics) toward the batch's where they saw data, as ``nn.BatchNorm2d`` does, and count the
    batch for the norms some row used: four calls for all norms."""
    stacked = norm.running_mean.dim() == 2
    norm.num_batches_tracked.add_(layout.seen.any(1) if stacked else layout.seen.any())
    dtype = norm.running_mean.dtype
    if norm.momentum is None:  # a cumulative average weighs the batch by 1 / batches seen, per norm
        weight = _cast(layout.seen / norm.num_batches_tracked.clamp_min(1).reshape(-1, 1), dtype)
    else:
        weight = _cast(layout.lerp_weight, dtype)
    lerp_running_stats(
        [_rows2d(norm.running_mean, c), _rows2d(norm.running_var, c)], [_cast(mean, dtype), _cast(var * layout.unbias, dtype)], [weight, weight]
    )


_EYES: dict[tuple[int, torch.dtype, torch.device], Tensor] = {}
_COUNT_FACTORS: dict[tuple[int, int, torch.dtype, torch.device], Tensor] = {}


def _count_factors(n: int, pixels: int, dtype: torch.dtype, device: torch.device, momentum: float | None = None) -> Tensor:
    """``(3, n + 1)``: for a statistic over ``k`` of ``n`` rows of ``pixels`` elements each
    (``M = k * pixels``), ``1 / max(M, 1)``, ``M / max(M - 1, 1)`` and whether ``k > 0`` (1.0 / 0.0);
    with a ``momentum``, ``(4, n + 1)``: then the running-average weight, ``momentum`` where
    ``k > 0``, else 0 (made once per key, in float64)."""
    key = (n, pixels, dtype, torch.device(device), momentum)
    if not torch.compiler.is_compiling() and key in _COUNT_FACTORS:
        return _COUNT_FACTORS[key]
    elements = torch.arange(n + 1, dtype=torch.float64) * pixels
    seen = (elements > 0).to(torch.float64)
    rows = [1 / elements.clamp_min(1), elements / (elements - 1).clamp_min(1), seen] + ([] if momentum is None else [seen * momentum])
    table = torch.stack(rows)
    table = table.to(device=device, dtype=dtype)
    if not torch.compiler.is_compiling():  # no tensors kept across calls inside a graph
        _COUNT_FACTORS[key] = table
    return table


def _eye(n: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """``torch.eye(n)`` (made once per size, dtype and device: its columns are one-hot rows)."""
    if torch.compiler.is_compiling():  # no tensors kept across calls inside a graph (the compiler folds this)
        return torch.eye(n, dtype=dtype, device=device)
    key = (n, dtype, torch.device(device))
    if key not in _EYES:
        _EYES[key] = torch.eye(n, dtype=dtype, device=device)
    return _EYES[key]


def _cast(t: Tensor, dtype: torch.dtype) -> Tensor:
    """``t.to(dtype)`` without a dispatched call when it is already ``dtype`` (the usual float32 case)."""
    return t if t.dtype == dtype else t.to(dtype)
