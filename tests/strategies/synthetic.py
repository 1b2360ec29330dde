"""A small synthetic search problem with a known optimum (importable by subprocess scripts)."""

from __future__ import annotations

import itertools
import math
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from collections.abc import Callable
from typing import Any

import numpy as np

from lightning_nas.spaces.search_space import Decision, SearchSpace


def synthetic_space(n_layers: int = 4, n_values: int = 4) -> SearchSpace:
    return SearchSpace([Decision(f"l{i}", tuple(range(n_values)), 0) for i in range(n_layers)])


class SyntheticEvaluator:
    """Accuracy: per-layer scores plus an interaction of neighbouring layers; cost: additive per layer.

    The low fidelity (``fidelity < full_fidelity``) is a damped, slightly reordered version of the
    accuracy, as short training is.
    """

    full_fidelity = 10.0
    report_only = ("test_accuracy",)

    def __init__(self, n_layers: int = 4, n_values: int = 4, seed: int = 0, delay: float = 0.0) -> None:
        rng = np.random.default_rng(seed)
        self.n_layers, self.n_values, self.delay = n_layers, n_values, delay
        self.score = rng.normal(size=(n_layers, n_values))
        self.pair = 0.5 * rng.normal(size=(n_layers - 1, n_values, n_values))
        self.layer_cost = rng.uniform(1.0, 3.0, size=(n_layers, n_values)).round(3)
        self.noise = 0.3 * rng.normal(size=(n_values,) * n_layers)

    def accuracy(self, arch: dict[str, Any]) -> float:
        v = [int(arch[f"l{i}"]) for i in range(self.n_layers)]
        total = sum(self.score[i, x] for i, x in enumerate(v))
        total += sum(self.pair[i, v[i], v[i + 1]] for i in range(self.n_layers - 1))
        return float(total)

    def costs(self, arch: dict[str, Any]) -> dict[str, float]:
        return {"cost": float(sum(self.layer_cost[i, int(arch[f"l{i}"])] for i in range(self.n_layers)))}

    def __call__(self, arch: dict[str, Any], fidelity: float) -> dict[str, float]:
        if self.delay:
            time.sleep(self.delay)
        acc = self.accuracy(arch)
        if fidelity < self.full_fidelity:
            idx = tuple(int(arch[f"l{i}"]) for i in range(self.n_layers))
            acc = 0.8 * acc + float(self.noise[idx])
        return {"accuracy": acc, "test_accuracy": acc + 0.01, **self.costs(arch)}

    def all_archs(self) -> list[dict[str, int]]:
        return [{f"l{i}": v for i, v in enumerate(c)}
                for c in itertools.product(range(self.n_values), repeat=self.n_layers)]

    def optimum(self, max_cost: float = math.inf) -> float:
        return max(self.accuracy(a) for a in self.all_archs() if self.costs(a)["cost"] <= max_cost)


class WhereEvaluator(SyntheticEvaluator):
    """The synthetic evaluator, also reporting the process it ran in (``pid``)."""

    def __call__(self, arch: dict[str, Any], fidelity: float) -> dict[str, float]:
        import os

        return {**super().__call__(arch, fidelity), "pid": float(os.getpid())}


class FlakyEvaluator(SyntheticEvaluator):
    """The synthetic evaluator with a NaN objective when ``l0 == 0`` and +inf when ``l0 == 1 and l1 == 0``."""

    def __call__(self, arch: dict[str, Any], fidelity: float) -> dict[str, float]:
        out = super().__call__(arch, fidelity)
        if int(arch["l0"]) == 0:
            out["accuracy"] = math.nan
        elif int(arch["l0"]) == 1 and int(arch["l1"]) == 0:
            out["accuracy"] = math.inf
        return out


class HangingEvaluator(SyntheticEvaluator):
    """Hangs forever when ``l0 == 1`` (after starting a ``sleep`` child whose pid goes to ``pid_dir``)."""

    def __init__(self, pid_dir: str) -> None:
        super().__init__()
        self.pid_dir = pid_dir

    def __call__(self, arch: dict[str, Any], fidelity: float) -> dict[str, float]:
        if int(arch["l0"]) == 1:
            import os
            import subprocess

            child = subprocess.Popen(["sleep", "600"])
            with open(os.path.join(self.pid_dir, f"{child.pid}.pid"), "w"):
                pass
            while True:
                time.sleep(1)
        return super().__call__(arch, fidelity)


def done_count(db: Path) -> int:
    """Trials stored as done in the SQLite search file ``db`` (0 while it does not exist yet)."""
    try:
        with sqlite3.connect(str(db), timeout=5.0) as con:
            return con.execute("SELECT COUNT(*) FROM trials WHERE state = 'done'").fetchone()[0]
    except sqlite3.OperationalError:
        return 0


def kill_9_when(arguments: list[str], ready: Callable[[], bool], *, poll: float = 0.05) -> None:
    """Run ``python arguments...`` (one torch thread) and SIGKILL it as soon as ``ready()`` holds.

    Fails when the process ends before it could be killed; waits up to 300 s for ``ready`` (on a
    loaded machine importing lightning alone can take a minute).
    """
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, *arguments], env=env)
    try:
        deadline = time.monotonic() + 300
        while not ready() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(poll)
        assert proc.poll() is None, "the search finished before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
