"""DARTS, DrNAS and DARTS+PT on the NB201 cell space, offline on a CPU (scikit-learn digits).

Per seed:

* one DARTS search fit (first order, :class:`DartsSearch`): ``--search-epochs`` epochs, after which
  magnitude selection gives the **DARTS** cell; the same fit then continues as the DARTS-PT tuning
  phase (:class:`PerturbationSelection`, one decision every ``--pt-interval`` epochs, α and weights
  still training), giving the **DARTS+PT** cell from the same supernet, as in the thesis;
* one DrNAS search fit (:class:`DrNASSearch`, L2 anchor, the same α lr): ``--drnas-start-epoch`` epochs of
  weights only (DrNAS's warm-up), then ``--search-epochs`` epochs with α steps, argmax of
  the Dirichlet mean (**DrNAS** cell).

Each found cell is retrained from scratch briefly (``--retrain-epochs``) as a plain exported
network and tested on a held-out split; it is also looked up by its NB201 string in the
NAS-Bench-201 CIFAR-10 table (``--nb201-table``), whose 200-epoch test accuracy is what the
literature quotes. The fraction of skip connections in the cell is the collapse indicator the
thesis studies.

The search cost is the median epoch time of a search epoch (α step + weight step) over a plain
epoch of the same relaxed supernet (weight step only), interleaved in rounds in one process.

Data: digits (1,797 8×8 images upsampled to ``--image-size``, 1 channel), split 40 % weights /
40 % α (the held-out split, also PT's) / 20 % test. Network: ``nb201_supernet`` with
``--channels`` channels and ``--cells`` cells per stage (NB201: 16 and 5).

Usage::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/darts_nb201.py      # ~5 min on 1 core; rewrites its section of RESULTS.md
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/darts_nb201.py --trace drnas --search-epochs 30   # α trajectory, CSV
"""

from __future__ import annotations

import argparse
import csv
import datetime
import os
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn
from torch.utils.data import ConcatDataset, DataLoader

from results_file import write_section  # benchmarks/ is the script's directory
from lightning_nas.callbacks.darts import DartsSearch, DrNASSearch
from lightning_nas.callbacks.selection import PerturbationSelection
from lightning_nas.data import digits_dataset, split_dataset, to_tensors
from lightning_nas.differentiable.diagnostics import skip_gap
from lightning_nas.spaces.nb201 import NB201_LABELS, NB201_OPS, nb201_string, nb201_supernet

BEGIN, END = "<!-- benchmarks/darts_nb201.py: begin -->", "<!-- benchmarks/darts_nb201.py: end -->"
# Literature values on NB201 CIFAR-10 test accuracy (DrNAS's public README; NB201 optimum; the thesis shows DARTS-PT only as a plot).
CLAIMS = {"DARTS": "54.30 (collapses to skip connections)", "DrNAS": "94.36", "DARTS+PT": "plot only (Fig. 3.1: stays near the optimum)"}
NB201_OPTIMUM = 94.37


class Classifier(pl.LightningModule):
    """The user's own module: cross entropy, SGD with cosine decay, validation accuracy."""

    def __init__(self, net: nn.Module, lr: float, epochs: int) -> None:
        super().__init__()
        self.net, self.lr, self.epochs = net, lr, epochs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("val_acc", (self(x).argmax(-1) == y).float().mean())

    def configure_optimizers(self):
        optimizer = torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9, weight_decay=3e-4)
        return [optimizer], [torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(1, self.epochs), eta_min=1e-3)]


class EpochTimer(pl.Callback):
    """Wall time of every training epoch (seconds)."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.times.append(time.perf_counter() - self._start)


class SnapshotSelection(pl.Callback):
    """Magnitude selection of ``search`` at the end of epoch ``epoch`` (the DARTS result before PT starts)."""

    def __init__(self, search: DartsSearch, epoch: int) -> None:
        self.search, self.epoch, self.arch = search, epoch, None

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if trainer.current_epoch == self.epoch:
            self.arch = self.search.select()


def trainer(epochs: int, callbacks: list[pl.Callback]) -> pl.Trainer:
    return pl.Trainer(
        max_epochs=epochs, callbacks=callbacks, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0,
    )


def supernet(args: argparse.Namespace, seed: int, affine: bool = False):
    torch.manual_seed(seed)
    return nb201_supernet(channels=args.channels, cells_per_stage=args.cells, num_classes=10, in_chans=1, affine=affine)


def search_darts_pt(args, seed, splits) -> dict[str, Any]:
    train, arch, test = splits
    model = Classifier(supernet(args, seed), args.lr, args.search_epochs)
    search = DartsSearch(arch, batch_size=args.batch_size, lr=args.alpha_lr, seed=seed, monitor="val_acc", log_alpha=False)
    pt = PerturbationSelection(search, arch, interval=args.pt_interval, start_epoch=args.search_epochs, batch_size=256, seed=seed)
    snapshot = SnapshotSelection(search, args.search_epochs - 1)
    pl.seed_everything(seed, workers=True, verbose=False)
    epochs = args.search_epochs + pt.epochs_needed(model.net)
    start = time.perf_counter()
    trainer(epochs, [search, pt, snapshot]).fit(
        model, DataLoader(train, batch_size=args.batch_size, shuffle=True), DataLoader(test, batch_size=512)
    )
    total = time.perf_counter() - start
    return {"DARTS": (snapshot.arch, search.history[args.search_epochs - 1]["weights"]), "DARTS+PT": (pt.arch, None), "seconds": total}


def search_drnas(args, seed, splits, method: type[DartsSearch] = DrNASSearch) -> dict[str, Any]:
    """``--drnas-start-epoch`` warm-up epochs of weights only, then ``--search-epochs`` epochs with α steps."""
    train, arch, test = splits
    epochs = args.drnas_start_epoch + args.search_epochs
    model = Classifier(supernet(args, seed), args.lr, epochs)
    search = method(
        arch, batch_size=args.batch_size, lr=args.alpha_lr, start_epoch=args.drnas_start_epoch, seed=seed, monitor="val_acc",
        log_alpha=False,
    )
    pl.seed_everything(seed, workers=True, verbose=False)
    trainer(epochs, [search]).fit(
        model, DataLoader(train, batch_size=args.batch_size, shuffle=True), DataLoader(test, batch_size=512)
    )
    return {"DrNAS": (search.select(), search.history[-1]["weights"]), "history": search.history}


def trace(args, splits, table) -> None:
    """``--trace``: per epoch, each op's mixing weight averaged over the 6 edges and the magnitude-selected cell
    (its NB201 CIFAR-10 test accuracy), for DrNAS or DARTS alone; printed as CSV, RESULTS.md untouched."""
    method = {"drnas": DrNASSearch, "darts": DartsSearch}[args.trace]
    print("method,seed,epoch,supernet_val_acc," + ",".join(NB201_OPS) + ",peak,cell,nb201_c10_test", flush=True)
    for seed in args.seeds:
        for entry in search_drnas(args, seed, splits, method)["history"]:
            weights = entry["weights"]
            mean = [statistics.mean(w[op] for w in weights.values()) for op in NB201_OPS]
            peak = statistics.mean(max(w.values()) for w in weights.values())
            cell = nb201_string({label: max((o for o in w if o != "none"), key=w.get) for label, w in weights.items()})
            nb = table.get(cell, {}).get("c10_test_200", "")
            print(f"{args.trace},{seed},{entry['epoch']},{entry['metric']:.3f}," + ",".join(f"{m:.4f}" for m in mean)
                  + f",{peak:.4f},{cell},{nb}", flush=True)


def retrain(args, seed, arch, splits) -> float:
    """Test accuracy of the cell retrained from scratch as a plain network (affine BatchNorm)."""
    train, held_out, test = splits
    net = supernet(args, 1000 + seed, affine=True).export(arch)
    model = Classifier(net, args.lr, args.retrain_epochs)
    pl.seed_everything(seed, workers=True, verbose=False)
    trainer(args.retrain_epochs, []).fit(model, DataLoader(ConcatDataset([train, held_out]), batch_size=args.batch_size, shuffle=True))
    model.eval()
    x, y = test.tensors
    with torch.no_grad():
        return float((model(x).argmax(-1) == y).float().mean())


def search_cost(args, splits) -> dict[str, list[float]]:
    """Epoch times, interleaved per round: plain (weights only), first-order and second-order search."""
    train, arch, _ = splits
    times: dict[str, list[float]] = {"plain": [], "first order": [], "second order": []}
    for _ in range(args.timing_rounds):
        for name in times:
            model = Classifier(supernet(args, 0), args.lr, args.timing_epochs)
            timer = EpochTimer()
            callbacks: list[pl.Callback] = [timer]
            if name == "plain":
                DartsSearch(arch).make_relaxation(model.net).install()  # the same mixed supernet, α fixed
            else:
                callbacks.insert(0, DartsSearch(arch, batch_size=args.batch_size, order=1 if name == "first order" else 2, log_alpha=False))
            trainer(args.timing_epochs, callbacks).fit(model, DataLoader(train, batch_size=args.batch_size, shuffle=True))
            times[name] += timer.times[1:]  # the first epoch warms up
    return times


def nb201_table(path: Path) -> dict[str, dict[str, str]]:
    with path.open() as f:
        return {row["arch_str"]: row for row in csv.DictReader(f)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--search-epochs", type=int, default=10)
    parser.add_argument("--pt-interval", type=int, default=2)
    parser.add_argument("--retrain-epochs", type=int, default=8)
    parser.add_argument("--channels", type=int, default=8)
    parser.add_argument("--cells", type=int, default=1)
    parser.add_argument("--image-size", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=0.025)
    parser.add_argument("--alpha-lr", type=float, default=3e-3)
    parser.add_argument("--timing-rounds", type=int, default=2)
    parser.add_argument("--timing-epochs", type=int, default=3)
    parser.add_argument("--nb201-table", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/nb201/nb201_cifar10.csv")
    parser.add_argument("--results", type=Path, default=Path(__file__).with_name("RESULTS.md"))
    parser.add_argument("--trace", choices=["drnas", "darts"], help="only trace this method's mixing weights per epoch (CSV on stdout)")
    parser.add_argument(
        "--drnas-start-epoch", type=int, default=10,
        help="DrNAS trains the weights alone this many epochs before its --search-epochs of α steps (DrNAS's DARTS-space warm-up)",
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.trace:
        ds, _ = to_tensors(digits_dataset(), args.image_size, channels=1)
        trace(args, split_dataset(ds, (0.4, 0.4, 0.2), seed=0), nb201_table(args.nb201_table))
        return
    if not args.nb201_table.exists():
        parser.error(f"--nb201-table {args.nb201_table} does not exist")
    command = "OMP_NUM_THREADS=1 .venv/bin/python " + shlex.join(["benchmarks/darts_nb201.py", *sys.argv[1:]])
    started = time.perf_counter()

    ds, _ = to_tensors(digits_dataset(), args.image_size, channels=1)
    splits = split_dataset(ds, (0.4, 0.4, 0.2), seed=0)
    table = nb201_table(args.nb201_table)

    rows = []
    for seed in args.seeds:
        found = {**search_darts_pt(args, seed, splits), **search_drnas(args, seed, splits)}
        for method in ("DARTS", "DrNAS", "DARTS+PT"):
            arch, weights = found[method]
            text = nb201_string(arch)
            skips = sum(arch[label] == "skip_connect" for label in NB201_LABELS) / len(NB201_LABELS)
            accuracy = retrain(args, seed, arch, splits)
            entry = table.get(text)
            diagnostics = None if weights is None else (
                skip_gap(weights), skip_gap(weights, skip="avg_pool_3x3"), statistics.mean(max(w.values()) for w in weights.values())
            )
            rows.append({"method": method, "seed": seed, "arch": text, "skip": skips, "diag": diagnostics, "acc": accuracy,
                         "nb201": float(entry["c10_test_200"]) if entry else None})
            print(f"seed {seed} {method:9s} {text} skip {skips:.2f} retrained {accuracy:.3f} NB201 {rows[-1]['nb201']}", flush=True)
    times = search_cost(args, splits)
    medians = {k: statistics.median(v) for k, v in times.items()}
    print({k: round(v, 3) for k, v in medians.items()}, flush=True)

    lines = [
        BEGIN,
        "## DARTS, DrNAS and DARTS+PT on the NB201 cell space (digits, CPU)",
        "",
        f"- Date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}",
        f"- Machine: {platform.processor() or platform.machine()} ({platform.platform()}), {os.cpu_count()} CPUs visible "
        f"(shared with other engineers), torch {torch.__version__}, 1 torch thread; total {time.perf_counter() - started:.0f} s",
        f"- Command: `{command}`",
        f"- Data: digits {args.image_size}×{args.image_size}×1, 40 % weights / 40 % α (and PT) / 20 % test. Supernet: "
        f"`nb201_supernet(channels={args.channels}, cells_per_stage={args.cells})` (NB201: 16, 5). Weights: SGD lr {args.lr}, "
        f"momentum 0.9, wd 3e-4, cosine; α: Adam lr {args.alpha_lr} (DARTS's 3e-4 barely moves α in this few steps), betas (0.5, 0.999).",
        f"- DARTS: first order, {args.search_epochs} epochs, magnitude selection (argmax α without `none`). DARTS+PT: the same fit "
        f"continued with PT (one edge every {args.pt_interval} epochs, 6 edges). DrNAS: L2 anchor 1e-3 (DrNAS's default), the same α lr, "
        f"{args.drnas_start_epoch} warm-up epochs of weights only (DrNAS's DARTS-space recipe starts α at epoch 10), then "
        f"{args.search_epochs} epochs with α steps (as many α steps as DARTS). "
        f"Found cells retrained from scratch {args.retrain_epochs} epochs on weights+α splits, tested on the test split.",
        "- NB201 column: the found cell's tabulated CIFAR-10 test accuracy (200 epochs, `c10_test_200` of `nb201_cifar10.csv`). "
        f"The table's optimum is {NB201_OPTIMUM}. At the end of the search (mixing weights: softmax α, Dirichlet mean for DrNAS): "
        "skip gap = mean(w_skip − mean w_conv) (thesis Fig. 2.3), pool gap = the same for `avg_pool_3x3`, peak = mean over "
        "edges of the largest weight (0.20 is uniform over the 5 ops: how far α moved from its prior).",
        "",
        "| method | seed | found cell (NB201 string) | skip fraction | skip gap | pool gap | peak | retrained test acc (digits) | NB201 CIFAR-10 test acc |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        diag = " | | " if r["diag"] is None else "{:+.3f} | {:+.3f} | {:.3f}".format(*r["diag"])
        nb = "not in table" if r["nb201"] is None else f"{r['nb201']:.2f}"
        lines.append(f"| {r['method']} | {r['seed']} | `{r['arch']}` | {r['skip']:.2f} | {diag} | {r['acc']:.3f} | {nb} |")
    lines += ["", "| method | mean skip fraction | mean retrained acc (digits) | mean NB201 CIFAR-10 test acc | claimed NB201 CIFAR-10 test acc |",
              "|---|---:|---:|---:|---|"]
    for method in ("DARTS", "DrNAS", "DARTS+PT"):
        these = [r for r in rows if r["method"] == method]
        nb = [r["nb201"] for r in these if r["nb201"] is not None]
        lines.append(
            f"| {method} | {statistics.mean(r['skip'] for r in these):.2f} | {statistics.mean(r['acc'] for r in these):.3f} | "
            f"{statistics.mean(nb):.2f} | {CLAIMS[method]} |"
        )
    lines += [
        "",
        f"Search cost: median epoch time over {args.timing_rounds} interleaved rounds × {args.timing_epochs - 1} epochs "
        "(first epoch of each fit dropped); plain = the same relaxed supernet trained by the user's step only.",
        "",
        "| epoch | median (s) | ratio to plain |",
        "|---|---:|---:|",
    ]
    for name, value in medians.items():
        lines.append(f"| {name} | {value:.2f} | {value / medians['plain']:.2f} |")
    lines.append(END)
    write_section(args.results, "\n".join(lines) + "\n", BEGIN, END)
    print(f"wrote {args.results}")


if __name__ == "__main__":
    main()
