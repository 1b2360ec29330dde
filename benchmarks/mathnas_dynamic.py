"""MathNAS dynamic network on this CPU: solve time and block-switch time for a changing latency budget.

A MobileNetV3-like supernet (4 stages × up to 4 inverted-residual blocks, expansion {3, 4, 6} ×
kernel {3, 5, 7} = 9 configs per block, depth {1, …, 4}) at ``--image-size``. Its latency table is
measured here (``build_latency_table``, 1 thread, batch 1). The accuracy model is synthetic (timing
only: a block's accuracy penalty falls with the log of its FLOPs, plus noise), turned into MathNAS
block performances by Algorithm 1. The :class:`~lightning_nas.dynamic.DynamicNetwork` keeps 5
Pareto-optimal configs per block position (MathNAS's 5 per node).

Then ``--switches`` budget changes, cycling through latency targets from 30 % to 90 % of the held
networks' range. Per change: the solve time (Eq. 5 fractional program over the held blocks,
Dinkelbach and Charnes–Cooper), the switch time (swapping only the changed modules in place), the
blocks changed, and — for comparison — the time to export the whole new subnet from the supernet
(what a switch costs without held blocks). After every switch the running network is checked
against ``supernet.export(arch)`` on one input.

Paper (MathNAS §5, Table 3): on-device search 0.4 s (TX2 GPU), switch 61 ms (Dynamic-OFA 244 ms).

Usage::

    .venv/bin/python benchmarks/mathnas_dynamic.py          # rewrites its section of RESULTS.md
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
from lightning_nas.dynamic import DynamicNetwork
from lightning_nas.estimators.block_performance import estimate_block_performance
from lightning_nas.profiling.tables import build_flops_table, build_latency_table
from lightning_nas.profiling.timing import ProfileSettings
from lightning_nas.spaces import mobilenet_supernet
from lightning_nas.spaces.staged import StagedSpace

BEGIN, END = "<!-- benchmarks/mathnas_dynamic.py: begin -->", "<!-- benchmarks/mathnas_dynamic.py: end -->"
STAGES = ((24, 2, 4), (40, 2, 4), (80, 2, 4), (96, 1, 4))
PAPER_SOLVE, PAPER_SWITCH = 0.4, 0.061


def run(args: argparse.Namespace) -> dict:
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    supernet = mobilenet_supernet(num_classes=100, stages=STAGES, expand_ratios=(3, 4, 6), kernel_sizes=(3, 5, 7),
                                  head_channels=256, activation="hswish").eval()
    staged = StagedSpace.of(supernet)
    size = (3, args.image_size, args.image_size)
    started = time.perf_counter()
    flops = build_flops_table(supernet, size)
    latency = build_latency_table(supernet, ProfileSettings(size, repeats=args.profile_repeats, warmup=5), seed=args.seed)
    profile_seconds = time.perf_counter() - started

    rng = np.random.default_rng(args.seed)
    # Synthetic accuracy (timing only): concave in a block's FLOPs, deeper stages gain.
    gain = 0.8 * np.log1p(flops.block) + rng.normal(0, 0.1, flops.block.shape)
    depth_gain = np.zeros(flops.depth.shape)
    for s, st in enumerate(staged.stages):
        depth_gain[s, : len(st.depths)] = 0.5 * np.arange(len(st.depths))
    accuracy = BilinearTable(staged, 60.0, gain, depth_gain, name="accuracy")
    perf = estimate_block_performance(lambda archs: {"accuracy": accuracy.predict_many(archs)}, staged, flops)

    started = time.perf_counter()
    dynamic = DynamicNetwork(supernet, perf, latency, blocks_per_node=5).eval()
    build_seconds = time.perf_counter() - started
    held_latency = dynamic.resources["latency"]
    lo, hi = held_latency.extreme()[0], held_latency.extreme(largest=True)[0]
    targets = [lo + f * (hi - lo) for f in (0.3, 0.9, 0.5, 0.7)]
    x = torch.randn(1, *size, generator=torch.Generator().manual_seed(args.seed))
    rows = []
    for k in range(args.switches):
        target = float(targets[k % len(targets)])
        report = dynamic.set_budget({"latency": target})
        started = time.perf_counter()
        exported = supernet.export(report.arch).eval()
        export_seconds = time.perf_counter() - started
        with torch.no_grad():
            same = bool(torch.allclose(dynamic(x), exported(x), atol=1e-4))
        cc = dynamic.solve({"latency": target}, method="charnes_cooper", time_limit=30.0)
        rows.append({"target": target, "solve": report.solve_seconds, "switch": report.switch_seconds,
                     "changed": len(report.changed), "export": export_seconds, "same": same,
                     "latency": report.result.resources["latency"], "cc": cc.solve_seconds, "cc_status": cc.status,
                     "agree": abs(cc.objective - report.result.objective) < 1e-6 * max(1.0, abs(cc.objective)),
                     "iterations": report.result.details["iterations"]})
        print(rows[-1], flush=True)
    return {"rows": rows, "profile_seconds": profile_seconds, "build_seconds": build_seconds,
            "initial_solve": dynamic.initial_solve_seconds, "networks": dynamic.num_networks, "held": len(dynamic.held),
            "blocks": int(sum(min(st.num_blocks, max(st.depths)) for st in staged.stages)), "space": supernet.space.size}


def report(args: argparse.Namespace, results: dict, command: str) -> str:
    rows = results["rows"]
    med = lambda key: statistics.median(r[key] for r in rows)
    lines = [
        BEGIN,
        "## MathNAS dynamic network: solve time and switch time on this CPU",
        "",
        f"- Date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}",
        f"- Machine: {platform.processor() or platform.machine()} ({platform.platform()}), {os.cpu_count()} CPUs visible, "
        f"torch {torch.__version__}, 1 thread",
        f"- Command: `{command}`",
        f"- Supernet: `mobilenet_supernet(stages={STAGES}, expand_ratios=(3, 4, 6), kernel_sizes=(3, 5, 7), head_channels=256)` "
        f"({results['space']:.2e} archs; {results['blocks']} block positions × 9 configs) at {args.image_size}×{args.image_size}; "
        f"FLOPs and latency tables measured here in {results['profile_seconds']:.0f} s; synthetic accuracy model (timing only).",
        f"- Held: 5 Pareto configs per block position = {results['held']} exported block modules, {results['networks']:.2e} networks; "
        f"building the dynamic network took {results['build_seconds']:.1f} s (initial solve {1e3 * results['initial_solve']:.0f} ms).",
        f"- {len(rows)} budget changes cycling through latency targets at 30–90 % of the held networks' range; after every switch "
        f"the running network equals `supernet.export(arch)` on one input: {'yes' if all(r['same'] for r in rows) else 'NO'}; "
        f"Charnes–Cooper reaches the same optimum: {'yes' if all(r['agree'] for r in rows) else 'NO'}.",
        "",
        "| target (ms) | predicted latency (ms) | solve, Dinkelbach (ms) | iterations | solve, Charnes–Cooper (ms) | switch (ms) | blocks changed | full export instead (ms) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['target']:.3f} | {r['latency']:.3f} | {1e3 * r['solve']:.1f} | {r['iterations']} | "
                     f"{1e3 * r['cc']:.1f}{'' if r['cc_status'] == 'optimal' else ' [' + r['cc_status'] + ']'} | "
                     f"{1e3 * r['switch']:.3f} | {r['changed']} | {1e3 * r['export']:.1f} |")
    solve, switch = med("solve"), med("switch")
    lines += [
        "",
        f"Medians: solve {1e3 * solve:.0f} ms (Dinkelbach; Charnes–Cooper {1e3 * med('cc'):.0f} ms), switch {1e3 * switch:.2f} ms, "
        f"full export {1e3 * med('export'):.0f} ms. Paper (TX2 GPU): solve {PAPER_SOLVE} s, switch {1e3 * PAPER_SWITCH:.0f} ms — "
        f"solve {'met' if solve <= PAPER_SOLVE else 'MISSED'}, switch {'met' if switch <= PAPER_SWITCH else 'MISSED'} on this CPU. "
        "The held blocks are exported once, up front, so a switch only re-links modules; the full export column is what a "
        "switch costs when the new subnet is built from the supernet's weights instead.",
        END,
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--switches", type=int, default=12)
    parser.add_argument("--profile-repeats", type=int, default=30, help="timed calls per block configuration")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "RESULTS.md")
    parser.add_argument("--no-write", action="store_true", help="print the section without writing --out")
    args = parser.parse_args(argv)
    if min(args.image_size, args.switches, args.profile_repeats) < 1:
        parser.error("--image-size, --switches and --profile-repeats must be positive")
    publish("mathnas_dynamic.py", argv, args.out, not args.no_write, lambda command: report(args, run(args), command), BEGIN, END)


if __name__ == "__main__":
    main()
