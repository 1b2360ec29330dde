"""What the ``mutate`` rules know about timm and torchvision CNN blocks: hidden widths and shapes.

A block's *hidden width* is a channel dimension that lives only inside the block: the expansion
of an inverted residual, the middle of a bottleneck. It can shrink without changing the block's
input or output, so it is what Once-for-All and BINAS search. :func:`block_layout` describes it for
the supported block types as :class:`HiddenChannels` (which layers write the dimension, which read
it, which sit in between), one generic description that the rules turn into elastic layers, and
gives the block's shape so that elastic depth knows which blocks can be skipped.

Supported (exact types; a subclass such as timm's ``CondConvResidual`` is reported as a variant):

======================================  =========================================================
block                                   hidden width
======================================  =========================================================
timm ``InvertedResidual``               ``conv_pw`` out, ``bn1``, ``conv_dw``, ``bn2``, SE, ``conv_pwl`` in
timm ``EdgeResidual``                   ``conv_exp`` out, ``bn1``, SE, ``conv_pwl`` in
timm ``DepthwiseSeparableConv``         none: its depthwise conv runs at the block's input width
timm / torchvision ``BasicBlock``       ``conv1`` out, ``bn1``, ``conv2`` in
timm / torchvision ``Bottleneck``       ``conv1`` out, ``bn1``, ``conv2`` in and out, ``bn2``, ``conv3`` in
torchvision ``InvertedResidual``        ``conv.0.0`` out, ``conv.0.1``, ``conv.1.0`` (depthwise), ``conv.1.1``, ``conv.2`` in
(MobileNetV2)                           (none when the block has no expansion conv)
======================================  =========================================================
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

__all__ = ["BlockLayout", "HiddenChannels", "block_family", "block_layout", "squeeze_excite_convs"]


@dataclass(frozen=True)
class HiddenChannels:
    """One channel dimension inside a block, as dotted paths relative to the block.

    Attributes:
        writers: layers whose *output* channels are this dimension: convolutions (a depthwise one
            reads and writes it) and batch norms.
        readers: convolutions whose *input* channels are this dimension.
        between: channel-wise modules applied to this dimension between writers and readers
            (activations, dropout, anti-aliasing); they must hold no per-channel state and keep
            zeros at zero, since per-example widths zero the channels a row does not use.
        ranked_by: the reader whose weight ranks the channels by importance (the projection: OFA's
            L1 norm of the consuming layer's weight over this dimension).
    """

    writers: tuple[str, ...]
    readers: tuple[str, ...]
    between: tuple[str, ...]
    ranked_by: str


@dataclass(frozen=True)
class BlockLayout:
    """The hidden channels and the shape of one block.

    Attributes:
        hidden: the hidden channel dimensions; all have the same size and share one width
            decision (a bottleneck has two: before and after its middle conv). Empty when the
            block has no hidden width.
        in_channels, out_channels: the block maps ``(B, in_channels, H, W)`` to
            ``(B, out_channels, H / stride, W / stride)``.
        stride: the block's spatial stride.
    """

    hidden: tuple[HiddenChannels, ...]
    in_channels: int
    out_channels: int
    stride: int

    @property
    def keeps_shape(self) -> bool:
        """Whether the output has the input's shape, so that the block can be skipped."""
        return self.in_channels == self.out_channels and self.stride == 1


def _stride(conv: nn.Conv2d, aa: nn.Module | None = None) -> int:
    # timm strides with an anti-aliasing layer instead of the conv when one is set (only when stride > 1).
    if aa is not None and not isinstance(aa, nn.Identity):
        return max(2, conv.stride[0])
    return conv.stride[0]


@functools.cache
def _squeeze_excite_types() -> dict[type, tuple[str, str]]:
    """Squeeze-excitation classes: ``{class: (reduce conv attribute, expand conv attribute)}``.

    Each computes ``x * gate(expand(act(reduce(mean over H, W of x)))))``: its reduced width is
    its own, its input and output width are the width of ``x``.
    """
    types: dict[type, tuple[str, str]] = {}
    try:
        from timm.layers.squeeze_excite import SEModule
        from timm.models._efficientnet_blocks import SqueezeExcite

        types[SqueezeExcite] = ("conv_reduce", "conv_expand")
        types[SEModule] = ("fc1", "fc2")
    except ImportError:  # pragma: no cover - timm is a dependency
        pass
    try:
        from torchvision.ops.misc import SqueezeExcitation

        types[SqueezeExcitation] = ("fc1", "fc2")
    except ImportError:  # pragma: no cover
        pass
    return types


def squeeze_excite_convs(module: nn.Module) -> tuple[str, str] | None:
    """``(reduce, expand)`` conv attribute names when ``module`` is a supported squeeze-excitation."""
    return _squeeze_excite_types().get(type(module))


def _se_parts(block: nn.Module, attribute: str, path: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The writers and readers a squeeze-excitation adds to the width it gates."""
    se = getattr(block, attribute, None)
    if se is None or isinstance(se, nn.Identity):
        return (), ()
    convs = squeeze_excite_convs(se)
    if convs is None:
        raise ValueError(
            f"{path}.{attribute!s} is a {type(se).__name__}, not a squeeze-excitation the rules know "
            f"({', '.join(t.__name__ for t in _squeeze_excite_types())}); its width cannot follow the block's"
        )
    reduce, expand = convs
    return (f"{attribute}.{expand}",), (f"{attribute}.{reduce}",)


def _timm_inverted_residual(block: nn.Module, path: str) -> BlockLayout:
    if block.conv_s2d is not None:
        raise ValueError(f"{path!r} is a timm InvertedResidual with space-to-depth (conv_s2d), a variant the rules do not handle")
    se_w, se_r = _se_parts(block, "se", path)
    hidden = HiddenChannels(("conv_pw", "bn1", "conv_dw", "bn2", *se_w), (*se_r, "conv_pwl"), ("aa",), "conv_pwl")
    return BlockLayout((hidden,), block.conv_pw.in_channels, block.conv_pwl.out_channels, _stride(block.conv_dw, block.aa))


def _timm_edge_residual(block: nn.Module, path: str) -> BlockLayout:
    se_w, se_r = _se_parts(block, "se", path)
    hidden = HiddenChannels(("conv_exp", "bn1", *se_w), (*se_r, "conv_pwl"), ("aa",), "conv_pwl")
    return BlockLayout((hidden,), block.conv_exp.in_channels, block.conv_pwl.out_channels, _stride(block.conv_exp, block.aa))


def _timm_depthwise_separable(block: nn.Module, path: str) -> BlockLayout:
    if block.conv_s2d is not None:
        raise ValueError(f"{path!r} is a timm DepthwiseSeparableConv with space-to-depth (conv_s2d), a variant the rules do not handle")
    # The depthwise conv runs at the block's input width: no width of its own to search.
    return BlockLayout((), block.conv_dw.in_channels, block.conv_pw.out_channels, _stride(block.conv_dw, block.aa))


def _timm_basic_block(block: nn.Module, path: str) -> BlockLayout:
    hidden = HiddenChannels(("conv1", "bn1"), ("conv2",), ("drop_block", "act1", "aa"), "conv2")
    return BlockLayout((hidden,), block.conv1.in_channels, block.conv2.out_channels, _stride(block.conv1, block.aa))


def _timm_bottleneck(block: nn.Module, path: str) -> BlockLayout:
    first = HiddenChannels(("conv1", "bn1"), ("conv2",), ("act1",), "conv2")
    second = HiddenChannels(("conv2", "bn2"), ("conv3",), ("drop_block", "act2", "aa"), "conv3")
    return BlockLayout((first, second), block.conv1.in_channels, block.conv3.out_channels, _stride(block.conv2, block.aa))


def _torchvision_basic_block(block: nn.Module, path: str) -> BlockLayout:
    hidden = HiddenChannels(("conv1", "bn1"), ("conv2",), ("relu",), "conv2")
    return BlockLayout((hidden,), block.conv1.in_channels, block.conv2.out_channels, _stride(block.conv1))


def _torchvision_bottleneck(block: nn.Module, path: str) -> BlockLayout:
    first = HiddenChannels(("conv1", "bn1"), ("conv2",), ("relu",), "conv2")
    second = HiddenChannels(("conv2", "bn2"), ("conv3",), ("relu",), "conv3")
    return BlockLayout((first, second), block.conv1.in_channels, block.conv3.out_channels, _stride(block.conv2))


def _torchvision_inverted_residual(block: nn.Module, path: str) -> BlockLayout:
    # block.conv: [Conv2dNormActivation(expand 1x1)], Conv2dNormActivation(depthwise), Conv2d(project), norm.
    layers = list(block.conv)
    expands = len(layers) == 4
    conv_norm_act = layers[:2] if expands else layers[:1]
    if len(layers) not in (3, 4) or any(not isinstance(m, nn.Sequential) or len(m) != 3 for m in conv_norm_act):
        raise ValueError(
            f"{path!r} is a torchvision InvertedResidual whose `conv` is not [conv-norm-act (expansion), "
            "conv-norm-act (depthwise), conv (projection), norm], a layout the rules do not handle"
        )
    project = layers[-2]
    in_channels = layers[0][0].in_channels
    if not expands:
        return BlockLayout((), in_channels, project.out_channels, block.stride)
    hidden = HiddenChannels(("conv.0.0", "conv.0.1", "conv.1.0", "conv.1.1"), ("conv.2",), ("conv.0.2", "conv.1.2"), "conv.2")
    return BlockLayout((hidden,), in_channels, project.out_channels, block.stride)


@functools.cache
def _layouts() -> dict[type, Callable[[nn.Module, str], BlockLayout]]:
    layouts: dict[type, Callable[[nn.Module, str], BlockLayout]] = {}
    try:
        from timm.models import _efficientnet_blocks as efficientnet
        from timm.models import resnet as timm_resnet

        layouts[efficientnet.InvertedResidual] = _timm_inverted_residual
        layouts[efficientnet.EdgeResidual] = _timm_edge_residual
        layouts[efficientnet.DepthwiseSeparableConv] = _timm_depthwise_separable
        layouts[timm_resnet.BasicBlock] = _timm_basic_block
        layouts[timm_resnet.Bottleneck] = _timm_bottleneck
    except ImportError:  # pragma: no cover - timm is a dependency
        pass
    try:
        from torchvision.models import mobilenetv2
        from torchvision.models import resnet as torchvision_resnet

        layouts[mobilenetv2.InvertedResidual] = _torchvision_inverted_residual
        layouts[torchvision_resnet.BasicBlock] = _torchvision_basic_block
        layouts[torchvision_resnet.Bottleneck] = _torchvision_bottleneck
    except ImportError:  # pragma: no cover
        pass
    return layouts


def block_family(module: nn.Module) -> type | None:
    """The supported block type ``module`` is an instance of (its own type or a base of a variant), else ``None``."""
    for known in _layouts():
        if isinstance(module, known):
            return known
    return None


def block_layout(module: nn.Module, path: str) -> BlockLayout | None:
    """The layout of a supported block; ``None`` for modules that are not blocks at all.

    Args:
        module: any module.
        path: its path, for error messages.

    Raises:
        ValueError: ``module`` is a subclass of a supported block (a variant whose layers may be
            used differently), or a supported block in a configuration the rules do not handle.
    """
    layout = _layouts().get(type(module))
    if layout is not None:
        return layout(module, path)
    known = block_family(module)
    if known is not None:
        raise ValueError(
            f"{path!r} is a {type(module).__name__}, a variant of {known.__module__}.{known.__name__} that the "
            "rules do not handle (its layers may be used differently); leave it out with `where=`"
        )
    return None
