"""Which Pyomo solvers are usable here, and a solver by name with a clear error when it is not.

Formulations (later) are built as solver-agnostic Pyomo models; any name below that
:func:`available_solvers` reports can solve them.
"""

from __future__ import annotations

import logging
from typing import Any

__all__ = ["KNOWN_SOLVERS", "available_solvers", "get_solver"]

# Names Pyomo's SolverFactory understands for the MILP/MIQCP solvers we target, preferred first.
KNOWN_SOLVERS = ("appsi_highs", "highs", "gurobi", "gurobi_direct", "cplex", "cplex_direct", "scip", "cbc", "glpk", "xpress")


def _factory(name: str) -> Any:
    import pyomo.environ  # noqa: F401 - registers the solver plugins
    from pyomo.opt import SolverFactory

    # Probing an absent solver makes Pyomo log a traceback; here absence is an answer, not an error.
    logger = logging.getLogger("pyomo")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        return SolverFactory(name)
    finally:
        logger.setLevel(level)


def available_solvers(candidates: tuple[str, ...] = KNOWN_SOLVERS) -> list[str]:
    """The names in ``candidates`` whose solver is installed and licensed on this machine."""
    found = []
    for name in candidates:
        try:
            if _factory(name).available(exception_flag=False):
                found.append(name)
        except Exception:  # noqa: BLE001 - a broken plugin means "not available"
            continue
    return found


def get_solver(name: str = "appsi_highs") -> Any:
    """A Pyomo solver object by ``SolverFactory`` name.

    Raises:
        ValueError: when ``name`` is unknown or not installed, listing the solvers that are.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"`solver` must be a Pyomo solver name, got {name!r}")
    try:
        solver = _factory(name)
        ok = solver.available(exception_flag=False)
    except Exception:  # noqa: BLE001
        ok = False
    if not ok:
        raise ValueError(f"solver {name!r} is not available here; installed: {available_solvers()!r}")
    return solver
