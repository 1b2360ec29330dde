"""Mathematical-programming layer: Pyomo formulations solved by any installed backend, and the
constrained architecture search built on them (exact MILP, MIQCP, BCFW, evolution) and MathNAS's 0-1 linear-fractional program."""

from lightning_nas.solvers.backends import (
    KNOWN_SOLVERS,
    SolverLicenseError,
    available_solvers,
    get_solver,
    miqcp_solvers,
    solver_options,
)
from lightning_nas.solvers.fractional import FRACTIONAL_METHODS, CharnesCooperModel, FractionalProblem, solve_fractional
from lightning_nas.solvers.problem import (
    FEASIBILITY_TOL,
    ConstrainedProblem,
    InfeasibleError,
    Limit,
    NotOptimalError,
    NotOptimalWarning,
    SearchFailedError,
    SearchResult,
)
from lightning_nas.solvers.search import METHODS, pareto_sweep, search_constrained
from lightning_nas.solvers.verification import MeasuredObjective, with_measured_objective

__all__ = [
    "FEASIBILITY_TOL",
    "FRACTIONAL_METHODS",
    "CharnesCooperModel",
    "FractionalProblem",
    "KNOWN_SOLVERS",
    "MeasuredObjective",
    "METHODS",
    "ConstrainedProblem",
    "InfeasibleError",
    "Limit",
    "NotOptimalError",
    "NotOptimalWarning",
    "SearchFailedError",
    "SearchResult",
    "SolverLicenseError",
    "available_solvers",
    "get_solver",
    "miqcp_solvers",
    "solver_options",
    "pareto_sweep",
    "search_constrained",
    "solve_fractional",
    "with_measured_objective",
]
