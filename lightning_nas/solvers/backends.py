"""Which Pyomo solvers are usable here, a solver by name with a clear error when it is not, and one
way to run any of them (options in each solver's own names, persistent interfaces, licence limits).

Formulations are built as solver-agnostic Pyomo models; any name :func:`available_solvers`
reports can solve them. Pyomo's interfaces do not agree on how a time limit or a MIP gap is given
(its direct interfaces to Gurobi and CPLEX silently ignore ``solve(timelimit=...)``), so
:func:`solver_options` writes them in the option names of each solver family, the one channel
every interface (shell, direct, persistent, APPSI) passes to the solver.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import re
from collections.abc import Mapping
from typing import Any

__all__ = [
    "KNOWN_SOLVERS",
    "MIQCP_FAMILIES",
    "SolverLicenseError",
    "available_solvers",
    "check_time_limit",
    "get_solver",
    "miqcp_solvers",
    "run_solver",
    "solver_family",
    "solver_options",
]

# Names Pyomo's SolverFactory understands for the MILP/MIQCP solvers we target, preferred first:
# the free solvers without size limits (HiGHS for the MILP, SCIP through pyscipopt for the MIQCP),
# then the commercial ones, whose pip wheels carry size-limited licences.
KNOWN_SOLVERS = (
    "appsi_highs", "highs",
    "scip_direct", "scip_persistent", "scip",
    "gurobi_direct", "gurobi_persistent", "appsi_gurobi", "gurobi",
    "cplex_direct", "cplex_persistent", "appsi_cplex", "cplex",
    "cbc", "appsi_cbc", "glpk",
    "xpress_direct", "xpress_persistent", "xpress",
)

# Families whose solvers accept products of binaries (non-convex quadratic constraints).
MIQCP_FAMILIES = ("scip", "gurobi", "cplex", "xpress")

_FAMILIES = ("highs", "gurobi", "cplex", "scip", "cbc", "glpk", "xpress")
_SUFFIXES = ("_direct_minlp", "_direct_v2", "_persistent_v2", "_direct", "_persistent")


class SolverLicenseError(RuntimeError):
    """The solver refused the model because of its licence (size-limited, missing or expired).

    Attributes:
        solver: the Pyomo solver name.
        limit: what was hit, in words.
    """

    def __init__(self, message: str, solver: str, limit: str) -> None:
        super().__init__(message)
        self.solver, self.limit = solver, limit


def solver_family(name: str) -> str | None:
    """The solver behind a Pyomo solver name (``"gurobi"`` for ``gurobi_persistent``, ``appsi_gurobi``...),
    or ``None`` for a solver this library does not know the option names of."""
    base = name[len("appsi_"):] if name.startswith("appsi_") else name
    for suffix in _SUFFIXES:
        if base.endswith(suffix):
            base = base[: -len(suffix)]
            break
    return base if base in _FAMILIES else None


def check_time_limit(time_limit: Any, name: str = "time_limit") -> float | None:
    """``time_limit`` as a float, or ``None``.

    Raises:
        ValueError: unless it is ``None`` or a positive finite number of seconds (a NaN compares
            false with everything, so it would otherwise pass as "no limit").
    """
    if time_limit is None:
        return None
    if isinstance(time_limit, bool) or not isinstance(time_limit, (int, float)) or not math.isfinite(time_limit) or time_limit <= 0:
        raise ValueError(f"`{name}` must be a positive finite number of seconds or None, got {time_limit!r}")
    return float(time_limit)


def _check_gap(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ValueError(f"`{name}` must be a finite number >= 0, got {value!r}")
    return float(value)


def solver_options(solver: str, *, time_limit: float | None = None, rel_gap: float | None = None,
                   abs_gap: float | None = None) -> dict[str, Any]:
    """A time limit (seconds) and relative / absolute MIP gaps in the option names of ``solver``'s family.

    Raises:
        ValueError: a bad value, or a time limit for a solver whose option this library does not
            know (it would be ignored: pass the solver's own option in ``solver_options``).
    """
    family = solver_family(solver)
    time_limit = check_time_limit(time_limit)
    out: dict[str, Any] = {}
    if rel_gap is not None:
        rel_gap = _check_gap(rel_gap, "rel_gap")
    if abs_gap is not None:
        abs_gap = _check_gap(abs_gap, "abs_gap")
    if family == "highs":
        out.update(time_limit=time_limit, mip_rel_gap=rel_gap, mip_abs_gap=abs_gap)
    elif family == "gurobi":
        out.update(TimeLimit=time_limit, MIPGap=rel_gap, MIPGapAbs=abs_gap)
    elif family == "cplex":
        # Pyomo's CPLEX interfaces split a key at "_" into the path of cplex.parameters.
        out.update(timelimit=time_limit, mip_tolerances_mipgap=rel_gap, mip_tolerances_absmipgap=abs_gap)
    elif family == "scip":
        out.update({"limits/time": time_limit, "limits/gap": rel_gap, "limits/absgap": abs_gap})
    elif family == "cbc":
        # CBC counts CPU seconds unless told otherwise; a limit is meant as wall time.
        out.update(sec=time_limit, ratioGap=rel_gap, allowableGap=abs_gap)
        if time_limit is not None:
            out["timeMode"] = "elapsed"
    elif family == "glpk":
        # glpsol's --tmlim takes whole seconds; rounding down could make it 0, which means no limit.
        out.update(tmlim=None if time_limit is None else math.ceil(time_limit), mipgap=rel_gap)
    elif family == "xpress":
        # MAXTIME is in whole seconds and 0 means no limit.
        out.update(maxtime=None if time_limit is None else math.ceil(time_limit), miprelstop=rel_gap, mipabsstop=abs_gap)
    elif time_limit is not None:
        raise ValueError(
            f"`time_limit` cannot be passed to solver {solver!r}: this library knows the time-limit option of the "
            f"{', '.join(_FAMILIES)} solvers only (Pyomo's own `timelimit` is ignored by some interfaces); "
            "give the solver's own option in `solver_options` instead"
        )
    return {k: v for k, v in out.items() if v is not None}


def _factory(name: str) -> Any:
    import pyomo.environ  # noqa: F401 - registers the solver plugins
    from pyomo.opt import SolverFactory

    # Probing an absent solver makes Pyomo log a traceback, and CPLEX's size-limited edition prints
    # its banner: here absence is an answer, not an error.
    logger = logging.getLogger("pyomo")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        return SolverFactory(name)
    finally:
        logger.setLevel(level)


def _is_available(name: str) -> bool:
    logger = logging.getLogger("pyomo")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            return bool(_factory(name).available(exception_flag=False))
    except Exception:  # noqa: BLE001 - a broken plugin means "not available"
        return False
    finally:
        logger.setLevel(level)


def available_solvers(candidates: tuple[str, ...] = KNOWN_SOLVERS) -> list[str]:
    """The names in ``candidates`` whose solver is installed and licensed on this machine."""
    if isinstance(candidates, str) or not all(isinstance(name, str) for name in candidates):
        raise ValueError(f"`candidates` must be a sequence of solver names (a tuple or list), got {candidates!r}")
    return [name for name in candidates if _is_available(name)]


def miqcp_solvers() -> list[str]:
    """The installed solvers that can take ``method="miqcp"`` (products of binaries in constraints),
    preferred first: SCIP (free, no size limit, proves optimality) before the size-limited commercial ones."""
    return [name for name in available_solvers() if solver_family(name) in MIQCP_FAMILIES]


def get_solver(name: str = "appsi_highs") -> Any:
    """A Pyomo solver object by ``SolverFactory`` name.

    Raises:
        ValueError: when ``name`` is unknown or not installed, listing the solvers that are.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"`solver` must be a Pyomo solver name, got {name!r}")
    if not _is_available(name):
        hint = ""
        if solver_family(name) == "scip":
            hint = " (SCIP comes with `pip install pyscipopt`, as 'scip_direct'; the 'scip' executable is not part of it)"
        raise ValueError(f"solver {name!r} is not available here{hint}; installed: {available_solvers()!r}")
    return _factory(name)


# Messages the size-limited or unlicensed solvers raise: (pattern, what was hit, why the model was refused).
_LICENCE_ERRORS = (
    (re.compile(r"Model too large for size-limited license", re.I), "Gurobi's size limit",
     "it exceeds Gurobi's size-limited licence (the pip wheel's: it caps the variables and constraints, and far "
     "lower the variables in quadratic terms, which method='miqcp' has)"),
    (re.compile(r"CPLEX Error\s+1016|Problem size limits exceeded", re.I), "CPLEX's size limit",
     "it exceeds CPLEX Community Edition's size limits (at most 1,000 variables and 1,000 constraints)"),
    (re.compile(r"No Gurobi license|license (?:has )?expired|licen[cs]e .*not (?:found|valid)|Licensing problem", re.I),
     "no valid licence", "the solver has no valid licence here (missing or expired)"),
)


def _licence_error(err: BaseException, solver: str, model: Any) -> SolverLicenseError | None:
    text = str(err)
    for pattern, limit, why in _LICENCE_ERRORS:
        if pattern.search(text):
            size = ""
            with contextlib.suppress(Exception):
                size = f" (this model: {model.nvariables():,} variables, {model.nconstraints():,} constraints)"
            return SolverLicenseError(
                f"solver {solver!r} refused the model{size}: {why}. Use solver='appsi_highs' for method='milp' "
                "(free, no size limit; the default) or solver='scip_direct' for method='miqcp' (`pip install pyscipopt`), "
                f"or install a full licence. Solver message: {text.strip()}",
                solver, limit,
            )
    return None


def run_solver(name: str, model: Any, *, time_limit: float | None = None, rel_gap: float | None = None,
               abs_gap: float | None = None, extra: Mapping[str, Any] | None = None) -> Any:
    """Solve ``model`` with solver ``name`` and return Pyomo's results, without loading the solution.

    A fresh solver object each call; persistent interfaces get the model with ``set_instance``
    first. ``extra`` are solver options passed unchanged (they override the mapped ones).

    Raises:
        ValueError: the solver is not installed, or a bad option value.
        SolverLicenseError: the solver's licence refused the model (size limit, no licence).
    """
    options = solver_options(name, time_limit=time_limit, rel_gap=rel_gap, abs_gap=abs_gap)
    if extra is not None:
        if not isinstance(extra, Mapping) or not all(isinstance(k, str) for k in extra):
            raise ValueError(f"`solver_options` must be a mapping of option names to values, got {extra!r}")
        options.update(extra)
    opt = get_solver(name)
    from pyomo.solvers.plugins.solvers.persistent_solver import PersistentSolver

    try:
        if isinstance(opt, PersistentSolver):
            # Pyomo's persistent interfaces keep the model inside the solver; solve(model) alone refuses.
            opt.set_instance(model)
        results = opt.solve(model, load_solutions=False, options=options)
    except SolverLicenseError:
        raise
    except Exception as err:
        licence = _licence_error(err, name, model)
        if licence is not None:
            raise licence from err
        raise
    _explain_cplex_error(opt, results)
    return results


def _explain_cplex_error(opt: Any, results: Any) -> None:
    """Pyomo's CPLEX interfaces report statuses they do not map as a bare "error" (direct, persistent:
    with a meaningless solution) or "unknown" (APPSI); among them 108, the time limit reached
    before any integer solution."""
    from pyomo.opt import SolverStatus, TerminationCondition

    if results.solver.termination_condition not in (TerminationCondition.error, TerminationCondition.unknown):
        return
    cpx = getattr(opt, "_solver_model", None) or getattr(opt, "_cplex_model", None)  # direct / persistent, APPSI
    try:
        code = cpx.solution.get_status()
        text = cpx.solution.get_status_string()
    except Exception:  # noqa: BLE001 - not a CPLEX interface, or no status to read
        return
    results.solver.message = f"CPLEX status {code}: {text}"
    if code == 108:  # CPXMIP_TIME_LIM_INFEAS
        results.solver.status = SolverStatus.aborted
        results.solver.termination_condition = TerminationCondition.maxTimeLimit
        results.solution.clear()
