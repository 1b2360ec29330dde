"""The `ddp_runs` fixture: the 2-process DDP scenarios of the selected tests, run once, in one launch."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from ddp_scenarios import folder  # noqa: E402  (only the names: the scenario modules are imported by the launch)

SCENARIO_SCRIPT = Path(__file__).with_name("ddp_scenarios.py")
SECONDS_PER_SCENARIO = 300  # each scenario's allowance under a loaded machine, as when each had its own launch


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "ddp_scenario(name): the ddp_scenarios.py scenario ('name' or 'name:mode') whose outputs the test reads"
    )


class DdpRuns:
    """The result of one ddp_scenarios.py launch; `runs(scenario)` is that scenario's output folder."""

    def __init__(self, out: Path, scenarios: list[str], done: subprocess.CompletedProcess) -> None:
        self.out, self.scenarios, self.done = out, scenarios, done

    def __call__(self, scenario: str) -> Path:
        assert scenario in self.scenarios, f"scenario {scenario!r} was not run: mark the test with ddp_scenario({scenario!r})"
        failed = re.findall(r"ddp_scenarios: scenario (\S+) failed on rank (\d)", self.done.stderr)
        where = "; ".join(f"scenario {s} failed on rank {r}" for s, r in failed) or "no scenario reported a failure"
        assert self.done.returncode == 0, (
            f"ddp_scenarios.py {' '.join(self.scenarios)} exited with {self.done.returncode} ({where}); stderr tail:\n"
            f"{self.done.stderr[-3000:]}"
        )
        path = self.out / folder(scenario)
        assert all((path / f"done.rank{r}").exists() for r in (0, 1)), f"scenario {scenario} did not finish on both ranks"
        return path


@pytest.fixture(scope="session")
def ddp_runs(request, tmp_path_factory) -> DdpRuns:
    """Runs, in one 2-process DDP launch, the scenario of every selected test marked ddp_scenario (in collection
    order), so the start-up (imports, the second rank, gloo) is paid once per session instead of once per test."""
    scenarios = []
    for item in request.session.items:
        marker = item.get_closest_marker("ddp_scenario")
        if marker is not None and marker.args[0] not in scenarios:
            scenarios.append(marker.args[0])
    out = tmp_path_factory.mktemp("ddp_scenarios")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "MASTER_"))}
    command = [sys.executable, str(SCENARIO_SCRIPT), str(out), *scenarios]
    try:
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=SECONDS_PER_SCENARIO * max(1, len(scenarios)))
    except subprocess.TimeoutExpired as e:  # reported by each test, with the scenarios that finished
        stderr = e.stderr.decode(errors="replace") if isinstance(e.stderr, bytes) else e.stderr or ""
        done = subprocess.CompletedProcess(command, -1, "", f"{stderr}\nddp_runs: timed out after {e.timeout} s")
    return DdpRuns(out, scenarios, done)
