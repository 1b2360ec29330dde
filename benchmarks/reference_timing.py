"""Does a pick's time, scaled by reference subnets, stay put while the machine changes? Two estimators, one set of timings.

The demo checks each pick against a latency budget set minutes earlier from random subnets' times. It
times the pick beside references (the random subnets timed closest to the budget, ``ReferenceTimer.near``)
in several interleaved timings and scales by their speed then. Two ways to combine the timings:

* ``fastest``: each arch keeps its fastest time over the timings; the speed is the median over the
  references of their fastest time / their first time (the demo until 2026-12-05);
* ``median``: each timing is scaled by its own references' speed (median of time / first time), and
  the pick's time is the median over the timings of those scaled times (``ReferenceTimer`` now).

Both are computed from the same raw timings (``ReferenceTimer.last_ms``), so only the combination
differs. Set-up, the demo's: its space (``binas_supernet("tiny", num_classes=10, **DEMO_SPACE)``,
untrained: latency does not depend on the weights), input 1 × 16 × 16, batch 1, one torch thread,
``median_of_mins`` of ``--repeats`` calls in 5 interleaved rounds, malloc thresholds pinned. A latency
table is built and calibrated on ``--archs`` random subnets timed once (idle); the budgets are the 20 /
50 / 80 % quantiles of those times; each budget's pick maximises a params-like objective (the params
table, each block entry times a seeded log-normal factor, σ 0.3) under 95 % of the budget, so picks are
large for their latency, like the demo's. Then ``--reps`` repetitions, each timing every pick beside its
``REFERENCES`` references ``LATENCY_ATTEMPTS`` times in each condition in turn: idle, beside a process
busy on one thread, and beside one that is busy for ``--period`` seconds then asleep as long (a job that
comes and goes, like the spells this VM has). A fourth condition changes the machine's speed between the
budgets and the check, as a run whose machine sped up meanwhile: the references' first times come from a
timing of the random subnets beside two busy threads, the picks are timed idle, and the scaled times are
converted back by the random subnets' median ratio (loaded / idle), so what shifts is what references
near the budget did not take out.

Reported per estimator and condition, over every pick and repetition: how far a pick's scaled time
lies from that pick's median over the first three conditions (by the same estimator): the median, 90th percentile
and maximum |ratio − 1|, and the share more than 3 % off (the demo's margin for deciding within /
over); and the shift of the condition's median from the idle median. The ``first 3`` rows use only the
first three timings (a call that the demo's ``min_attempts`` lets stop there).

Usage::

    uv run --locked python benchmarks/reference_timing.py                 # rewrites its section of RESULTS.md
    uv run --locked python benchmarks/reference_timing.py --no-write --reps 2
"""

from __future__ import annotations

import argparse
import datetime
import os
import time
from pathlib import Path

import numpy as np

from budgets import objective_table  # benchmarks/ is the script's directory
from machine_load import competing_load
from results_file import machine, publish
from lightning_nas.demo import DEMO_SPACE, LATENCY_ATTEMPTS, REFERENCES
from lightning_nas.profiling import ProfileSettings, ReferenceTimer, build_latency_table, build_params_table, check_latency, time_archs
from lightning_nas.profiling.timing import pin_malloc_thresholds
from lightning_nas.seeding import derive_seed
from lightning_nas.solvers import Limit, search_constrained
from lightning_nas.spaces import binas_supernet

QUANTILES = (0.2, 0.5, 0.8)
#: condition -> (threads of the competing process, whether it is busy on and off for --period seconds).
CONDITIONS = {"idle": (0, False), "beside 1 busy thread": (1, False), "beside 1 thread busy on and off": (1, True)}
#: The machine's speed changed between the budgets and the check: the references' first times taken beside this
#: many busy threads, the picks timed idle (a scaled time is then converted by the random subnets' median ratio).
SPEED_CHANGE = "idle, references first timed beside 2 busy threads"
LOAD_AT_FIRST = 2
MARGIN = 0.03


def markers() -> tuple[str, str]:
    return "<!-- benchmarks/reference_timing.py: begin -->", "<!-- benchmarks/reference_timing.py: end -->"


def estimates(raw: np.ndarray, reference_ms: np.ndarray) -> dict[str, float]:
    """``raw``: ``(T, 1 + K)`` times of one pick then its K references in T timings -> each estimator's scaled time."""
    fastest = raw.min(0)
    speeds = np.median(raw[:, 1:] / reference_ms, axis=1)
    return {"fastest": float(fastest[0] / np.median(fastest[1:] / reference_ms)), "median": float(np.median(raw[:, 0] / speeds))}


def run(args: argparse.Namespace, command: str) -> str:
    started = time.perf_counter()
    load_start = os.getloadavg()[0]
    pin_malloc_thresholds()
    supernet = binas_supernet("tiny", num_classes=10, **DEMO_SPACE)
    settings = ProfileSettings(input_size=(1, 16, 16), repeats=args.repeats, statistic="median_of_mins", pin_malloc=True)
    table = build_latency_table(supernet, settings, seed=args.seed)
    randoms = supernet.space.sample_many(args.archs, args.seed)
    check = check_latency(supernet, table, archs=randoms)
    calibrated = check.calibrated(table)
    random_ms = check.measured.astype(float)
    targets = [float(t) for t in np.quantile(random_ms, QUANTILES)]
    with competing_load(LOAD_AT_FIRST):
        loaded_ms = np.array([t.value(settings.statistic) for t in time_archs(supernet, randoms, settings, seed=args.seed + 1)])
    slower = float(np.median(loaded_ms / random_ms))  # the speed change the SPEED_CHANGE condition must take out
    objective = objective_table(build_params_table(supernet), args.seed)
    picks = [search_constrained(objective, Limit(calibrated, upper=0.95 * t)).arch for t in targets]
    # ReferenceTimer.near's references of each budget, as indices (SPEED_CHANGE takes their first times from loaded_ms).
    nears = [np.argsort(np.abs(random_ms - t), kind="stable")[:REFERENCES] for t in targets]
    # values[condition][estimator + variant]: (picks, reps) scaled time / budget
    values = {name: {f"{e}{v}": np.zeros((len(picks), args.reps)) for e in ("fastest", "median") for v in ("", ", first 3")}
              for name in [*CONDITIONS, SPEED_CHANGE]}
    for rep in range(args.reps):
        for name, (threads, on_and_off) in [*CONDITIONS.items(), (SPEED_CHANGE, (0, False))]:
            then, change = (random_ms, 1.0) if name != SPEED_CHANGE else (loaded_ms, slower)
            with competing_load(threads, args.period if on_and_off else None):
                for k, (pick, target, near) in enumerate(zip(picks, targets, nears)):
                    timer = ReferenceTimer(supernet, settings, [randoms[i] for i in near], then[near], attempts=LATENCY_ATTEMPTS,
                                           seed=derive_seed(args.seed, rep, k))
                    timer([pick])
                    for variant, raw in (("", timer.last_ms), (", first 3", timer.last_ms[:3])):
                        for estimator, value in estimates(raw, timer.reference_ms).items():
                            values[name][estimator + variant][k, rep] = value / change / target
            print(f"repetition {rep + 1}/{args.reps}, {name}: median pick / budget "
                  f"{np.median(values[name]['median'][:, rep]):.3f} (fastest {np.median(values[name]['fastest'][:, rep]):.3f})", flush=True)
    begin, end = markers()
    lines = [
        begin,
        "## A pick's time beside reference subnets while the machine changes: fastest of the timings vs median of scaled timings",
        "",
        f"- Date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}",
        f"- Machine: {machine(threads=1)}; 1-minute load average {load_start:.2f} at the start, {os.getloadavg()[0]:.2f} at the end",
        f"- Command: `{command}`; {time.perf_counter() - started:.0f} s in all",
        f"- The demo's space (untrained), input 1 × 16 × 16, batch 1, 1 torch thread, median_of_mins of {args.repeats} calls in 5 "
        f"interleaved rounds, malloc thresholds pinned. Budgets: the 20 / 50 / 80 % quantiles of {args.archs} random subnets "
        f"timed once ({', '.join(f'{t:.3f}' for t in targets)} ms); 3 picks (params-like objective under 95 % of each budget), "
        f"each timed {LATENCY_ATTEMPTS} times beside its {REFERENCES} references per condition and repetition, {args.reps} "
        f"repetitions, conditions in turn. On-and-off load: busy {args.period} s, asleep {args.period} s. Last condition: the "
        f"references' first times taken beside {LOAD_AT_FIRST} busy threads (the {args.archs} subnets ran {slower:.2f}× slower "
        "then), the picks timed idle; its scaled times are divided by that factor, so any shift is a speed change that the "
        "references near the budget did not take out.",
        "- Off: a pick's scaled time against that pick's median over the first three conditions (same estimator); shift: the condition's "
        "median over the idle median",
        "",
        "| condition | estimator | median off (%) | p90 off (%) | max off (%) | > 3 % off | shift vs idle (%) |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for estimator in values["idle"]:
        centre = np.median(np.concatenate([values[name][estimator] for name in CONDITIONS], axis=1), axis=1, keepdims=True)
        idle = np.median(values["idle"][estimator] / centre)
        for name in [*CONDITIONS, SPEED_CHANGE]:
            off = np.abs(values[name][estimator] / centre - 1)
            lines.append(f"| {name} | {estimator} | {100 * np.median(off):.1f} | {100 * np.quantile(off, 0.9):.1f} | "
                         f"{100 * off.max():.1f} | {100 * np.mean(off > MARGIN):.0f} % | "
                         f"{100 * (np.median(values[name][estimator] / centre) / idle - 1):+.1f} |")
    lines += ["", "Both estimators come from the same raw timings (`ReferenceTimer.last_ms`): only how they are combined differs.", end]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--archs", type=int, default=100, help="random subnets timed once: budgets and references")
    parser.add_argument("--reps", type=int, default=8, help="repetitions of every condition")
    parser.add_argument("--repeats", type=int, default=50, help="timed calls per subnet per timing")
    parser.add_argument("--period", type=float, default=0.5, help="busy / asleep seconds of the on-and-off load")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-write", action="store_true", help="print the section only")
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("RESULTS.md"))
    args = parser.parse_args(argv)
    publish("reference_timing.py", argv, args.out, not args.no_write, lambda command: run(args, command), *markers())


if __name__ == "__main__":
    main()
