"""MathNAS on a NAS-Bench-201 table (any dataset): block performance from 30 look-ups, exact search, predictor ρ.

Nodes are the 6 edges of the NB201 cell (shared by every cell), 5 operations each. Block performances
come from table look-ups (the evaluator reads the validation accuracy, FLOPs and, where the table has
them, a device latency and an energy of an arch). Columns not given (``--accuracy``, ``--test``,
``--flops``, ``--latency``, ``--energy``) are inferred from the names (``<prefix>_valid_<epochs>`` at
the highest epochs, ``<prefix>_test_<epochs>``, ``[<prefix>_]flops_M``, ``lat_ms_gold_6226`` or the
first ``lat_ms_*``, the first ``energy_mJ_*``; see ``docs/tabular_format.md``); a table without a
latency or energy column skips that resource.

* Algorithm 1: the host ``N^avg`` (per edge the operation with FLOPs closest to the edge's mean),
  each edge switched to every operation: 30 look-ups (+ 25 for the FLOPs around the reference);
* Eq. 3 sampled over ``--hosts`` random hosts, and over all 15,625 hosts (the full-sample definition).

For each, Kendall τ and Spearman ρ of the Eq. 5 predictor (FLOPs-reciprocal) and of the plain
additive predictor against the tabulated validation and test accuracy of all 15,625 cells. Then
the Eq. 5 + Eq. 6 search (exact, Dinkelbach + HiGHS) without limits and with a FLOPs, a latency
and an energy limit at the median of the table, and the tabulated accuracy of the arch it picks
against the table's best arch under the same (true) limit.

Paper (MathNAS Table 8 / §1): unconstrained search 90.18 / 93.31 % validation / test on CIFAR-10,
71.74 / 70.82 on CIFAR-100, 46.00 / 46.53 on ImageNet16-120; predictor Spearman ρ 0.97 on NAS-Bench-201
(the dataset is not stated). Each run is compared with its own dataset's figure only ("no paper
figure" for other tables). The section goes into ``RESULTS.md`` under a title and markers naming the
table and dataset; only ``nb201_cifar10.csv`` on CIFAR-10 writes the original
``benchmarks/mathnas_nb201.py`` section.

Usage::

    .venv/bin/python benchmarks/mathnas_nb201.py            # rewrites its (CIFAR-10) section of RESULTS.md
    .venv/bin/python benchmarks/mathnas_nb201.py --table ../shared/data/nb201/nb201_cifar100.csv
    .venv/bin/python benchmarks/mathnas_nb201.py --repeats 1 --hosts 2 --no-write   # quicker check, prints only
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import time
from pathlib import Path

import numpy as np

from results_file import publish  # benchmarks/ is the script's directory
from lightning_nas.estimators.block_performance import (
    REFERENCES,
    estimate_block_performance,
    estimate_block_performance_sampled,
    nodes_as_stage,
    tabular_evaluator,
)
from lightning_nas.estimators.ranking import rank_correlations
from lightning_nas.evaluators.tabular import TabularBenchmark, infer_columns
from lightning_nas.solvers import Limit
from lightning_nas.spaces.nb201 import nb201_search_space, nb201_string

SCRIPT = "benchmarks/mathnas_nb201.py"
DEFAULT_TABLE = Path(__file__).resolve().parents[2] / "shared" / "data" / "nb201" / "nb201_cifar10.csv"
#: The table and dataset whose section keeps the original markers ``<!-- benchmarks/mathnas_nb201.py: begin -->``.
DEFAULT_DATASET = "CIFAR-10"
#: NAS-Bench-201 column prefixes and the datasets they name.
DATASETS = {"c10": "CIFAR-10", "c100": "CIFAR-100", "imagenet16": "ImageNet16-120"}
#: MathNAS Table 8: unconstrained NAS-Bench-201 search, validation / test accuracy [%] of the pick.
PAPER_PICK = {"CIFAR-10": (90.18, 93.31), "CIFAR-100": (71.74, 70.82), "ImageNet16-120": (46.00, 46.53)}
#: MathNAS §1: predictor Spearman ρ on NAS-Bench-201 (no dataset stated; compared on the NB201 datasets above).
PAPER_RHO = 0.97
DEFAULT_LATENCY = "lat_ms_gold_6226"
#: How the report names each ``--reference``.
REFERENCE_TEXT = {
    "mean": "each edge's mean operation (signed deltas, no arch favoured by construction)",
    "host": "Algorithm 1's host N^avg (signed deltas)",
    "default": "the default arch (nor_conv_3x3 on every edge; the behaviour before signed deltas)",
    "first": "the first operation of every edge", "last": "the last operation of every edge",
}


def resolve_columns(args: argparse.Namespace, bench: TabularBenchmark) -> dict[str, str | None]:
    """``{"accuracy", "test", "flops", "latency", "energy", "dataset": column or name}``: the options given,
    the rest inferred from the column names (``None``: the table has no latency / energy column, or the
    prefix names no known dataset).

    Raises:
        ValueError: a column that cannot be inferred, or a given column the table lacks (naming the option).
    """
    try:
        inferred = infer_columns(bench.columns, args.prefix, source=args.table.name)
    except ValueError:
        if not (args.accuracy and args.test and args.flops):
            raise
        inferred = {"valid_columns": {}, "test_columns": {}, "cost_columns": list(bench.columns)}
    full = max(inferred["valid_columns"], default=None)
    costs = inferred["cost_columns"]
    flops = [c for c in costs if c.endswith("flops_M")]
    latencies = [c for c in costs if "lat_ms_" in c]
    energies = [c for c in costs if "energy_mJ_" in c]
    out = {
        "accuracy": args.accuracy or inferred["valid_columns"][full],
        "test": args.test or inferred["test_columns"].get(full),
        "flops": args.flops or (flops[0] if flops else None),
        "latency": args.latency or (DEFAULT_LATENCY if DEFAULT_LATENCY in latencies else (latencies or [None])[0]),
        "energy": args.energy or (energies[0] if energies else None),
    }
    for role in ("latency", "energy"):
        if out[role] == "none":  # --latency none / --energy none: leave the resource out
            out[role] = None
    for role in ("accuracy", "test", "flops"):
        if out[role] is None:
            raise ValueError(f"--{role}: {args.table.name} has no column named by the scheme; give --{role} COLUMN "
                             f"(the table has columns {bench.columns})")
    for role, column in out.items():
        if column is not None and column not in bench.columns:
            raise ValueError(f"--{role} {column!r} is not a column of {args.table.name}; the table has columns {bench.columns}")
    prefix = out["accuracy"].rsplit("_valid_", 1)[0] if "_valid_" in out["accuracy"] else None
    out["dataset"] = args.dataset or DATASETS.get(prefix)
    return out


def markers(table: Path, dataset: str | None) -> tuple[str, str]:
    """The section markers: the original ones for the CIFAR-10 table, else naming the table and dataset."""
    if table.name == DEFAULT_TABLE.name and dataset == DEFAULT_DATASET:
        tag = SCRIPT
    else:
        tag = f"{SCRIPT} --table {table.name} ({dataset or 'unknown dataset'})"
    return f"<!-- {tag}: begin -->", f"<!-- {tag}: end -->"


def run(args: argparse.Namespace) -> dict:
    bench = TabularBenchmark.from_csv(args.table)
    staged = nodes_as_stage(nb201_search_space())
    columns = {r: args.columns[r] for r in ("accuracy", "flops", "latency", "energy") if args.columns[r] is not None}
    resources = [r for r in ("latency", "energy") if r in columns]
    evaluate = tabular_evaluator(bench, columns)
    archs = bench.archs
    configs, depths = staged.indices_many(archs)
    truth = {"valid": bench.column(columns["accuracy"]), "test": bench.column(args.columns["test"])}

    estimates = {}
    sampled_reference = "mean" if args.reference == "host" else args.reference  # 'host' is Algorithm 1's alone
    started = time.perf_counter()
    estimates["Algorithm 1 (N^avg host)"] = estimate_block_performance(evaluate, staged, reference=args.reference)
    estimates[f"Eq. 3, {args.hosts} random hosts"] = estimate_block_performance_sampled(
        evaluate, staged, num_hosts=args.hosts, seed=args.seed, reference=sampled_reference)
    estimates["Eq. 3, all 15,625 hosts"] = estimate_block_performance_sampled(evaluate, staged, num_hosts="all", reference=sampled_reference)
    estimate_seconds = time.perf_counter() - started

    ranking = {}
    for name, perf in estimates.items():
        for law in ("reciprocal", "additive"):
            predicted = perf.predictor(law=law).predict_indices(configs, depths)
            ranking[name, law] = {split: rank_correlations(predicted, values) for split, values in truth.items()}
            ranking[name, law]["rmse"] = float(np.sqrt(np.mean((predicted - truth["valid"]) ** 2)))

    # Ceiling of any additive (main-effects) predictor: least squares on all cells' one-hot encodings.
    space = staged.space
    features = np.c_[np.stack([space.encode(a).numpy() for a in archs]), np.ones(len(archs))]
    weights, *_ = np.linalg.lstsq(features, truth["valid"], rcond=None)
    fitted = features @ weights
    ceiling = {split: rank_correlations(fitted, values) for split, values in truth.items()}
    ceiling["rmse"] = float(np.sqrt(np.mean((fitted - truth["valid"]) ** 2)))

    perf = estimates["Algorithm 1 (N^avg host)"]
    flops_error = float(np.abs(perf.flops.predict_indices(configs, depths) - bench.column(columns["flops"])).max())
    # How additive the tabulated resources are: MAPE of X(Ñ) − Σ b^X over all cells, per estimator.
    errors = {(name, r): np.abs(est.table(r).predict_indices(configs, depths) / bench.column(columns[r]) - 1) * 100
              for name, est in estimates.items() for r in resources}
    mape = {key: (float(e.mean()), float(np.median(e))) for key, e in errors.items()}
    searches = []
    perf.search()  # warm-up: imports and first-call costs stay out of the timings
    for resource in (None, "flops", *resources):
        limits, bound = [], None
        if resource is not None:
            bound = float(np.median(bench.column(columns[resource])))
            limits = [Limit(perf.table(resource) if resource != "flops" else perf.flops, upper=bound)]
        for law in ("reciprocal", "additive"):
            times, result = [], None
            for _ in range(args.repeats):
                result = perf.search(limits, law=law)
                times.append(result.solve_seconds)
            row = bench.row(result.arch)
            ok = np.ones(len(archs), bool) if resource is None else bench.column(columns[resource]) <= bound
            best_valid = int(np.argmax(np.where(ok, truth["valid"], -np.inf)))
            best_test = int(np.argmax(np.where(ok, truth["test"], -np.inf)))
            predicted_resource = None
            if resource is not None:
                predicted_resource = result.resources.get(resource, perf.flops.predict(result.arch))
            searches.append({
                "resource": resource, "law": law, "bound": bound, "arch": nb201_string(result.arch), "predicted": result.objective,
                "valid": row[columns["accuracy"]], "test": row[args.columns["test"]],
                "true_resource": None if resource is None else row[columns[resource]],
                "predicted_resource": predicted_resource,
                # A pick that breaks the true limit is a violation, not a rank among the feasible cells.
                "percentile": None if not ok[bench.index(result.arch)] else
                float((truth["test"][ok] < row[args.columns["test"]]).mean() * 100),
                "best_valid": float(truth["valid"][best_valid]), "best_test": float(truth["test"][best_test]),
                "test_of_best_valid": float(truth["test"][best_valid]), "seconds": float(np.median(times)),
            })
            print(searches[-1], flush=True)
    return {"estimates": estimates, "ranking": ranking, "searches": searches, "estimate_seconds": estimate_seconds,
            "flops_error": flops_error, "rows": len(archs), "mape": mape, "ceiling": ceiling, "resources": resources}


def report(args: argparse.Namespace, results: dict, command: str) -> str:
    import pyomo.version

    c = args.columns
    dataset = c["dataset"]
    begin, end = markers(args.table, dataset)
    lines = [
        begin,
        f"## MathNAS on NAS-Bench-201 ({dataset or 'unknown dataset'}, `{args.table.name}`): block performance, "
        "predictor ρ, exact search",
        "",
        f"- Date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}",
        f"- Machine: {platform.processor() or platform.machine()} ({platform.platform()}), {os.cpu_count()} CPUs visible; Pyomo {pyomo.version.version}, HiGHS (`appsi_highs`)",
        f"- Command: `{command}`",
        f"- Table: `{args.table.name}` ({results['rows']:,} cells). Evaluations are look-ups: accuracy = `{c['accuracy']}`, "
        f"FLOPs = `{c['flops']}`, latency = `{c['latency'] or 'none in the table'}`, "
        f"energy = `{c['energy'] or 'none in the table'}`; reference Ñ = "
        f"{REFERENCE_TEXT.get(args.reference or 'mean', args.reference)}. The FLOPs table built from 25 switches around the default arch (or Ñ) "
        f"matches the tabulated FLOPs to {results['flops_error']:.2g} MFLOPs (FLOPs add over edges).",
        f"- Ranking: predicted vs tabulated accuracy of all {results['rows']:,} cells (`{c['accuracy']}` and `{c['test']}`). "
        f"Estimation total {results['estimate_seconds']:.1f} s.",
        "",
        "| estimator | distinct look-ups | law | ρ valid | τ valid | ρ test | τ test | RMSE valid (%) |",
        "|---|---:|---|---:|---:|---:|---:|---:|",
    ]
    for (name, law), r in results["ranking"].items():
        perf = results["estimates"][name]
        lines.append(
            f"| {name} | {perf.evaluations:,} | {'Eq. 5 (FLOPs-reciprocal)' if law == 'reciprocal' else 'additive'} | "
            f"{r['valid']['spearman_rho']:.3f} | {r['valid']['kendall_tau']:.3f} | {r['test']['spearman_rho']:.3f} | "
            f"{r['test']['kendall_tau']:.3f} | {r['rmse']:.2f} |"
        )
    fit = results["ceiling"]
    lines.append(f"| *reference: least-squares additive fit to all cells (uses every accuracy; not an estimator)* | "
                 f"{results['rows']:,} | additive | {fit['valid']['spearman_rho']:.3f} | {fit['valid']['kendall_tau']:.3f} | "
                 f"{fit['test']['spearman_rho']:.3f} | {fit['test']['kendall_tau']:.3f} | {fit['rmse']:.2f} |")
    if results["resources"]:
        lines += ["", "Additive resource predictions `X(Ñ) − Σ b^X` against the table (MAPE over all cells): " + "; ".join(
            f"{name}: " + ", ".join(f"{r} {results['mape'][name, r][0]:.3g} % (median {results['mape'][name, r][1]:.3g} %)"
                                    for r in results["resources"])
            for name in results["estimates"]) + "."]
    lines += [
        "",
        "Search with the Algorithm 1 estimate (Eq. 5 objective as a 0-1 linear-fractional program, or the additive one as a MILP; "
        "exact, Dinkelbach + HiGHS; "
        f"limits at the table's median, predicted additively from the block deltas; median of {args.repeats} solves). "
        "The percentile ranks the pick's test accuracy among the cells that meet the true limit; a pick that violates "
        "the true limit is marked:",
        "",
        "| limit | predictor | selected cell | predicted valid (%) | valid (%) | test (%) | true value of the limited resource | test percentile under the true limit | table best valid / test (%) | solve (ms) |",
        "|---|---|---|---:|---:|---:|---:|---:|---|---:|",
    ]
    for s in results["searches"]:
        limit = "none" if s["resource"] is None else f"{s['resource']} ≤ {s['bound']:.3g}"
        true = "—" if s["resource"] is None else f"{s['true_resource']:.3g} (predicted {s['predicted_resource']:.3g})"
        if s["resource"] is not None and s["true_resource"] > s["bound"]:
            true += " **violates**"
        lines.append(
            f"| {limit} | {'Eq. 5' if s['law'] == 'reciprocal' else 'additive'} | `{s['arch']}` | {s['predicted']:.2f} | {s['valid']:.2f} | {s['test']:.2f} | {true} | "
            f"{'**violation**' if s['percentile'] is None else format(s['percentile'], '.1f')} | "
            f"{s['best_valid']:.2f} / {s['best_test']:.2f} | {1e3 * s['seconds']:.1f} |"
        )
    lines += ["", paper_comparison(results, dataset), end]
    return "\n".join(lines) + "\n"


def paper_comparison(results: dict, dataset: str | None) -> str:
    """The run's ρ and unconstrained pick against the paper's figures for ``dataset`` ("no paper figure"
    where the paper has none)."""
    rho = results["ranking"]["Algorithm 1 (N^avg host)", "reciprocal"]["valid"]["spearman_rho"]
    test = results["searches"][0]["test"]  # unconstrained: never a violation
    here = f"Here, Algorithm 1 + Eq. 5: ρ {rho:.3f}, unconstrained pick {test:.2f} % test."
    if dataset not in PAPER_PICK:
        return f"Paper: no paper figure for {dataset or 'this table'} (MathNAS reports NAS-Bench-201 CIFAR-10, " \
               f"CIFAR-100 and ImageNet16-120). {here}"
    paper_valid, paper_test = PAPER_PICK[dataset]
    return (f"Paper ({dataset}): ρ {PAPER_RHO} on NAS-Bench-201 (dataset not stated), unconstrained search "
            f"{paper_valid} % validation / {paper_test} % test. Here, Algorithm 1 + Eq. 5: ρ {rho:.3f} "
            f"({'met' if rho >= PAPER_RHO - 0.02 else 'MISSED'} within 0.02), unconstrained pick {test:.2f} % test "
            f"({'met' if test >= paper_test - 0.5 else 'MISSED'} within 0.5 points).")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--table", type=Path, default=DEFAULT_TABLE, help="NB201-format CSV of any dataset")
    parser.add_argument("--prefix", default=None, help="dataset prefix of the columns to infer (c10, c100, imagenet16; "
                                                       "default: the table's only one)")
    parser.add_argument("--dataset", default=None,
                        help=f"the dataset's name for the title and the paper figures ({', '.join(PAPER_PICK)}; "
                             f"default: from the column prefix, {DATASETS})")
    parser.add_argument("--accuracy", default=None, help="column the estimator reads (search signal; default "
                                                         "<prefix>_valid_<highest epochs>)")
    parser.add_argument("--test", default=None, help="column reported for the selected cell (default <prefix>_test_<epochs>)")
    parser.add_argument("--flops", default=None, help="FLOPs column [M] (default [<prefix>_]flops_M)")
    parser.add_argument("--latency", default=None,
                        help=f"latency column [ms] (default {DEFAULT_LATENCY}, a measured CPU latency, else the first "
                             "lat_ms_ column; none: no latency rows)")
    parser.add_argument("--energy", default=None, help="energy column [mJ] (default the first energy_mJ_ column; "
                                                       "none: no energy rows)")
    parser.add_argument("--reference", choices=list(REFERENCES), default="mean",
                        help="what block performances are measured against: each edge's mean operation (signed deltas), "
                             "Algorithm 1's host, or an arch (default: the all-nor_conv_3x3 default arch, whose deltas "
                             "are all >= 0 on NB201 so that the search returns it)")
    parser.add_argument("--hosts", type=int, default=10, help="random hosts of the sampled Eq. 3 estimator")
    parser.add_argument("--repeats", type=int, default=5, help="solves per search (median time)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "RESULTS.md")
    parser.add_argument("--no-write", action="store_true", help="print the section without writing --out")
    args = parser.parse_args(argv)
    if args.hosts < 1 or args.repeats < 1:
        parser.error("--hosts and --repeats must be positive")
    try:
        args.columns = resolve_columns(args, TabularBenchmark.from_csv(args.table))
    except (ValueError, OSError) as err:
        parser.error(str(err))
    print(f"{args.table.name}: {args.columns}", flush=True)
    publish("mathnas_nb201.py", argv, args.out, not args.no_write, lambda command: report(args, run(args), command),
            *markers(args.table, args.columns["dataset"]))


if __name__ == "__main__":
    main()
