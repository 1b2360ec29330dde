"""DDP scenario `sampling:<mode>` of ddp_scenarios.py (read by test_ddp.py): 2-process CPU DDP (gloo) training with
UniformSampling; each rank writes its archs."""

from __future__ import annotations

import json
import os

import lightning.pytorch as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import lightning_nas as ln
from lightning_nas.callbacks import UniformSampling


class Model(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        width = ln.Choice([4, 8], "width")
        self.net = ln.Supernet(
            nn.Sequential(
                ln.ElasticLinear(5, width),
                ln.OpChoice([nn.ReLU(), nn.Tanh()], "act"),
                ln.DepthChoice([nn.Sequential(ln.ElasticLinear(width, width), nn.ReLU()) for _ in range(2)], [1, 2], "depth"),
                ln.ElasticLinear(width, 2),
            )
        )

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self.net(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class Record(pl.Callback):
    def __init__(self, out: str) -> None:
        self.out, self.archs = out, []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.archs.append([trainer.global_step, pl_module.net.active_arch])

    def on_train_end(self, trainer, pl_module):
        path = os.path.join(self.out, f"rank{trainer.global_rank}.json")
        with open(path, "w") as f:
            json.dump({"archs": self.archs, "global_step": trainer.global_step, "world_size": trainer.world_size}, f)


def run(out: str, mode: str) -> None:
    """Train 2 epochs under DDP with UniformSampling drawing per batch (mode "per_batch") or per example ("per_sample");
    each rank writes out/rank<r>.json."""
    per_sample = mode == "per_sample"
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(64, 5, generator=g), torch.randint(0, 2, (64,), generator=g))
    trainer = pl.Trainer(
        accelerator="cpu", devices=2, strategy="ddp_find_unused_parameters_true", max_epochs=2,
        callbacks=[UniformSampling(11, per_sample=per_sample), Record(out)], logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False,
    )
    trainer.fit(Model(), DataLoader(data, batch_size=4))
