"""``lightning-nas search``: a black-box search on a tabular benchmark, resumable from its storage.

Usage::

    lightning-nas search --table nb201_cifar10.csv --strategy bo --budget 100 --storage runs/bo.db
    lightning-nas search --table nb201_cifar10.csv --strategy layernas --budget 300 --constraint "lat_ms_pixel3<=12"

Every trial goes to the SQLite ``--storage`` as it finishes; running the same command again after
an interruption (even ``kill -9``) resumes the search with nothing lost or repeated. The table is a
NAS-Bench-201-format CSV (see :class:`~lightning_nas.evaluators.TabularBenchmark`): strategies
select by validation accuracy, and the test accuracy of the selection is reported.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

__all__ = ["STRATEGIES", "add_arguments", "parse_constraint", "run"]

STRATEGIES = ("random", "evolution", "layernas", "bo", "rank-nosh")


def parse_constraint(text: str):
    """``"COLUMN<=X"`` or ``"COLUMN>=X"`` → a :class:`~lightning_nas.strategies.Constraint`."""
    from lightning_nas.strategies import Constraint

    match = re.fullmatch(r"\s*([^<>=\s]+)\s*(<=|>=)\s*([-+0-9.eE]+)\s*", text)
    if match is None:
        raise argparse.ArgumentTypeError(f"a constraint is 'COLUMN<=VALUE' or 'COLUMN>=VALUE', got {text!r}")
    column, op, value = match.group(1), match.group(2), float(match.group(3))
    return Constraint(column, upper=value) if op == "<=" else Constraint(column, lower=value)


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a positive int, got {text!r}")
    return int(text)


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``search`` options to ``parser``; returns it."""
    parser.add_argument("--table", required=True, type=Path, help="a NAS-Bench-201-format CSV")
    parser.add_argument("--strategy", choices=STRATEGIES, default="bo")
    parser.add_argument("--budget", type=_positive, default=100, help="evaluations (multi-fidelity strategies: full-evaluation equivalents)")
    parser.add_argument("--storage", type=Path, default=None, help="SQLite file (default runs/search_<strategy>_<seed>.db); resumed when it exists")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--constraint", type=parse_constraint, action="append", default=[],
                        help="'COLUMN<=VALUE' or 'COLUMN>=VALUE' on a cost column (repeatable)")
    parser.add_argument("--pretrain", action="store_true", help="bo: pretrain the ensemble on the zero-cost columns")
    parser.add_argument("--workers", type=_positive, default=1, help="evaluations in flight (a local process pool when > 1)")
    return parser


def build_strategy(name: str, space, evaluator, *, seed: int, constraints: list, pretrain: bool) -> Any:
    """The strategy ``name`` over ``space``, with ``evaluator.costs`` as its zero-cost model."""
    from lightning_nas.strategies import BayesianOptimization, LayerNAS, RandomSearch, RankNOSH, RegularizedEvolution

    common = dict(seed=seed, constraints=constraints, cost_model=evaluator.costs)
    if name == "random":
        return RandomSearch(space, **common)
    if name == "evolution":
        return RegularizedEvolution(space, **common)
    if name == "layernas":
        # Buckets by the first constrained cost (LayerNAS's cost axis), by FLOPs otherwise.
        return LayerNAS(space, cost=constraints[0].metric if constraints else "c10_flops_M", **common)
    if name == "bo":
        metrics = list(evaluator.cost_columns) if pretrain else []
        return BayesianOptimization(space, pretrain_metrics=metrics, **common)
    return RankNOSH(space, levels=tuple(evaluator.fidelities), **common)


def run(args: argparse.Namespace) -> int:
    """Run (or resume) the search; prints the best trial. Returns the exit status."""
    from lightning_nas.evaluators import TabularBenchmark, TabularEvaluator
    from lightning_nas.spaces.nb201 import nb201_search_space, nb201_string
    from lightning_nas.strategies import Budget, run_search

    evaluator = TabularEvaluator(TabularBenchmark.from_csv(args.table))
    for constraint in args.constraint:
        if constraint.metric not in evaluator.cost_columns:
            raise ValueError(f"--constraint column {constraint.metric!r} is not a cost column; allowed: {list(evaluator.cost_columns)}")
    strategy = build_strategy(args.strategy, nb201_search_space(), evaluator, seed=args.seed, constraints=args.constraint,
                              pretrain=args.pretrain)
    multi_fidelity = args.strategy == "rank-nosh"
    budget = Budget(equivalent_evaluations=args.budget) if multi_fidelity else Budget(evaluations=args.budget)
    storage = args.storage or Path("runs") / f"search_{args.strategy}_{args.seed}.db"
    storage.parent.mkdir(parents=True, exist_ok=True)
    results = run_search(strategy, evaluator, objective="valid_accuracy", budget=budget, storage=storage,
                         n_workers=args.workers, progress=True)
    best = results.best()
    if best is None:
        print(f"no feasible architecture found in {len(results)} trials (storage: {storage})")
        return 1
    print(f"{len(results)} trials in {storage}")
    print(f"best by validation accuracy: {nb201_string(best.arch)}")
    print(f"  valid {best.metrics['valid_accuracy']:.2f}  test {best.metrics['test_accuracy']:.2f}  at {best.fidelity:g} epochs")
    for constraint in args.constraint:
        print(f"  {constraint.metric} = {best.metrics[constraint.metric]:.4g}")
    return 0
