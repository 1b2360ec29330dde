"""Run by test_contribution.py: 2-process CPU DDP (gloo) with ContributionEstimation; each rank writes its table."""

from __future__ import annotations

import json
import os
import sys

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from lightning_nas.callbacks import UniformSampling
from lightning_nas.callbacks.contribution import ContributionEstimation
from lightning_nas.spaces import mobilenet_supernet

DATA = {"num_classes": 4, "image_size": 16, "noise": 0.5}


def gratings_dataset(n, *, num_classes, image_size, noise, seed):
    """Noisy copies of one random prototype image per class: learnable in a few steps."""
    prototypes = torch.randn(num_classes, 3, image_size, image_size, generator=torch.Generator().manual_seed(1234))
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(num_classes, (n,), generator=g)
    return TensorDataset(prototypes[labels] + noise * torch.randn(n, 3, image_size, image_size, generator=g), labels)


class SupernetClassifier(pl.LightningModule):
    """A plain classification module holding a supernet (the callbacks do the NAS part)."""

    def __init__(self, supernet, num_classes, lr=0.05, epochs=1):
        super().__init__()
        self.supernet, self.lr = supernet, lr

    def forward(self, x):
        return self.supernet(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return torch.nn.functional.cross_entropy(self(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_acc", (self(x).argmax(1) == y).float().mean())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9)
PASSES = {"one_pass": 2, "paper": 1}


def tiny_model() -> SupernetClassifier:
    torch.manual_seed(0)
    supernet = mobilenet_supernet(
        num_classes=4, stem_channels=8, stages=((8, 1, 2), (16, 2, 2)), expand_ratios=(1, 2), kernel_sizes=(3,), head_channels=16
    )
    for m in supernet.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.momentum = 0.0  # identical running statistics on every rank, whatever each rank saw
    return SupernetClassifier(supernet, 4, lr=0.05, epochs=1)


def main() -> None:
    out = sys.argv[1]
    held_out = DataLoader(gratings_dataset(70, seed=2, **DATA), batch_size=10)  # 7 batches: uneven shards
    callbacks = {method: ContributionEstimation(held_out, method=method, passes=PASSES[method], seed=5) for method in PASSES}
    trainer = pl.Trainer(
        accelerator="cpu", devices=2, strategy="ddp_find_unused_parameters_true", max_epochs=1, limit_train_batches=2,
        callbacks=[UniformSampling(0, per_sample=True), *callbacks.values()], logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False,
    )
    model = tiny_model()
    trainer.fit(model, DataLoader(gratings_dataset(64, seed=0, **DATA), batch_size=8))
    with open(os.path.join(out, f"rank{trainer.global_rank}.json"), "w") as f:
        tables = {method: cb.accuracy_model.to_dict() for method, cb in callbacks.items()}
        json.dump({"tables": tables, "world_size": trainer.world_size}, f)
    if trainer.global_rank == 0:
        torch.save(model.state_dict(), os.path.join(out, "model.pt"))
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
