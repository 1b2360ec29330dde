"""Every strategy resumes after ``kill -9``: nothing lost, nothing evaluated twice, the same search as one run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from lightning_nas.strategies.driver import run_search
from lightning_nas.strategies.storage import SQLiteStorage

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
from resume_all import STRATEGIES, budget, run  # noqa: E402
from synthetic import SyntheticEvaluator, done_count  # noqa: E402

torch.set_num_threads(1)
SIZE = 24  # evaluations (multi-fidelity: SIZE / 4 equivalent evaluations)
KILL_AFTER = 5  # done trials every search must have stored before the kill


def test_every_strategy_resumes_after_kill_9(tmp_path: Path) -> None:
    names = list(STRATEGIES)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, str(HERE / "resume_all.py"), str(tmp_path), str(SIZE), "0.03", *names],
                            env=env)
    try:
        deadline = time.monotonic() + 300  # a loaded machine: importing lightning alone can take a minute
        while (min(done_count(tmp_path / f"{n}.db") for n in names) < KILL_AFTER and time.monotonic() < deadline
               and proc.poll() is None):
            time.sleep(0.05)
        assert proc.poll() is None, "the searches finished before they could be killed"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    for name in names:
        db = tmp_path / f"{name}.db"
        killed_at = done_count(db)
        assert killed_at >= KILL_AFTER, name
        run(name, db, SIZE, 0.0)  # resume in process: same strategy, evaluator and budget as the script
        resumed = SQLiteStorage(db).trials()
        straight = run_search(STRATEGIES[name][0](), SyntheticEvaluator(), objective="accuracy",
                              budget=budget(name, SIZE))
        assert len(resumed) > killed_at, name
        assert [r.number for r in resumed] == list(range(len(resumed))), name
        assert all(r.state == "done" for r in resumed), name
        assert [(r.arch, r.fidelity) for r in resumed] == [(r.arch, r.fidelity) for r in straight.done], name
        keys = [(tuple(r.arch.values()), r.fidelity) for r in resumed]
        assert len(set(keys)) == len(keys), f"{name}: an arch was evaluated twice at one fidelity"
