"""The BINAS demo, end to end: train → estimate → profile → solve → export → fine-tune → report.

``lightning-nas demo`` trains a small BINAS supernet on scikit-learn's handwritten digits
(upsampled to 32×32, shipped inside the package, so it runs offline) with one uniformly sampled
subnet per image, distilled in place from the largest subnet (BINAS's recipe); the :class:`~lightning_nas.callbacks.ContributionEstimation` callback estimates
the bilinear accuracy model on a held-out split and the
:class:`~lightning_nas.callbacks.LatencyProfiler` callback builds this CPU's latency table. It
then solves the exact MILP for three latency targets, exports each subnet, measures its latency
end to end and its accuracy before and after a short fine-tune, and writes a Pareto plot and
contribution heatmaps. ``--dataset`` takes any Hugging Face image-classification dataset.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
import torchmetrics
from lightning.pytorch.loggers import CSVLogger
from torch import nn
from torch.utils.data import DataLoader

from lightning_nas.callbacks import ContributionEstimation, LatencyProfiler, UniformSampling
from lightning_nas.data import gratings_dataset, load_image_dataset, split_dataset, to_tensors
from lightning_nas.distillation import inplace_distillation_loss
from lightning_nas.estimators import measure_subnet_accuracies, ranking_report, table2_predictors
from lightning_nas.io import atomic_save, atomic_write_json, next_version_dir
from lightning_nas.plots import plot_contributions, plot_pareto
from lightning_nas.profiling import check_latency
from lightning_nas.solvers import Limit, search_constrained
from lightning_nas.spaces import binas_supernet
from lightning_nas.supernet import Supernet

__all__ = ["SupernetClassifier", "accuracy", "format_summary", "gratings_dataset", "run_demo"]


class SupernetClassifier(pl.LightningModule):
    """An ordinary classification LightningModule around any network (a supernet or a subnet).

    Nothing here knows about NAS: callbacks activate subnets from outside. With ``distill=True``
    (a :class:`~lightning_nas.Supernet` only) each step adds in-place distillation from the
    largest subnet (:func:`~lightning_nas.distillation.inplace_distillation_loss`), BINAS's
    recipe; the logged training accuracy is then the sampled subnets'.
    """

    def __init__(
        self, supernet: nn.Module, num_classes: int, *, lr: float = 0.1, weight_decay: float = 4e-5, epochs: int = 1,
        distill: bool = False,
    ) -> None:
        super().__init__()
        if distill and not isinstance(supernet, Supernet):
            raise ValueError(f"`distill=True` needs a lightning_nas.Supernet to take the teacher from, got {type(supernet).__name__}")
        self.supernet = supernet
        self.lr, self.weight_decay, self.epochs, self.distill = lr, weight_decay, epochs, distill
        self.train_acc = torchmetrics.Accuracy(task="multiclass", num_classes=num_classes)
        self.val_acc = torchmetrics.Accuracy(task="multiclass", num_classes=num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.supernet(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        if self.distill:
            loss, logits = inplace_distillation_loss(self.supernet, x, y)
        else:
            logits = self(x)
            loss = nn.functional.cross_entropy(logits, y)
        self.train_acc(logits, y)
        self.log_dict({"train_loss": loss, "train_acc": self.train_acc}, on_step=False, on_epoch=True, batch_size=len(y))
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.val_acc(self(x), y)
        self.log("val_acc", self.val_acc, on_epoch=True, batch_size=len(y))

    def configure_optimizers(self):
        optimizer = torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9, weight_decay=self.weight_decay, nesterov=True)
        return {"optimizer": optimizer, "lr_scheduler": torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(self.epochs, 1))}


@torch.no_grad()
def accuracy(model: nn.Module, loader: DataLoader) -> float:
    """Top-1 accuracy (fraction) of ``model`` in eval mode over ``loader``."""
    model.eval()
    correct = total = 0
    for x, y in loader:
        correct += int((model(x).argmax(1) == y).sum())
        total += y.numel()
    return correct / total


def _trainer(epochs: int, run_dir: Path, name: str, callbacks: list, progress: bool) -> pl.Trainer:
    return pl.Trainer(
        max_epochs=epochs, accelerator="cpu", devices=1, logger=CSVLogger(run_dir, name=name, version=""),
        callbacks=callbacks, enable_checkpointing=False, enable_progress_bar=progress, enable_model_summary=False,
        num_sanity_val_steps=0, deterministic=True,
    )


def run_demo(
    *,
    dataset: str = "digits",
    split: str = "train",
    epochs: int = 40,
    finetune_epochs: int = 3,
    seed: int = 0,
    out: str | Path = "runs/demo",
    image_size: int = 32,
    batch_size: int = 64,
    max_examples: int | None = None,
    target_fractions: Sequence[float] = (0.2, 0.5, 0.8),
    estimation_passes: int = 100,
    estimator: str = "log_error",
    num_ranked: int = 40,
    profile_repeats: int = 50,
    progress: bool = True,
) -> dict[str, Any]:
    """Run the whole BINAS pipeline on a small dataset; see the module docstring.

    Args:
        dataset, split: what :func:`~lightning_nas.data.load_image_dataset` loads (``"digits"``:
            offline); split 60/20/20 into train, held-out (estimation) and validation (reporting).
        epochs: supernet training epochs (per-example uniform sampling).
        finetune_epochs: fine-tuning epochs of each exported subnet.
        seed: seeds data split, sampling, estimation and training.
        out: runs go to ``out/version_N`` (never overwritten); the latency table is shared at
            ``out/latency_table.json`` and reused while it matches this machine and settings.
        image_size: square input resolution.
        batch_size: training batch size.
        max_examples: use at most this many examples (tests, quick looks).
        target_fractions: latency targets, as fractions of the way from the smallest to the
            largest latency the table allows.
        estimation_passes: passes of the one-pass estimator over the held-out split (the budget of
            forward passes: ``estimation_passes × held-out examples``).
        estimator: ``"log_error"`` (the multiplicative-error fit with adaptive allocation; needs
            ``estimation_passes >= 2``) or ``"means"`` (BINAS's conditional means, paired when
            ``estimation_passes >= 2``, empirical-Bayes shrinkage).
        num_ranked: random subnets whose measured one-shot accuracy checks the estimator's ranking.
        profile_repeats: timed calls per latency measurement.
        progress: show progress bars.

    Returns:
        The summary written to ``<run dir>/summary.json``.
    """
    if estimator not in ("means", "log_error"):
        raise ValueError(f"`estimator` must be 'means' or 'log_error', got {estimator!r}")
    started = time.perf_counter()
    pl.seed_everything(seed, workers=True, verbose=False)
    ds = load_image_dataset(dataset, split)
    if max_examples is not None:
        ds = ds.shuffle(seed=seed).select(range(min(max_examples, len(ds))))
    tensors, num_classes = to_tensors(ds, image_size, channels=3)
    train_set, held_set, val_set = split_dataset(tensors, (0.6, 0.2, 0.2), seed=seed)
    generator = torch.Generator().manual_seed(seed)
    train = DataLoader(train_set, batch_size=batch_size, shuffle=True, generator=generator)
    held_out = DataLoader(held_set, batch_size=256)
    val = DataLoader(val_set, batch_size=256)

    out = Path(out)
    run_dir = next_version_dir(out)
    supernet = binas_supernet("tiny", num_classes=num_classes)
    model = SupernetClassifier(supernet, num_classes, lr=0.1, epochs=epochs, distill=True)
    options = ({"shrinkage": "empirical_bayes", "paired": estimation_passes >= 2} if estimator == "means"
               else {"fit": "log_error", "allocation": "adaptive"})
    estimation = ContributionEstimation(
        held_out, method="one_pass", passes=estimation_passes, seed=seed, path=run_dir / "accuracy_table.json", **options,
    )
    profiler = LatencyProfiler(out / "latency_table.json", input_size=(3, image_size, image_size), repeats=profile_repeats, seed=seed)
    sampling = UniformSampling(seed, per_sample=True, eval_arch="per_sample")
    trainer = _trainer(epochs, run_dir, "supernet", [sampling, estimation, profiler], progress)
    fit_started = time.perf_counter()
    trainer.fit(model, train, val)
    train_seconds = time.perf_counter() - fit_started
    accuracy_table, latency_table = estimation.accuracy_model, profiler.latency_table
    space = supernet.space

    # How well does the estimator rank subnets it has not seen? (BINAS Table 2, on this run.)
    ranked = space.sample_many(num_ranked, seed + 1)
    measured = measure_subnet_accuracies(supernet, ranked, held_out)
    ranking = ranking_report(table2_predictors(accuracy_table), ranked, measured)

    low, high = latency_table.extreme()[0], latency_table.extreme(largest=True)[0]
    results = []
    for fraction in target_fractions:
        target = low + fraction * (high - low)
        found = search_constrained(accuracy_table, [Limit(latency_table, upper=target)])
        arch = found.arch
        check = check_latency(supernet, latency_table, archs=[arch])
        one_shot = float(measure_subnet_accuracies(supernet, [arch], val)[0])
        subnet = supernet.export(arch, calibration_batches=train, num_calibration_batches=8)
        recalibrated = accuracy(subnet, val)
        tuned = SupernetClassifier(subnet.train(), num_classes, lr=0.02, epochs=finetune_epochs)
        _trainer(finetune_epochs, run_dir, f"finetune_{len(results)}", [], progress).fit(tuned, train)
        results.append({
            "target_ms": target,
            "arch": arch,
            "status": found.status,
            "solve_seconds": found.solve_seconds,
            "predicted_ms": found.resources["latency"],
            "measured_ms": float(check.measured[0]),
            "predicted_acc": found.objective,
            "one_shot_acc": one_shot,
            "recalibrated_acc": recalibrated,
            "finetuned_acc": accuracy(subnet, val),
            "params": sum(p.numel() for p in subnet.parameters()),
        })
        atomic_write_json(run_dir / f"arch_{len(results) - 1}.json", arch)
        atomic_save(subnet.state_dict(), run_dir / f"subnet_{len(results) - 1}.pt")

    cloud = space.sample_many(400, seed + 2)
    plot_pareto(
        (latency_table.predict_many(cloud), accuracy_table.predict_many(cloud)),
        [{"predicted_x": r["predicted_ms"], "predicted_y": r["predicted_acc"], "measured_x": r["measured_ms"],
          "measured_y": r["one_shot_acc"], "target": r["target_ms"]} for r in results],
        run_dir / "pareto.png", y_label="top-1 accuracy (one-shot)",
    )
    plot_contributions(accuracy_table, run_dir / "contributions.png")
    summary = {
        "run_dir": str(run_dir),
        "dataset": dataset,
        "examples": {"train": len(train_set), "held_out": len(held_set), "val": len(val_set)},
        "space_size": space.size,
        "decisions": len(space),
        "epochs": epochs,
        "train_seconds": round(train_seconds, 1),
        "one_shot_val_acc": float(trainer.callback_metrics["val_acc"]),
        "expected_acc": accuracy_table.metadata["base_accuracy"],
        "estimator": estimator,
        "latency_range_ms": [low, high],
        "latency_table": str(profiler.path),
        "ranking": {"num_subnets": num_ranked, **ranking},
        "targets": results,
        "total_seconds": round(time.perf_counter() - started, 1),
    }
    atomic_write_json(run_dir / "summary.json", summary)
    return summary


def format_summary(summary: dict[str, Any]) -> str:
    """A human-readable report of :func:`run_demo`'s summary: one row per latency target."""
    ex = summary["examples"]
    lines = [
        f"data: {summary['dataset']} ({ex['train']} train / {ex['held_out']} held-out / {ex['val']} val)",
        f"search space: {summary['decisions']} decisions, {summary['space_size']:,} architectures",
        f"supernet: {summary['epochs']} epochs in {summary['train_seconds']} s; one-shot val accuracy "
        f"{summary['one_shot_val_acc']:.3f}; estimated E[Acc] {summary['expected_acc']:.3f}",
        "estimator ranking on {num_subnets} random subnets: ".format(**summary["ranking"]) + "; ".join(
            f"{name} τ={v['kendall_tau']:.2f} ρ={v['spearman_rho']:.2f}" for name, v in summary["ranking"].items() if isinstance(v, dict)
        ),
        f"latency table: {summary['latency_table']} (range {summary['latency_range_ms'][0]:.3f}–{summary['latency_range_ms'][1]:.3f} ms)",
        "",
        f"{'target ms':>9} {'pred ms':>8} {'meas ms':>8} {'pred acc':>8} {'one-shot':>8} {'recalib':>8} {'tuned':>8} {'params':>8} {'solve s':>8}",
    ]
    for r in summary["targets"]:
        lines.append(
            f"{r['target_ms']:>9.3f} {r['predicted_ms']:>8.3f} {r['measured_ms']:>8.3f} {r['predicted_acc']:>8.3f} "
            f"{r['one_shot_acc']:>8.3f} {r['recalibrated_acc']:>8.3f} {r['finetuned_acc']:>8.3f} {r['params']:>8,} {r['solve_seconds']:>8.3f}"
        )
    lines += ["", f"written: {summary['run_dir']}/ (summary.json, arch_*.json, subnet_*.pt, pareto.png, contributions.png, accuracy_table.json)",
              f"total: {summary['total_seconds']} s"]
    return "\n".join(lines)
