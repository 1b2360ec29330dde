"""Elastic normalisation layers: ``ElasticBatchNorm2d`` and ``ElasticLayerNorm``.

Give a norm the same width ``Choice`` as the layer before it: in per-example mode it then
normalises each row over that row's own channels and zeroes the rest, exactly as the row's own
subnet would. Training-mode batch statistics of a channel are taken over the rows that use it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_nas.nn.choice import Choice, Mutable, largest, value_in
from lightning_nas.nn.elastic_size import (
    cached_active_size, check_fixed, check_size_spec, fit_channels, fit_features, prefix, row_mask, rows_mask,
    rows_scaled_mask,
)

__all__ = ["ElasticBatchNorm2d", "ElasticLayerNorm", "elastic_batch_norms", "lerp_running_stats", "masked_batch_norm"]


def lerp_running_stats(buffers: list[Tensor], batch: list[Tensor], weights: list[Tensor]) -> None:
    """``buffers[i] += weights[i] * (batch[i] - buffers[i])`` in place for all ``i``, in one call.

    Hidden from autograd as ``nn.BatchNorm2d``'s own update of its running statistics is: an
    earlier forward of the same step (e.g. in-place distillation's teacher) may have saved these
    buffers for its backward. Their version counters are kept rather than each buffer taken
    through ``.data`` (an operator call per buffer); under ``torch.compile``, through ``.data``.

    Args:
        buffers: running statistics, ``(C,)`` each (or prefixes of them).
        batch: the batch's statistics, same shapes and dtypes.
        weights: the averaging weights, same shapes (0 where a channel saw no data).
    """
    if torch.compiler.is_compiling():
        torch._foreach_lerp_([b.data for b in buffers], batch, weights)
        return
    with torch.autograd.grad_mode._unsafe_preserve_version_counter(tuple(buffers)):
        torch._foreach_lerp_(buffers, batch, weights)


def _count_table(tables: dict | None, kind: str, n: int, extra: Any, dtype: torch.dtype, device: torch.device) -> Tensor:
    """A lookup table indexed by a channel's row count ``k`` in ``0..n`` (built in float64, once per
    key when ``tables`` is given).

    ``kind="factors"``, ``extra`` the momentum (a float, or ``None`` for a tensor momentum):
    ``(3, n + 1)`` rows ``r = n / max(k, 1)``, the running-average weight (``momentum`` where
    ``k > 0``, else 0; 0/1 for ``None``) and ``1 - r``. ``kind="unbias"``, ``extra`` the pixels
    ``P`` per row: ``(n + 1,)`` of ``M / max(M - 1, 1)`` with ``M = k * P`` (the unbiasing factor of
    a variance over ``M`` elements; 0 for ``k = 0``, whose weight is 0).
    """
    key = (kind, n, extra, dtype, device)
    if tables is not None and key in tables:
        return tables[key]
    k = torch.arange(n + 1, dtype=torch.float64)
    if kind == "factors":
        ratio = n / k.clamp_min(1)
        step = (k > 0).to(torch.float64) * (1.0 if extra is None else extra)
        table = torch.stack([ratio, step, 1 - ratio])
    else:
        count = k * extra
        table = count / (count - 1).clamp_min(1)
    table = table.to(device=device, dtype=dtype)
    if tables is not None:
        tables[key] = table
    return table


class _MaskedBatchNormFunction(torch.autograd.Function):
    """Training-mode BatchNorm over masked rows, built from the native kernels.

    With ``r = N / count`` per channel (``N`` elements in all, ``count`` behind the channel's
    statistics), the native kernels on the whole batch give the masked ones exactly: the batch
    statistics of ``x * mask`` scale by ``r`` into the masked ones, and the native backward fed
    ``dy * mask`` gives the weight and bias gradients as they are, and an input gradient whose mean
    terms, times ``r``, are the masked ones, off by ``(1 - r) * scale * dy`` on the active entries.
    Forward and backward are then a handful of calls each (one native kernel, a reduction, a few
    ``(C,)`` or ``(n, C)`` products), where the same maths spelt out in elementwise operators takes
    several dozen, each a kernel launch on a GPU.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, mask4, scaled_mask4, keep, mean, var, invstd, eps):
        # x: (n, C, H, W); mask4: (n, C, 1, 1) 0/1 in x's dtype, scaled_mask4 the same times r;
        # keep = 1 - r, mean, var, invstd: (C,) in the statistics' precision, the batch statistics
        # over the rows that use each channel.
        y = torch.ops.aten._native_batch_norm_legit_no_training(x, weight, bias, mean, var, 0.0, eps)[0]
        ctx.save_for_backward(x, weight, mean, invstd, mask4, scaled_mask4, keep)
        ctx.eps, ctx.needs = eps, (weight is not None, bias is not None)
        return y * mask4

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy):
        x, weight, mean, invstd, mask4, scaled_mask4, keep = ctx.saved_tensors
        dy = dy * mask4
        dx, d_weight, d_bias = torch.ops.aten.native_batch_norm_backward(
            dy, x, weight, None, None, mean, invstd, True, ctx.eps, [True, *ctx.needs]
        )
        scale = invstd if weight is None else weight * invstd
        # r times the native dx holds the masked means; its r * scale * dy should be scale * dy.
        dx = dx.mul_(scaled_mask4).addcmul_(dy, (scale * keep).view(1, -1, 1, 1).to(dy.dtype))  # dx: the kernel's own, fresh
        return dx, d_weight, d_bias, None, None, None, None, None, None, None


def masked_batch_norm(
    x: Tensor,
    mask: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    running_mean: Tensor | None = None,
    running_var: Tensor | None = None,
    *,
    training: bool = True,
    momentum: float | Tensor = 0.1,
    num_batches_tracked: Tensor | None = None,
    eps: float = 1e-5,
    cache: Callable[[tuple, Callable[[], Any]], Any] | None = None,
    tables: dict | None = None,
) -> Tensor:
    """BatchNorm of ``x`` where row ``i`` uses only the channels ``c`` with ``mask[i, c] == 1``.

    What each row's own subnet computes when rows use different channel prefixes (per-example
    widths) or some rows have stopped (per-example depths): in training, channel ``c``'s batch
    statistics are taken over the rows that use it, only channels some row uses update their
    running statistics, and the output is zero where ``mask`` is 0, whatever ``x`` holds there (so
    ``x`` need not be masked). No host reads, and a fixed number of operator calls.

    Args:
        x: ``(n, C, H, W)``.
        mask: ``(n, C)`` of 0/1 in ``x``'s dtype.
        weight: ``(C,)`` scale, or ``None``.
        bias: ``(C,)`` shift, or ``None``.
        running_mean: ``(C,)`` running statistics (updated in place in training), or ``None``.
        running_var: ``(C,)``, as ``running_mean``.
        training: use batch statistics (else the running ones, which must then be given).
        momentum: running-average factor (``nn.BatchNorm2d``'s momentum, or ``1 / batches`` as a
            tensor for a cumulative average).
        num_batches_tracked: counted up by one in training when some row uses some channel.
        eps: added to the variance.
        cache: ``cache(key, make)`` to reuse what depends on ``mask`` only (its counts) across calls
            with the same mask tensor, e.g. :meth:`~lightning_nas.nn.ArchContext.cached`.
        tables: a dict kept across calls (e.g. in the calling module's ``__dict__``) where the
            per-row-count lookup tables (``(3, n + 1)`` factors per batch size and momentum,
            ``(n + 1,)`` unbiasing factors per batch size and image size) are built once; ``None``
            builds them at each call.

    Statistics are taken in at least float32 (as ``F.batch_norm`` keeps them for half-precision
    inputs), outside autocast; the output has ``x``'s dtype.

    Returns:
        ``(n, C, H, W)``.
    """
    if not training and (running_mean is None or running_var is None):
        raise ValueError("masked_batch_norm: `running_mean` and `running_var` are required when `training` is False")
    with torch.autocast(x.device.type, enabled=False):
        if not training:
            return F.batch_norm(x, running_mean, running_var, weight, bias, False, 0.0, eps) * mask.view(*mask.shape, 1, 1)
        stat = x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32
        pixels = x.shape[2] * x.shape[3]
        constant = not isinstance(momentum, Tensor)

        def counts() -> tuple[Tensor, ...]:
            # What depends on the mask only: once per activation for all the norms of one width.
            # Every per-channel factor is a function of the channel's row count k in 0..n, so one
            # lookup in a (3, n + 1) table built once gives them all (a few calls, not a dozen).
            rows = torch.count_nonzero(mask, 0)  # (C,) rows behind each channel's statistics
            factors = _count_table(tables, "factors", mask.shape[0], momentum if constant else None, stat, x.device)
            ratio, step, keep = factors.index_select(1, rows).unbind(0)
            # ``mask`` itself is kept with them: its id in the key cannot be reused while the entry lives.
            scaled_mask4 = (mask * ratio).to(x.dtype).view(*mask.shape, 1, 1)
            mask4 = mask.view(*mask.shape, 1, 1)
            return mask4, ratio, scaled_mask4, keep, rows, step, rows.any(), mask

        def unbiasing() -> Tensor:  # ``M / (M - 1)``, ``M`` the elements behind each statistic
            return _count_table(tables, "unbias", mask.shape[0], pixels, stat, x.device).index_select(0, rows)

        key = ("bn_counts", id(mask), stat, momentum if constant else None)
        mask4, ratio, scaled_mask4, keep, rows, step, any_seen, _ = counts() if cache is None else cache(key, counts)

        with torch.no_grad():
            wide = x if x.dtype == stat else x.to(stat)  # half inputs' squares overflow past 256
            # The statistics of x * mask over every row, scaled by N / count, are those over the
            # rows that use each channel.
            # With r = N / count: mean = r * mean0, var = r * var0 + r * (1 - r) * mean0 ** 2.
            var, mean = torch.var_mean(wide * mask4, (0, 2, 3), correction=0)
            var = torch.addcmul(var, mean * keep, mean).mul_(ratio).clamp_min_(0)
            mean = mean.mul_(ratio)
            invstd = (var + eps).rsqrt_()
            if running_mean is not None:
                weights = step if constant else step * momentum
                dtype = running_mean.dtype
                unbias = unbiasing() if cache is None else cache((*key, pixels), unbiasing)
                lerp_running_stats([running_mean, running_var], [mean.to(dtype), (var * unbias).to(dtype)], [weights.to(dtype)] * 2)
                if num_batches_tracked is not None:
                    num_batches_tracked.add_(any_seen)
        return _MaskedBatchNormFunction.apply(x, weight, bias, mask4, scaled_mask4, keep, mean, var, invstd, eps)


class ElasticBatchNorm2d(Mutable):
    """``nn.BatchNorm2d`` over a channel prefix of the largest width.

    Args:
        num_features: int or ``Choice`` (the width ``Choice`` of the layer before it).
        eps: as in ``nn.BatchNorm2d``.
        momentum: as in ``nn.BatchNorm2d`` (``momentum=None`` gives a cumulative average).
        affine: as in ``nn.BatchNorm2d``.
        track_running_stats: as in ``nn.BatchNorm2d``.

    Shapes: ``(B, C, H, W) -> (B, C, H, W)``.
    """

    masks_stopped_rows = True

    def __init__(
        self,
        num_features: int | Choice,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
    ) -> None:
        super().__init__()
        check_size_spec("num_features", num_features)
        layer = type(self).__name__
        check_fixed(layer, "eps", eps, "eps", "num_features")
        check_fixed(layer, "momentum", momentum, "momentum", "num_features")
        check_fixed(layer, "affine", affine, "bool", "num_features")
        check_fixed(layer, "track_running_stats", track_running_stats, "bool", "num_features")
        self.num_features = num_features
        self.eps = eps
        self.momentum = momentum
        self.affine = affine
        self.track_running_stats = track_running_stats
        n = largest(num_features)
        self.weight = nn.Parameter(torch.ones(n)) if affine else None
        self.bias = nn.Parameter(torch.zeros(n)) if affine else None
        if track_running_stats:
            self.register_buffer("running_mean", torch.zeros(n))
            self.register_buffer("running_var", torch.ones(n))
            self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))
        else:
            self.running_mean = self.running_var = self.num_batches_tracked = None

    def _average_factor(self) -> float:
        if not (self.training and self.track_running_stats):
            return 0.0
        self.num_batches_tracked.add_(1)
        return 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4:
            raise ValueError(f"ElasticBatchNorm2d expects input (B, C, H, W), got shape {tuple(x.shape)}")
        # The per-example path masks in its statistics and output: the input needs no mask.
        x = fit_channels(x, self.num_features, 1, "ElasticBatchNorm2d", mask=False)
        c = x.shape[1]
        use_batch_stats = self.training or not self.track_running_stats
        weight, bias = prefix(self.weight, c), prefix(self.bias, c)
        running_mean, running_var = prefix(self.running_mean, c), prefix(self.running_var, c)
        context = self._per_example_context()
        mask = None if context is None else row_mask(self.num_features, c, x.dtype, x.device, context)
        if mask is not None and use_batch_stats:
            return self._per_example(x, mask, weight, bias, running_mean, running_var, context)
        y = F.batch_norm(x, running_mean, running_var, weight, bias, use_batch_stats, self._average_factor(), self.eps)
        return y if mask is None else y * row_mask(self.num_features, c, x.dtype, x.device, context, spatial=2)

    def _per_example_context(self):
        """The supernet's context when one architecture per example is active, else ``None``."""
        if isinstance(self.num_features, Choice):
            context = self.num_features._context
        else:  # a fixed width: the context of any choice of the supernet (set by Supernet)
            context = self.__dict__.get("_arch_context")
        return context if context is not None and context.indices is not None else None

    def _per_example(self, x, mask, weight, bias, running_mean, running_var, context) -> Tensor:
        update = self.training and self.track_running_stats
        if update and self.momentum is None:
            momentum = 1.0 / (self.num_batches_tracked + 1)  # a tensor: no host read
        else:
            momentum = self.momentum
        return masked_batch_norm(
            x, mask, weight, bias, running_mean if update else None, running_var if update else None,
            training=True, momentum=momentum, num_batches_tracked=self.num_batches_tracked if update else None,
            eps=self.eps, cache=context.cached, tables=self.__dict__.setdefault("_count_tables", {}),
        )

    def freeze(self, arch: dict[str, Any], export_child) -> nn.BatchNorm2d:
        c = value_in(self.num_features, arch)
        bn = nn.BatchNorm2d(c, self.eps, self.momentum, self.affine, self.track_running_stats)
        reference = self.weight if self.weight is not None else self.running_mean
        if reference is not None:
            bn = bn.to(device=reference.device, dtype=reference.dtype)
        with torch.no_grad():
            if self.affine:
                bn.weight.copy_(self.weight[:c])
                bn.bias.copy_(self.bias[:c])
            if self.track_running_stats:
                bn.running_mean.copy_(self.running_mean[:c])
                bn.running_var.copy_(self.running_var[:c])
                bn.num_batches_tracked.copy_(self.num_batches_tracked)
        return bn

    @classmethod
    def from_batch_norm(cls, bn: nn.BatchNorm2d, *, num_features: int | Choice | None = None) -> "ElasticBatchNorm2d":
        """An elastic copy of ``bn`` sharing its parameters and buffers (the largest width is ``bn``'s)."""
        if type(bn) is not nn.BatchNorm2d:
            raise ValueError(f"only plain nn.BatchNorm2d can be made elastic (a subclass may add behaviour), got {type(bn).__name__}")
        num_features = bn.num_features if num_features is None else num_features
        if largest(num_features) != bn.num_features:
            raise ValueError(f"the largest num_features candidate must be {bn.num_features}, got {largest(num_features)}")
        elastic = cls(num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats)
        for name in ("weight", "bias"):
            if getattr(bn, name) is not None:
                setattr(elastic, name, getattr(bn, name))
        for name in ("running_mean", "running_var", "num_batches_tracked"):
            if getattr(bn, name) is not None:
                elastic.register_buffer(name, getattr(bn, name))
        return elastic

    def extra_repr(self) -> str:
        return f"num_features={self.num_features!r}, eps={self.eps}, momentum={self.momentum}"


def elastic_batch_norms(module: nn.Module) -> nn.Module:
    """Every plain ``nn.BatchNorm2d`` inside ``module`` replaced, in place, by a fixed-width
    :class:`ElasticBatchNorm2d` sharing its parameters, buffers and training mode; returns
    ``module`` (converted itself when it is such a norm).

    The elastic norm computes what the plain one does and exports as an ``nn.BatchNorm2d`` again,
    but in per-example mode with static shapes it leaves the rows marked as stopped
    (:attr:`~lightning_nas.nn.ArchContext.alive`) out of its batch statistics. An
    :class:`~lightning_nas.nn.OpChoice` candidate or :class:`~lightning_nas.nn.DepthChoice` block
    with a norm can then run on every row instead of grouping the rows that use it (no host reads,
    one compiled graph); with a plain norm it must group them.

    Raises:
        ValueError: ``module`` is not an ``nn.Module``.
    """
    if not isinstance(module, nn.Module):
        raise ValueError(f"`module` must be an nn.Module, got {type(module).__name__}")
    if type(module) is nn.BatchNorm2d:
        elastic = ElasticBatchNorm2d.from_batch_norm(module)
        elastic.train(module.training)
        return elastic
    for name, child in list(module.named_children()):
        new = elastic_batch_norms(child)
        if new is not child:
            setattr(module, name, new)
    return module


class ElasticLayerNorm(Mutable):
    """``nn.LayerNorm`` over the last dimension with an elastic width (a prefix of the largest).

    Args:
        normalized_shape: int or ``Choice`` (the width ``Choice`` of the layer before it).
        eps: added to the variance.
        elementwise_affine: learn a per-feature scale and shift.

    Shapes: ``(B, ..., F) -> (B, ..., F)``.
    """

    masks_stopped_rows = True

    def __init__(self, normalized_shape: int | Choice, eps: float = 1e-5, elementwise_affine: bool = True) -> None:
        super().__init__()
        check_size_spec("normalized_shape", normalized_shape)
        check_fixed("ElasticLayerNorm", "eps", eps, "eps", "normalized_shape")
        check_fixed("ElasticLayerNorm", "elementwise_affine", elementwise_affine, "bool", "normalized_shape")
        self.normalized_shape = normalized_shape
        self.eps = eps
        n = largest(normalized_shape)
        self.weight = nn.Parameter(torch.ones(n)) if elementwise_affine else None
        self.bias = nn.Parameter(torch.zeros(n)) if elementwise_affine else None

    def forward(self, x: Tensor) -> Tensor:
        spec = self.normalized_shape
        _, sizes = cached_active_size(spec, x.device)
        if sizes is None:
            x = fit_channels(x, spec, -1, "ElasticLayerNorm")
            c = x.shape[-1]
            return F.layer_norm(x, (c,), prefix(self.weight, c), prefix(self.bias, c), self.eps)
        # Per-example widths: row i normalised over its own first e_i of the C features, through one
        # native layer_norm (one fused kernel each way instead of a dozen masked calls): with mu_i
        # the row's mean over its prefix, z = (x - mu_i) * mask * sqrt(C / e_i) is zero past e_i and
        # has mean 0 and variance var_i (the prefix's) over all C features, so layer_norm(z) is the
        # row's normalised prefix times sqrt(C / e_i), undone by the output scale sqrt(e_i / C).
        # The mean is the sum of x * mask / e_i, so entries past a row's width (an unmasked
        # residual sum) never count: the input is not masked first. (A batched matrix product
        # would be one call fewer but costs several element-wise calls' time on a CPU.)
        x = fit_features(self, x, spec, "ElasticLayerNorm", mask=False)
        c = x.shape[-1]
        shape = (-1, *([1] * (x.dim() - 2)), c)
        average = rows_scaled_mask(self, spec, c, x.dtype, x.device, shape, "mean", lambda e: 1.0 / e)
        stretch = rows_scaled_mask(self, spec, c, x.dtype, x.device, shape, "stretch", lambda e: (c / e) ** 0.5)
        shrink = rows_scaled_mask(self, spec, c, x.dtype, x.device, shape, "shrink", lambda e: (e / c) ** 0.5)
        mean = (x * average).sum(-1, keepdim=True)  # (B, ..., 1)
        y = F.layer_norm((x - mean) * stretch, (c,), prefix(self.weight, c), None, self.eps)
        if self.weight is None:
            return y * shrink
        mask = rows_mask(self, spec, c, x.dtype, x.device, shape)
        return torch.addcmul(prefix(self.bias, c) * mask, y, shrink)

    def freeze(self, arch: dict[str, Any], export_child) -> nn.LayerNorm:
        c = value_in(self.normalized_shape, arch)
        ln = nn.LayerNorm(c, self.eps, elementwise_affine=self.weight is not None)
        if self.weight is not None:
            ln = ln.to(device=self.weight.device, dtype=self.weight.dtype)
            with torch.no_grad():
                ln.weight.copy_(self.weight[:c])
                ln.bias.copy_(self.bias[:c])
        return ln

    def extra_repr(self) -> str:
        return f"normalized_shape={self.normalized_shape!r}, eps={self.eps}"
