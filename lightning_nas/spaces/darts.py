"""The DARTS cell space, its robustness variants S1–S4, and the evaluation network of a genotype.

A DARTS cell has 2 input nodes (the outputs of the two previous cells) and 4 intermediate nodes;
intermediate node ``j`` (numbered 2–5) offers one edge from every earlier node ``i < j`` (14 edges)
and keeps 2 of them. All normal cells share one genotype and all reduction cells another, so the
decisions of the search network are:

* ``"{kind}.edge_{j}_{i}"`` (``kind`` is ``normal`` or ``reduce``): the operation on edge ``i → j``,
  an :class:`~lightning_nas.nn.OpChoice` shared by every cell of that kind;
* ``"{kind}.node_{j}"``: which 2 of the ``j`` incoming edges node ``j`` sums, an
  :class:`~lightning_nas.nn.InputChoice` (value: a sorted pair of source nodes).

A :class:`Genotype` is DARTS's compact form of an architecture: per kind, 8 ``(op, source)`` pairs
(two per intermediate node), and the concatenated nodes. :func:`darts_genotype` and
:func:`darts_arch` convert between the two; :class:`DartsNetwork` is the plain evaluation network of
a genotype (affine BatchNorm, any depth and width).

Example::

    supernet = darts_supernet(channels=8, layers=5, num_classes=10)
    arch = supernet.space.sample(0)
    genotype = darts_genotype(arch)                  # Genotype(normal=[("sep_conv_3x3", 0), ...], ...)
    net = DartsNetwork(genotype, channels=36, layers=20)   # 3.3 M parameters for DARTS_V2
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from lightning_nas.nn.choice import Mutable
from lightning_nas.nn.input_choice import InputChoice
from lightning_nas.nn.norm import elastic_batch_norms
from lightning_nas.nn.op_choice import OpChoice
from lightning_nas.seeding import derive_generator, derive_seed
from lightning_nas.spaces.registry import register_space
from lightning_nas.supernet import Supernet

__all__ = [
    "DARTS_OPS",
    "DARTS_OPS_WITH_NONE",
    "DARTS_V2",
    "OPS",
    "S2_OPS",
    "S3_OPS",
    "S4_OPS",
    "CellNode",
    "DartsCell",
    "DartsNetwork",
    "DartsSearchNetwork",
    "DilConv",
    "FactorizedReduce",
    "Genotype",
    "Noise",
    "ReLUConvBN",
    "SepConv",
    "Zero",
    "darts_arch",
    "darts_edges",
    "darts_genotype",
    "darts_supernet",
    "robustness_supernet",
    "seed_noise",
]

#: DARTS's search operations (public code: no ``none``).
DARTS_OPS: tuple[str, ...] = (
    "max_pool_3x3", "avg_pool_3x3", "skip_connect", "sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5",
)
#: The original paper's operation set, with the zero operation.
DARTS_OPS_WITH_NONE: tuple[str, ...] = ("none",) + DARTS_OPS
#: Robustness spaces of Zela et al. as the thesis uses them (the same pair or triple on every edge).
S2_OPS: tuple[str, ...] = ("skip_connect", "sep_conv_3x3")
S3_OPS: tuple[str, ...] = ("none", "skip_connect", "sep_conv_3x3")
S4_OPS: tuple[str, ...] = ("noise", "sep_conv_3x3")

_KINDS = ("normal", "reduce")
_INTERMEDIATE = (2, 3, 4, 5)


# -- operations ------------------------------------------------------------------------------
class ReLUConvBN(nn.Sequential):
    """ReLU → k×k convolution → BatchNorm. ``(B, C_in, H, W) -> (B, C_out, H / stride, W / stride)``."""

    def __init__(self, c_in: int, c_out: int, kernel_size: int, stride: int, padding: int, *, affine: bool = True) -> None:
        super().__init__(
            nn.ReLU(inplace=False),
            nn.Conv2d(c_in, c_out, kernel_size, stride, padding, bias=False),
            nn.BatchNorm2d(c_out, affine=affine),
        )


class DilConv(nn.Sequential):
    """ReLU → dilated depthwise k×k → pointwise 1×1 → BatchNorm."""

    def __init__(
        self, c_in: int, c_out: int, kernel_size: int, stride: int, padding: int, dilation: int, *, affine: bool = True
    ) -> None:
        super().__init__(
            nn.ReLU(inplace=False),
            nn.Conv2d(c_in, c_in, kernel_size, stride, padding, dilation=dilation, groups=c_in, bias=False),
            nn.Conv2d(c_in, c_out, 1, bias=False),
            nn.BatchNorm2d(c_out, affine=affine),
        )


class SepConv(nn.Sequential):
    """Two stacked :class:`DilConv` with dilation 1 (the first carries the stride)."""

    def __init__(self, c_in: int, c_out: int, kernel_size: int, stride: int, padding: int, *, affine: bool = True) -> None:
        super().__init__(
            DilConv(c_in, c_in, kernel_size, stride, padding, 1, affine=affine),
            DilConv(c_in, c_out, kernel_size, 1, padding, 1, affine=affine),
        )


class Zero(nn.Module):
    """The ``none`` operation: zeros of the (strided) input's shape."""

    def __init__(self, stride: int = 1) -> None:
        super().__init__()
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        return (x if self.stride == 1 else x[:, :, :: self.stride, :: self.stride]).mul(0.0)


class Noise(nn.Module):
    """S4's ``noise`` operation: standard normal noise of the (strided) input's shape.

    Call ``k`` draws from ``derive_generator(seed, k)`` on the CPU, so the noise is the same on any
    device and never touches torch's global RNG; the call count is a buffer, so a checkpoint
    resumes the same noise sequence. The networks give each ``Noise`` its own seed
    (:func:`seed_noise`).

    Args:
        stride: spatial stride (2 on a reduction cell's input edges).
        seed: seed of the noise stream.
    """

    def __init__(self, stride: int = 1, seed: int = 0) -> None:
        super().__init__()
        self.stride = stride
        self.seed = seed
        self.register_buffer("calls", torch.zeros((), dtype=torch.long))

    def forward(self, x: Tensor) -> Tensor:
        shape = x[:, :, :: self.stride, :: self.stride].shape
        noise = torch.randn(shape, generator=derive_generator(self.seed, int(self.calls)), dtype=x.dtype)
        self.calls += 1
        return noise.to(x.device)


def seed_noise(module: nn.Module, seed: int) -> None:
    """Give every :class:`Noise` in ``module`` its own stream: the ``k``-th (module order) gets ``derive_seed(seed, k)``."""
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"`noise_seed` must be a non-negative int, got {seed!r}")
    for k, noise in enumerate(m for m in module.modules() if isinstance(m, Noise)):
        noise.seed = derive_seed(seed, k)


class FactorizedReduce(nn.Module):
    """Halves the resolution without losing pixels: two offset stride-2 1×1 convolutions, concatenated."""

    def __init__(self, c_in: int, c_out: int, *, affine: bool = True) -> None:
        super().__init__()
        if c_out % 2:
            raise ValueError(f"FactorizedReduce needs an even `c_out`, got {c_out}")
        self.relu = nn.ReLU(inplace=False)
        self.conv_1 = nn.Conv2d(c_in, c_out // 2, 1, stride=2, bias=False)
        self.conv_2 = nn.Conv2d(c_in, c_out // 2, 1, stride=2, bias=False)
        self.bn = nn.BatchNorm2d(c_out, affine=affine)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(x)
        # Pad odd sizes so both branches keep ceil(H / 2) rows.
        shifted = nn.functional.pad(x[:, :, 1:, 1:], (0, 1, 0, 1))
        return self.bn(torch.cat([self.conv_1(x), self.conv_2(shifted)], dim=1))


def _pool(kind: str, c: int, stride: int, affine: bool, bn_after: bool) -> nn.Module:
    pool = (
        nn.MaxPool2d(3, stride=stride, padding=1)
        if kind == "max"
        else nn.AvgPool2d(3, stride=stride, padding=1, count_include_pad=False)
    )
    # The search network normalises pooled features so they mix on the conv ops' scale.
    return nn.Sequential(pool, nn.BatchNorm2d(c, affine=False)) if bn_after else pool


#: ``name -> factory(channels, stride, affine, search)``; ``search`` adds DARTS's BatchNorm after pooling.
OPS: dict[str, Callable[[int, int, bool, bool], nn.Module]] = {
    "none": lambda c, stride, affine, search: Zero(stride),
    "noise": lambda c, stride, affine, search: Noise(stride),
    "skip_connect": lambda c, stride, affine, search: (
        nn.Identity() if stride == 1 else FactorizedReduce(c, c, affine=affine)
    ),
    "max_pool_3x3": lambda c, stride, affine, search: _pool("max", c, stride, affine, search),
    "avg_pool_3x3": lambda c, stride, affine, search: _pool("avg", c, stride, affine, search),
    "sep_conv_3x3": lambda c, stride, affine, search: SepConv(c, c, 3, stride, 1, affine=affine),
    "sep_conv_5x5": lambda c, stride, affine, search: SepConv(c, c, 5, stride, 2, affine=affine),
    "dil_conv_3x3": lambda c, stride, affine, search: DilConv(c, c, 3, stride, 2, 2, affine=affine),
    "dil_conv_5x5": lambda c, stride, affine, search: DilConv(c, c, 5, stride, 4, 2, affine=affine),
}


def _check_ops(ops: Sequence[str], where: str) -> tuple[str, ...]:
    ops = tuple(ops)
    unknown = [op for op in ops if op not in OPS]
    if not ops or unknown or len(set(ops)) != len(ops):
        raise ValueError(f"{where} must be distinct operations from {sorted(OPS)}, got {list(ops)!r}")
    return ops


# -- genotypes -------------------------------------------------------------------------------
class Genotype(NamedTuple):
    """DARTS's architecture format: 2 ``(op, source_node)`` pairs per intermediate node, per cell kind."""

    normal: list[tuple[str, int]]
    normal_concat: list[int]
    reduce: list[tuple[str, int]]
    reduce_concat: list[int]


#: The DARTS (second order) cell from the DARTS paper, 2.76 % CIFAR-10 error at 20 cells × 36 channels.
DARTS_V2 = Genotype(
    normal=[("sep_conv_3x3", 0), ("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("sep_conv_3x3", 1), ("sep_conv_3x3", 1),
            ("skip_connect", 0), ("skip_connect", 0), ("dil_conv_3x3", 2)],
    normal_concat=[2, 3, 4, 5],
    reduce=[("max_pool_3x3", 0), ("max_pool_3x3", 1), ("skip_connect", 2), ("max_pool_3x3", 1), ("max_pool_3x3", 0),
            ("skip_connect", 2), ("skip_connect", 2), ("max_pool_3x3", 1)],
    reduce_concat=[2, 3, 4, 5],
)


def darts_edges() -> list[tuple[int, int]]:
    """The 14 edges ``(node, source)`` of a DARTS cell, node by node."""
    return [(j, i) for j in _INTERMEDIATE for i in range(j)]


def darts_genotype(arch: Mapping[str, Any]) -> Genotype:
    """The genotype of a DARTS-space architecture: for each node its 2 chosen sources and their ops.

    Raises:
        ValueError: when a label of the DARTS space is missing.
    """
    cells = {}
    for kind in _KINDS:
        pairs = []
        for j in _INTERMEDIATE:
            try:
                sources = sorted(arch[f"{kind}.node_{j}"])
                pairs += [(arch[f"{kind}.edge_{j}_{i}"], int(i)) for i in sources]
            except KeyError as err:
                raise ValueError(f"`arch` is not a DARTS-space architecture: label {err.args[0]!r} is missing") from None
        cells[kind] = pairs
    return Genotype(cells["normal"], list(_INTERMEDIATE), cells["reduce"], list(_INTERMEDIATE))


def darts_arch(genotype: Genotype, *, default_op: str = "skip_connect") -> dict[str, Any]:
    """The architecture dict of a genotype; edges the genotype does not use get ``default_op``.

    Inverse of :func:`darts_genotype` on the chosen edges (``darts_genotype(darts_arch(g)) == g`` up
    to the order of each node's two pairs, which is by source).

    Raises:
        ValueError: when a node does not have exactly 2 distinct earlier sources.
    """
    if not all(hasattr(genotype, kind) for kind in _KINDS):
        raise ValueError(f"`genotype` must be a Genotype (fields {list(Genotype._fields)}), got {type(genotype).__name__} {genotype!r}")
    arch: dict[str, Any] = {}
    for kind in _KINDS:
        pairs = list(getattr(genotype, kind))
        if len(pairs) != 2 * len(_INTERMEDIATE):
            raise ValueError(f"genotype.{kind} must list 8 (op, source) pairs (2 per node), got {len(pairs)}")
        for k, pair in enumerate(pairs):
            if (not isinstance(pair, (tuple, list)) or len(pair) != 2 or not isinstance(pair[0], str)
                    or isinstance(pair[1], bool) or not isinstance(pair[1], int)):
                raise ValueError(f"genotype.{kind}[{k}] must be an (op name, source node int) pair, got {pair!r}")
        for n, j in enumerate(_INTERMEDIATE):
            chosen = dict((int(src), op) for op, src in pairs[2 * n : 2 * n + 2])
            if len(chosen) != 2 or not all(0 <= s < j for s in chosen):
                raise ValueError(f"genotype.{kind}: node {j} needs 2 distinct sources in [0, {j}), got {pairs[2 * n: 2 * n + 2]}")
            for i in range(j):
                arch[f"{kind}.edge_{j}_{i}"] = chosen.get(i, default_op)
            arch[f"{kind}.node_{j}"] = tuple(sorted(chosen))
    return arch


# -- search network --------------------------------------------------------------------------
class _StaticNode(nn.Module):
    """An exported :class:`CellNode`: sums its chosen edges only."""

    def __init__(self, sources: list[int], edges: list[nn.Module]) -> None:
        super().__init__()
        self.sources = list(sources)
        self.edges = nn.ModuleList(edges)

    def forward(self, states: list[Tensor]) -> Tensor:
        out = self.edges[0](states[self.sources[0]])
        for source, edge in zip(self.sources[1:], self.edges[1:]):
            out = out + edge(states[source])
        return out


class CellNode(Mutable):
    """Intermediate node ``j`` of a DARTS cell: one op per earlier node, 2 of them summed.

    Only the chosen edges run (and only they are exported); under a relaxation of the
    :class:`InputChoice` or with one architecture per example, every edge runs and the input
    choice mixes them.

    Shapes: ``states`` is a list of ``j`` tensors ``(B, C, H, W)`` (the inputs may have ``2H × 2W``
    in a reduction cell); the output is ``(B, C, H', W')``.
    """

    def __init__(self, edges: Sequence[OpChoice], inputs: InputChoice) -> None:
        super().__init__()
        self.edges = nn.ModuleList(edges)
        self.inputs = inputs

    def forward(self, states: list[Tensor]) -> Tensor:
        choice = self.inputs.choice
        if self.inputs.relaxation is None and (choice.example_indices() is None or choice.uniform_index() is not None):
            value = choice.values[choice.uniform_index()]
            return _sum_edges(self.edges, states, self.inputs.chosen(value))
        return self.inputs([edge(state) for edge, state in zip(self.edges, states)])

    def freeze(self, arch: dict[str, Any], export_child) -> nn.Module:
        sources = self.inputs.chosen(self.inputs.choice.values[self.inputs.choice.index_of(arch[self.inputs.label])])
        return _StaticNode(sources, [export_child(self.edges[i]) for i in sources])


def _sum_edges(edges: nn.ModuleList, states: list[Tensor], sources: list[int]) -> Tensor:
    out = edges[sources[0]](states[sources[0]])
    for i in sources[1:]:
        out = out + edges[i](states[i])
    return out


class DartsCell(nn.Module):
    """A searchable DARTS cell (normal or reduction) whose decisions are shared by its kind.

    Args:
        c_prev_prev: channels of input node 0 (the cell two back).
        c_prev: channels of input node 1 (the previous cell).
        channels: channels of every node in this cell; the output has ``4 * channels``.
        reduction: a reduction cell (stride 2 on the edges from the input nodes).
        reduction_prev: the previous cell reduced, so input node 0 is reduced here.
        edge_ops: ``(kind, node, source) -> operations`` of that edge.
        affine: affine BatchNorm inside the cell (DARTS searches without).

    Shapes: ``(s0, s1) -> (B, 4 * channels, H', W')``.
    """

    def __init__(
        self,
        c_prev_prev: int,
        c_prev: int,
        channels: int,
        *,
        reduction: bool,
        reduction_prev: bool,
        edge_ops: Callable[[str, int, int], Sequence[str]],
        affine: bool = False,
    ) -> None:
        super().__init__()
        self.reduction = reduction
        self.kind = kind = "reduce" if reduction else "normal"
        self.preprocess0 = (
            FactorizedReduce(c_prev_prev, channels, affine=affine)
            if reduction_prev
            else ReLUConvBN(c_prev_prev, channels, 1, 1, 0, affine=affine)
        )
        self.preprocess1 = ReLUConvBN(c_prev, channels, 1, 1, 0, affine=affine)
        nodes = []
        for j in _INTERMEDIATE:
            edges = []
            for i in range(j):
                stride = 2 if reduction and i < 2 else 1
                ops = _check_ops(edge_ops(kind, j, i), f"operations of {kind} edge {i}->{j}")
                # Fixed-width elastic norms: with static shapes an edge runs every candidate on every
                # row, each norm's statistics over its own rows (exported as plain nn.BatchNorm2d).
                candidates = {op: elastic_batch_norms(OPS[op](channels, stride, affine, True)) for op in ops}
                edges.append(OpChoice(candidates, f"{kind}.edge_{j}_{i}"))
            nodes.append(CellNode(edges, InputChoice(j, 2, f"{kind}.node_{j}")))
        self.nodes = nn.ModuleList(nodes)

    def forward(self, s0: Tensor, s1: Tensor) -> Tensor:
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        for node in self.nodes:
            states.append(node(states))
        return torch.cat(states[2:], dim=1)


def _build_cell_stack(net: nn.Module, make_cell, channels: int, layers: int, num_classes: int, in_chans: int,
                      stem_multiplier: int) -> None:
    """DARTS's macro structure on ``net``: a ``stem_multiplier·C`` conv stem, ``layers`` cells from
    ``make_cell(c_pp, c_p, c, reduction, reduction_prev) -> (cell, out_channels)`` with channels doubled
    at the reductions (1/3 and 2/3 of the depth), global pooling and a linear classifier."""
    c_curr = stem_multiplier * channels
    net.stem = nn.Sequential(nn.Conv2d(in_chans, c_curr, 3, padding=1, bias=False), nn.BatchNorm2d(c_curr))
    c_pp, c_p, c_curr = c_curr, c_curr, channels
    cells, reduction_prev = [], False
    for index in range(layers):
        reduction = index in _reduction_positions(layers)
        c_curr = c_curr * 2 if reduction else c_curr
        cell, out_channels = make_cell(c_pp, c_p, c_curr, reduction, reduction_prev)
        cells.append(cell)
        reduction_prev = reduction
        c_pp, c_p = c_p, out_channels
    net.cells = nn.ModuleList(cells)
    net.global_pooling = nn.AdaptiveAvgPool2d(1)
    net.classifier = nn.Linear(c_p, num_classes)


def _cell_stack_forward(self: nn.Module, x: Tensor) -> Tensor:
    """``(B, in_chans, H, W) -> (B, num_classes)``: each cell takes the two previous states."""
    s0 = s1 = self.stem(x)
    for cell in self.cells:
        s0, s1 = s1, cell(s0, s1)
    return self.classifier(self.global_pooling(s1).flatten(1))


class DartsSearchNetwork(nn.Module):
    """The DARTS search network: 3C stem, ``layers`` cells (reductions at 1/3 and 2/3), linear head.

    Args:
        edge_ops: ``(kind, node, source) -> operations`` of each edge.
        channels: initial cell channels ``C`` (doubled at each reduction).
        layers: number of cells.
        num_classes: classifier outputs.
        in_chans: image channels.
        stem_multiplier: the stem outputs ``stem_multiplier * C`` channels.
        affine: affine BatchNorm in the cells.
        noise_seed: seed of the ``noise`` operations' streams (S4; see :func:`seed_noise`).

    Shapes: ``(B, in_chans, H, W) -> (B, num_classes)``.
    """

    def __init__(
        self,
        edge_ops: Callable[[str, int, int], Sequence[str]],
        *,
        channels: int = 16,
        layers: int = 8,
        num_classes: int = 10,
        in_chans: int = 3,
        stem_multiplier: int = 3,
        affine: bool = False,
        noise_seed: int = 0,
    ) -> None:
        super().__init__()
        _check_sizes(channels=channels, layers=layers, num_classes=num_classes, in_chans=in_chans, stem_multiplier=stem_multiplier)
        def make_cell(c_pp: int, c_p: int, c: int, reduction: bool, reduction_prev: bool) -> tuple[nn.Module, int]:
            cell = DartsCell(c_pp, c_p, c, reduction=reduction, reduction_prev=reduction_prev, edge_ops=edge_ops, affine=affine)
            return cell, 4 * c

        _build_cell_stack(self, make_cell, channels, layers, num_classes, in_chans, stem_multiplier)
        seed_noise(self, noise_seed)

    forward = _cell_stack_forward


def _reduction_positions(layers: int) -> set[int]:
    return {layers // 3, 2 * layers // 3}


def _check_sizes(**sizes: int) -> None:
    for name, value in sizes.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"`{name}` must be a positive int, got {value!r}")
    if sizes.get("layers", 3) < 3:
        raise ValueError(f"`layers` must be at least 3 (two reduction cells and a normal one), got {sizes['layers']}")


@register_space("darts")
def darts_supernet(
    *,
    ops: Sequence[str] = DARTS_OPS,
    channels: int = 16,
    layers: int = 8,
    num_classes: int = 10,
    in_chans: int = 3,
    noise_seed: int = 0,
) -> Supernet:
    """The DARTS search supernet: ``ops`` on all 14 edges of both cell kinds (default: 7 ops, no ``none``).

    Pass ``ops=DARTS_OPS_WITH_NONE`` for the original paper's set. Defaults are the search setting
    (8 cells, 16 channels).
    """
    ops = _check_ops(ops, "`ops`")
    return Supernet(
        DartsSearchNetwork(
            lambda kind, j, i: ops, channels=channels, layers=layers, num_classes=num_classes, in_chans=in_chans, noise_seed=noise_seed
        )
    )


@register_space("darts_s1_s4")
def robustness_supernet(
    space: str,
    *,
    edge_ops: Mapping[str, Sequence[str]] | None = None,
    channels: int = 16,
    layers: int = 8,
    num_classes: int = 10,
    in_chans: int = 3,
    noise_seed: int = 0,
) -> Supernet:
    """One of the robustness spaces S1–S4 (Zela et al., as in the thesis) on the DARTS search network.

    ``"s2"``: {skip_connect, sep_conv_3x3}; ``"s3"``: adds ``none``; ``"s4"``: {noise, sep_conv_3x3},
    on every edge (``noise_seed`` seeds the noise, see :func:`seed_noise`). ``"s1"`` has its own
    pair of operations on each edge: pass them as ``edge_ops``,
    ``{"normal.edge_2_0": ("sep_conv_3x3", "skip_connect"), ...}`` for all 28 edge labels (S1 is
    derived from a DARTS run's two strongest ops per edge, so it is data, not a fixed rule).

    Raises:
        ValueError: for an unknown space, or S1 without a complete ``edge_ops``.
    """
    fixed = {"s2": S2_OPS, "s3": S3_OPS, "s4": S4_OPS}
    if space == "s1":
        labels = [f"{kind}.edge_{j}_{i}" for kind in _KINDS for j, i in darts_edges()]
        missing = [label for label in labels if edge_ops is None or label not in edge_ops]
        if missing:
            raise ValueError(f"space 's1' needs `edge_ops` for every edge label; missing {missing}")
        unexpected = sorted(set(edge_ops) - set(labels))
        if unexpected:
            raise ValueError(f"`edge_ops` has labels that are not DARTS edges: {unexpected}")
        table = {label: _check_ops(edge_ops[label], f"`edge_ops[{label!r}]`") for label in labels}
        choose = lambda kind, j, i: table[f"{kind}.edge_{j}_{i}"]  # noqa: E731
    elif space in fixed:
        if edge_ops is not None:
            raise ValueError(f"`edge_ops` is only for space 's1'; space {space!r} has {list(fixed[space])} on every edge")
        choose = lambda kind, j, i: fixed[space]  # noqa: E731
    else:
        raise ValueError(f"`space` must be one of ['s1', 's2', 's3', 's4'], got {space!r}")
    return Supernet(
        DartsSearchNetwork(
            choose, channels=channels, layers=layers, num_classes=num_classes, in_chans=in_chans, noise_seed=noise_seed
        )
    )


# -- evaluation network ----------------------------------------------------------------------
class _GenotypeCell(nn.Module):
    """A fixed cell of a genotype: 2 ``(op, source)`` edges per intermediate node, affine BatchNorm."""

    def __init__(
        self, pairs: Sequence[tuple[str, int]], concat: Sequence[int], c_pp: int, c_p: int, channels: int,
        *, reduction: bool, reduction_prev: bool,
    ) -> None:
        super().__init__()
        self.preprocess0 = FactorizedReduce(c_pp, channels) if reduction_prev else ReLUConvBN(c_pp, channels, 1, 1, 0)
        self.preprocess1 = ReLUConvBN(c_p, channels, 1, 1, 0)
        self.sources = [int(src) for _, src in pairs]
        self.concat = list(concat)
        self.ops = nn.ModuleList(
            OPS[op](channels, 2 if reduction and src < 2 else 1, True, False) for op, src in pairs
        )

    def forward(self, s0: Tensor, s1: Tensor) -> Tensor:
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        for n in range(len(self.ops) // 2):
            a, b = 2 * n, 2 * n + 1
            states.append(self.ops[a](states[self.sources[a]]) + self.ops[b](states[self.sources[b]]))
        return torch.cat([states[i] for i in self.concat], dim=1)


class DartsNetwork(nn.Module):
    """The DARTS evaluation network of a genotype (CIFAR setting, no auxiliary head, no drop-path).

    Args:
        genotype: the cells; sources index the cell's nodes (0, 1: inputs; 2–5: intermediates).
        channels: initial channels (36 in DARTS's evaluation).
        layers: cells (20 in DARTS's evaluation); reductions at 1/3 and 2/3.
        num_classes: as in :class:`DartsSearchNetwork`.
        in_chans: as in :class:`DartsSearchNetwork`.
        stem_multiplier: as in :class:`DartsSearchNetwork`.
        noise_seed: as in :class:`DartsSearchNetwork`.

    Shapes: ``(B, in_chans, H, W) -> (B, num_classes)``.
    """

    def __init__(
        self, genotype: Genotype, *, channels: int = 36, layers: int = 20, num_classes: int = 10, in_chans: int = 3,
        stem_multiplier: int = 3, noise_seed: int = 0,
    ) -> None:
        super().__init__()
        _check_sizes(channels=channels, layers=layers, num_classes=num_classes, in_chans=in_chans, stem_multiplier=stem_multiplier)
        darts_arch(genotype)  # validates the genotype's structure
        for kind in _KINDS:
            for op, _ in getattr(genotype, kind):
                if op not in OPS:
                    raise ValueError(f"genotype.{kind} uses unknown operation {op!r}; known: {sorted(OPS)}")
        def make_cell(c_pp: int, c_p: int, c: int, reduction: bool, reduction_prev: bool) -> tuple[nn.Module, int]:
            pairs, concat = (genotype.reduce, genotype.reduce_concat) if reduction else (genotype.normal, genotype.normal_concat)
            return _GenotypeCell(pairs, concat, c_pp, c_p, c, reduction=reduction, reduction_prev=reduction_prev), len(concat) * c

        _build_cell_stack(self, make_cell, channels, layers, num_classes, in_chans, stem_multiplier)
        seed_noise(self, noise_seed)

    forward = _cell_stack_forward
