"""The plain-PyTorch supernet training loop the estimator benchmarks share.

One uniformly sampled architecture per example at every step (what ``UniformSampling(per_sample=True)``
does inside a Trainer), SGD with Nesterov momentum, a cosine schedule, draws from ``derive_generator``;
optionally with in-place distillation from the largest subnet (what ``SupernetClassifier(distill=True)``
does).
"""

from __future__ import annotations

import math
import time

import torch
from torch import nn
from torch.utils.data import DataLoader

from lightning_nas.distillation import inplace_distillation_loss
from lightning_nas.seeding import derive_generator
from lightning_nas.supernet import Supernet


def train_per_example(
    supernet: Supernet, loader: DataLoader, *, epochs: int, lr: float = 0.1, seed: int = 0, distill: bool = False
) -> float:
    """Train ``supernet`` in place (on the device of its parameters) for ``epochs`` passes over ``loader``;
    returns the seconds taken."""
    optimizer = torch.optim.SGD(supernet.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=4e-5)
    steps = epochs * len(loader)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * step / steps)))
    supernet.train()
    device = next(supernet.parameters()).device
    started, step = time.perf_counter(), 0
    for _ in range(epochs):
        for x, y in loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            supernet.activate_indices(supernet.space.sample_indices(len(y), derive_generator(seed, 0, step)))
            if distill:
                loss, _ = inplace_distillation_loss(supernet, x, y)
            else:
                loss = nn.functional.cross_entropy(supernet(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            step += 1
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - started
