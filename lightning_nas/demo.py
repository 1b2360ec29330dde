"""The foundation demo: SPOS training of a MobileNet-like supernet, subnet evaluation and export.

``lightning-nas demo`` runs it on a synthetic, learnable image task generated on the fly (no
download): oriented gratings under noise, one class per orientation.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
import torchmetrics
from lightning.pytorch.loggers import CSVLogger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_nas.callbacks import UniformSampling
from lightning_nas.io import atomic_save, atomic_write_json, next_version_dir
from lightning_nas.spaces import mobilenet_supernet
from lightning_nas.supernet import Supernet

__all__ = ["SupernetClassifier", "gratings_dataset", "run_demo"]


def gratings_dataset(
    n: int, *, num_classes: int = 4, image_size: int = 32, noise: float = 0.5, seed: int = 0
) -> TensorDataset:
    """``n`` RGB images ``(n, 3, S, S)`` of sinusoidal gratings; the label is the orientation bin.

    Frequency, phase and colour vary per image and Gaussian noise (std ``noise``) is added, so the
    task needs a real feature extractor but is learned in a few CPU epochs.
    """
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(num_classes, (n,), generator=g)
    angle = (labels.float() + 0.3 * torch.rand(n, generator=g) - 0.15) * math.pi / num_classes
    freq = 0.25 + 0.35 * torch.rand(n, generator=g)
    phase = 2 * math.pi * torch.rand(n, generator=g)
    coords = torch.arange(image_size, dtype=torch.float32)
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    proj = torch.cos(angle)[:, None, None] * xx + torch.sin(angle)[:, None, None] * yy
    wave = torch.sin(freq[:, None, None] * proj + phase[:, None, None])  # (n, S, S)
    colour = 0.5 + torch.rand(n, 3, generator=g)
    images = colour[:, :, None, None] * wave[:, None] + noise * torch.randn(n, 3, image_size, image_size, generator=g)
    return TensorDataset(images, labels)


class SupernetClassifier(pl.LightningModule):
    """An ordinary classification LightningModule that happens to hold a ``Supernet``.

    Nothing here knows about NAS: the sampling callback activates subnets from outside.
    """

    def __init__(self, supernet: Supernet, num_classes: int, *, lr: float = 0.1, weight_decay: float = 4e-5, epochs: int = 1) -> None:
        super().__init__()
        self.supernet = supernet
        self.lr, self.weight_decay, self.epochs = lr, weight_decay, epochs
        self.train_acc = torchmetrics.Accuracy(task="multiclass", num_classes=num_classes)
        self.val_acc = torchmetrics.Accuracy(task="multiclass", num_classes=num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.supernet(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        logits = self(x)
        loss = nn.functional.cross_entropy(logits, y)
        self.train_acc(logits, y)
        self.log_dict({"train_loss": loss, "train_acc": self.train_acc}, on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.val_acc(self(x), y)
        self.log("val_acc", self.val_acc, prog_bar=True)

    def configure_optimizers(self):
        opt = torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9, nesterov=True, weight_decay=self.weight_decay)
        return {"optimizer": opt, "lr_scheduler": torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, self.epochs))}


@torch.no_grad()
@torch.no_grad()
def accuracy(model: nn.Module, loader: DataLoader) -> float:
    """Top-1 accuracy (fraction) of ``model`` in eval mode over ``loader``."""
    model.eval()
    correct = total = 0
    for x, y in loader:
        correct += int((model(x).argmax(1) == y).sum())
        total += y.numel()
    return correct / total


def run_demo(
    *,
    epochs: int = 4,
    seed: int = 0,
    out: str | Path = "runs/demo",
    num_train: int = 2048,
    num_val: int = 512,
    batch_size: int = 64,
    num_candidates: int = 6,
    num_classes: int = 16,
    noise: float = 1.2,
    progress: bool = True,
) -> dict[str, Any]:
    """Train a supernet with per-example uniform sampling, rank a few subnets, export the best.

    The default task (16 orientation bins under noise 1.2) is hard enough that subnets differ by
    several points of accuracy after a few epochs.

    Returns:
        A summary dict (also written to ``<run dir>/summary.json``): one-shot accuracy, each
        candidate's accuracy after BN recalibration, the chosen arch and where files were written.
    """
    pl.seed_everything(seed, workers=True, verbose=False)
    data = {"num_classes": num_classes, "noise": noise}
    train = DataLoader(gratings_dataset(num_train, seed=seed, **data), batch_size=batch_size, shuffle=True)
    val = DataLoader(gratings_dataset(num_val, seed=seed + 1, **data), batch_size=256)
    supernet = mobilenet_supernet(num_classes=num_classes)
    model = SupernetClassifier(supernet, num_classes, epochs=epochs)
    run_dir = next_version_dir(out)
    trainer = pl.Trainer(
        max_epochs=epochs, accelerator="cpu", devices=1, logger=CSVLogger(run_dir, name="", version=""),
        callbacks=[UniformSampling(seed, per_sample=True, eval_arch="per_sample")], enable_checkpointing=False,
        enable_progress_bar=progress, enable_model_summary=False, num_sanity_val_steps=0,
    )
    started = time.perf_counter()
    trainer.fit(model, train, val)
    train_s = time.perf_counter() - started
    one_shot = float(trainer.callback_metrics["val_acc"])

    space = supernet.space
    candidates = {"largest": space.largest(), "smallest": space.smallest()}
    candidates.update({f"sample{i}": arch for i, arch in enumerate(space.sample_many(num_candidates, seed))})
    results = {}
    for name, arch in candidates.items():
        # Inherited BN statistics average over all subnets: recalibrate each subnet before measuring.
        subnet = supernet.export(arch, calibration_batches=train, num_calibration_batches=8)
        results[name] = {
            "arch": arch,
            "val_acc": accuracy(subnet, val),
            "params": sum(p.numel() for p in subnet.parameters()),
        }
    best_name = max(results, key=lambda k: results[k]["val_acc"])
    best_arch = candidates[best_name]

    supernet.eval()
    exported = supernet.export(best_arch)
    x = next(iter(val))[0][:16]
    with supernet.activated(best_arch), torch.no_grad():
        export_error = float((supernet(x) - exported.eval()(x)).abs().max())
    calibrated = supernet.export(best_arch, calibration_batches=train, num_calibration_batches=8)
    summary = {
        "run_dir": str(run_dir),
        "space_size": space.size,
        "decisions": len(space),
        "epochs": epochs,
        "train_seconds": round(train_s, 1),
        "one_shot_val_acc": one_shot,
        "candidates": results,
        "best": best_name,
        "best_arch": best_arch,
        "export_max_abs_error": export_error,
    }
    atomic_write_json(run_dir / "best_arch.json", best_arch)
    atomic_save(calibrated.state_dict(), run_dir / "best_subnet.pt")
    atomic_write_json(run_dir / "summary.json", summary)
    return summary


def format_summary(summary: dict[str, Any]) -> str:
    """A human-readable report of :func:`run_demo`'s summary."""
    lines = [
        f"search space: {summary['decisions']} decisions, {summary['space_size']:,} architectures",
        f"SPOS training (per-example uniform sampling): {summary['epochs']} epochs in {summary['train_seconds']} s",
        f"supernet one-shot accuracy (per-example uniform subnets): {summary['one_shot_val_acc']:.3f}",
        "",
        f"{'subnet':<10} {'params':>9} {'val acc':>8}",
    ]
    for name, r in summary["candidates"].items():
        lines.append(f"{name:<10} {r['params']:>9,} {r['val_acc']:>8.3f}")
    lines += [
        "",
        f"best: {summary['best']} {summary['best_arch']}",
        f"exported subnet vs supernet, max |difference|: {summary['export_max_abs_error']:.2e}",
        f"written: {summary['run_dir']}/best_arch.json, best_subnet.pt, summary.json, metrics.csv",
    ]
    return "\n".join(lines)
