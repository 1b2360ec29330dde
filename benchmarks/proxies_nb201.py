"""Zero-cost proxies on NAS-Bench-201: Spearman ρ of each proxy with the tables' 200-epoch validation accuracy.

For ``--cells`` cells drawn uniformly (without replacement, from ``--seed``) from the 15,625 NB201
cells, the network of each cell is exported from one ``nb201_supernet`` (``--channels``,
``--cells-per-stage``; seeded initialisation, shared by every cell as in a weight-sharing supernet)
and scored by :func:`lightning_nas.proxies.compute_proxies` on ``--examples`` synthetic CIFAR-like
images of ``--resolution`` pixels (smooth random colour fields plus noise, with uniform labels,
generated from ``--seed``: no download). The proxies see the same synthetic data for both datasets,
so one score per cell (10-class head) is correlated with both tables. Baselines: the tables' own
parameter and FLOP counts. Run time per cell (export + proxy) is measured with one torch thread per
process. ``--max-seconds`` stops scoring early on a slow machine; the section says how many cells
were scored.

With ``--bo-seeds K`` (default 0: not run) it also compares BO's evaluations to the optimum with
pretraining on the table's params/FLOPs against pretraining on proxies computed live
(:class:`~lightning_nas.proxies.ProxyCostModel`, ``--bo-pretrain-archs`` archs per seed): expensive
on a CPU (each pretraining arch is scored once).

Usage::

    .venv/bin/python benchmarks/proxies_nb201.py                          # 1000 cells, writes RESULTS.md
    .venv/bin/python benchmarks/proxies_nb201.py --cells 50 --no-write     # smoke
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy import stats

from results_file import machine, publish  # benchmarks/ is the script's directory
from lightning_nas.evaluators.tabular import TabularBenchmark, TabularEvaluator
from lightning_nas.proxies import ProxyCostModel, compute_proxies
from lightning_nas.seeding import derive_generator
from lightning_nas.spaces.nb201 import nb201_op_code, nb201_search_space, nb201_supernet

SCRIPT = "proxies_nb201.py"
BEGIN, END = f"<!-- benchmarks/{SCRIPT}: begin -->", f"<!-- benchmarks/{SCRIPT}: end -->"
PROXY_NAMES = ("synflow", "naswot", "grad_norm", "jacob_cov")
#: (dataset, table file, column prefix).
TABLES = (("CIFAR-10", "nb201_cifar10.csv", "c10"), ("CIFAR-100", "nb201_cifar100.csv", "c100"))
def cifar_like(n: int, resolution: int, num_classes: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` smooth random colour images ``(n, 3, resolution, resolution)`` (a 4×4 colour field upsampled
    bilinearly, plus 0.1 pixel noise, standardised per channel) and uniform labels ``(n,)``."""
    g = derive_generator(seed, 7)
    coarse = torch.randn((n, 3, 4, 4), generator=g)
    x = F.interpolate(coarse, size=(resolution, resolution), mode="bilinear", align_corners=False)
    x = x + 0.1 * torch.randn(x.shape, generator=g)
    x = (x - x.mean((0, 2, 3), keepdim=True)) / x.std((0, 2, 3), keepdim=True)
    return x, torch.randint(num_classes, (n,), generator=g)


def _supernet(args_dict: dict):
    torch.manual_seed(args_dict["seed"])
    return nb201_supernet(channels=args_dict["channels"], cells_per_stage=args_dict["cells_per_stage"], num_classes=10)


def score_cells(codes: list[str], args_dict: dict) -> list[dict]:
    """Proxies and seconds of each cell (op codes); runs in a worker process."""
    torch.set_num_threads(1)
    from lightning_nas.spaces.nb201 import nb201_from_op_code

    supernet = _supernet(args_dict)
    data = cifar_like(args_dict["examples"], args_dict["resolution"], 10, args_dict["seed"])
    deadline = args_dict["deadline"]
    rows = []
    for code in codes:
        if time.time() > deadline:
            break
        start = time.perf_counter()
        net = supernet.export(nb201_from_op_code(code))
        row = {"op_code": code, "export_s": time.perf_counter() - start}
        for name in PROXY_NAMES:
            t = time.perf_counter()
            row[name] = compute_proxies(net, data, (name,), seed=args_dict["seed"])[name]
            row[f"{name}_s"] = time.perf_counter() - t
        row["seconds"] = time.perf_counter() - start
        rows.append(row)
    return rows


#: The settings a cache's scores depend on (a cache written with others is refused).
CACHE_KEYS = ("seed", "channels", "cells_per_stage", "examples", "resolution")


def read_cache(path: Path, settings: dict) -> dict[str, dict]:
    """Cells scored earlier (``op_code -> row``) from the JSON cache ``path`` (empty when absent).

    Raises:
        ValueError: the cache was written with other supernet/data settings.
    """
    if not path.exists():
        return {}
    data = json.loads(path.read_text())
    wanted = {k: settings[k] for k in CACHE_KEYS}
    if data.get("settings") != wanted:
        raise ValueError(f"--cache {path} holds proxies computed with {data.get('settings')}, not {wanted}; "
                         "use another --cache path")
    return {row["op_code"]: {k: (float(v) if k != "op_code" else v) for k, v in row.items()} for row in data["rows"]}


def write_cache(path: Path, settings: dict, rows: dict[str, dict]) -> None:
    """Every scored cell into ``path`` (JSON; ±inf as strings), written to a temporary file and renamed,
    so an interrupted write never leaves a broken cache."""
    path.parent.mkdir(parents=True, exist_ok=True)
    body = {"settings": {k: settings[k] for k in CACHE_KEYS},
            "proxies": list(PROXY_NAMES),
            "rows": [{k: (v if k == "op_code" or math.isfinite(v) else str(v)) for k, v in r.items()}
                     for r in rows.values()]}
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(body))
    os.replace(tmp, path)


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    return float(stats.spearmanr(a, b).statistic)


def kendall(a: np.ndarray, b: np.ndarray) -> float:
    return float(stats.kendalltau(a, b).statistic)


# -- optional: BO with proxy pretraining ------------------------------------------------------------
def bo_comparison(args, evaluators: dict, supernet_args: dict) -> dict:
    """Mean evaluations to the optimum (cap 300) of BO + pretraining on params/FLOPs vs on proxies."""
    from lightning_nas.strategies.bo import BayesianOptimization
    from lightning_nas.strategies.driver import Budget, run_search

    space = nb201_search_space()
    supernet = _supernet(supernet_args)
    data = cifar_like(args.examples, args.resolution, 10, args.seed)
    proxies = ProxyCostModel(supernet, data, ("log_synflow", "naswot", "jacob_cov"), seed=args.seed)
    out = {}
    for dataset, evaluator in evaluators.items():
        full = evaluator.full_fidelity
        optimum = evaluator.benchmark.best(evaluator.valid_columns[full])[0]
        flops_params = [c for c in evaluator.cost_columns if c.endswith(("params_M", "flops_M"))]

        def both(arch, evaluator=evaluator):
            return {**evaluator.costs(arch), **proxies(arch)}

        variants = {"params/FLOPs": (evaluator.costs, flops_params),
                    "proxies": (proxies, ["log_synflow", "naswot", "jacob_cov"]),
                    "params/FLOPs + proxies": (both, flops_params + ["log_synflow", "naswot", "jacob_cov"])}
        for name, (cost_model, metrics) in variants.items():
            counts = []
            for seed in range(args.bo_seeds):
                strategy = BayesianOptimization(space, seed=seed, cost_model=cost_model, pretrain_metrics=metrics,
                                                pretrain_archs=args.bo_pretrain_archs, steps=100)
                results = run_search(strategy, evaluator, objective="valid_accuracy", budget=Budget(evaluations=300),
                                     stop_when=lambda t: t.arch == optimum)
                hit = next((r["number"] + 1 for r in results.rows()
                            if all(r[k] == v for k, v in optimum.items())), None)
                counts.append(300 if hit is None else hit)
                print(f"BO {dataset} {name} seed {seed}: {counts[-1]} (cost model scored {proxies.calls} archs)",
                      flush=True)
            out[(dataset, name)] = counts
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    repo = Path(__file__).resolve().parent.parent
    parser.add_argument("--tables", type=Path, default=repo.parent / "shared/data/nb201",
                        help="folder holding nb201_cifar10.csv and nb201_cifar100.csv")
    parser.add_argument("--cells", type=int, default=1000, help="cells to score (drawn uniformly, without replacement)")
    parser.add_argument("--channels", type=int, default=16, help="channels of the first stage (NB201: 16)")
    parser.add_argument("--cells-per-stage", type=int, default=5, help="cells per stage (NB201: 5)")
    parser.add_argument("--resolution", type=int, default=8, help="image side [pixels] (CIFAR: 32)")
    parser.add_argument("--examples", type=int, default=32, help="examples the proxies see (one batch)")
    parser.add_argument("--seed", type=int, default=0, help="cell sample, initialisation and synthetic data")
    parser.add_argument("--jobs", type=int, default=1, help="worker processes (one torch thread each)")
    parser.add_argument("--max-seconds", type=float, default=math.inf,
                        help="stop scoring after this many seconds (the section reports the cells scored)")
    parser.add_argument("--cache", type=Path, default=None,
                        help="JSON file of scored cells: cells already in it are not scored again, new ones are added "
                             "(benchmarks/blackbox_nb201.py --proxy-cache reads it for BO pretraining)")
    parser.add_argument("--bo-seeds", type=int, default=0,
                        help="seeds of the BO comparison (0: not run; expensive: proxies of every pretraining arch)")
    parser.add_argument("--bo-pretrain-archs", type=int, default=2000, help="BO pretraining archs per seed")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "RESULTS.md")
    parser.add_argument("--no-write", action="store_true", help="print the section without writing --out")
    args = parser.parse_args(argv)
    for name in ("cells", "channels", "cells_per_stage", "resolution", "jobs", "bo_pretrain_archs"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.examples < 2:
        parser.error("--examples must be at least 2 (NASWOT and jacob_cov compare examples)")
    if args.cells > 15625:
        parser.error("--cells must be at most 15625 (the NB201 space)")
    if args.seed < 0 or args.bo_seeds < 0:
        parser.error("--seed and --bo-seeds must be non-negative")
    torch.set_num_threads(1)
    benches = {}
    try:
        for dataset, file, prefix in TABLES:
            benches[dataset] = (TabularBenchmark.from_csv(args.tables / file), prefix)
    except (ValueError, OSError) as err:
        parser.error(str(err))

    def produce(command: str) -> str:
        started = time.time()
        archs = list(nb201_search_space().enumerate())
        order = np.random.default_rng(args.seed).permutation(len(archs))[: args.cells]
        codes = [nb201_op_code(archs[int(i)]) for i in order]
        supernet_args = {"seed": args.seed, "channels": args.channels, "cells_per_stage": args.cells_per_stage,
                         "examples": args.examples, "resolution": args.resolution,
                         "deadline": started + args.max_seconds}
        cached = read_cache(args.cache, supernet_args) if args.cache else {}
        todo = [c for c in codes if c not in cached]
        chunks = [todo[j:: args.jobs] for j in range(args.jobs)]
        wall = time.perf_counter()
        if args.jobs == 1:
            new = score_cells(todo, supernet_args)
        else:
            with ProcessPoolExecutor(args.jobs) as pool:
                new = [r for part in pool.map(score_cells, chunks, [supernet_args] * args.jobs) for r in part]
        wall = time.perf_counter() - wall
        if args.cache:
            write_cache(args.cache, supernet_args, {**cached, **{r["op_code"]: r for r in new}})
            print(f"{len(cached)} cells from {args.cache}, {len(new)} scored now", flush=True)
        fresh = {r["op_code"]: r for r in new}
        rows = [cached.get(c) or fresh[c] for c in codes if c in cached or c in fresh]
        print(f"scored {len(rows)} cells in {wall:.0f} s", flush=True)
        lines = [BEGIN, "## Zero-cost proxies on NAS-Bench-201 (Spearman ρ with 200-epoch validation accuracy)", "",
                 f"- Date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}",
                 f"- Machine: {machine(threads=1)}, load average {os.getloadavg()[0]:.1f} at the end",
                 f"- Command: `{command}`",
                 f"- {len(rows)} cells scored (of {args.cells} drawn uniformly from the 15,625 with seed {args.seed}"
                 + (f"; scoring stopped at --max-seconds {args.max_seconds:g}" if len(rows) < args.cells else "")
                 + f"), {args.jobs} process(es), {wall:.0f} s wall. Networks exported from one "
                 f"`nb201_supernet(channels={args.channels}, cells_per_stage={args.cells_per_stage}, num_classes=10)` "
                 f"initialised from seed {args.seed} (NB201 itself: 16 channels, 5 cells per stage); proxies on "
                 f"{args.examples} synthetic CIFAR-like images of {args.resolution}×{args.resolution} pixels with "
                 "uniform labels (smooth random colour fields, seeded; no download), one batch, training-mode "
                 "BatchNorm, one torch thread per process. The same scores are correlated with both tables.",
                 "- Baselines: the tables' own parameter and FLOP counts (`<prefix>_params_M`, `<prefix>_flops_M`). "
                 "A score of −inf (NASWOT: singular kernel; jacob_cov: a Jacobian that is constant, i.e. the output "
                 "no longer depends on the input) ranks below every finite score.",
                 ""]
        header = "| proxy | " + " | ".join(f"ρ {d} | τ {d}" for d, _, _ in TABLES) + " | −inf | ms / cell (median) |"
        lines += [header, "|---|" + "---:|" * (2 * len(TABLES) + 2)]
        codes_done = [r["op_code"] for r in rows]
        columns: dict[str, dict[str, np.ndarray]] = {}
        for dataset, (bench, prefix) in benches.items():
            index = [bench.index({**_arch(c)}) for c in codes_done]
            columns[dataset] = {
                "valid": bench.column(f"{prefix}_valid_200")[index],
                "params": bench.column(f"{prefix}_params_M")[index],
                "FLOPs": bench.column(f"{prefix}_flops_M")[index],
            }
        summary = {}
        for name in (*PROXY_NAMES, "params", "FLOPs"):
            cells = []
            for dataset in benches:
                values = np.array([r[name] for r in rows]) if name in PROXY_NAMES else columns[dataset][name]
                rho, tau = spearman(values, columns[dataset]["valid"]), kendall(values, columns[dataset]["valid"])
                summary[(name, dataset)] = rho
                cells += [f"{rho:.3f}", f"{tau:.3f}"]
            if name in PROXY_NAMES:
                infinite = sum(1 for r in rows if math.isinf(r[name]))
                ms = 1e3 * statistics.median(r[f"{name}_s"] for r in rows)
                lines.append(f"| {name} | " + " | ".join(cells) + f" | {infinite} | {ms:.0f} |")
            else:
                lines.append(f"| {name} (table) | " + " | ".join(cells) + " | 0 | 0 |")
        per_cell = [r["seconds"] for r in rows]
        lines += ["", f"Per cell (export + all four proxies): median {1e3 * statistics.median(per_cell):.0f} ms, "
                      f"mean {1e3 * statistics.mean(per_cell):.0f} ms, p90 {1e3 * float(np.quantile(per_cell, 0.9)):.0f} ms; "
                      f"export alone median {1e3 * statistics.median(r['export_s'] for r in rows):.0f} ms.",
                  "",
                  "The published figures (Abdelfattah et al. 2021; Mellor et al. 2021) were measured on full-size "
                  "networks (16 channels, 5 cells per stage) with real 32×32 CIFAR batches; these networks see "
                  f"{args.resolution}×{args.resolution} synthetic images"
                  + ("" if (args.channels, args.cells_per_stage) == (16, 5) else " and are smaller")
                  + ", so compare the ranking of the proxies rather than the values."]
        if args.bo_seeds:
            evaluators = {d: TabularEvaluator(b, prefix=p) for d, (b, p) in benches.items()}
            bo = bo_comparison(args, evaluators, supernet_args)
            lines += ["", f"### BO + pretraining: evaluations to the optimum (cap 300, {args.bo_seeds} seeds)", "",
                      "| dataset | pretraining targets | mean | max |", "|---|---|---:|---:|"]
            for (dataset, name), counts in bo.items():
                lines.append(f"| {dataset} | {name} | {statistics.mean(counts):.1f} | {max(counts)} |")
        else:
            lines += ["", "BO with pretraining on proxies vs params/FLOPs: not run in this invocation "
                          "(`--bo-seeds K` runs it; each seed scores its 2000 pretraining archs live)."]
        lines.append(END)
        return "\n".join(lines) + "\n"

    publish(SCRIPT, argv, args.out, not args.no_write, produce, BEGIN, END)


def _arch(code: str) -> dict:
    from lightning_nas.spaces.nb201 import nb201_from_op_code

    return nb201_from_op_code(code)


if __name__ == "__main__":
    main()
