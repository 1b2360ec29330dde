"""Non-trivial BatchNorm statistics for the nn tests (importable by the test modules next to it)."""

from __future__ import annotations

import torch
from torch import nn

import lightning_nas as ln


def randomise_batch_norm(model: nn.Module) -> None:
    """Random running statistics and affine parameters in every (elastic) BatchNorm, so eval mode exercises them."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.BatchNorm2d, ln.ElasticBatchNorm2d)):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
