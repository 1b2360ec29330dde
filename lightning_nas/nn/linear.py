"""``ElasticLinear``: a linear layer whose widths are channel prefixes of one shared weight."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_nas.nn.choice import Choice, Mutable, largest, value_in
from lightning_nas.nn.elastic_size import active_size, check_fixed, check_size_spec, fit_channels, prefix

__all__ = ["ElasticLinear"]


# -- per-example masks with few operator calls (shared by the elastic transformer modules) ------------
def cached_active_size(spec: int | Choice, device: torch.device) -> tuple[int, Tensor | None]:
    """:func:`~lightning_nas.nn.elastic_size.active_size`, computed once per activation and set of
    visible rows: a width read by many layers (the residual stream's) costs its per-row sizes once."""
    if not isinstance(spec, Choice) or spec.example_indices() is None:
        return active_size(spec, device)
    return spec._context.cached(("active_size", spec.label, device), lambda: active_size(spec, device))


def rows_mask(owner: nn.Module, spec: Choice, size: int, dtype: torch.dtype, device: torch.device, shape: tuple[int, ...],
              scale: bool = False) -> Tensor:
    """The visible rows' 0/1 masks of the first ``size`` entries of ``spec`` (row ``i`` keeps its own
    value's prefix), viewed as ``shape`` (``-1`` for the rows, ``size`` where the entries go,
    ``1`` elsewhere); ``scale``: each row's mask times ``1 / sqrt(its value)``.

    One ``index_select`` of a ``(candidates, size)`` table (built once per module, size, dtype and
    device) and one ``view``, cached per activation and set of visible rows; the plain
    ``size_mask`` costs an ``index_select``, ``arange``, a comparison, a cast and a view per layer.
    Only for per-example mode (``spec.example_indices()`` not ``None``).
    """
    def make() -> Tensor:
        tables = owner.__dict__.setdefault("_mask_tables", {})
        key = (spec.label, size, dtype, device, scale)
        if key not in tables:
            values = torch.tensor(spec.values, device=device)
            table = (torch.arange(size, device=device) < values[:, None]).to(dtype)
            tables[key] = table * values.to(dtype).rsqrt()[:, None] if scale else table
        mask = tables[key].index_select(0, spec.example_indices().to(device))
        return mask.view(shape)

    return spec._context.cached(("rows_mask", spec.label, size, dtype, device, shape, scale), make)


def fit_features(owner: nn.Module, x: Tensor, spec: int | Choice, layer: str, *, mask: bool = True) -> Tensor:
    """:func:`~lightning_nas.nn.elastic_size.fit_channels` on the last dimension, with the mask of
    :func:`rows_mask` (the common per-example case: the input at the active width). ``mask=False``
    when the producer already zeroed each row's features past its width (only narrows)."""
    size, per_example = cached_active_size(spec, x.device)
    if per_example is None or x.shape[-1] != size:
        return fit_channels(x, spec, -1, layer, mask=mask)  # scalar mode, or a narrowing (and its checks)
    if not mask:
        return x
    return x * rows_mask(owner, spec, size, x.dtype, x.device, (-1, *([1] * (x.dim() - 2)), size))


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

    def reset_parameters(self) -> None:
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            bound = 1 / math.sqrt(self.weight.shape[1])
            nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: Tensor) -> Tensor:
        x = fit_features(self, x, self.in_features, "ElasticLinear", mask=not self.input_masked)
        c_out, out_sizes = cached_active_size(self.out_features, x.device)
        y = F.linear(x, prefix(self.weight, c_out, x.shape[-1]), prefix(self.bias, c_out))
        if out_sizes is not None:
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
