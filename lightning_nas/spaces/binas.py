"""The BINAS / HardCoRe-NAS search space: a MobileNetV3-style supernet of elastic inverted residuals.

``S`` stages of up to ``D`` blocks. Every block is an inverted residual (MBInvRes) with an
expansion ratio in ``{3, 4, 6}``, a depthwise kernel in ``{3, 5}`` and squeeze-and-excitation
off/on: 12 configurations. Every stage has a depth in ``{2, ..., D}``; its first block changes
width and stride, the others keep the shape and add an identity shortcut.

Decision labels (``s`` and ``b`` 0-based; the contribution estimator, the latency profiler and the
solvers rely on them)::

    stage{s}.block{b}.expand   3, 4, 6
    stage{s}.block{b}.kernel   3, 5
    stage{s}.block{b}.se       False, True
    stage{s}.depth             2, ..., D

Weight sharing follows the BINAS code (``InvertedResidualElastic``): one expansion convolution at
the largest ratio whose channel prefixes serve the smaller ratios (one BatchNorm), one depthwise
convolution and BatchNorm per kernel size, a squeeze-and-excitation unit whose reduce layer is a
prefix per ratio, and one projection convolution with a separate output BatchNorm for each
(ratio, SE) pair.

Example::

    supernet = binas_supernet(preset="tiny")                       # 3 stages, 32×32 inputs, 10 classes
    supernet.activate_indices(supernet.space.sample_indices(64, seed=0))  # one subnet per example
    logits = supernet(torch.randn(64, 3, 32, 32))                   # (64, 10)
    subnet = supernet.export(supernet.space.sample(1))              # plain torch.nn network
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_nas.nn.choice import Choice, Mutable
from lightning_nas.nn.depth_choice import DepthChoice
from lightning_nas.nn.elastic_size import prefix, size_mask
from lightning_nas.nn.norm import lerp_running_stats
from lightning_nas.nn.routing import group_rows, reassemble, select_rows, take_rows
from lightning_nas.spaces.mobilenet import make_divisible
from lightning_nas.spaces.registry import register_space
from lightning_nas.supernet import Supernet

__all__ = [
    "BINAS_PRESETS",
    "BinasBlock",
    "BinasNet",
    "MBInvRes",
    "SqueezeExcite",
    "binas_supernet",
    "grouped_batch_norm",
]

# Activations must map 0 to 0: per-example mode zeroes the channels a row does not use.
_ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "hswish": nn.Hardswish}

BINAS_PRESETS: dict[str, dict[str, Any]] = {
    # The paper's ImageNet backbone (timm ``mobilenasnet``, width 1.0, 224×224 inputs).
    "imagenet": dict(
        num_classes=1000,
        in_chans=3,
        stem_channels=32,
        stem_stride=2,
        ds_channels=16,
        stage_channels=(24, 40, 80, 112, 192),
        stage_strides=(2, 2, 2, 1, 2),
        stage_activations=("relu", "relu", "hswish", "hswish", "hswish"),
        max_depth=4,
        min_depth=2,
        head_channels=(960, 1280),
    ),
    # Small enough to train on 32×32 images on a CPU: 3 stages at 16, 8 and 4 pixels.
    "tiny": dict(
        num_classes=10,
        in_chans=3,
        stem_channels=16,
        stem_stride=2,
        ds_channels=8,
        stage_channels=(16, 24, 32),
        stage_strides=(1, 2, 2),
        stage_activations=("relu", "hswish", "hswish"),
        max_depth=4,
        min_depth=2,
        head_channels=(96, 128),
    ),
}


def _activation(name: str, argument: str = "activation") -> nn.Module:
    try:
        return _ACTIVATIONS[name]()
    except (KeyError, TypeError):
        raise ValueError(f"`{argument}` must be one of {sorted(_ACTIVATIONS)}, got {name!r}") from None


# ---------------------------------------------------------------------------------------------
# BatchNorm over groups of rows
# ---------------------------------------------------------------------------------------------
def _average_factor(bn: nn.BatchNorm2d) -> float:
    """The running-average factor ``nn.BatchNorm2d`` would use for this call (and count the call)."""
    if not (bn.training and bn.track_running_stats):
        return 0.0
    bn.num_batches_tracked.add_(1)
    return 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum


def _batch_norm(x: Tensor, bn: nn.BatchNorm2d) -> Tensor:
    """``bn`` applied to ``x`` whose channels are the first ``x.shape[1]`` of ``bn``'s (exactly as
    an ``nn.BatchNorm2d`` of that width holding ``bn``'s prefix would compute, running stats included)."""
    c = x.shape[1]
    batch_stats = bn.training or not bn.track_running_stats
    rm, rv, w, b = (prefix(t, c) for t in (bn.running_mean, bn.running_var, bn.weight, bn.bias))
    return F.batch_norm(x, rm, rv, w, b, batch_stats, _average_factor(bn), bn.eps)


class _GroupedBatchNormFunction(torch.autograd.Function):
    """``y = (x * scale[group] + shift[group]) * mask`` with BatchNorm's backward per group.

    The ``G`` norms' weights and biases come in as separate tensors (stacking them through autograd
    would add a stack and, in backward, a select per norm), and every pass gathers the per-row
    coefficients of all norms in one call, so forward and backward take a fixed handful of calls
    each (about 7 and 20) whatever ``G``, each a fused pass over ``x`` or a small ``(G, C)`` product.
    """

    @staticmethod
    def forward(ctx, x, layout, mean, invstd, batch_stats, *params):
        # layout: _Layout (what depends on the rows' groups and masks only); mean, invstd: (G, C) in
        # the statistics' precision; batch_stats: whether each group's statistics are the batch's
        # (so depend on x): a bool for all groups, else a (G, 1) bool tensor; params: the G weights
        # then the G biases, (C,) each.
        g = len(params) // 2
        scale = _stack(params[:g]) * invstd
        shift = torch.addcmul(_stack(params[g:]), mean, scale, value=-1)
        row_scale, row_shift = _cast(layout.rows(torch.stack((scale, shift))), x.dtype)
        ctx.save_for_backward(x, mean, invstd, scale, batch_stats if isinstance(batch_stats, Tensor) else None)
        ctx.layout, ctx.batch_stats, ctx.param_dtype = layout, batch_stats, params[0].dtype
        return torch.addcmul(row_shift, x, row_scale)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy):
        x, mean, invstd, scale, flags = ctx.saved_tensors
        layout, batch_stats = ctx.layout, (ctx.batch_stats if flags is None else flags)
        c, stat = x.shape[1], mean.dtype  # reductions in the statistics' precision (float32 for half inputs)
        # Per (norm, channel): the sums of dy and dy * x over the elements behind its statistics.
        sums = torch.cat((dy.sum((2, 3), dtype=stat), (dy * x).sum((2, 3), dtype=stat)), 1)  # (n, 2C)
        sum_dy, sum_dy_x = layout.group_sum(sums).split(c, 1)  # (G, C) each
        sum_dy_xhat = torch.addcmul(sum_dy_x, mean, sum_dy, value=-1).mul_(invstd)
        d_weight, d_bias = _cast(sum_dy_xhat, ctx.param_dtype), _cast(sum_dy, ctx.param_dtype)
        grads = (*d_weight.unbind(0), *d_bias.unbind(0))
        if not ctx.needs_input_grad[0]:
            return None, None, None, None, None, *grads
        if batch_stats is False:
            return dy * _cast(layout.rows(scale[None])[0], x.dtype), None, None, None, None, *grads
        # dx = scale * (dy - mean(dy) - xhat * mean(dy * xhat)) for batch statistics (means over the
        # M elements of the statistic), scale * dy otherwise:
        # dx = scale * dy + k_0 - k_x * x with k_x = scale * invstd * sum(dy * xhat) / M and
        # k_0 = k_x * mean - scale * sum(dy) / M.
        a = scale * layout.inv_elements
        k_x = (a * invstd).mul_(sum_dy_xhat)
        k_0 = torch.addcmul(k_x * mean, a, sum_dy, value=-1)
        if batch_stats is not True:
            k_x, k_0 = k_x * batch_stats, k_0 * batch_stats
        row_k0, row_scale, row_kx = _cast(layout.rows(torch.stack((k_0, scale, k_x))), x.dtype)
        return torch.addcmul(row_k0, dy, row_scale).addcmul_(x, row_kx, value=-1), None, None, None, None, *grads


class _SingleBatchNormFunction(torch.autograd.Function):
    """One norm with batch statistics over masked rows: ``_GroupedBatchNormFunction`` for ``G = 1``
    in fewer calls, through the native kernels.

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
        group: ``(n,)`` or ``None``; mask: ``(n, C)`` in ``x``'s dtype or ``None``.
        inv_elements, unbias: ``(G, C)`` ``1 / M`` and ``M / (M - 1)``, ``M`` the elements behind
            each statistic (clamped to at least 1); inv_elements2: ``(G, 2C)``, ``1 / M`` twice (for
            the sums and the sums of squares).
        seen: ``(G, C)`` 1.0 where some row uses the statistic, else 0.0; seen_any: per norm, a
            ``()`` bool tensor.
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
        # lookup in a table built once per (n, pixels) (five calls, where computing them took eight).
        counts = rows.to(torch.long).reshape(-1)
        table = _count_factors(n, pixels, stat, device, momentum).index_select(1, counts).view(-1, *rows.shape)
        self.inv_elements, self.unbias, self.seen, *weights = table.unbind(0)
        self.inv_elements2 = torch.cat((self.inv_elements, self.inv_elements), 1)
        self.seen_any = list(self.seen.any(1).unbind())
        self._lerp_weights: dict[tuple[float, torch.dtype], list[Tensor]] = {}
        if weights:  # the norms' common momentum where seen, from the same lookup
            self._lerp_weights[(momentum, stat)] = list(weights[0].unbind())

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

    def lerp_weights(self, momentum: float, dtype: torch.dtype) -> list[Tensor]:
        """Per norm, ``(C,)`` running-average weights: ``momentum`` where seen, else 0."""
        key = (momentum, dtype)
        if key not in self._lerp_weights:
            self._lerp_weights[key] = list(_cast(self.seen * momentum, dtype).unbind())
        return self._lerp_weights[key]


def grouped_batch_norm(
    x: Tensor,
    norms: Sequence[nn.BatchNorm2d],
    group: Tensor | None = None,
    mask: Tensor | None = None,
    *,
    cache: Callable[[tuple, Callable[[], Any]], Any] | None = None,
    input_masked: bool = False,
) -> Tensor:
    """Row ``i`` of ``x`` normalised by ``norms[group[i]]``, each norm's statistics over its own rows.

    This is what each row's own subnet computes when the rows of a batch use different BatchNorms
    (one per candidate) and different channel prefixes: in training mode, channel ``c`` of norm ``g``
    takes its batch statistics over the rows ``i`` with ``group[i] == g`` and ``mask[i, c] == 1``,
    and only those norms and channels update their running statistics (and only norms that some
    row uses count the batch in ``num_batches_tracked``). Two reductions over ``x`` (each row's sums
    and sums of squares) and one ``(G, n) @ (n, 2C)`` product give the statistics of all norms, and one
    pass the output (backward: two reductions, one product and two passes); no gathers, no host
    synchronisation, and a fixed number of operator calls whatever the number of norms (each call
    costs a GPU launch). A single norm in training (a block's expansion norm) takes the native
    kernels for its output and its weight and bias gradients (see ``_SingleBatchNormFunction``).

    Args:
        x: ``(n, C, H, W)``; ``C`` is at most each norm's ``num_features`` (channel prefixes are used).
        norms: the candidate BatchNorms (affine, tracking running statistics).
        group: ``LongTensor (n,)`` in ``[0, len(norms))``; ``None`` when there is one norm.
        mask: ``(n, C)`` of 0/1 (same dtype as ``x``): the channels each row uses; ``None`` for all.
        cache: ``cache(key, make)`` to reuse what depends on ``group`` and ``mask`` only (one-hot
            form, counts) across calls with the same tensors, e.g.
            :meth:`~lightning_nas.nn.ArchContext.cached`; ``None`` computes it each call.
        input_masked: ``x`` is already zero where ``mask`` is 0 (e.g. a bias-free depthwise
            convolution of masked channels): its statistics skip masking it (one call fewer).

    Statistics are taken in at least float32 and outside autocast (as ``F.batch_norm`` keeps them for
    half-precision inputs: a half-precision element count overflows past 65,504), so mixed-precision
    training works; the output has ``x``'s dtype.

    Returns:
        ``(n, C, H, W)``, zero where ``mask`` is 0 (whatever ``x`` holds there).
    """
    if group is None and len(norms) != 1:
        raise ValueError(f"`group` is required with {len(norms)} norms")
    with torch.autocast(x.device.type, enabled=False):
        return _grouped_batch_norm(x, norms, group, mask, cache, input_masked)


def _grouped_batch_norm(x: Tensor, norms: Sequence[nn.BatchNorm2d], group: Tensor | None, mask: Tensor | None, cache,
                        input_masked: bool = False) -> Tensor:
    n, c, h, w = x.shape
    stat = x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32  # (torch.promote_types is an operator call)
    batch_stats = [bn.training or not bn.track_running_stats for bn in norms]
    updates = [bn.training and bn.track_running_stats for bn in norms]
    with torch.no_grad():
        momenta = {bn.momentum for bn in norms}
        momentum = momenta.pop() if len(momenta) == 1 and any(updates) else None  # a common float (or None) in the table
        make = lambda: _Layout(group, mask, len(norms), n, c, h * w, stat, x.device, momentum)  # noqa: E731
        layout = make() if cache is None else cache(("grouped_bn", id(group), id(mask), len(norms), n, c, h * w, stat, momentum), make)
        if any(batch_stats):
            wide_x = _cast(x, stat)  # a float32 copy for half inputs only: their squares overflow past 256
            # Each row's sums and sums of squares, summed over the rows of each statistic and divided
            # by its elements (on a CPU a per-row ``var_mean`` over the pixels, one call fewer, is ~10× slower).
            sums = torch.cat((wide_x.sum((2, 3)), (wide_x * wide_x).sum((2, 3))), 1)  # (n, 2C)
            moments = layout.group_sum(sums, input_masked).mul_(layout.inv_elements2)
            mean, square = moments.split(c, 1)  # (G, C) each
            var = torch.addcmul(square, mean, mean, value=-1).clamp_min_(0)
        if all(batch_stats):
            use_mean, use_var, flags = mean, var, True
        else:
            running_mean = _cast(_stack([prefix(bn.running_mean, c) for bn in norms]), stat)
            running_var = _cast(_stack([prefix(bn.running_var, c) for bn in norms]), stat)
            if any(batch_stats):
                flags = torch.tensor(batch_stats, device=x.device)[:, None]
                use_mean, use_var = torch.where(flags, mean, running_mean), torch.where(flags, var, running_var)
            else:
                use_mean, use_var, flags = running_mean, running_var, False
        epsilons = {bn.eps for bn in norms}
        eps = epsilons.pop() if len(epsilons) == 1 else x.new_tensor([bn.eps for bn in norms], dtype=stat)[:, None]
        invstd = (use_var + eps).rsqrt_()
        if any(updates):
            _update_running_stats(norms, updates, layout, mean, var, c)
    if len(norms) == 1 and flags is True and isinstance(eps, float) and norms[0].weight.dtype == stat:  # (mixed kernels need float32 parameters)
        bn = norms[0]
        return _SingleBatchNormFunction.apply(x, layout.mask4, layout, use_mean, use_var, invstd, eps, prefix(bn.weight, c), prefix(bn.bias, c))
    params = [prefix(bn.weight, c) for bn in norms] + [prefix(bn.bias, c) for bn in norms]
    return _GroupedBatchNormFunction.apply(x, layout, use_mean, invstd, flags, *params)


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


def _stack(tensors: Sequence[Tensor]) -> Tensor:
    return tensors[0][None] if len(tensors) == 1 else torch.stack(tensors)


def _update_running_stats(norms: Sequence[nn.BatchNorm2d], updates: list[bool], layout: _Layout, mean: Tensor, var: Tensor, c: int) -> None:
    """Move the running statistics of the norms with ``updates[g]`` (rows ``g`` of the ``(G, C)``
    batch statistics) toward the batch's where they saw data, as ``nn.BatchNorm2d`` does; count the
    batch for the norms that some row used. A fixed handful of calls for all norms (``_foreach`` ops
    on the rows of the statistics)."""
    picked = [g for g, u in enumerate(updates) if u]
    torch._foreach_add_([norms[g].num_batches_tracked for g in picked], [layout.seen_any[g] for g in picked])
    dtype = norms[picked[0]].running_mean.dtype
    momenta = {norms[g].momentum for g in picked}
    if None in momenta or len(momenta) > 1:  # cumulative averages (momentum None) weigh by 1 / batches seen
        factor = torch.stack([
            mean.new_zeros(()) if not u else _cast(1.0 / bn.num_batches_tracked, mean.dtype) if bn.momentum is None else mean.new_tensor(bn.momentum)
            for bn, u in zip(norms, updates)
        ])
        weights = list(_cast(torch.where(layout.seen > 0, factor[:, None], 0.0), dtype).unbind())
    else:
        weights = layout.lerp_weights(momenta.pop(), dtype)
    means, variances = _cast(mean, dtype).unbind(), _cast(var * layout.unbias, dtype).unbind()
    lerp_running_stats(
        [prefix(norms[g].running_mean, c) for g in picked] + [prefix(norms[g].running_var, c) for g in picked],
        [means[g] for g in picked] + [variances[g] for g in picked],
        [weights[g] for g in picked] * 2,
    )


# ---------------------------------------------------------------------------------------------
# Static modules (what an exported block is made of)
# ---------------------------------------------------------------------------------------------
class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation: ``x * hardsigmoid(W_e relu(W_r mean(x) + b_r) + b_e)`` per channel.

    Shapes: ``(B, channels, H, W) -> (B, channels, H, W)``.
    """

    def __init__(self, channels: int, reduced: int) -> None:
        super().__init__()
        self.conv_reduce = nn.Conv2d(channels, reduced, 1)
        self.act = nn.ReLU()
        self.conv_expand = nn.Conv2d(reduced, channels, 1)
        self.gate = nn.Hardsigmoid()

    def forward(self, x: Tensor) -> Tensor:
        s = x.mean((2, 3), keepdim=True)
        return x * self.gate(self.conv_expand(self.act(self.conv_reduce(s))))


class MBInvRes(nn.Module):
    """A fixed inverted residual: 1×1 expansion, depthwise k×k, optional SE, 1×1 linear projection.

    What :meth:`BinasBlock.freeze` returns; plain ``torch.nn`` layers, TorchScript-compatible.

    Args:
        in_channels: input width.
        out_channels: output width.
        hidden: expanded width.
        kernel_size: depthwise kernel (odd).
        stride: depthwise stride.
        se_channels: SE reduce width, or 0 for no SE.
        activation: ``"relu"`` or ``"hswish"`` (after the expansion and the depthwise conv).

    Shapes: ``(B, in_channels, H, W) -> (B, out_channels, ceil(H / stride), ceil(W / stride))``.
    """

    def __init__(self, in_channels: int, out_channels: int, hidden: int, kernel_size: int, stride: int, se_channels: int, activation: str) -> None:
        super().__init__()
        self.has_residual = stride == 1 and in_channels == out_channels
        self.conv_pw = nn.Conv2d(in_channels, hidden, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(hidden)
        self.act1 = _activation(activation)
        self.conv_dw = nn.Conv2d(hidden, hidden, kernel_size, stride, kernel_size // 2, groups=hidden, bias=False)
        self.bn2 = nn.BatchNorm2d(hidden)
        self.act2 = _activation(activation)
        self.se = SqueezeExcite(hidden, se_channels) if se_channels else nn.Identity()
        self.conv_pwl = nn.Conv2d(hidden, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)

    def forward(self, x: Tensor) -> Tensor:
        y = self.act1(self.bn1(self.conv_pw(x)))
        y = self.se(self.act2(self.bn2(self.conv_dw(y))))
        y = self.bn3(self.conv_pwl(y))
        if self.has_residual:
            y = y + x
        return y


def _copy_norm(target: nn.BatchNorm2d, source: nn.BatchNorm2d) -> nn.BatchNorm2d:
    c = target.num_features
    target.eps, target.momentum = source.eps, source.momentum
    with torch.no_grad():
        target.weight.copy_(source.weight[:c])
        target.bias.copy_(source.bias[:c])
        target.running_mean.copy_(source.running_mean[:c])
        target.running_var.copy_(source.running_var[:c])
        target.num_batches_tracked.copy_(source.num_batches_tracked)
    return target


# ---------------------------------------------------------------------------------------------
# The elastic block
# ---------------------------------------------------------------------------------------------
class BinasBlock(Mutable):
    """An elastic MBInvRes: expansion ratio, depthwise kernel and SE are decisions.

    Decisions ``f"{prefix}.expand"`` (``expand_ratios``), ``f"{prefix}.kernel"`` (``kernel_sizes``)
    and ``f"{prefix}.se"`` (``False, True``). The expanded width of ratio ``r`` is
    ``make_divisible(in_channels * r)`` and its SE width ``make_divisible(hidden * se_ratio)``
    (timm's rounding to multiples of 8).

    In per-example mode the expansion runs once at the widest row's width with each row's extra
    channels zeroed, rows are routed by kernel size through their depthwise convolution, SE runs
    on every row with per-row reduce widths and is skipped (gate 1) where it is off, and the
    projection runs once, followed by one pass that applies each row's (ratio, SE) BatchNorm. Every
    BatchNorm's batch statistics are taken over the rows (and channels) that use it.

    With static shapes (:attr:`~lightning_nas.Supernet.static_shapes`) every row runs at the widest
    expansion with its extra channels masked, all kernels in one depthwise convolution (filters
    zero-padded to the largest kernel) and SE on (gate 1 where it is off), even when the rows
    agree: fixed shapes, no host reads. Rows a :class:`~lightning_nas.nn.DepthChoice` has stopped
    are left out of every batch statistic (:attr:`masks_stopped_rows`), so a stage runs its
    optional blocks on every row instead of grouping them by depth.

    Args:
        in_channels: input width.
        out_channels: output width.
        stride: depthwise stride (1 or 2).
        prefix: label prefix, e.g. ``"stage0.block1"``.
        activation: ``"relu"`` or ``"hswish"``.
        expand_ratios: candidate expansion ratios (positive, distinct).
        kernel_sizes: candidate depthwise kernels (odd, distinct).
        se_ratio: SE reduce width as a fraction of the expanded width.

    Shapes: ``(B, in_channels, H, W) -> (B, out_channels, ceil(H / stride), ceil(W / stride))``.
    """

    masks_stopped_rows = True  # static shapes: stopped rows are masked out of every batch statistic

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int,
        *,
        prefix: str,
        activation: str = "relu",
        expand_ratios: Sequence[float] = (3, 4, 6),
        kernel_sizes: Sequence[int] = (3, 5),
        se_ratio: float = 0.25,
    ) -> None:
        super().__init__()
        self.activation_name = activation
        _activation(activation)
        self.expand = Choice(list(expand_ratios), f"{prefix}.expand")
        self.kernel = Choice(list(kernel_sizes), f"{prefix}.kernel")
        self.se = Choice([False, True], f"{prefix}.se")
        self.in_channels, self.out_channels, self.stride = in_channels, out_channels, stride
        self.has_residual = stride == 1 and in_channels == out_channels
        self.hidden = tuple(make_divisible(in_channels * r) for r in self.expand.values)
        self.se_hidden = tuple(make_divisible(h * se_ratio) for h in self.hidden)
        wide, wide_se = max(self.hidden), max(self.se_hidden)
        self.conv_pw = nn.Conv2d(in_channels, wide, 1, bias=False)
        self.bn_pw = nn.BatchNorm2d(wide)
        self.conv_dw = nn.ModuleList(nn.Conv2d(wide, wide, k, stride, k // 2, groups=wide, bias=False) for k in self.kernel.values)
        self.bn_dw = nn.ModuleList(nn.BatchNorm2d(wide) for _ in self.kernel.values)
        self.se_reduce = nn.Conv2d(wide, wide_se, 1)
        self.se_expand = nn.Conv2d(wide_se, wide, 1)
        self.conv_pwl = nn.Conv2d(wide, out_channels, 1, bias=False)
        # One output BatchNorm per (ratio, SE) pair, at index ``2 * ratio_index + se_index``.
        self.bn_pwl = nn.ModuleList(nn.BatchNorm2d(out_channels) for _ in range(2 * len(self.hidden)))
        self.act = _activation(activation)
        self._tables: dict[torch.device, tuple[Tensor, Tensor]] = {}

    def norms_masking_stopped_rows(self) -> tuple[nn.BatchNorm2d, ...]:
        """The plain BatchNorms this block applies itself (never called as modules), whose batch
        statistics leave out the rows a :class:`~lightning_nas.nn.DepthChoice` has stopped."""
        return (self.bn_pw, *self.bn_dw, *self.bn_pwl)

    # -- scalar mode: one configuration for all rows --------------------------------------------
    def _run_config(self, x: Tensor, ratio: int, kernel: int, se: int) -> Tensor:
        h, rd = self.hidden[ratio], self.se_hidden[ratio]
        y = self.act(_batch_norm(F.conv2d(x, prefix(self.conv_pw.weight, h)), self.bn_pw))
        dw = self.conv_dw[kernel]
        y = F.conv2d(y, prefix(dw.weight, h), None, dw.stride, dw.padding, 1, h)
        y = self.act(_batch_norm(y, self.bn_dw[kernel]))
        if se:
            s = y.mean((2, 3), keepdim=True)
            s = F.relu(F.conv2d(s, prefix(self.se_reduce.weight, rd, h), prefix(self.se_reduce.bias, rd)))
            y = y * F.hardsigmoid(F.conv2d(s, prefix(self.se_expand.weight, h, rd), prefix(self.se_expand.bias, h)))
        return _batch_norm(F.conv2d(y, prefix(self.conv_pwl.weight, self.out_channels, h)), self.bn_pwl[2 * ratio + se])

    # -- per-example mode ---------------------------------------------------------------------
    def _widths(self, device: torch.device) -> tuple[Tensor, Tensor]:
        if device not in self._tables:
            self._tables[device] = (torch.tensor(self.hidden, device=device), torch.tensor(self.se_hidden, device=device))
        return self._tables[device]

    def _static_mask_tables(self, device: torch.device, dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor]:
        """Per-candidate tables whose rows, picked by the rows' decisions, are the static-shape
        masks: ``(n_ratios, wide)`` expansion-width masks, ``(n_ratios, wide_se, 1, 1)`` SE
        reduce-width masks, ``(2, 1, 1, 1)`` SE on (0.0, 1.0). Built once per device and dtype: an
        ``index_select`` per mask instead of the four calls of ``size_mask`` and its views."""
        tables = self.__dict__.setdefault("_static_tables", {})
        key = (device, dtype)
        if key not in tables:
            hidden, se_hidden = (torch.tensor(v, device=device) for v in (self.hidden, self.se_hidden))
            wide_se = max(self.se_hidden)
            tables[key] = (
                size_mask(hidden, max(self.hidden), dtype),
                size_mask(se_hidden, wide_se, dtype).view(-1, wide_se, 1, 1),
                torch.tensor([0.0, 1.0], dtype=dtype, device=device).view(2, 1, 1, 1),
            )
        return tables[key]

    def _run_rows(self, x: Tensor, ratio: Tensor, kernel: Tensor, se: Tensor) -> Tensor:
        hidden_of, se_hidden_of = self._widths(ratio.device)
        hidden = hidden_of.index_select(0, ratio)  # (n,) expanded width of each row
        bounds = self.expand.index_bounds()
        if bounds is None:
            narrow, wide = (int(v) for v in torch.aminmax(hidden))
            se_width = None
        else:  # from the host, no GPU read; a ratio inside the bounds but unused only widens (exactly: zero channels)
            present = range(bounds[0], bounds[1] + 1)
            narrow, wide = min(self.hidden[r] for r in present), max(self.hidden[r] for r in present)
            se_width = max(self.se_hidden[r] for r in present)
        # (n, wide) channels each row uses; None when all rows use them all.
        mask = None if narrow == wide else size_mask(hidden.to(x.device), wide, x.dtype)
        y = self.act(grouped_batch_norm(F.conv2d(x, prefix(self.conv_pw.weight, wide)), [self.bn_pw], None, mask))
        y = self._depthwise(y, kernel, wide)
        y = self.act(grouped_batch_norm(y, self.bn_dw, kernel.to(x.device), mask, input_masked=True))  # see _run_rows_static
        se_bounds = self.se.index_bounds()
        if (se_bounds[1] == 1) if se_bounds else bool(se.any()):
            y = self._squeeze_excite(
                y, *self._se_masks(se.to(x.device), se_hidden_of.index_select(0, ratio).to(x.device), se_width, y.dtype), convolutions=False
            )
        z = F.conv2d(y, prefix(self.conv_pwl.weight, self.out_channels, wide))
        return grouped_batch_norm(z, self.bn_pwl, (2 * ratio + se).to(x.device))

    def _run_rows_static(self, x: Tensor, ratio: Tensor, kernel: Tensor, se: Tensor) -> Tensor:
        """Per-example rows at the shapes the candidate lists fix: the widest expansion, the largest
        kernel and SE on every row, rows told apart by masks; nothing read back on the host.

        Rows the context marks as stopped (:attr:`~lightning_nas.nn.ArchContext.alive`) are left out
        of every batch statistic and come out zero.
        """
        context = self.expand._context
        alive = context.alive
        n, device = x.shape[0], x.device
        wide = max(self.hidden)

        def masks() -> tuple[Tensor | None, Tensor | None, Tensor, Tensor, Tensor, Tensor, Tensor]:
            widths, reduce_widths, se_on = self._static_mask_tables(device, x.dtype)
            rows = ratio.to(device)
            mask = None if min(self.hidden) == wide else widths.index_select(0, rows)
            running = None if alive is None else alive.to(device=device, dtype=x.dtype)[:, None]
            if running is not None:
                mask = running.expand(n, wide) if mask is None else mask * running
            out_mask = None if running is None else running.expand(n, self.out_channels)
            # The output norms' group (ratio, SE pair) and SE's per-row reduce widths and on/off.
            out_group = torch.add(se, ratio, alpha=2).to(device)  # 2 * ratio + se in one call
            # SE's per-row reduce-width mask, on and off: one lookup each (see _se_masks).
            on = se_on.index_select(0, se.to(device))
            return mask, out_mask, kernel.to(device), out_group, reduce_widths.index_select(0, rows), on, 1 - on

        # Every block of the same decisions shares these (one set per activation and running rows),
        # and with them what its grouped norms derive from them (``cache``).
        labels = (self.expand.label, self.kernel.label, self.se.label)
        mask, out_mask, kernel, out_group, *se_masks = context.cached(("binas_masks", *labels, x.dtype, device), masks)
        cache = context.cached
        y = self.act(grouped_batch_norm(F.conv2d(x, self.conv_pw.weight), [self.bn_pw], None, mask, cache=cache))
        y = self._depthwise_static(y, kernel)
        # The activations map 0 to 0 and the depthwise filters are per channel and bias-free: the
        # channels (and stopped rows) the mask zeroes are zero here already, as they are after the
        # bias-free projection of them below (``input_masked``: their statistics skip a mask).
        y = self.act(grouped_batch_norm(y, self.bn_dw, kernel, mask, cache=cache, input_masked=True))
        # SE on every row: the gate is 1 on rows with SE off (no test of whether any row has it on).
        y = self._squeeze_excite(y, *se_masks, convolutions=True)
        z = F.conv2d(y, self.conv_pwl.weight)
        return grouped_batch_norm(z, self.bn_pwl, out_group, out_mask, cache=cache, input_masked=True)

    def _depthwise(self, y: Tensor, kernel: Tensor, wide: int) -> Tensor:
        """Each row through the depthwise conv of its kernel (rows grouped by kernel)."""
        groups, order = group_rows(kernel, len(self.conv_dw))
        outputs = []
        for k, positions in groups:
            dw = self.conv_dw[k]
            rows = y if len(groups) == 1 else take_rows([y], positions)[0]
            # Bias-free depthwise filters keep each row's zeroed channels at zero.
            outputs.append(F.conv2d(rows, prefix(dw.weight, wide), None, dw.stride, dw.padding, 1, wide))
        return outputs[0] if len(outputs) == 1 else reassemble(outputs, order)

    def _depthwise_static(self, y: Tensor, kernel: Tensor) -> Tensor:
        """Each row through the depthwise filters of its kernel, all rows in one convolution.

        The filters are zero-padded to the largest kernel ``K`` (a centred ``k×k`` filter padded to
        ``K×K`` with padding ``K // 2`` computes what it computes with padding ``k // 2``), each
        row's picked, and the batch run as one depthwise convolution of ``n * wide`` groups.
        ``y``: ``(n, wide, H, W)``; ``kernel``: ``LongTensor (n,)`` on ``y``'s device.
        """
        n, wide, h, w = y.shape
        if torch.compiler.is_compiling():
            # Compiled, each kernel size is its own depthwise convolution of every row, each row
            # keeping its own kernel's output: inductor lays a graph's convolutions out channels-last,
            # which made the one convolution of n * wide groups below 4x slower (CPU, fwd + bwd),
            # while these compile to 0.25x of it (benchmarks/RESULTS.md notes).
            outputs = [F.conv2d(y, dw.weight, None, dw.stride, dw.padding, 1, wide) for dw in self.conv_dw]
            return select_rows(outputs, [kernel == i for i in range(len(outputs))])
        big = max(self.kernel.values)
        filters = []
        for size, dw in zip(self.kernel.values, self.conv_dw):
            pad = (big - size) // 2
            filters.append(F.pad(dw.weight, (pad,) * 4) if pad else dw.weight)
        weight = _stack(filters).index_select(0, kernel).reshape(n * wide, 1, big, big)  # (n * wide, 1, K, K)
        z = F.conv2d(y.reshape(1, n * wide, h, w), weight, None, self.stride, big // 2, 1, n * wide)
        return z.reshape(n, wide, z.shape[2], z.shape[3])

    @staticmethod
    def _se_masks(se: Tensor, reduced: Tensor, width: int | None, dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor]:
        """What SE needs from the rows' decisions: ``(n, width, 1, 1)`` reduce-width mask (``width``:
        at least the widest of ``reduced``, or ``None`` to read it from ``reduced``), and
        ``(n, 1, 1, 1)`` SE on (1.0 / 0.0) and off (its complement)."""
        width = int(reduced.max()) if width is None else width
        on = (se > 0).to(dtype).view(-1, 1, 1, 1)
        return size_mask(reduced, width, dtype).view(-1, width, 1, 1), on, 1 - on

    def _squeeze_excite(self, y: Tensor, reduce_mask: Tensor, on: Tensor, off: Tensor, *, convolutions: bool) -> Tensor:
        """SE on the rows with ``on`` 1 (gate 1 where ``off`` is 1), each at its own reduce width
        (``reduce_mask``, see :meth:`_se_masks`).

        ``convolutions``: the two layers as 1×1 convolutions on ``(n, wide, 1, 1)``, as in the
        exported ``SqueezeExcite`` (one call each way: what static shapes, the accelerators' mode,
        take), else as linear layers on ``(n, wide)`` (two dozen more calls forward and backward,
        transposes and a product per gradient, but faster on a CPU: ~0.5-1 ms per block at batch 64).
        """
        n, wide, width = y.shape[0], y.shape[1], reduce_mask.shape[1]
        # Whole weights are viewed, not sliced, when nothing is cut: a no-op slice still costs a copy in backward.
        w_reduce, b_reduce = prefix(self.se_reduce.weight, width, wide), prefix(self.se_reduce.bias, width)
        w_expand, b_expand = prefix(self.se_expand.weight, wide, width), prefix(self.se_expand.bias, wide)
        if convolutions:
            r = F.conv2d(y.mean((2, 3), keepdim=True), w_reduce, b_reduce)
            gate = F.conv2d(F.relu(r) * reduce_mask, w_expand, b_expand)
        else:
            r = F.linear(y.mean((2, 3)), w_reduce.flatten(1), b_reduce)
            gate = F.linear(F.relu(r) * reduce_mask.view(n, width), w_expand.flatten(1), b_expand).view(n, wide, 1, 1)
        return y * torch.addcmul(off, F.hardsigmoid(gate), on)  # exactly the gate where SE is on, exactly 1 where off

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"BinasBlock expects input (B, {self.in_channels}, H, W), got shape {tuple(x.shape)}")
        ratio, kernel, se = self.expand.example_indices(), self.kernel.example_indices(), self.se.example_indices()
        if ratio is not None and self.expand.uses_static_shapes():
            # Masks even when every row agrees: one graph for every batch, and stopped rows
            # (a DepthChoice's) kept out of the batch statistics.
            if x.shape[0] != ratio.shape[0]:
                raise ValueError(f"per-example mode: input batch size {x.shape[0]} != {ratio.shape[0]} active architectures")
            y = self._run_rows_static(x, ratio, kernel, se)
            return y + x if self.has_residual else y
        uniform = [c.uniform_index() for c in (self.expand, self.kernel, self.se)]
        if ratio is None or None not in uniform:
            y = self._run_config(x, *uniform)
        elif x.shape[0] != ratio.shape[0]:
            raise ValueError(f"per-example mode: input batch size {x.shape[0]} != {ratio.shape[0]} active architectures")
        else:
            y = self._run_rows(x, ratio, kernel, se)
        return y + x if self.has_residual else y

    # -- export -------------------------------------------------------------------------------
    def freeze(self, arch: dict[str, Any], export_child) -> MBInvRes:
        ratio = self.expand.index_of(arch[self.expand.label])
        kernel = self.kernel.index_of(arch[self.kernel.label])
        se = self.se.index_of(arch[self.se.label])
        h, rd = self.hidden[ratio], self.se_hidden[ratio]
        block = MBInvRes(self.in_channels, self.out_channels, h, self.kernel.values[kernel], self.stride, rd if se else 0, self.activation_name)
        block = block.to(device=self.conv_pw.weight.device, dtype=self.conv_pw.weight.dtype)
        with torch.no_grad():
            block.conv_pw.weight.copy_(self.conv_pw.weight[:h])
            block.conv_dw.weight.copy_(self.conv_dw[kernel].weight[:h])
            block.conv_pwl.weight.copy_(self.conv_pwl.weight[:, :h])
            if se:
                block.se.conv_reduce.weight.copy_(self.se_reduce.weight[:rd, :h])
                block.se.conv_reduce.bias.copy_(self.se_reduce.bias[:rd])
                block.se.conv_expand.weight.copy_(self.se_expand.weight[:h, :rd])
                block.se.conv_expand.bias.copy_(self.se_expand.bias[:h])
        _copy_norm(block.bn1, self.bn_pw)
        _copy_norm(block.bn2, self.bn_dw[kernel])
        _copy_norm(block.bn3, self.bn_pwl[2 * ratio + se])
        return block

    def extra_repr(self) -> str:
        return (
            f"in_channels={self.in_channels}, out_channels={self.out_channels}, stride={self.stride}, "
            f"hidden={list(self.hidden)}, se_hidden={list(self.se_hidden)}, activation={self.activation_name!r}"
        )


# ---------------------------------------------------------------------------------------------
# The network
# ---------------------------------------------------------------------------------------------
class BinasNet(nn.Module):
    """Stem, a fixed depthwise-separable block, searchable stages of :class:`BinasBlock`, head.

    See :func:`binas_supernet` for the arguments. Stage ``s`` is a
    :class:`~lightning_nas.nn.DepthChoice` labelled ``f"stage{s}.depth"`` whose ``blocks[b]`` is
    the :class:`BinasBlock` ``f"stage{s}.block{b}"``.

    Shapes: ``(B, in_chans, H, W) -> (B, num_classes)``.
    """

    def __init__(
        self,
        *,
        num_classes: int,
        in_chans: int,
        stem_channels: int,
        stem_stride: int,
        ds_channels: int,
        stage_channels: Sequence[int],
        stage_strides: Sequence[int],
        stage_activations: Sequence[str],
        max_depth: int,
        min_depth: int,
        head_channels: tuple[int, int],
        expand_ratios: Sequence[float] = (3, 4, 6),
        kernel_sizes: Sequence[int] = (3, 5),
        se_ratio: float = 0.25,
    ) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_chans, stem_channels, 3, stem_stride, 1, bias=False), nn.BatchNorm2d(stem_channels), nn.Hardswish()
        )
        # The fixed depthwise-separable block (timm ``ds_r1_k3_s1_e1``): no activation after the projection.
        self.ds = nn.Sequential(
            nn.Conv2d(stem_channels, stem_channels, 3, 1, 1, groups=stem_channels, bias=False), nn.BatchNorm2d(stem_channels), nn.ReLU(),
            nn.Conv2d(stem_channels, ds_channels, 1, bias=False), nn.BatchNorm2d(ds_channels),
        )
        self.ds_residual = stem_channels == ds_channels
        stages: list[nn.Module] = []
        in_ch = ds_channels
        for s, (out_ch, stride, act) in enumerate(zip(stage_channels, stage_strides, stage_activations)):
            blocks = [
                BinasBlock(
                    in_ch if b == 0 else out_ch, out_ch, stride if b == 0 else 1, prefix=f"stage{s}.block{b}", activation=act,
                    expand_ratios=expand_ratios, kernel_sizes=kernel_sizes, se_ratio=se_ratio,
                )
                for b in range(max_depth)
            ]
            stages.append(DepthChoice(blocks, range(min_depth, max_depth + 1), f"stage{s}.depth"))
            in_ch = out_ch
        self.stages = nn.Sequential(*stages)
        head, features = head_channels
        self.head = nn.Sequential(
            nn.Conv2d(in_ch, head, 1, bias=False), nn.BatchNorm2d(head), nn.Hardswish(),
            nn.AdaptiveAvgPool2d(1), nn.Conv2d(head, features, 1), nn.Hardswish(), nn.Flatten(1),
        )
        self.classifier = nn.Linear(features, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        # timm's EfficientNet/MobileNetV3 initialisation (fan-out normal convs, small linear).
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                bound = 1.0 / math.sqrt(m.weight.shape[0])
                nn.init.uniform_(m.weight, -bound, bound)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        y = self.ds(x)
        if self.ds_residual:
            y = y + x
        return self.classifier(self.head(self.stages(y)))


def _positive_int(name: str, value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"`{name}` must be a positive int, got {value!r}")
    return value


def _int_list(name: str, values: Any, allowed: str, check) -> tuple[int, ...]:
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or not values:
        raise ValueError(f"`{name}` must be a non-empty list of {allowed}, got {values!r}")
    for v in values:
        if not check(v):
            raise ValueError(f"`{name}` must be a non-empty list of {allowed}, got {v!r} in {list(values)!r}")
    return tuple(values)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


@register_space("binas")
def binas_supernet(
    preset: str = "imagenet",
    *,
    num_classes: int | None = None,
    in_chans: int | None = None,
    stem_channels: int | None = None,
    stem_stride: int | None = None,
    ds_channels: int | None = None,
    stage_channels: Sequence[int] | None = None,
    stage_strides: Sequence[int] | None = None,
    stage_activations: Sequence[str] | None = None,
    max_depth: int | None = None,
    min_depth: int | None = None,
    head_channels: Sequence[int] | None = None,
    expand_ratios: Sequence[float] = (3, 4, 6),
    kernel_sizes: Sequence[int] = (3, 5),
    se_ratio: float = 0.25,
) -> Supernet:
    """The BINAS / HardCoRe-NAS supernet (see the module docstring for its decisions).

    Every argument left ``None`` comes from the preset (:data:`BINAS_PRESETS`):

    * ``"imagenet"`` (default): the paper's backbone for 224×224 inputs: stem 3×3 conv, 32
      channels, stride 2, h-swish; fixed depthwise-separable block, 16 channels; 5 stages of
      2-4 blocks with widths 24/40/80/112/192, strides 2/2/2/1/2, activations
      ReLU/ReLU/h-swish/h-swish/h-swish; head 1×1 conv 960, average pool, 1×1 conv 1280, linear
      to 1000 classes. 5 × (12² + 12³ + 12⁴) per-stage choices: about 5.9·10²¹ networks.
    * ``"tiny"``: for 32×32 inputs on a CPU: stem 16 channels, stride 2; fixed block 8 channels;
      3 stages of 2-4 blocks with widths 16/24/32, strides 1/2/2 (16, 8 and 4 pixels at 32×32
      inputs), activations ReLU/h-swish/h-swish; head 96 → 128; 10 classes.

    Args:
        preset: ``"imagenet"`` or ``"tiny"``.
        num_classes: classifier outputs.
        in_chans: input channels.
        stem_channels: width of the 3×3 stem convolution (and of the fixed depthwise block).
        stem_stride: stride of the stem (1 or 2).
        ds_channels: output width of the fixed depthwise-separable block.
        stage_channels: output width of each stage (one entry per stage).
        stage_strides: stride of each stage's first block (1 or 2).
        stage_activations: ``"relu"`` or ``"hswish"`` per stage.
        max_depth: ``D``, the blocks per stage.
        min_depth: the smallest stage depth (depth options ``min_depth..max_depth``; the paper: 2).
        head_channels: ``(conv width before pooling, conv width after pooling)``.
        expand_ratios: candidate expansion ratios (paper: 3, 4, 6).
        kernel_sizes: candidate depthwise kernels, odd (paper: 3, 5).
        se_ratio: SE reduce width over the expanded width, in ``(0, 1]``.

    Returns:
        A :class:`~lightning_nas.Supernet` around a :class:`BinasNet`; ``(B, in_chans, H, W) -> (B, num_classes)``.

    Raises:
        ValueError: for an unknown preset or an argument outside its allowed values.
    """
    if preset not in BINAS_PRESETS:
        raise ValueError(f"`preset` must be one of {sorted(BINAS_PRESETS)}, got {preset!r}")
    given = dict(
        num_classes=num_classes, in_chans=in_chans, stem_channels=stem_channels, stem_stride=stem_stride, ds_channels=ds_channels,
        stage_channels=stage_channels, stage_strides=stage_strides, stage_activations=stage_activations,
        max_depth=max_depth, min_depth=min_depth, head_channels=head_channels,
    )
    cfg = {k: (BINAS_PRESETS[preset][k] if v is None else v) for k, v in given.items()}
    for name in ("num_classes", "in_chans", "stem_channels", "ds_channels", "max_depth", "min_depth"):
        _positive_int(name, cfg[name])
    if cfg["stem_stride"] not in (1, 2) or not _is_int(cfg["stem_stride"]):
        raise ValueError(f"`stem_stride` must be 1 or 2, got {cfg['stem_stride']!r}")
    channels = _int_list("stage_channels", cfg["stage_channels"], "positive ints", lambda v: _is_int(v) and v > 0)
    strides = _int_list("stage_strides", cfg["stage_strides"], "strides 1 or 2", lambda v: _is_int(v) and v in (1, 2))
    acts = _int_list("stage_activations", cfg["stage_activations"], f"activations {sorted(_ACTIVATIONS)}", lambda v: v in _ACTIVATIONS)
    if not len(channels) == len(strides) == len(acts):
        raise ValueError(
            f"`stage_channels`, `stage_strides` and `stage_activations` must have one entry per stage, got lengths "
            f"{len(channels)}, {len(strides)} and {len(acts)}"
        )
    if cfg["min_depth"] > cfg["max_depth"]:
        raise ValueError(f"`min_depth` must be at most `max_depth` ({cfg['max_depth']}), got {cfg['min_depth']}")
    head = _int_list("head_channels", cfg["head_channels"], "two positive ints", lambda v: _is_int(v) and v > 0)
    if len(head) != 2:
        raise ValueError(f"`head_channels` must be two positive ints (before and after pooling), got {list(head)!r}")
    ratios = _int_list(
        "expand_ratios", expand_ratios, "distinct positive numbers",
        lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0,
    )
    kernels = _int_list("kernel_sizes", kernel_sizes, "distinct positive odd ints", lambda v: _is_int(v) and v > 0 and v % 2 == 1)
    for name, values in (("expand_ratios", ratios), ("kernel_sizes", kernels)):
        if len(set(values)) != len(values):
            raise ValueError(f"`{name}` must not have duplicates, got {list(values)!r}")
    if not isinstance(se_ratio, (int, float)) or isinstance(se_ratio, bool) or not 0 < se_ratio <= 1:
        raise ValueError(f"`se_ratio` must be a number in (0, 1], got {se_ratio!r}")
    return Supernet(
        BinasNet(
            num_classes=cfg["num_classes"], in_chans=cfg["in_chans"], stem_channels=cfg["stem_channels"], stem_stride=cfg["stem_stride"],
            ds_channels=cfg["ds_channels"], stage_channels=channels, stage_strides=strides, stage_activations=acts,
            max_depth=cfg["max_depth"], min_depth=cfg["min_depth"], head_channels=(head[0], head[1]),
            expand_ratios=ratios, kernel_sizes=kernels, se_ratio=se_ratio,
        )
    )
