"""Contribution estimators: definitions against brute force, recovery of exact Δs, seeding, merging."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lightning_nas.bilinear import BilinearTable
from lightning_nas.estimators import (
    ContributionAccumulator,
    ablate,
    conditioning_depths,
    estimate_contributions,
    estimate_one_pass,
    estimate_paper_protocol,
    paper_protocol_conditionals,
    paper_protocol_passes,
    to_vector_form,
)
from lightning_nas.estimators.contributions import CONFIG_ONLY, NEVER_ACTIVE
from lightning_nas.spaces import Decision, SearchSpace, mobilenet_supernet
from lightning_nas.spaces.staged import StagedSpace


def staged_space(blocks_and_depths, num_configs=2) -> StagedSpace:
    decisions = []
    for s, (blocks, depths) in enumerate(blocks_and_depths):
        decisions += [Decision(f"stage{s}.block{b}.op", tuple(range(num_configs)), 0) for b in range(blocks)]
        if depths is not None:
            decisions.append(Decision(f"stage{s}.depth", tuple(depths), depths[-1]))
    return StagedSpace.from_space(SearchSpace(decisions))


def binas_space() -> StagedSpace:
    decisions = []
    for s in range(5):
        for b in range(4):
            decisions += [
                Decision(f"stage{s}.block{b}.er", (3, 4, 6), 6),
                Decision(f"stage{s}.block{b}.k", (3, 5), 5),
                Decision(f"stage{s}.block{b}.se", (False, True), True),
            ]
        decisions.append(Decision(f"stage{s}.depth", (2, 3, 4), 4))
    return StagedSpace.from_space(SearchSpace(decisions))


# -- the conditioning rule ------------------------------------------------------------------
def test_conditioning_rule_of_the_test_space(oracle):
    cond = conditioning_depths(oracle.staged)
    for (s, b), depth in {(0, 0): None, (0, 1): 2, (0, 2): 3, (1, 0): 1, (1, 1): 3, (1, 2): 3}.items():
        expected = CONFIG_ONLY if depth is None else oracle.staged.stages[s].depths.index(depth)
        assert cond[s, b] == expected, (s, b)


def test_conditioning_rule_edge_cases():
    # depths {2, 4} of 5 blocks: block 3 conditions on depth 4, block 5 never runs; fixed depth: config only.
    cond = conditioning_depths(staged_space([(5, (2, 4)), (3, None), (4, (3,))]))
    assert cond[0].tolist() == [CONFIG_ONLY, 0, 1, 1, NEVER_ACTIVE]
    assert cond[1].tolist()[:3] == [CONFIG_ONLY] * 3 and cond[1, 3:].tolist() == [NEVER_ACTIVE] * 2
    assert cond[2].tolist()[:4] == [CONFIG_ONLY] * 3 + [NEVER_ACTIVE]
    # mobilenet: depths {1, 2}, so the first block conditions on depth 1, as Eq. 3 says.
    mob = StagedSpace.from_space(mobilenet_supernet().space)
    assert conditioning_depths(mob).tolist() == [[0, 1]] * 3


def test_paper_protocol_counts_256_conditionals_on_binas_space():
    staged = binas_space()
    conditionals = paper_protocol_conditionals(staged)
    assert len(conditionals) == 256  # 1 + 5 × (12 first-block + 3 depths × (1 + 12))
    assert paper_protocol_passes(staged, 10) == 2560
    first_block = [c for c in conditionals if c.kind == "block" and c.block == 0]
    assert len(first_block) == 60 and all(c.depth is None for c in first_block)
    assert all(staged.stages[c.stage].depths[c.depth] == c.block + 1 for c in conditionals if c.kind == "block" and c.block > 0)
    with pytest.raises(ValueError, match="passes"):
        paper_protocol_passes(staged, 0)


# -- one-pass definitions == brute-force conditional means -----------------------------------
def accumulate_all(staged, exact, p=None, chunk=4096) -> ContributionAccumulator:
    """An accumulator fed every architecture once, with its exact accuracy as the record."""
    acc = ContributionAccumulator(staged)
    configs, depths = torch.as_tensor(exact["configs"]), torch.as_tensor(exact["depths"])
    p = torch.as_tensor(exact["p"] if p is None else p)
    for start in range(0, len(p), chunk):  # several updates, as batches would come
        acc.update(configs[start : start + chunk], depths[start : start + chunk], p[start : start + chunk])
    return acc


@settings(max_examples=6, deadline=None)
@given(seed=st.integers(0, 10_000))
def test_one_pass_on_every_architecture_equals_brute_force_conditionals(oracle, exact_for_seed, seed):
    _, exact = exact_for_seed(seed)
    table = accumulate_all(oracle.staged, exact).compute()
    assert table.name == "accuracy" and table.unit == "fraction"
    assert table.constant == pytest.approx(exact["base"], abs=1e-12)
    np.testing.assert_allclose(table.depth, exact["depth"], atol=1e-12)
    np.testing.assert_allclose(table.block, exact["block"], atol=1e-12)
    assert table.metadata["examples"] == len(exact["p"]) and table.metadata["missing"] == {"depth": [], "block": []}


def test_table_predicts_eq3(oracle):
    table = accumulate_all(oracle.staged, oracle.exact).compute()
    ex = oracle.exact
    for arch in oracle.supernet.space.sample_many(20, seed=3):
        configs, depths = oracle.staged.indices(arch)
        expected = ex["base"]
        for s, stage in enumerate(oracle.staged.stages):
            expected += ex["depth"][s, depths[s]]
            for b in range(stage.depths[depths[s]]):  # the first d_s blocks, each with its own gain
                expected += ex["block"][s, b, configs[s, b]]
        assert table.predict(arch) == pytest.approx(expected, abs=1e-12)


# -- vector form and ablations ------------------------------------------------------------
@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000))
def test_vector_form_equals_table_and_has_upper_triangular_q(oracle, seed):
    rng = np.random.default_rng(seed)
    staged = oracle.staged
    table = BilinearTable(
        staged, rng.normal(), rng.normal(size=(2, 3, 4)), rng.normal(size=(2, 2)), name="accuracy"
    )
    r, q_alpha, q_beta, Q = to_vector_form(table)
    assert q_alpha.shape == (24,) and q_beta.shape == (4,) and Q.shape == (24, 4)
    for arch in staged.space.sample_many(10, seed=seed):
        alpha, beta = staged.one_hot(arch)
        alpha, beta = alpha.ravel(), beta.ravel()
        assert r + alpha @ q_alpha + beta @ q_beta + alpha @ Q @ beta == pytest.approx(table.predict(arch), abs=1e-9)
    Q4 = Q.reshape(2, 3, 4, 2, 2)
    assert not Q4[0, :, :, 1].any() and not Q4[1, :, :, 0].any()  # no cross-stage entries
    assert not Q4[0, 0].any() and not q_alpha.reshape(2, 3, 4)[0, 1:].any()  # config-only block 1 of stage 0 in q_α
    assert not Q4[1, 1, :, 1, 0].any() and not Q4[1, 2, :, 1, 0].any()  # depth 1 runs no block 2 or 3 (b' >= b)
    np.testing.assert_allclose(Q4[1, 0, :, 1, 0], table.block[1, 0])
    np.testing.assert_allclose(Q4[0, 2, :, 0, 1], table.block[0, 2])


def test_ablations_zero_the_right_terms(oracle):
    table = accumulate_all(oracle.staged, oracle.exact).compute()
    no_depth, no_q, full = ablate(table, "q_beta"), ablate(table, "Q"), ablate(table, "full")
    assert not no_depth.depth.any() and np.array_equal(no_depth.block, table.block)
    cond = conditioning_depths(oracle.staged)
    assert not no_q.block[cond >= 0].any() and np.array_equal(no_q.block[cond == CONFIG_ONLY], table.block[cond == CONFIG_ONLY])
    assert np.array_equal(no_q.depth, table.depth) and no_q.metadata["ablation"] == "Q"
    _, q_alpha, q_beta, Q = to_vector_form(no_q)
    assert not Q.any() and np.array_equal(q_beta, table.depth.ravel())
    arch = oracle.supernet.space.sample(0)
    assert full.predict(arch) == table.predict(arch)
    with pytest.raises(ValueError, match="term"):
        ablate(table, "beta")


# -- the estimators recover the exact Δs ------------------------------------------------------
def tolerance(n: float, total: float) -> float:
    # Five standard deviations of a conditional mean minus the base mean (Bernoulli, p(1-p) <= 1/4).
    return 5 * (0.5 / np.sqrt(n) + 0.5 / np.sqrt(total))


def check_recovered(table, exact, n, counts):
    assert abs(table.constant - exact["base"]) < tolerance(n, n)
    assert np.all(np.abs(table.depth - exact["depth"]) < tolerance(counts["depth"], n))
    assert np.all(np.abs(table.block - exact["block"]) < tolerance(counts["block"], n))
    # Not trivially close: the errors are much smaller than the gains themselves.
    error = np.sqrt(np.mean((table.block - exact["block"]) ** 2))
    assert error < 0.25 * np.sqrt(np.mean(exact["block"] ** 2))


def test_one_pass_recovers_exact_deltas(oracle):
    n = 40_000
    table = estimate_one_pass(oracle.supernet, oracle.loader(n, 5000), passes=1, seed=11)
    # Rarest conditionals: depth 1/2, (config, depth) 1/8 of the records.
    check_recovered(table, oracle.exact, n, {"depth": n / 2, "block": n / 8})
    assert table.metadata["method"] == "one_pass" and table.metadata["data_passes"] == 1
    assert table.metadata["examples"] == n and table.metadata["min_count"]["block"] > n / 8 * 0.9


def test_paper_protocol_recovers_exact_deltas_and_counts_passes(oracle):
    n, batch, passes = 10_000, 2500, 2
    oracle.net.calls = oracle.net.examples = 0
    table = estimate_paper_protocol(oracle.supernet, oracle.loader(n, batch), passes=passes, seed=5)
    conditionals = len(paper_protocol_conditionals(oracle.staged))
    assert conditionals == 1 + 2 * (2 + 3 * 4)
    assert oracle.net.calls == conditionals * passes * (n // batch)
    assert oracle.net.examples == table.metadata["examples"] == paper_protocol_passes(oracle.staged, passes) * n
    assert table.metadata["data_passes"] == conditionals * passes and table.metadata["conditionals"] == conditionals
    check_recovered(table, oracle.exact, n * passes, {"depth": n * passes, "block": n * passes})


def test_one_pass_and_paper_agree_on_base_with_same_draws(oracle):
    loader = oracle.loader(2000, 500)
    one = estimate_one_pass(oracle.supernet, loader, passes=1, seed=3)
    paper = estimate_paper_protocol(oracle.supernet, loader, passes=1, seed=3)
    # Same (seed, pass, batch) draws: the paper's base conditional sees exactly the one-pass records.
    assert one.constant == paper.constant


# -- seeding, modes, state ----------------------------------------------------------------------
@pytest.mark.parametrize("method", ["one_pass", "paper"])
def test_same_seed_same_estimate_and_state_restored(oracle, method):
    loader = oracle.loader(1000, 250)
    supernet = oracle.supernet
    arch = supernet.space.sample(7)
    supernet.activate(arch)
    supernet.train()
    a = estimate_contributions(supernet, loader, method=method, passes=1, seed=1)
    b = estimate_contributions(supernet, loader, method=method, passes=1, seed=1)
    c = estimate_contributions(supernet, loader, method=method, passes=1, seed=2)
    assert json.dumps(a.to_dict()) == json.dumps(b.to_dict())
    assert not np.array_equal(a.block, c.block)
    assert supernet.training and supernet.active_arch == arch


def test_eval_mode_during_estimation(oracle):
    seen = []
    supernet = oracle.supernet
    supernet.train()

    def forward(x):
        seen.append(supernet.training or oracle.net.training or torch.is_grad_enabled())
        return supernet(x)

    estimate_one_pass(supernet, oracle.loader(100, 50), forward=forward)
    assert seen == [False, False] and supernet.training


# -- DDP-style merging --------------------------------------------------------------------------
STATES = ("base_count", "base_correct", "depth_count", "depth_correct", "block_count", "block_correct", "examples")


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 10_000), cut=st.floats(0.0, 1.0))
def test_two_halves_merged_equal_one_instance(oracle, seed, cut):
    rng = np.random.default_rng(seed)
    ex = oracle.exact
    order = rng.permutation(len(ex["p"]))[:3000]
    configs, depths = torch.as_tensor(ex["configs"][order]), torch.as_tensor(ex["depths"][order])
    correct = torch.as_tensor(rng.random(len(order)) < ex["p"][order])
    k = int(cut * len(order))
    whole, first, second = (ContributionAccumulator(oracle.staged) for _ in range(3))
    whole.update(configs, depths, correct)
    first.update(configs[:k], depths[:k], correct[:k])
    second.update(configs[k:], depths[k:], correct[k:])
    first.merge_state(second)
    for name in STATES:
        assert torch.equal(getattr(first, name), getattr(whole, name)), name
    merged, single = first.compute(), whole.compute()
    assert merged.constant == single.constant and np.array_equal(merged.block, single.block)
    assert np.array_equal(merged.depth, single.depth) and merged.metadata["missing"] == single.metadata["missing"]


@pytest.mark.parametrize("method, paired", [("one_pass", False), ("paper", False), ("one_pass", True)])
def test_sharded_ranks_give_the_single_process_result(oracle, method, paired):
    loader = oracle.loader(700, 100)  # 7 batches: uneven shards
    single = estimate_contributions(oracle.supernet, loader, method=method, passes=2, seed=4, paired=paired)
    ranks = []
    for rank in range(3):
        acc = ContributionAccumulator(oracle.staged)
        estimate_contributions(oracle.supernet, loader, method=method, passes=2, seed=4, rank=rank, world_size=3, accumulator=acc,
                               paired=paired)
        ranks.append(acc)
    for other in ranks[1:]:
        ranks[0].merge_state(other)
    merged = ranks[0].compute()
    assert merged.constant == pytest.approx(single.constant, abs=1e-15)
    np.testing.assert_allclose(merged.block, single.block, atol=1e-15)
    np.testing.assert_allclose(merged.depth, single.depth, atol=1e-15)
    assert merged.metadata["examples"] == single.metadata["examples"]


# -- missing conditionals, persistence, bad input ------------------------------------------------
def test_missing_conditionals_fall_back_to_zero_with_a_warning(oracle):
    acc = ContributionAccumulator(oracle.staged)
    configs = torch.zeros(5, 2, 3, dtype=torch.long)  # every record: config 0 everywhere, depth option 0
    depths = torch.zeros(5, 2, dtype=torch.long)
    acc.update(configs, depths, torch.tensor([1, 0, 1, 1, 0]))
    with pytest.warns(UserWarning, match="no record"):
        table = acc.compute()
    assert table.constant == pytest.approx(0.6)
    missing = table.metadata["missing"]
    assert [0, 1] in missing["depth"] and [1, 1] in missing["depth"]
    assert [0, 0, 1] in missing["block"] and [0, 0, 0] not in missing["block"]
    assert table.depth[0, 1] == 0 and table.block[0, 0, 1] == 0 and table.depth[0, 0] == 0  # d=0 always: no gain
    # Blocks conditioned on depth option 1 (stage 0 block 3, stage 1 blocks 2 and 3) never matched.
    assert [0, 2, 0] in missing["block"] and [1, 1, 0] in missing["block"]


def test_save_and_load_round_trip(oracle, tmp_path):
    table = estimate_one_pass(oracle.supernet, oracle.loader(500, 250), seed=0)
    path = table.save(tmp_path / "accuracy.json")
    loaded = BilinearTable.load(path, oracle.staged)
    assert loaded.to_dict() == json.loads(json.dumps(table.to_dict()))
    arch = oracle.supernet.space.sample(1)
    assert loaded.predict(arch) == table.predict(arch)


def test_bad_input_is_rejected(oracle):
    loader = oracle.loader(100, 50)
    with pytest.raises(ValueError, match="method"):
        estimate_contributions(oracle.supernet, loader, method="fast")
    with pytest.raises(ValueError, match="passes"):
        estimate_one_pass(oracle.supernet, loader, passes=0)
    with pytest.raises(ValueError, match="rank"):
        estimate_one_pass(oracle.supernet, loader, rank=2, world_size=2)
    with pytest.raises(ValueError, match="seed"):
        estimate_one_pass(oracle.supernet, loader, seed=-1)
    with pytest.raises(ValueError, match="Supernet"):
        estimate_one_pass(oracle.net, loader)
    acc = ContributionAccumulator(oracle.staged)
    with pytest.raises(ValueError, match="configs"):
        acc.update(torch.zeros(3, 2, 2, dtype=torch.long), torch.zeros(3, 2, dtype=torch.long), torch.ones(3))
    with pytest.raises(ValueError, match="depths"):
        acc.update(torch.zeros(3, 2, 3, dtype=torch.long), torch.full((3, 2), 2), torch.ones(3))
    with pytest.raises(ValueError, match="correct"):
        acc.update(torch.zeros(3, 2, 3, dtype=torch.long), torch.zeros(3, 2, dtype=torch.long), torch.full((3,), 2.0))
    with pytest.raises(ValueError, match="no record"):
        acc.compute()
    acc.update(torch.zeros(3, 2, 3, dtype=torch.long), torch.zeros(3, 2, dtype=torch.long), torch.ones(3))
    with pytest.raises(ValueError, match="fresh one"):
        acc.update_conditional(paper_protocol_conditionals(oracle.staged)[0], torch.ones(3))
    with pytest.raises(ValueError, match="batch"):
        estimate_one_pass(oracle.supernet, [{"x": torch.zeros(4, 1)}])
