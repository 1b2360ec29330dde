"""One front end for constrained architecture search, and a Pareto sweep over a resource target.

Example::

    from lightning_nas.solvers import Limit, search_constrained, pareto_sweep

    best = search_constrained(accuracy, Limit(latency, upper=25.0))            # exact MILP, HiGHS
    best.arch, best.objective, best.resources["latency"], best.status, best.gap
    fast = search_constrained(accuracy, [Limit(latency, upper=25.0), Limit(flops, upper=300.0)], method="bcfw", seed=0)
    front = pareto_sweep(accuracy, latency, targets=[15, 20, 25, 30])         # one result per target
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from lightning_nas.bilinear import BilinearTable
from lightning_nas.solvers.backends import check_time_limit
from lightning_nas.solvers.problem import (
    ConstrainedProblem,
    InfeasibleError,
    Limit,
    SearchFailedError,
    SearchResult,
    _as_limit,
    check_top_k,
)
from lightning_nas.solvers.verification import Verify, check_verify, verify_result

__all__ = ["METHODS", "pareto_sweep", "search_constrained"]

METHODS = ("milp", "miqcp", "bcfw", "evolution")


def search_constrained(
    objective: BilinearTable,
    limits: Limit | tuple | Sequence[Limit | tuple] = (),
    *,
    method: str = "milp",
    solver: str | None = None,
    seed: int = 0,
    base: Mapping[str, Any] | None = None,
    time_limit: float | None = None,
    require_optimal: bool = False,
    verify: Verify | None = None,
    max_verify: int = 5,
    top_k: int = 1,
    **options: Any,
) -> SearchResult:
    """Maximise ``objective`` over the archs of its space subject to ``limits``.

    Args:
        objective: predicted accuracy (or any additive table) to maximise.
        limits: :class:`Limit` s (or ``(table, upper)`` pairs) on tables of the same space.
        method: ``"milp"`` (exact, default), ``"miqcp"`` (bilinear form; needs Gurobi, CPLEX,
            SCIP or Xpress), ``"bcfw"`` (BINAS Algorithm 1) or ``"evolution"``.
        solver: Pyomo solver name for ``"milp"`` / ``"miqcp"`` (and for diagnosing infeasibility
            with several limits); ``None``: HiGHS (``appsi_highs``) for ``"milp"`` and diagnosis, the
            first installed MIQCP solver (SCIP first, :func:`~lightning_nas.solvers.backends.miqcp_solvers`)
            for ``"miqcp"``.
        seed: seeds ``"bcfw"`` and ``"evolution"``.
        base: arch providing the labels the tables do not cover (default: the space's default).
        time_limit: solver time limit in seconds (``"milp"`` / ``"miqcp"``), passed in each
            solver's own option; when optimality is not proven in time the result has
            ``status="time_limit"``, its ``gap`` (when the solver reports a bound), the reason in
            ``message``, and a :class:`NotOptimalWarning` is emitted.
        require_optimal: raise :class:`NotOptimalError` instead of returning an arch the solver
            has not proven optimal (``"milp"`` / ``"miqcp"``).
        verify: measures a pick, ``arch -> {resource name: measured value}`` (e.g. its end-to-end
            latency, ``{"latency": ms}``). A pick measured outside an original bound is replaced by
            the best arch predicted to fit the bound tightened by the model's error at that pick
            (:mod:`~lightning_nas.solvers.verification`); the tries are in
            ``details["verification"]``, the accepted measurements in ``details["measured"]``.
            ``verify`` may also return the objective's name (e.g. ``{"latency": ms, "accuracy":
            measured}``): it then ranks the verified archs of a pool.
        max_verify: most archs measured before :class:`InfeasibleError` (with ``verify``); the
            count spent is ``details["evaluations"]``.
        top_k: the exact methods (``"milp"``) also return the ``top_k`` best distinct archs by
            the model in ``result.pool`` (best first; no-good cuts, still exact). With
            ``verify``, every member is measured (up to ``max_verify``) and the best one that
            truly meets every limit is returned (best measured objective when ``verify`` gives
            it, else best predicted), instead of the first pick that fits.
        options: method options: ``formulation``, ``rel_gap``, ``solver_options`` (milp);
            ``rel_gap``, ``solver_options`` (miqcp); ``p``, ``max_iter``, ``rounding`` (bcfw);
            ``population``, ``sample``, ``cycles`` (evolution).

    Returns:
        A :class:`SearchResult`; ``solve_seconds`` is the wall time of the whole call.

    Raises:
        InfeasibleError: no arch meets the limits; the message names the resource and its smallest
            (largest, for a lower bound) achievable value. With ``verify``: ``max_verify`` picks
            measured outside a bound (the error's ``tries`` lists them).
        SearchFailedError: ``"evolution"`` found no feasible arch although one exists.
        NotOptimalError: ``require_optimal=True`` and the solver stopped before proving optimality,
            or the time limit ran out before the solver found any arch.
        SolverLicenseError: the solver's licence refused the model (e.g. Gurobi's or CPLEX's
            size-limited pip licence); the message says which limit and what to use instead.
        ValueError: bad arguments (unknown method, tables of different spaces, NaN limits, ...).
    """
    start = time.perf_counter()
    if method not in METHODS:
        raise ValueError(f"`method` must be one of {METHODS}, got {method!r}")
    time_limit = check_time_limit(time_limit)
    options = _with_top_k(method, top_k, options)
    problem = ConstrainedProblem(objective, limits, base=base)
    check_verify(verify, max_verify, problem)
    result = _dispatch(problem, method, solver, seed, time_limit, options, require_optimal)
    if verify is not None:
        result = verify_result(problem, result, verify, lambda p: _dispatch(p, method, solver, seed, time_limit, options, require_optimal),
                               max_tries=max_verify)
    result.solve_seconds = time.perf_counter() - start
    return result


def _dispatch(problem: ConstrainedProblem, method: str, solver: str | None, seed: int, time_limit: float | None,
              options: dict[str, Any], require_optimal: bool = False) -> SearchResult:
    miqcp_solver, solver = solver, solver or "appsi_highs"
    allowed = {
        "milp": {"formulation", "rel_gap", "solver_options", "model", "top_k"},
        "miqcp": {"rel_gap", "solver_options"},
        "bcfw": {"p", "max_iter", "rounding"},
        "evolution": {"population", "sample", "cycles"},
    }[method]
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for method={method!r}; allowed: {sorted(allowed)}")
    if method in ("bcfw", "evolution") and time_limit is not None:
        raise ValueError(f"`time_limit` applies to the solver methods (milp, miqcp), not to method={method!r}")
    if not isinstance(require_optimal, bool):
        raise ValueError(f"`require_optimal` must be True or False, got {require_optimal!r}")
    if method in ("bcfw", "evolution") and require_optimal:
        raise ValueError(f"`require_optimal=True` needs an exact method (milp, miqcp); method={method!r} is a heuristic "
                         "that never proves optimality")
    if method in ("bcfw", "evolution") and problem.staged.shared_labels:
        raise ValueError(
            f"method={method!r} changes one block at a time, which cannot keep the decisions several blocks share "
            f"({problem.staged.shared_labels!r}) consistent; use method='milp' (exact, links the shared decisions)"
        )
    if method == "bcfw" and problem.max_limits:
        names = [problem.names[k] for k in problem.max_limits]
        raise ValueError(f"method='bcfw' bounds additive tables in its linear programs; the limits on {names} are maxima over "
                         "units (aggregate='max'); use method='milp' (exact), 'miqcp' or 'evolution'")
    # A single bound beyond reach is found exactly and cheaply, whatever the method.
    problem.check_each_limit()
    if method == "milp":
        from lightning_nas.solvers.milp import solve_milp

        return solve_milp(problem, solver=solver, time_limit=time_limit, require_optimal=require_optimal, **options)
    if method == "miqcp":
        from lightning_nas.solvers.milp import solve_miqcp

        return solve_miqcp(problem, solver=miqcp_solver, time_limit=time_limit, require_optimal=require_optimal, **options)
    if method == "bcfw":
        from lightning_nas.solvers.bcfw import solve_bcfw

        result = solve_bcfw(problem, seed=seed, **options)
        if not result.feasible and problem.num_limits > 1:
            _diagnose(problem, solver)  # raises when no arch is feasible at all
        return result
    from lightning_nas.solvers.evolution import solve_evolution

    try:
        return solve_evolution(problem, seed=seed, **options)
    except SearchFailedError:
        _diagnose(problem, solver)
        raise


def _with_top_k(method: str, top_k: Any, options: dict[str, Any]) -> dict[str, Any]:
    top_k = check_top_k(top_k)
    if top_k == 1:
        return options
    if method != "milp":
        raise ValueError(f"`top_k` > 1 needs the exact method 'milp' (a solution pool by no-good cuts); method={method!r}")
    return {**options, "top_k": top_k}


def _fresh(options: dict[str, Any]) -> dict[str, Any]:
    # A sweep's shared model belongs to the sweep's limits; a tightened problem is built anew.
    return {k: v for k, v in options.items() if k != "model"}


def _diagnose(problem: ConstrainedProblem, solver: str) -> None:
    from lightning_nas.solvers.backends import available_solvers
    from lightning_nas.solvers.milp import diagnose_infeasibility

    if solver in available_solvers((solver,)):
        diagnose_infeasibility(problem, solver=solver)


def pareto_sweep(
    objective: BilinearTable,
    resource: BilinearTable,
    targets: Sequence[float],
    *,
    other_limits: Sequence[Limit | tuple] = (),
    method: str = "milp",
    solver: str | None = None,
    seed: int = 0,
    base: Mapping[str, Any] | None = None,
    time_limit: float | None = None,
    require_optimal: bool = False,
    verify: Verify | None = None,
    max_verify: int = 5,
    top_k: int = 1,
    **options: Any,
) -> list[SearchResult]:
    """Solve the problem for each upper bound in ``targets`` on ``resource``.

    With ``method="milp"`` the model is built once and re-solved with the new bound.
    ``time_limit``, ``require_optimal``, ``verify``, ``max_verify`` and ``top_k`` apply to each
    target's solve (see :func:`search_constrained`; with ``top_k`` > 1 each target builds its own model).

    Returns:
        One :class:`SearchResult` per target, in increasing target order. An infeasible target
        gives ``status="infeasible"``, ``arch=None``, ``objective=None`` and the reason (with the
        smallest achievable value) in ``message``; the sweep goes on.
    """
    try:
        targets = [float(t) for t in targets]
    except (TypeError, ValueError) as err:
        raise ValueError(f"`targets` must be a sequence of finite numbers, got {targets!r}") from err
    if not targets:
        raise ValueError("`targets` must hold at least one resource bound, got none")
    if any(not np.isfinite(t) for t in targets):
        raise ValueError(f"`targets` must be finite numbers, got {targets!r}")
    if method not in METHODS:
        raise ValueError(f"`method` must be one of {METHODS}, got {method!r}")
    time_limit = check_time_limit(time_limit)
    options = _with_top_k(method, top_k, options)
    targets = sorted(targets)
    others = [_as_limit(lim) for lim in other_limits]
    model = None
    results = []
    for target in targets:
        start = time.perf_counter()
        problem = ConstrainedProblem(objective, [Limit(resource, upper=target), *others], base=base)
        opts = dict(options)
        if method == "milp" and "top_k" not in opts:  # a pool's no-good cuts must not stay in a shared model
            from lightning_nas.solvers.milp import MilpModel

            if model is None:
                model = MilpModel(problem, opts.get("formulation", "compact"))
            opts["model"] = model  # same tables and bound kinds; solve_milp sets the new target
        check_verify(verify, max_verify, problem)
        try:
            result = _dispatch(problem, method, solver, seed, time_limit, opts, require_optimal)
            if verify is not None:
                result = verify_result(problem, result, verify,
                                       lambda p: _dispatch(p, method, solver, seed, time_limit, _fresh(opts), require_optimal),
                                       max_tries=max_verify)
        except (InfeasibleError, SearchFailedError) as err:
            result = SearchResult(
                arch=None, objective=None, resources={}, limits=problem.limits_dict(), method=method,
                solver=solver if method in ("milp", "miqcp") else None, status="infeasible", feasible=False,
                message=str(err),
            )
        result.solve_seconds = time.perf_counter() - start
        result.details["target"] = target
        results.append(result)
    return results
