"""Tiny staged supernets and fast settings for the profiling tests."""

from __future__ import annotations

import pytest
import torch

from lightning_nas.profiling import ProfileSettings
from lightning_nas.spaces import mobilenet_supernet

# Few repeats: these tests check structure, not timing quality (the benchmark does that).
FAST = dict(repeats=5, warmup=1)


def tiny_mobilenet(max_depth: int = 2):
    torch.manual_seed(0)
    return mobilenet_supernet(
        num_classes=3, stem_channels=8, stages=((8, 1, max_depth), (16, 2, max_depth)), expand_ratios=(2, 4), kernel_sizes=(3, 5),
        head_channels=16,
    )


@pytest.fixture
def tiny():
    return tiny_mobilenet()


@pytest.fixture
def fast_settings():
    return ProfileSettings(input_size=(3, 16, 16), **FAST)
