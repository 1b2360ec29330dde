"""DDP scenario `sandwich:<mode>` of ddp_scenarios.py (read by test_ddp.py): one sandwich step under 2-process CPU DDP
(gloo); each rank saves its weights."""

from __future__ import annotations

import os

import lightning.pytorch as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import lightning_nas as ln
from lightning_nas.callbacks import UniformSampling


def supernet() -> ln.Supernet:
    torch.manual_seed(0)
    width = ln.Choice([4, 8], "width")
    return ln.Supernet(
        nn.Sequential(
            ln.ElasticLinear(5, width),
            ln.OpChoice([nn.ReLU(), nn.Tanh()], "act"),
            ln.DepthChoice([nn.Sequential(ln.ElasticLinear(width, width), nn.ReLU()) for _ in range(2)], [1, 2], "depth"),
            ln.ElasticLinear(width, 3),
        )
    )


def data() -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    return TensorDataset(torch.randn(16, 5, generator=g), torch.randint(0, 3, (16,), generator=g))


class Model(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = supernet()

    def training_step(self, batch, batch_idx):
        x, y = batch
        self.seen = (x.detach().clone(), y.clone())  # the rank's shard, as the strategy's sampler drew it
        return nn.functional.cross_entropy(self.net(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def run(out: str, mode: str) -> None:
    """One sandwich step with students drawn per example (mode "per_sample") or per batch ("per_batch"); each rank saves
    its weights and its shard of the batch to out/rank<r>.pt."""
    per_sample = mode == "per_sample"
    model = Model()
    trainer = pl.Trainer(
        accelerator="cpu", devices=2, strategy="ddp_find_unused_parameters_true", max_steps=1,
        callbacks=[UniformSampling(3, sandwich=True, num_random=2, per_sample=per_sample, log_students=False)],
        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
    )
    trainer.fit(model, DataLoader(data(), batch_size=4))
    weights = {k: v.detach().clone() for k, v in model.net.state_dict().items()}
    torch.save({"weights": weights, "batch": model.seen}, os.path.join(out, f"rank{trainer.global_rank}.pt"))
