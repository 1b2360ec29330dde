"""Black-box search on a NAS-Bench-201 table (any dataset): random, evolution, LayerNAS, BO, RANK-NOSH.

Every strategy selects by validation accuracy (e.g. ``c10_valid_200``; ``c10_valid_12`` at low
fidelity) and is scored by the test accuracy of what it selected, as the papers do. "Reaching the
optimum" means evaluating the arch with the best validation accuracy at full fidelity (on the CIFAR-10
table also the test optimum, 94.37, index 6111). The table's columns are inferred from their names
(``<prefix>_valid_<epochs>``, ...; see ``docs/tabular_format.md``) or given with ``--columns``; the
dataset (CIFAR-10, CIFAR-100, ImageNet16-120 for the prefixes c10, c100, imagenet16) is read from
the prefix or given with ``--dataset``. Sections, each over ``--seeds`` seeds (``--mf-seeds`` for the
multi-fidelity BO variants, which refit every 5 evaluations):

1. Evaluations to reach the optimum, min / max / mean / std (the BO thesis's Table 5.3 format). For
   multi-fidelity strategies (BO MF, RANK-NOSH) the unit is equivalent full evaluations (epochs /
   full-fidelity epochs). A run that has not reached the optimum after its cap counts as the cap.
2. Test accuracy of the best-validation arch after 100 and 200 queries (Table 5.4 format).
3. LayerNAS and BO under a latency limit (``--latency``, Pixel 3 by default; the median latency of the
   table): test accuracy of the best feasible arch found in 200 evaluations vs the true constrained optimum.
4. Wall-clock overhead per proposal (everything but the table lookups: surrogate fits included).

The paper figures (BO thesis Tables 5.3 and 5.4) are shown for the dataset run on only, and "no paper
figure" where the thesis has none. The section goes into ``RESULTS.md`` under a title and markers
naming the table and dataset; only ``nb201_cifar10.csv`` on CIFAR-10 writes the original
``benchmarks/blackbox_nb201.py`` section, so no run replaces another dataset's figures.

Usage::

    .venv/bin/python benchmarks/blackbox_nb201.py --table ../shared/data/nb201/nb201_cifar10.csv
    .venv/bin/python benchmarks/blackbox_nb201.py --table ../shared/data/nb201/nb201_cifar100.csv
    .venv/bin/python benchmarks/blackbox_nb201.py --only LayerNAS --seeds 1 --no-constrained --no-write  # smoke
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import statistics
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch

from results_file import command_line, write_section  # benchmarks/ is the script's directory
from lightning_nas.evaluators.tabular import TabularBenchmark, TabularEvaluator
from lightning_nas.search_cli import layernas_cost, read_columns
from lightning_nas.spaces.nb201 import nb201_search_space
from lightning_nas.strategies.base import Constraint, Strategy
from lightning_nas.strategies.bo import BayesianOptimization
from lightning_nas.strategies.driver import Budget, run_search
from lightning_nas.strategies.evolution import RegularizedEvolution
from lightning_nas.strategies.layernas import LayerNAS
from lightning_nas.strategies.random_search import RandomSearch
from lightning_nas.strategies.rank_nosh import RankNOSH
from lightning_nas.strategies.results import SearchResults

SCRIPT = "benchmarks/blackbox_nb201.py"
#: The table and dataset whose section keeps the original markers ``<!-- benchmarks/blackbox_nb201.py: begin -->``.
DEFAULT_TABLE, DEFAULT_DATASET = "nb201_cifar10.csv", "CIFAR-10"
#: NAS-Bench-201 column prefixes and the datasets they name.
DATASETS = {"c10": "CIFAR-10", "c100": "CIFAR-100", "imagenet16": "ImageNet16-120"}
#: The project's targets (issue 23), the same on every dataset: method -> (mean at most, max at most); a
#: max equal to the method's cap means "no seed at the cap".
TARGETS = {"BO + pretraining": (45.0, 150.0), "BO MF + pretraining": (40.0, None), "BO": (None, None),
           "RANK-NOSH": (None, None)}
#: Proxies BO pretrains on with --proxy-cache (as benchmarks/proxies_nb201.py's BO comparison).
PROXIES = ("log_synflow", "naswot", "jacob_cov")
DEFAULT_LATENCY = "lat_ms_pixel3"
#: Thesis Table 5.3 (evaluations to the optimum: mean; CIFAR-10 and CIFAR-100 only).
PAPER_MEAN = {
    "CIFAR-10": {"random": 7717.0, "evolution": 250.0, "BANANAS": 128.5, "local search": 99.0, "BO thesis": 78.9},
    "CIFAR-100": {"random": 7141.5, "evolution": 247.5, "BANANAS": 101.0, "local search": 118.5, "BO thesis": 53.7},
}
#: Thesis Table 5.4 (test accuracy [%] of the best arch found after 100 / 200 queries).
PAPER_ACC = {
    "CIFAR-10": {"BO thesis": (94.36, 94.37), "BANANAS": (94.15, 94.20), "local search": (94.26, 94.37),
                 "evolution": (94.20, 94.24), "random": (93.70, 93.86)},
    "CIFAR-100": {"BO thesis": (73.51, 73.51), "BANANAS": (73.28, 73.43), "local search": (73.15, 73.48),
                  "evolution": (72.70, 73.07), "random": (70.94, 71.78)},
    "ImageNet16-120": {"BO thesis": (47.19, 47.31), "BANANAS": (46.46, 46.51), "local search": (46.09, 46.21),
                       "evolution": (46.03, 46.30), "random": (45.44, 45.70)},
}


def dataset_of(evaluator: TabularEvaluator, given: str | None) -> str | None:
    """``given``, else the dataset named by the prefix of the full-fidelity validation column
    (``c100_valid_200`` → CIFAR-100); ``None`` when the prefix names no known dataset."""
    if given is not None:
        return given
    column = evaluator.valid_columns[evaluator.full_fidelity]
    prefix = column.rsplit("_valid_", 1)[0] if "_valid_" in column else None
    return DATASETS.get(prefix)


def markers(table: Path, dataset: str | None) -> tuple[str, str]:
    """The section markers: the original ones for the CIFAR-10 table, else naming the table and dataset."""
    if table.name == DEFAULT_TABLE and dataset == DEFAULT_DATASET:
        tag = SCRIPT
    else:
        tag = f"{SCRIPT} --table {table.name} ({dataset or 'unknown dataset'})"
    return f"<!-- {tag}: begin -->", f"<!-- {tag}: end -->"


def cost_settings(evaluator: TabularEvaluator, latency: str | None) -> dict:
    """The columns the methods use: FLOPs (LayerNAS buckets), the latency of the constrained section
    (``None``: the table has none; the section is skipped) and BO's pretraining metrics.

    Raises:
        ValueError: ``latency`` is not a cost column.
    """
    costs = evaluator.cost_columns
    if latency is not None and latency not in costs:
        raise ValueError(f"--latency {latency!r} is not a cost column of the table; allowed: {list(costs)}")
    if latency is None:
        latencies = [c for c in costs if "lat_ms_" in c]
        latency = DEFAULT_LATENCY if DEFAULT_LATENCY in costs else (latencies[0] if latencies else None)
    flops = layernas_cost(None, [], costs)
    pretrain = [c for c in costs if c.endswith(("params_M", "flops_M"))] + ([latency] if latency else [])
    return {"flops": flops, "latency": latency, "pretrain": tuple(dict.fromkeys(pretrain or costs[:3]))}


#: BO settings shared by every BO row. Mono-fidelity refits start from the pretrained (or fresh)
#: weights; multi-fidelity refits (one every p = 5 evaluations) continue the previous refit's weights
#: for 20 steps, which keeps 20 seeds affordable (see lightning_nas/strategies/bo.py).
BO_SETTINGS = dict(steps=100, targets="rank")
MF_SETTINGS = dict(p=5, q=3, f=10, initial=5, steps=20, warm_start=True)  # fidelities: the table's lowest and highest


def proxy_cost_model(evaluator: TabularEvaluator, cache: Path) -> tuple[Callable[[dict], dict], list[dict]]:
    """A cost model giving the table's costs plus the cached proxies (:data:`PROXIES`; NaN for an arch
    not in the cache), and the cached archs (BO's ``pretrain_on``).

    ``cache`` is the JSON file ``benchmarks/proxies_nb201.py --cache`` writes (cells scored once: the
    proxies of 15,625 cells take hours on a CPU). ``log_synflow`` is ``log(synflow)`` (−inf for 0).
    """
    from lightning_nas.spaces.nb201 import nb201_from_op_code, nb201_op_code

    data = json.loads(Path(cache).read_text())
    table: dict[str, dict[str, float]] = {}
    for row in data["rows"]:
        synflow = float(row["synflow"])
        table[row["op_code"]] = {"log_synflow": math.log(synflow) if synflow > 0 else -math.inf,
                                 "naswot": float(row["naswot"]), "jacob_cov": float(row["jacob_cov"])}
    missing = dict.fromkeys(PROXIES, math.nan)

    def costs(arch: dict) -> dict:
        return {**evaluator.costs(arch), **table.get(nb201_op_code(arch), missing)}

    return costs, [nb201_from_op_code(code) for code in table]


def pretraining(evaluator: TabularEvaluator, proxy_cache: Path | None = None) -> dict:
    """BO's recommended pretraining (the "BO + pretraining" row and the overhead protocol's): the
    table's free cost columns (params, FLOPs, latency) on 2000 draws and, with ``proxy_cache``, the
    cached zero-cost proxies (:data:`PROXIES`) beside them on the cached cells (``pretrain_also``;
    each metric is learnt from every arch that has it). Keyword arguments of
    :class:`~lightning_nas.strategies.bo.BayesianOptimization`."""
    pretrain = cost_settings(evaluator, None)["pretrain"]
    if proxy_cache is None:
        return dict(cost_model=evaluator.costs, pretrain_metrics=pretrain)
    with_proxies, cached = proxy_cost_model(evaluator, proxy_cache)
    return dict(cost_model=with_proxies, pretrain_metrics=pretrain + PROXIES, pretrain_also=cached)


def methods(evaluator: TabularEvaluator, proxy_cache: Path | None = None
            ) -> list[tuple[str, Callable[[int], Strategy], bool, float]]:
    """(name, make(seed), multi-fidelity?, cap) for section 1 and 2. The multi-fidelity rows need two
    fidelities (the table's lowest and highest) and are left out of a table with one; the proxy
    pretraining rows need ``proxy_cache``, which also adds the proxies to "BO + pretraining"
    (:func:`pretraining`; "BO + params/FLOPs/latency pretraining" then keeps the cost columns alone)."""
    space = nb201_search_space()
    costs = evaluator.costs
    settings = cost_settings(evaluator, None)
    pretrain = settings["pretrain"]
    bo = dict(cost_model=costs, **BO_SETTINGS)
    recommended = pretraining(evaluator, proxy_cache)
    low, full = min(evaluator.fidelities), evaluator.full_fidelity
    mf = {**MF_SETTINGS, "fidelities": (low, full)}
    rows = [
        ("random", lambda s: RandomSearch(space, seed=s), False, 15625),
        ("evolution", lambda s: RegularizedEvolution(space, seed=s, population=20, sample=5), False, 3000),
        (f"LayerNAS ({settings['flops']}, H=10, k=2, 3 passes)",
         lambda s: LayerNAS(space, seed=s, cost_model=costs, cost=settings["flops"], buckets=10, per_bucket=2, passes=3),
         False, 3000),
        ("BO", lambda s: BayesianOptimization(space, seed=s, **bo), False, 300),
        ("BO + pretraining", lambda s: BayesianOptimization(space, seed=s, **{**bo, **recommended}), False, 300),
    ]
    if low < full:
        rows += [
            ("BO MF", lambda s: BayesianOptimization(space, seed=s, **{**bo, **mf}), True, 150),
            ("BO MF + pretraining",
             lambda s: BayesianOptimization(space, seed=s, pretrain_metrics=pretrain, **{**bo, **mf}), True, 150),
            (f"RANK-NOSH ({low:g} → {full:g}, eta 3)", lambda s: RankNOSH(space, seed=s, levels=(low, full), eta=3),
             True, 300),
        ]
    if proxy_cache is not None:
        with_proxies, cached = proxy_cost_model(evaluator, proxy_cache)
        proxy_bo = dict(cost_model=with_proxies, pretrain_on=cached, **BO_SETTINGS)
        rows += [
            ("BO + proxy pretraining",
             lambda s: BayesianOptimization(space, seed=s, pretrain_metrics=PROXIES, **proxy_bo), False, 300),
            ("BO + params/FLOPs/latency + proxy pretraining",
             lambda s: BayesianOptimization(space, seed=s, pretrain_metrics=pretrain + PROXIES, **proxy_bo), False, 300),
            # "BO + pretraining" without the proxies beside the cost columns (the row it was before them).
            ("BO + params/FLOPs/latency pretraining",
             lambda s: BayesianOptimization(space, seed=s, pretrain_metrics=pretrain, **bo), False, 300),
        ]
    return rows


_WORKER: dict = {}  # per-process table, evaluator and methods (the strategy factories are lambdas: not picklable)


def _run_seed(table: Path, columns: str, name: str, seed: int, proxy_cache: Path | None = None) -> dict:
    """``run_one`` for method ``name`` and ``seed`` in a worker process (``--jobs``); ``columns`` is the
    column mapping as JSON."""
    if _WORKER.get("key") != (table, columns, proxy_cache):
        torch.set_num_threads(1)
        bench = TabularBenchmark.from_csv(table)
        evaluator = TabularEvaluator.from_mapping(bench, json.loads(columns))
        _WORKER.update(key=(table, columns, proxy_cache), evaluator=evaluator, optimum=optimum_of(evaluator),
                       methods={m[0]: m[1:] for m in methods(evaluator, proxy_cache)})
    make, multi, cap = _WORKER["methods"][name]
    return run_one(make, seed, _WORKER["evaluator"], _WORKER["optimum"], multi, cap)


def optimum_of(evaluator: TabularEvaluator) -> dict:
    """The arch with the best validation accuracy at full fidelity."""
    return evaluator.benchmark.best(evaluator.valid_columns[evaluator.full_fidelity])[0]


def best_test_within(results: SearchResults, queries: float, multi: bool) -> float:
    """Test accuracy of the best-validation full-fidelity arch among the trials within ``queries``."""
    best = None
    for r in results.rows():
        spent = r["equivalent_evaluations"] if multi else r["number"] + 1
        if spent > queries:
            break
        if r["fidelity"] == results.full_fidelity and (best is None or r["valid_accuracy"] > best["valid_accuracy"]):
            best = r
    return float("nan") if best is None else best["test_accuracy"]


def run_one(make: Callable[[int], Strategy], seed: int, evaluator: TabularEvaluator, optimum: dict, multi: bool,
            cap: float) -> dict:
    strategy = make(seed)
    budget = Budget(equivalent_evaluations=cap) if multi else Budget(evaluations=int(cap))
    start = time.perf_counter()
    full = evaluator.full_fidelity
    results = run_search(strategy, evaluator, objective="valid_accuracy", budget=budget,
                         stop_when=lambda t: t.fidelity == full and t.arch == optimum)
    wall = time.perf_counter() - start
    rows = results.rows()
    hit = next((r for r in rows if r["fidelity"] == full and all(r[k] == v for k, v in optimum.items())), None)
    if hit is None:
        reached = None
    else:
        reached = hit["equivalent_evaluations"] if multi else hit["number"] + 1
    lookups = sum(r["seconds"] for r in rows)
    return {
        "reached": reached,
        "spent": results.equivalent_evaluations if multi else len(results),
        "test100": best_test_within(results, 100, multi),
        "test200": best_test_within(results, 200, multi),
        "overhead_ms": 1e3 * (wall - lookups) / max(len(results), 1),
    }


def constrained(args, evaluator: TabularEvaluator, bench: TabularBenchmark) -> dict:
    settings = cost_settings(evaluator, args.latency)
    latency = settings["latency"]
    valid, test = evaluator.valid_columns[evaluator.full_fidelity], evaluator.test_columns.get(evaluator.full_fidelity)
    limit = float(np.median(bench.column(latency)))
    feasible = bench.column(latency) <= limit
    opt_arch, _ = bench.best(valid, where=feasible)
    true_test = bench.value(opt_arch, test) if test else float("nan")
    space = nb201_search_space()
    constraint = [Constraint(latency, upper=limit)]
    makers = {
        "LayerNAS (latency buckets, H=10, k=2)": lambda s: LayerNAS(
            space, seed=s, constraints=constraint, cost_model=evaluator.costs, cost=latency, buckets=10, per_bucket=2,
            passes=3),
        "BO + pretraining (cost-model filter)": lambda s: BayesianOptimization(
            space, seed=s, constraints=constraint, cost_model=evaluator.costs, pretrain_metrics=settings["pretrain"],
            steps=100),
        "random (cost-model filter)": lambda s: RandomSearch(space, seed=s, constraints=constraint,
                                                              cost_model=evaluator.costs),
    }
    out = {"seeds": args.seeds, "latency": latency, "limit": limit, "true_test": true_test, "true_valid": bench.value(opt_arch, valid),
           "feasible": int(feasible.sum()), "rows": {}}
    for name, make in makers.items():
        tests, evals, found = [], [], 0
        for seed in range(args.seeds):
            results = run_search(make(seed), evaluator, objective="valid_accuracy", budget=Budget(evaluations=200))
            best = results.best()
            # best() holds feasible trials only: None means every evaluated arch broke the limit.
            assert best is not None, f"{name} seed {seed}: no evaluated arch meets the latency limit"
            tests.append(best.metrics["test_accuracy"])
            evals.append(len(results))
            found += best.arch == opt_arch
        out["rows"][name] = {"test_mean": statistics.mean(tests), "test_std": statistics.pstdev(tests),
                             "evals": statistics.mean(evals), "found": found}
        print(f"constrained {name}: {out['rows'][name]}", flush=True)
    return out


def seed_counts(rows: dict) -> str:
    """``"20"`` when every method ran that many seeds, else ``"method n, ..."``."""
    counts = {name: len(r["runs"]) for name, r in rows.items()}
    if len(set(counts.values())) <= 1:
        return str(next(iter(counts.values()), 0))
    return ", ".join(f"{name} {n}" for name, n in counts.items())


def target_verdicts(rows: dict) -> list[str]:
    """One line per method with a target (:data:`TARGETS`; the RANK-NOSH row is matched by prefix)."""
    out = []
    for target_name, (mean_max, max_max) in TARGETS.items():
        name = next((n for n in rows if n == target_name or (target_name == "RANK-NOSH" and n.startswith(target_name))),
                    None)
        if name is None:
            continue
        r = rows[name]
        counts = [x["reached"] if x["reached"] is not None else r["cap"] for x in r["runs"]]
        capped = sum(x["reached"] is None for x in r["runs"])
        checks = []
        if mean_max is not None:
            checks.append((f"mean {statistics.mean(counts):.1f} ≤ {mean_max:g}", statistics.mean(counts) <= mean_max))
        if max_max is not None:
            checks.append((f"every seed within {max_max:g} (max {max(counts):.1f})", max(counts) <= max_max))
        checks.append((f"no seed at the cap ({capped} of {len(counts)} at {r['cap']:g})", capped == 0))
        out.append(f"{name} ({len(counts)} seeds): " + "; ".join(f"{text}: {'met' if ok else 'MISSED'}"
                                                                 for text, ok in checks))
    return out


def report(args, rows: dict, cons: dict, command: str, evaluator: TabularEvaluator, dataset: str | None,
           overhead: dict | None = None) -> str:
    n = args.seeds
    begin, end = markers(args.table, dataset)
    bench = evaluator.benchmark
    full, low = evaluator.full_fidelity, min(evaluator.fidelities)
    valid, test = evaluator.valid_columns[full], evaluator.test_columns.get(full)
    optimum = optimum_of(evaluator)
    where = f"index {bench.value(optimum, 'index'):.0f}, " if "index" in bench.columns else ""
    opt_test = bench.value(optimum, test) if test else float("nan")
    settings = cost_settings(evaluator, None)
    paper_mean, paper_acc = PAPER_MEAN.get(dataset), PAPER_ACC.get(dataset)
    lines = [
        begin,
        f"## Black-box search on NAS-Bench-201 {dataset or 'unknown dataset'} (`{args.table.name}`, table lookups)",
        "",
        f"- Date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}",
        f"- Machine: {platform.processor() or platform.machine()} ({platform.platform()}), {os.cpu_count()} CPUs visible, "
        f"torch {torch.__version__}, {torch.get_num_threads()} torch thread(s)",
        f"- Command: `{command}`",
        f"- Columns: `{json.dumps(evaluator.mapping())}`.",
        f"- Seeds per method: {seed_counts(rows)} (seeds 0, 1, ...); selection by validation accuracy "
        f"(`{valid}`), test accuracy (`{test}`) reported; optimum = {where}valid {bench.value(optimum, valid):.2f}, "
        f"test {opt_test:.2f}. Multi-fidelity methods (BO MF, RANK-NOSH) count equivalent full evaluations "
        f"({low:g}-epoch evaluation = {low / full:.2g}). A run that misses the optimum within its cap counts as the cap.",
        "- BO: 6 members, trunk 64-64-64, branch 64, SiLU, 100 Adam steps per refit from the pretrained (or fresh) weights "
        "(lr 5e-3, minibatch 16), targets as rank-based normal scores, MC-PI, batches of 8 (first batch random); "
        f"pretraining on {', '.join(f'`{c}`' for c in settings['pretrain'])} of 2000 archs (500 steps, lr 1e-2)"
        + (f", and for the BO + pretraining row (the recommended pretraining) also on {', '.join(PROXIES)} of the "
           f"cached cells beside them (`pretrain_also`: each metric learnt from every arch that has it; "
           "BO + params/FLOPs/latency pretraining and BO MF + pretraining: the cost columns alone)"
           if args.proxy_cache is not None else "") + "; "
        f"MF: fidelities {low:g} and {full:g} epochs, p = 5, q = 3, f = 10 (thesis schedule), refits warm-started from "
        "the previous refit, 20 steps each. Flat acquisition (BO): places MC-PI cannot rank go to each member's "
        "probability of beating its own prediction of the incumbent, then to the ensemble mean. Stall fallback "
        "(BO and RANK-NOSH): half of each batch after 16 equivalent evaluations without a better full-fidelity "
        "result goes half to the unevaluated cells nearest the incumbent, half to an exploratory stream (GP-UCB "
        "on a pairwise-interaction kernel fitted on the first random batch and the stream's own results: RANK-NOSH, "
        "BO without pretraining and multi-fidelity BO, whose refits are warm-started) or to the members' largest "
        "disagreement (BO with pretraining, every refit from the pretrained weights). "
        + (f"Proxy rows (BO + proxy pretraining, BO + params/FLOPs/latency + proxy pretraining): pretraining only on "
           f"{', '.join(PROXIES)} (and the cost columns) of the {len(json.loads(args.proxy_cache.read_text())['rows'])} "
           f"cells in `{args.proxy_cache.name}` (`benchmarks/proxies_nb201.py --cache`; the same cells for every seed). "
           if args.proxy_cache is not None else "")
        + "Settings: "
        f"`{BO_SETTINGS}`, MF `{MF_SETTINGS}`."
        + (f" Seeds ran in {args.jobs} worker processes side by side (overheads below are disturbed)."
           if args.jobs > 1 else ""),
        "",
        "### Evaluations to reach the optimum (thesis Table 5.3 format)",
        "",
        "| method | min | max | mean | std | reached the optimum | cap |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in rows.items():
        counts = [x["reached"] if x["reached"] is not None else r["cap"] for x in r["runs"]]
        reached = sum(x["reached"] is not None for x in r["runs"])
        lines.append(f"| {name} | {min(counts):.1f} | {max(counts):.1f} | {statistics.mean(counts):.1f} | "
                     f"{statistics.pstdev(counts):.1f} | {reached}/{len(r['runs'])} seeds | {r['cap']:g} |")
    if paper_mean is None:
        lines += ["", f"Thesis Table 5.3: no paper figure for {dataset or 'this table'}."]
    else:
        lines += ["", f"Thesis ({dataset}, mean): " + ", ".join(f"{k} {v:g}" for k, v in paper_mean.items()) + "."]
    lines += [
        "",
        f"### Test accuracy of the selected arch after 100 and 200 queries (thesis Table 5.4 format; optimum {opt_test:.2f})",
        "",
        "| method | 100 queries | 200 queries |",
        "|---|---:|---:|",
    ]
    for name, r in rows.items():
        a = [x["test100"] for x in r["runs"] if not np.isnan(x["test100"])]
        b = [x["test200"] for x in r["runs"] if not np.isnan(x["test200"])]
        fmt = lambda v: f"{statistics.mean(v):.2f} ± {statistics.pstdev(v):.2f}" if v else "n/a"  # noqa: E731
        lines.append(f"| {name} | {fmt(a)} | {fmt(b)} |")
    if paper_acc is None:
        lines += ["", f"Thesis Table 5.4: no paper figure for {dataset or 'this table'}."]
    else:
        for name, (a, b) in paper_acc.items():
            lines.append(f"| *paper ({dataset}): {name}* | *{a:.2f}* | *{b:.2f}* |")
    if cons is None:
        lines += ["", "### Under a latency limit", "",
                  "Not run in this invocation (`--no-constrained`, or the table has no latency column)."]
    else:
        lines += _constrained_lines(cons, n)
    lines += ["", "### Overhead per proposal (strategy time, surrogate fits included; median over seeds)", "",
              "| method | ms / proposal |", "|---|---:|"]
    for name, r in rows.items():
        lines.append(f"| {name} | {statistics.median(x['overhead_ms'] for x in r['runs']):.2f} |")
    if overhead is not None:
        lines += _overhead_lines(overhead)
    verdicts = target_verdicts(rows)
    if verdicts:
        lines += ["", "### Targets (issue 23, the same on every dataset)", ""] + [f"- {v}" for v in verdicts]
    lines.append(end)
    return "\n".join(lines) + "\n"


def ask_overhead(evaluator: TabularEvaluator, observations: int = 100, batches: int = 5, seed: int = 0,
                 proxy_cache: Path | None = None) -> dict:
    """Time BO's proposals once ``observations`` results are told (the issue's protocol), beside
    Optuna's TPE in the same process when Optuna is installed.

    BO + pretraining (:func:`pretraining`, with the proxies when ``proxy_cache`` is given; pretraining
    excluded: it runs once, before the first proposal; timed apart) is
    driven by ask/tell on the table until ``observations`` results, then each of the next ``batches``
    iterations is timed (refit + acquisition over every unevaluated cell): ms per proposal = the
    iteration's time / its proposals. TPE (``optuna.samplers.TPESampler(seed=seed)``, the six edges as
    categorical parameters) is timed the same way, per ``ask`` + suggestions.
    """
    from lightning_nas.strategies.base import Observation

    space = nb201_search_space()
    full = evaluator.full_fidelity
    valid = evaluator.valid_columns[full]
    out: dict = {"observations": observations}
    strategy = BayesianOptimization(space, seed=seed, **pretraining(evaluator, proxy_cache), **BO_SETTINGS)
    start = time.perf_counter()
    strategy._pretrain()
    out["pretrain_s"] = time.perf_counter() - start
    per_proposal, cpu, number = [], [], 0
    while len(per_proposal) < batches:
        start, start_cpu = time.perf_counter(), time.process_time()
        proposals = strategy.ask(strategy.batch_size)
        elapsed, elapsed_cpu = time.perf_counter() - start, time.process_time() - start_cpu
        if number >= observations:
            per_proposal.append(1e3 * elapsed / len(proposals))
            cpu.append(1e3 * elapsed_cpu / len(proposals))
        for p in proposals:
            strategy.tell(Observation(number, p.arch, full, evaluator.benchmark.value(p.arch, valid)))
            number += 1
    out["bo_ms"], out["bo_cpu_ms"], out["load"] = per_proposal, cpu, os.getloadavg()[0]
    out["bo_batch"] = strategy.batch_size
    try:
        import optuna
    except ImportError:
        out["tpe_ms"] = None
        return out
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed))
    tpe, tpe_cpu = [], []
    for i in range(observations + 20):
        start, start_cpu = time.perf_counter(), time.process_time()
        trial = study.ask()
        arch = {d.label: trial.suggest_categorical(d.label, list(d.values)) for d in space}
        elapsed, elapsed_cpu = time.perf_counter() - start, time.process_time() - start_cpu
        if i >= observations:
            tpe.append(1e3 * elapsed)
            tpe_cpu.append(1e3 * elapsed_cpu)
        study.tell(trial, evaluator.benchmark.value(arch, valid))
    out["tpe_ms"], out["tpe_cpu_ms"], out["optuna"] = tpe, tpe_cpu, optuna.__version__
    return out


def _overhead_lines(o: dict) -> list[str]:
    lines = ["", f"### Proposal overhead at {o['observations']} observations (issue 23 protocol)", "",
             f"BO + pretraining: each of the {len(o['bo_ms'])} iterations after {o['observations']} results "
             f"(refit + acquisition over every unevaluated cell, {o['bo_batch']} proposals each) timed alone; "
             f"pretraining ({o['pretrain_s']:.1f} s, once per search) apart.", "",
             f"Wall-clock and CPU (process) time; load average {o.get('load', float('nan')):.1f} when measured, on 2 "
             "shared cores: the CPU time is the better guide to a quiet machine.", "",
             "| method | median wall ms / proposal | min | max | median CPU ms / proposal | target (≤ 20 ms) |",
             "|---|---:|---:|---:|---:|---|"]
    bo, bo_cpu = o["bo_ms"], o.get("bo_cpu_ms") or [math.nan]
    verdict = "met" if statistics.median(bo) <= 20 else "MISSED"
    lines.append(f"| BO + pretraining | {statistics.median(bo):.1f} | {min(bo):.1f} | {max(bo):.1f} | "
                 f"{statistics.median(bo_cpu):.1f} | {verdict} (wall) |")
    if o.get("tpe_ms") is None:
        lines += ["", "Optuna TPE: not measured (optuna is not installed in this environment; it is not a project "
                      "dependency: `uv run --locked --with optuna python benchmarks/blackbox_nb201.py ...` adds it)."]
    else:
        tpe, tpe_cpu = o["tpe_ms"], o.get("tpe_cpu_ms") or [math.nan]
        lines.append(f"| Optuna {o['optuna']} TPE (same run) | {statistics.median(tpe):.1f} | {min(tpe):.1f} | "
                     f"{max(tpe):.1f} | {statistics.median(tpe_cpu):.1f} | |")
        lines += ["", "Optuna is not a project dependency: this comparison ran with "
                      "`uv run --locked --with optuna python benchmarks/blackbox_nb201.py ...`."]
    return lines


def _constrained_lines(cons: dict, n: int) -> list[str]:
    lines = [
        "",
        f"### Under a latency limit: {cons['latency']} ≤ {cons['limit']:.3f} ms (median; {cons['feasible']} feasible archs), "
        "200 evaluations",
        "",
        f"True constrained optimum (best validation among feasible): test {cons['true_test']:.2f} "
        f"(valid {cons['true_valid']:.2f}).",
        "",
        "| method | test accuracy of best feasible | found the constrained optimum | evaluations |",
        "|---|---:|---:|---:|",
    ]
    for name, r in cons["rows"].items():
        lines.append(f"| {name} | {r['test_mean']:.2f} ± {r['test_std']:.2f} | {r['found']}/{cons.get('seeds', n)} | "
                     f"{r['evals']:.0f} |")
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    repo = Path(__file__).resolve().parent.parent
    parser.add_argument("--table", type=Path, default=repo.parent / "shared/data/nb201/nb201_cifar10.csv",
                        help="an NB201-format CSV of any dataset")
    parser.add_argument("--columns", default=None, metavar="FILE_OR_JSON",
                        help="the table's columns as for `lightning-nas search --columns` (default: inferred from the "
                             "names <prefix>_valid_<epochs>, ...)")
    parser.add_argument("--dataset", default=None,
                        help=f"the dataset's name for the title and the paper figures ({', '.join(PAPER_ACC)}; default: "
                             f"from the column prefix, {DATASETS})")
    parser.add_argument("--latency", default=None, metavar="COLUMN",
                        help=f"latency column of the constrained section (default {DEFAULT_LATENCY}, else the table's "
                             "first lat_ms_ column)")
    parser.add_argument("--seeds", type=int, default=20, help="seeds per method (the thesis uses 20)")
    parser.add_argument("--mf-seeds", type=int, default=20,
                        help="seeds of the multi-fidelity BO variants (a refit every 5 evaluations: the slowest rows)")
    parser.add_argument("--only", nargs="*", default=None, help="run only methods whose name starts with these")
    parser.add_argument("--no-constrained", action="store_true",
                        help="skip the latency-limit section (e.g. with --only, to rerun BO variants alone)")
    parser.add_argument("--jobs", type=int, default=1,
                        help="worker processes running seeds side by side (1 for the overhead timings)")
    parser.add_argument("--proxy-cache", type=Path, default=None, metavar="JSON",
                        help="zero-cost proxies of NB201 cells from `benchmarks/proxies_nb201.py --cache`: adds BO rows "
                             f"pretrained on {', '.join(PROXIES)} of the cached cells (instead of / beside the table's "
                             "params, FLOPs and latency)")
    parser.add_argument("--first-seed", type=int, default=0,
                        help="seeds run are first-seed, first-seed + 1, ... (more seeds in another process, merged "
                             "with --from-runs)")
    parser.add_argument("--skip", nargs="*", default=(), help="leave out methods whose name starts with these")
    parser.add_argument("--dump", type=Path, default=None, metavar="JSON",
                        help="also save the runs (per method and seed) and the overhead measurement to this file")
    parser.add_argument("--from-runs", type=Path, nargs="*", default=None, metavar="JSON",
                        help="run nothing: build the section from --dump files of runs on this table (e.g. method "
                             "groups or seed ranges run in parallel processes; a method's runs are merged by seed)")
    parser.add_argument("--no-overhead", action="store_true",
                        help="skip the proposal-overhead section (BO at 100 observations beside Optuna TPE)")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "RESULTS.md")
    parser.add_argument("--no-write", action="store_true", help="print the section without writing --out")
    args = parser.parse_args(argv)
    if args.first_seed < 0:
        parser.error("--first-seed must be non-negative")
    if args.seeds < 1 or args.mf_seeds < 1:
        parser.error("--seeds and --mf-seeds must be at least 1")
    if args.jobs < 1:
        parser.error("--jobs must be at least 1")
    torch.set_num_threads(1)
    command = command_line("blackbox_nb201.py", argv)
    start = time.perf_counter()
    try:
        mapping, where = read_columns(args.columns)
        bench = TabularBenchmark.from_csv(args.table)
        evaluator = TabularEvaluator.from_mapping(bench, mapping, where=where)
        cost_settings(evaluator, args.latency)  # a bad --latency fails now, not after the long sections
        if args.proxy_cache is not None:
            proxy_cost_model(evaluator, args.proxy_cache)
    except (ValueError, OSError, KeyError) as err:
        parser.error(str(err))
    dataset = dataset_of(evaluator, args.dataset)
    print(f"{args.table.name}: dataset {dataset or 'unknown (no paper figures)'}, columns {json.dumps(evaluator.mapping())}, "
          f"section markers {markers(args.table, dataset)[0]}", flush=True)
    columns = json.dumps(evaluator.mapping())
    optimum = optimum_of(evaluator)
    rows = {}
    if args.from_runs is not None:
        overhead, cons = None, None
        order = [m[0] for m in methods(evaluator, args.proxy_cache)]
        commands = []
        by_seed: dict[str, dict[int, dict]] = {}
        caps: dict[str, float] = {}
        for path in args.from_runs:
            saved = json.loads(path.read_text())
            commands.append(saved.get("command", str(path)))
            for name, r in saved["rows"].items():
                caps[name] = r["cap"]
                for i, run in enumerate(r["runs"]):  # a seed in several files: the runs are identical (seeded)
                    by_seed.setdefault(name, {}).setdefault(saved.get("first_seed", 0) + i, run)
            overhead = saved.get("overhead") or overhead
            cons = saved.get("constrained") or cons
        rows = {name: {"runs": [by_seed[name][k] for k in sorted(by_seed[name])], "cap": caps[name]}
                for name in sorted(by_seed, key=lambda n: order.index(n) if n in order else len(order))}
        command = (f"{len(commands)} runs side by side, one method group or seed range each (`--only`, `--skip`, "
                   f"`--first-seed`, `--dump`), e.g. `{commands[0]}`; then `{command}`")
        section = report(args, rows, cons, command, evaluator, dataset, overhead)
        print(section)
        if not args.no_write:
            write_section(args.out, section, *markers(args.table, dataset))
            print(f"wrote {args.out}")
        return
    for name, make, multi, cap in methods(evaluator, args.proxy_cache):
        if args.only and not any(name.startswith(o) for o in args.only):
            continue
        if any(name.startswith(o) for o in args.skip):
            continue
        t = time.perf_counter()
        seeds = args.mf_seeds if name.startswith("BO MF") else args.seeds
        if args.jobs > 1:
            with ProcessPoolExecutor(args.jobs) as pool:
                runs = list(pool.map(_run_seed, [args.table] * seeds, [columns] * seeds, [name] * seeds,
                                     range(args.first_seed, args.first_seed + seeds),
                                     [args.proxy_cache] * seeds))
        else:
            runs = []
            for seed in range(args.first_seed, args.first_seed + seeds):
                runs.append(run_one(make, seed, evaluator, optimum, multi, cap))
                if args.dump is not None:  # after every seed, so a run stopped by a time limit keeps what it did
                    args.dump.write_text(json.dumps({"rows": {**rows, name: {"runs": runs, "cap": cap}},
                                                     "overhead": None, "constrained": None, "command": command,
                                                     "first_seed": args.first_seed}))
        rows[name] = {"runs": runs, "cap": cap}
        if args.dump is not None:
            args.dump.write_text(json.dumps({"rows": rows, "overhead": None, "constrained": None, "command": command,
                                                     "first_seed": args.first_seed}))
        counts = [x["reached"] for x in runs]
        print(f"{name}: reached at {counts} ({time.perf_counter() - t:.0f} s)", flush=True)
    has_latency = cost_settings(evaluator, args.latency)["latency"] is not None
    cons = None if args.no_constrained or not has_latency else constrained(args, evaluator, bench)
    overhead = None if args.no_overhead else ask_overhead(evaluator, proxy_cache=args.proxy_cache)
    if args.dump is not None:
        args.dump.write_text(json.dumps({"rows": rows, "overhead": overhead, "constrained": cons, "command": command,
                                         "first_seed": args.first_seed}))
    section = report(args, rows, cons, command, evaluator, dataset, overhead)
    print(section)
    print(f"({time.perf_counter() - start:.0f} s)")
    if not args.no_write:
        write_section(args.out, section, *markers(args.table, dataset))
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
