"""NAS-Bench-201 cell space: labels, architecture strings and enumeration.

A NB201 cell has 4 nodes; node ``j`` sums one operation per earlier node ``i < j``, so 6 edges, each
one of 5 operations (15,625 cells). Every cell of the network shares one genotype, so an architecture
is a dict of 6 decisions ``{"edge_{j}_{i}": op}``, in the order of the NB201 string
``|op~0|+|op~0|op~1|+|op~0|op~1|op~2|`` (edges 1←0, 2←0, 2←1, 3←0, 3←1, 3←2).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Mapping
from typing import Any

from lightning_nas.spaces.search_space import Decision, SearchSpace

__all__ = [
    "NB201_EDGES",
    "NB201_LABELS",
    "NB201_OPS",
    "nb201_all_archs",
    "nb201_from_op_code",
    "nb201_from_string",
    "nb201_op_code",
    "nb201_search_space",
    "nb201_string",
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
