"""Elastic normalisation layers: ``ElasticBatchNorm2d`` and ``ElasticLayerNorm``.

Give a norm the same width ``Choice`` as the layer before it: in per-example mode it then
normalises each row over that row's own channels and zeroes the rest, exactly as the row's own
subnet would. Training-mode batch statistics of a channel are taken over the rows that use it.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_nas.nn.choice import Choice, Mutable, largest, value_in
from lightning_nas.nn.elastic_size import active_size, check_fixed, check_size_spec, fit_channels, prefix, size_mask

__all__ = ["ElasticBatchNorm2d", "ElasticLayerNorm"]


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
        x = fit_channels(x, self.num_features, 1, "ElasticBatchNorm2d")
        c = x.shape[1]
        _, sizes = active_size(self.num_features, x.device)
        factor = self._average_factor()
        use_batch_stats = self.training or not self.track_running_stats
        weight, bias = prefix(self.weight, c), prefix(self.bias, c)
        running_mean, running_var = prefix(self.running_mean, c), prefix(self.running_var, c)
        if sizes is None or not use_batch_stats:
            y = F.batch_norm(x, running_mean, running_var, weight, bias, use_batch_stats, factor, self.eps)
            return y if sizes is None else y * size_mask(sizes, c, y.dtype)[:, :, None, None]
        return self._masked_batch_norm(x, size_mask(sizes, c, x.dtype), weight, bias, running_mean, running_var, factor)

    def _masked_batch_norm(self, x, mask, weight, bias, running_mean, running_var, factor) -> Tensor:
        # Each channel's statistics over the rows that use it: what those rows' subnets would see.
        # ``x`` is already zero past each row's width (fit_channels), so plain sums are masked sums;
        # the sum-of-squares form needs three passes over ``x`` instead of seven.
        # Statistics in at least float32, as F.batch_norm keeps them for half-precision inputs (mixed
        # precision): a float16 element count overflows past 65,504.
        stat = torch.promote_types(x.dtype, torch.float32)
        xs = x if x.dtype == stat else x.to(stat)
        count = (mask.to(stat).sum(0) * x.shape[2] * x.shape[3]).clamp_min(1)  # (C,)
        mean = xs.sum((0, 2, 3)) / count
        var = ((xs * xs).sum((0, 2, 3)) / count - mean * mean).clamp_min(0)
        scale = torch.rsqrt(var + self.eps)
        if weight is not None:
            scale = scale * weight
        shift = -mean * scale if bias is None else bias - mean * scale
        y = torch.addcmul((shift * mask)[:, :, None, None], xs, scale[None, :, None, None]).to(x.dtype)
        if running_mean is not None and factor:
            # Through ``.data``, as nn.BatchNorm2d's own update: an earlier full-width forward of this
            # step (e.g. in-place distillation's teacher) saved these buffers for its backward.
            with torch.no_grad():
                used = mask.sum(0) > 0
                unbiased = (var * count / (count - 1).clamp_min(1)).to(running_var.dtype)
                running_mean.data.copy_(torch.where(used, running_mean.lerp(mean.to(running_mean.dtype), factor), running_mean))
                running_var.data.copy_(torch.where(used, running_var.lerp(unbiased, factor), running_var))
        return y

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


class ElasticLayerNorm(Mutable):
    """``nn.LayerNorm`` over the last dimension with an elastic width (a prefix of the largest).

    Args:
        normalized_shape: int or ``Choice`` (the width ``Choice`` of the layer before it).
        eps: added to the variance.
        elementwise_affine: learn a per-feature scale and shift.

    Shapes: ``(B, ..., F) -> (B, ..., F)``.
    """

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
        x = fit_channels(x, self.normalized_shape, -1, "ElasticLayerNorm")
        c = x.shape[-1]
        _, sizes = active_size(self.normalized_shape, x.device)
        weight, bias = prefix(self.weight, c), prefix(self.bias, c)
        if sizes is None:
            return F.layer_norm(x, (c,), weight, bias, self.eps)
        mask = size_mask(sizes, c, x.dtype).view(x.shape[0], *([1] * (x.dim() - 2)), c)
        count = mask.sum(-1, keepdim=True)
        mean = (x * mask).sum(-1, keepdim=True) / count
        centred = (x - mean) * mask
        y = centred * torch.rsqrt(centred.pow(2).sum(-1, keepdim=True) / count + self.eps)
        if weight is not None:
            y = (y * weight + bias) * mask
        return y

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
