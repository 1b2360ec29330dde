"""The DDP test scenarios, run in sequence by ONE 2-process CPU DDP (gloo) launch.

    python tests/callbacks/ddp_scenarios.py OUT_DIR SCENARIO [SCENARIO ...]

SCENARIO is a name, or name:mode for the scenarios that take one (see SCENARIOS); each writes into its own folder
OUT_DIR/<name>_<mode> (OUT_DIR/<name> without a mode) and, once it has finished on a rank, an empty done.rank<r> there.
Run one scenario alone by naming only it. The conftest's `ddp_runs` fixture runs the scenarios of the selected tests.

Why one launch: each DDP run's time is mostly start-up (import torch and Lightning, start the second rank, which
imports everything again, gloo init). Lightning launches the other rank at the first `fit` only: the launcher then
sets LOCAL_RANK, so the later Trainers find their processes already made, and the process group stays initialised
(destroyed once, at the end).
"""

from __future__ import annotations

import importlib
import os
import sys

import torch

# The global RNG state a fresh process starts with: every scenario starts from it, as when each ran in its own process,
# so its results do not depend on which scenarios ran before it.
FRESH_SEED = torch.initial_seed()

SCENARIOS = {  # name: (the module in this directory whose run(out, mode) it is, the modes it takes; () for none)
    "sampling": ("ddp_sampling_script", ("per_batch", "per_sample")),
    "sandwich": ("ddp_sandwich_script", ("per_sample", "per_batch")),
    "darts": ("ddp_darts_script", ("1", "2", "drnas")),
    "contribution": ("ddp_contribution_script", ()),
    "latency": ("ddp_latency_script", ()),
}


def parse(scenario: str) -> tuple[str, str | None]:
    """'name' or 'name:mode' -> (name, mode or None), checked against SCENARIOS."""
    name, _, mode = scenario.partition(":")
    if name not in SCENARIOS:
        raise ValueError(f"scenario {scenario!r}: unknown name {name!r}; allowed: {sorted(SCENARIOS)}")
    modes = SCENARIOS[name][1]
    if modes and mode not in modes:
        raise ValueError(f"scenario {scenario!r}: mode {mode!r} of {name} is not one of {list(modes)} (give it as {name}:<mode>)")
    if not modes and mode:
        raise ValueError(f"scenario {scenario!r}: {name} takes no mode")
    return name, mode or None


def folder(scenario: str) -> str:
    """The subfolder of the output dir that `scenario` writes to."""
    name, mode = parse(scenario)
    return name if mode is None else f"{name}_{mode}"


def main(argv: list[str]) -> None:
    if len(argv) < 2:
        raise SystemExit(f"usage: {sys.argv[0]} OUT_DIR SCENARIO [SCENARIO ...]; scenarios: {sorted(SCENARIOS)}")
    out, scenarios = argv[0], argv[1:]
    for scenario in scenarios:  # every name checked before any launch
        parse(scenario)
    for scenario in scenarios:
        name, mode = parse(scenario)
        path = os.path.join(out, folder(scenario))
        os.makedirs(path, exist_ok=True)
        run = importlib.import_module(SCENARIOS[name][0]).run  # imported here: the conftest imports this file for `folder`
        torch.manual_seed(FRESH_SEED)
        try:
            run(path, mode)
        except BaseException:
            rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
            print(f"ddp_scenarios: scenario {scenario} failed on rank {rank}", file=sys.stderr, flush=True)
            raise
        rank = torch.distributed.get_rank()
        open(os.path.join(path, f"done.rank{rank}"), "w").close()
        print(f"ddp_scenarios: scenario {scenario} done on rank {rank}", file=sys.stderr, flush=True)
    # Tear gloo down before interpreter exit; a live process group can abort at shutdown.
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1:])
