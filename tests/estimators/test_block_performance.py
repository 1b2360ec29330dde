"""MathNAS block performance (Algorithm 1, Eq. 3) and the Eq. 5 predictor against synthetic ground truth:
additive truths are recovered exactly (variable depth included), the reciprocal law beats the additive one on a
reciprocal truth, a weight-sharing supernet with known per-arch accuracy, and NB201-style tabular look-ups."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data import DataLoader, TensorDataset

from lightning_nas.bilinear import BilinearTable
from lightning_nas.estimators.block_performance import (
    estimate_block_performance,
    estimate_block_performance_sampled,
    mean_flops,
    nodes_as_stage,
    supernet_evaluator,
    tabular_evaluator,
)
from lightning_nas.estimators.ranking import rank_correlations
from lightning_nas.evaluators.tabular import TabularBenchmark
from lightning_nas.solvers import Limit
from lightning_nas.solvers.fractional import enumerate_indices
from lightning_nas.spaces import Decision, SearchSpace
from lightning_nas.spaces.nb201 import nb201_all_archs, nb201_search_space
from lightning_nas.spaces.staged import StagedSpace


def random_space(rng, max_archs=5000):
    """2-3 stages of 1-3 blocks with 2-4 configs and random depth options (some fixed), at most ``max_archs`` archs."""
    while True:
        num_configs = int(rng.integers(2, 5))
        decisions = []
        for s in range(int(rng.integers(2, 4))):
            n = int(rng.integers(1, 4))
            decisions += [Decision(f"stage{s}.block{b}.op", tuple(f"o{c}" for c in range(num_configs)), "o0") for b in range(n)]
            depths = tuple(d for d in range(1, n + 1) if rng.random() < 0.7) or (n,)
            if len(depths) > 1:
                decisions.append(Decision(f"stage{s}.depth", depths, depths[-1]))
        space = SearchSpace(decisions)
        if space.size <= max_archs:
            return StagedSpace.from_space(space)


def random_tables(staged, rng):
    shape = (staged.num_stages, staged.max_blocks, staged.num_configs)
    dshape = (staged.num_stages, staged.max_depth_options)
    acc = BilinearTable(staged, 0.6, rng.normal(0, 0.02, shape), rng.normal(0, 0.03, dshape), name="accuracy")
    lat = BilinearTable(staged, 2.0, rng.uniform(0.1, 1.0, shape), rng.uniform(-0.1, 0.1, dshape), name="latency")
    flops = BilinearTable(staged, 50.0, rng.uniform(5, 40, shape), rng.uniform(0, 3, dshape), name="flops")
    return acc, lat, flops


def table_evaluator(tables):
    return lambda archs: {name: t.predict_many(archs) for name, t in tables.items()}


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), method=st.sampled_from(["algorithm1", "sampled", "all"]),
       reference=st.sampled_from([None, "mean", "host", "default", "first", "last"]), given_flops=st.booleans())
def test_additive_truth_is_recovered_exactly(seed, method, reference, given_flops):
    rng = np.random.default_rng(seed)
    staged = random_space(rng)
    acc, lat, flops = random_tables(staged, rng)
    evaluate = table_evaluator({"accuracy": acc, "latency": lat, "flops": flops})
    kwargs = {"reference": reference, "flops": flops if given_flops else None}
    if reference == "host" and method != "algorithm1":
        with pytest.raises(ValueError, match="Algorithm 1's single host"):
            estimate_block_performance_sampled(evaluate, staged, **kwargs)
        return
    if method == "algorithm1":
        perf = estimate_block_performance(evaluate, staged, **kwargs)
        blocks = sum(min(s.num_blocks, max(s.depths)) for s in staged.stages)
        options = blocks * staged.num_configs + sum(len(s.depths) for s in staged.stages if len(s.depths) > 1)
        assert perf.evaluations <= options + 2 + (0 if given_flops else options + 1)  # O(m·n)
    else:
        perf = estimate_block_performance_sampled(evaluate, staged, num_hosts=3 if method == "sampled" else "all", seed=seed % 1000, **kwargs)
    configs, depths = enumerate_indices(staged)
    truth = acc.predict_indices(configs, depths)
    assert np.allclose(perf.predictor(law="additive").predict_indices(configs, depths), truth, atol=1e-12)
    assert np.allclose(perf.table("latency").predict_indices(configs, depths), lat.predict_indices(configs, depths), atol=1e-12)
    assert np.allclose(perf.flops.predict_indices(configs, depths), flops.predict_indices(configs, depths), atol=1e-9)
    ref_c, ref_d = staged.indices(perf.reference)
    if reference in (None, "mean"):
        # Signed deltas against each node's mean option: every node's options sum to 0, so no arch
        # (in particular no reference) is favoured by construction.
        d = perf.deltas["accuracy"]
        exists = staged.config_exists()
        assert np.allclose(np.where(exists, d.block, 0).sum(-1)[exists.any(-1)], 0, atol=1e-12)
        for s, stage in enumerate(staged.stages):
            assert d.depth[s, : len(stage.depths)].sum() == pytest.approx(0, abs=1e-12)
        assert perf.details["reference"] == "mean"
        return
    # Reference options have b = 0; Acc(Ñ) is the reference's accuracy.
    assert perf.base["accuracy"] == pytest.approx(acc.predict(perf.reference))
    if reference == "host":
        assert perf.reference == perf.host
    for s, stage in enumerate(staged.stages):
        for b in range(min(stage.num_blocks, max(stage.depths))):
            assert perf.deltas["accuracy"].block[s, b, ref_c[s, b]] == 0.0
        assert perf.deltas["accuracy"].depth[s, ref_d[s]] == 0.0


def test_sign_convention_reference_minus_switched():
    space = SearchSpace([Decision("a", ("ref", "worse", "better"), "ref"), Decision("b", ("ref", "slow"), "ref")])
    with pytest.raises(ValueError, match="every node must have the same number of options"):
        nodes_as_stage(space)
    acc = {"ref": 0.0, "worse": -0.1, "better": 0.05, "slow": 0.0}
    lat = {"ref": 0.0, "worse": 0.0, "better": 0.0, "slow": 3.0}

    def evaluate(archs):
        return {"accuracy": np.array([0.8 + acc[a["a"]] + acc[a["b"]] for a in archs]),
                "latency": np.array([10 + lat[a["a"]] + lat[a["b"]] for a in archs]),
                "flops": np.array([100.0 + (a["a"] == "better") * 20 for a in archs])}

    space = SearchSpace([Decision("a", ("ref", "worse", "better"), "ref"), Decision("b", ("ref", "slow", "ref2"), "ref")])
    lat["ref2"] = acc["ref2"] = 0.0
    perf = estimate_block_performance(evaluate, nodes_as_stage(space), reference="default")
    b_a, b_l = perf.deltas["accuracy"].block[0], perf.deltas["latency"].block[0]
    assert b_a[0].tolist() == pytest.approx([0.0, 0.1, -0.05])  # positive b^A loses accuracy
    assert b_l[1].tolist() == pytest.approx([0.0, -3.0, 0.0])  # negative b^L costs latency
    assert perf.base == pytest.approx({"accuracy": 0.8, "latency": 10.0, "flops": 100.0})


def test_mean_flops_are_exact_averages():
    rng = np.random.default_rng(4)
    staged = random_space(rng)
    _, _, flops = random_tables(staged, rng)
    archs = list(staged.space.enumerate())  # uniform over every decision, as the means assume
    values = flops.predict_many(archs)
    total, block, depth = mean_flops(flops)
    assert total == pytest.approx(values.mean())
    configs, depths = staged.indices_many(archs)
    active = staged.active(depths)
    for s, stage in enumerate(staged.stages):
        for b in range(min(stage.num_blocks, max(stage.depths))):
            for c in range(staged.num_configs):
                rows = active[:, s, b] & (configs[:, s, b] == c)
                assert block[s, b, c] == pytest.approx(values[rows].mean())
        for j in range(len(stage.depths)):
            assert depth[s, j] == pytest.approx(values[depths[:, s] == j].mean())


def test_reciprocal_law_beats_additive_on_a_reciprocal_truth():
    """Accuracy lost ∝ α / FLOPs (MathNAS's empirical law): Eq. 5 fits it better than the additive predictor
    (lower RMSE over 6 random instances; both rank well)."""
    rmse = {"reciprocal": [], "additive": []}
    for seed in range(6):
        rng = np.random.default_rng(seed)
        staged = nodes_as_stage(SearchSpace([Decision(f"n{i}", tuple(range(5)), 0) for i in range(5)]))
        flops = BilinearTable(staged, 20.0, rng.uniform(5, 60, (1, 5, 5)), name="flops")
        penalty = BilinearTable(staged, 0.0, rng.uniform(0, 20, (1, 5, 5)), name="alpha")

        def truth(c, d):
            return 0.95 - penalty.predict_indices(c, d) / flops.predict_indices(c, d)

        perf = estimate_block_performance(lambda archs: {"accuracy": truth(*staged.indices_many(archs))}, staged, flops)
        configs, depths = enumerate_indices(staged)
        exact = truth(configs, depths)
        for law in rmse:
            predicted = perf.predictor(law=law).predict_indices(configs, depths)
            assert rank_correlations(predicted, exact)["spearman_rho"] > 0.97
            rmse[law].append(np.sqrt(np.mean((predicted - exact) ** 2)))
    assert np.mean(rmse["reciprocal"]) < 0.8 * np.mean(rmse["additive"])


def test_search_maximises_the_predictor_exactly():
    rng = np.random.default_rng(9)
    staged = random_space(rng)
    acc, lat, flops = random_tables(staged, rng)
    perf = estimate_block_performance(table_evaluator({"accuracy": acc, "latency": lat}), staged, flops)
    configs, depths = enumerate_indices(staged)
    latency = perf.table("latency", unit="ms")
    bound = float(np.median(latency.predict_indices(configs, depths)))
    ok = latency.predict_indices(configs, depths) <= bound
    for law in ("reciprocal", "reciprocal_mean", "additive"):
        best = perf.predictor(law=law).predict_indices(configs, depths)[ok].max()
        result = perf.search(Limit(latency, upper=bound), law=law)
        assert result.feasible and result.objective == pytest.approx(best, abs=1e-9)
        assert perf.predictor(law=law).predict(result.arch) == pytest.approx(best, abs=1e-9)
    with pytest.raises(ValueError, match="`law` must be one of"):
        perf.search(law="linear")
    with pytest.raises(ValueError, match="`metric` must be one of the evaluated metrics"):
        perf.predictor("energy")


def test_supernet_with_known_accuracies(oracle):
    """Weight-sharing evaluations: the oracle supernet answers correctly with probability p(arch);
    with a uniform grid of 400 inputs the measured one-shot accuracy is p within 1/400."""
    staged = oracle.staged
    rng = np.random.default_rng(0)
    shape = (staged.num_stages, staged.max_blocks, staged.num_configs)
    truth = BilinearTable(staged, 0.5, rng.normal(0, 0.03, shape), rng.normal(0, 0.03, (staged.num_stages, staged.max_depth_options)))
    oracle.net.truth = truth.predict_indices
    try:
        n = 400
        u = ((torch.arange(n) + 0.5) / n)[:, None]
        loader = DataLoader(TensorDataset(u, torch.ones(n, dtype=torch.long)), batch_size=100)
        flops = BilinearTable(staged, 10.0, rng.uniform(1, 5, shape), name="flops")
        perf = estimate_block_performance(supernet_evaluator(oracle.supernet, loader), staged, flops)
        configs, depths = enumerate_indices(staged)
        predicted = perf.predictor(law="additive").predict_indices(configs, depths)
        terms = 1 + sum(min(s.num_blocks, max(s.depths)) + 1 for s in staged.stages)  # deltas summed per arch
        assert np.abs(predicted - truth.predict_indices(configs, depths)).max() <= 2 * terms / n
        assert rank_correlations(predicted, truth.predict_indices(configs, depths))["spearman_rho"] > 0.98
    finally:
        oracle.net.truth = oracle.truth


def synthetic_nb201(rng):
    """A NB201-format table with additive accuracy and FLOPs per edge operation."""
    archs = list(nb201_all_archs())
    space = nb201_search_space()
    staged = nodes_as_stage(space)
    acc = BilinearTable(staged, 80.0, rng.normal(0, 2, (1, 6, 5)), name="accuracy")
    flops = BilinearTable(staged, 10.0, rng.uniform(0, 30, (1, 6, 5)), name="flops")
    c, d = staged.indices_many(archs)
    table = {"c10_test_200": acc.predict_indices(c, d), "c10_flops_M": flops.predict_indices(c, d)}
    return TabularBenchmark(archs, table, source="synthetic"), staged, acc, flops, (c, d)


def test_tabular_nb201_lookups():
    bench, staged, acc, flops, (c, d) = synthetic_nb201(np.random.default_rng(1))
    evaluate = tabular_evaluator(bench, {"accuracy": "c10_test_200", "flops": "c10_flops_M"})
    perf = estimate_block_performance(evaluate, staged)  # FLOPs deltas from the table too
    assert perf.evaluations <= 2 * (6 * 5 + 1)  # 30 look-ups (+ the FLOPs switches)
    assert np.allclose(perf.predictor(law="additive").predict_indices(c, d), bench.column("c10_test_200"))
    assert np.allclose(perf.flops.predict_indices(c, d), bench.column("c10_flops_M"))
    full = estimate_block_performance_sampled(evaluate, staged, flops, num_hosts="all")
    assert full.details["hosts"] == 15625
    assert np.allclose(full.deltas["accuracy"].block, perf.deltas["accuracy"].block)
    with pytest.raises(ValueError, match="must map 'accuracy'"):
        tabular_evaluator(bench, {"acc": "c10_test_200"})
    with pytest.raises(KeyError, match="unknown column"):
        tabular_evaluator(bench, {"accuracy": "nope"})


def test_bad_inputs_are_named():
    rng = np.random.default_rng(2)
    staged = random_space(rng)
    acc, _, flops = random_tables(staged, rng)
    with pytest.raises(ValueError, match=r"`reference` must be an arch dict or one of \('mean', 'host'"):
        estimate_block_performance(table_evaluator({"accuracy": acc}), staged, flops, reference="middle")
    with pytest.raises(ValueError, match="must return a dict with an 'accuracy' entry"):
        estimate_block_performance(table_evaluator({"acc": acc}), staged, flops)
    with pytest.raises(ValueError, match="no `flops` table given and the evaluator returns no 'flops'"):
        estimate_block_performance(table_evaluator({"accuracy": acc}), staged)
    with pytest.raises(ValueError, match="`num_hosts` must be a positive int or 'all'"):
        estimate_block_performance_sampled(table_evaluator({"accuracy": acc}), staged, flops, num_hosts=0)
    with pytest.raises(ValueError, match=r"'accuracy' must be \d+ finite values"):
        estimate_block_performance(lambda archs: {"accuracy": np.full(len(archs), np.nan)}, staged, flops)
    with pytest.raises(ValueError, match="not decisions of the space"):
        nodes_as_stage(staged.space, ["nope"])


def test_callback_estimates_at_train_end_and_round_trips(oracle, tmp_path):
    import lightning.pytorch as pl

    from lightning_nas.callbacks.block_performance import BlockPerformanceEstimation
    from lightning_nas.estimators.block_performance import BlockPerformance

    staged = oracle.staged
    rng = np.random.default_rng(3)
    shape = (staged.num_stages, staged.max_blocks, staged.num_configs)
    truth = BilinearTable(staged, 0.5, rng.normal(0, 0.03, shape), rng.normal(0, 0.03, (staged.num_stages, staged.max_depth_options)))
    oracle.net.truth = truth.predict_indices
    n = 400
    loader = DataLoader(TensorDataset(((torch.arange(n) + 0.5) / n)[:, None], torch.ones(n, dtype=torch.long)), batch_size=200)

    class Module(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.net, self.w = oracle.supernet, torch.nn.Parameter(torch.zeros(1))

        def forward(self, x):
            return self.net(x)

        def training_step(self, batch, _):
            return (self.w**2).sum()

        def configure_optimizers(self):
            return torch.optim.SGD([self.w], lr=0.1)

    flops = BilinearTable(staged, 10.0, rng.uniform(1, 5, shape), name="flops")
    callback = BlockPerformanceEstimation(loader, flops, path=tmp_path / "perf.json")
    try:
        pl.Trainer(max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                   enable_model_summary=False, callbacks=[callback]).fit(Module(), loader)
    finally:
        oracle.net.truth = oracle.truth
    configs, depths = enumerate_indices(staged)
    predicted = callback.performance.predictor(law="additive").predict_indices(configs, depths)
    assert np.abs(predicted - truth.predict_indices(configs, depths)).max() < 0.05
    loaded = BlockPerformance.load(tmp_path / "perf.json", staged)
    assert np.array_equal(loaded.deltas["accuracy"].block, callback.performance.deltas["accuracy"].block)
    assert loaded.reference == callback.performance.reference and loaded.host == callback.performance.host
    restored = BlockPerformanceEstimation(loader, flops)
    restored.load_state_dict(callback.state_dict())
    restored._staged = staged
    assert np.array_equal(restored.performance.predictor().predict_indices(configs, depths),
                          callback.performance.predictor().predict_indices(configs, depths))
    with pytest.raises(ValueError, match="`flops` must be a FLOPs BilinearTable or an input size"):
        BlockPerformanceEstimation(loader, "big")
    with pytest.raises(ValueError, match="`method` must be one of"):
        BlockPerformanceEstimation(loader, flops, method="greedy")
    for reference in ("mean", "host", "default", "first", "last"):  # the estimator's reference modes, all accepted
        assert BlockPerformanceEstimation(loader, flops, reference=reference).reference == reference


def test_eq6_form_uses_the_space_mean_flops():
    rng = np.random.default_rng(8)
    staged = random_space(rng)
    acc, _, flops = random_tables(staged, rng)
    perf = estimate_block_performance(table_evaluator({"accuracy": acc}), staged, flops)
    configs, depths = enumerate_indices(staged)
    total, _, _ = mean_flops(flops)
    expected = perf.base["accuracy"] - total * perf.deltas["accuracy"].predict_indices(configs, depths) / flops.predict_indices(configs, depths)
    assert np.allclose(perf.predictor(law="reciprocal_mean").predict_indices(configs, depths), expected)
    with pytest.raises(ValueError, match="for a fractional numerator"):
        perf.numerator(law="additive")


def test_flops_deltas_follow_the_sign_convention():
    rng = np.random.default_rng(6)
    staged = random_space(rng)
    acc, _, flops = random_tables(staged, rng)
    perf = estimate_block_performance(table_evaluator({"accuracy": acc}), staged, flops, reference="first")
    configs, depths = enumerate_indices(staged)
    # b^F = F(Ñ-switch) bookkeeping: F(N) = F(Ñ) − Σ b^F, exactly (FLOPs add over blocks).
    assert np.allclose(perf.table("flops").predict_indices(configs, depths), flops.predict_indices(configs, depths))
    assert perf.base["flops"] == pytest.approx(flops.predict(perf.reference))
