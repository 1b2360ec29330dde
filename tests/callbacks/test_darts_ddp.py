"""DartsSearch + PerturbationSelection under real 2-process CPU DDP (gloo): α gradients are averaged and PT's
held-out counts summed, so both ranks hold the same α and make the same decisions.

The run is a scenario of ddp_scenarios.py, made by the one DDP launch of the conftest's `ddp_runs` fixture."""

from __future__ import annotations

import json

import pytest


@pytest.mark.parametrize(  # second order: the unrolled gradient is all-reduced too
    "method", [pytest.param(method, marks=pytest.mark.ddp_scenario(f"darts:{method}"), id=method) for method in ("2",)]
)
def test_ddp_ranks_hold_identical_alpha(ddp_runs, method):
    out = ddp_runs(f"darts:{method}")
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert all(r["world_size"] == 2 for r in ranks)
    # 64 examples, 2 ranks, batch 8: 4 steps per epoch, 2 epochs.
    assert ranks[0]["steps"] == ranks[1]["steps"] == 8
    assert ranks[0]["first_batch"] != ranks[1]["first_batch"]  # each rank measures its own held-out batch
    assert ranks[0]["alpha"] == ranks[1]["alpha"]
    assert max(abs(v) for a in ranks[0]["alpha"] for v in a) > 0.05
    decisions = [r["decisions"] for r in ranks]
    assert [d["labels"] for d in decisions[0]] in ([["op1"], ["op2"]], [["op2"], ["op1"]])
    assert decisions[0] == decisions[1] and ranks[0]["arch"] == ranks[1]["arch"]
    # 6 masked evaluations (3 ops on each of 2 edges); each rank measured half of the 48-example split.
    assert ranks[0]["measured"] == ranks[1]["measured"] == 6 * 24
    assert all(round(v * 48, 6).is_integer() for d in decisions[0] for s in d["scores"].values() for v in s.values())
