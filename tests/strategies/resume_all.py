"""Run (or resume) several strategies side by side on the synthetic problem, one SQLite file each.

Each strategy runs in its own thread, so one process start (and one ``kill -9``) covers them all.
:data:`STRATEGIES` is imported by the test, which resumes each search from its file in process.

Usage: python resume_all.py DIR BUDGET DELAY NAME [NAME ...]   (files: DIR/NAME.db)
"""

import sys
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import torch  # noqa: E402
from synthetic import SyntheticEvaluator, synthetic_space  # noqa: E402

from lightning_nas.strategies.bo import BayesianOptimization  # noqa: E402
from lightning_nas.strategies.driver import Budget, run_search  # noqa: E402
from lightning_nas.strategies.evolution import RegularizedEvolution  # noqa: E402
from lightning_nas.strategies.layernas import LayerNAS  # noqa: E402
from lightning_nas.strategies.rank_nosh import RankNOSH  # noqa: E402

SMALL = dict(members=2, trunk=(16,), branch=8, steps=15)
COSTS = SyntheticEvaluator().costs
#: name -> (make strategy, budget kind): "evaluations" or "equivalent" (multi-fidelity).
STRATEGIES = {
    "evolution": (lambda: RegularizedEvolution(synthetic_space(), seed=3, population=6, sample=3), "evaluations"),
    "layernas": (lambda: LayerNAS(synthetic_space(), seed=3, cost_model=COSTS, cost="cost", buckets=3, per_bucket=1),
                 "evaluations"),
    "bo": (lambda: BayesianOptimization(synthetic_space(), seed=3, batch_size=3, initial=3, cost_model=COSTS,
                                        pretrain_metrics=["cost"], pretrain_archs=32, pretrain_steps=10, **SMALL),
           "evaluations"),
    "bo_mf": (lambda: BayesianOptimization(synthetic_space(), seed=3, fidelities=(2.5, 10.0), p=2, q=1, f=2, initial=2,
                                           warm_start=True, **SMALL), "equivalent"),
    "rank_nosh": (lambda: RankNOSH(synthetic_space(), seed=3, levels=(2.5, 10.0), new_per_round=3, **SMALL),
                  "equivalent"),
}


def budget(name: str, size: int) -> Budget:
    """``size`` evaluations, or for multi-fidelity strategies ``size / 4`` equivalent evaluations."""
    return Budget(evaluations=size) if STRATEGIES[name][1] == "evaluations" else Budget(equivalent_evaluations=size / 4)


def run(name: str, db: Path, size: int, delay: float) -> None:
    run_search(STRATEGIES[name][0](), SyntheticEvaluator(delay=delay), objective="accuracy", budget=budget(name, size),
               storage=db)


if __name__ == "__main__":
    torch.set_num_threads(1)
    folder, size, delay, names = Path(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), sys.argv[4:]
    threads = [threading.Thread(target=run, args=(n, folder / f"{n}.db", size, delay)) for n in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
