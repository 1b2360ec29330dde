"""Every strategy resumes after ``kill -9``: nothing lost, nothing evaluated twice, the same search as one run."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from lightning_nas.strategies.driver import run_search
from lightning_nas.strategies.storage import SQLiteStorage

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
from resume_all import STRATEGIES, budget, run  # noqa: E402
from synthetic import SyntheticEvaluator, done_count, kill_9_when  # noqa: E402

torch.set_num_threads(1)
SIZE = 24  # evaluations (multi-fidelity: SIZE / 4 equivalent evaluations)
KILL_AFTER = 5  # done trials every search must have stored before the kill


def test_every_strategy_resumes_after_kill_9(tmp_path: Path) -> None:
    """Also the driver's kill -9 test: the "evolution" search is the one test_driver.py used to kill in a process of
    its own (same strategy, evaluator and budget); its checks are all here (stopped before the end, as the resumed
    search is longer than what was killed and as long as the straight one; numbered 0..n-1, all done, the straight
    run's archs, none twice)."""
    names = list(STRATEGIES)
    kill_9_when([str(HERE / "resume_all.py"), str(tmp_path), str(SIZE), "0.03", *names],
                lambda: min(done_count(tmp_path / f"{n}.db") for n in names) >= KILL_AFTER)
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
