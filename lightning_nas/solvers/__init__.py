"""Mathematical-programming layer: Pyomo formulations solved by any installed backend."""

from lightning_nas.solvers.backends import KNOWN_SOLVERS, available_solvers, get_solver

__all__ = ["KNOWN_SOLVERS", "available_solvers", "get_solver"]
