"""Run (or resume) a random-search / evolution search on the synthetic problem, stored in SQLite.

Usage: python resume_script.py DB_PATH BUDGET DELAY
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from synthetic import SyntheticEvaluator, synthetic_space  # noqa: E402

from lightning_nas.strategies.driver import Budget, run_search  # noqa: E402
from lightning_nas.strategies.evolution import RegularizedEvolution  # noqa: E402

if __name__ == "__main__":
    db, budget, delay = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    strategy = RegularizedEvolution(synthetic_space(), seed=3, population=6, sample=3)
    run_search(strategy, SyntheticEvaluator(delay=delay), objective="accuracy", budget=Budget(evaluations=budget),
               storage=db)
