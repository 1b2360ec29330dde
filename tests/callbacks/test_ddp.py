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
