"""``ElasticLinear``: a linear layer whose widths are channel prefixes of one shared weight."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_nas.nn.choice import Choice, Mutable, largest, value_in
from lightning_nas.nn.elastic_size import cached_active_size, check_fixed, check_size_spec, fit_features, prefix, rows_mask

__all__ = ["ElasticLinear"]


class ElasticLinear(Mutable):
    """``nn.Linear`` with elastic input and output widths (prefixes of the largest weight).

    Args:
        in_features: int, or the ``Choice`` that sets the width of the layer feeding this one.
        out_features: int or ``Choice`` of ints.
        bias: learn an additive bias.

    Shapes: input ``(B, ..., F_in)``; output ``(B, ..., F_out)``.
    """

    def __init__(self, in_features: int | Choice, out_features: int | Choice, bias: bool = True) -> None:
        super().__init__()
        check_size_spec("in_features", in_features)
        check_size_spec("out_features", out_features)
        check_fixed("ElasticLinear", "bias", bias, "bool", "in_features and out_features")
        self.in_features = in_features
        self.out_features = out_features
        self.weight = nn.Parameter(torch.empty(largest(out_features), largest(in_features)))
        self.bias = nn.Parameter(torch.empty(largest(out_features))) if bias else None
        self.reset_parameters()

    masks_stopped_rows = True
    # Set by a container whose producer zeroes each row's input features past the row's width
    # (an ElasticMLP whose activation maps 0 to 0, after its first layer): the input mask is skipped.
    input_masked = False
    # Cleared by a container whose consumer ignores each row's output features past the row's
    # width (a pre-norm transformer stream, read by ElasticLayerNorms only): the output mask is skipped,
    # so those entries hold whatever the full-width computation gives.
    mask_output = True

    def reset_parameters(self) -> None:
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            bound = 1 / math.sqrt(self.weight.shape[1])
            nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: Tensor) -> Tensor:
        x = fit_features(self, x, self.in_features, "ElasticLinear", mask=not self.input_masked)
        c_out, out_sizes = cached_active_size(self.out_features, x.device)
        y = F.linear(x, prefix(self.weight, c_out, x.shape[-1]), prefix(self.bias, c_out))
        if out_sizes is not None and self.mask_output:
            y = y * rows_mask(self, self.out_features, c_out, y.dtype, y.device, (-1, *([1] * (y.dim() - 2)), c_out))
        return y

    def freeze(self, arch: dict[str, Any], export_child) -> nn.Linear:
        f_in, f_out = value_in(self.in_features, arch), value_in(self.out_features, arch)
        linear = nn.Linear(f_in, f_out, bias=self.bias is not None).to(device=self.weight.device, dtype=self.weight.dtype)
        with torch.no_grad():
            linear.weight.copy_(self.weight[:f_out, :f_in])
            if self.bias is not None:
                linear.bias.copy_(self.bias[:f_out])
        return linear

    @classmethod
    def from_linear(cls, linear: nn.Linear, *, out_features: int | Choice | None = None) -> "ElasticLinear":
        """An elastic copy of ``linear`` whose largest candidate is ``linear`` itself (weights shared)."""
        out_features = linear.out_features if out_features is None else out_features
        if largest(out_features) != linear.out_features:
            raise ValueError(f"the largest out_features candidate must be {linear.out_features}, got {largest(out_features)}")
        elastic = cls(linear.in_features, out_features, bias=linear.bias is not None)
        elastic.weight = linear.weight
        if linear.bias is not None:
            elastic.bias = linear.bias
        return elastic

    def extra_repr(self) -> str:
        return f"in_features={self.in_features!r}, out_features={self.out_features!r}, bias={self.bias is not None}"
