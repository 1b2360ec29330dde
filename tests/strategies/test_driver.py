from __future__ import annotations

import math
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lightning_nas.strategies.base import Constraint, Proposal, Strategy
from lightning_nas.strategies.driver import Budget, EvaluationError, run_search
from lightning_nas.strategies.evolution import RegularizedEvolution
from lightning_nas.strategies.random_search import RandomSearch
from lightning_nas.strategies.results import pareto_mask
from lightning_nas.strategies.storage import SQLiteStorage

sys.path.insert(0, str(Path(__file__).parent))
from synthetic import FlakyEvaluator, HangingEvaluator, SyntheticEvaluator, synthetic_space  # noqa: E402


def evolution(seed: int = 3) -> RegularizedEvolution:
    return RegularizedEvolution(synthetic_space(), seed=seed, population=6, sample=3)


def test_budget_in_evaluations_and_results_table() -> None:
    results = run_search(evolution(), SyntheticEvaluator(), objective="accuracy", budget=Budget(evaluations=15))
    assert len(results) == 15
    rows = results.rows()
    assert [r["number"] for r in rows] == list(range(15))
    assert set(rows[0]) >= {"l0", "l3", "accuracy", "test_accuracy", "cost", "feasible", "equivalent_evaluations"}
    assert rows[-1]["equivalent_evaluations"] == pytest.approx(15.0)
    frame = results.to_pandas()
    assert frame.shape[0] == 15 and frame["accuracy"].max() == pytest.approx(results.best().value)
    assert results.best_arch() == results.best().arch


class FixedFidelity(Strategy):
    """Proposes random archs at a fixed fidelity (to test the equivalent-evaluation budget)."""

    def __init__(self, space, fidelity: float) -> None:
        super().__init__(space)
        self.fidelity = fidelity

    def ask(self, n: int = 1) -> list[Proposal]:
        return [Proposal(self.random_arch(), self.fidelity) for _ in range(n)]


def test_budget_in_equivalent_evaluations() -> None:
    results = run_search(FixedFidelity(synthetic_space(), 2.5), SyntheticEvaluator(), objective="accuracy",
                         budget=Budget(equivalent_evaluations=3.0))
    assert len(results) == 12  # 12 × 2.5 / 10 epochs = 3 equivalent evaluations
    assert results.equivalent_evaluations == pytest.approx(3.0)


def test_budget_in_seconds() -> None:
    start = time.perf_counter()
    results = run_search(evolution(), SyntheticEvaluator(delay=0.02), objective="accuracy", budget=Budget(seconds=0.3))
    assert time.perf_counter() - start < 2.0
    assert 3 <= len(results) <= 20


def test_minimise_and_constraints() -> None:
    strategy = RandomSearch(synthetic_space(), seed=1, constraints=[Constraint("cost", upper=7.0)])
    results = run_search(strategy, SyntheticEvaluator(), objective="cost", maximize=False, budget=Budget(evaluations=30))
    best = results.best()
    assert best.value == -best.metrics["cost"]
    assert best.metrics["cost"] == min(r.metrics["cost"] for r in results.done)
    for r in results.done:
        assert (r.violation == 0.0) == (r.metrics["cost"] <= 7.0)


def test_strategy_exhaustion_ends_the_search() -> None:
    space = synthetic_space(n_layers=2, n_values=3)
    results = run_search(RandomSearch(space, seed=0), SyntheticEvaluator(2, 3), objective="accuracy",
                         budget=Budget(evaluations=100))
    assert len(results) == 9
    assert len({tuple(r.arch.values()) for r in results.done}) == 9


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 5), st.integers(0, 5)), min_size=1, max_size=12))
def test_pareto_mask_matches_brute_force(points: list[tuple[int, int]]) -> None:
    array = np.array(points, dtype=float)
    mask = pareto_mask(array)
    for i, p in enumerate(array):
        dominated = any((q <= p).all() and (q < p).any() for q in array)
        assert mask[i] == (not dominated)


def test_pareto_front_of_results() -> None:
    results = run_search(RandomSearch(synthetic_space(), seed=0), SyntheticEvaluator(), objective="accuracy",
                         budget=Budget(evaluations=40))
    front = results.pareto_front(["cost"])
    assert front and all(a.metrics["cost"] <= b.metrics["cost"] for a, b in zip(front, front[1:]))
    assert all(a.value < b.value for a, b in zip(front, front[1:]))  # more cost only for more accuracy
    def dominates(a, b) -> bool:
        no_worse = a.value >= b.value and a.metrics["cost"] <= b.metrics["cost"]
        return no_worse and (a.value > b.value or a.metrics["cost"] < b.metrics["cost"])

    on_front = {f.number for f in front}
    for r in results.done:
        dominated = any(dominates(o, r) for o in results.done)
        assert (r.number in on_front) == (not dominated)
    with pytest.raises(KeyError, match="not among the metrics"):
        results.pareto_front(["latency"])


def test_resume_in_process_equals_one_run(tmp_path: Path) -> None:
    straight = run_search(evolution(), SyntheticEvaluator(), objective="accuracy", budget=Budget(evaluations=20))
    db = tmp_path / "search.db"
    first = run_search(evolution(), SyntheticEvaluator(), objective="accuracy", budget=Budget(evaluations=8), storage=db)
    assert len(first) == 8
    resumed = run_search(evolution(), SyntheticEvaluator(), objective="accuracy", budget=Budget(evaluations=20),
                         storage=db)
    assert [r.arch for r in resumed.done] == [r.arch for r in straight.done]
    assert [r.value for r in resumed.done] == [r.value for r in straight.done]


def test_storage_refuses_another_search(tmp_path: Path) -> None:
    db = tmp_path / "search.db"
    run_search(evolution(), SyntheticEvaluator(), objective="accuracy", budget=Budget(evaluations=2), storage=db)
    with pytest.raises(ValueError, match="holds another search"):
        run_search(evolution(seed=4), SyntheticEvaluator(), objective="accuracy", budget=Budget(evaluations=4),
                   storage=db)
    (tmp_path / "junk.db").write_text("not a database, just text" * 100)
    with pytest.raises(ValueError, match="not a search storage file"):
        SQLiteStorage(tmp_path / "junk.db")


class FailOnce:
    """Raises on the first call in this process, then behaves like the synthetic evaluator."""

    full_fidelity = 10.0

    def __init__(self) -> None:
        self.inner, self.failed = SyntheticEvaluator(), False

    def __call__(self, arch, fidelity):
        if not self.failed:
            self.failed = True
            raise RuntimeError("worker lost")
        return self.inner(arch, fidelity)


def test_a_raising_evaluation_is_stored_as_failed_and_stops_the_search(tmp_path: Path) -> None:
    db = tmp_path / "search.db"
    evaluator = FailOnce()
    with pytest.raises(EvaluationError, match="trial 0 .* failed: RuntimeError: worker lost"):
        run_search(evolution(), evaluator, objective="accuracy", budget=Budget(evaluations=5), storage=db)
    stored = SQLiteStorage(db, read_only=True).trials()
    assert stored[0].state == "failed" and "worker lost" in stored[0].error
    # Resuming goes on after it (a failure is final, and spends the budget like any trial).
    results = run_search(evolution(), evaluator, objective="accuracy", budget=Budget(evaluations=5), storage=db)
    assert [r.number for r in results.done] == [1, 2, 3, 4]
    assert [r.number for r in results.failed] == [0] and results.failed[0].value is None


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="Budget needs"):
        Budget()
    with pytest.raises(ValueError, match="`evaluations` must be an int >= 1"):
        Budget(evaluations=0)
    with pytest.raises(ValueError, match="`seconds` must be a positive"):
        Budget(seconds=math.inf)
    with pytest.raises(ValueError, match="`n_workers`"):
        run_search(evolution(), SyntheticEvaluator(), objective="accuracy", budget=Budget(evaluations=1), n_workers=0)
    with pytest.raises(ValueError, match="full_fidelity"):
        run_search(evolution(), lambda a, f: {}, objective="accuracy", budget=Budget(evaluations=1))
    with pytest.raises(ValueError, match="objective 'acc' is not among"):
        run_search(evolution(), SyntheticEvaluator(), objective="acc", budget=Budget(evaluations=1))
    with pytest.raises(ValueError, match="needs `upper` and/or `lower`"):
        Constraint("cost")
    with pytest.raises(ValueError, match="exceeds `upper`"):
        Constraint("cost", upper=1.0, lower=2.0)
    with pytest.raises(ValueError, match="`metric` must be a metric name"):
        Constraint(5, upper=1.0)
    with pytest.raises(ValueError, match="`upper` must be a finite number, got True"):
        Constraint("cost", upper=True)
    with pytest.raises(ValueError, match="`cost_model` must be None or a callable"):
        RandomSearch(synthetic_space(), cost_model={"cost": 1.0})


class Returns:
    full_fidelity = 10.0

    def __init__(self, out) -> None:
        self.out = out

    def __call__(self, arch, fidelity):
        return self.out


def test_what_an_evaluator_returns_is_checked() -> None:
    with pytest.raises(EvaluationError, match=r"TypeError: the evaluator must return a dict \{metric: number\}, got a list"):
        run_search(evolution(), Returns([1.0]), objective="accuracy", budget=Budget(evaluations=1))
    with pytest.raises(EvaluationError, match="the evaluator returned metric 'accuracy' = 'high', not a number"):
        run_search(evolution(), Returns({"accuracy": "high"}), objective="accuracy", budget=Budget(evaluations=1))


# kill -9 and resume from SQLite: test_kill_resume.py (its "evolution" search is this file's evolution(), killed in
# the one process that runs every strategy's search).


class Ladder(Strategy):
    """Proposes one arch at fidelities 2.5, 5 and 10, then another arch at 10."""

    def __init__(self, space) -> None:
        super().__init__(space)
        arch = {label: 1 for label in space.labels}
        self.plan = [Proposal(arch, 2.5), Proposal(arch, 5.0), Proposal(arch, 10.0), Proposal(self.random_arch(), 10.0)]

    def ask(self, n: int = 1) -> list[Proposal]:
        out, self.plan = self.plan[:n], self.plan[n:]
        return out


class Resuming(SyntheticEvaluator):
    resumes = True


@pytest.mark.parametrize(("evaluator", "charged"), [(SyntheticEvaluator(), [2.5, 5.0, 10.0, 10.0]),
                                                     (Resuming(), [2.5, 2.5, 5.0, 10.0])])
def test_resumed_training_is_charged_only_the_extra_epochs(evaluator, charged, tmp_path: Path) -> None:
    results = run_search(Ladder(synthetic_space()), evaluator, objective="accuracy", budget=Budget(evaluations=10),
                         storage=tmp_path / "s.db")
    assert [r.epochs for r in results.done] == charged
    assert results.equivalent_evaluations == pytest.approx(sum(charged) / 10.0)
    assert [r.epochs for r in SQLiteStorage(tmp_path / "s.db").trials()] == charged


def test_stop_when_ends_the_search_after_the_trigger() -> None:
    evaluator = SyntheticEvaluator()
    target = sorted(evaluator.accuracy(a) for a in evaluator.all_archs())[-30]
    results = run_search(RandomSearch(synthetic_space(), seed=0), evaluator, objective="accuracy",
                         budget=Budget(evaluations=256), stop_when=lambda t: t.metrics["accuracy"] >= target)
    assert results.done[-1].metrics["accuracy"] >= target
    assert all(r.metrics["accuracy"] < target for r in results.done[:-1])


def _all_strategies():
    from lightning_nas.strategies.bo import BayesianOptimization
    from lightning_nas.strategies.layernas import LayerNAS
    from lightning_nas.strategies.rank_nosh import RankNOSH

    small = dict(members=2, trunk=(16,), branch=8, steps=20)
    costs = SyntheticEvaluator().costs
    return {
        "random": lambda: RandomSearch(synthetic_space(), seed=5),
        "evolution": lambda: evolution(5),
        "layernas": lambda: LayerNAS(synthetic_space(), seed=5, cost_model=costs, cost="cost", buckets=3, per_bucket=1),
        "bo": lambda: BayesianOptimization(synthetic_space(), seed=5, batch_size=3, initial=3, **small),
        "rank_nosh": lambda: RankNOSH(synthetic_space(), seed=5, levels=(2.5, 10.0), new_per_round=3, **small),
    }


@pytest.mark.parametrize("name", ["random", "evolution", "layernas", "bo", "rank_nosh"])
def test_every_strategy_resumes_from_sqlite_exactly_and_never_ranks_nan_or_inf(name: str, tmp_path: Path) -> None:
    # NaN / inf objectives on some archs: those trials fail (told to the strategy, never ranked), the search goes on.
    make, evaluator = _all_strategies()[name], FlakyEvaluator()
    straight = run_search(make(), evaluator, objective="accuracy", budget=Budget(evaluations=14))
    assert straight.failed, "the flaky evaluator should have failed some trial"
    for r in straight.failed:
        assert r.value is None and r.error in ("objective 'accuracy' is nan (not a finite number)",
                                               "objective 'accuracy' is inf (not a finite number)")
    assert len(straight.done) + len(straight.failed) == len(straight.records) == 14
    assert all(math.isfinite(r.value) for r in straight.done)
    assert math.isfinite(straight.best().value) and straight.best().state == "done"
    assert all(r.state == "done" for r in straight.pareto_front(["cost"]))
    db = tmp_path / f"{name}.db"
    run_search(make(), evaluator, objective="accuracy", budget=Budget(evaluations=7), storage=db)
    resumed = run_search(make(), evaluator, objective="accuracy", budget=Budget(evaluations=14), storage=db)
    assert [(r.arch, r.fidelity, r.state) for r in resumed.records] == \
        [(r.arch, r.fidelity, r.state) for r in straight.records]


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[1][0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.parametrize("n_workers", [1, 2])
def test_a_hung_evaluation_is_killed_at_the_trial_timeout_and_the_search_goes_on(n_workers: int, tmp_path: Path) -> None:
    start = time.perf_counter()
    results = run_search(RandomSearch(synthetic_space(), seed=0), HangingEvaluator(str(tmp_path)),
                         objective="accuracy", budget=Budget(evaluations=8), trial_timeout=0.5, n_workers=n_workers,
                         storage=tmp_path / "s.db")
    assert time.perf_counter() - start < 8
    hung = [r for r in results.records if r.arch["l0"] == 1]
    assert hung and all(r.state == "failed" and r.error.startswith("TrialTimeout: timed out after 0.5 s") for r in hung)
    assert len(results.done) == 8 - len(hung) and all(r.arch["l0"] != 1 for r in results.done)
    started = [int(p.stem) for p in tmp_path.glob("*.pid")]
    assert len(started) == len(hung)
    deadline = time.monotonic() + 5
    while any(_alive(pid) for pid in started) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(_alive(pid) for pid in started), "what the hung evaluation started was not killed"


def test_trial_timeout_arguments_and_errors_in_the_child() -> None:
    with pytest.raises(ValueError, match="`trial_timeout` cannot be combined with `executor`"):
        run_search(evolution(), SyntheticEvaluator(), objective="accuracy", budget=Budget(evaluations=1),
                   trial_timeout=1.0, executor=ThreadPoolExecutor(1))
    with pytest.raises(ValueError, match=r"`trial_timeout` \(seconds\) must be a positive finite number, got nan"):
        run_search(evolution(), SyntheticEvaluator(), objective="accuracy", budget=Budget(evaluations=1),
                   trial_timeout=math.nan)
    with pytest.raises(EvaluationError, match="RuntimeError: worker lost"):
        run_search(evolution(), FailOnce(), objective="accuracy", budget=Budget(evaluations=2), trial_timeout=5.0)


class Greedy(Strategy):
    def ask(self, n: int = 1) -> list[Proposal]:
        return [Proposal(self.random_arch()) for _ in range(n + 1)]


def test_a_strategy_returning_too_many_proposals_is_an_error() -> None:
    with pytest.raises(ValueError, match=r"Greedy.ask\(1\) returned 2 proposals"):
        run_search(Greedy(synthetic_space()), SyntheticEvaluator(), objective="accuracy", budget=Budget(evaluations=3))


def test_progress_bar(capsys) -> None:
    run_search(evolution(), SyntheticEvaluator(), objective="accuracy", budget=Budget(evaluations=5), progress=True)
    assert "5/5" in capsys.readouterr().err


def test_pareto_front_holds_feasible_trials_only_and_wants_a_list_of_costs() -> None:
    strategy = RandomSearch(synthetic_space(), seed=1, constraints=[Constraint("cost", upper=8.0)])
    results = run_search(strategy, SyntheticEvaluator(), objective="accuracy", budget=Budget(evaluations=20))
    assert any(r.violation > 0 for r in results.done) and any(r.violation == 0 for r in results.done)
    front = results.pareto_front(["cost"])
    assert front and all(r.violation == 0.0 for r in front)
    with pytest.raises(ValueError, match=r"`costs` must be a list of metric names, got the string 'cost' \(write \['cost'\]\)"):
        results.pareto_front("cost")
