"""MathNAS as a search under FLOPs, latency and energy limits on a NAS-Bench-201 table, beside BO, evolution and random search.

Every evaluation is a table look-up of one cell (its validation accuracy and its measured latencies
and energy), counted once per distinct cell; FLOPs are counted analytically (no training, no
device), so the FLOPs table costs no look-up. MathNAS, within ``--budget`` look-ups in total:

1. Algorithm 1 around ``N^avg`` (per edge the operation with FLOPs closest to the edge's mean),
   signed deltas against each edge's mean operation: 25 look-ups.
2. An exact search (additive law, MILP) under the limit gives a first pick; it becomes a second
   host (Eq. 3 over the two hosts: at most 24 more look-ups), so the block performances describe
   the region the search is in.
3. A latency limit is checked against a table fitted by least squares to every cell measured so far
   (``lightning_nas.profiling.fit_table``, prior: the Algorithm 1 deltas), solved against the limit
   shrunk by the fit's held-out safety margin; FLOPs and energy use their additive tables.
4. The ``k`` best distinct cells by the model (solution pool), ``k`` = the look-ups left, are looked
   up and the best one by validation accuracy that truly meets the limit is returned
   (``search_constrained(top_k=k, verify=...)``).

Limits: FLOPs, a CPU latency, a device latency and energy, each at the 25 / 50 / 75 % quantiles of
the table, and no limit. Reported: the pick's test accuracy, its percentile among the cells that
truly meet the limit (target >= 90), violations (target 0), look-ups; unconstrained, the distance to
the table's best test accuracy (target <= 0.3) and the paper's figure. Baselines with the same limit
and the same number of evaluations: BO + pretraining, regularised evolution and random search; they
read the true cost of a cell from the table as a free cost model before evaluating it (an advantage
MathNAS does not get: its latency comes from its own fit).

Usage::

    .venv/bin/python benchmarks/mathnas_constrained_nb201.py --table ../shared/data/nb201/nb201_cifar10.csv
    .venv/bin/python benchmarks/mathnas_constrained_nb201.py --table ../shared/data/nb201/nb201_cifar100.csv
    .venv/bin/python benchmarks/mathnas_constrained_nb201.py --seeds 1 --no-baselines --no-write   # quick
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from results_file import publish  # benchmarks/ is the script's directory
from lightning_nas.bilinear import BilinearTable
from lightning_nas.estimators.block_performance import (
    estimate_block_performance,
    estimate_block_performance_sampled,
    nodes_as_stage,
)
from lightning_nas.evaluators.tabular import TabularBenchmark, TabularEvaluator, infer_columns
from lightning_nas.profiling.fit import fit_table
from lightning_nas.solvers import InfeasibleError, Limit
from lightning_nas.spaces.nb201 import nb201_search_space, nb201_string
from lightning_nas.strategies.base import Constraint
from lightning_nas.strategies.bo import BayesianOptimization
from lightning_nas.strategies.driver import Budget, run_search
from lightning_nas.strategies.evolution import RegularizedEvolution
from lightning_nas.strategies.random_search import RandomSearch

SCRIPT = "benchmarks/mathnas_constrained_nb201.py"
DEFAULT_TABLE = Path(__file__).resolve().parents[2] / "shared" / "data" / "nb201" / "nb201_cifar10.csv"
DATASETS = {"c10": "CIFAR-10", "c100": "CIFAR-100", "imagenet16": "ImageNet16-120"}
#: MathNAS Table 8: test accuracy [%] of the unconstrained NAS-Bench-201 pick.
PAPER_TEST = {"CIFAR-10": 93.31, "CIFAR-100": 70.82, "ImageNet16-120": 46.53}
QUANTILES = (0.25, 0.5, 0.75)


def resolve(args: argparse.Namespace, bench: TabularBenchmark) -> dict:
    """Columns by role (given, else inferred from the NB201 naming scheme) and the dataset's name.

    Raises:
        ValueError: a column the table lacks (naming the option), or one that cannot be inferred.
    """
    inferred = infer_columns(bench.columns, args.prefix, source=args.table.name)
    full = max(inferred["valid_columns"])
    costs = inferred["cost_columns"]
    out = {
        "accuracy": args.accuracy or inferred["valid_columns"][full],
        "test": args.test or inferred["test_columns"].get(full),
        "flops": args.flops or next((c for c in costs if c.endswith("flops_M")), None),
        "latency": args.latency, "device_latency": args.device_latency,
        "energy": args.energy or next((c for c in costs if "energy_mJ_" in c), None),
    }
    for role, column in out.items():
        if column is None or column == "none":
            out[role] = None
            continue
        if column not in bench.columns:
            raise ValueError(f"--{role.replace('_', '-')} {column!r} is not a column of {args.table.name}; "
                             f"the table has {bench.columns}")
    for role in ("accuracy", "test", "flops"):
        if out[role] is None:
            raise ValueError(f"--{role}: {args.table.name} has no such column; give it (columns: {bench.columns})")
    prefix = out["accuracy"].rsplit("_valid_", 1)[0]
    out["dataset"] = args.dataset or DATASETS.get(prefix)
    return out


def flops_table(staged, bench: TabularBenchmark, column: str) -> BilinearTable:
    """The additive FLOPs table from the FLOPs of the default cell and its single-edge switches
    (FLOPs are counted, not measured: no look-up is spent)."""
    space = staged.space
    default = space.default()
    base = bench.value(default, column)
    block = np.zeros((1, staged.max_blocks, staged.num_configs))
    for b, label in enumerate(space.labels):
        for c, op in enumerate(space[label].values):
            block[0, b, c] = bench.value({**default, label: op}, column) - bench.value({**default, label: default[label]}, column)
    ref = sum(block[0, b, space[label].index(default[label])] for b, label in enumerate(space.labels))
    return BilinearTable(staged, base - ref, block, name="flops", unit="MFLOPs")


class LookUps:
    """The table as an evaluator of cells, each distinct cell counted once."""

    def __init__(self, bench: TabularBenchmark, columns: dict[str, str]) -> None:
        self.bench, self.columns, self.seen = bench, columns, {}

    def __call__(self, archs):
        rows = [self.row(a) for a in archs]
        return {metric: np.array([r[metric] for r in rows]) for metric in self.columns}

    def row(self, arch) -> dict[str, float]:
        key = nb201_string(arch)
        if key not in self.seen:
            self.seen[key] = {metric: self.bench.value(arch, col) for metric, col in self.columns.items()}
        return self.seen[key]

    @property
    def count(self) -> int:
        return len(self.seen)


def mathnas(bench, columns, resource: str | None, upper: float | None, budget: int, flops: BilinearTable) -> dict:
    """One MathNAS search (module docstring) under ``resource <= upper`` (``None``: no limit)."""
    staged = flops.staged
    measured = {"accuracy": columns["accuracy"]}
    measured.update({r: columns[r] for r in ("latency", "device_latency", "energy") if columns[r]})
    look = LookUps(bench, measured)
    started = time.perf_counter()

    def limits_of(perf):
        if resource is None:
            return [], None
        if resource == "flops":
            return [Limit(flops, upper=upper)], None
        if resource == "energy":
            return [Limit(perf.table("energy", name="energy"), upper=upper)], None
        archs = [bench.archs[bench.index(_arch(s))] for s in look.seen]
        values = [look.seen[nb201_string(a)][resource] for a in archs]
        fit = fit_table(staged, archs, values, prior=perf.table(resource), name=resource, unit="ms")
        return [Limit(fit.table, upper=fit.safe_upper(upper))], fit

    first = estimate_block_performance(look, staged, flops)
    limits, fit = limits_of(first)
    try:
        pick = first.search(limits)
        second = estimate_block_performance_sampled(look, staged, flops, hosts=[first.host, pick.arch])
        limits, fit = limits_of(second)
        left = budget - look.count

        def verify(arch):
            row = look.row(arch)
            out = {"accuracy": row["accuracy"]}
            if resource is not None:
                out[resource] = row[resource] if resource != "flops" else bench.value(arch, columns["flops"])
            return out

        result = second.search(limits, top_k=left, verify=verify, max_verify=left)
        arch, failure = result.arch, None
    except InfeasibleError as err:
        arch, failure = None, str(err)
    out = {"arch": arch, "lookups": look.count, "seconds": time.perf_counter() - started, "failure": failure,
           "margin": None if fit is None else fit.margin,
           "fit_mape": None if fit is None else fit.heldout["mape_percent"],
           "prior_mape": None if fit is None else fit.prior_heldout["mape_percent"]}
    return out


def _arch(string: str):
    from lightning_nas.spaces.nb201 import nb201_from_string

    return nb201_from_string(string)


def baselines(evaluator: TabularEvaluator, column: str | None, upper: float | None, evaluations: int, seeds: int,
              pretrain: tuple[str, ...], only: list[str] | None, bo_seeds: int | None = None) -> dict:
    space = nb201_search_space()
    constraints = [] if column is None else [Constraint(column, upper=upper)]
    common = dict(constraints=constraints, cost_model=evaluator.costs)
    makers = {
        "BO + pretraining": lambda s: BayesianOptimization(space, seed=s, pretrain_metrics=pretrain, steps=100,
                                                           targets="rank", **common),
        "regularised evolution": lambda s: RegularizedEvolution(space, seed=s, population=20, sample=5, **common),
        "random search": lambda s: RandomSearch(space, seed=s, **common),
    }
    out = {}
    for name, make in makers.items():
        if only is not None and name not in only:
            continue
        runs = []
        for seed in range(bo_seeds if name.startswith("BO") and bo_seeds is not None else seeds):
            results = run_search(make(seed), evaluator, objective="valid_accuracy", budget=Budget(evaluations=evaluations))
            best = results.best()
            runs.append(None if best is None else best.arch)
        out[name] = runs
    return out


def score(bench, columns, arch, resource_column, upper) -> dict:
    test = bench.column(columns["test"])
    ok = np.ones(len(test), bool) if resource_column is None else bench.column(resource_column) <= upper
    if arch is None:
        return {"test": float("nan"), "percentile": None, "violation": False, "missing": True}
    value = bench.value(arch, columns["test"])
    violation = resource_column is not None and bench.value(arch, resource_column) > upper
    return {"test": value, "percentile": None if violation else float((test[ok] < value).mean() * 100),
            "violation": violation, "missing": False, "best_test": float(test[ok].max())}


def run(args: argparse.Namespace) -> dict:
    torch.set_num_threads(1)
    bench = TabularBenchmark.from_csv(args.table)
    columns = args.columns
    staged = nodes_as_stage(nb201_search_space())
    flops = flops_table(staged, bench, columns["flops"])
    mapping = {"prefix": columns["accuracy"].rsplit("_valid_", 1)[0],
               "valid": {"200": columns["accuracy"]}, "test": {"200": columns["test"]},
               "costs": [c for c in (columns["flops"], columns["latency"], columns["device_latency"], columns["energy"]) if c]}
    evaluator = TabularEvaluator.from_mapping(bench, mapping)
    pretrain = tuple(c for c in (columns["flops"], columns["latency"]) if c)
    settings = [(None, None)] + [(r, q) for r in ("flops", "latency", "device_latency", "energy") if columns[r]
                                 for q in QUANTILES]
    rows = []
    for resource, q in settings:
        column = None if resource is None else columns[resource]
        upper = None if column is None else float(np.quantile(bench.column(column), q))
        m = mathnas(bench, columns, resource, upper, args.budget, flops)
        row = {"resource": resource, "column": column, "q": q, "upper": upper, "mathnas": m,
               "mathnas_score": score(bench, columns, m["arch"], column, upper)}
        evaluations = args.budget
        if not args.no_baselines:
            runs = baselines(evaluator, column, upper, evaluations, args.seeds, pretrain, args.only, args.bo_seeds)
            row["baselines"] = {name: [score(bench, columns, a, column, upper) for a in archs] for name, archs in runs.items()}
        rows.append(row)
        print({k: v for k, v in row.items() if k != "baselines"}, flush=True)
    return {"rows": rows, "cells": len(bench.archs)}


def _fmt(s: dict) -> str:
    if s["missing"]:
        return "no pick"
    if s["violation"]:
        return f"{s['test']:.2f} (**violation**)"
    return f"{s['test']:.2f} ({s['percentile']:.1f})"


def _mean(scores: list[dict]) -> str:
    vals = [s for s in scores if not s["missing"]]
    violations = sum(s["violation"] for s in vals) + sum(s["missing"] for s in scores)
    pct = [s["percentile"] for s in vals if s["percentile"] is not None]
    text = f"{statistics.mean(s['test'] for s in vals):.2f}" if vals else "—"
    text += f" ({statistics.mean(pct):.1f})" if pct else ""
    return text + (f", {violations}/{len(scores)} violating or empty" if violations else "")


def report(args, results: dict, command: str) -> str:
    import pyomo.version

    c = args.columns
    dataset = c["dataset"] or "unknown dataset"
    begin, end = markers(args.table, c["dataset"])
    names = {"flops": f"FLOPs `{c['flops']}`", "latency": f"CPU latency `{c['latency']}`",
             "device_latency": f"device latency `{c['device_latency']}`", "energy": f"energy `{c['energy']}`"}
    lines = [
        begin,
        f"## MathNAS under FLOPs, latency and energy limits on NAS-Bench-201 ({dataset}, `{args.table.name}`), "
        "beside BO, evolution and random search",
        "",
        f"- Date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}",
        f"- Machine: {platform.processor() or platform.machine()} ({platform.platform()}), {os.cpu_count()} CPUs visible "
        f"(shared with other jobs: timings are noisy); torch {torch.__version__}, 1 thread; Pyomo {pyomo.version.version}, HiGHS",
        f"- Command: `{command}`",
        f"- Columns: search signal `{c['accuracy']}`, reported `{c['test']}`; limits on "
        + ", ".join(names[r] for r in names if c[r]) + f" at the {', '.join(f'{q:.0%}' for q in QUANTILES)} quantiles "
        f"of the {results['cells']:,} cells.",
        f"- MathNAS ({SCRIPT} docstring): Algorithm 1 (mean-option reference) + a second host at the first pick, additive "
        f"law, exact MILP; latency from a least-squares fit to the measured cells with its held-out margin; the best of "
        f"the k best cells by the model that truly meets the limit, {args.budget} look-ups in all. Baselines: "
        f"{args.bo_seeds} seed(s) of BO, {args.seeds} of the others, {args.budget} evaluations, selection by `{c['accuracy']}`, with the true cost as a "
        "free cost model (mean test, mean percentile).",
        "- Cell: test accuracy of the pick (its percentile among the cells that truly meet the limit); a pick over the "
        "true limit is a **violation**.",
        "",
        "| limit | bound | MathNAS pick | look-ups | latency fit: held-out MAPE (Alg. 1 table) / margin |"
        + "".join(f" {n} |" for n in _baseline_names(results)),
        "|---|---:|---|---:|---|" + "---|" * len(_baseline_names(results)),
    ]
    misses = []
    for row in results["rows"]:
        m, s = row["mathnas"], row["mathnas_score"]
        limit = "none" if row["resource"] is None else f"{names[row['resource']]} ≤ {row['q']:.0%} quantile"
        bound = "—" if row["upper"] is None else f"{row['upper']:.3g}"
        fit = "—" if m["fit_mape"] is None else f"{m['fit_mape']:.1f} % ({m['prior_mape']:.1f} %) / {m['margin']:.1%}"
        cells = [_mean(row["baselines"][n]) if "baselines" in row and n in row["baselines"] else "—"
                 for n in _baseline_names(results)]
        lines.append(f"| {limit} | {bound} | {_fmt(s)} | {m['lookups']} | {fit} |" + "".join(f" {x} |" for x in cells))
        if s["missing"] or s["violation"] or (row["resource"] is not None and s["percentile"] < 90) or m["lookups"] > args.budget:
            misses.append(limit)
    uncon = results["rows"][0]["mathnas_score"]
    paper = args.paper_test if args.paper_test is not None else PAPER_TEST.get(c["dataset"])
    lines += [
        "",
        f"Targets: constrained picks truly meet the limit and sit at or above the 90th percentile within {args.budget} "
        f"look-ups: {'met' if not misses else 'MISSED for ' + ', '.join(misses)}. Unconstrained: {uncon['test']:.2f} test "
        f"vs the table's best {uncon['best_test']:.2f} ({'met' if uncon['best_test'] - uncon['test'] <= 0.3 else 'MISSED'} "
        "within 0.3 points)"
        + (f"; paper {paper} ({'met' if uncon['test'] >= paper else 'MISSED'})." if paper is not None else
           "; no paper figure for this dataset."),
        end,
    ]
    return "\n".join(lines) + "\n"


def _baseline_names(results: dict) -> list[str]:
    row = results["rows"][0]
    return list(row.get("baselines", {}))


def markers(table: Path, dataset: str | None) -> tuple[str, str]:
    """Markers naming the table and the dataset: a run never replaces another dataset's section."""
    tag = f"{SCRIPT} --table {table.name} ({dataset or 'unknown dataset'})"
    return f"<!-- {tag}: begin -->", f"<!-- {tag}: end -->"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--table", type=Path, default=DEFAULT_TABLE, help="NB201-format CSV of any dataset")
    parser.add_argument("--prefix", default=None, help="dataset prefix of the columns to infer (default: the table's only one)")
    parser.add_argument("--dataset", default=None, help=f"the dataset's name for the title and paper figure (default: from the prefix, {DATASETS})")
    parser.add_argument("--accuracy", default=None, help="search signal column (default <prefix>_valid_<highest epochs>)")
    parser.add_argument("--test", default=None, help="reported column (default <prefix>_test_<epochs>)")
    parser.add_argument("--flops", default=None, help="FLOPs column (default [<prefix>_]flops_M)")
    parser.add_argument("--latency", default="lat_ms_gold_6226", help="CPU latency column (none: skip)")
    parser.add_argument("--device-latency", default="lat_ms_pixel3", help="device latency column (none: skip)")
    parser.add_argument("--energy", default=None, help="energy column (default the first energy_mJ_ column; none: skip)")
    parser.add_argument("--paper-test", type=float, default=None,
                        help=f"the paper's unconstrained test accuracy for this dataset (default {PAPER_TEST} by dataset)")
    parser.add_argument("--budget", type=int, default=100, help="look-ups MathNAS may spend, and the baselines' evaluations")
    parser.add_argument("--seeds", type=int, default=5, help="seeds of evolution and random search")
    parser.add_argument("--bo-seeds", type=int, default=2, help="seeds of BO + pretraining (~17 s a run on one thread)")
    parser.add_argument("--only", nargs="*", default=None, help="baselines to run (default all)")
    parser.add_argument("--no-baselines", action="store_true")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "RESULTS.md")
    parser.add_argument("--no-write", action="store_true", help="print the section without writing --out")
    args = parser.parse_args(argv)
    if args.budget < 60 or args.seeds < 1 or args.bo_seeds < 1:
        parser.error("--budget must be at least 60 (two hosts take up to 49 look-ups), --seeds and --bo-seeds at least 1")
    try:
        args.columns = resolve(args, TabularBenchmark.from_csv(args.table))
    except (ValueError, OSError) as err:
        parser.error(str(err))
    print(f"{args.table.name}: {args.columns}", flush=True)
    publish("mathnas_constrained_nb201.py", argv, args.out, not args.no_write, lambda command: report(args, run(args), command),
            *markers(args.table, args.columns["dataset"]))


if __name__ == "__main__":
    main()
