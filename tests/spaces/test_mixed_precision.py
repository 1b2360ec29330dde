"""Per-example supernet training under autocast (Lightning's ``precision="bf16-mixed"`` / ``"16-mixed"``)."""

from __future__ import annotations

import copy

import pytest
import torch

from lightning_nas.spaces import binas_supernet, mobilenet_supernet


@pytest.mark.parametrize("build", [lambda: binas_supernet(preset="tiny"), mobilenet_supernet], ids=["binas", "mobilenet"])
def test_per_example_training_step_under_autocast(build):
    # The masked and grouped BatchNorms take their statistics in float32 whatever the autocast dtype.
    torch.manual_seed(0)
    supernet = build().train()
    reference = copy.deepcopy(supernet)
    x = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    indices = supernet.space.sample_indices(8, seed=0)
    supernet.activate_indices(indices)
    reference.activate_indices(indices)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = supernet(x)
    logits.float().sum().backward()
    expected = reference(x).detach()
    assert logits.dtype == torch.bfloat16
    torch.testing.assert_close(logits.float(), expected, atol=0.1 * float(expected.abs().max()), rtol=0)
    grads = [p.grad for p in supernet.parameters() if p.grad is not None]
    assert grads and all(bool(torch.isfinite(g).all()) for g in grads)
    for (name, got), want in zip(supernet.named_buffers(), reference.buffers()):
        if "running" in name:
            torch.testing.assert_close(got, want, atol=0.05, rtol=0.05)
