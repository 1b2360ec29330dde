"""MathNAS block performance on the demo's BINAS supernet, next to BINAS's bilinear estimator (CPU).

The demo's set-up: ``binas_supernet("tiny")`` (3 stages × 4 blocks × 12 configs, depths {2, 3, 4})
trained on scikit-learn's digits (32×32, split 60/20/20 as in the demo) with one uniformly sampled
subnet per example. Ground truth: the measured one-shot accuracy of ``--subnets`` uniformly sampled
subnets on the held-out split. Predictors of that accuracy, all estimated on the same split:

* MathNAS Algorithm 1 (one host ``N^avg``, every block config and depth switched in: 153 subnet
  evaluations), with the Eq. 5 FLOPs-reciprocal law and the plain additive one;
* MathNAS Eq. 3 over ``--hosts`` random hosts;
* BINAS's one-pass bilinear estimator after ``--binas-passes`` passes (the demo's estimator).

Cost is counted in *data passes*: one pass = every held-out example through the supernet once
(one subnet evaluation of MathNAS is one pass). Reported: Kendall τ and Spearman ρ.

Usage::

    .venv/bin/python benchmarks/mathnas_binas.py            # rewrites its section of RESULTS.md
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader

from results_file import publish  # benchmarks/ is the script's directory
from supernet_training import train_per_example
from lightning_nas.data import load_image_dataset, split_dataset, to_tensors
from lightning_nas.estimators import estimate_contributions, measure_subnet_accuracies, rank_correlations
from lightning_nas.estimators.block_performance import (
    estimate_block_performance,
    estimate_block_performance_sampled,
    supernet_evaluator,
)
from lightning_nas.profiling.tables import build_flops_table
from lightning_nas.seeding import derive_seed
from lightning_nas.spaces import binas_supernet
from lightning_nas.spaces.staged import StagedSpace

BEGIN, END = "<!-- benchmarks/mathnas_binas.py: begin -->", "<!-- benchmarks/mathnas_binas.py: end -->"


def train(args: argparse.Namespace, loader: DataLoader, num_classes: int) -> tuple[nn.Module, float]:
    """Per-example uniform sampling (what ``UniformSampling(per_sample=True)`` does in a Trainer), SGD, cosine."""
    torch.manual_seed(args.seed)
    supernet = binas_supernet("tiny", num_classes=num_classes)
    seconds = train_per_example(supernet, loader, epochs=args.epochs, lr=0.1, seed=args.seed)
    return supernet.eval(), seconds


def run(args: argparse.Namespace) -> dict:
    torch.set_num_threads(1)
    tensors, num_classes = to_tensors(load_image_dataset("digits"), 32, channels=3)
    train_set, held_set, _ = split_dataset(tensors, (0.6, 0.2, 0.2), seed=args.seed)
    loader = DataLoader(train_set, batch_size=64, shuffle=True, generator=torch.Generator().manual_seed(args.seed))
    held_out = DataLoader(held_set, batch_size=256)
    supernet, train_seconds = train(args, loader, num_classes)
    staged = StagedSpace.of(supernet)
    archs = supernet.space.sample_many(args.subnets, seed=derive_seed(args.seed, 1))
    started = time.perf_counter()
    measured = measure_subnet_accuracies(supernet, archs, held_out)
    measure_seconds = time.perf_counter() - started

    flops = build_flops_table(supernet, (3, 32, 32))
    evaluate = supernet_evaluator(supernet, held_out)
    rows = []
    for name, make in (
        ("MathNAS Algorithm 1", lambda: estimate_block_performance(evaluate, staged, flops)),
        (f"MathNAS Eq. 3, {args.hosts} random hosts", lambda: estimate_block_performance_sampled(evaluate, staged, flops, num_hosts=args.hosts, seed=args.seed)),
    ):
        started = time.perf_counter()
        perf = make()
        seconds = time.perf_counter() - started
        for law in ("reciprocal", "additive"):
            r = rank_correlations(perf.predictor(law=law).predict_many(archs), measured)
            rows.append({"estimator": name, "law": "Eq. 5 (FLOPs-reciprocal)" if law == "reciprocal" else "additive",
                         "passes": perf.evaluations, "seconds": seconds, **r})
        print(rows[-2:], flush=True)
    for passes in args.binas_passes:
        started = time.perf_counter()
        table = estimate_contributions(supernet, held_out, method="one_pass", passes=passes, seed=derive_seed(args.seed, 3), staged=staged)
        seconds = time.perf_counter() - started
        rows.append({"estimator": "BINAS one-pass bilinear", "law": "bilinear (BINAS Eq. 3)", "passes": passes, "seconds": seconds,
                     **rank_correlations(table.predict_many(archs), measured)})
        print(rows[-1], flush=True)
    return {"rows": rows, "train_seconds": train_seconds, "measure_seconds": measure_seconds, "measured": measured,
            "held_out": len(held_set), "train": len(train_set), "space": supernet.space.size}


def report(args: argparse.Namespace, results: dict, command: str) -> str:
    m = results["measured"]
    lines = [
        BEGIN,
        "## MathNAS block performance vs BINAS's bilinear estimator on the demo supernet (CPU)",
        "",
        f"- Date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}",
        f"- Machine: {platform.processor() or platform.machine()} ({platform.platform()}), {os.cpu_count()} CPUs visible, "
        f"torch {torch.__version__}, 1 thread",
        f"- Command: `{command}`",
        f"- Supernet: `binas_supernet(\"tiny\")` ({results['space']:.2e} archs) trained {args.epochs} epochs on {results['train']} digits "
        f"images (32×32) with one uniform subnet per example: {results['train_seconds']:.0f} s",
        f"- Ground truth: one-shot top-1 of {args.subnets} uniformly sampled subnets on the held-out split ({results['held_out']} images, "
        f"the estimators' split too): mean {m.mean():.3f}, std {m.std():.3f}, range {m.min():.3f}–{m.max():.3f} "
        f"(measured in {results['measure_seconds']:.0f} s)",
        "",
        "| estimator | predictor | data passes | time (s) | Kendall τ | Spearman ρ |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for r in results["rows"]:
        lines.append(f"| {r['estimator']} | {r['law']} | {r['passes']} | {r['seconds']:.1f} | {r['kendall_tau']:.3f} | {r['spearman_rho']:.3f} |")
    lines.append(END)
    return "\n".join(lines) + "\n"


def parse_ints(text: str) -> list[int]:
    values = sorted({int(v) for v in text.split(",") if v.strip()})
    if not values or values[0] < 1:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive ints, got {text!r}")
    return values


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--subnets", type=int, default=60, help="uniformly sampled subnets ranked (ground truth)")
    parser.add_argument("--hosts", type=int, default=2, help="random hosts of the Eq. 3 estimator")
    parser.add_argument("--binas-passes", type=parse_ints, default=parse_ints("20,100"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "RESULTS.md")
    parser.add_argument("--no-write", action="store_true", help="print the section without writing --out")
    args = parser.parse_args(argv)
    if min(args.epochs, args.subnets, args.hosts) < 1:
        parser.error("--epochs, --subnets and --hosts must be positive")
    publish("mathnas_binas.py", argv, args.out, not args.no_write, lambda command: report(args, run(args), command), BEGIN, END)


if __name__ == "__main__":
    main()
