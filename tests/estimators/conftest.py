"""A synthetic supernet with a known accuracy for every architecture, and exact conditional means.

``OracleNet`` reads its per-example architecture from the supernet's choices and answers class 1
exactly when the example's input ``u ~ U(0, 1)`` is below ``p(arch)``; labels are all 1. So an
example is correct with probability ``p(arch)``, and every conditional expectation of the accuracy
is an average of ``p`` over the architectures satisfying the condition (computed by enumeration).

Test space (labels ``stage{s}.block{b}.*``), chosen to hit every conditioning rule:

* stage 0: 3 blocks of two decisions (``op`` ∈ {a, b} × ``k`` ∈ {3, 5}: 4 configs), depths {2, 3}:
  block 1 is below every depth (config only), blocks 2 and 3 are depth options;
* stage 1: 3 blocks of one decision (``op`` ∈ {a, b, c, d}), depths {1, 3}: block 1 is a depth
  option although always active, block 2 lies between options (conditions on depth 3);
* a free decision ``head.width`` that does not affect the output.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import lightning_nas as ln
from lightning_nas.estimators import StagedIndexer
from lightning_nas.spaces.staged import StagedSpace

DEPTHS = ((2, 3), (1, 3))
# Per block, the depth value its gain conditions on (None: config only), written out by hand.
EXPECTED_CONDITION = {(0, 0): None, (0, 1): 2, (0, 2): 3, (1, 0): 1, (1, 1): 3, (1, 2): 3}


class OracleNet(nn.Module):
    def __init__(self, truth) -> None:
        super().__init__()
        choices = {}
        for b in range(3):
            choices[f"s0b{b}op"] = ln.Choice(["a", "b"], f"stage0.block{b}.op")
            choices[f"s0b{b}k"] = ln.Choice([3, 5], f"stage0.block{b}.k")
        choices["s0d"] = ln.Choice(list(DEPTHS[0]), "stage0.depth")
        for b in range(3):
            choices[f"s1b{b}op"] = ln.Choice(["a", "b", "c", "d"], f"stage1.block{b}.op")
        choices["s1d"] = ln.Choice(list(DEPTHS[1]), "stage1.depth")
        choices["head"] = ln.Choice([8, 16], "head.width")
        self.choices = nn.ModuleDict(choices)
        self.truth = truth  # (configs (N,S,D), depths (N,S)) -> p (N,)
        self.indexer: StagedIndexer | None = None
        self.calls = self.examples = 0
        self.register_buffer("anchor", torch.zeros(()))  # a buffer so the device can be found

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        n = u.shape[0]
        indices = {}
        for choice in self.choices.values():
            idx = choice.example_indices()
            indices[choice.label] = idx if idx is not None else torch.full((n,), choice.index_of(choice.value))
        p = torch.as_tensor(self.truth(*self.indexer.to_staged(indices)), dtype=torch.float32)
        self.calls += 1
        self.examples += n
        score = torch.where(u[:, 0] < p, 1.0, -1.0)
        return torch.stack([torch.zeros_like(score), score], dim=1)


def random_truth(staged: StagedSpace, seed: int, interaction: float = 0.05):
    """A non-additive accuracy in (0.1, 0.9): additive terms plus an interaction between stages."""
    rng = np.random.default_rng(seed)
    block = rng.normal(0, 0.04, size=(staged.num_stages, staged.max_blocks, staged.num_configs))
    depth = rng.normal(0, 0.08, size=(staged.num_stages, staged.max_depth_options))
    pair = rng.normal(0, interaction, size=(staged.num_configs, staged.num_configs))

    def truth(configs, depths):
        configs, depths = np.asarray(configs), np.asarray(depths)
        active = staged.active(depths)
        value = 0.5 + np.take_along_axis(np.broadcast_to(depth, depths.shape + depth.shape[-1:]), depths[..., None], -1)[..., 0].sum(-1)
        per_block = np.take_along_axis(np.broadcast_to(block, configs.shape + block.shape[-1:]), configs[..., None], -1)[..., 0]
        value = value + np.where(active, per_block, 0.0).sum((-2, -1))
        value = value + pair[configs[..., 0, 0], configs[..., 1, 0]]  # first blocks interact
        return np.clip(value, 0.1, 0.9)

    return truth


def enumerate_staged(staged: StagedSpace) -> tuple[np.ndarray, np.ndarray]:
    """Every (configs, depths) combination of the test space: ``(M, S, D)`` and ``(M, S)``."""
    rows_c, rows_d = [], []
    per_stage = []
    for st in staged.stages:
        per_stage.append(list(itertools.product(*([range(staged.num_configs)] * st.num_blocks), range(len(st.depths)))))
    for combo in itertools.product(*per_stage):
        rows_c.append([list(c[:-1]) for c in combo])
        rows_d.append([c[-1] for c in combo])
    return np.array(rows_c), np.array(rows_d)


def exact_table(staged: StagedSpace, truth) -> dict:
    """Brute-force E[Acc], Δ^s_j and Δ^s_{b,c} under uniform sampling, by the hand-written rule."""
    configs, depths = enumerate_staged(staged)
    p = truth(configs, depths)
    base = p.mean()
    depth_values = np.array([[staged.stages[s].depths[j] for s, j in enumerate(row)] for row in depths])
    depth_gain = np.zeros((staged.num_stages, staged.max_depth_options))
    for s, st in enumerate(staged.stages):
        for j, d in enumerate(st.depths):
            depth_gain[s, j] = p[depth_values[:, s] == d].mean() - base
    block_gain = np.zeros((staged.num_stages, staged.max_blocks, staged.num_configs))
    for (s, b), d in EXPECTED_CONDITION.items():
        for c in range(staged.num_configs):
            rows = configs[:, s, b] == c
            if d is not None:
                rows &= depth_values[:, s] == d
            block_gain[s, b, c] = p[rows].mean() - base
    return {"base": base, "depth": depth_gain, "block": block_gain, "configs": configs, "depths": depths, "p": p}


class Oracle:
    def __init__(self, seed: int = 0) -> None:
        self.net = OracleNet(None)
        self.supernet = ln.Supernet(self.net)
        self.staged = StagedSpace.from_space(self.supernet.space)
        self.net.indexer = StagedIndexer(self.staged)
        self.truth = random_truth(self.staged, seed)
        self.net.truth = self.truth
        self.exact = exact_table(self.staged, self.truth)

    def loader(self, n: int, batch_size: int, seed: int = 0) -> DataLoader:
        u = torch.rand(n, 1, generator=torch.Generator().manual_seed(seed))
        return DataLoader(TensorDataset(u, torch.ones(n, dtype=torch.long)), batch_size=batch_size)


@pytest.fixture(scope="module")
def oracle() -> Oracle:
    return Oracle(0)


@pytest.fixture(scope="module")
def exact_for_seed(oracle):
    """``seed -> (truth, exact)`` for another random accuracy on the oracle's space."""

    def make(seed: int):
        truth = random_truth(oracle.staged, seed)
        return truth, exact_table(oracle.staged, truth)

    return make


@pytest.fixture(scope="module")
def make_oracle():
    return Oracle
