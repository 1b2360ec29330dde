"""UniformSampling under real 2-process CPU DDP (gloo): every rank trains the same path.

The runs are scenarios of ddp_scenarios.py, all made by one DDP launch (the conftest's `ddp_runs` fixture)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest


@pytest.mark.parametrize(
    "scenario", [pytest.param(f"sampling:{mode}", marks=pytest.mark.ddp_scenario(f"sampling:{mode}"), id=mode) for mode in ("per_batch", "per_sample")]
)
def test_ddp_ranks_activate_the_same_arch_every_step(ddp_runs, scenario):
    out = ddp_runs(scenario)
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert all(r["world_size"] == 2 for r in ranks)
    # 64 examples, 2 ranks, batch 4: 8 steps per epoch, 2 epochs, run to the end.
    assert all(r["global_step"] == 16 and len(r["archs"]) == 16 for r in ranks)
    assert ranks[0]["archs"] == ranks[1]["archs"]
    assert len({json.dumps(a) for _, a in ranks[0]["archs"]}) > 1


@pytest.mark.ddp_scenario("sandwich:per_sample")
def test_ddp_sandwich_step_is_the_mean_of_the_ranks_sandwich_gradients(ddp_runs):
    """One SGD step of the sandwich under 2-rank DDP: both ranks hold the same weights, and they
    moved by -lr times the mean over ranks of each rank's teacher CE + distilled students gradient,
    computed here by hand on each rank's shard (the students' gradients are averaged by the callback,
    not by DDP)."""
    import torch

    sys.path.insert(0, str(Path(__file__).parent))
    import ddp_sandwich_script as script
    from sandwich import sandwich_gradient

    from lightning_nas.callbacks import UniformSampling

    out = ddp_runs("sandwich:per_sample")
    ranks = [torch.load(out / f"rank{r}.pt") for r in (0, 1)]
    net = script.supernet()
    cb = UniformSampling(3, sandwich=True, num_random=2, per_sample=True)  # per-example students: the harder case
    cb._supernet = net
    # Each rank's own shard of the first batch, as recorded by the script.
    grads = [sandwich_gradient(net, net, cb, *ranks[rank]["batch"]) for rank in (0, 1)]
    for i, (name, p) in enumerate(net.named_parameters()):
        expected = p.detach() - 0.1 * (grads[0][i] + grads[1][i]) / 2
        torch.testing.assert_close(ranks[0]["weights"][name], expected, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(ranks[1]["weights"][name], ranks[0]["weights"][name], rtol=0, atol=0)
    assert not torch.equal(ranks[0]["batch"][0], ranks[1]["batch"][0])  # the ranks saw different examples
