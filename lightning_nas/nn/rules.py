"""Rules for :func:`~lightning_nas.nn.mutate`: existing CNNs become Once-for-All / BINAS search spaces.

Each function here returns a *rule*, a callable ``rule(path, module) -> nn.Module | None`` that
``mutate`` offers every sub-module to, parents before children. A rule that replaces a module keeps
the original as the default (and largest) candidate of every decision it makes, so the supernet's
default architecture computes what the original model computed:

=============================  ===============================================  ===========================
rule                           makes                                            label
=============================  ===============================================  ===========================
:func:`elastic_kernel`         a kernel-size ``Choice`` per convolution          ``{conv}.kernel_size``
:func:`elastic_expansion`      a hidden-width ``Choice`` per block (channels)   ``{block}.width``
:func:`squeeze_excite_choice`  an ``OpChoice`` SE on/off per SE module           ``{se}``
:func:`elastic_depth`          a ``DepthChoice`` per run of skippable blocks     ``{stage}.depth``
:func:`binas`                  all of the above with BINAS's defaults           (one rule)
=============================  ===============================================  ===========================

They compose: a depth rule keeps the blocks, which then meet the block rules; a block rule's new
depthwise convolution then meets the kernel rule, its squeeze-excitation the SE rule. Blocks are
the timm and torchvision types listed in :mod:`lightning_nas.nn.blocks`. Example::

    from lightning_nas import Supernet, mutate, rules
    supernet = Supernet(mutate(timm.create_model("mobilenetv3_large_100"), preset="binas"))
    supernet = Supernet(mutate(torchvision.models.resnet18(), rules=[rules.binas(expansion=(0.25, 0.5, 1.0))]))
"""

from __future__ import annotations

import copy
import math
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_nas.nn.blocks import BlockLayout, block_family, block_layout, squeeze_excite_convs
from lightning_nas.nn.choice import Choice, Mutable
from lightning_nas.nn.conv import ElasticConv2d
from lightning_nas.nn.depth_choice import DepthChoice
from lightning_nas.nn.mutate import Rule, match_training
from lightning_nas.nn.norm import ElasticBatchNorm2d
from lightning_nas.nn.norm_act import ElasticBatchNormAct2d, _batch_norm_act_type
from lightning_nas.nn.op_choice import OpChoice

__all__ = [
    "PRESETS",
    "binas",
    "elastic_depth",
    "elastic_expansion",
    "elastic_kernel",
    "make_divisible",
    "squeeze_excite_choice",
]

Where = Callable[[str, nn.Module], bool]
_GROW = ("skip", "zero_pad", "error")


def _check_where(where: Any) -> None:
    if where is not None and not callable(where):
        raise ValueError(f"`where` must be callable(path, module) -> bool or None, got {where!r}")


# -- convolutions ---------------------------------------------------------------------------------


def _conv_spec(conv: nn.Module) -> dict[str, Any]:
    """The arguments that rebuild ``conv`` (an ``nn.Conv2d`` or an ``ElasticConv2d``) as an ``ElasticConv2d``."""
    if isinstance(conv, ElasticConv2d):
        return dict(
            in_channels=conv.in_channels, out_channels=conv.out_channels, kernel_size=conv.kernel_size,
            stride=conv.stride, padding=conv.padding, dilation=conv.dilation, depthwise=conv.depthwise,
            weight=conv.weight, bias=conv.bias,
        )
    k, dilation = conv.kernel_size[0], conv.dilation[0]
    same = k % 2 == 1 and conv.padding[0] == dilation * (k - 1) // 2
    return dict(
        in_channels=conv.in_channels, out_channels=conv.out_channels, kernel_size=k, stride=conv.stride,
        # None: ElasticConv2d's own 'same' padding, which follows the kernel size.
        padding=None if same else conv.padding[0], dilation=dilation,
        depthwise=conv.groups == conv.in_channels == conv.out_channels and conv.groups > 1,
        weight=conv.weight, bias=conv.bias,
    )


def _conv_problem(conv: nn.Module) -> str | None:
    """Why ``conv`` has no elastic form, or ``None`` when it has one."""
    if isinstance(conv, ElasticConv2d):
        return None
    if type(conv) is not nn.Conv2d:
        return f"is a {type(conv).__name__}; only plain nn.Conv2d layers have an elastic form (subclasses compute differently)"
    if conv.kernel_size[0] != conv.kernel_size[1]:
        return f"has a non-square kernel {conv.kernel_size}"
    if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
        return f"pads with padding={conv.padding!r}, padding_mode={conv.padding_mode!r}; only numeric zero padding is supported"
    if conv.padding[0] != conv.padding[1] or conv.dilation[0] != conv.dilation[1]:
        return f"has asymmetric padding {conv.padding} or dilation {conv.dilation}"
    if conv.groups != 1 and not conv.groups == conv.in_channels == conv.out_channels:
        return f"is a grouped convolution (groups={conv.groups}, {conv.in_channels} -> {conv.out_channels} channels) that is not depthwise"
    return None


def _elastic_conv(spec: dict[str, Any], training: bool) -> ElasticConv2d:
    """An ``ElasticConv2d`` from :func:`_conv_spec` arguments, holding ``spec``'s weight and bias tensors."""
    conv = ElasticConv2d(
        spec["in_channels"], spec["in_channels"] if spec["depthwise"] else spec["out_channels"], spec["kernel_size"],
        spec["stride"], padding=spec["padding"], dilation=spec["dilation"], depthwise=spec["depthwise"],
        bias=spec["bias"] is not None,
    )
    conv.weight = spec["weight"]
    if spec["bias"] is not None:
        conv.bias = spec["bias"]
    conv.train(training)
    return conv


def _zero_padded(weight: nn.Parameter, kernel_size: int) -> nn.Parameter:
    """A new parameter: ``weight (out, in, k, k)`` zero-padded to ``kernel_size``, ``weight`` its centre crop."""
    pad = (kernel_size - weight.shape[-1]) // 2
    return nn.Parameter(F.pad(weight.detach(), [pad] * 4), requires_grad=weight.requires_grad)


class _ElasticKernel:
    """The rule made by :func:`elastic_kernel` (a class for a readable ``repr`` in errors)."""

    sets_training_mode = True

    def __init__(self, kernel_sizes: tuple[int, ...], where: Where | None, grow: str) -> None:
        self.kernel_sizes = kernel_sizes
        self.where = where
        self.grow = grow

    def _qualifies(self, conv: nn.Module) -> bool:
        if isinstance(conv, ElasticConv2d):  # made by an earlier rule (user's mutables are not offered)
            return isinstance(conv.kernel_size, int) and conv.padding is None
        if type(conv) is not nn.Conv2d or _conv_problem(conv) is not None:
            return False
        # Without symmetric 'same' padding a smaller kernel would change the output size.
        return conv.kernel_size[0] % 2 == 1 and conv.padding[0] == conv.dilation[0] * (conv.kernel_size[0] - 1) // 2

    def __call__(self, path: str, module: nn.Module) -> ElasticConv2d | None:
        if not self._qualifies(module):
            return None
        spec = _conv_spec(module)
        k = spec["kernel_size"]
        larger = [s for s in self.kernel_sizes if s > k]
        candidates = sorted({s for s in self.kernel_sizes if s <= k or self.grow == "zero_pad"} | {k})
        if len(candidates) < 2 and not (larger and self.grow == "error"):
            return None
        if self.where is not None and not self.where(path, module):
            return None
        if larger and self.grow == "error":
            raise ValueError(
                f"elastic_kernel: {path!r} has a {k}x{k} kernel, smaller than the candidates {larger}; pass "
                "grow='zero_pad' to zero-pad its weight to the largest kernel, or grow='skip' to offer it only the "
                "kernels it can crop to"
            )
        if max(candidates) > k:
            spec["weight"] = _zero_padded(spec["weight"], max(candidates))
        spec["kernel_size"] = Choice(candidates, label=f"{path}.kernel_size", default=k)
        return _elastic_conv(spec, module.training)

    def explain_no_match(self, model: nn.Module) -> str:
        kernels = sorted({m.kernel_size[0] for m in model.modules() if self._qualifies(m) and type(m) is nn.Conv2d})
        if not kernels:
            return "it has no plain square nn.Conv2d with symmetric 'same' padding (grouped ones must be depthwise)"
        hint = " (grow='zero_pad' offers larger kernels by zero-padding the weights)" if self.grow == "skip" else ""
        return f"its qualifying convolutions have kernels {kernels}, and {list(self.kernel_sizes)} adds no other size to any{hint}"

    def __repr__(self) -> str:
        options = "" if self.grow == "skip" else f", grow={self.grow!r}"
        return f"elastic_kernel({list(self.kernel_sizes)!r}{options}{'' if self.where is None else ', where=...'})"


def elastic_kernel(kernel_sizes: Sequence[int], *, where: Where | None = None, grow: str = "skip") -> Rule:
    """A :func:`mutate` rule making the kernel size of plain ``nn.Conv2d`` layers elastic.

    A convolution qualifies when it is exactly an ``nn.Conv2d`` (subclasses such as timm's
    ``Conv2dSame`` compute differently and are skipped) or an ``ElasticConv2d`` with a fixed kernel
    made by an earlier rule in the same ``mutate`` call, its kernel ``K × K`` is square and odd, its
    padding is the symmetric "same" padding ``dilation * (K - 1) // 2`` (so every candidate keeps
    the output size), it is not grouped (or is depthwise), and ``where`` accepts it. It becomes an
    ``ElasticConv2d`` with ``kernel_size=Choice(candidates, label=path + ".kernel_size", default=K)``:
    smaller kernels are centre crops of the original ``K × K`` weight, which is shared, not copied.
    A convolution with a single candidate (a 1×1 one, say) is left alone.

    Candidates larger than ``K`` are handled as ``grow`` says:

    * ``"skip"`` (default): left out for that convolution (it gets the sizes up to ``K``).
    * ``"zero_pad"``: the weight is copied into a new parameter zero-padded to the largest
      candidate, so the original kernel is its centre crop and the original output is unchanged.
      The convolution then owns a new, larger parameter: build optimisers after ``mutate``.
    * ``"error"``: a ``ValueError`` naming the convolution.

    Args:
        kernel_sizes: candidate kernel sizes, positive odd ints.
        where: optional filter ``where(path, conv) -> bool`` called on qualifying convolutions with
            the path given to the rule (``label_prefix`` included), e.g. depthwise only:
            ``lambda path, m: m.groups > 1`` (an ``ElasticConv2d`` made by an earlier rule has
            ``m.depthwise`` instead of ``m.groups``).
        grow: ``"skip"``, ``"zero_pad"`` or ``"error"`` (see above).

    Returns:
        The rule ``rule(path, module) -> ElasticConv2d | None`` to pass in ``mutate(rules=[...])``.
    """
    if isinstance(kernel_sizes, (str, bytes)) or not isinstance(kernel_sizes, Sequence) or not kernel_sizes:
        raise ValueError(f"`kernel_sizes` must be a non-empty list of positive odd ints, got {kernel_sizes!r}")
    for k in kernel_sizes:
        if not isinstance(k, int) or isinstance(k, bool) or k < 1 or k % 2 == 0:
            raise ValueError(f"`kernel_sizes` must hold positive odd ints (centre crops need odd kernels), got {k!r}")
    _check_where(where)
    if grow not in _GROW:
        raise ValueError(f"`grow` must be one of {_GROW!r}, got {grow!r}")
    return _ElasticKernel(tuple(sorted(set(kernel_sizes))), where, grow)


# -- hidden widths ----------------------------------------------------------------------------------


def make_divisible(value: float, divisor: int) -> int:
    """``value`` rounded to the nearest multiple of ``divisor`` (at least ``divisor``), never more
    than 10 % below ``value`` (the rounding of MobileNet, EfficientNet and Once-for-All)."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


def _shallow_copy(module: nn.Module) -> nn.Module:
    """A new module object of the same class sharing ``module``'s sub-modules, tensors and attributes."""
    dup = copy.copy(module)
    for key, value in vars(dup).items():
        if isinstance(value, (dict, set)):  # _modules, _parameters, _buffers, hooks: the copy's own
            dup.__dict__[key] = copy.copy(value)
    return dup


def _replace_inside(
    block: nn.Module, replacements: dict[str, nn.Module], attributes: dict[str, dict[str, Any]] | None = None
) -> nn.Module:
    """A copy of ``block`` with the sub-modules at the given dotted paths replaced.

    Only ``block`` and the containers on the way to a replaced module are (shallowly) copied; every
    other sub-module, parameter and buffer is shared, and ``block`` itself is left untouched.
    ``attributes`` (``{path: {name: value}}``) are set on copies of the modules at those paths
    (``""``: the copy of ``block``), never on the originals.
    """
    copies: dict[str, nn.Module] = {}

    def copy_of(path: str) -> nn.Module:
        if path not in copies:
            copies[path] = _shallow_copy(block.get_submodule(path))
            if path:
                parent, _, name = path.rpartition(".")
                copy_of(parent)._modules[name] = copies[path]
        return copies[path]

    for path, new in replacements.items():
        parent, _, name = path.rpartition(".")
        copy_of(parent)._modules[name] = new
    for path, values in (attributes or {}).items():
        copy_of(path).__dict__.update(values)
    return copy_of("")


def _check_keeps_zeros(module: nn.Module | None, path: str) -> None:
    """Per-example widths zero the channels a row does not use: a channel-wise module between
    elastic layers must keep them at zero and hold no per-channel state."""
    if module is None or isinstance(module, nn.Identity):
        return
    if any(True for _ in module.parameters()) or any(True for _ in module.buffers()):
        raise ValueError(
            f"{path!r} ({type(module).__name__}) holds per-channel parameters or buffers on a hidden width; "
            "the rules cannot make it elastic"
        )
    try:
        with torch.no_grad():
            out = module(torch.zeros(1, 2, 4, 4))
    except Exception as error:  # noqa: BLE001 - any failure means the module is not channel-wise
        raise ValueError(f"{path!r} ({type(module).__name__}) is not a channel-wise module the rules can keep: {error}") from None
    if not isinstance(out, Tensor) or bool(out.abs().amax() != 0):
        raise ValueError(
            f"{path!r} ({type(module).__name__}) does not map 0 to 0; per-example widths zero the channels a row "
            "does not use, so every activation on a hidden width must keep zeros at zero"
        )


def _elastic_norm(norm: nn.Module, path: str, width: Choice | None) -> ElasticBatchNorm2d:
    """The elastic form of a block's batch norm at ``width`` (``None``: its own fixed width)."""
    if type(norm) is nn.BatchNorm2d:
        elastic = ElasticBatchNorm2d.from_batch_norm(norm, num_features=width)
    elif type(norm) is _batch_norm_act_type():
        if width is not None:  # (at a fixed width no channel is zeroed)
            _check_keeps_zeros(norm.drop, f"{path}.drop")
            _check_keeps_zeros(norm.act, f"{path}.act")
        elastic = ElasticBatchNormAct2d.from_batch_norm_act(norm, num_features=width)
    else:
        raise ValueError(
            f"{path!r} is a {type(norm).__name__}; only nn.BatchNorm2d and timm's BatchNormAct2d have an elastic form here"
        )
    elastic.training = norm.training
    return elastic


def _reordered(t: Tensor, dim: int, order: Tensor) -> Tensor:
    data = t.detach().index_select(dim, order.to(t.device))
    return nn.Parameter(data, requires_grad=t.requires_grad) if isinstance(t, nn.Parameter) else data


def _reorder_writer(layer: nn.Module, order: Tensor) -> None:
    """Put output channels of a new elastic layer in ``order`` (new tensors: the original model's stay as they are)."""
    names = ("weight", "bias", "running_mean", "running_var") if isinstance(layer, ElasticBatchNorm2d) else ("weight", "bias")
    for name in names:
        t = getattr(layer, name)
        if t is not None:
            setattr(layer, name, _reordered(t, 0, order))


def _widen(block: nn.Module, path: str, layout: BlockLayout, width: Choice, reorder: bool) -> nn.Module:
    """``block`` with every layer on its hidden channels elastic at ``width`` (see :func:`elastic_expansion`)."""
    channels: dict[str, dict[str, Choice]] = {}  # sub-path -> {"in"/"out": width}
    for hidden in layout.hidden:
        for sub in hidden.between:
            parent, _, name = sub.rpartition(".")
            _check_keeps_zeros(getattr(block.get_submodule(parent), name, None), f"{path}.{sub}")  # timm keeps absent layers as None
        for sub in hidden.writers:
            channels.setdefault(sub, {})["out"] = width
        for sub in hidden.readers:
            channels.setdefault(sub, {})["in"] = width
    new: dict[str, nn.Module] = {}
    for sub, dims in channels.items():
        layer = block.get_submodule(sub)
        if isinstance(layer, nn.BatchNorm2d):
            new[sub] = _elastic_norm(layer, f"{path}.{sub}", width)
            continue
        if isinstance(layer, nn.Conv2d):
            problem = _conv_problem(layer)
        elif isinstance(layer, Mutable):
            problem = f"is already elastic ({type(layer).__name__}; was the model mutated before?)"
        else:
            problem = f"is a {type(layer).__name__}, not an nn.Conv2d or a batch norm"
        if problem is not None:
            raise ValueError(f"elastic_expansion: {path}.{sub!s} {problem}; the hidden width of {path!r} cannot be made elastic")
        spec = _conv_spec(layer)
        if spec["depthwise"]:
            spec["in_channels"] = spec["out_channels"] = width  # in = out = groups: both follow the width
        else:
            spec["in_channels"] = dims.get("in", spec["in_channels"])
            spec["out_channels"] = dims.get("out", spec["out_channels"])
        new[sub] = _elastic_conv(spec, layer.training)
    # The block's other norms (its output's) at their fixed widths: an elastic norm leaves the rows
    # a DepthChoice has stopped out of its batch statistics, so with static shapes the block can
    # run on every row (no grouping by depth, no host reads); each exports as the norm it was.
    for sub, layer in block.named_modules():
        if sub not in new and type(layer) in (nn.BatchNorm2d, _batch_norm_act_type()):
            new[sub] = _elastic_norm(layer, f"{path}.{sub}", None)
    if reorder:
        # Once-for-All's channel sorting: most important hidden channels first (L1 norm of the
        # projection's weight over them), every layer permuted alike so the block's function is
        # unchanged, and then every smaller width keeps the most important channels.
        for hidden in layout.hidden:
            importance = block.get_submodule(hidden.ranked_by).weight.detach().abs().sum(dim=(0, 2, 3))
            order = torch.argsort(importance, descending=True, stable=True)
            for sub in hidden.writers:
                _reorder_writer(new[sub], order)
            for sub in hidden.readers:
                new[sub].weight = _reordered(new[sub].weight, 1, order)
    return _replace_inside(block, new)


def _hidden_size(block: nn.Module, path: str, layout: BlockLayout) -> int:
    sizes = {}
    for hidden in layout.hidden:
        writer = block.get_submodule(hidden.writers[0])
        if isinstance(writer, Mutable):
            raise ValueError(f"elastic_expansion: {path}.{hidden.writers[0]} is already elastic ({type(writer).__name__}; was the model mutated before?)")
        sizes[hidden.writers[0]] = writer.out_channels
    if len(set(sizes.values())) != 1:
        raise ValueError(f"elastic_expansion: the hidden widths of {path!r} differ ({sizes}); one width decision cannot set them all")
    return next(iter(sizes.values()))


class _ElasticExpansion:
    """The rule made by :func:`elastic_expansion`."""

    sets_training_mode = True

    def __init__(self, ratios: tuple[float, ...], divisor: int, reorder: bool, where: Where | None) -> None:
        self.ratios = ratios
        self.divisor = divisor
        self.reorder = reorder
        self.where = where

    def widths(self, original: int) -> list[int]:
        """The candidate hidden widths of a block whose hidden width is ``original`` channels."""
        return sorted({original} | {min(original, make_divisible(r * original, self.divisor)) for r in self.ratios})

    def __call__(self, path: str, module: nn.Module) -> nn.Module | None:
        if block_family(module) is None:
            return None
        if self.where is not None and not self.where(path, module):
            return None
        layout = block_layout(module, path)
        if layout is None or not layout.hidden:
            return None  # not a block, or a block without a hidden width of its own
        original = _hidden_size(module, path, layout)
        widths = self.widths(original)
        if len(widths) < 2:
            return None
        return _widen(module, path, layout, Choice(widths, label=f"{path}.width", default=original), self.reorder)

    def explain_no_match(self, model: nn.Module) -> str:
        return (
            "it has no block with a hidden width (timm InvertedResidual, EdgeResidual, BasicBlock, Bottleneck; torchvision "
            "InvertedResidual with an expansion conv, BasicBlock, Bottleneck) wide enough for two candidate widths"
        )

    def __repr__(self) -> str:
        return f"elastic_expansion({list(self.ratios)!r}, divisor={self.divisor}, reorder={self.reorder}{'' if self.where is None else ', where=...'})"


def elastic_expansion(
    ratios: Sequence[float] = (0.5, 0.75, 1.0),
    *,
    divisor: int = 8,
    reorder: bool = True,
    where: Where | None = None,
) -> Rule:
    """A :func:`mutate` rule making the hidden width of inverted-residual and bottleneck blocks one decision.

    A block's hidden width is the channel dimension between its expansion and its projection (see
    :mod:`lightning_nas.nn.blocks` for each supported timm and torchvision type). It becomes one
    ``Choice(widths, label=path + ".width", default=original)`` of channel counts: the original
    hidden width ``C`` and ``make_divisible(r * C, divisor)`` for each ratio ``r`` (deduplicated,
    at most ``C``). Every layer on that dimension gets it: the expansion conv's output, its norm,
    the depthwise conv (input = output = groups), its norm, a squeeze-excitation's reduce conv input
    and expand conv output (its reduced width stays fixed), the projection conv's input. timm's
    ``BatchNormAct2d`` becomes an :class:`~lightning_nas.nn.norm_act.ElasticBatchNormAct2d` (exported
    back as a ``BatchNormAct2d``). A smaller width uses the leading channels of every weight.

    With ``reorder`` (Once-for-All's channel sorting) the hidden channels are first sorted by
    importance, the L1 norm of the projection conv's weight over each channel, and every layer on
    the dimension is permuted alike: the block computes exactly what it computed, and each smaller
    width keeps the most important channels. The reordered layers hold new tensors (the original
    modules are left untouched until ``mutate`` swaps the block in): build optimisers after ``mutate``.
    Without ``reorder`` the original tensors are shared.

    Blocks without a hidden width of their own are left alone: timm's ``DepthwiseSeparableConv`` and
    torchvision's ``InvertedResidual`` without an expansion conv (their depthwise conv runs at the
    block's input width; the kernel and SE rules still apply to them).

    Args:
        ratios: fractions of the original hidden width, in ``(0, 1]``; the original is always a candidate.
        divisor: widths are rounded to multiples of it (``make_divisible``).
        reorder: sort hidden channels by importance first (see above).
        where: optional filter ``where(path, block) -> bool``.

    Returns:
        The rule; it raises ``ValueError`` (naming the path and the reason) for a block it matches
        but cannot handle: a variant of a supported type, a grouped (not depthwise) or non-plain
        conv, a norm other than ``BatchNorm2d``/``BatchNormAct2d``, an unknown squeeze-excitation,
        an activation on the hidden width that does not map 0 to 0 or holds parameters.
    """
    if isinstance(ratios, (str, bytes)) or not isinstance(ratios, Sequence) or not ratios:
        raise ValueError(f"`ratios` must be a non-empty list of fractions in (0, 1], got {ratios!r}")
    for r in ratios:
        if isinstance(r, bool) or not isinstance(r, (int, float)) or not 0 < r <= 1 or math.isnan(r):
            raise ValueError(f"`ratios` must hold fractions in (0, 1] of the original hidden width, got {r!r}")
    if not isinstance(divisor, int) or isinstance(divisor, bool) or divisor < 1:
        raise ValueError(f"`divisor` must be a positive int, got {divisor!r}")
    _check_where(where)
    return _ElasticExpansion(tuple(sorted(set(ratios))), divisor, bool(reorder), where)


# -- squeeze-excitation on/off -----------------------------------------------------------------------


class _SqueezeExciteChoice:
    """The rule made by :func:`squeeze_excite_choice`."""

    sets_training_mode = True

    def __init__(self, where: Where | None) -> None:
        self.where = where

    def __call__(self, path: str, module: nn.Module) -> OpChoice | None:
        convs = squeeze_excite_convs(module)
        if convs is None:
            return None
        if self.where is not None and not self.where(path, module):
            return None
        # "none" first: the space's largest() (the last candidate) is then the network with every SE.
        op = OpChoice({"none": nn.Identity(), "original": module}, label=path, default="original")
        match_training(op, module)
        return op

    def explain_no_match(self, model: nn.Module) -> str:
        return "it has no squeeze-excitation module of a known type (timm SqueezeExcite or SEModule, torchvision SqueezeExcitation)"

    def __repr__(self) -> str:
        return f"squeeze_excite_choice({'' if self.where is None else 'where=...'})"


def squeeze_excite_choice(*, where: Where | None = None) -> Rule:
    """A :func:`mutate` rule making each squeeze-excitation module optional.

    A timm ``SqueezeExcite`` (EfficientNet, MobileNetV3), timm ``SEModule`` (SE-ResNet) or
    torchvision ``SqueezeExcitation`` becomes ``OpChoice({"none": nn.Identity(), "original": se},
    label=path, default="original")`` (so ``space.largest()`` keeps every SE and ``smallest()``
    none): a squeeze-excitation returns ``x * gate(...)``, so without
    it the block passes ``x`` on unchanged.

    Args:
        where: optional filter ``where(path, se) -> bool``.
    """
    _check_where(where)
    return _SqueezeExciteChoice(where)


# -- elastic depth ----------------------------------------------------------------------------------


def _shape(layout: BlockLayout) -> str:
    s = "" if layout.stride == 1 else f"/{layout.stride}"
    return f"(B, {layout.in_channels}, H, W) -> (B, {layout.out_channels}, H{s}, W{s})"


class _ElasticDepth:
    """The rule made by :func:`elastic_depth`."""

    sets_training_mode = True

    def __init__(self, min_depth: int, spans: tuple[tuple[str, ...], ...] | None, where: Where | None) -> None:
        self.min_depth = min_depth
        self.spans = spans
        self.where = where

    def _runs(self, path: str, sequential: nn.Sequential) -> list[list[str]]:
        """Keys of the children to put in one DepthChoice each."""
        keys = list(sequential._modules)
        if self.spans is not None:
            runs = []
            for span in self.spans:
                parents = {p.rpartition(".")[0] for p in span}
                if parents != {path}:
                    continue
                names = [p.rpartition(".")[2] for p in span]
                positions = [keys.index(n) if n in keys else -1 for n in names]
                if -1 in positions or positions != list(range(positions[0], positions[0] + len(positions))):
                    raise ValueError(f"elastic_depth: the span {list(span)!r} must name consecutive children of {path!r} ({keys})")
                for name in names:
                    layout = block_layout(sequential._modules[name], f"{path}.{name}")
                    if layout is None:
                        raise ValueError(
                            f"elastic_depth: cannot tell whether {path}.{name} ({type(sequential._modules[name]).__name__}) keeps "
                            "its input shape; only the timm and torchvision blocks of lightning_nas.nn.blocks can be skipped"
                        )
                    if not layout.keeps_shape:
                        raise ValueError(
                            f"elastic_depth: the blocks of a DepthChoice must keep their input shape (every depth must give the "
                            f"same output shape), but {path}.{name} maps {_shape(layout)}; leave it out of the span {list(span)!r}"
                        )
                runs.append(names)
            return runs
        runs: list[list[str]] = [[]]
        for key, child in sequential._modules.items():
            try:
                layout = block_layout(child, f"{path}.{key}") if child is not None else None
            except ValueError:
                layout = None  # a variant we cannot read: it ends the run, as any other module does
            if layout is not None and layout.keeps_shape:
                runs[-1].append(key)
            elif runs[-1]:
                runs.append([])
        return [run for run in runs if len(run) > self.min_depth]

    def __call__(self, path: str, module: nn.Module) -> nn.Module | None:
        if type(module) is not nn.Sequential:
            return None
        if self.spans is not None and not any(p.rpartition(".")[0] == path for span in self.spans for p in span):
            return None
        runs = self._runs(path, module)
        if not runs:
            return None
        if self.where is not None and not self.where(path, module):
            return None
        choices = {}
        for run in runs:
            if len(run) <= self.min_depth:
                raise ValueError(f"elastic_depth: the span {path}.{run} gives a single depth with min_depth={self.min_depth}")
            label = f"{path}.depth" if len(runs) == 1 else f"{path}.{run[0]}-{run[-1]}.depth"
            blocks = [module._modules[key] for key in run]
            choices[run[0]] = DepthChoice(blocks, list(range(self.min_depth, len(run) + 1)), label=label)
        if len(runs) == 1 and len(runs[0]) == len(module):
            new = choices[runs[0][0]]  # the whole stage is skippable: it exports as an nn.Sequential again
        else:
            skipped = {key for run in runs for key in run[1:]}
            new = nn.Sequential(OrderedDict((key, choices.get(key, child)) for key, child in module._modules.items() if key not in skipped))
        match_training(new, module)
        return new

    def explain_no_match(self, model: nn.Module) -> str:
        return (
            f"no nn.Sequential holds more than min_depth={self.min_depth} consecutive timm/torchvision blocks "
            "that keep their input shape"
        )

    def __repr__(self) -> str:
        spans = "" if self.spans is None else f", spans={[list(s) for s in self.spans]!r}"
        return f"elastic_depth(min_depth={self.min_depth}{spans}{'' if self.where is None else ', where=...'})"


def elastic_depth(*, min_depth: int = 1, spans: Sequence[Sequence[str]] | None = None, where: Where | None = None) -> Rule:
    """A :func:`mutate` rule making the number of blocks of each stage a decision (BINAS's "sink point").

    In every ``nn.Sequential`` (a timm stage ``blocks.i``, a ResNet ``layerN``, torchvision
    MobileNetV2's flat ``features``) each run of consecutive supported blocks that keep their input
    shape (stride 1, input channels = output channels) becomes one
    ``DepthChoice(run, depths=range(min_depth, len(run) + 1), label=...)``, default: every block.
    Blocks that change the shape (the first, strided block of a stage) stay fixed in front of it;
    every depth then gives the same output shape, as per-example depths require. The labels:
    ``"{sequential}.depth"`` when the ``nn.Sequential`` holds one such run (``"blocks.2.depth"``,
    ``"layer1.depth"``), ``"{sequential}.{first}-{last}.depth"`` with the run's first and last
    child names when it holds several (``"features.5-6.depth"``).

    The ``nn.Sequential`` is replaced by a new one with the ``DepthChoice`` in place of its run
    (under the run's first child name), or by the ``DepthChoice`` itself when the run is all of it;
    either way its blocks are direct ``blocks`` of the ``DepthChoice`` (never nested in another
    one), keep their original paths for the rules after this one, and export as plain blocks.

    Args:
        min_depth: the fewest blocks of a run that always run (``0`` lets a whole run be skipped).
            Runs of at most ``min_depth`` blocks are left alone.
        spans: instead of finding runs, exactly these: lists of paths (as the rules see them,
            ``label_prefix`` included) of consecutive children of one ``nn.Sequential``, e.g.
            ``[["features.5", "features.6"]]``. A span whose blocks do not all keep their shape, or
            whose shapes cannot be told, is a ``ValueError`` naming the block and its shape.
        where: optional filter ``where(path, sequential) -> bool``.
    """
    if not isinstance(min_depth, int) or isinstance(min_depth, bool) or min_depth < 0:
        raise ValueError(f"`min_depth` must be a non-negative int, got {min_depth!r}")
    if spans is not None:
        if isinstance(spans, (str, bytes)) or not isinstance(spans, Sequence) or not spans:
            raise ValueError(f"`spans` must be a non-empty list of lists of block paths, got {spans!r}")
        for span in spans:
            if isinstance(span, (str, bytes)) or not isinstance(span, Sequence) or not span or not all(isinstance(p, str) for p in span):
                raise ValueError(f"every span must be a non-empty list of block paths (strings), got {span!r}")
        spans = tuple(tuple(span) for span in spans)
    _check_where(where)
    return _ElasticDepth(min_depth, spans, where)


# -- presets ------------------------------------------------------------------------------------------


class _FirstOf:
    """Several rules as one: the first answer wins (``mutate`` then checks the group, not each part)."""

    sets_training_mode = True

    def __init__(self, name: str, parts: Sequence[Rule], options: str) -> None:
        self.name = name
        self.parts = tuple(parts)
        self.options = options

    def __call__(self, path: str, module: nn.Module) -> nn.Module | None:
        for rule in self.parts:
            new = rule(path, module)
            if new is not None and new is not module:
                if not getattr(rule, "sets_training_mode", False):
                    match_training(new, module)
                return new
        return None

    def explain_no_match(self, model: nn.Module) -> str:
        return "; ".join(f"{rule!r}: {rule.explain_no_match(model)}" for rule in self.parts if hasattr(rule, "explain_no_match"))

    def __repr__(self) -> str:
        return f"{self.name}({self.options})"


def _depthwise(path: str, conv: nn.Module) -> bool:
    return conv.depthwise if isinstance(conv, ElasticConv2d) else conv.groups > 1


def binas(
    *,
    kernel_sizes: Sequence[int] | None = (3, 5),
    grow: str = "zero_pad",
    expansion: Sequence[float] | None = (0.5, 0.75, 1.0),
    divisor: int = 8,
    reorder: bool = True,
    squeeze_excite: bool = True,
    min_depth: int = 1,
) -> Rule:
    """One rule turning a timm or torchvision CNN into a BINAS / Once-for-All style search space.

    Per block (the types of :mod:`lightning_nas.nn.blocks`), with the defaults:

    * depth: every run of blocks that keep their shape becomes a ``DepthChoice`` keeping at least
      ``min_depth = 1`` of them besides the stage's fixed first block (:func:`elastic_depth`);
    * hidden width: ``(0.5, 0.75, 1.0)`` of the original hidden width (expansion ratio), rounded to
      multiples of 8, channels sorted by importance first (:func:`elastic_expansion`);
    * squeeze-excitation: on or off (:func:`squeeze_excite_choice`);
    * depthwise kernel: ``{3, 5}`` plus the original size; a 3×3 kernel's weight is zero-padded to
      5×5 (``grow="zero_pad"``) so its original output is unchanged (:func:`elastic_kernel`,
      depthwise convolutions only: regular convolutions keep their kernel).

    Every default is the original model. On torchvision ResNets only depth and width apply (no
    depthwise convolutions, no squeeze-excitation); ``mutate(..., preset="binas")`` is this rule
    with its defaults.

    Args:
        kernel_sizes: depthwise kernel candidates, or ``None`` for fixed kernels.
        grow: how kernels larger than a convolution's own are handled (see :func:`elastic_kernel`).
        expansion: hidden-width ratios, or ``None`` for fixed widths.
        divisor: hidden widths are multiples of it.
        reorder: sort hidden channels by importance before making widths elastic.
        squeeze_excite: make squeeze-excitation modules optional.
        min_depth: the fewest skippable blocks kept per run, or ``None`` for fixed depths.

    Returns:
        One rule: ``mutate`` reports an error only when none of its parts matched anything.
    """
    parts: list[Rule] = []
    if min_depth is not None:
        parts.append(elastic_depth(min_depth=min_depth))
    if expansion is not None:
        parts.append(elastic_expansion(expansion, divisor=divisor, reorder=reorder))
    if squeeze_excite:
        parts.append(squeeze_excite_choice())
    if kernel_sizes is not None:
        parts.append(elastic_kernel(kernel_sizes, grow=grow, where=_depthwise))
    if not parts:
        raise ValueError("binas(): every part is switched off; enable at least one of depth, expansion, squeeze_excite, kernel_sizes")
    options = (
        f"kernel_sizes={None if kernel_sizes is None else list(kernel_sizes)!r}, grow={grow!r}, "
        f"expansion={None if expansion is None else list(expansion)!r}, divisor={divisor}, reorder={reorder}, "
        f"squeeze_excite={squeeze_excite}, min_depth={min_depth}"
    )
    return _FirstOf("binas", parts, options)


PRESETS: dict[str, Callable[[], Rule]] = {"binas": binas}
"""Presets by name for ``mutate(model, preset=name)``: each a function returning a rule."""
