from __future__ import annotations

import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from lightning_nas.strategies.driver import Budget, run_search
from lightning_nas.strategies.evolution import RegularizedEvolution
from lightning_nas.strategies.random_search import RandomSearch

sys.path.insert(0, str(Path(__file__).parent))
import synthetic  # noqa: E402
from synthetic import WhereEvaluator, synthetic_space  # noqa: E402


def test_process_pool_runs_in_other_processes() -> None:
    results = run_search(RandomSearch(synthetic_space(), seed=0), WhereEvaluator(delay=0.05), objective="accuracy",
                         budget=Budget(evaluations=8), n_workers=2)
    pids = {r.metrics["pid"] for r in results.done}
    assert len(results) == 8 and os.getpid() not in pids


def test_async_evolution_keeps_proposing_while_evaluations_run() -> None:
    # 4 workers, each evaluation 0.1 s: asynchronous proposals keep all of them busy.
    start = time.perf_counter()
    results = run_search(RegularizedEvolution(synthetic_space(), seed=0, population=4, sample=2),
                         WhereEvaluator(delay=0.1), objective="accuracy", budget=Budget(evaluations=16),
                         executor=ThreadPoolExecutor(4), n_workers=4)
    assert time.perf_counter() - start < 0.1 * 16 / 2
    assert [r.number for r in results.done] == list(range(16))


def test_dask_local_cluster_on_loopback() -> None:
    distributed = pytest.importorskip("distributed")
    import cloudpickle

    # Workers cannot import the test helpers by name: ship them by value.
    cloudpickle.register_pickle_by_value(synthetic)
    try:
        with distributed.LocalCluster(n_workers=1, threads_per_worker=2, host="127.0.0.1", dashboard_address=None,
                                      processes=True, silence_logs=40) as cluster, distributed.Client(cluster) as client:
            results = run_search(RandomSearch(synthetic_space(), seed=0), WhereEvaluator(), objective="accuracy",
                                 budget=Budget(evaluations=6), executor=client.get_executor(), n_workers=2)
    finally:
        cloudpickle.unregister_pickle_by_value(synthetic)
    pids = {r.metrics["pid"] for r in results.done}
    assert len(results) == 6 and os.getpid() not in pids
    assert [r.arch for r in results.done] == [r.arch for r in run_search(
        RandomSearch(synthetic_space(), seed=0), WhereEvaluator(), objective="accuracy",
        budget=Budget(evaluations=6)).done]
