"""How far apart are two timings of the same subnet? Each timing statistic, idle and beside competing jobs.

The demo's space (``binas_supernet("tiny", num_classes=10, **DEMO_SPACE)``, untrained: latency does
not depend on the weights), input 1 × 16 × 16, batch 1, one torch thread, eager, malloc thresholds
pinned, ``--repeats`` timed calls (+ 10 warm-up) per subnet in 5 interleaved rounds: the settings of
the demo's latency table. ``--archs`` random subnets are timed together (one ``time_archs`` call,
as ``check_latency`` times them) ``--timings`` times in each condition: idle (other tenants of the
machine aside), beside one competing process on one thread and beside one on two threads
(``machine_load.competing_load``); the conditions take turns, one timing each, so that the
machine's drift hits all of them.

Each statistic of the same samples (``median``, ``min``, ``median_of_mins``) is compared between
every two timings of a condition: per subnet, |log(t₁ / t₂)| after dividing by the median of that
ratio over the subnets (the machine's speed between the two timings, which references take out
in the demo). Reported: the median, 90th and 99th percentiles and maximum of that disagreement
(as a percentage, e^x − 1), and the share of subnets more than 10 % apart.

Usage::

    uv run --locked python benchmarks/timing_statistics.py                 # rewrites its section of RESULTS.md
    uv run --locked python benchmarks/timing_statistics.py --no-write --archs 30 --timings 2
"""

from __future__ import annotations

import argparse
import datetime
import os
import time
from pathlib import Path

import numpy as np

from machine_load import competing_load  # benchmarks/ is the script's directory
from results_file import machine, publish
from lightning_nas.demo import DEMO_SPACE
from lightning_nas.profiling import ProfileSettings, time_archs
from lightning_nas.profiling.timing import STATISTICS
from lightning_nas.spaces import binas_supernet

#: condition name -> threads of the competing process (0: none).
CONDITIONS = {"idle": 0, "beside 1 busy thread": 1, "beside 2 busy threads": 2}


def markers() -> tuple[str, str]:
    return "<!-- benchmarks/timing_statistics.py: begin -->", "<!-- benchmarks/timing_statistics.py: end -->"


def percent(log_ratio: float) -> str:
    """A |log ratio| as the percentage it stands for (e^x − 1)."""
    return f"{100 * np.expm1(log_ratio):.1f}"


def disagreement(values: np.ndarray) -> np.ndarray:
    """``values``: ``(T, N)`` times of N subnets in T timings -> every pair's per-subnet |log ratio|, speed taken out."""
    out = []
    for a in range(len(values)):
        for b in range(a + 1, len(values)):
            ratio = np.log(values[a] / values[b])
            out.append(np.abs(ratio - np.median(ratio)))
    return np.concatenate(out)


def run(args: argparse.Namespace, command: str) -> str:
    started = time.perf_counter()
    load_start = os.getloadavg()[0]
    supernet = binas_supernet("tiny", num_classes=10, **DEMO_SPACE)
    settings = ProfileSettings(input_size=(1, 16, 16), repeats=args.repeats, statistic="median_of_mins", pin_malloc=True)
    archs = supernet.space.sample_many(args.archs, args.seed)
    samples = {name: [] for name in CONDITIONS}
    for k in range(args.timings):
        for name, threads in CONDITIONS.items():
            with competing_load(threads):
                timed = time_archs(supernet, archs, settings, seed=args.seed + k)
            samples[name].append({stat: np.array([t.value(stat) for t in timed]) for stat in STATISTICS})
            print(f"timing {k + 1}/{args.timings}, {name}: median subnet {np.median(samples[name][-1]['median_of_mins']):.3f} ms", flush=True)
    begin, end = markers()
    lines = [
        begin,
        "## Timing statistics on a shared machine: how far apart two timings of the same subnet are",
        "",
        f"- Date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}",
        f"- Machine: {machine(threads=1)}; 1-minute load average {load_start:.2f} at the start, {os.getloadavg()[0]:.2f} at the end",
        f"- Command: `{command}`; {time.perf_counter() - started:.0f} s in all",
        f"- {args.archs} random subnets of the demo's space (untrained), input 1 × 16 × 16, batch 1, 1 torch thread, eager, malloc "
        f"thresholds pinned; {args.repeats} timed calls (+ 10 warm-up) per subnet in 5 interleaved rounds, all subnets in one "
        f"`time_archs` call; {args.timings} timings per condition, conditions in turn. Competing process: "
        "`torch.set_num_threads(k); a = torch.randn(1500, 1500); while True: a @ a`",
        "- Disagreement of two timings of one subnet: |log(t₁ / t₂)| less the median of that log ratio over the subnets (the "
        "machine's speed between the two), shown as a percentage; over every pair of timings of a condition",
        "",
        "| condition | statistic | median (%) | p90 (%) | p99 (%) | max (%) | subnets > 10 % apart |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for name in CONDITIONS:
        for stat in STATISTICS:
            d = disagreement(np.array([s[stat] for s in samples[name]]))
            lines.append(f"| {name} | {stat} | {percent(np.median(d))} | {percent(np.quantile(d, 0.9))} | "
                         f"{percent(np.quantile(d, 0.99))} | {percent(d.max())} | {100 * np.mean(d > np.log(1.1)):.0f} % |")
    lines += ["", "Each statistic comes from the same timed calls: only how a subnet's calls are summarised differs.", end]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--archs", type=int, default=100, help="random subnets timed together")
    parser.add_argument("--timings", type=int, default=4, help="timings of all of them per condition")
    parser.add_argument("--repeats", type=int, default=50, help="timed calls per subnet per timing")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--no-write", action="store_true", help="print the section only")
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("RESULTS.md"))
    args = parser.parse_args(argv)
    publish("timing_statistics.py", argv, args.out, not args.no_write, lambda command: run(args, command), *markers())


if __name__ == "__main__":
    main()
