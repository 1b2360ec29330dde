"""``ElasticConv2d``: channel prefixes and centre-cropped kernels of one shared weight."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_nas.nn.choice import Choice, Mutable, largest, value_in
from lightning_nas.nn.elastic_size import active_size, check_fixed, check_size_spec, fit_channels, prefix, size_mask, width_mask
from lightning_nas.nn.routing import route_examples, select_rows

__all__ = ["ElasticConv2d", "crop_kernel"]


def crop_kernel(weight: Tensor, kernel_size: int) -> Tensor:
    """Centre ``kernel_size × kernel_size`` crop of a ``(out, in, K, K)`` weight."""
    full = weight.shape[-1]
    if kernel_size == full:
        return weight
    start = (full - kernel_size) // 2
    return weight[:, :, start : start + kernel_size, start : start + kernel_size]


class ElasticConv2d(Mutable):
    """A 2-D convolution whose widths and kernel size are decisions (Once-for-All weight sharing).

    The weight is allocated at the largest widths and kernel; a smaller width uses the channel
    prefix and a smaller kernel the centre crop. Padding keeps the spatial size as a "same"
    convolution would at stride 1 (``dilation * (k - 1) // 2``) unless a fixed ``padding`` is
    given for a fixed kernel. In per-example mode with static shapes (the default) a kernel decision
    costs one convolution at the largest kernel whose per-row weights hold each row's centre crop
    (zero outside it: exactly the smaller convolution, as "same" padding centres every kernel on
    the same pixels), with each row's width masks folded into the weights where the weights are
    per row anyway; otherwise rows are grouped by kernel size and computed at the largest width
    of the group, with each row's extra channels zeroed.

    Args:
        in_channels: int, or the ``Choice`` that sets the width of the layer feeding this one.
        out_channels: int or ``Choice`` of ints.
        kernel_size: odd int or ``Choice`` of odd ints.
        stride: as in ``nn.Conv2d``.
        padding: ``None`` (automatic, see above) or an int for a fixed kernel.
        dilation: as in ``nn.Conv2d``.
        depthwise: one filter per channel (``groups = channels``); ``out_channels`` must then be
            ``in_channels`` (the same int or ``Choice``).
        bias: learn an additive bias.
        input_zeroed: the input is already zero on each row's channels past its width (e.g. it
            comes from an ``ElasticBatchNorm2d`` of the same width, through an activation that
            keeps 0 at 0): with static shapes the input is then not masked again.
        output_masked: the layer fed by this one masks each row's channels past its width itself
            (an ``ElasticBatchNorm2d`` of the same width, which masks its statistics and its
            output): with static shapes the output is then left unmasked (for a depthwise
            convolution, its filters: a channel's output depends on that channel's input only).
            Either flag saves an elementwise call forward and one backward per layer; the
            grouped-rows path masks as before.

    Shapes: input ``(B, C_in, H, W)`` with ``C_in`` the active input width; output ``(B, C_out, H', W')``.
    """

    def __init__(
        self,
        in_channels: int | Choice,
        out_channels: int | Choice,
        kernel_size: int | Choice,
        stride: int | tuple[int, int] = 1,
        *,
        padding: int | None = None,
        dilation: int = 1,
        depthwise: bool = False,
        bias: bool = True,
        input_zeroed: bool = False,
        output_masked: bool = False,
    ) -> None:
        super().__init__()
        check_size_spec("in_channels", in_channels)
        check_size_spec("out_channels", out_channels)
        check_size_spec("kernel_size", kernel_size, odd=padding is None)
        choosable = "in_channels, out_channels and kernel_size"
        check_fixed("ElasticConv2d", "stride", stride, "pair>=1", choosable)
        if padding is not None:
            check_fixed("ElasticConv2d", "padding", padding, "int>=0", choosable)
        check_fixed("ElasticConv2d", "dilation", dilation, "int>=1", choosable)
        check_fixed("ElasticConv2d", "depthwise", depthwise, "bool", choosable)
        check_fixed("ElasticConv2d", "bias", bias, "bool", choosable)
        check_fixed("ElasticConv2d", "input_zeroed", input_zeroed, "bool", choosable)
        check_fixed("ElasticConv2d", "output_masked", output_masked, "bool", choosable)
        if padding is not None and isinstance(kernel_size, Choice):
            raise ValueError("`padding` can only be fixed for a fixed kernel_size; use padding=None with a kernel Choice")
        if depthwise and out_channels is not in_channels and out_channels != in_channels:
            raise ValueError(f"a depthwise ElasticConv2d needs out_channels == in_channels, got {out_channels!r} and {in_channels!r}")
        self.in_channels = in_channels
        self.out_channels = in_channels if depthwise else out_channels
        self.kernel_size = kernel_size
        self.stride = stride
        self.padding = padding
        self.dilation = dilation
        self.depthwise = depthwise
        self.input_zeroed = input_zeroed
        self.output_masked = output_masked
        max_out, max_k = largest(self.out_channels), largest(kernel_size)
        self.weight = nn.Parameter(torch.empty(max_out, 1 if depthwise else largest(in_channels), max_k, max_k))
        self.bias = nn.Parameter(torch.empty(max_out)) if bias else None
        self.reset_parameters()

    masks_stopped_rows = True

    def reset_parameters(self) -> None:
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            fan_in = self.weight.shape[1] * self.weight.shape[2] * self.weight.shape[3]
            bound = 1 / math.sqrt(fan_in)
            nn.init.uniform_(self.bias, -bound, bound)

    def _padding(self, kernel_size: int) -> int:
        return self.padding if self.padding is not None else self.dilation * (kernel_size - 1) // 2

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4:
            raise ValueError(f"ElasticConv2d expects input (B, C, H, W), got shape {tuple(x.shape)}")
        if self._static_per_example():
            return self._conv_static(x)
        if isinstance(self.kernel_size, Choice):
            indices = self.kernel_size.example_indices()
            if indices is not None and self.kernel_size.uniform_index() is None:
                values = self.kernel_size.values
                return route_examples(
                    self.kernel_size._context, indices, len(values), lambda i, rows: self._conv(rows, values[i]), (x,)
                )
        return self._conv(x, value_in(self.kernel_size, None))

    def _conv(self, x: Tensor, kernel_size: int) -> Tensor:
        x = fit_channels(x, self.in_channels, 1, "ElasticConv2d")
        c_in = x.shape[1]
        c_out, out_sizes = active_size(self.out_channels, x.device)
        groups = c_in if self.depthwise else 1
        weight = prefix(self.weight, c_out) if self.depthwise else prefix(self.weight, c_out, c_in)
        bias = prefix(self.bias, c_out)
        y = F.conv2d(x, crop_kernel(weight, kernel_size), bias, self.stride, self._padding(kernel_size), self.dilation, groups)
        # A bias-free depthwise filter keeps the input's zeroed channels at zero: no mask needed.
        if out_sizes is not None and not (self.depthwise and bias is None):
            y = y * size_mask(out_sizes, c_out, y.dtype)[:, :, None, None]
        return y

    def _static_per_example(self) -> bool:
        return any(isinstance(spec, Choice) and spec.uses_static_shapes() for spec in (self.kernel_size, self.in_channels, self.out_channels))

    def _kernel_masks(self, device: torch.device, dtype: torch.dtype) -> Tensor:
        """``(n_kernels, 1, 1, K, K)``: 1 inside candidate ``i``'s centre crop of the largest kernel
        ``K``, cached; shaped so that the rows' masks (one ``index_select``) broadcast against the
        ``(C_out, C_in / groups, K, K)`` weight into per-row weights without views."""
        cache = self.__dict__.setdefault("_kernel_mask_cache", {})
        key = (device, dtype)
        if key not in cache:
            full = self.weight.shape[-1]
            masks = torch.zeros(len(self.kernel_size.values), full, full, dtype=dtype)
            for i, k in enumerate(self.kernel_size.values):
                start = (full - k) // 2
                masks[i, start : start + k, start : start + k] = 1
            cache[key] = masks.view(len(masks), 1, 1, full, full).to(device)
        return cache[key]

    def _conv_static(self, x: Tensor) -> Tensor:
        """Per-example mode with static shapes: every row at the largest widths (and kernel, when
        the kernel is a decision), rows told apart by masks; no host reads, no data-dependent shapes."""
        x = fit_channels(x, self.in_channels, 1, "ElasticConv2d", mask=False)
        n, c_in = x.shape[:2]
        c_out = c_in if self.depthwise else active_size(self.out_channels, x.device)[0]
        dtype = x.dtype
        # A mask the neighbouring layers make redundant is skipped (``input_zeroed``, ``output_masked``);
        # a depthwise filter's input mask is its output mask.
        in_mask = None if self.input_zeroed or (self.depthwise and self.output_masked) else width_mask(self.in_channels, c_in, dtype, x.device)
        if self.depthwise:
            out_mask = in_mask
        else:
            out_mask = None if self.output_masked else width_mask(self.out_channels, c_out, dtype, x.device)
        spatial = lambda spec, size, dims=2, dtype=dtype: width_mask(spec, size, dtype, x.device, spatial=dims)  # noqa: E731 (cached views)
        kernels = self.kernel_size.example_indices() if isinstance(self.kernel_size, Choice) and len(self.kernel_size.values) > 1 else None
        full = largest(self.kernel_size)
        weight = prefix(self.weight, c_out) if self.depthwise else prefix(self.weight, c_out, c_in)
        weight, bias = crop_kernel(weight, full), prefix(self.bias, c_out)
        padding = self._padding(full)
        if kernels is None and not self.depthwise:
            # One shared weight: mask the activations (1×1 convolutions, widths only).
            if in_mask is not None:
                x = x * spatial(self.in_channels, c_in)
            y = F.conv2d(x, weight, bias, self.stride, padding, self.dilation)
            return y if out_mask is None else y * spatial(self.out_channels, c_out)
        if kernels is None and in_mask is None:
            return F.conv2d(x, weight, bias, self.stride, padding, self.dilation, c_in)
        if torch.compiler.is_compiling():
            return self._conv_static_compiled(x, weight, bias, padding, kernels, in_mask, out_mask, spatial)
        # Per-row weights (n, c_out, c_in / groups, K, K): each row's kernel crop and widths folded in,
        # run as one grouped convolution over the rows stacked along the channels.
        if kernels is not None:
            # (n, 1, 1, K, K) * (c_out, c_in / groups, K, K): per-row weights in one product.
            rows = self._kernel_masks(x.device, weight.dtype).index_select(0, kernels.to(x.device)) * weight
        else:
            rows = weight[None]
        if self.depthwise:
            if in_mask is not None:
                rows = rows * spatial(self.in_channels, c_in, 3, weight.dtype)
        else:
            if in_mask is not None:
                rows = rows * in_mask.to(weight.dtype)[:, None, :, None, None]
            if out_mask is not None:
                rows = rows * out_mask.to(weight.dtype)[:, :, None, None, None]
        if bias is not None:
            bias = bias.expand(n, c_out) if out_mask is None else bias * out_mask.to(bias.dtype)
            bias = bias.reshape(n * c_out)
        groups = n * c_in if self.depthwise else n
        y = F.conv2d(
            x.reshape(1, n * c_in, *x.shape[2:]), rows.reshape(n * c_out, *rows.shape[2:]), bias,
            self.stride, padding, self.dilation, groups,
        )
        return y.view(n, c_out, *y.shape[2:])

    def _conv_static_compiled(self, x: Tensor, weight: Tensor, bias: Tensor | None, padding: int, kernels: Tensor | None,
                              in_mask: Tensor | None, out_mask: Tensor | None, spatial) -> Tensor:
        """:meth:`_conv_static` under ``torch.compile``: the widths as masks on the activations and
        each kernel size its own convolution of every row, each row keeping its own kernel's output.
        Inductor lays a graph's convolutions out channels-last, which made the one convolution of
        per-row weights (``n * C`` groups) ~4x slower forward + backward on a CPU; these compile to
        about a quarter of it (benchmarks/RESULTS.md notes)."""
        c_in = x.shape[1]
        c_out = weight.shape[0]
        full = weight.shape[-1]
        if in_mask is not None:
            x = x * spatial(self.in_channels, c_in)
        sizes = self.kernel_size.values if kernels is not None else (full,)
        # A centred k×k crop of the K×K filter with padding p is the k×k filter with padding p - (K - k) / 2.
        outputs = [F.conv2d(x, crop_kernel(weight, k), bias, self.stride, padding - self.dilation * ((full - k) // 2), self.dilation,
                            c_in if self.depthwise else 1) for k in sizes]
        y = outputs[0] if kernels is None else select_rows(outputs, [kernels == i for i in range(len(sizes))])
        # A depthwise filter keeps its masked input channels at zero, unless a bias adds to them.
        if out_mask is not None and not (self.depthwise and bias is None):
            y = y * spatial(self.in_channels if self.depthwise else self.out_channels, c_out)
        return y

    def freeze(self, arch: dict[str, Any], export_child) -> nn.Conv2d:
        c_in = value_in(self.in_channels, arch)
        c_out = c_in if self.depthwise else value_in(self.out_channels, arch)
        k = value_in(self.kernel_size, arch)
        conv = nn.Conv2d(
            c_in, c_out, k, self.stride, self._padding(k), self.dilation,
            groups=c_in if self.depthwise else 1, bias=self.bias is not None,
        ).to(device=self.weight.device, dtype=self.weight.dtype)
        with torch.no_grad():
            weight = self.weight[:c_out] if self.depthwise else self.weight[:c_out, :c_in]
            conv.weight.copy_(crop_kernel(weight, k))
            if self.bias is not None:
                conv.bias.copy_(self.bias[:c_out])
        return conv

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, *, kernel_size: int | Choice | None = None, out_channels: int | Choice | None = None) -> "ElasticConv2d":
        """An elastic copy of ``conv`` whose largest candidate is ``conv`` itself (weights shared, not copied).

        Raises:
            ValueError: when ``conv`` cannot be made elastic as asked (grouped but not depthwise,
                non-square kernel, asymmetric padding or dilation, not 'same' padding with an elastic
                kernel, candidates larger than ``conv``).
        """
        k = conv.kernel_size[0]
        if conv.kernel_size[0] != conv.kernel_size[1] or conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise ValueError(f"only square, zero-padded convolutions with numeric padding can be made elastic, got {conv}")
        if conv.padding[0] != conv.padding[1] or conv.dilation[0] != conv.dilation[1]:
            raise ValueError(f"only convolutions with symmetric padding and dilation can be made elastic, got {conv}")
        depthwise = conv.groups == conv.in_channels == conv.out_channels and conv.groups > 1
        if depthwise and out_channels is not None:
            raise ValueError("a depthwise convolution's width follows its input: leave `out_channels` unset")
        if conv.groups != 1 and not depthwise:
            raise ValueError(f"grouped convolutions other than depthwise cannot be made elastic, got {conv}")
        kernel_size = k if kernel_size is None else kernel_size
        out_channels = conv.out_channels if out_channels is None else out_channels
        if largest(kernel_size) != k or largest(out_channels) != conv.out_channels:
            raise ValueError(
                f"the largest candidate must be the original layer: kernel {largest(kernel_size)} vs {k}, "
                f"out_channels {largest(out_channels)} vs {conv.out_channels}"
            )
        dilation = conv.dilation[0]
        # An even kernel has no symmetric 'same' padding: keep its padding fixed.
        same = k % 2 == 1 and conv.padding[0] == dilation * (k - 1) // 2
        if isinstance(kernel_size, Choice) and not same:
            raise ValueError(f"an elastic kernel needs 'same' padding {dilation * (k - 1) // 2}, got {conv.padding} in {conv}")
        elastic = cls(
            conv.in_channels, conv.in_channels if depthwise else out_channels, kernel_size, conv.stride,
            padding=None if same else conv.padding[0], dilation=dilation, depthwise=depthwise, bias=conv.bias is not None,
        )
        elastic.weight = conv.weight
        if conv.bias is not None:
            elastic.bias = conv.bias
        return elastic

    def extra_repr(self) -> str:
        return (
            f"in_channels={self.in_channels!r}, out_channels={self.out_channels!r}, kernel_size={self.kernel_size!r}, "
            f"stride={self.stride}, depthwise={self.depthwise}"
        )
