"""Ranking quality of the bilinear accuracy estimator: one-pass vs BINAS's paper protocol (CPU or GPU).

A small MobileNet-like supernet is trained with per-example uniform sampling and in-place
distillation from the largest subnet (BINAS's recipe; ``--no-distill`` trains on the labels only) on
the synthetic gratings task. Its one-shot accuracy is then *measured* for ``--subnets`` uniformly
sampled subnets on the held-out split (each subnet runs the whole split: the ground truth), and
predicted by accuracy tables estimated on the same split:

* **one-pass**: every conditional from one stream of per-example records, after 1, 2, ... passes;
  also with empirical-Bayes shrinkage of the gains (``shrinkage="empirical_bayes"``, same records),
  paired (each record centred on its example's other passes), and paired with the records scored by
  margin-smoothed top-1 (``SmoothedTop1(--smoothing-temperature)``, same draws as paired);
* **one-pass, log-error fit** (``fit="log_error"``): the same records as the paired rows fit as a
  multiplicative-error model with a difficulty per example; and with ``allocation="adaptive"``
  (the same budget of forward passes, spent on the examples whose first two outcomes vary);
* **paper protocol**: one dedicated evaluation per conditional (43 for this space), after 1, 2, ...
  passes per conditional (BINAS: 10);
* **regression baselines** (BINAS §5.2): bilinear least squares and ridge quadratic regression
  fit on ``--fit-subnets`` other measured subnets (one held-out pass each).

For each, Kendall τ and Spearman ρ against the measured accuracies, and for the estimators BINAS
Table 2's ablations (``q_β ≡ 0``, ``Q_αβ ≡ 0``). Cost is counted in passes over the held-out data
(a pass = every held-out example through the supernet once). Passes of an estimator are
accumulated: pass ``p`` uses seed ``derive_seed(seed, p)``, and a row with ``P`` passes merges
passes ``0..P-1``.

Training is a plain PyTorch loop (SGD, cosine schedule, one uniformly sampled architecture per
example per step, seeds from ``derive_generator``), the same sampling ``UniformSampling(per_sample=True)``
performs inside a Trainer.

Usage::

    .venv/bin/python benchmarks/estimator_quality.py          # defaults; rewrites its section of RESULTS.md
    .venv/bin/python benchmarks/estimator_quality.py --space binas --epochs 15 --lr 0.05   # BINAS tiny preset
    python3 benchmarks/estimator_quality.py --device cuda --eval-batch-size 2048 ...   # on a GPU: its own section
"""

from __future__ import annotations

import argparse
import datetime
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from results_file import device_title, machine, marker_suffix, publish  # benchmarks/ is the script's directory
from supernet_training import train_per_example
from lightning_nas.estimators import (
    BilinearRegression,
    ContributionAccumulator,
    QuadraticRegression,
    SmoothedTop1,
    estimate_contributions,
    measure_subnet_accuracies,
    paper_protocol_conditionals,
    rank_correlations,
    table2_predictors,
)
from lightning_nas.seeding import derive_seed
from lightning_nas.spaces import binas_supernet, mobilenet_supernet
from lightning_nas.spaces.staged import StagedSpace

try:  # the gratings task lives in lightning_nas.data in newer trees, in lightning_nas.demo before
    from lightning_nas.data import gratings_dataset
except ImportError:  # pragma: no cover
    from lightning_nas.demo import gratings_dataset

SUPERNETS = {
    "mobilenet": ("mobilenet_supernet(num_classes={classes}, stem_channels=16, head_channels=64)",
                  lambda classes: mobilenet_supernet(num_classes=classes, stem_channels=16, head_channels=64)),
    "binas": ('binas_supernet(preset="tiny", num_classes={classes})', lambda classes: binas_supernet(preset="tiny", num_classes=classes)),
}


def markers(space: str, distill: bool = True, device: str = "cpu") -> tuple[str, str]:
    name = ("benchmarks/estimator_quality.py" + ("" if space == "mobilenet" else f" --space {space}") + ("" if distill else " --no-distill")
            + marker_suffix(device))
    return f"<!-- {name}: begin -->", f"<!-- {name}: end -->"


TARGET_TAU, TARGET_RATIO = 0.84, 1 / 20
# Rows by name: estimate_contributions options, and a seed key (rows with the same key draw the same
# architectures for the same example and pass: shrunk, smoothed or log-error fit vs plain).
RUNS = {
    "one_pass": {"seed_key": 3},
    "one_pass+empirical_bayes": {"shrinkage": "empirical_bayes", "seed_key": 3},
    "one_pass+paired": {"paired": True, "seed_key": 5},
    "one_pass+paired+empirical_bayes": {"paired": True, "shrinkage": "empirical_bayes", "seed_key": 5},
    "one_pass+paired+smoothed": {"paired": True, "score": "smoothed", "seed_key": 5},
    "one_pass+log_error": {"fit": "log_error", "seed_key": 5},
    "one_pass+log_error+adaptive": {"fit": "log_error", "allocation": "adaptive", "seed_key": 5},
    "paper": {"method": "paper", "seed_key": 4},
}
ESTIMATORS = tuple(RUNS)
LABELS = {"one_pass": "one-pass", "paper": "paper protocol", "one_pass+empirical_bayes": "one-pass, shrunk",
          "one_pass+paired": "one-pass, paired", "one_pass+paired+empirical_bayes": "one-pass, paired, shrunk",
          "one_pass+paired+smoothed": "one-pass, paired, smoothed top-1 (T={T:g})", "one_pass+log_error": "one-pass, log-error fit",
          "one_pass+log_error+adaptive": "one-pass, log-error fit, adaptive allocation"}
PAPER_PASSES = 10  # BINAS's paper protocol: 10 passes per conditional; the pass budget of the target is 1/20 of that


def parse_ints(text: str) -> list[int]:
    values = sorted({int(v) for v in text.split(",") if v.strip()})
    if not values or values[0] < 1:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive ints, got {text!r}")
    return values


def add_recipe_arguments(parser: argparse.ArgumentParser) -> None:
    """The supernet, task and subnet-sample arguments :func:`train_supernet` and :func:`run` read (also
    ``bilinear_ceiling.py``'s, so that the same arguments give the same supernet and subnets)."""
    parser.add_argument("--space", choices=sorted(SUPERNETS), default="mobilenet")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--distill", action=argparse.BooleanOptionalAction, default=True,
                        help="in-place distillation from the largest subnet while training the supernet (BINAS's recipe)")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--train", type=int, default=8192, help="training images")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--classes", type=int, default=32)
    parser.add_argument("--noise", type=float, default=2.0)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--subnets", type=int, default=200, help="held-out subnets ranked (ground truth)")
    parser.add_argument("--fit-subnets", type=int, default=200, help="measured subnets the regression baselines are fit on")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    parser.add_argument("--device", default="cpu", help="where the supernet trains and runs: cpu, cuda or cuda:N")
    parser.add_argument("--eval-batch-size", type=int, default=256, help="held-out images per forward pass")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "RESULTS.md")
    parser.add_argument("--no-write", action="store_true", help="print the section without writing --out")


def task_data(args: argparse.Namespace) -> dict:
    """The gratings task's keyword arguments (``gratings_dataset(n, seed=..., **task_data(args))``)."""
    return {"num_classes": args.classes, "noise": args.noise, "image_size": args.image_size}


def train_supernet(args: argparse.Namespace) -> tuple[nn.Module, DataLoader, float]:
    """One uniform architecture per example (+ in-place distillation) on ``--train`` images; returns the
    supernet, its training loader and the seconds taken."""
    train = DataLoader(gratings_dataset(args.train, seed=args.seed, **task_data(args)), batch_size=args.batch_size, shuffle=True,
                       generator=torch.Generator().manual_seed(args.seed))
    torch.manual_seed(args.seed)
    supernet = SUPERNETS[args.space][1](args.classes).to(args.device)
    return supernet, train, train_per_example(supernet, train, epochs=args.epochs, lr=args.lr, seed=args.seed, distill=args.distill)


def ranked_subnets(space, args: argparse.Namespace) -> tuple[list[dict], list[dict]]:
    """The ``--subnets`` test subnets ranked and the ``--fit-subnets`` subnets regressions are fit on."""
    return space.sample_many(args.subnets, seed=derive_seed(args.seed, 1)), space.sample_many(args.fit_subnets, seed=derive_seed(args.seed, 2))


def accumulate(supernet, held_out, staged, method: str, checkpoints: list[int], seed: int, shrinkage: str = "none",
               paired: bool = False, score=None, fit: str = "means", allocation: str = "uniform") -> list[dict]:
    """Estimate pass by pass, merging; a table (and its cost) at each checkpoint.

    Paired estimates centre records across passes and the log-error fit uses every record of an
    example together, so for them each checkpoint (of at least 2 passes) is its own estimate with
    that many passes.
    """
    if paired or fit == "log_error":
        rows = []
        for passes in (p for p in checkpoints if p >= 2):
            started = time.perf_counter()
            table = estimate_contributions(supernet, held_out, method=method, passes=passes, seed=seed, staged=staged,
                                           shrinkage=shrinkage, paired=paired, score=score, fit=fit, allocation=allocation)
            rows.append({"passes": passes, "examples": table.metadata["examples"], "seconds": time.perf_counter() - started, "table": table})
        return rows
    running = ContributionAccumulator(staged, shrinkage=shrinkage).to(next(supernet.parameters()).device)
    rows, seconds = [], 0.0
    for p in range(max(checkpoints)):
        single = ContributionAccumulator(staged)
        started = time.perf_counter()
        estimate_contributions(supernet, held_out, method=method, passes=1, seed=derive_seed(seed, p), accumulator=single, staged=staged,
                               score=score)
        seconds += time.perf_counter() - started
        running.merge_state(single)
        if p + 1 in checkpoints:
            table = running.compute()
            rows.append({"passes": p + 1, "examples": table.metadata["examples"], "seconds": seconds, "table": table})
    return rows


def run(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    # Collated once and kept on the device: hundreds of passes would otherwise re-collate every batch.
    held_out = [(x.to(args.device), y.to(args.device))
                for x, y in DataLoader(gratings_dataset(args.held_out, seed=args.seed + 1, **task_data(args)), batch_size=args.eval_batch_size)]
    supernet, train, train_seconds = train_supernet(args)
    staged = StagedSpace.of(supernet)
    space = supernet.space

    test_archs, fit_archs = ranked_subnets(space, args)
    started = time.perf_counter()
    measured = measure_subnet_accuracies(supernet, test_archs + fit_archs, held_out)
    measure_seconds = time.perf_counter() - started
    test_acc, fit_acc = measured[: args.subnets], measured[args.subnets :]
    # Progress, so that a run stopped at a time limit still tells how far it got.
    print(f"trained in {train_seconds:.0f} s; {len(measured)} subnets measured in {measure_seconds:.0f} s: "
          f"test mean {test_acc.mean():.3f}, std {test_acc.std():.3f}", flush=True)

    results = {"train_seconds": train_seconds, "measure_seconds": measure_seconds, "test_acc": test_acc, "estimators": {}}
    conditionals = len(paper_protocol_conditionals(staged))
    smoothed = SmoothedTop1(args.smoothing_temperature)
    for key in (k for k in RUNS if k in args.estimators):
        options = dict(RUNS[key])
        seed, method = derive_seed(args.seed, options.pop("seed_key")), options.pop("method", "one_pass")
        if options.get("score") == "smoothed":
            options["score"] = smoothed
        checkpoints = args.paper_passes if method == "paper" else args.one_pass_passes
        rows = accumulate(supernet, held_out, staged, method, checkpoints, seed, **options)
        for row in rows:
            row["data_passes"] = row["passes"] * (conditionals if method == "paper" else 1)
            row["ranking"] = {name: rank_correlations(t.predict_many(test_archs), test_acc) for name, t in table2_predictors(row["table"]).items()}
        results["estimators"][key] = rows
        print(f"{key}: " + ", ".join(f"{row['data_passes']} passes τ {row['ranking']['full']['kendall_tau']:.3f} ({row['seconds']:.0f} s)"
                                     for row in rows), flush=True)
    baselines = {}
    for name, model in (("bilinear regression", BilinearRegression(staged)), ("quadratic regression", QuadraticRegression(staged, ridge=args.ridge))):
        model.fit(fit_archs, fit_acc)
        baselines[name] = rank_correlations(model.predict_many(test_archs), test_acc)
    # The same bilinear least squares on −log(error): how much more additive the errors are in that space.
    log_error = BilinearRegression(staged)
    log_error.fit(fit_archs, -np.log(np.clip(1 - fit_acc, 1e-6, None)))
    baselines["bilinear regression of −log(error)"] = rank_correlations(log_error.predict_many(test_archs), test_acc)
    depths = sorted({len(st.depths) for st in staged.stages})
    structure = (f"{staged.num_stages} stages × up to {staged.max_blocks} blocks × {staged.num_configs} configs, "
                 f"{'/'.join(map(str, depths))} depth options per stage")
    results.update(baselines=baselines, conditionals=conditionals, space_size=space.size, structure=structure)
    if args.calibration_batches:
        # The same subnets measured SPOS-style, BatchNorm recalibrated per subnet: how far the inherited
        # (architecture-mixture) statistics move each subnet's one-shot accuracy, and how additive the
        # recalibrated accuracies are (bilinear regression on recalibrated fit subnets).
        started = time.perf_counter()
        recal = measure_subnet_accuracies(supernet, test_archs + fit_archs, held_out, calibration_batches=train,
                                          num_calibration_batches=args.calibration_batches)
        test_recal, fit_recal = recal[: args.subnets], recal[args.subnets :]
        regression = BilinearRegression(staged)
        regression.fit(fit_archs, fit_recal)
        final = {key: rows[-1] for key, rows in results["estimators"].items()}
        results["recalibrated"] = {
            "seconds": time.perf_counter() - started,
            "acc": test_recal,
            "vs plain truth": rank_correlations(test_acc, test_recal),
            "bilinear regression": rank_correlations(regression.predict_many(test_archs), test_recal),
            **{f"{key} ({row['data_passes']} passes)": rank_correlations(row["table"].predict_many(test_archs), test_recal)
               for key, row in final.items()},
        }
    return results


def report(args: argparse.Namespace, results: dict, command: str) -> str:
    test_acc = results["test_acc"]
    conditionals = results["conditionals"]
    paper_ref = PAPER_PASSES * conditionals
    begin, end = markers(args.space, args.distill, args.device)
    lines = [
        begin,
        f"## Accuracy estimator: ranking quality, one-pass vs paper protocol ({device_title(args.device)})",
        "",
        f"- Date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}",
        f"- Machine: {machine(args.device, args.threads)}",
        f"- Command: `{command}`",
        f"- Supernet: `{SUPERNETS[args.space][0].format(classes=args.classes)}` ({results['space_size']:,} archs; "
        f"{results['structure']}), trained {args.epochs} epochs (lr {args.lr}) "
        f"on {args.train} gratings images ({args.image_size}×{args.image_size}, {args.classes} classes, noise {args.noise}) "
        f"with one uniform arch per example{', distilled in place from the largest subnet' if args.distill else ' (no distillation)'}: "
        f"{results['train_seconds']:.0f} s",
        f"- Ground truth: one-shot top-1 of {args.subnets} uniformly sampled subnets, each run on the whole held-out split "
        f"({args.held_out} images; the estimators use the same split): mean {test_acc.mean():.3f}, "
        f"std {test_acc.std():.3f}, range {test_acc.min():.3f}–{test_acc.max():.3f}",
        f"- Paper protocol: {conditionals} conditionals, each its own "
        f"passes; one-pass: all conditionals from the same records. A *data pass* = {args.held_out} forward passes of single examples.",
        "",
        "| estimator | passes per conditional | data passes | forward passes | est. time (s) | τ full | ρ full | τ q_β≡0 | τ Q≡0 |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for method, rows in results["estimators"].items():
        for row in rows:
            r = row["ranking"]
            per_cond = row["passes"] if method == "paper" else "—"
            label = LABELS[method].format(T=args.smoothing_temperature)
            lines.append(
                f"| {label} | {per_cond} | {row['data_passes']} | "
                f"{row['examples']:,} | {row['seconds']:.1f} | {r['full']['kendall_tau']:.3f} | {r['full']['spearman_rho']:.3f} | "
                f"{r['q_beta=0']['kendall_tau']:.3f} | {r['Q=0']['kendall_tau']:.3f} |"
            )
    for name, r in results["baselines"].items():
        lines.append(f"| {name} (fit on {args.fit_subnets} measured subnets) | — | {args.fit_subnets} | "
                     f"{args.fit_subnets * args.held_out:,} | — | {r['kendall_tau']:.3f} | {r['spearman_rho']:.3f} | — | — |")
    paper_best = max(results["estimators"].get("paper", []), key=lambda row: row["data_passes"], default=None)
    paper_tau = None if paper_best is None else paper_best["ranking"]["full"]["kendall_tau"]
    measured_paper = ("not run" if paper_best is None else f"measured here: τ {paper_tau:.3f} with {paper_best['data_passes']} passes")
    lines += ["", f"Targets, for each one-pass variant at ≤ 1/20 of the paper protocol's {paper_ref} data passes "
              f"({PAPER_PASSES} per conditional; {measured_paper}):", "",
              "| one-pass variant | data passes | τ | τ ≥ 0.84 | τ − paper protocol's | ≥ 0 |", "|---|---:|---:|---|---:|---|"]
    for key, rows in results["estimators"].items():
        budget = [row for row in rows if row["data_passes"] <= TARGET_RATIO * paper_ref]
        if not key.startswith("one_pass") or not budget:
            continue
        row = max(budget, key=lambda r: r["data_passes"])
        tau = row["ranking"]["full"]["kendall_tau"]
        versus = "— | —" if paper_tau is None else f"{tau - paper_tau:+.3f} | {'met' if tau >= paper_tau else 'MISSED'}"
        lines.append(f"| {LABELS[key].split(' top-1')[0]} | "
                     f"{row['data_passes']} | {tau:.3f} | {'met' if tau >= TARGET_TAU else 'MISSED'} | {versus} |")
    if "recalibrated" in results:
        recal = results["recalibrated"]
        lines += ["", f"Against one-shot accuracy with BatchNorm recalibrated per subnet ({args.calibration_batches} training batches; "
                  f"mean {recal['acc'].mean():.3f}, std {recal['acc'].std():.3f}; {recal['seconds']:.0f} s):", "",
                  "| compared with the recalibrated accuracy | τ | ρ |", "|---|---:|---:|"]
        for name, r in recal.items():
            if isinstance(r, dict):
                lines.append(f"| {name} | {r['kendall_tau']:.3f} | {r['spearman_rho']:.3f} |")
    lines.append(end)
    return "\n".join(lines) + "\n"



def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_recipe_arguments(parser)
    parser.add_argument("--held-out", type=int, default=4096, help="held-out images (estimation and ground truth)")
    parser.add_argument("--ridge", type=float, default=1e-2, help="ridge penalty of the quadratic baseline")
    parser.add_argument("--one-pass-passes", type=parse_ints, default=parse_ints("1,2,5,10,21"))
    parser.add_argument("--smoothing-temperature", type=float, default=0.25,
                        help="SmoothedTop1 temperature (logit units) of the smoothed one-pass rows")
    parser.add_argument("--paper-passes", type=parse_ints, default=parse_ints("1,2,5,10"))
    parser.add_argument("--estimators", type=lambda text: [v.strip() for v in text.split(",") if v.strip()], default=list(ESTIMATORS),
                        help=f"comma-separated estimator rows to run, of {', '.join(ESTIMATORS)}")
    parser.add_argument("--calibration-batches", type=int, default=8,
                        help="also measure the test subnets with BatchNorm recalibrated on this many training batches (0: skip)")
    args = parser.parse_args(argv)
    unknown = [name for name in args.estimators if name not in ESTIMATORS]
    if unknown or not args.estimators:
        parser.error(f"--estimators must list some of {', '.join(ESTIMATORS)}; got {unknown or 'none'}")
    if min(args.epochs, args.train, args.held_out, args.subnets, args.fit_subnets, args.threads, args.eval_batch_size) < 1:
        parser.error("--epochs, --train, --held-out, --subnets, --fit-subnets, --threads and --eval-batch-size must be positive")
    publish("estimator_quality.py", argv, args.out, not args.no_write, lambda command: report(args, run(args), command),
            *markers(args.space, args.distill, args.device))


if __name__ == "__main__":
    main()
