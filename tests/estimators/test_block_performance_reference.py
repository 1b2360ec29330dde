"""Signed block performances (``reference="mean"`` / ``"host"``): the search depends on the measurements,
never on which arch is called the reference; explicit hosts (Eq. 3) and look-ups shared across calls."""

from __future__ import annotations

import numpy as np
import pytest

from lightning_nas.bilinear import BilinearTable
from lightning_nas.estimators.block_performance import (
    estimate_block_performance,
    estimate_block_performance_sampled,
    nodes_as_stage,
)
from lightning_nas.solvers.fractional import enumerate_indices
from lightning_nas.spaces import Decision, SearchSpace


def _space(default: str) -> SearchSpace:
    return SearchSpace([Decision(f"n{i}", ("a", "b", "c", "d"), default) for i in range(4)])


def _truth(staged, seed=0):
    rng = np.random.default_rng(seed)
    shape = (staged.num_stages, staged.max_blocks, staged.num_configs)
    acc = BilinearTable(staged, 0.7, rng.normal(0, 0.02, shape), name="accuracy")
    flops = BilinearTable(staged, 10.0, rng.uniform(1, 9, shape), name="flops")
    # Interactions: accuracy is not additive, so the estimate depends on where it is measured.
    pair = rng.normal(0, 0.01, (4, 4))

    def evaluate(archs):
        c, _ = staged.indices_many(archs)
        base = acc.predict_many(archs)
        return {"accuracy": base + pair[c[:, 0, 0], c[:, 0, 1]], "flops": flops.predict_many(archs)}

    return evaluate, flops


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_pick_does_not_depend_on_which_arch_is_the_default(seed):
    picks, bases = [], []
    for default in ("a", "b", "c", "d"):
        staged = nodes_as_stage(_space(default))
        evaluate, flops = _truth(staged, seed)
        perf = estimate_block_performance(evaluate, staged, flops)  # default: reference="mean"
        picks.append(perf.search().arch)
        bases.append(perf.base["accuracy"])
        assert perf.default_law == "additive"
    assert all(p == picks[0] for p in picks) and np.allclose(bases, bases[0])


def test_an_arch_reference_that_is_best_everywhere_is_echoed_and_mean_is_not():
    # Option "a" is every node's best and the old default reference: its deltas are one-sided.
    staged = nodes_as_stage(_space("a"))
    values = {"a": 0.0, "b": -0.01, "c": -0.02, "d": -0.03}

    def evaluate(archs):
        acc = np.array([0.8 + sum(values[a[f"n{i}"]] for i in range(4)) for a in archs])
        return {"accuracy": acc, "flops": np.array([10.0 + sum("abcd".index(a[f"n{i}"]) for i in range(4)) for a in archs])}

    old = estimate_block_performance(evaluate, staged, reference="default")
    assert (old.deltas["accuracy"].block >= 0).all()  # one-sided: b^A of every option >= 0
    assert old.search(law="reciprocal").arch == old.reference  # Eq. 5's optimum is Ñ by construction
    new = estimate_block_performance(evaluate, staged)
    d = new.deltas["accuracy"].block[0]
    assert (d < 0).any() and (d > 0).any()  # signed: information in both directions
    # Here the measurements do say "a" is best: the search finds it from them, not by construction.
    assert new.search().arch == {f"n{i}": "a" for i in range(4)}


def test_explicit_hosts_share_lookups_and_recover_an_additive_truth():
    staged = nodes_as_stage(_space("a"))
    rng = np.random.default_rng(3)
    acc = BilinearTable(staged, 0.5, rng.normal(0, 0.05, (1, 4, 4)), name="accuracy")
    calls = []

    def evaluate(archs):
        calls.extend(tuple(sorted(a.items())) for a in archs)
        return {"accuracy": acc.predict_many(archs), "flops": np.ones(len(archs))}

    hosts = [{f"n{i}": "b" for i in range(4)}, {f"n{i}": "c" for i in range(4)}]
    perf = estimate_block_performance_sampled(evaluate, staged, hosts=hosts)
    assert perf.details["hosts"] == 2 and perf.details["seed"] is None
    assert len(calls) == len(set(calls)) == perf.evaluations  # each distinct arch looked up once
    configs, depths = enumerate_indices(staged)
    assert np.allclose(perf.predictor().predict_indices(configs, depths), acc.predict_indices(configs, depths))
    with pytest.raises(ValueError, match="not both"):
        estimate_block_performance_sampled(evaluate, staged, hosts=hosts, num_hosts=3)
    with pytest.raises(ValueError, match=r"`hosts`\[0\] is not an arch"):
        estimate_block_performance_sampled(evaluate, staged, hosts=[{"n0": "z"}])
    with pytest.raises(ValueError, match="non-empty list of archs"):
        estimate_block_performance_sampled(evaluate, staged, hosts=hosts[0])


def test_host_reference_is_algorithm_1s_host():
    staged = nodes_as_stage(_space("a"))
    evaluate, flops = _truth(staged)
    perf = estimate_block_performance(evaluate, staged, flops, reference="host")
    assert perf.reference == perf.host and perf.details["reference"] == "host"
    c, _ = staged.indices(perf.host)
    assert np.allclose(np.take_along_axis(perf.deltas["accuracy"].block, c[..., None], -1), 0.0)
    assert perf.base["accuracy"] == pytest.approx(evaluate([perf.host])["accuracy"][0])
    # Same additive predictions as the mean reference (only where the zero sits differs).
    mean = estimate_block_performance(evaluate, staged, flops)
    configs, depths = enumerate_indices(staged)
    assert np.allclose(perf.predictor(law="additive").predict_indices(configs, depths),
                       mean.predictor(law="additive").predict_indices(configs, depths))
