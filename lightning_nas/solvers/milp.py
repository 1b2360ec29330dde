"""Exact constrained search: BINAS's IQCQP (Eq. 6/7) as a mixed-integer *linear* program.

With ``β^s_j`` the binary depth choice of stage ``s`` and ``a^s_b = Σ_{j: depth_j > b} β^s_j``
(block ``b`` runs), every term of a :class:`~lightning_nas.bilinear.BilinearTable` is linear in
``w^s_{b,c} = α^s_{b,c} · a^s_b`` (reference note §9)::

    value = constant + Σ_{s,j} depth[s,j] β^s_j + Σ_{s,b,c} block[s,b,c] w^s_{b,c}

Two exact formulations:

* ``"compact"`` (default): ``w`` binary with ``Σ_c w^s_{b,c} = a^s_b``; ``α`` is dropped (the
  config of a block that does not run does not matter).
* ``"alpha"``: ``α`` binary with ``Σ_c α = 1``, ``w`` continuous with ``0 ≤ w ≤ α`` and
  ``Σ_c w = a`` (McCormick, exact for binaries).

Blocks active at every depth have ``a = 1``; stages with a single depth option have no ``β``; block
positions beyond a stage's largest depth have no variables. Limits are mutable Pyomo parameters,
so a :class:`MilpModel` is built once and re-solved for many targets (the solver receives the
model afresh each time, see :meth:`MilpModel.solve`).

``method="miqcp"`` builds the bilinear form itself (binary ``α``, ``β``, quadratic objective and
constraints) for solvers that accept non-convex quadratics (Gurobi, CPLEX, SCIP, Xpress).
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np

from lightning_nas.solvers.backends import (
    MIQCP_FAMILIES,
    available_solvers,
    check_time_limit,
    miqcp_solvers,
    run_solver,
    solver_family,
    solver_options as _solver_options,
)
from lightning_nas.solvers.problem import (
    ConstrainedProblem,
    InfeasibleError,
    Limit,
    NotOptimalError,
    NotOptimalWarning,
    SearchResult,
    check_top_k,
    max_extreme,
)

__all__ = [
    "FORMULATIONS",
    "MilpModel",
    "build_miqcp",
    "check_reported_objective",
    "diagnose_infeasibility",
    "dominated_configs",
    "set_miqcp_arch",
    "solve_milp",
    "solve_miqcp",
]

FORMULATIONS = ("compact", "alpha")

def _pyo():
    import pyomo.environ as pyo

    return pyo


def gap_options(solver: str, rel_gap: float, abs_gap: float) -> dict[str, float]:
    """Solver-specific options for a relative and an absolute MIP gap (empty for unknown solvers)."""
    return _solver_options(solver, rel_gap=rel_gap, abs_gap=abs_gap)


def dominated_configs(criteria: list[tuple[np.ndarray, int]], exists: np.ndarray | None = None,
                      groups: np.ndarray | None = None) -> np.ndarray:
    """``(S, D, C)`` bool: configs another config of the same block position beats or ties on every
    table, and configs that do not exist.

    Args:
        criteria: ``(block (S, D, C), direction)`` per table: ``+1`` larger is better, ``-1``
            smaller is better, ``0`` must be equal (a resource with both bounds).
        exists: ``(S, D, C)`` bool, the configs that exist (default: all).
        groups: ``(S, D, C)`` int; a config only competes with configs of its own group (the
            ones with the same values of the shared decisions, see
            :meth:`~lightning_nas.spaces.staged.StagedSpace.shared_groups`).

    A dominated config can be swapped for its dominator in any arch without losing feasibility or
    objective (tables are additive, both configs run under the same depths and set the shared
    decisions alike), so removing it is exact. Of several identical configs the first is kept.
    """
    values = np.stack([d * blk if d else blk for blk, d in criteria])  # (T, S, D, C)
    signs = np.array([d for _, d in criteria])[:, None, None, None, None]
    diff = values[..., :, None] - values[..., None, :]  # [.., c', c] = v[c'] - v[c]
    free = signs != 0
    geq = np.where(free, diff >= 0, diff == 0).all(0)
    gt = np.where(free, diff > 0, False).any(0)
    C = values.shape[-1]
    earlier = np.tri(C, k=-1, dtype=bool).T  # [c', c]: c' < c
    beats = geq & (gt | earlier) & ~np.eye(C, dtype=bool)
    if exists is None:
        exists = np.ones(values.shape[1:], dtype=bool)
    beats &= exists[..., :, None]  # only real configs dominate
    if groups is not None:
        beats &= groups[..., :, None] == groups[..., None, :]
    return beats.any(-2) | ~exists


class _Index:
    """Variable index sets of a problem's structure (shared by the MILP and MIQCP builders).

    With ``criteria`` (see :func:`dominated_configs`) only the configs no other config dominates
    get variables. ``links`` ties the blocks reading a shared decision to its one-hot value
    variables: ``(decision k, stage, block, value v, configs of that block with value v)``.
    """

    def __init__(self, problem: ConstrainedProblem, criteria: list[tuple[np.ndarray, int]] | None = None) -> None:
        st = problem.staged
        self.C = st.num_configs
        self.blocks = [(s, b) for s in range(st.num_stages) for b in range(st.max_blocks) if problem.can_be_active[s, b]]
        exists = st.config_exists()
        dominated = dominated_configs(criteria, exists, st.shared_groups()) if criteria else ~exists
        self.configs = {(s, b): [c for c in range(self.C) if not dominated[s, b, c]] for s, b in self.blocks}
        self.w = [(s, b, c) for s, b in self.blocks for c in self.configs[s, b]]
        self.free_stages = [s for s in range(st.num_stages) if problem.num_depths[s] > 1]
        self.beta = [(s, j) for s in self.free_stages for j in range(problem.num_depths[s])]
        # Per (s, b): the β indices whose depth reaches block b; None when the block always runs.
        self.reach: dict[tuple[int, int], list[tuple[int, int]] | None] = {}
        for s, b in self.blocks:
            if problem.always_active[s, b]:
                self.reach[s, b] = None
            else:
                self.reach[s, b] = [(s, j) for j in range(problem.num_depths[s]) if problem.depth_values[s, j] > b]
        # Depth terms of single-option stages are constants.
        self.fixed_depth = [s for s in range(st.num_stages) if problem.num_depths[s] == 1]
        self.shared = [(label, len(st.space[label].values)) for label in st.shared_labels]
        self.x = [(k, v) for k, (_, n) in enumerate(self.shared) for v in range(n)]
        self.links: list[tuple[int, int, int, int, list[int]]] = []
        for k, (label, n) in enumerate(self.shared):
            decision = st.space[label]
            for s, b in st.readers[label]:
                if (s, b) not in self.configs:
                    continue  # never runs
                pos = st.stages[s].block_labels[b].index(label)
                configs = st.stages[s].configs[b]
                for v in range(n):
                    kept = [c for c in self.configs[s, b] if decision.index(configs[c][pos]) == v]
                    self.links.append((k, s, b, v, kept))

    def add_shared(self, pyo, m, onehot, running: bool) -> None:
        """One value per shared decision, and every block reading it configured with that value.

        ``onehot`` are the per-block config variables; ``running``: they sum to 1 only when the
        block runs (``w``), so the link is ``<=``; otherwise (``α``) it is ``==``.
        """
        m.X = pyo.Set(initialize=self.x, dimen=2, ordered=True)
        m.x = pyo.Var(m.X, within=pyo.Binary)
        m.one_value = pyo.Constraint(
            pyo.Set(initialize=range(len(self.shared)), ordered=True),
            rule=lambda m, k: pyo.quicksum(m.x[k, v] for v in range(self.shared[k][1])) == 1,
        )

        def link(m, i):
            k, s, b, v, kept = self.links[i]
            total = pyo.quicksum(onehot[s, b, c] for c in kept)
            return total <= m.x[k, v] if running else total == m.x[k, v]

        m.shared_link = pyo.Constraint(pyo.Set(initialize=range(len(self.links)), ordered=True), rule=link)


def _linear_expr(pyo, table, idx: _Index, w, beta, offset: bool = True):
    """``table`` as a linear Pyomo expression of ``w`` and ``β`` (constant included when ``offset``)."""
    const = (table.constant + sum(table.depth[s, 0] for s in idx.fixed_depth)) if offset else 0.0
    terms = [table.block[s, b, c] * w[s, b, c] for (s, b, c) in idx.w if table.block[s, b, c] != 0.0]
    terms += [table.depth[s, j] * beta[s, j] for (s, j) in idx.beta if table.depth[s, j] != 0.0]
    return const + pyo.quicksum(terms)


def _termination_status(tc) -> str:
    from pyomo.opt import TerminationCondition as TC

    if tc == TC.optimal:
        return "optimal"
    if tc in (TC.infeasible, TC.infeasibleOrUnbounded):
        return "infeasible"
    if tc == TC.maxTimeLimit:
        return "time_limit"
    return "feasible"


def check_reported_objective(solver: str, raw: float, incumbent: float | None, sense: str) -> None:
    """Refuse a solution whose own objective ``raw`` is not finite, or worse than the objective the solver
    reports for it (``incumbent``; ``sense`` ``"max"`` or ``"min"``): ``RuntimeError``.

    A solution *better* than reported is accepted: a solver that takes a quadratic objective as an
    auxiliary variable bounded by it (SCIP through Pyomo) may stop, at a time limit, with that variable
    short of the objective it bounds, and reports the variable. ``raw`` is the loaded solution's own
    objective, so the arch is worth it.
    """
    if sense not in ("max", "min"):
        raise ValueError(f"`sense` must be 'max' or 'min', got {sense!r}")
    if not np.isfinite(raw):
        raise RuntimeError(f"solver {solver!r} returned an arch whose objective is {raw!r}; refusing a non-finite answer")
    if incumbent is None or not np.isfinite(incumbent):
        return
    worse = incumbent - raw if sense == "max" else raw - incumbent
    if worse > 1e-6 * max(1.0, abs(raw)):
        raise RuntimeError(
            f"solver {solver!r} returned a solution whose objective ({raw!r}) is worse than the one it reports "
            f"({incumbent!r}); refusing an inconsistent answer"
        )


def _read_results(results, model, solver: str, seconds: float, *, sense: str, offset: float) -> dict[str, Any]:
    """Status, objective value, bound and gap from Pyomo's results, the solution loaded into ``model``."""
    from pyomo.opt import SolverStatus

    pyo = _pyo()
    tc = results.solver.termination_condition
    status = _termination_status(tc)
    if status == "infeasible":
        return {"status": "infeasible", "solver_seconds": seconds, "termination": str(tc)}
    if len(results.solution) == 0 or results.solver.status == SolverStatus.error:
        message = results.solver.message
        message = message if isinstance(message, str) and message else None
        return {"status": "error", "solver_seconds": seconds, "termination": str(tc), "stopped": status, "message": message}
    # Pyomo warns when it loads the solution of an aborted (time-limited) solve; the result says so itself.
    logger = logging.getLogger("pyomo.core")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        model.solutions.load_from(results)
    finally:
        logger.setLevel(level)
    if sense == "max":
        bound, incumbent = results.problem.upper_bound, results.problem.lower_bound
    else:
        bound, incumbent = results.problem.lower_bound, results.problem.upper_bound
    objective = next(model.component_data_objects(pyo.Objective, active=True))
    raw = pyo.value(objective)
    check_reported_objective(solver, raw, incumbent, sense)
    value = raw + offset
    bound = None if bound is None or not np.isfinite(bound) else float(bound) + offset
    gap = None if bound is None else abs(bound - value) / max(abs(value), 1e-12)
    return {"status": status, "value": value, "bound": bound, "gap": gap, "solver_seconds": seconds, "termination": str(tc)}


def finish_result(result: SearchResult, *, require_optimal: bool, time_limit: float | None) -> SearchResult:
    """Make a non-optimal result of an exact method explicit: a message and a
    :class:`NotOptimalWarning`, or :class:`NotOptimalError` when ``require_optimal``."""
    if result.status == "optimal":
        return result
    termination = result.details.get("termination")
    if result.status == "time_limit":
        why = f"stopped at the time limit ({time_limit!r} s)"
    elif result.status == "infeasible":
        why = f"returned an arch that violates the limits ({result.message})"
    else:
        why = f"stopped (termination: {termination})"
    gap = "no bound reported" if result.gap is None else f"relative gap {result.gap:.3g}"
    text = (f"{result.method} with solver {result.solver!r} {why} before proving optimality: the arch's objective "
            f"{result.objective!r} may not be the best ({gap}); raise `time_limit` for a proven optimum")
    if require_optimal:
        raise NotOptimalError(text, result, termination)
    result.message = text if result.status != "infeasible" else result.message
    warnings.warn(text, NotOptimalWarning, stacklevel=3)
    return result


def no_solution_error(solver: str, out: Mapping[str, Any], time_limit: float | None) -> Exception:
    """The error for a solve that ended without any arch (and without proving infeasibility)."""
    if out.get("stopped") == "time_limit":
        return NotOptimalError(
            f"solver {solver!r} stopped at the time limit ({time_limit!r} s) before finding any arch that meets the "
            "limits (none may exist); raise `time_limit`", None, out["termination"])
    detail = f"; {out['message']}" if out.get("message") else ""
    return RuntimeError(f"solver {solver!r} returned no solution (termination: {out['termination']}{detail})")


class MilpModel:
    """The MILP of a problem as a Pyomo ``ConcreteModel``, built once and solvable many times.

    Args:
        problem: the validated problem.
        formulation: ``"compact"`` or ``"alpha"`` (module docstring).
        minimise: a table to *minimise* instead of maximising the objective (used to find the
            smallest achievable value of a resource subject to the other limits).
        prune: leave out configs another config of the same block beats or ties on every table
            (exact, see :func:`dominated_configs`; a bound changed later by :meth:`set_limit`
            keeps its direction, so the pruning stays valid).
        minimise_max: ``minimise`` is a max-type table: minimise its largest running term.

    Attributes:
        model: the Pyomo model; ``model.upper[k]`` / ``model.lower[k]`` are mutable parameters of
            limit ``k`` (only for the bounds the limit has).
        build_seconds: wall time of building it.
    """

    def __init__(self, problem: ConstrainedProblem, formulation: str = "compact", minimise=None, prune: bool = True,
                 minimise_max: bool = False) -> None:
        if formulation not in FORMULATIONS:
            raise ValueError(f"`formulation` must be one of {FORMULATIONS}, got {formulation!r}")
        start = time.perf_counter()
        pyo = _pyo()
        self.problem, self.formulation = problem, formulation
        criteria = [(problem.objective.block, +1) if minimise is None else (minimise.block, -1)]
        for lim in problem.limits:
            criteria.append((lim.table.block, 0 if lim.upper is not None and lim.lower is not None else (-1 if lim.upper is not None else +1)))
        idx = self.idx = _Index(problem, criteria if prune else None)
        m = self.model = pyo.ConcreteModel(name="constrained_nas")
        m.W = pyo.Set(initialize=idx.w, dimen=3, ordered=True)
        m.Bt = pyo.Set(initialize=idx.beta, dimen=2, ordered=True)
        m.beta = pyo.Var(m.Bt, within=pyo.Binary)
        if formulation == "compact":
            m.w = pyo.Var(m.W, within=pyo.Binary)
        else:
            m.w = pyo.Var(m.W, bounds=(0.0, 1.0))
            m.alpha = pyo.Var(m.W, within=pyo.Binary)
            m.w_le_alpha = pyo.Constraint(m.W, rule=lambda m, s, b, c: m.w[s, b, c] <= m.alpha[s, b, c])
            m.one_config = pyo.Constraint(
                pyo.Set(initialize=idx.blocks, dimen=2, ordered=True),
                rule=lambda m, s, b: pyo.quicksum(m.alpha[s, b, c] for c in idx.configs[s, b]) == 1,
            )
        m.one_depth = pyo.Constraint(
            pyo.Set(initialize=idx.free_stages, ordered=True),
            rule=lambda m, s: pyo.quicksum(m.beta[s, j] for j in range(problem.num_depths[s])) == 1,
        )

        def active(m, s, b):
            reach = idx.reach[s, b]
            rhs = 1 if reach is None else pyo.quicksum(m.beta[k] for k in reach)
            return pyo.quicksum(m.w[s, b, c] for c in idx.configs[s, b]) == rhs

        m.block_active = pyo.Constraint(pyo.Set(initialize=idx.blocks, dimen=2, ordered=True), rule=active)
        if idx.shared:
            idx.add_shared(pyo, m, m.w if formulation == "compact" else m.alpha, running=formulation == "compact")
        # The constant stays out of the objective so that the solver's relative gap measures
        # the part the choice controls.
        if minimise is None:
            self.offset = problem.objective.constant + sum(problem.objective.depth[s, 0] for s in idx.fixed_depth)
            m.obj = pyo.Objective(expr=_linear_expr(pyo, problem.objective, idx, m.w, m.beta, offset=False), sense=pyo.maximize)
        elif minimise_max:
            # min z with z >= every running term: z >= floor + (entry - floor) * binary, floor = the
            # fixed terms' largest (always part of the max), exact for binaries.
            floor = max([minimise.constant] + [minimise.depth[s, 0] for s in idx.fixed_depth])
            m.z = pyo.Var(bounds=(floor, None))
            terms = [(minimise.block[s, b, c], m.w[s, b, c]) for (s, b, c) in idx.w]
            terms += [(minimise.depth[s, j], m.beta[s, j]) for (s, j) in idx.beta]
            terms = [(float(v), x) for v, x in terms if v > floor]
            m.z_above = pyo.Constraint(pyo.Set(initialize=range(len(terms)), ordered=True),
                                       rule=lambda m, i: m.z >= floor + (terms[i][0] - floor) * terms[i][1])
            self.offset = 0.0
            m.obj = pyo.Objective(expr=m.z, sense=pyo.minimize)
        else:
            self.offset = minimise.constant + sum(minimise.depth[s, 0] for s in idx.fixed_depth)
            m.obj = pyo.Objective(expr=_linear_expr(pyo, minimise, idx, m.w, m.beta, offset=False), sense=pyo.minimize)
        self.sense = "min" if minimise is not None else "max"
        self.prune = prune
        self._minimise, self._minimise_max = minimise, minimise_max
        table = problem.objective if minimise is None else minimise
        if minimise_max:
            span = max_extreme(table, largest=True)[0] - max_extreme(table)[0]
        else:
            span = table.extreme(largest=True, additive=True)[0] - table.extreme(additive=True)[0]
        self.default_abs_gap = 1e-9 * max(span, 1e-12)
        self._add_limits(pyo, m, problem.limits, lambda t: _linear_expr(pyo, t, idx, m.w, m.beta))
        self.build_seconds = time.perf_counter() - start

    def _add_limits(self, pyo, m, limits: tuple[Limit, ...], expr) -> None:
        ups = [k for k, lim in enumerate(limits) if lim.upper is not None]
        lows = [k for k, lim in enumerate(limits) if lim.lower is not None]
        m.upper = pyo.Param(ups, mutable=True, initialize={k: limits[k].upper for k in ups}, within=pyo.Reals)
        m.lower = pyo.Param(lows, mutable=True, initialize={k: limits[k].lower for k in lows}, within=pyo.Reals)
        sums = [k for k in ups if limits[k].aggregate == "sum"]
        exprs = {k: expr(limits[k].table) for k in sorted(set(sums) | set(lows))}
        m.limit_upper = pyo.Constraint(sums, rule=lambda m, k: exprs[k] <= m.upper[k])
        m.limit_lower = pyo.Constraint(lows, rule=lambda m, k: exprs[k] >= m.lower[k])
        # A maximum's upper bound, unit by unit: a configuration (a depth option) whose entry exceeds
        # the bound may not be chosen, (entry - U) * binary <= 0, exact for binaries and linear in the
        # mutable U. The constant and fixed-depth entries are checked in solve().
        idx = self.idx
        peaks = [k for k in ups if limits[k].aggregate == "max"]
        units = [(k, "w", s, b, c) for k in peaks for (s, b, c) in idx.w]
        units += [(k, "beta", s, j, 0) for k in peaks for (s, j) in idx.beta]

        def per_unit(m, i):
            k, kind, s, b, c = units[i]
            table = limits[k].table
            if kind == "w":
                return (float(table.block[s, b, c]) - m.upper[k]) * m.w[s, b, c] <= 0
            return (float(table.depth[s, b]) - m.upper[k]) * m.beta[s, b] <= 0

        m.limit_max = pyo.Constraint(pyo.Set(initialize=range(len(units)), ordered=True), rule=per_unit)

    def _fixed_terms_exceed(self) -> bool:
        """A max-type limit's bound below the part no choice changes (its constant, the entries of
        single-option stages): no arch meets it."""
        for k in self.problem.max_limits:
            table = self.problem.limits[k].table
            fixed = max([table.constant] + [table.depth[s, 0] for s in self.idx.fixed_depth])
            if fixed > float(self.model.upper[k].value) + 1e-7:
                return True
        return False

    def add_no_good(self, configs: np.ndarray, depths: np.ndarray) -> None:
        """Cut off one arch (index arrays ``(S, D)`` configs, ``(S,)`` depth indices), exactly.

        The arch sets ``n`` binaries to 1 (one ``w`` per running block, one ``β`` per stage with a
        depth choice); ``Σ_{those} ≤ n − 1`` removes it and no other arch: another arch with all
        of them at 1 has the same depths, hence the same running blocks and configs. Used for the
        k best distinct archs (:func:`solve_milp` with ``top_k``); needs a model built with
        ``prune=False``, as a pruned config may be the second best.

        Raises:
            ValueError: the model was built with ``prune=True``.
        """
        if self.prune:
            raise ValueError("no-good cuts need a MilpModel built with prune=False (pruning drops the runners-up)")
        pyo = _pyo()
        p, idx, m = self.problem, self.idx, self.model
        ones = [m.beta[s, int(depths[s])] for s in idx.free_stages]
        for s, b in idx.blocks:
            reach = idx.reach[s, b]
            if reach is None or p.depth_values[s, int(depths[s])] > b:
                ones.append(m.w[s, b, int(configs[s, b])])
        if not ones:
            raise ValueError("the space has a single arch; there is nothing to cut off")
        if not hasattr(m, "no_good"):
            m.no_good = pyo.ConstraintList()
        m.no_good.add(pyo.quicksum(ones) <= len(ones) - 1)

    def set_limit(self, k: int, upper: float | None = None, lower: float | None = None) -> None:
        """Change the bounds of limit ``k`` (only bounds it was built with)."""
        if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k < self.problem.num_limits:
            raise ValueError(f"`k` must be the index of one of the {self.problem.num_limits} limits, got {k!r}")
        for value, param, which in ((upper, self.model.upper, "upper"), (lower, self.model.lower, "lower")):
            if value is None:
                continue
            if k not in param:
                raise ValueError(f"limit {k} ({self.problem.names[k]!r}) was built without a `{which}` bound")
            if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) or not np.isfinite(value):
                raise ValueError(f"`{which}` bound of limit {k} ({self.problem.names[k]!r}) must be a finite number, got {value!r}")
            param[k] = float(value)

    def solve(self, solver: str = "appsi_highs", *, time_limit: float | None = None, rel_gap: float = 0.0,
              abs_gap: float | None = None, solver_options: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Solve to proven optimality (or until ``time_limit`` seconds).

        Args:
            solver: Pyomo solver name (must be installed; see ``available_solvers()``).
            time_limit: seconds, passed in the solver's own option (see
                :func:`~lightning_nas.solvers.backends.solver_options`).
            rel_gap: relative MIP gap at which the solver may stop (0: proven optimum).
            abs_gap: absolute MIP gap in objective units (default ``1e-9`` × the range of values
                the objective takes over the space).
            solver_options: extra options passed to the solver unchanged.

        Returns:
            dict with ``status`` (``"optimal"``, ``"time_limit"``, ``"feasible"`` (stopped by
            another limit), ``"infeasible"``, or ``"error"`` when the solver stopped without an
            arch), ``configs`` (S, D), ``depths`` (S,), ``value`` and ``bound`` (objective with its
            constant, or ``None``), ``gap``, ``solver_seconds``, ``termination``.

        Raises:
            SolverLicenseError: the solver's licence refused the model.
        """
        if abs_gap is None:
            abs_gap = self.default_abs_gap
        time_limit = check_time_limit(time_limit)
        if self._fixed_terms_exceed():
            return {"status": "infeasible", "solver_seconds": 0.0, "termination": "a max-type limit below its fixed part"}
        if not (self.idx.w or self.idx.beta or self.idx.x):
            return self._solve_without_choices()
        # A fresh solver object each time (run_solver): HiGHS 1.16 re-solving a MIP after a bound
        # change (what a persistent appsi solver does) reports the new optimum's value with the
        # previous solution's columns. Rebuilding costs a few milliseconds.
        start = time.perf_counter()
        results = run_solver(solver, self.model, time_limit=time_limit, rel_gap=rel_gap, abs_gap=abs_gap, extra=solver_options)
        seconds = time.perf_counter() - start
        out = _read_results(results, self.model, solver, seconds, sense=self.sense, offset=self.offset)
        if "value" in out:
            out["configs"], out["depths"] = self._decode()
        return out

    def _solve_without_choices(self) -> dict[str, Any]:
        # Nothing runs that could change (e.g. only depth-0 stages): solvers reject empty models.
        p = self.problem
        configs, depths = p.base_configs.copy(), np.zeros(p.staged.num_stages, dtype=np.int64)
        _, resources = p.evaluate(p.complete_configs(configs), depths)
        if not p.feasible(resources):
            return {"status": "infeasible", "solver_seconds": 0.0, "termination": "no choices"}
        table = p.objective if self.sense == "max" else self._minimise
        if self._minimise_max:
            from lightning_nas.solvers.problem import max_indices

            value = float(max_indices(table, p.complete_configs(configs), depths))
        else:
            value = float(table.additive_indices(p.complete_configs(configs), depths))
        return {"status": "optimal", "configs": configs, "depths": depths, "value": value, "bound": value,
                "gap": 0.0, "solver_seconds": 0.0, "termination": "no choices"}

    def _decode(self) -> tuple[np.ndarray, np.ndarray]:
        p, idx, m = self.problem, self.idx, self.model
        configs = p.base_configs.copy()
        depths = np.zeros(p.staged.num_stages, dtype=np.int64)
        for s in idx.free_stages:
            depths[s] = int(np.argmax([m.beta[s, j].value or 0.0 for j in range(p.num_depths[s])]))
        values = m.alpha if self.formulation == "alpha" else m.w
        for s, b in idx.blocks:
            kept = idx.configs[s, b]
            configs[s, b] = kept[int(np.argmax([values[s, b, c].value or 0.0 for c in kept]))]
        return configs, depths


def solve_milp(problem: ConstrainedProblem, *, solver: str = "appsi_highs", formulation: str = "compact",
               time_limit: float | None = None, rel_gap: float = 0.0, solver_options: Mapping[str, Any] | None = None,
               model: MilpModel | None = None, require_optimal: bool = False, top_k: int = 1) -> SearchResult:
    """Maximise the objective subject to the limits, exactly. ``model`` reuses a built model.

    A solve stopped by ``time_limit`` returns ``status="time_limit"`` with its gap and a
    :class:`NotOptimalWarning`; with ``require_optimal=True`` it raises :class:`NotOptimalError`.

    With ``top_k > 1`` the result's ``pool`` holds the ``top_k`` best distinct archs that meet the
    limits (fewer when fewer exist), best first: after each optimum a no-good cut
    (:meth:`MilpModel.add_no_good`) removes it and the MILP is solved again, so every member is
    the exact optimum of the space without the ones before it. ``time_limit`` applies per solve.

    Raises:
        InfeasibleError: no arch meets the limits (the message names the violated resource and
            its smallest / largest achievable value).
        NotOptimalError: see above, or the time limit ran out before any arch was found.
        SolverLicenseError: the solver's licence refused the model.
    """
    start = time.perf_counter()
    time_limit = check_time_limit(time_limit)
    _check_flag(require_optimal, "require_optimal")
    top_k = check_top_k(top_k)
    if model is None:
        model = MilpModel(problem, formulation, prune=top_k == 1)
    elif top_k > 1:
        raise ValueError("`model` cannot be reused with `top_k` > 1 (the no-good cuts would stay in it); leave `model` out")
    else:
        _reuse(model, problem, formulation)
    out = model.solve(solver, time_limit=time_limit, rel_gap=rel_gap, solver_options=solver_options)
    if out["status"] == "infeasible":
        diagnose_infeasibility(problem, solver=solver, formulation=formulation, time_limit=time_limit)
        raise InfeasibleError("the solver reports that no arch meets the limits")  # diagnosis found no culprit
    if out["status"] == "error":
        raise no_solution_error(solver, out, time_limit)

    def result_of(out):
        details = {"build_seconds": model.build_seconds, "solver_seconds": out["solver_seconds"],
                   "formulation": model.formulation, "bound": out["bound"], "termination": out["termination"]}
        return problem.make_result(out["configs"], out["depths"], method="milp", solver=solver, status=out["status"],
                                   gap=out["gap"], solve_seconds=time.perf_counter() - start, details=details)

    result = finish_result(result_of(out), require_optimal=require_optimal, time_limit=time_limit)
    if top_k > 1:
        pool = [result]
        while len(pool) < top_k and (model.idx.w or model.idx.beta):
            model.add_no_good(out["configs"], out["depths"])
            out = model.solve(solver, time_limit=time_limit, rel_gap=rel_gap, solver_options=solver_options)
            if out["status"] in ("infeasible", "error"):
                break  # every arch that meets the limits is in the pool
            pool.append(finish_result(result_of(out), require_optimal=require_optimal, time_limit=time_limit))
        result.pool = pool
        result.solve_seconds = time.perf_counter() - start
    return result


def _reuse(model: MilpModel, problem: ConstrainedProblem, formulation: str) -> None:
    """Point a built model at ``problem``'s bounds, after checking it was built for the same objective,
    tables and kinds of bound (solving another problem's model would answer another question)."""
    if not isinstance(model, MilpModel) or model.sense != "max":
        raise ValueError(f"`model` must be a MilpModel that maximises the objective, got {model!r}")
    old = model.problem
    same = (old.objective is problem.objective and old.num_limits == problem.num_limits and all(
        a.table is b.table and (a.upper is None) == (b.upper is None) and (a.lower is None) == (b.lower is None)
        for a, b in zip(old.limits, problem.limits)) and old.base == problem.base)
    if not same:
        raise ValueError("`model` was built for another problem (objective, limited tables, kinds of bound or base arch "
                         "differ); build a MilpModel for this one")
    if model.formulation != formulation:
        raise ValueError(f"`formulation`={formulation!r} differs from the reused model's {model.formulation!r}")
    for k, lim in enumerate(problem.limits):
        model.set_limit(k, upper=lim.upper, lower=lim.lower)
    model.problem = problem


def _check_flag(value: Any, name: str) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"`{name}` must be True or False, got {value!r}")


def diagnose_infeasibility(problem: ConstrainedProblem, *, solver: str = "appsi_highs", formulation: str = "compact",
                           time_limit: float | None = None) -> None:
    """Raise :class:`InfeasibleError` explaining why no arch meets ``problem``'s limits.

    A single bound beyond reach is found exactly without a solver. Otherwise, for each bound, the
    MILP finds the smallest (largest) value of its resource subject to all the *other* limits; the
    first bound that this value violates is reported. Returns normally when the limits are feasible.
    ``time_limit`` bounds all these solves together (seconds); when it runs out before a culprit is
    found, the error says so.
    """
    problem.check_each_limit()
    time_limit = check_time_limit(time_limit)
    deadline = None if time_limit is None else time.perf_counter() + time_limit

    def remaining() -> float | None:
        if deadline is None:
            return None
        left = deadline - time.perf_counter()
        if left <= 0:
            raise InfeasibleError(
                f"the solver reports that no arch meets the limits; the time limit ({time_limit!r} s) ran out before "
                "finding which bound is out of reach (raise `time_limit`, or call diagnose_infeasibility without one)"
            )
        return left

    found = []
    for k, lim in enumerate(problem.limits):
        others = [o for i, o in enumerate(problem.limits) if i != k]
        for which in ("upper", "lower"):
            bound = getattr(lim, which)
            if bound is None:
                continue
            sub = problem.with_limits(others)
            table = lim.table
            if lim.aggregate == "max":
                model = MilpModel(sub, formulation, minimise=table, minimise_max=True)
                out = model.solve(solver, time_limit=remaining())
                if out["status"] != "optimal":
                    continue
                achieved = float(lim.predict_indices(out["configs"], out["depths"]))
                if achieved > bound + 1e-7:
                    found.append((lim, which, bound, achieved, out))
                continue
            if which == "lower":
                # Largest value = -(smallest of the negated table).
                from lightning_nas.bilinear import BilinearTable

                table = BilinearTable(table.staged, -table.constant, -table.block, -table.depth, name=table.name)
            model = MilpModel(sub, formulation, minimise=table)
            out = model.solve(solver, time_limit=remaining())
            if out["status"] != "optimal":
                continue  # the other limits alone are infeasible (or time ran out): another bound is the culprit
            achieved = float(lim.table.predict_indices(out["configs"], out["depths"]))
            if which == "upper" and achieved > bound + 1e-7:
                found.append((lim, which, bound, achieved, out))
            if which == "lower" and achieved < bound - 1e-7:
                found.append((lim, which, bound, achieved, out))
    if not found:
        if problem.num_limits:
            status = MilpModel(problem, formulation).solve(solver, time_limit=remaining())["status"]
            if status != "infeasible":
                return
        else:
            return
        raise InfeasibleError("no arch meets the limits together, although each bound alone is reachable subject to the others")
    lim, which, bound, achieved, out = found[0]
    unit = f" {lim.table.unit}" if lim.table.unit else ""
    word, op = ("smallest", "<=") if which == "upper" else ("largest", ">=")
    others = ", ".join(o.name for o in problem.limits if o is not lim) or "none"
    raise InfeasibleError(
        f"no arch meets {lim.name} {op} {bound!r}{unit} together with the other limits ({others}): the {word} achievable "
        f"{lim.name} subject to the other limits is {achieved!r}{unit} (arch {problem.to_arch(out['configs'], out['depths'])})",
        lim.name, which, bound, achieved,
    )


# -- MIQCP ---------------------------------------------------------------------------------------
def build_miqcp(problem: ConstrainedProblem):
    """BINAS's bilinear program (Eq. 6/7) as a Pyomo model with binary ``α`` and ``β``.

    ``value = constant + Σ depth[s,j] β^s_j + Σ block[s,b,c] α^s_{b,c} a^s_b`` with ``a^s_b`` the
    sum of the ``β`` reaching block ``b`` (1 for blocks that always run): quadratic objective and
    quadratic constraints. Returns ``(model, expressions)`` where ``expressions`` maps each table
    name to its Pyomo expression (for checking the model at a fixed arch).
    """
    pyo = _pyo()
    idx = _Index(problem)
    m = pyo.ConcreteModel(name="constrained_nas_miqcp")
    m.W = pyo.Set(initialize=idx.w, dimen=3, ordered=True)
    m.Bt = pyo.Set(initialize=idx.beta, dimen=2, ordered=True)
    m.alpha = pyo.Var(m.W, within=pyo.Binary)
    m.beta = pyo.Var(m.Bt, within=pyo.Binary)
    blocks = pyo.Set(initialize=idx.blocks, dimen=2, ordered=True)
    m.one_config = pyo.Constraint(blocks, rule=lambda m, s, b: pyo.quicksum(m.alpha[s, b, c] for c in idx.configs[s, b]) == 1)
    if idx.shared:
        idx.add_shared(pyo, m, m.alpha, running=False)
    m.one_depth = pyo.Constraint(
        pyo.Set(initialize=idx.free_stages, ordered=True),
        rule=lambda m, s: pyo.quicksum(m.beta[s, j] for j in range(problem.num_depths[s])) == 1,
    )

    def bilinear(table):
        const = table.constant + sum(table.depth[s, 0] for s in idx.fixed_depth)
        terms = [table.depth[s, j] * m.beta[s, j] for (s, j) in idx.beta]
        for s, b in idx.blocks:
            reach = idx.reach[s, b]
            linear = pyo.quicksum(table.block[s, b, c] * m.alpha[s, b, c] for c in idx.configs[s, b])
            terms.append(linear if reach is None else linear * pyo.quicksum(m.beta[k] for k in reach))
        return const + pyo.quicksum(terms)

    exprs = {problem.objective.name: bilinear(problem.objective)}
    m.obj = pyo.Objective(expr=exprs[problem.objective.name], sense=pyo.maximize)
    limits = problem.limits
    for k, lim in enumerate(limits):
        if lim.aggregate == "sum":
            exprs[lim.name] = bilinear(lim.table)
    ups = [k for k, lim in enumerate(limits) if lim.upper is not None and lim.aggregate == "sum"]
    lows = [k for k, lim in enumerate(limits) if lim.lower is not None]
    m.limit_upper = pyo.Constraint(ups, rule=lambda m, k: exprs[limits[k].name] <= limits[k].upper)
    m.limit_lower = pyo.Constraint(lows, rule=lambda m, k: exprs[limits[k].name] >= limits[k].lower)
    # A maximum's upper bound, unit by unit (see MilpModel): a running configuration, or a depth
    # option, whose entry exceeds the bound is forbidden; (entry - U) * α * a <= 0 for a running block.
    units = []
    for k in problem.max_limits:
        table, upper = limits[k].table, limits[k].upper
        for s, b, c in idx.w:
            if table.block[s, b, c] > upper:
                reach = idx.reach[s, b]
                units.append(m.alpha[s, b, c] if reach is None else m.alpha[s, b, c] * pyo.quicksum(m.beta[r] for r in reach))
        units += [m.beta[s, j] for s, j in idx.beta if table.depth[s, j] > upper]
    m.limit_max = pyo.Constraint(pyo.Set(initialize=range(len(units)), ordered=True), rule=lambda m, i: units[i] <= 0)
    m._nas_index = idx
    return m, exprs


def set_miqcp_arch(model, problem: ConstrainedProblem, configs: np.ndarray, depths: np.ndarray) -> None:
    """Set the MIQCP's ``α``, ``β`` to the one-hot encoding of one arch (index arrays)."""
    idx = model._nas_index
    for s, b, c in idx.w:
        model.alpha[s, b, c].value = float(configs[s, b] == c)
    for s, j in idx.beta:
        model.beta[s, j].value = float(depths[s] == j)


def solve_miqcp(problem: ConstrainedProblem, *, solver: str | None = None, time_limit: float | None = None,
                rel_gap: float = 0.0, solver_options: Mapping[str, Any] | None = None,
                require_optimal: bool = False) -> SearchResult:
    """Solve the bilinear program directly with a non-convex MIQCP solver.

    Args:
        solver: a solver of the SCIP, Gurobi, CPLEX or Xpress family; ``None``: the first of
            :func:`~lightning_nas.solvers.backends.miqcp_solvers` (SCIP when pyscipopt is installed).

    Raises:
        ValueError: for solvers that cannot take quadratic constraints (HiGHS, CBC, GLPK) or are
            not installed.
        InfeasibleError: the solver proves that no arch meets the limits.
        NotOptimalError: ``require_optimal=True`` and the solver stopped before proving optimality,
            or the time limit ran out before any arch was found.
        SolverLicenseError: the solver's licence refused the model.
    """
    time_limit = check_time_limit(time_limit)
    _check_flag(require_optimal, "require_optimal")
    if solver is None:
        found = miqcp_solvers()
        if not found:
            raise ValueError(_miqcp_advice("method='miqcp' needs a non-convex MIQCP solver and none is installed"))
        solver = found[0]
    if solver_family(solver) not in MIQCP_FAMILIES:
        raise ValueError(_miqcp_advice(
            f"solver {solver!r} cannot solve method='miqcp' (quadratic constraints with products of binaries)"))
    start = time.perf_counter()
    model, _ = build_miqcp(problem)
    build = time.perf_counter() - start
    if solver_options is not None and not isinstance(solver_options, Mapping):
        raise ValueError(f"`solver_options` must be a mapping of option names to values, got {solver_options!r}")
    options: dict[str, Any] = {}
    if solver_family(solver) == "gurobi":
        options["NonConvex"] = 2  # products of binaries in constraints are non-convex
    options.update(solver_options or {})
    results = run_solver(solver, model, time_limit=time_limit, rel_gap=rel_gap, abs_gap=0.0, extra=options)
    out = _read_results(results, model, solver, time.perf_counter() - start - build, sense="max", offset=0.0)
    if out["status"] == "infeasible":
        diagnose_infeasibility(problem, time_limit=time_limit)
        raise InfeasibleError("the solver reports that no arch meets the limits")
    if out["status"] == "error":
        raise no_solution_error(solver, out, time_limit)
    idx = model._nas_index
    configs = problem.base_configs.copy()
    depths = np.zeros(problem.staged.num_stages, dtype=np.int64)
    for s in idx.free_stages:
        depths[s] = int(np.argmax([model.beta[s, j].value or 0.0 for j in range(problem.num_depths[s])]))
    for s, b in idx.blocks:
        kept = idx.configs[s, b]
        configs[s, b] = kept[int(np.argmax([model.alpha[s, b, c].value or 0.0 for c in kept]))]
    result = problem.make_result(configs, depths, method="miqcp", solver=solver, status=out["status"], gap=out["gap"],
                                 solve_seconds=time.perf_counter() - start,
                                 details={"build_seconds": build, "solver_seconds": out["solver_seconds"],
                                          "bound": out["bound"], "termination": out["termination"]})
    return finish_result(result, require_optimal=require_optimal, time_limit=time_limit)


def _miqcp_advice(reason: str) -> str:
    return (
        f"{reason}; use method='milp', the exact linearisation of the same problem (HiGHS, installed with this "
        "library), or a non-convex MIQCP solver: 'scip_direct' (free, `pip install pyscipopt`), or Gurobi, CPLEX, "
        f"Xpress (size-limited without a licence); installed: {available_solvers()!r}"
    )
