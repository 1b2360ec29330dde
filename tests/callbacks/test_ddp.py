"""UniformSampling under real 2-process CPU DDP (gloo): every rank trains the same path."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).with_name("ddp_sampling_script.py")


@pytest.mark.parametrize("mode", ["per_batch", "per_sample"])
def test_ddp_ranks_activate_the_same_arch_every_step(tmp_path, mode):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "MASTER_"))}
    done = subprocess.run(
        [sys.executable, str(SCRIPT), str(tmp_path), mode], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert all(r["world_size"] == 2 for r in ranks)
    # 64 examples, 2 ranks, batch 4: 8 steps per epoch, 2 epochs, run to the end.
    assert all(r["global_step"] == 16 and len(r["archs"]) == 16 for r in ranks)
    assert ranks[0]["archs"] == ranks[1]["archs"]
    assert len({json.dumps(a) for _, a in ranks[0]["archs"]}) > 1


SANDWICH_SCRIPT = Path(__file__).with_name("ddp_sandwich_script.py")


def test_ddp_sandwich_step_is_the_mean_of_the_ranks_sandwich_gradients(tmp_path):
    """One SGD step of the sandwich under 2-rank DDP: both ranks hold the same weights, and they
    moved by -lr times the mean over ranks of each rank's teacher CE + distilled students gradient,
    computed here by hand on each rank's shard (the students' gradients are averaged by the callback,
    not by DDP)."""
    import torch

    sys.path.insert(0, str(SCRIPT.parent))
    import ddp_sandwich_script as script
    from sandwich import sandwich_gradient

    from lightning_nas.callbacks import UniformSampling

    env = {k: v for k, v in os.environ.items() if not k.startswith(("LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "MASTER_"))}
    done = subprocess.run(
        [sys.executable, str(SANDWICH_SCRIPT), str(tmp_path), "per_sample"], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]
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
