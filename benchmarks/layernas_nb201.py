"""LayerNAS on a NAS-Bench-201 table (any dataset): the paper's settings, and budgeted settings for a given number of evaluations.

Layers are the 6 edges of the cell, default ``none`` (the paper's topology setting), FLOPs buckets
(Eq. 4), selection by validation accuracy, the test accuracy of the selected cell reported, each row
over ``--seeds`` seeds (the seed breaks ties between equally good models):

* paper settings (H = 100 buckets, k = 3 per bucket, one pass), run to the end, and stopped at
  ``--budgets`` evaluations;
* ``LayerNAS.for_budget(space, B)`` for each budget B: the most buckets whose worst-case number of
  evaluations fits B, k = 1, two passes.

Paper (LayerNAS Table 3, NATS topology, test accuracy): 94.34 ± 0.12 / 73.01 ± 0.63 / 46.58 ± 0.59 on
CIFAR-10 / CIFAR-100 / ImageNet16-120, at a search cost of 1e5 s (the number of evaluations is not
given). Project target: >= 94.2 at <= 200 evaluations on CIFAR-10. Sections are titled and marked by
the table and dataset, so no run replaces another dataset's figures.

Usage::

    .venv/bin/python benchmarks/layernas_nb201.py --table ../shared/data/nb201/nb201_cifar10.csv
    .venv/bin/python benchmarks/layernas_nb201.py --table ../shared/data/nb201/nb201_cifar100.csv
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from results_file import publish  # benchmarks/ is the script's directory
from lightning_nas.evaluators.tabular import TabularBenchmark, TabularEvaluator
from lightning_nas.search_cli import layernas_cost
from lightning_nas.spaces.nb201 import nb201_search_space
from lightning_nas.strategies.driver import Budget, run_search
from lightning_nas.strategies.layernas import PAPER_SETTINGS, LayerNAS, max_evaluations

SCRIPT = "benchmarks/layernas_nb201.py"
DEFAULT_TABLE = Path(__file__).resolve().parents[2] / "shared" / "data" / "nb201" / "nb201_cifar10.csv"
DATASETS = {"c10": "CIFAR-10", "c100": "CIFAR-100", "imagenet16": "ImageNet16-120"}
#: LayerNAS Table 3 (NATS topology): test accuracy mean and std [%].
PAPER = {"CIFAR-10": (94.34, 0.12), "CIFAR-100": (73.01, 0.63), "ImageNet16-120": (46.58, 0.59)}
#: The project's target: test accuracy at <= this many evaluations, by dataset.
TARGET = {"CIFAR-10": (94.2, 200)}


def run(args: argparse.Namespace) -> dict:
    torch.set_num_threads(1)
    bench = TabularBenchmark.from_csv(args.table)
    evaluator = TabularEvaluator(bench, prefix=args.prefix) if args.prefix else TabularEvaluator(bench)
    valid = evaluator.valid_columns[evaluator.full_fidelity]
    args.dataset = args.dataset or DATASETS.get(valid.rsplit("_valid_", 1)[0])
    flops = layernas_cost(None, [], evaluator.cost_columns)
    space = nb201_search_space()
    rows = {}

    def paper(cap):
        return lambda s: LayerNAS(space, seed=s, cost_model=evaluator.costs, cost=flops, **PAPER_SETTINGS), cap

    makers = {"paper settings (H=100, k=3, 1 pass), to the end": paper(None)}
    for b in args.budgets:
        makers[f"paper settings, stopped at {b}"] = paper(b)
    for b in args.budgets:
        made = LayerNAS.for_budget(space, b, cost_model=evaluator.costs, cost=flops)
        plan = made.plan
        makers[f"for_budget({b}): H={plan['buckets']}, k={plan['per_bucket']}, {plan['passes']} passes "
               f"(worst case {plan['max_evaluations']})"] = (
            lambda s, b=b: LayerNAS.for_budget(space, b, seed=s, cost_model=evaluator.costs, cost=flops), b)
    for name, (make, cap) in makers.items():
        started = time.perf_counter()
        tests, spent = [], []
        for seed in range(args.seeds):
            budget = Budget(evaluations=cap or 1_000_000)
            results = run_search(make(seed), evaluator, objective="valid_accuracy", budget=budget)
            tests.append(results.best().metrics["test_accuracy"])
            spent.append(len(results))
        rows[name] = {"tests": tests, "spent": spent, "cap": cap, "seconds": time.perf_counter() - started}
        print(name, f"{statistics.mean(tests):.2f}", max(spent), flush=True)
    return {"rows": rows, "valid": valid, "flops": flops,
            "paper_bound": max_evaluations(space, **PAPER_SETTINGS)}


def markers(table: Path, dataset: str | None) -> tuple[str, str]:
    tag = f"{SCRIPT} --table {table.name} ({dataset or 'unknown dataset'})"
    return f"<!-- {tag}: begin -->", f"<!-- {tag}: end -->"


def report(args: argparse.Namespace, results: dict, command: str) -> str:
    dataset = args.dataset
    begin, end = markers(args.table, dataset)
    lines = [
        begin,
        f"## LayerNAS on NAS-Bench-201 ({dataset or 'unknown dataset'}, `{args.table.name}`): paper settings and budgets",
        "",
        f"- Date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}",
        f"- Machine: {platform.processor() or platform.machine()} ({platform.platform()}), {os.cpu_count()} CPUs visible "
        f"(shared), torch {torch.__version__}, 1 thread",
        f"- Command: `{command}`",
        f"- Layers: the 6 edges, default `none`; buckets on `{results['flops']}`; selection by `{results['valid']}`, "
        f"test accuracy of the selected cell; {args.seeds} seeds per row (mean ± std). Paper settings' worst case: "
        f"{results['paper_bound']:,} evaluations.",
        "",
        "| settings | test accuracy | evaluations (max over seeds) |",
        "|---|---:|---:|",
    ]
    for name, r in results["rows"].items():
        lines.append(f"| {name} | {statistics.mean(r['tests']):.2f} ± {statistics.pstdev(r['tests']):.2f} | {max(r['spent'])} |")
    paper = PAPER.get(dataset)
    lines.append("")
    lines.append(f"Paper ({dataset}): {paper[0]} ± {paper[1]} (Table 3; evaluations not given)." if paper else
                 f"Paper: no paper figure for {dataset or 'this table'}.")
    target = TARGET.get(dataset)
    if target:
        acc, cap = target
        hits = [(n, statistics.mean(r["tests"])) for n, r in results["rows"].items()
                if n.startswith("for_budget") and r["cap"] is not None and r["cap"] <= cap]
        ok = any(m >= acc for _, m in hits)
        lines.append(f"Target ≥ {acc} test at ≤ {cap} evaluations with the budgeted mode: {'met' if ok else 'MISSED'} "
                     f"({', '.join(f'{m:.2f}' for _, m in hits) or 'no budget <= ' + str(cap) + ' run'}).")
    lines.append(end)
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--table", type=Path, default=DEFAULT_TABLE, help="NB201-format CSV of any dataset")
    parser.add_argument("--prefix", default=None, help="dataset prefix of the columns (default: the table's only one)")
    parser.add_argument("--dataset", default=None, help=f"the dataset's name (default: from the prefix, {DATASETS})")
    parser.add_argument("--budgets", type=int, nargs="+", default=[100, 200], help="evaluation budgets")
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "RESULTS.md")
    parser.add_argument("--no-write", action="store_true", help="print the section without writing --out")
    args = parser.parse_args(argv)
    if args.seeds < 1 or any(b < 1 for b in args.budgets):
        parser.error("--seeds and --budgets must be positive")
    try:
        bench = TabularBenchmark.from_csv(args.table)
        evaluator = TabularEvaluator(bench, prefix=args.prefix) if args.prefix else TabularEvaluator(bench)
    except (ValueError, OSError) as err:
        parser.error(str(err))
    valid = evaluator.valid_columns[evaluator.full_fidelity]
    args.dataset = args.dataset or DATASETS.get(valid.rsplit("_valid_", 1)[0])
    publish("layernas_nb201.py", argv, args.out, not args.no_write, lambda command: report(args, run(args), command),
            *markers(args.table, args.dataset))


if __name__ == "__main__":
    main()
