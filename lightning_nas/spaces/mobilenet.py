"""A compact MobileNet-like (inverted-residual) supernet built from the mutable API.

Each block searches its expansion width and depthwise kernel size, each stage its depth. It is
small enough to train on 32×32 images on a CPU and serves tests, the demo and the benchmarks.
Exported subnets are plain ``torch.nn`` networks that ``torch.jit.script`` compiles.

Example::

    supernet = mobilenet_supernet(num_classes=10)
    arch = supernet.space.sample(0)        # {"stage0.block0.expand": 64, ..., "stage2.depth": 1}
    supernet.activate(arch)
    logits = supernet(torch.randn(8, 3, 32, 32))   # (8, 10)
    subnet = supernet.export(arch)         # nn.Module of nn.Conv2d / nn.BatchNorm2d / nn.Linear
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import Tensor, nn

from lightning_nas.nn import Choice, DepthChoice, ElasticBatchNorm2d, ElasticConv2d
from lightning_nas.spaces.registry import register_space
from lightning_nas.supernet import Supernet

__all__ = ["InvertedResidual", "MobileNetLike", "make_divisible", "mobilenet_supernet"]

# Activations must map 0 to 0: per-example mode zeroes the channels a row does not use.
_ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "hswish": nn.Hardswish}


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None, round_limit: float = 0.9) -> int:
    """``value`` rounded to the nearest multiple of ``divisor``, not below ``round_limit * value`` (timm's rule)."""
    min_value = min_value or divisor
    new_value = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if new_value < round_limit * value:
        new_value += divisor
    return new_value


def _is_int(value: object) -> bool:
    # bool is an int subclass: True would silently mean 1.
    return isinstance(value, int) and not isinstance(value, bool)


def _activation(name: str) -> nn.Module:
    try:
        return _ACTIVATIONS[name]()
    except KeyError:
        raise ValueError(f"`activation` must be one of {sorted(_ACTIVATIONS)}, got {name!r}") from None


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1×1 expansion, depthwise k×k, 1×1 linear projection, identity shortcut.

    The expansion width (``label + ".expand"``) and the depthwise kernel (``label + ".kernel"``)
    are decisions; weights are shared Once-for-All style (channel prefixes, centre-cropped kernels).

    Args:
        in_channels: input width.
        out_channels: output width.
        stride: stride of the depthwise convolution (1 or 2).
        expand_ratios: candidate expansion ratios; the hidden widths are
            ``make_divisible(in_channels * ratio)``, deduplicated and sorted.
        kernel_sizes: candidate odd depthwise kernel sizes.
        prefix: label prefix of this block's decisions.
        activation: ``"relu"`` or ``"hswish"``.

    Shapes: ``(B, in_channels, H, W) -> (B, out_channels, ceil(H / stride), ceil(W / stride))``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int,
        *,
        expand_ratios: Sequence[float],
        kernel_sizes: Sequence[int],
        prefix: str,
        activation: str = "relu",
    ) -> None:
        super().__init__()
        widths = sorted({make_divisible(in_channels * r) for r in expand_ratios})
        hidden = Choice(widths, f"{prefix}.expand")
        kernel = Choice(sorted(set(kernel_sizes)), f"{prefix}.kernel")
        self.has_residual = stride == 1 and in_channels == out_channels
        # Each convolution feeds an elastic BatchNorm of its width, which masks each row's channels
        # past its width in its statistics and output (activations keep 0 at 0): the convolutions
        # need not mask them too (two elementwise calls fewer per convolution and step).
        self.conv_pw = ElasticConv2d(in_channels, hidden, 1, bias=False, output_masked=True)
        self.bn1 = ElasticBatchNorm2d(hidden)
        self.act1 = _activation(activation)
        self.conv_dw = ElasticConv2d(hidden, hidden, kernel, stride, depthwise=True, bias=False, output_masked=True)
        self.bn2 = ElasticBatchNorm2d(hidden)
        self.act2 = _activation(activation)
        self.conv_pwl = ElasticConv2d(hidden, out_channels, 1, bias=False, input_zeroed=True, output_masked=True)
        self.bn3 = ElasticBatchNorm2d(out_channels)

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x
        x = self.act1(self.bn1(self.conv_pw(x)))
        x = self.act2(self.bn2(self.conv_dw(x)))
        x = self.bn3(self.conv_pwl(x))
        if self.has_residual:
            x = x + shortcut
        return x


class MobileNetLike(nn.Module):
    """Stem, searchable stages of :class:`InvertedResidual` blocks, classifier head.

    See :func:`mobilenet_supernet` for the arguments. Stage ``s`` is a
    :class:`~lightning_nas.nn.DepthChoice` (label ``f"stage{s}.depth"``) over its blocks: block 0
    changes width and stride, the others keep the shape.

    Shapes: ``(B, in_chans, H, W) -> (B, num_classes)``.
    """

    def __init__(
        self,
        *,
        num_classes: int = 10,
        in_chans: int = 3,
        stem_channels: int = 16,
        stages: Sequence[tuple[int, int, int]] = ((24, 2, 2), (40, 2, 2), (80, 1, 2)),
        expand_ratios: Sequence[float] = (3, 4, 6),
        kernel_sizes: Sequence[int] = (3, 5),
        head_channels: int = 128,
        activation: str = "relu",
    ) -> None:
        super().__init__()
        for name, value in (("num_classes", num_classes), ("in_chans", in_chans), ("stem_channels", stem_channels),
                            ("head_channels", head_channels)):
            if not _is_int(value) or value < 1:
                raise ValueError(f"`{name}` must be an int >= 1, got {value!r}")
        if isinstance(stages, (str, bytes)) or not isinstance(stages, Sequence) or not stages:
            raise ValueError("`stages` must list at least one (out_channels, stride, max_depth) triple")
        for s, stage in enumerate(stages):
            if not isinstance(stage, Sequence) or len(stage) != 3 or not all(_is_int(v) for v in stage):
                raise ValueError(f"`stages`[{s}] must be (out_channels, stride, max_depth), three ints, got {stage!r}")
            if stage[2] < 1:
                raise ValueError(f"`stages`[{s}] = {tuple(stage)!r}: max_depth must be at least 1")
            if stage[0] < 1 or stage[1] < 1:
                raise ValueError(f"`stages`[{s}] = {tuple(stage)!r}: out_channels and stride must be at least 1")
        if isinstance(expand_ratios, (str, bytes)) or not isinstance(expand_ratios, Sequence) or not expand_ratios or not all(
                isinstance(r, (int, float)) and not isinstance(r, bool) and math.isfinite(r) and r > 0 for r in expand_ratios):
            raise ValueError(f"`expand_ratios` must be positive finite numbers, such as (3, 4, 6); got {expand_ratios!r}")
        if isinstance(kernel_sizes, (str, bytes)) or not isinstance(kernel_sizes, Sequence) or not kernel_sizes or not all(
                _is_int(k) and k >= 1 and k % 2 == 1 for k in kernel_sizes):
            raise ValueError(f"`kernel_sizes` must be positive odd ints, such as (3, 5); got {kernel_sizes!r}")
        self.stem = nn.Sequential(
            nn.Conv2d(in_chans, stem_channels, 3, 2, 1, bias=False), nn.BatchNorm2d(stem_channels), _activation(activation)
        )
        stage_modules: list[nn.Module] = []
        in_ch = stem_channels
        for s, stage in enumerate(stages):
            out_ch, stride, max_depth = stage
            if max_depth < 1:
                raise ValueError(f"stage {s}: max_depth must be at least 1, got {stage!r}")
            blocks = [
                InvertedResidual(
                    in_ch if b == 0 else out_ch, out_ch, stride if b == 0 else 1,
                    expand_ratios=expand_ratios, kernel_sizes=kernel_sizes, prefix=f"stage{s}.block{b}", activation=activation,
                )
                for b in range(max_depth)
            ]
            stage_modules.append(DepthChoice(blocks, range(1, max_depth + 1), f"stage{s}.depth"))
            in_ch = out_ch
        self.stages = nn.Sequential(*stage_modules)
        self.head = nn.Sequential(
            nn.Conv2d(in_ch, head_channels, 1, bias=False), nn.BatchNorm2d(head_channels), _activation(activation),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(1),
        )
        self.classifier = nn.Linear(head_channels, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.head(self.stages(self.stem(x))))


@register_space("mobilenet")
def mobilenet_supernet(
    *,
    num_classes: int = 10,
    in_chans: int = 3,
    stem_channels: int = 16,
    stages: Sequence[tuple[int, int, int]] = ((24, 2, 2), (40, 2, 2), (80, 1, 2)),
    expand_ratios: Sequence[float] = (3, 4, 6),
    kernel_sizes: Sequence[int] = (3, 5),
    head_channels: int = 128,
    activation: str = "relu",
) -> Supernet:
    """A small MobileNetV2-like supernet.

    Decisions, in this order: for each stage ``s`` and block ``b``, ``f"stage{s}.block{b}.expand"``
    (hidden width) and ``f"stage{s}.block{b}.kernel"`` (depthwise kernel), then ``f"stage{s}.depth"``
    (``1..max_depth``). With the defaults: 6 blocks × 3 widths × 2 kernels and 3 stages × 2 depths
    (373,248 architectures; 0.2 M parameters in the supernet, all of them used by the largest subnet).

    Args:
        num_classes: classifier outputs.
        in_chans: input channels.
        stem_channels: width of the stride-2 3×3 stem convolution.
        stages: ``(out_channels, stride, max_depth)`` per stage; the stride applies to the first block.
        expand_ratios: candidate expansion ratios of every block.
        kernel_sizes: candidate depthwise kernel sizes of every block (odd).
        head_channels: width of the 1×1 convolution before global pooling.
        activation: ``"relu"`` or ``"hswish"``.

    Shapes: ``(B, in_chans, H, W) -> (B, num_classes)``; with the defaults a 32×32 input reaches the
    stages at 16×16 and the head at 4×4.
    """
    return Supernet(
        MobileNetLike(
            num_classes=num_classes, in_chans=in_chans, stem_channels=stem_channels, stages=stages,
            expand_ratios=expand_ratios, kernel_sizes=kernel_sizes, head_channels=head_channels, activation=activation,
        )
    )
