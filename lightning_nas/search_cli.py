"""``lightning-nas search``: a black-box search on a tabular benchmark, resumable from its storage.

Usage::

    lightning-nas search --table nb201_cifar10.csv --strategy bo --budget 100 --storage runs/bo.db
    lightning-nas search --table nb201_cifar100.csv --strategy layernas --budget 300 --constraint "lat_ms_pixel3<=12" \\
        --out trials.csv --pareto c100_flops_M,lat_ms_pixel3
    lightning-nas search --table my_table.csv --columns columns.yaml --objective c100_flops_M --minimize

Every trial goes to the SQLite ``--storage`` as it finishes; running the same command again after
an interruption (even ``kill -9``) resumes the search with nothing lost or repeated. The table is a
NAS-Bench-201-format CSV of any dataset (see :mod:`lightning_nas.evaluators.tabular`): its validation,
test and cost columns are inferred from the column names (``<prefix>_valid_<epochs>``, ...) or given
with ``--columns``. Strategies select by validation accuracy (or ``--objective``); the test accuracy
of the selection is reported.

Outputs: a summary on stdout (the best feasible trial and its metrics, the evaluations used, how
many trials were feasible), ``--out`` (every trial: arch, metrics, feasibility, failure reason; CSV or
JSON, written atomically and never over an existing file without ``--overwrite``) and ``--pareto``
(the front of the objective against the named costs). The exit status is 0 when a feasible arch was
found, 1 when none was (the least violating one is printed), 2 for bad options.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import math
import sys
from pathlib import Path
from typing import Any

__all__ = ["STRATEGIES", "add_arguments", "parse_constraint", "read_columns", "run"]

STRATEGIES = ("random", "evolution", "layernas", "bo", "rank-nosh")
#: Metrics every tabular evaluation reports, besides the table's cost columns.
ACCURACY_METRICS = ("valid_accuracy", "test_accuracy")
OUT_FORMATS = (".csv", ".json")


def parse_constraint(text: str):
    """``"COLUMN<=X"`` or ``"COLUMN>=X"`` (X a finite number) → a :class:`~lightning_nas.strategies.Constraint`
    (parsed as ``lightning-nas select --limit`` parses its bounds)."""
    from lightning_nas.select_cli import parse_limit
    from lightning_nas.strategies import Constraint

    column, side, value = parse_limit(text)
    return Constraint(column, **{side: value})


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


def _column_list(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",")]
    if not all(names):
        raise argparse.ArgumentTypeError(f"must be column names separated by commas (e.g. 'c10_flops_M,lat_ms_pixel3'), "
                                         f"got {text!r}")
    if len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(f"names a column twice: {text!r}")
    return names


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``search`` options to ``parser``; returns it."""
    parser.add_argument("--table", required=True, type=Path, help="a NAS-Bench-201-format CSV (any dataset)")
    parser.add_argument("--columns", default=None, metavar="FILE_OR_JSON",
                        help="the table's columns: a .json/.yaml/.yml file or inline JSON such as "
                             "'{\"valid\": {\"200\": \"c100_valid_200\"}, \"test\": {\"200\": \"c100_test_200\"}, "
                             "\"costs\": [\"c100_flops_M\"]}' (keys prefix, valid, test, costs; a key left out is "
                             "inferred from the column names <prefix>_valid_<epochs>, <prefix>_test_<epochs>, "
                             "[<prefix>_]params_M / flops_M / lat_ms_<device> / energy_mJ_<device>)")
    parser.add_argument("--strategy", choices=STRATEGIES, default="bo")
    parser.add_argument("--budget", type=_positive, default=100, help="evaluations (multi-fidelity strategies: full-evaluation equivalents)")
    parser.add_argument("--storage", type=Path, default=None,
                        help="SQLite file (default runs/search_<table>_<strategy>_<seed>.db); resumed when it exists")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--objective", default="valid_accuracy",
                        help="the metric to optimise: valid_accuracy (default), test_accuracy, a cost column or any "
                             "numeric column of the table")
    direction = parser.add_mutually_exclusive_group()
    direction.add_argument("--maximize", dest="maximize", action="store_const", const=True, default=None,
                           help="larger --objective is better (default, except for a cost column)")
    direction.add_argument("--minimize", dest="maximize", action="store_const", const=False,
                           help="smaller --objective is better (default for a cost column)")
    parser.add_argument("--constraint", type=parse_constraint, action="append", default=[],
                        help="'COLUMN<=VALUE' or 'COLUMN>=VALUE' on a cost column (repeatable)")
    parser.add_argument("--layernas-cost", default=None, metavar="COLUMN",
                        help="layernas: the cost column it buckets by (default: the first --constraint's column, else "
                             "the table's FLOPs column, else its first cost column)")
    parser.add_argument("--pretrain", action="store_true", help="bo: pretrain the ensemble on the zero-cost columns")
    parser.add_argument("--workers", type=_positive, default=1, help="evaluations in flight (a local process pool when > 1)")
    parser.add_argument("--trial-timeout", type=_positive_seconds, default=None, metavar="SECONDS",
                        help="stop an evaluation after SECONDS (it runs in a child process that is killed; the trial "
                             "is stored as failed and the search goes on)")
    parser.add_argument("--out", type=Path, default=None, metavar="TRIALS.csv|TRIALS.json",
                        help="write every trial (arch, metrics, feasibility, failure reason) as CSV or JSON")
    parser.add_argument("--overwrite", action="store_true", help="let --out replace an existing file")
    parser.add_argument("--pareto", type=_column_list, default=None, metavar="COST1,COST2",
                        help="print the Pareto front of --objective against these metrics (minimised) over the "
                             "feasible trials; with --out, each trial's 'pareto' field marks it")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--unsafe-convert-pickle", action="store_true",
                        help="UNSAFE: convert a --storage file written by an older version (pickled strategy state) "
                             "by loading its pickle, which runs any code planted in it; only for files you trust")
    return parser


def read_columns(spec: str | None) -> tuple[dict[str, Any], str]:
    """The column mapping ``--columns`` gives, and where it came from (for messages).

    ``spec`` is inline JSON (starting with ``{``), or a ``.json``, ``.yaml`` or ``.yml`` file;
    ``None`` gives ``{}`` (every column inferred).

    Raises:
        ValueError: not valid JSON/YAML, not a mapping, or a file of another kind (naming ``--columns``).
        OSError: the file cannot be read.
    """
    if spec is None:
        return {}, "--columns"
    if spec.lstrip().startswith("{"):
        try:
            value = json.loads(spec)
        except json.JSONDecodeError as err:
            raise ValueError(f"--columns: the inline JSON is not valid ({err.msg} at column {err.colno}): {spec!r}") from None
        where = "--columns"
    else:
        path = Path(spec)
        where = f"--columns {spec}"
        if path.suffix.lower() not in (".json", ".yaml", ".yml"):
            raise ValueError(f"--columns must be a .json, .yaml or .yml file or inline JSON starting with '{{', got {spec!r}")
        if not path.is_file():
            raise FileNotFoundError(f"--columns file {spec!r} does not exist")
        if path.suffix.lower() == ".json":
            from lightning_nas.io import read_json

            value = read_json(path, "--columns file")
        else:
            import yaml

            try:
                value = yaml.safe_load(path.read_text(encoding="utf-8"))
            except (yaml.YAMLError, UnicodeDecodeError) as err:
                raise ValueError(f"--columns file {spec!r} is not valid YAML: {err}") from None
    if not isinstance(value, dict):
        raise ValueError(f"{where}: must be a mapping with keys prefix, valid, test, costs; got {type(value).__name__}")
    return value, where


def build_strategy(name: str, space, evaluator, *, seed: int, constraints: list, pretrain: bool,
                   cost: str | None = None) -> Any:
    """The strategy ``name`` over ``space``, with ``evaluator.costs`` as its zero-cost model; ``cost`` is
    the column LayerNAS buckets by (``None``: every model its own bucket)."""
    from lightning_nas.strategies import BayesianOptimization, LayerNAS, RandomSearch, RankNOSH, RegularizedEvolution

    common = dict(seed=seed, constraints=constraints, cost_model=evaluator.costs)
    if name == "random":
        return RandomSearch(space, **common)
    if name == "evolution":
        return RegularizedEvolution(space, **common)
    if name == "layernas":
        return LayerNAS(space, cost=cost, **common)
    if name == "bo":
        metrics = list(evaluator.cost_columns) if pretrain else []
        return BayesianOptimization(space, pretrain_metrics=metrics, **common)
    return RankNOSH(space, levels=tuple(evaluator.fidelities), **common)


def layernas_cost(requested: str | None, constraints: list, cost_columns: tuple[str, ...]) -> str | None:
    """The column LayerNAS buckets by: ``requested``, else the first constraint's column, else the table's
    FLOPs column (named ``...flops_M``), else its first cost column; ``None`` when the table has no cost.

    Raises:
        ValueError: ``requested`` is not a cost column.
    """
    if requested is not None:
        if requested not in cost_columns:
            raise ValueError(f"--layernas-cost {requested!r} is not a cost column; allowed: {list(cost_columns)}")
        return requested
    if constraints:
        return constraints[0].metric
    flops = [c for c in cost_columns if c.endswith("flops_M")]
    return (flops or list(cost_columns) or [None])[0]


def run(args: argparse.Namespace) -> int:
    """Run (or resume) the search; prints the summary, writes ``--out``. Returns the exit status: 0, or 1
    when no evaluated arch meets the constraints (the least violating one is printed).

    Raises:
        ValueError: a bad option, table or storage (the message names it), or a storage that cannot be
            written while searching (a full disk).
        OSError: ``--table``, ``--columns`` or ``--out`` cannot be read or written (the message names it).
    """
    from lightning_nas.evaluators import TabularBenchmark, TabularEvaluator
    from lightning_nas.io import check_writable
    from lightning_nas.spaces.nb201 import nb201_search_space
    from lightning_nas.strategies import Budget, SQLiteStorage, run_search

    _check_out(args.out, args.overwrite)  # before any work: a search whose trials cannot be written is wasted
    if args.out is not None:
        check_writable(args.out, "--out")
    if args.layernas_cost is not None and args.strategy != "layernas":
        raise ValueError(f"--layernas-cost applies to --strategy layernas only, not {args.strategy!r}")
    mapping, where = read_columns(args.columns)
    benchmark = TabularBenchmark.from_csv(args.table)
    if args.objective not in ACCURACY_METRICS and args.objective not in benchmark.columns:
        raise ValueError(f"--objective {args.objective!r} is neither {' nor '.join(ACCURACY_METRICS)} nor a column of "
                         f"{args.table}; its columns: {benchmark.columns}")
    extra = [] if args.objective in ACCURACY_METRICS else [args.objective]
    evaluator = TabularEvaluator.from_mapping(benchmark, mapping, where=where, extra_columns=extra)
    maximize = args.maximize if args.maximize is not None else args.objective not in evaluator.cost_columns
    for constraint in args.constraint:
        if constraint.metric not in evaluator.cost_columns:
            raise ValueError(f"--constraint column {constraint.metric!r} is not a cost column; allowed: {list(evaluator.cost_columns)}")
    for cost in args.pareto or []:
        allowed = [m for m in evaluator.metrics if m != args.objective]
        if cost not in allowed:
            raise ValueError(f"--pareto {cost!r} is not a metric of this search other than the objective; allowed: {allowed}")
    _check_reachable(args.constraint, evaluator)
    cost = layernas_cost(args.layernas_cost, args.constraint, evaluator.cost_columns) if args.strategy == "layernas" else None
    strategy = build_strategy(args.strategy, nb201_search_space(), evaluator, seed=args.seed, constraints=args.constraint,
                              pretrain=args.pretrain, cost=cost)
    multi_fidelity = args.strategy == "rank-nosh"
    budget = Budget(equivalent_evaluations=args.budget) if multi_fidelity else Budget(evaluations=args.budget)
    path = args.storage or Path("runs") / f"search_{args.table.stem}_{args.strategy}_{args.seed}.db"
    table_id = {"name": args.table.name, "sha256": hashlib.sha256(args.table.read_bytes()).hexdigest(),
                "columns": evaluator.mapping()}

    print(f"table {args.table.name}: {len(benchmark)} archs; columns {json.dumps(evaluator.mapping())}")
    print(f"{'maximising' if maximize else 'minimising'} {args.objective}"
          + (f"; LayerNAS buckets by {cost or 'nothing (every model its own bucket)'}" if args.strategy == "layernas" else ""))
    if args.objective == "test_accuracy":
        print("note: selecting by test accuracy makes the reported test accuracy optimistic; papers select by "
              "validation accuracy", file=sys.stderr)
    with SQLiteStorage(path, unsafe_convert_pickle=args.unsafe_convert_pickle) as storage:
        _check_same_table(storage, path, table_id)
        progress = None if args.no_progress else _Progress(args.budget, evaluator.full_fidelity, args.objective,
                                                           maximize, multi_fidelity)
        try:
            results = run_search(strategy, evaluator, objective=args.objective, maximize=maximize, budget=budget,
                                 storage=storage, n_workers=args.workers, progress=False,
                                 trial_timeout=args.trial_timeout, stop_when=progress)
        except OSError as err:  # the storage could not be written mid-search: what was stored is kept
            raise ValueError(f"--storage: {err}") from None
        finally:
            if progress is not None:
                progress.close()
        if storage.meta().get("table") is None:
            storage.set_meta(table=table_id)
    front = results.pareto_front(args.pareto) if args.pareto else []
    status = _print_summary(args, results, path, front)
    if args.out is not None:
        _write_trials(args, results, evaluator, front, table_id)
        print(f"wrote {len(results.records)} trials to {args.out}")
    return status


class _Progress:
    """A progress bar over the budget showing the best feasible objective so far (at the full fidelity),
    not the latest trial's. ``run_search`` calls it with every finished trial (as ``stop_when``, resumed
    trials included); it never stops the search."""

    def __init__(self, budget: int, full_fidelity: float, objective: str, maximize: bool, multi_fidelity: bool) -> None:
        from tqdm.auto import tqdm

        self.full, self.objective, self.maximize, self.multi = full_fidelity, objective, maximize, multi_fidelity
        self.best: float | None = None
        self.feasible = 0
        unit = "full eval" if multi_fidelity else "eval"
        self.bar = tqdm(total=budget, unit=unit, desc="search", file=sys.stderr)
        self.bar.set_postfix_str(f"best {objective}: none yet")

    def __call__(self, record) -> bool:
        value = record.metrics[self.objective]
        if record.violation <= 0.0:
            self.feasible += 1
            better = self.best is None or (value > self.best if self.maximize else value < self.best)
            if record.fidelity == self.full and better:
                self.best = value
        self.bar.update(record.epochs / self.full if self.multi else 1)
        best = "none feasible yet" if self.best is None else f"{self.best:.4g}"
        self.bar.set_postfix_str(f"best {self.objective}: {best}, feasible {self.feasible}")
        return False

    def close(self) -> None:
        self.bar.close()


def _check_out(out: Path | None, overwrite: bool) -> None:
    if out is None:
        return
    if out.suffix.lower() not in OUT_FORMATS:
        raise ValueError(f"--out must end in .csv or .json (the format), got {str(out)!r}")
    if out.exists() and not out.is_dir() and not overwrite:
        raise ValueError(f"--out {str(out)!r} already exists; pass --overwrite to replace it, or choose another path")


def _check_same_table(storage, path: Path, table_id: dict) -> None:
    """Refuse to resume a storage searched on another table or other columns; record the table in a new one
    (a storage from before tables were recorded gets it once its search has resumed)."""
    stored = storage.meta().get("table")
    if stored is None:
        if storage.strategy_state() is None:
            storage.set_meta(table=table_id)
        return
    for key, what in (("sha256", "the tables' contents differ"), ("columns", "the columns differ")):
        if stored.get(key) != table_id[key]:
            raise ValueError(f"--storage {str(path)!r} holds a search on {stored.get('name')!r} with columns "
                             f"{json.dumps(stored.get('columns'))}; this one is on {table_id['name']!r} with columns "
                             f"{json.dumps(table_id['columns'])} ({what}): use another --storage")


def _print_summary(args: argparse.Namespace, results, path: Path, front: list) -> int:
    from lightning_nas.spaces.nb201 import nb201_string

    ended = [r for r in results.records if r.state in ("done", "failed")]
    feasible = [r for r in results.done if r.violation <= 0.0]
    failed = f", {len(results.failed)} failed (no result)" if results.failed else ""
    print(f"{len(results)} trials in {path}{failed}")
    equivalents = f" ({results.equivalent_evaluations:.2f} full-evaluation equivalents)" if args.strategy == "rank-nosh" else ""
    print(f"evaluations used: {len(ended)}{equivalents}; feasible: {len(feasible)} of {len(results)} finished trials")
    best = results.best()
    if best is None:
        closest = results.least_violating()
        print(f"no feasible architecture found in {len(results)} trials: none meets {_constraints_text(args.constraint)}")
        if closest is not None:
            print(f"least violating: {nb201_string(closest.arch)} (violation {closest.violation:.4g}, "
                  f"{_metrics_text(args.constraint, closest.metrics)})")
    else:
        what = "validation accuracy" if args.objective == "valid_accuracy" else args.objective
        print(f"best by {what}: {nb201_string(best.arch)}  (trial {best.number})")
        print(f"  valid {best.metrics['valid_accuracy']:.2f}  test {best.metrics['test_accuracy']:.2f}  at {best.fidelity:g} epochs")
        if args.objective not in ACCURACY_METRICS:
            print(f"  {args.objective} = {best.metrics[args.objective]:.4g}")
        others = [m for m in best.metrics if m not in ACCURACY_METRICS and m != args.objective]
        if others:
            print("  " + ", ".join(f"{m}={best.metrics[m]:.4g}" for m in others))
    if args.pareto:
        print(f"Pareto front of {args.objective} ({'max' if results.maximize else 'min'}) vs {', '.join(args.pareto)} "
              f"(min), feasible trials: {len(front)}")
        names = [args.objective, *args.pareto]
        print("  " + "  ".join(["trial", *names, "arch"]))
        for r in front:
            print("  " + "  ".join([str(r.number), *(f"{r.metrics[m]:.4g}" for m in names), nb201_string(r.arch)]))
    return 1 if best is None else 0


def _trial_rows(results, evaluator, front: list, pareto: bool) -> list[dict[str, Any]]:
    """One flat dict per stored trial: arch, state, metrics, feasibility, failure reason."""
    from lightning_nas.spaces.nb201 import nb201_op_code, nb201_string

    on_front = {r.number for r in front}
    rows = []
    for r in results.records:
        done = r.state == "done"
        row = {"number": r.number, "state": r.state, "arch_str": nb201_string(r.arch), "op_code": nb201_op_code(r.arch),
               "fidelity": r.fidelity, "epochs": r.epochs, "feasible": bool(r.violation <= 0.0) if done else None,
               "violation": r.violation if done else None}
        if pareto:
            row["pareto"] = r.number in on_front
        row.update(seconds=r.seconds, error=r.error)
        row.update({m: r.metrics.get(m) for m in dict.fromkeys([*evaluator.metrics, *r.metrics])})
        rows.append(row)
    return rows


def _write_trials(args: argparse.Namespace, results, evaluator, front: list, table_id: dict) -> None:
    from lightning_nas.io import atomic_write_json, atomic_write_text

    rows = _trial_rows(results, evaluator, front, args.pareto is not None)
    if args.out.suffix.lower() == ".json":
        best = results.best()
        atomic_write_json(args.out, _finite({
            "table": table_id["name"], "columns": table_id["columns"], "objective": args.objective,
            "maximize": results.maximize, "constraints": [_constraints_text([c]) for c in args.constraint],
            "pareto_costs": args.pareto, "best": None if best is None else best.number,
            "pareto": [r.number for r in front], "trials": rows,
        }))
        return
    header = list(dict.fromkeys(k for row in rows for k in row))
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    for row in rows:
        writer.writerow([_cell(row.get(k)) for k in header])
    atomic_write_text(args.out, buffer.getvalue())


def _cell(value: Any) -> str:
    """A CSV cell: empty for missing and NaN (as the tables read them), ``true``/``false`` for booleans."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _finite(value: Any) -> Any:
    """``value`` with non-finite floats as ``None`` (JSON has no NaN)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


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
