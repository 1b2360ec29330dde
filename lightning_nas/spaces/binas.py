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
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_nas.nn.choice import Choice, Mutable
from lightning_nas.nn.depth_choice import DepthChoice
from lightning_nas.nn.elastic_size import prefix, size_mask
from lightning_nas.nn.grouped_norm import GroupedBatchNorm2d, batch_norm, grouped_batch_norm, member_state
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


def _copy_norm(target: nn.BatchNorm2d, source: nn.BatchNorm2d | GroupedBatchNorm2d, index: int | None = None) -> nn.BatchNorm2d:
    """``target`` set to the first channels of ``source`` (of its norm ``index`` for a group)."""
    c = target.num_features
    target.eps, target.momentum = source.eps, source.momentum
    with torch.no_grad():
        for name, value in member_state(source, index).items():
            getattr(target, name).copy_(value if name == "num_batches_tracked" else value[:c])
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
        self.bn_dw = GroupedBatchNorm2d(len(self.kernel.values), wide)  # norm k for kernel k
        self.se_reduce = nn.Conv2d(wide, wide_se, 1)
        self.se_expand = nn.Conv2d(wide_se, wide, 1)
        self.conv_pwl = nn.Conv2d(wide, out_channels, 1, bias=False)
        # One output BatchNorm per (ratio, SE) pair, at index ``2 * ratio_index + se_index``.
        self.bn_pwl = GroupedBatchNorm2d(2 * len(self.hidden), out_channels)
        self.act = _activation(activation)
        self._tables: dict[torch.device, tuple[Tensor, Tensor]] = {}

    def norms_masking_stopped_rows(self) -> tuple[nn.Module, ...]:
        """The BatchNorms this block applies itself (never called as modules), whose batch
        statistics leave out the rows a :class:`~lightning_nas.nn.DepthChoice` has stopped."""
        return (self.bn_pw, self.bn_dw, self.bn_pwl)

    # -- scalar mode: one configuration for all rows --------------------------------------------
    def _run_config(self, x: Tensor, ratio: int, kernel: int, se: int) -> Tensor:
        h, rd = self.hidden[ratio], self.se_hidden[ratio]
        y = self.act(batch_norm(F.conv2d(x, prefix(self.conv_pw.weight, h)), self.bn_pw))
        dw = self.conv_dw[kernel]
        y = F.conv2d(y, prefix(dw.weight, h), None, dw.stride, dw.padding, 1, h)
        y = self.act(batch_norm(y, self.bn_dw, kernel))
        if se:
            s = y.mean((2, 3), keepdim=True)
            s = F.relu(F.conv2d(s, prefix(self.se_reduce.weight, rd, h), prefix(self.se_reduce.bias, rd)))
            y = y * F.hardsigmoid(F.conv2d(s, prefix(self.se_expand.weight, h, rd), prefix(self.se_expand.bias, h)))
        return batch_norm(F.conv2d(y, prefix(self.conv_pwl.weight, self.out_channels, h)), self.bn_pwl, 2 * ratio + se)

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
        y = self.act(grouped_batch_norm(F.conv2d(x, prefix(self.conv_pw.weight, wide)), self.bn_pw, None, mask))
        y = self._depthwise(y, kernel, wide)
        y = self.act(self.bn_dw(y, kernel.to(x.device), mask, input_masked=True))  # see _run_rows_static
        se_bounds = self.se.index_bounds()
        if (se_bounds[1] == 1) if se_bounds else bool(se.any()):
            y = self._squeeze_excite(
                y, *self._se_masks(se.to(x.device), se_hidden_of.index_select(0, ratio).to(x.device), se_width, y.dtype), convolutions=False
            )
        z = F.conv2d(y, prefix(self.conv_pwl.weight, self.out_channels, wide))
        return self.bn_pwl(z, (2 * ratio + se).to(x.device))

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
        y = self.act(grouped_batch_norm(F.conv2d(x, self.conv_pw.weight), self.bn_pw, None, mask, cache=cache))
        y = self._depthwise_static(y, kernel)
        # The activations map 0 to 0 and the depthwise filters are per channel and bias-free: the
        # channels (and stopped rows) the mask zeroes are zero here already, as they are after the
        # bias-free projection of them below (``input_masked``: their statistics skip a mask).
        y = self.act(self.bn_dw(y, kernel, mask, cache=cache, input_masked=True))
        # SE on every row: the gate is 1 on rows with SE off (no test of whether any row has it on).
        y = self._squeeze_excite(y, *se_masks, convolutions=True)
        z = F.conv2d(y, self.conv_pwl.weight)
        return self.bn_pwl(z, out_group, out_mask, cache=cache, input_masked=True)

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
        stacked = filters[0][None] if len(filters) == 1 else torch.stack(filters)  # (a view for one kernel size)
        weight = stacked.index_select(0, kernel).reshape(n * wide, 1, big, big)  # (n * wide, 1, K, K)
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
        _copy_norm(block.bn2, self.bn_dw, kernel)
        _copy_norm(block.bn3, self.bn_pwl, 2 * ratio + se)
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
