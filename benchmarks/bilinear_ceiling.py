"""How bilinear is the supernet's one-shot accuracy? The ceiling of any BINAS-style estimator (CPU).

The estimator benchmark (``estimator_quality.py``) ranks subnets by a bilinear accuracy model and
compares with their one-shot top-1 measured on a held-out split. No bilinear model can rank better
than the accuracies allow, so this script measures that ceiling on the same supernet recipe: it
trains the supernet exactly as ``estimator_quality.py`` does (same arguments, same seed, same
weights), then measures ``--subnets`` test and ``--fit-subnets`` fit subnets on a fresh held-out set
cut into disjoint chunks, and reports per split size ``m``:

* **bilinear least squares, fit on the fit subnets, τ against the test subnets**: the best the
  bilinear model does when it is given the measured accuracies themselves; one value per disjoint
  split of ``m`` images (mean and range);
* **τ between two disjoint splits**: how well the ground truth on ``m`` images agrees with itself.

Usage::

    .venv/bin/python benchmarks/bilinear_ceiling.py           # defaults; rewrites its section of RESULTS.md
"""

from __future__ import annotations

import argparse
import datetime
import time

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset

from estimator_quality import SUPERNETS, add_recipe_arguments, ranked_subnets, task_data, train_supernet  # benchmarks/ is the script's directory
from results_file import device_title, machine, marker_suffix, publish
from lightning_nas.data import gratings_dataset
from lightning_nas.estimators import BilinearRegression, measure_subnet_accuracies, rank_correlations
from lightning_nas.spaces.staged import StagedSpace

def markers(device: str = "cpu") -> tuple[str, str]:
    name = "benchmarks/bilinear_ceiling.py" + marker_suffix(device)
    return f"<!-- {name}: begin -->", f"<!-- {name}: end -->"


def run(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    supernet, _, train_seconds = train_supernet(args)
    staged = StagedSpace.of(supernet)
    # The estimator benchmark's test and fit subnets; a held-out set it never saw (seed + 101).
    test, fit = ranked_subnets(supernet.space, args)
    held_out = gratings_dataset(args.chunk * args.chunks, seed=args.seed + 101, **task_data(args))
    started = time.perf_counter()
    chunks = np.stack([  # (chunks, subnets) top-1 per disjoint chunk
        measure_subnet_accuracies(supernet, test + fit, DataLoader(Subset(held_out, range(c * args.chunk, (c + 1) * args.chunk)), batch_size=args.eval_batch_size))
        for c in range(args.chunks)
    ])
    measure_seconds = time.perf_counter() - started
    rows = []
    size = 1
    while size <= args.chunks:
        splits = chunks[: args.chunks // size * size].reshape(args.chunks // size, size, -1).mean(1)  # equal-size chunks
        taus = []
        for acc in splits:
            model = BilinearRegression(staged)
            model.fit(fit, acc[args.subnets :])
            taus.append(rank_correlations(model.predict_many(test), acc[: args.subnets])["kendall_tau"])
        agreement = rank_correlations(splits[0, : args.subnets], splits[1, : args.subnets])["kendall_tau"] if len(splits) > 1 else None
        rows.append({"images": size * args.chunk, "splits": len(splits), "taus": taus, "agreement": agreement,
                     "std": float(splits[:, : args.subnets].std(1).mean())})
        size *= 2
    return {"train_seconds": train_seconds, "measure_seconds": measure_seconds, "rows": rows,
            "truth": chunks[:, : args.subnets].mean(0)}


def report(args: argparse.Namespace, results: dict, command: str) -> str:
    truth = results["truth"]
    begin, end = markers(args.device)
    lines = [
        begin,
        f"## How bilinear is the one-shot accuracy? The ceiling of any bilinear estimator ({device_title(args.device)})",
        "",
        f"- Date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}",
        f"- Machine: {machine(args.device, args.threads)}",
        f"- Command: `{command}`",
        f"- Supernet: `{SUPERNETS[args.space][0].format(classes=args.classes)}`, trained as `estimator_quality.py` trains it "
        f"with the same arguments ({args.epochs} epochs on {args.train} gratings images, {args.classes} classes, noise {args.noise}, "
        f"{'in-place distillation' if args.distill else 'no distillation'}, seed {args.seed}): {results['train_seconds']:.0f} s",
        f"- Measured: the estimator benchmark's {args.subnets} test and {args.fit_subnets} fit subnets on {args.chunks} disjoint chunks of "
        f"{args.chunk} new held-out images ({results['measure_seconds']:.0f} s); test subnets on all of them: mean {truth.mean():.3f}, "
        f"std {truth.std():.3f}",
        "",
        "| held-out images | disjoint splits | bilinear least squares τ: mean | min–max | τ between two splits | truth std |",
        "|---:|---:|---:|---|---:|---:|",
    ]
    for row in results["rows"]:
        taus = row["taus"]
        agreement = "—" if row["agreement"] is None else f"{row['agreement']:.3f}"
        lines.append(f"| {row['images']} | {row['splits']} | {np.mean(taus):.3f} | {min(taus):.3f}–{max(taus):.3f} | "
                     f"{agreement} | {row['std']:.4f} |")
    lines.append(end)
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_recipe_arguments(parser)
    parser.add_argument("--chunk", type=int, default=2048, help="held-out images per chunk (the smallest split)")
    parser.add_argument("--chunks", type=int, default=8, help="disjoint chunks; splits of 1, 2, 4, ... chunks are compared")
    args = parser.parse_args(argv)
    if min(args.epochs, args.train, args.subnets, args.fit_subnets, args.chunk, args.chunks, args.threads) < 1:
        parser.error("--epochs, --train, --subnets, --fit-subnets, --chunk, --chunks and --threads must be positive")
    publish("bilinear_ceiling.py", argv, args.out, not args.no_write, lambda command: report(args, run(args), command), *markers(args.device))


if __name__ == "__main__":
    main()
