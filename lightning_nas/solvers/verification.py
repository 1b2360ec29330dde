"""Checking a search's pick against measurements, and moving to the next-best arch when it fails.

A resource model is an estimate: a latency table can under-predict a subnet by a few percent, so
an arch the solver places just under the budget may measure just over it. ``verify`` (any
callable ``arch -> {resource name: measured value}``) measures the pick; when a measured value
breaks its original bound, the bound the solver sees is tightened by the model's error at that
arch (``bound − (measured − predicted)``, and at least by the overshoot, so the bound strictly
shrinks) and the problem is solved again: the next-best arch whose *prediction* leaves that much
room. After ``max_tries`` measured failures, or when no arch is predicted to fit the tightened
bound, :class:`InfeasibleError` names the least violating measured arch.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from lightning_nas.solvers.problem import ConstrainedProblem, InfeasibleError, Limit, SearchResult

__all__ = ["Verify", "check_verify", "verify_result"]

#: Measures an arch: ``arch -> {resource name: measured value}`` (in each limited table's unit).
Verify = Callable[[dict[str, Any]], Mapping[str, float]]


def _check_measured(measured: Any, problem: ConstrainedProblem) -> dict[str, float]:
    if not isinstance(measured, Mapping):
        raise ValueError(f"`verify` must return a mapping of resource name to measured value, got {type(measured).__name__}")
    unknown = sorted(set(measured) - set(problem.names))
    if unknown:
        raise ValueError(f"`verify` returned measurements of {unknown}, which are not limited; limited resources: {problem.names}")
    if not measured:
        raise ValueError(f"`verify` returned no measurement; return at least one of the limited resources {problem.names}")
    out = {}
    for name, value in measured.items():
        if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) or not math.isfinite(value):
            raise ValueError(f"`verify` returned {value!r} for {name!r}; a measurement must be a finite number")
        out[name] = float(value)
    return out


def check_verify(verify: Any, max_tries: Any, problem: ConstrainedProblem) -> None:
    """Refuse a bad ``verify`` / ``max_verify`` before any solving (``verify=None`` passes)."""
    if isinstance(max_tries, bool) or not isinstance(max_tries, int) or max_tries < 1:
        raise ValueError(f"`max_verify` must be an int >= 1, got {max_tries!r}")
    if verify is None:
        return
    if not callable(verify):
        raise ValueError(f"`verify` must be a callable arch -> {{resource name: measured value}}, got {type(verify).__name__}")
    if not problem.limits:
        raise ValueError("`verify` checks measurements against the limits, but no limit was given")


def _overshoot(limit: Limit, value: float) -> float:
    """How far ``value`` lies outside ``limit``'s bounds (0 inside), in the resource's unit."""
    over = 0.0
    if limit.upper is not None:
        over = max(over, value - limit.upper)
    if limit.lower is not None:
        over = max(over, limit.lower - value)
    return over


def _tightened(current: Limit, original: Limit, predicted: float, measured: float) -> Limit:
    error = measured - predicted  # > 0: the model under-predicts this arch
    upper, lower = current.upper, current.lower
    if original.upper is not None and measured > original.upper:
        upper = min(current.upper - (measured - original.upper), original.upper - error)
    if original.lower is not None and measured < original.lower:
        lower = max(current.lower + (original.lower - measured), original.lower - error)
    if upper is not None and lower is not None and lower > upper:
        raise InfeasibleError(f"no room left between the tightened bounds of {original.name!r} ({lower:.6g} > {upper:.6g})",
                              resource=original.name)
    return Limit(current.table, upper=upper, lower=lower)


def verify_result(
    problem: ConstrainedProblem,
    result: SearchResult,
    verify: Verify,
    solve: Callable[[ConstrainedProblem], SearchResult],
    *,
    max_tries: int = 5,
) -> SearchResult:
    """Measure ``result.arch`` with ``verify``; re-solve with tightened bounds until a pick measures
    within every original bound (see the module docstring).

    Args:
        problem: the problem ``result`` solves (its limits are the bounds the measurements must meet).
        result: the solver's pick.
        verify: ``arch -> {resource name: measured value}``; resources it leaves out are not checked.
        solve: solves a problem with other limits the same way ``result`` was found.
        max_tries: most measurements (picks) before giving up.

    Returns:
        The first pick whose measurements meet every bound; ``details["verification"]`` holds each
        try's arch, predicted and measured values and the bounds the solver saw, and
        ``details["measured"]`` the accepted pick's measurements.

    Raises:
        InfeasibleError: ``max_tries`` picks measured outside a bound, or no arch is predicted to
            meet the tightened bounds; the message names the least violating measured arch.
        ValueError: ``verify`` returned something other than finite measurements of limited resources.
    """
    check_verify(verify, max_tries, problem)
    original = dict(zip(problem.names, problem.limits))
    current = problem
    tries: list[dict[str, Any]] = []
    while True:
        measured = _check_measured(verify(dict(result.arch)), problem)
        over = {name: _overshoot(original[name], value) for name, value in measured.items()}
        met = all(v <= 0 for v in over.values())
        tries.append({"arch": dict(result.arch), "predicted": {n: result.resources[n] for n in measured}, "measured": measured,
                      "bounds": current.limits_dict(), "met": met})
        if met:
            result.details["verification"] = tries
            result.details["measured"] = measured
            return result
        reason = None
        if len(tries) >= max_tries:
            reason = f"{max_tries} picks measured outside their bounds (max_verify={max_tries})"
        else:
            try:
                limits = [_tightened(lim, original[name], result.resources[name], measured[name]) if over.get(name, 0) > 0 else lim
                          for name, lim in zip(current.names, current.limits)]
                current = current.with_limits(limits)
                result = solve(current)
            except InfeasibleError as err:
                reason = f"no arch is predicted to leave the room the measurements call for ({err})"
        if reason is not None:
            closest = min(tries, key=lambda t: sum(_overshoot(original[n], v) / problem.ranges[problem.names.index(n)]
                                                      for n, v in t["measured"].items()))
            shown = ", ".join(f"{n} {v:.6g} (bound {_bounds(original[n])})" for n, v in closest["measured"].items())
            error = InfeasibleError(f"verification failed: {reason}; the least violating measured pick has {shown}: {closest['arch']}")
            error.tries = tries
            raise error


def _bounds(limit: Limit) -> str:
    parts = ([f">= {limit.lower:.6g}"] if limit.lower is not None else []) + ([f"<= {limit.upper:.6g}"] if limit.upper is not None else [])
    return " and ".join(parts)
