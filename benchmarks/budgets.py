"""Do latency budgets hold on a busy, noisy machine? Quiet vs loaded CPU, side by side in one run.

Space: the demo's (``binas_supernet("tiny", num_classes=10, **DEMO_SPACE)``, untrained: latency
does not depend on the weights), input 1 × 16 × 16, batch 1, one torch thread.

Protocol:

1. Tables. One latency table is built on the quiet machine (``build_latency_table``, ``--repeats``
   timed calls per measurement). Its ``median`` table is what the library builds by default; its
   ``min`` table (fastest timed call per entry, fixed part from the minima of the same calibration
   subnets) and its ``median_of_mins`` table (the median over the 5 rounds of each round's fastest
   call) come from the same measurements, as ``build_latency_table(statistic=...)`` would give. A second table is built the same way while the load runs (rows f, g).
2. Objective and budgets, per seed. The objective to maximise is params-like: the params table
   with every block entry multiplied by a seeded log-normal factor (σ 0.3), so that picks differ
   between seeds and, like accuracy, the best arch is as large as the budget allows (picks sit
   against the budget: the hard case). Budgets: the 20 / 50 / 80 % quantiles of the quiet table's
   predictions for 2000 random subnets of the seed, in the unit of each statistic (a median budget
   for median rows, a min budget for min rows). The budgets do not change with the condition.
3. Blocks. ``--reps`` repetitions, each a quiet block then a loaded block (quiet, loaded, quiet,
   loaded, ... so that the machine's drift hits both); the seeds are split over the repetitions.
   The load is a second process, started before and killed after each loaded block (see ``LOAD_THREADS`` and ``machine_load.py``).
   In each block:

   * ``2 × --num-archs`` random subnets of the repetition (the same in both conditions) are timed end to
     end in one interleaved ``time_archs`` call: the first half calibrates (``calibrate_latency``,
     ``LatencyCheck.calibrated(terms="scale")``: fixed part and scale refitted by least squares), the second half
     is held out to give each variant's MAPE (median or min statistic, as the variant's table);
   * every variant solves the three budgets (``search_constrained``, exact MILP), verifying ones
     (for the repetition's seeds) with ``verify=`` measuring the pick now and the bound lowered to
     ``budget · (1 − h)``;
   * all picks of the block are then re-measured together in one fresh ``time_archs`` call
     (independent of verify's own measurements): a pick violates its budget when this
     measurement (its variant's statistic) exceeds the budget. Rows d and i, the demo's protocol, are
     verified and re-measured with ``ReferenceTimer`` instead: beside 10 of the block's calibration
     subnets, up to 3 interleaved timings, each scaled by the references' speed in it against their
     first timing, the median over the timings (until 2026-12-05: the fastest of the timings, scaled by
     the references' fastest).

Variants: a) median table as built (the default); b) min table as built; c) min table calibrated on
the block's calibration subnets; d) c + verify with ``ReferenceTimer`` (headroom ``h``, ``--max-verify`` picks at most);
e) median table as built + verify; f) median table built under load; g) min table built under load;
h) median-of-mins table as built; i) h calibrated + verify with ``ReferenceTimer`` (d's protocol on
that statistic: the demo's since 2026-12-05).

Reported per variant and condition: MAPE (mean over the blocks), the share of picks whose
re-measurement exceeds the budget, the median of re-measured / budget − 1, verify's tries, and the
objective of the pick relative to variant a's pick on the quiet machine (same seed and budget).

Usage::

    uv run --locked python benchmarks/budgets.py                 # rewrites its section of RESULTS.md
    uv run --locked python benchmarks/budgets.py --no-write --seeds 2
"""

from __future__ import annotations

import argparse
from dataclasses import replace
import copy
import datetime
import os
import time
from pathlib import Path

import numpy as np

from machine_load import competing_load  # benchmarks/ is the script's directory
from results_file import machine, publish
from lightning_nas.bilinear import BilinearTable
from lightning_nas.demo import DEMO_SPACE
from lightning_nas.profiling.report import ReferenceTimer
from lightning_nas.profiling import LatencyCheck, ProfileSettings, build_latency_table, build_params_table, mape, time_archs
from lightning_nas.profiling.timing import STATISTICS
from lightning_nas.seeding import derive_seed
from lightning_nas.solvers import InfeasibleError, Limit, search_constrained
from lightning_nas.spaces import binas_supernet

INPUT_SIZE = (1, 16, 16)
QUANTILES = (0.2, 0.5, 0.8)
BUDGET_STREAM, ARCH_STREAM, OBJECTIVE_STREAM = 11, 12, 13
#: Threads of the competing process of a loaded block (machine_load.competing_load).
LOAD_THREADS = 2
#: key, label, statistic, table ("quiet", "calibrated" or "loaded": which table of that statistic), verify,
#: verified and re-measured beside reference subnets (ReferenceTimer).
VARIANTS = [
    ("a", "median table as built (default)", "median", "quiet", False, False),
    ("b", "min table as built", "min", "quiet", False, False),
    ("c", "min + calibration", "min", "calibrated", False, False),
    ("d", "min + calibration + verify beside references (the demo's statistic until 2026-12-05)", "min", "calibrated", True, True),
    ("e", "median + verify", "median", "quiet", True, False),
    ("f", "median table built under load", "median", "loaded", False, False),
    ("g", "min table built under load", "min", "loaded", False, False),
    ("h", "median-of-mins table as built", "median_of_mins", "quiet", False, False),
    ("i", "median-of-mins + calibration + verify beside references (the demo's protocol)", "median_of_mins", "calibrated", True, True),
]
CALIBRATED = ("min", "median_of_mins")
CONDITIONS = ("quiet", "loaded")


def markers() -> tuple[str, str]:
    return "<!-- benchmarks/budgets.py: begin -->", "<!-- benchmarks/budgets.py: end -->"


def busy_cpu_seconds() -> tuple[float, float]:
    """CPU seconds used so far by the whole machine (``/proc/stat``) and by this process and its reaped children."""
    with open("/proc/stat") as f:
        fields = [float(v) for v in f.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    own = os.times()
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK"), own.user + own.system + own.children_user + own.children_system


def with_statistic(table: BilinearTable, statistic: str) -> BilinearTable:
    """The table of ``statistic`` from the same measurements: per-entry values and fixed part of that statistic."""
    meta = copy.deepcopy(dict(table.metadata))
    meta["settings"]["statistic"] = statistic
    residuals = meta["constant_estimate"]["residuals_by_statistic_ms"][statistic]
    return BilinearTable(table.staged, float(np.median(residuals)), np.array(meta["spread"][statistic]), name="latency", unit="ms", metadata=meta)


def build_tables(supernet, settings: ProfileSettings, loaded: bool, seed: int) -> tuple[dict[str, BilinearTable], float]:
    started = time.perf_counter()
    with competing_load(LOAD_THREADS if loaded else 0):
        table = build_latency_table(supernet, settings, seed=seed)
    return {stat: with_statistic(table, stat) for stat in STATISTICS}, time.perf_counter() - started


def objective_table(params: BilinearTable, seed: int) -> BilinearTable:
    """Params-like objective of ``seed``: every block entry times a log-normal factor (σ 0.3)."""
    rng = np.random.default_rng(derive_seed(seed, OBJECTIVE_STREAM))
    block = params.block * np.exp(0.3 * rng.standard_normal(params.block.shape))
    return BilinearTable(params.staged, params.constant, block, params.depth, name="objective", unit="params")


def solve(objective: BilinearTable, table: BilinearTable, target: float, verify, args: argparse.Namespace) -> dict:
    """One pick: ``arch`` (``None`` when no arch fits), verify's ``tries`` and whether verify ``failed``."""
    if verify is None:
        try:
            return {"arch": search_constrained(objective, Limit(table, upper=target)).arch, "tries": 0, "failed": False}
        except InfeasibleError as err:
            return {"arch": None, "tries": 0, "failed": False, "reason": str(err)[:160]}
    try:
        result = search_constrained(objective, Limit(table, upper=target * (1 - args.headroom)), verify=verify, max_verify=args.max_verify)
        return {"arch": result.arch, "tries": len(result.details["verification"]), "failed": False}
    except InfeasibleError as err:
        return {"arch": None, "tries": len(getattr(err, "tries", [])), "failed": True, "reason": str(err)[:160]}


def run_block(ctx: dict, rep: int, seeds: list[int], condition: str, args: argparse.Namespace) -> tuple[dict, list[dict]]:
    """One block (repetition ``rep`` in one condition): MAPE of every variant, and the picks of ``seeds`` re-measured."""
    supernet, settings, n = ctx["supernet"], ctx["settings"], args.num_archs
    started = time.perf_counter()
    load_before = os.getloadavg()[0]
    machine_before, own_before = busy_cpu_seconds()
    picks = []
    with competing_load(LOAD_THREADS if condition == "loaded" else 0):
        archs = supernet.space.sample_many(2 * n, derive_seed(args.seed, ARCH_STREAM, rep))
        timings = time_archs(supernet, archs, settings, seed=rep)
        measured = {stat: np.array([t.value(stat) for t in timings]) for stat in STATISTICS}
        calib, held = archs[:n], archs[n:]
        spread = {"p10": np.array([t.p10_ms for t in timings[:n]]), "p90": np.array([t.p90_ms for t in timings[:n]])}
        checks = {stat: LatencyCheck(archs=calib, predicted=ctx["quiet"][stat].predict_many(calib), measured=measured[stat][:n], **spread)
                  for stat in CALIBRATED}
        tables = {"quiet": ctx["quiet"], "loaded": ctx["loaded"],
                  "calibrated": {stat: checks[stat].calibrated(ctx["quiet"][stat], terms="scale") for stat in CALIBRATED}}
        mapes = {key: mape(tables[which][stat].predict_many(held), measured[stat][n:]) for key, _, stat, which, *_ in VARIANTS}
        for key, _, stat, which, verifying, referenced in VARIANTS:
            table = tables[which][stat]

            def verify(arch: dict, stat: str = stat) -> dict[str, float]:
                return {"latency": time_archs(supernet, [arch], settings, seed=rep)[0].value(stat)}

            if referenced:  # the demo's protocol: beside reference subnets, median of up to 3 scaled timings
                timer = ReferenceTimer(supernet, replace(settings, statistic=stat), calib[:10], measured[stat][:10], seed=rep)

            for seed in seeds:
                objective = ctx["objectives"][seed]
                for q, target in zip(QUANTILES, ctx["targets"][seed][stat]):
                    checker = timer.verifier(float(target) * (1 - args.headroom)) if referenced else verify
                    pick = solve(objective, table, float(target), checker if verifying else None, args)
                    if pick["arch"] is None:
                        print(f"[rep {rep}, {condition}] {key}, seed {seed}, {q:.0%} budget {target:.3f} ms: no pick: {pick['reason']}", flush=True)
                    picks.append({"variant": key, "condition": condition, "seed": seed, "quantile": q, "statistic": stat,
                                  "target": float(target), **pick,
                                  "objective": None if pick["arch"] is None else float(objective.predict(pick["arch"]))})
        chosen = [p for p in picks if p["arch"] is not None]
        # Re-measured independently: all picks of the block together, after every search (and verify) is done.
        again = time_archs(supernet, [p["arch"] for p in chosen], settings, seed=rep + 1)
        for p, t in zip(chosen, again):
            p["measured"] = t.value(p["statistic"])
        # Rows verified beside references are re-measured that way (as the demo measures).
        for key, _, stat, _, _, referenced in VARIANTS:
            demo_way = [p for p in chosen if p["variant"] == key]
            if referenced and demo_way:
                timer = ReferenceTimer(supernet, replace(settings, statistic=stat), calib[:10], measured[stat][:10], seed=rep + 1)
                for p, ms in zip(demo_way, timer([p["arch"] for p in demo_way])[0]):
                    p["measured"] = float(ms)
    machine_after, own_after = busy_cpu_seconds()
    seconds = time.perf_counter() - started
    # CPUs kept busy by other jobs (neither this process nor its load): the machine's busy time minus ours.
    others = max(0.0, (machine_after - machine_before) - (own_after - own_before)) / seconds
    # How fast the machine ran against the quiet table's build: held-out subnets' measured / predicted.
    drift = {stat: float(np.median(measured[stat][n:] / ctx["quiet"][stat].predict_many(held))) for stat in STATISTICS}
    block = {"rep": rep, "condition": condition, "mape": mapes, "measured": measured, "seconds": seconds,
             "load_before": load_before, "others": others, "drift": drift}
    print(f"[rep {rep}, {condition}] {seconds:.0f} s, load avg {load_before:.2f}, other jobs {others:.2f} CPUs; MAPE "
          + ", ".join(f"{k} {v:.1f}" for k, v in mapes.items()) + "; violations "
          + ", ".join(f"{k} {sum(p['measured'] > p['target'] for p in chosen if p['variant'] == k)}/{sum(p['variant'] == k for p in chosen)}"
                      for k, *_ in VARIANTS), flush=True)
    return block, picks


def wait_for_quiet(args: argparse.Namespace) -> list[float]:
    """Wait (``--wait-s`` at most, in 30 s steps) for the 1-minute load average to drop below ``--max-load``."""
    seen = [os.getloadavg()[0]]
    deadline = time.monotonic() + args.wait_s
    while seen[-1] >= args.max_load and time.monotonic() < deadline:
        print(f"load average {seen[-1]:.2f} >= {args.max_load}: waiting", flush=True)
        time.sleep(30)
        seen.append(os.getloadavg()[0])
    return seen


def summarise(blocks: list[dict], picks: list[dict]) -> dict:
    base = {(p["seed"], p["quantile"]): p["objective"] for p in picks if p["variant"] == "a" and p["condition"] == "quiet"}
    rows = {}
    for key, label, stat, _, verifying, _ in VARIANTS:
        row = {"label": label, "statistic": stat, "verify": verifying}
        for cond in CONDITIONS:
            mine = [p for p in picks if p["variant"] == key and p["condition"] == cond]
            made = [p for p in mine if p["arch"] is not None]
            over = np.array([p["measured"] / p["target"] - 1 for p in made])
            ratio = np.array([p["objective"] / base[p["seed"], p["quantile"]] for p in made])
            row[cond] = {
                "mape": float(np.mean([b["mape"][key] for b in blocks if b["condition"] == cond])),
                "picks": len(mine), "made": len(made), "violations": int((over > 0).sum()),
                "overshoot": 100 * float(np.median(over)) if len(made) else float("nan"),
                "worst": 100 * float(over.max()) if len(made) else float("nan"),
                "ratio": float(np.median(ratio)) if len(made) else float("nan"),
                "tries": [p["tries"] for p in mine], "failed": sum(p["failed"] for p in mine),
                "no_room": sum(p["failed"] and "no arch is predicted" in p["reason"] for p in mine),
                "infeasible": sum(p["arch"] is None and not p["failed"] for p in mine),
            }
        rows[key] = row
    slowdown = {}
    for stat in STATISTICS:
        ratios = [np.median(lo["measured"][stat] / qu["measured"][stat])
                  for qu in blocks if qu["condition"] == "quiet"
                  for lo in blocks if lo["condition"] == "loaded" and lo["rep"] == qu["rep"]]
        slowdown[stat] = float(np.median(ratios))
    drift = {cond: {stat: [b["drift"][stat] for b in blocks if b["condition"] == cond] for stat in STATISTICS} for cond in CONDITIONS}
    return {"rows": rows, "slowdown": slowdown, "drift": drift}


def fmt_range(values: list[float]) -> str:
    return f"{min(values):.2f}–{max(values):.2f} (mean {np.mean(values):.2f})"


def fmt_cell(c: dict, what: str) -> str:
    if what == "violations":
        text = f"{100 * c['violations'] / c['made']:.0f} ({c['violations']}/{c['made']})" if c["made"] else "– (0 picks)"
        return text + (f"; {c['infeasible']} no arch fits" if c["infeasible"] else "")
    if what == "tries":
        if not any(c["tries"]):
            return "–"
        text = f"{np.mean(c['tries']):.1f} (max {max(c['tries'])})"
        return text + (f", {c['failed']} failed" if c["failed"] else "")
    if not c["made"]:
        return "–"
    return {"overshoot": f"{c['overshoot']:+.1f}", "worst": f"{c['worst']:+.1f}", "ratio": f"{c['ratio']:.3f}"}[what]


def interpretation(s: dict, headroom: float, num_archs: int) -> list[str]:
    """Measured facts that answer the question, in words (generated, so that they match the table)."""
    r = s["rows"]

    def share(key: str, cond: str) -> str:
        c = r[key][cond]
        return f"{100 * c['violations'] / c['made']:.0f}" if c["made"] else "–"

    def held(cond: str) -> str:
        keys = [k for k in r if r[k][cond]["made"] and r[k][cond]["violations"] <= 0.1 * r[k][cond]["made"] and r[k][cond]["made"] == r[k][cond]["picks"]]
        return ", ".join(keys) or "none"

    failures = {k: r[k]["quiet"]["failed"] + r[k]["loaded"]["failed"] for k in ("d", "e", "i")}
    return [
        f"- The load made the same held-out subnets {s['slowdown']['median']:.2f}× slower in the median statistic and "
        f"{s['slowdown']['min']:.2f}× in the min, {s['slowdown']['median_of_mins']:.2f}× in the median of minima "
        "(median over repetitions of loaded / quiet). Rows whose budgets held (≤ 10 % of the "
        f"picks over budget, every pick made): quiet {held('quiet')}; loaded {held('loaded')}.",
        f"- Default (a): {share('a', 'quiet')} % → {share('a', 'loaded')} % of picks over budget, quiet → loaded (median pick "
        f"{r['a']['quiet']['overshoot']:+.1f} % → {r['a']['loaded']['overshoot']:+.1f} % against its budget); min table (b): "
        f"{share('b', 'quiet')} % → {share('b', 'loaded')} % ({r['b']['quiet']['overshoot']:+.1f} % → {r['b']['loaded']['overshoot']:+.1f} %). "
        "A min row's budget is a bound on the fastest of the timed calls, not on the typical call.",
        f"- Calibrating on {num_archs} subnets measured now (c) brought the min table's MAPE to {r['c']['quiet']['mape']:.1f} % / "
        f"{r['c']['loaded']['mape']:.1f} % (quiet / loaded) and violations to {share('c', 'quiet')} % / {share('c', 'loaded')} %; "
        f"with verify and {100 * headroom:.0f} % headroom (d) {share('d', 'quiet')} % / {share('d', 'loaded')} %, after "
        f"{np.mean(r['d']['quiet']['tries']):.1f} / {np.mean(r['d']['loaded']['tries']):.1f} measured picks on average "
        f"({failures['d']} searches ended without a pick, {r['d']['quiet']['no_room'] + r['d']['loaded']['no_room']} of them because one measured "
        f"pick came out so far above its prediction that the tightened bound left no arch), at an objective of {r['d']['quiet']['ratio']:.3f} / {r['d']['loaded']['ratio']:.3f} × "
        "the default's quiet pick.",
        f"- Verify on the median table as built (e): {share('e', 'quiet')} % / {share('e', 'loaded')} % over budget, "
        f"{failures['e']} of {r['e']['quiet']['picks'] + r['e']['loaded']['picks']} searches ended without a pick. Tables built under load: "
        f"median (f) MAPE {r['f']['quiet']['mape']:.0f} % / {r['f']['loaded']['mape']:.0f} % ({r['f']['quiet']['infeasible'] + r['f']['loaded']['infeasible']} "
        f"of {r['f']['quiet']['picks'] + r['f']['loaded']['picks']} budgets with no arch predicted to fit), min (g) MAPE {r['g']['quiet']['mape']:.1f} % / "
        f"{r['g']['loaded']['mape']:.1f} %, {share('g', 'quiet')} % / {share('g', 'loaded')} % over budget at an objective of "
        f"{r['g']['quiet']['ratio']:.3f} × the default's quiet pick.",
        f"- Median of the rounds' minima: as built (h) MAPE {r['h']['quiet']['mape']:.1f} % / {r['h']['loaded']['mape']:.1f} %, "
        f"{share('h', 'quiet')} % / {share('h', 'loaded')} % over budget; calibrated and verified beside references (i, the demo's "
        f"protocol) {share('i', 'quiet')} % / {share('i', 'loaded')} % over budget (worst {r['i']['quiet']['worst']:+.1f} % / "
        f"{r['i']['loaded']['worst']:+.1f} %), after {np.mean(r['i']['quiet']['tries']):.1f} / {np.mean(r['i']['loaded']['tries']):.1f} "
        f"measured picks, {failures['i']} searches without a pick, at an objective of {r['i']['quiet']['ratio']:.3f} / "
        f"{r['i']['loaded']['ratio']:.3f} × the default's quiet pick (d, the same protocol on minima: {r['d']['quiet']['ratio']:.3f} / "
        f"{r['d']['loaded']['ratio']:.3f}).",
        "- \"Quiet\" is this shared machine without the script's load: across the quiet blocks the held-out subnets ran "
        f"{min(s['drift']['quiet']['median']):.2f}–{max(s['drift']['quiet']['median']):.2f}× (median), "
        f"{min(s['drift']['quiet']['min']):.2f}–{max(s['drift']['quiet']['min']):.2f}× (min) and "
        f"{min(s['drift']['quiet']['median_of_mins']):.2f}–{max(s['drift']['quiet']['median_of_mins']):.2f}× (median of minima) "
        "the quiet table's prediction (median per block), "
        "so the machine's state when the table was built sets the as-built rows' bias, and shares over "
        f"{r['a']['quiet']['picks']} picks of one run can differ widely in another.",
    ]


def report(ctx: dict, blocks: list[dict], picks: list[dict], args: argparse.Namespace, command: str, loads: dict) -> str:
    s = summarise(blocks, picks)
    begin, end = markers()
    quiet_loads = [b["load_before"] for b in blocks if b["condition"] == "quiet"]
    lines = [
        begin,
        "## Latency budgets on a busy machine: quiet vs loaded CPU (demo BINAS space)",
        "",
        f"- Date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}",
        f"- Machine: {machine(threads=1)}; 1-minute load average {loads['start']:.2f} at the start "
        f"({'after waiting, ' if loads['waited'] else ''}other jobs share this machine), {loads['end']:.2f} at the end, "
        f"{min(quiet_loads):.2f}–{max(quiet_loads):.2f} at the start of the quiet blocks (these include the decay of the previous loaded block); "
        f"other jobs kept {fmt_range([b['others'] for b in blocks if b['condition'] == 'quiet'])} CPUs busy during the quiet blocks and "
        f"{fmt_range([b['others'] for b in blocks if b['condition'] == 'loaded'])} during the loaded ones (`/proc/stat` busy time minus this "
        "process's and its load's, per block)",
        f"- Command: `{command}`; {ctx['total_s']:.0f} s in all",
        f"- Space: `binas_supernet('tiny', num_classes=10, **DEMO_SPACE)` (untrained), input 1 × 16 × 16, batch 1, 1 torch thread, "
        f"float32, eager; {args.repeats} timed calls (+ 10 warm-up) per measurement in 5 interleaved rounds",
        f"- Tables: built once quiet ({ctx['build_s']['quiet']:.0f} s) and once under load ({ctx['build_s']['loaded']:.0f} s), 10 calibration "
        "subnets each; the min and median-of-mins tables come from the same measurements as the median one (per-entry minima, or "
        "the median over the 5 rounds of each round's minimum; fixed part from the calibration subnets' same statistic)",
        f"- Objective: params table × seeded log-normal factor per block entry (σ 0.3), maximised by the exact MILP; budgets: "
        f"20 / 50 / 80 % quantiles of the quiet table's predictions (each row's budgets in its own statistic) over "
        f"2000 random subnets; {args.seeds} seeds × 3 budgets = {3 * args.seeds} picks per cell",
        f"- Blocks: {args.reps} repetitions of a quiet then a loaded block, {args.seeds // args.reps}–{-(-args.seeds // args.reps)} seeds each; per block {2 * args.num_archs} random subnets timed together ({args.num_archs} calibrate "
        f"c/d, {args.num_archs} held out give every row's MAPE), then all picks solved and re-measured together in a fresh "
        f"`time_archs` call (not verify's measurement). Verify (d, e, i): bound budget × (1 − {args.headroom}), at most {args.max_verify} picks "
        "measured with the table's settings",
        "- Load: before each loaded block (and the loaded table build) the script starts `python -c` running "
        "`torch.set_num_threads(2); a = torch.randn(1500, 1500); while True: a @ a` (float32, 2 threads on this 2-CPU machine), "
        "waits for its first product, and kills it after the block (try/finally)",
        "",
        "| variant | statistic | quiet MAPE (%) | quiet violations (%) | loaded MAPE (%) | loaded violations (%) | "
        "median re-measured / budget − 1 (%) q / l | worst (%) q / l | verify tries q / l | objective vs a quiet q / l |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|---:|",
    ]
    for key, row in s["rows"].items():
        q, lo = row["quiet"], row["loaded"]
        lines.append(
            f"| {key}) {row['label']} | {row['statistic']} | {q['mape']:.1f} | {fmt_cell(q, 'violations')} | {lo['mape']:.1f} | "
            f"{fmt_cell(lo, 'violations')} | {fmt_cell(q, 'overshoot')} / {fmt_cell(lo, 'overshoot')} | "
            f"{fmt_cell(q, 'worst')} / {fmt_cell(lo, 'worst')} | {fmt_cell(q, 'tries')} / {fmt_cell(lo, 'tries')} | "
            f"{fmt_cell(q, 'ratio')} / {fmt_cell(lo, 'ratio')} |"
        )
    missing = sum(row[c]["picks"] - row[c]["made"] for row in s["rows"].values() for c in CONDITIONS)
    lines += [
        "",
        "Violations: share of the picks made whose re-measurement (the row's statistic) exceeds the budget"
        + (f"; {missing} picks were not made (verify failed or no arch fits) and are left out of the shares, see the tries column" if missing else "")
        + ". Objective: median over picks of the pick's objective / variant a's quiet pick's (same seed and budget).",
        "",
        *interpretation(s, args.headroom, args.num_archs),
        end,
    ]
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace, command: str) -> str:
    started = time.perf_counter()
    seen = wait_for_quiet(args)
    supernet = binas_supernet("tiny", num_classes=10, **DEMO_SPACE)
    settings = ProfileSettings(input_size=INPUT_SIZE, repeats=args.repeats)
    ctx = {"supernet": supernet, "settings": settings, "build_s": {}}
    ctx["quiet"], ctx["build_s"]["quiet"] = build_tables(supernet, settings, False, args.seed)
    print(f"quiet table built in {ctx['build_s']['quiet']:.0f} s", flush=True)
    ctx["loaded"], ctx["build_s"]["loaded"] = build_tables(supernet, settings, True, args.seed)
    print(f"loaded table built in {ctx['build_s']['loaded']:.0f} s", flush=True)
    params = build_params_table(supernet)
    seeds = list(range(args.seed, args.seed + args.seeds))
    ctx["objectives"] = {seed: objective_table(params, seed) for seed in seeds}
    ctx["targets"] = {
        seed: {stat: np.quantile(ctx["quiet"][stat].predict_many(supernet.space.sample_many(2000, derive_seed(seed, BUDGET_STREAM))), QUANTILES)
               for stat in STATISTICS}
        for seed in seeds
    }
    blocks, picks = [], []
    for rep in range(args.reps):
        for condition in CONDITIONS:
            block, block_picks = run_block(ctx, rep, seeds[rep::args.reps], condition, args)
            blocks.append(block)
            picks += block_picks
    ctx["total_s"] = time.perf_counter() - started
    loads = {"start": seen[-1], "waited": len(seen) > 1, "end": os.getloadavg()[0]}
    return report(ctx, blocks, picks, args, command, loads)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--seeds", type=int, default=10, help="how many seeds (3 budgets each: picks per cell = 3 × seeds)")
    parser.add_argument("--reps", type=int, default=5, help="repetitions: quiet, loaded, quiet, loaded, ...; the seeds are split over them")
    parser.add_argument("--seed", type=int, default=0, help="first seed (also the tables' seed)")
    parser.add_argument("--repeats", type=int, default=50, help="timed calls per measurement")
    parser.add_argument("--num-archs", type=int, default=30, help="random subnets per block for calibration, as many for MAPE")
    parser.add_argument("--headroom", type=float, default=0.02, help="verify's bound: budget × (1 − headroom)")
    parser.add_argument("--max-verify", type=int, default=5)
    parser.add_argument("--max-load", type=float, default=1.5, help="wait for the 1-minute load average to drop below this")
    parser.add_argument("--wait-s", type=float, default=120, help="longest wait for it, then run anyway (noted in the section)")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "RESULTS.md")
    parser.add_argument("--no-write", action="store_true", help="print the section without writing --out")
    args = parser.parse_args(argv)
    if not 1 <= args.reps <= args.seeds or args.num_archs < 2 or not 0 <= args.headroom < 1:
        parser.error("need 1 <= --reps <= --seeds, --num-archs >= 2 and --headroom in [0, 1)")
    publish("budgets.py", argv, args.out, not args.no_write, lambda command: run(args, command), *markers())


if __name__ == "__main__":
    main()
