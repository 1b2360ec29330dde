"""NAS-Bench-201 cell space: labels, architecture strings, enumeration and the searchable network.

A NB201 cell has 4 nodes; node ``j`` sums one operation per earlier node ``i < j``, so 6 edges, each
one of 5 operations (15,625 cells). Every cell of the network shares one genotype, so an architecture
is a dict of 6 decisions ``{"edge_{j}_{i}": op}``, in the order of the NB201 string
``|op~0|+|op~0|op~1|+|op~0|op~1|op~2|`` (edges 1←0, 2←0, 2←1, 3←0, 3←1, 3←2).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from torch import Tensor, nn

from lightning_nas.nn.norm import elastic_batch_norms
from lightning_nas.nn.op_choice import OpChoice
from lightning_nas.spaces.darts import ReLUConvBN, Zero
from lightning_nas.spaces.registry import register_space
from lightning_nas.spaces.search_space import Decision, SearchSpace
from lightning_nas.supernet import Supernet

__all__ = [
    "NB201Cell",
    "NB201Network",
    "NB201_EDGES",
    "NB201_LABELS",
    "NB201_OPS",
    "nb201_all_archs",
    "nb201_from_op_code",
    "nb201_from_genotype",
    "nb201_from_string",
    "nb201_genotype",
    "nb201_op_code",
    "nb201_search_space",
    "nb201_string",
    "nb201_supernet",
    "ResidualReduction",
]

#: Operations in NB201's order; ``op_code`` digits index this tuple.
NB201_OPS: tuple[str, ...] = ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")
#: ``(to_node, from_node)`` of each edge, in arch-string order.
NB201_EDGES: tuple[tuple[int, int], ...] = ((1, 0), (2, 0), (2, 1), (3, 0), (3, 1), (3, 2))
NB201_LABELS: tuple[str, ...] = tuple(f"edge_{j}_{i}" for j, i in NB201_EDGES)


def nb201_search_space() -> SearchSpace:
    """The 6 edge decisions, 5 operations each (default ``nor_conv_3x3``)."""
    return SearchSpace([Decision(label, NB201_OPS, "nor_conv_3x3") for label in NB201_LABELS])


def _ops(arch: Mapping[str, Any]) -> list[str]:
    missing = [label for label in NB201_LABELS if label not in arch]
    extra = sorted(set(arch) - set(NB201_LABELS))
    if missing or extra:
        raise ValueError(f"a NB201 arch needs exactly the labels {list(NB201_LABELS)}; missing {missing}, unexpected {extra}")
    ops = [arch[label] for label in NB201_LABELS]
    bad = {label: op for label, op in zip(NB201_LABELS, ops) if op not in NB201_OPS}
    if bad:
        raise ValueError(f"unknown NB201 operations {bad}; allowed: {list(NB201_OPS)}")
    return ops


def nb201_string(arch: Mapping[str, Any]) -> str:
    """``{"edge_1_0": "nor_conv_3x3", ...}`` → ``"|nor_conv_3x3~0|+|…|"``."""
    ops = dict(zip(NB201_EDGES, _ops(arch)))
    nodes = ["|" + "|".join(f"{ops[(j, i)]}~{i}" for i in range(j)) + "|" for j in (1, 2, 3)]
    return "+".join(nodes)


def nb201_from_string(text: str) -> dict[str, str]:
    """Inverse of :func:`nb201_string`; a clear ``ValueError`` for a malformed string."""
    nodes = text.strip().split("+")
    arch: dict[str, str] = {}
    if len(nodes) != 3:
        raise ValueError(f"a NB201 string has 3 '+'-separated nodes, got {len(nodes)} in {text!r}")
    for j, node in enumerate(nodes, start=1):
        entries = [e for e in node.split("|") if e]
        if len(entries) != j:
            raise ValueError(f"node {j} of NB201 string {text!r} must have {j} entries 'op~input', got {entries}")
        for entry in entries:
            op, _, source = entry.partition("~")
            if not source.isdigit() or int(source) >= j:
                raise ValueError(f"bad entry {entry!r} in node {j} of {text!r}: expected 'op~i' with i < {j}")
            arch[f"edge_{j}_{int(source)}"] = op
    _ops(arch)
    return {label: arch[label] for label in NB201_LABELS}


def nb201_op_code(arch: Mapping[str, Any]) -> str:
    """6 digits, one per edge in string order (``none=0 … avg_pool_3x3=4``), e.g. ``"334131"``."""
    return "".join(str(NB201_OPS.index(op)) for op in _ops(arch))


def nb201_from_op_code(code: str | int) -> dict[str, str]:
    """Inverse of :func:`nb201_op_code`; an int is zero-padded to 6 digits."""
    text = f"{code:06d}" if isinstance(code, int) else str(code)
    if len(text) != 6 or any(c not in "01234" for c in text):
        raise ValueError(f"a NB201 op code is 6 digits in 0–4, got {code!r}")
    return {label: NB201_OPS[int(c)] for label, c in zip(NB201_LABELS, text)}


def nb201_all_archs() -> Iterator[dict[str, str]]:
    """All 15,625 cells, in op-code order (``000000``, ``000001``, …)."""
    for ops in itertools.product(NB201_OPS, repeat=len(NB201_LABELS)):
        yield dict(zip(NB201_LABELS, ops))


def nb201_genotype(arch: Mapping[str, Any]) -> tuple[tuple[tuple[str, int], ...], ...]:
    """NB201's genotype form: per node 1–3, its ``(op, source)`` pairs, e.g. ``((("nor_conv_3x3", 0),), ...)``."""
    ops = dict(zip(NB201_EDGES, _ops(arch)))
    return tuple(tuple((ops[(j, i)], i) for i in range(j)) for j in (1, 2, 3))


def nb201_from_genotype(genotype: Sequence[Sequence[Sequence[Any]]]) -> dict[str, str]:
    """Inverse of :func:`nb201_genotype`; a clear ``ValueError`` for a malformed genotype."""
    if len(genotype) != 3:
        raise ValueError(f"a NB201 genotype has 3 nodes, got {len(genotype)}: {genotype!r}")
    arch: dict[str, str] = {}
    for j, node in enumerate(genotype, start=1):
        sources = sorted(int(source) for _, source in node)
        if sources != list(range(j)):
            raise ValueError(f"node {j} of a NB201 genotype needs one (op, source) per source 0..{j - 1}, got {node!r}")
        arch.update({f"edge_{j}_{int(source)}": op for op, source in node})
    _ops(arch)
    return {label: arch[label] for label in NB201_LABELS}


# -- the network -----------------------------------------------------------------------------
def _nb201_candidates(channels: int, affine: bool) -> dict[str, nn.Module]:
    # Elastic (fixed-width) norms: with static shapes an edge runs every candidate on every row,
    # each norm's statistics over its own rows (exported as plain nn.BatchNorm2d).
    return {
        "none": Zero(),
        "skip_connect": nn.Identity(),
        "nor_conv_1x1": elastic_batch_norms(ReLUConvBN(channels, channels, 1, 1, 0, affine=affine)),
        "nor_conv_3x3": elastic_batch_norms(ReLUConvBN(channels, channels, 3, 1, 1, affine=affine)),
        "avg_pool_3x3": nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False),
    }


class NB201Cell(nn.Module):
    """A NB201 cell: node ``j`` sums one :class:`~lightning_nas.nn.OpChoice` per earlier node.

    Every cell labels its edges ``edge_{j}_{i}``, so all cells of a network share one genotype.

    Args:
        channels: channels of every node (the cell keeps the shape).
        ops: the candidate operations (a subset of :data:`NB201_OPS`).
        affine: affine BatchNorm in the convolutions (NB201 searches without).

    Shapes: ``(B, channels, H, W) -> (B, channels, H, W)``.
    """

    def __init__(self, channels: int, *, ops: Sequence[str] = NB201_OPS, affine: bool = False) -> None:
        super().__init__()
        unknown = [op for op in ops if op not in NB201_OPS]
        if not ops or unknown:
            raise ValueError(f"`ops` must be a non-empty subset of {list(NB201_OPS)}, got {list(ops)!r}")
        self.edges = nn.ModuleDict(
            {
                label: OpChoice({op: module for op, module in _nb201_candidates(channels, affine).items() if op in ops}, label)
                for label in NB201_LABELS
            }
        )

    def forward(self, x: Tensor) -> Tensor:
        nodes = [x]
        for j in (1, 2, 3):
            out = self.edges[f"edge_{j}_0"](nodes[0])
            for i in range(1, j):
                out = out + self.edges[f"edge_{j}_{i}"](nodes[i])
            nodes.append(out)
        return nodes[3]


class ResidualReduction(nn.Module):
    """NB201's reduction block: two 3×3 ReLU-conv-BN (the first with stride 2) plus a pooled 1×1 shortcut.

    Shapes: ``(B, c_in, H, W) -> (B, c_out, H / 2, W / 2)``.
    """

    def __init__(self, c_in: int, c_out: int, *, affine: bool = True) -> None:
        super().__init__()
        self.conv_a = ReLUConvBN(c_in, c_out, 3, 2, 1, affine=affine)
        self.conv_b = ReLUConvBN(c_out, c_out, 3, 1, 1, affine=affine)
        self.shortcut = nn.Sequential(nn.AvgPool2d(2, stride=2), nn.Conv2d(c_in, c_out, 1, bias=False))

    def forward(self, x: Tensor) -> Tensor:
        return self.conv_b(self.conv_a(x)) + self.shortcut(x)


class NB201Network(nn.Module):
    """NB201's macro skeleton: stem, 3 stages of ``cells_per_stage`` cells, residual reductions, head.

    Args:
        channels: channels of the first stage (doubled by each reduction).
        cells_per_stage: ``N`` (NB201 uses 5).
        num_classes: classifier outputs.
        in_chans: image channels.
        ops: candidate operations on every edge.
        affine: affine BatchNorm inside the cells.

    Shapes: ``(B, in_chans, H, W) -> (B, num_classes)``.
    """

    def __init__(
        self,
        *,
        channels: int = 16,
        cells_per_stage: int = 5,
        num_classes: int = 10,
        in_chans: int = 3,
        ops: Sequence[str] = NB201_OPS,
        affine: bool = False,
    ) -> None:
        super().__init__()
        for name, value in (("channels", channels), ("cells_per_stage", cells_per_stage), ("num_classes", num_classes), ("in_chans", in_chans)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"`{name}` must be a positive int, got {value!r}")
        self.stem = nn.Sequential(nn.Conv2d(in_chans, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels))
        layers: list[nn.Module] = []
        width = channels
        for stage in range(3):
            if stage:
                layers.append(ResidualReduction(width, 2 * width))
                width *= 2
            layers += [NB201Cell(width, ops=ops, affine=affine) for _ in range(cells_per_stage)]
        self.cells = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.BatchNorm2d(width), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.classifier = nn.Linear(width, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.head(self.cells(self.stem(x))))


@register_space("nb201")
def nb201_supernet(
    *,
    channels: int = 16,
    cells_per_stage: int = 5,
    num_classes: int = 10,
    in_chans: int = 3,
    ops: Sequence[str] = NB201_OPS,
    affine: bool = False,
) -> Supernet:
    """The NB201 supernet; its arch dicts have exactly the 6 labels :data:`NB201_LABELS`.

    Defaults are NB201's (16 channels, 5 cells per stage); reduce both to search on a CPU.
    """
    return Supernet(
        NB201Network(
            channels=channels, cells_per_stage=cells_per_stage, num_classes=num_classes, in_chans=in_chans, ops=ops, affine=affine
        )
    )
