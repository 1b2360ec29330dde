"""Solve time of MathNAS's linear-fractional program: Charnes–Cooper MILP vs Dinkelbach vs brute force.

Two families of synthetic MathNAS instances, growing:

* *cell-like* (fixed depth, like NB201's edges): ``m`` nodes × 5 options, ``m`` = 4 … 40;
* *staged* (variable depth, Eq. 9): ``S`` stages × 4 blocks × 9 options with depths {2, 3, 4}.

Tables are shaped like MathNAS's: option FLOPs 5–60 MFLOPs plus 20 fixed; the accuracy penalty
``b^A`` falls with the option's FLOPs (larger blocks lose less against the reference, which is
each node's first option) plus noise; latency ∝ FLOPs × noise, limited at 25 / 50 / 75 % of its
achievable range. The objective is Eq. 5's ``Acc(Ñ) − Σ b^A F̄_ij / F(N)``.

Each method: median wall time of ``--repeats`` full ``solve_fractional`` calls (model build
included) after one warm-up; every method must reach the same optimum (checked). Brute force runs
only up to ``--brute-max`` distinct archs.

Usage::

    .venv/bin/python benchmarks/mathnas_solve_time.py        # rewrites its section of RESULTS.md
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
from pathlib import Path

import numpy as np

from results_file import publish  # benchmarks/ is the script's directory
from lightning_nas.bilinear import BilinearTable
from lightning_nas.estimators.block_performance import mean_flops
from lightning_nas.solvers import Limit
from lightning_nas.solvers.fractional import solve_fractional
from lightning_nas.spaces import Decision, SearchSpace
from lightning_nas.spaces.staged import StagedSpace

BEGIN, END = "<!-- benchmarks/mathnas_solve_time.py: begin -->", "<!-- benchmarks/mathnas_solve_time.py: end -->"
FRACTIONS = (0.25, 0.5, 0.75)
METHODS = ("charnes_cooper", "dinkelbach", "brute_force")


def make_instance(kind: str, size: int, seed: int):
    rng = np.random.default_rng(seed)
    decisions = []
    if kind == "cell":
        decisions = [Decision(f"stage0.block{b}.op", tuple(range(5)), 0) for b in range(size)]
        distinct = 5**size
    else:
        for s in range(size):
            decisions += [Decision(f"stage{s}.block{b}.op", tuple(range(9)), 0) for b in range(4)]
            decisions.append(Decision(f"stage{s}.depth", (2, 3, 4), 4))
        distinct = (9**2 + 9**3 + 9**4) ** size
    staged = StagedSpace.from_space(SearchSpace(decisions))
    shape = (staged.num_stages, staged.max_blocks, staged.num_configs)
    dshape = (staged.num_stages, staged.max_depth_options)
    flops_block = rng.uniform(5, 60, shape)
    flops = BilinearTable(staged, 20.0, flops_block, name="flops", unit="MFLOPs")
    # Against the reference (option 0): options with more FLOPs lose less accuracy (%, noisy).
    penalty = 0.05 * (flops_block[..., :1] - flops_block) + rng.normal(0, 0.3, shape)
    penalty[..., 0] = 0.0
    depth_penalty = np.zeros(dshape)
    if kind == "staged":
        depth_penalty[:, :3] = [[2.0, 1.0, 0.0]] * staged.num_stages  # shallower stages lose accuracy
    _, f_block, f_depth = mean_flops(flops)
    numerator = BilinearTable(staged, 0.0, penalty * f_block, depth_penalty * f_depth, name="penalty")
    latency = BilinearTable(staged, 2.0, 0.05 * flops_block * rng.uniform(0.8, 1.2, shape), name="latency", unit="ms")
    return staged, numerator, flops, latency, distinct


def run(args: argparse.Namespace) -> list[dict]:
    rows = []
    for kind, sizes in (("cell", args.cell_sizes), ("staged", args.staged_sizes)):
        for size in sizes:
            staged, numerator, flops, latency, distinct = make_instance(kind, size, args.seed)
            lo, hi = latency.extreme()[0], latency.extreme(largest=True)[0]
            for frac in FRACTIONS:
                limit = Limit(latency, upper=lo + frac * (hi - lo))
                row = {"kind": kind, "size": size, "distinct": distinct, "frac": frac, "target": limit.upper}
                optimum = None
                for method in METHODS:
                    if method == "brute_force" and distinct > args.brute_max:
                        row[method] = None
                        continue
                    call = lambda: solve_fractional(numerator, flops, limit, constant=90.0, method=method,
                                                    time_limit=args.time_limit if method != "brute_force" else None)
                    call()  # warm-up
                    results = [call() for _ in range(args.repeats)]
                    statuses = {r.status for r in results}
                    value = results[0].objective
                    if optimum is None and statuses == {"optimal"}:
                        optimum = value
                    elif statuses == {"optimal"} and abs(value - optimum) > 1e-6 * max(1.0, abs(optimum)):
                        raise AssertionError(f"{kind} {size} {frac}: {method} found {value}, another method {optimum}")
                    row[method] = {"seconds": statistics.median(r.solve_seconds for r in results), "status": "/".join(sorted(statuses)),
                                   "iterations": results[0].details.get("iterations"), "value": value}
                row["optimum"] = optimum
                for method in METHODS:  # a run stopped by the time limit: did it hold the optimum anyway?
                    entry = row[method]
                    if entry is not None and entry["status"] != "optimal" and optimum is not None:
                        entry["status"] += ", optimum found" if abs(entry["value"] - optimum) <= 1e-6 * max(1.0, abs(optimum)) else ", optimum not found"
                rows.append(row)
                print(kind, size, frac, {m: row[m] for m in METHODS}, flush=True)
    return rows


def report(args: argparse.Namespace, rows: list[dict], command: str) -> str:
    import pyomo.version

    lines = [
        BEGIN,
        "## MathNAS fractional program: Charnes–Cooper MILP vs Dinkelbach vs brute force (CPU)",
        "",
        f"- Date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}",
        f"- Machine: {platform.processor() or platform.machine()} ({platform.platform()}), {os.cpu_count()} CPUs visible; "
        f"Pyomo {pyomo.version.version}, HiGHS (`appsi_highs`), relative gap 0",
        f"- Command: `{command}`",
        "- Instances (seed {seed}): cell-like = m nodes × 5 options, fixed depth; staged = S stages × 4 blocks × 9 options, "
        "depths {{2, 3, 4}} (Eq. 9). Latency limit at 25/50/75 % of its range. Median of {r} full calls after a warm-up; "
        "every method that proves optimality reaches the same optimum (checked); `[feasible]`: stopped by the {t:.0f} s time limit "
        "before proving it; brute force up to {b:,} archs.".format(seed=args.seed, r=args.repeats, b=args.brute_max, t=args.time_limit),
        "",
        "| space | archs | limit | Charnes–Cooper (ms) | Dinkelbach (ms, iterations) | brute force (ms) |",
        "|---|---:|---:|---:|---:|---:|",
    ]

    def cell(entry, with_iterations=False):
        if entry is None:
            return "—"
        text = f"{1e3 * entry['seconds']:.1f}"
        if with_iterations:
            text += f" ({entry['iterations']})"
        return text + ("" if entry["status"] == "optimal" else f" [{entry['status']}]")

    for r in rows:
        space = f"cell m={r['size']}" if r["kind"] == "cell" else f"staged S={r['size']}"
        archs = f"{r['distinct']:,}" if r["distinct"] < 1e7 else f"{r['distinct']:.1e}"
        lines.append(f"| {space} | {archs} | {int(100 * r['frac'])} % | {cell(r['charnes_cooper'])} | "
                     f"{cell(r['dinkelbach'], True)} | {cell(r['brute_force'])} |")
    cc = [r["charnes_cooper"]["seconds"] for r in rows]
    dk = [r["dinkelbach"]["seconds"] for r in rows]
    ratio = statistics.median(c / d for c, d in zip(cc, dk))
    lines += ["", f"Median over all rows of the Charnes–Cooper / Dinkelbach time ratio: {ratio:.1f}×.", END]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--cell-sizes", type=int, nargs="+", default=[4, 6, 8, 12, 16, 24])
    parser.add_argument("--staged-sizes", type=int, nargs="+", default=[1, 2, 5])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--brute-max", type=int, default=400_000, help="largest space solved by enumeration")
    parser.add_argument("--time-limit", type=float, default=10.0, help="per-MILP time limit (s)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "RESULTS.md")
    parser.add_argument("--no-write", action="store_true", help="print the section without writing --out")
    args = parser.parse_args(argv)
    if args.repeats < 1 or min(args.cell_sizes + args.staged_sizes) < 1:
        parser.error("--repeats and sizes must be positive")
    publish("mathnas_solve_time.py", argv, args.out, not args.no_write, lambda command: report(args, run(args), command), BEGIN, END)


if __name__ == "__main__":
    main()
