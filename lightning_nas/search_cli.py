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
import math
import re
from pathlib import Path
from typing import Any

__all__ = ["STRATEGIES", "add_arguments", "parse_constraint", "run"]

STRATEGIES = ("random", "evolution", "layernas", "bo", "rank-nosh")


def parse_constraint(text: str):
    """``"COLUMN<=X"`` or ``"COLUMN>=X"`` (X a finite number) → a :class:`~lightning_nas.strategies.Constraint`."""
    from lightning_nas.strategies import Constraint

    match = re.fullmatch(r"\s*([^<>=\s]+)\s*(<=|>=)\s*(\S+)\s*", text)
    if match is None:
        raise argparse.ArgumentTypeError(f"a constraint is 'COLUMN<=VALUE' or 'COLUMN>=VALUE', got {text!r}")
    column, op, number = match.groups()
    try:
        value = float(number)
    except ValueError:
        raise argparse.ArgumentTypeError(f"the VALUE of constraint {text!r} must be a number, got {number!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"the VALUE of constraint {text!r} must be a finite number, got {number!r}")
    return Constraint(column, upper=value) if op == "<=" else Constraint(column, lower=value)


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 < value < math.inf:
        raise argparse.ArgumentTypeError(f"must be a positive finite number of seconds, got {text!r}")
    return value


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
    parser.add_argument("--trial-timeout", type=_positive_seconds, default=None, metavar="SECONDS",
                        help="stop an evaluation after SECONDS (it runs in a child process that is killed; the trial "
                             "is stored as failed and the search goes on)")
    parser.add_argument("--unsafe-convert-pickle", action="store_true",
                        help="UNSAFE: convert a --storage file written by an older version (pickled strategy state) "
                             "by loading its pickle, which runs any code planted in it; only for files you trust")
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
    """Run (or resume) the search; prints the best feasible trial. Returns the exit status: 0, or 1 when
    no evaluated arch meets the constraints (the least violating one is printed).

    Raises:
        ValueError: a bad option, table or storage (the message names it), or a storage that cannot be
            written while searching (a full disk).
    """
    from lightning_nas.evaluators import TabularBenchmark, TabularEvaluator
    from lightning_nas.spaces.nb201 import nb201_search_space, nb201_string
    from lightning_nas.strategies import Budget, SQLiteStorage, run_search

    evaluator = TabularEvaluator(TabularBenchmark.from_csv(args.table))
    for constraint in args.constraint:
        if constraint.metric not in evaluator.cost_columns:
            raise ValueError(f"--constraint column {constraint.metric!r} is not a cost column; allowed: {list(evaluator.cost_columns)}")
    _check_reachable(args.constraint, evaluator)
    strategy = build_strategy(args.strategy, nb201_search_space(), evaluator, seed=args.seed, constraints=args.constraint,
                              pretrain=args.pretrain)
    multi_fidelity = args.strategy == "rank-nosh"
    budget = Budget(equivalent_evaluations=args.budget) if multi_fidelity else Budget(evaluations=args.budget)
    path = args.storage or Path("runs") / f"search_{args.strategy}_{args.seed}.db"
    with SQLiteStorage(path, unsafe_convert_pickle=args.unsafe_convert_pickle) as storage:
        try:
            results = run_search(strategy, evaluator, objective="valid_accuracy", budget=budget, storage=storage,
                                 n_workers=args.workers, progress=True, trial_timeout=args.trial_timeout)
        except OSError as err:  # the storage could not be written mid-search: what was stored is kept
            raise ValueError(f"--storage: {err}") from None
    failed = f", {len(results.failed)} failed (no result)" if results.failed else ""
    print(f"{len(results)} trials in {path}{failed}")
    best = results.best()
    if best is None:
        closest = results.least_violating()
        print(f"no feasible architecture found in {len(results)} trials: none meets {_constraints_text(args.constraint)}")
        if closest is not None:
            print(f"least violating: {nb201_string(closest.arch)} (violation {closest.violation:.4g}, "
                  f"{_metrics_text(args.constraint, closest.metrics)})")
        return 1
    print(f"best by validation accuracy: {nb201_string(best.arch)}")
    print(f"  valid {best.metrics['valid_accuracy']:.2f}  test {best.metrics['test_accuracy']:.2f}  at {best.fidelity:g} epochs")
    for constraint in args.constraint:
        print(f"  {constraint.metric} = {best.metrics[constraint.metric]:.4g}")
    return 0


def _check_reachable(constraints: list, evaluator) -> None:
    """Refuse constraints that no arch of the table meets (bounds that contradict each other included)."""
    from lightning_nas.strategies.base import total_violation

    if not constraints:
        return
    columns = {c.metric: evaluator.benchmark.column(c.metric) for c in constraints}
    violations = [total_violation(constraints, {m: float(v[i]) for m, v in columns.items()})
                  for i in range(len(evaluator.benchmark))]
    best = min(range(len(violations)), key=violations.__getitem__)
    if violations[best] > 0.0:
        arch = evaluator.benchmark.archs[best]
        raise ValueError(f"no architecture of the table meets {_constraints_text(constraints)}; the closest has "
                         f"{_metrics_text(constraints, evaluator.costs(arch))} (violation {violations[best]:.4g}): "
                         "loosen --constraint")


def _constraints_text(constraints: list) -> str:
    parts = []
    for c in constraints:
        if c.lower is not None:
            parts.append(f"{c.metric}>={c.lower:g}")
        if c.upper is not None:
            parts.append(f"{c.metric}<={c.upper:g}")
    return " and ".join(parts) or "no constraint"


def _metrics_text(constraints: list, metrics: dict) -> str:
    return ", ".join(f"{m}={metrics[m]:.4g}" for m in dict.fromkeys(c.metric for c in constraints))
