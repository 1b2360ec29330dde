"""Shared tiny models for the tests."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import lightning_nas as ln

sys.path.insert(0, str(Path(__file__).parent / "nn"))
from batch_norm import randomise_batch_norm  # noqa: E402


class AllMutablesNet(nn.Module):
    """A tiny network using every mutable type, TorchScript-friendly once exported."""

    def __init__(self) -> None:
        super().__init__()
        width = ln.Choice([4, 8], "width")
        self.stem = ln.ElasticConv2d(3, width, ln.Choice([3, 5], "stem.kernel"))
        self.stem_bn = ln.ElasticBatchNorm2d(width)
        self.dw = ln.ElasticConv2d(width, width, ln.Choice([3, 5], "dw.kernel"), depthwise=True)
        self.dw_bn = ln.ElasticBatchNorm2d(width)
        self.op = ln.OpChoice({"relu": nn.ReLU(), "hswish": nn.Hardswish(), "id": nn.Identity()}, "op")
        blocks = [
            nn.Sequential(ln.ElasticConv2d(width, width, 3), ln.ElasticBatchNorm2d(width), nn.ReLU()) for _ in range(3)
        ]
        self.body = ln.DepthChoice(blocks, [1, 2, 3], "depth")
        self.merge = ln.InputChoice(3, 2, "merge")
        hidden = ln.Choice([6, 12], "hidden")
        self.fc1 = ln.ElasticLinear(width, hidden)
        self.ln = ln.ElasticLayerNorm(hidden)
        self.fc2 = ln.ElasticLinear(hidden, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.stem_bn(self.stem(x))
        b = self.op(self.dw_bn(self.dw(a)))
        c = self.body(b)
        merged = self.merge([a, b, c])
        h = torch.relu(self.ln(self.fc1(merged.mean(dim=(2, 3)))))
        return self.fc2(h)


@pytest.fixture
def all_mutables_supernet() -> ln.Supernet:
    torch.manual_seed(0)
    net = ln.Supernet(AllMutablesNet())
    randomise_batch_norm(net)  # non-trivial BN statistics so eval mode exercises them
    return net
