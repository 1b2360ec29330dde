"""Random small constrained-search instances and a brute-force oracle over ``space.enumerate()``."""

from __future__ import annotations

import types

import numpy as np
import pytest

from lightning_nas.bilinear import BilinearTable
from lightning_nas.spaces import Decision, SearchSpace
from lightning_nas.spaces.staged import StagedSpace

MAX_ARCHS = 3000


def make_space(blocks, num_configs, depth_sets, extra=False) -> SearchSpace:
    """Labels ``stage{s}.block{b}.config`` and ``stage{s}.depth``; a ``None`` depth set means a fixed depth (no label)."""
    decisions = []
    for s, (n, depths) in enumerate(zip(blocks, depth_sets)):
        decisions += [Decision(f"stage{s}.block{b}.config", tuple(f"c{c}" for c in range(num_configs)), "c0") for b in range(n)]
        if depths is not None:
            decisions.append(Decision(f"stage{s}.depth", tuple(depths), depths[-1]))
    if extra:
        decisions.append(Decision("head.width", (8, 16), 16))
    return SearchSpace(decisions)


def space_size(blocks, num_configs, depth_sets) -> int:
    return int(np.prod([num_configs**n * (1 if d is None else len(d)) for n, d in zip(blocks, depth_sets)]))


def random_structure(rng: np.random.Generator):
    """2-3 stages of 1-3 blocks, 2-4 configs, random depth options (some stages fixed, some with blocks that never run)."""
    while True:
        num_stages = int(rng.integers(2, 4))
        blocks = [int(rng.integers(1, 4)) for _ in range(num_stages)]
        num_configs = int(rng.integers(2, 5))
        depth_sets = []
        for n in blocks:
            if rng.random() < 0.2:
                depth_sets.append(None)
                continue
            options = [d for d in range(1, n + 1) if rng.random() < 0.7] or [n]
            depth_sets.append(tuple(options))
        if space_size(blocks, num_configs, depth_sets) <= MAX_ARCHS:
            return blocks, num_configs, depth_sets


def random_table(staged: StagedSpace, rng: np.random.Generator, name: str, kind: str) -> BilinearTable:
    shape = (staged.num_stages, staged.max_blocks, staged.num_configs)
    depth_shape = (staged.num_stages, staged.max_depth_options)
    if kind == "accuracy":
        return BilinearTable(staged, 0.7, rng.normal(0, 5e-3, shape), rng.normal(0, 5e-3, depth_shape), name=name, unit="fraction")
    # Resources: positive block costs and small (possibly negative) depth terms, like a latency LUT.
    return BilinearTable(staged, rng.uniform(1, 3), rng.uniform(0.2, 2.0, shape), rng.uniform(-0.2, 0.3, depth_shape), name=name, unit="ms")


def random_instance(seed: int, num_resources: int = 1, extra: bool = False):
    rng = np.random.default_rng(seed)
    blocks, num_configs, depth_sets = random_structure(rng)
    space = make_space(blocks, num_configs, depth_sets, extra=extra)
    staged = StagedSpace.from_space(space)
    objective = random_table(staged, rng, "accuracy", "accuracy")
    resources = [random_table(staged, rng, name, "resource") for name in ("latency", "flops", "energy")[:num_resources]]
    return space, staged, objective, resources, rng


def brute_value(table: BilinearTable, arch) -> float:
    """Independent evaluation of a table on an arch dict, by the definition."""
    total = table.constant
    for s, stage in enumerate(table.staged.stages):
        depth = stage.depths[-1] if stage.depth_label is None else arch[stage.depth_label]
        total += table.depth[s, stage.depths.index(depth)]
        for b in range(depth):
            c = stage.configs[b].index(tuple(arch[lab] for lab in stage.block_labels[b]))
            total += table.block[s, b, c]
    return total


def enumerate_values(space: SearchSpace, tables):
    """All archs of the space and an ``(N, len(tables))`` array of their values."""
    archs = list(space.enumerate())
    return archs, np.array([[brute_value(t, a) for t in tables] for a in archs])


def midpoint_limit(values: np.ndarray, q: float) -> float | None:
    """A bound half-way between two consecutive distinct achievable values (so no arch sits on it),
    at quantile ``q``; ``None`` when all values coincide."""
    distinct = np.unique(values)
    # Gaps far wider than the solvers' feasibility tolerance (1e-7), so "feasible" is unambiguous.
    gaps = np.flatnonzero(np.diff(distinct) > 1e-5)
    if len(gaps) == 0:
        return None
    i = gaps[np.argmin(np.abs(gaps - q * (len(distinct) - 1)))]
    return float((distinct[i] + distinct[i + 1]) / 2)


def measured_truth(table: BilinearTable, seed: int, scale: float = 0.05, stream: int = 1):
    """A 'real' measurement: ``table`` plus an arch-dependent error of ``-scale`` to ``2 * scale`` of each
    block's value (a model that under-predicts more often than it over-predicts): ``arch -> value``."""
    rng = np.random.default_rng(seed + stream)
    error = BilinearTable(table.staged, 0.0, table.block * rng.uniform(-scale, 2 * scale, table.block.shape), name=table.name, unit=table.unit)
    return lambda arch: brute_value(table, arch) + brute_value(error, arch)


@pytest.fixture(scope="session")
def inst():
    """The helpers above, for tests (pytest's importlib mode does not import sibling modules)."""
    return types.SimpleNamespace(
        make_space=make_space,
        random_instance=random_instance,
        random_table=random_table,
        brute_value=brute_value,
        enumerate_values=enumerate_values,
        midpoint_limit=midpoint_limit,
        measured_truth=measured_truth,
    )
