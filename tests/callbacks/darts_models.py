"""Tiny relaxed-search models shared by the DARTS callback tests and their DDP script."""

from __future__ import annotations

import lightning.pytorch as pl
import torch
from torch import nn
from torch.utils.data import TensorDataset

import lightning_nas as ln
from lightning_nas.spaces.darts import Zero


class TinySearch(pl.LightningModule):
    """A 2-edge supernet on 6-d inputs; the user's own SGD trains the weights."""

    def __init__(self, seed: int = 0, lr: float = 0.1) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.lr = lr
        self.net = ln.Supernet(
            nn.Sequential(
                nn.Linear(6, 8),
                ln.OpChoice({"linear": nn.Linear(8, 8), "tanh": nn.Tanh(), "skip": nn.Identity()}, "op1"),
                ln.OpChoice({"linear": nn.Linear(8, 8), "none": Zero(), "skip": nn.Identity()}, "op2"),
                nn.Linear(8, 3),
            )
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9)


def tiny_data(n: int = 64, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=g)
    return TensorDataset(x, (x[:, :3].argmax(1) + (x[:, 3] > 1).long()) % 3)
