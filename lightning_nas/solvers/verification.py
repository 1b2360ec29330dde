"""Checking a search's pick against measurements, and moving to the next-best arch when it fails.

A resource model is an estimate: a latency table can under-predict a subnet by a few percent, so
an arch the solver places just under the budget may measure just over it. ``verify`` (any
callable ``arch -> {resource name: measured value}``) measures the pick; when a measured value
breaks its original bound, the bound the solver sees is tightened by the model's error at that
arch (``bound − (measured − predicted)``, and at least by the overshoot, so the bound strictly
shrinks) and the problem is solved again: the next-best arch whose *prediction* leaves that much
room. After ``max_tries`` measured failures, or when no arch is predicted to fit the tightened
bound, :class:`InfeasibleError` names the least violating measured arch.

With a solution pool (``top_k > 1``: the k best distinct archs by the model, see
:func:`~lightning_nas.solvers.search_constrained`) every member is measured, up to ``max_tries``
measurements in all, and the best one that meets every original bound is returned: the best by
the *measured* objective when ``verify`` also returns the objective's name (e.g. the validation
accuracy a table look-up or a trained subnet gives), else the best by the model. A ``verify`` with
a ``many`` method (``[arch, ...] -> [measurements, ...]``) measures a pool in one call, e.g. all
members timed side by side. Only when no member fits is a new pool solved, under bounds tightened
by the *median* error of the members that broke them (one member's error is a noisy estimate of
the model's error near the bound: tightening by the worst of k members left picks far inside their
budgets), by at least the smallest overshoot, and below every one of those members' predictions.
An arch measured once is never measured again: it reappears in a later pool only as a known failure.

:func:`with_measured_objective` adds the objective's measurement to any ``verify``: e.g. each pool
member's one-shot accuracy on a held-out split beside its timed latency, so the member kept is the
most accurate one measured, not the one the table puts first (the table's best archs are the ones it
overrates most: a pool's first member measured 1.5-2.6 points below its table value in the demo).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from lightning_nas.solvers.problem import ConstrainedProblem, InfeasibleError, Limit, SearchResult

__all__ = ["MeasuredObjective", "Verify", "check_verify", "verify_result", "with_measured_objective"]

#: Measures an arch: ``arch -> {resource name: measured value}`` (in each limited table's unit),
#: optionally with the objective's name too (its measured value ranks the archs of a pool). It may
#: also have ``many(archs) -> [measurements, ...]``, one per arch in order, used for a pool.
Verify = Callable[[dict[str, Any]], Mapping[str, float]]


class MeasuredObjective:
    """``verify`` with the objective measured too (see :func:`with_measured_objective`)."""

    def __init__(self, verify: Verify, name: str, measure: Callable[[list[dict[str, Any]]], Any]) -> None:
        if not callable(verify):
            raise ValueError(f"`verify` must be a callable arch -> {{resource name: measured value}}, got {type(verify).__name__}")
        if not isinstance(name, str) or not name:
            raise ValueError(f"`name` must be the objective table's name (a non-empty str), got {name!r}")
        if not callable(measure):
            raise ValueError(f"`measure` must be a callable [arch, ...] -> one objective value per arch, got {type(measure).__name__}")
        self.verify, self.name, self.measure = verify, name, measure

    def __call__(self, arch: dict[str, Any]) -> dict[str, float]:
        return self.many([arch])[0]

    def many(self, archs: list[dict[str, Any]]) -> list[dict[str, float]]:
        """``[{resource: value, ..., name: objective}, ...]`` in ``archs``' order; the wrapped
        ``verify`` meets the archs best-measured first (its order of preference, e.g. when a
        :class:`~lightning_nas.profiling.TimedVerify` may stop timing once the first arch in
        that order is clearly within its bound)."""
        values = np.asarray(self.measure([dict(a) for a in archs]), dtype=float)
        if values.shape != (len(archs),) or not np.isfinite(values).all():
            raise ValueError(f"`measure` must return one finite objective value per arch ({len(archs)}), got {values!r}")
        order = [int(i) for i in np.argsort(-values, kind="stable")]  # ties keep the model's order
        measured = _call_verify(self.verify, [archs[i] for i in order])
        out: list[dict[str, float]] = [{} for _ in archs]
        for i, m in zip(order, measured):
            if not isinstance(m, Mapping):
                raise ValueError(f"`verify` must return a mapping of resource name to measured value, got {type(m).__name__}")
            out[i] = {**m, self.name: float(values[i])}
        return out


def with_measured_objective(verify: Verify, name: str, measure: Callable[[list[dict[str, Any]]], Any]) -> MeasuredObjective:
    """``verify`` that also returns each arch's measured objective under ``name``, so that
    :func:`verify_result` keeps a pool's best *measured* member among those within their bounds.

    Args:
        verify: measures the limited resources (``arch -> {name: value}``, optionally with ``many``).
        name: the objective table's name (``problem.objective.name``).
        measure: ``[arch, ...] -> (N,)`` objective values, higher is better, e.g. each arch's
            one-shot accuracy on a held-out split (not the split the results are judged on: the
            kept arch is the best of the pool there, so its value there is biased upward).

    Returns:
        A ``verify`` with ``many``: the objective is measured first, then ``verify`` is called on
        the archs best-measured first.
    """
    return MeasuredObjective(verify, name, measure)


def _check_measured(measured: Any, problem: ConstrainedProblem) -> dict[str, float]:
    if not isinstance(measured, Mapping):
        raise ValueError(f"`verify` must return a mapping of resource name to measured value, got {type(measured).__name__}")
    allowed = [*problem.names, problem.objective.name]
    unknown = sorted(set(measured) - set(allowed))
    if unknown:
        raise ValueError(f"`verify` returned measurements of {unknown}, which are not limited (nor the objective "
                         f"{problem.objective.name!r}); allowed: {allowed}")
    if not measured or (problem.names and not set(measured) & set(problem.names)):
        raise ValueError(f"`verify` returned no measurement of a limited resource; return at least one of {problem.names} "
                         f"(and optionally the objective {problem.objective.name!r}; without limits, the objective)")
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


def _overshoot(limit: Limit, value: float) -> float:
    """How far ``value`` lies outside ``limit``'s bounds (0 inside), in the resource's unit."""
    over = 0.0
    if limit.upper is not None:
        over = max(over, value - limit.upper)
    if limit.lower is not None:
        over = max(over, limit.lower - value)
    return over


def _tightened(current: Limit, original: Limit, predicted: list[float], measured: list[float]) -> Limit:
    """``current`` tightened after members predicted at ``predicted`` measured ``measured``, each outside
    ``original`` (same order): by their median error, by at least the smallest overshoot, and past
    every prediction (so none of them is proposed again under the same bound)."""
    p, m = np.asarray(predicted, dtype=np.float64), np.asarray(measured, dtype=np.float64)
    upper, lower = current.upper, current.lower
    if original.upper is not None and (m > original.upper).any():
        over = m > original.upper
        upper = min(current.upper - float((m[over] - original.upper).min()), original.upper - float(np.median(m[over] - p[over])),
                    float(np.nextafter(p[over].max(), -np.inf)))
    if original.lower is not None and (m < original.lower).any():
        under = m < original.lower
        lower = max(current.lower + float((original.lower - m[under]).min()), original.lower + float(np.median(p[under] - m[under])),
                    float(np.nextafter(p[under].min(), np.inf)))
    if upper is not None and lower is not None and lower > upper:
        raise InfeasibleError(f"no room left between the tightened bounds of {original.name!r} ({lower:.6g} > {upper:.6g})",
                              resource=original.name)
    return Limit(current.table, upper=upper, lower=lower, aggregate=current.aggregate)


def _measure(verify: Verify, archs: list[dict[str, Any]], problem: ConstrainedProblem) -> list[dict[str, float]]:
    return [_check_measured(m, problem) for m in _call_verify(verify, archs)]


def _call_verify(verify: Verify, archs: list[dict[str, Any]]) -> list[Any]:
    """``verify``'s measurement of each arch (copies), in order: one ``verify.many`` call for several
    archs when it has one, refused unless that returns one measurement per arch."""
    archs = [dict(a) for a in archs]
    many = getattr(verify, "many", None)
    if many is None or len(archs) == 1:
        return [verify(a) for a in archs]
    out = list(many(archs))
    if len(out) != len(archs):
        raise ValueError(f"`verify.many` returned {len(out)} measurements for {len(archs)} archs; return one per arch, in order")
    return out


def _key(arch: Mapping[str, Any]) -> str:
    return repr(sorted(arch.items()))


def verify_result(
    problem: ConstrainedProblem,
    result: SearchResult,
    verify: Verify,
    solve: Callable[[ConstrainedProblem], SearchResult],
    *,
    max_tries: int = 5,
) -> SearchResult:
    """Measure ``result.arch`` (every member of ``result.pool`` when there is one) with ``verify``;
    re-solve with tightened bounds until a pick measures within every original bound (see the
    module docstring).

    Args:
        problem: the problem ``result`` solves (its limits are the bounds the measurements must meet).
        result: the solver's pick, with its pool when it was solved with ``top_k > 1``.
        verify: ``arch -> {name: measured value}`` for limited resources (those it leaves out are
            not checked) and optionally the objective's name.
        solve: solves a problem with other limits the same way ``result`` was found.
        max_tries: most measurements before giving up.

    Returns:
        The chosen arch's result; ``details["verification"]`` holds each measurement's arch,
        predicted and measured values, the bounds the solver saw and whether it met them,
        ``details["measured"]`` the chosen arch's measurements and ``details["evaluations"]`` the
        number of measurements spent.

    Raises:
        InfeasibleError: ``max_tries`` measurements outside a bound, or no arch is predicted to
            meet the tightened bounds; the message names the least violating measured arch.
        ValueError: ``verify`` returned something other than finite measurements of limited
            resources (and the objective).
    """
    check_verify(verify, max_tries, problem)
    original = dict(zip(problem.names, problem.limits))
    objective = problem.objective.name
    current = problem
    tries: list[dict[str, Any]] = []
    known: dict[str, dict[str, float]] = {}  # measured archs (all of them failures while the loop runs)
    while True:
        candidates = list(result.pool) or [result]
        new = [c for c in candidates if _key(c.arch) not in known][: max_tries - len(tries)]
        met_here: list[tuple[SearchResult, dict[str, float]]] = []
        for candidate, measured in zip(new, _measure(verify, [c.arch for c in new], problem) if new else []):
            resources = {n: v for n, v in measured.items() if n != objective}
            met = all(_overshoot(original[n], v) <= 0 for n, v in resources.items())
            tries.append({"arch": dict(candidate.arch), "predicted": {n: candidate.resources[n] for n in resources},
                          "measured": measured, "bounds": current.limits_dict(), "met": met})
            known[_key(candidate.arch)] = measured
            if met:
                met_here.append((candidate, measured))
        if met_here:
            by_measurement = all(objective in m for _, m in met_here)
            # Pool order is the model's order; max() keeps the first of equal measurements.
            chosen, measured = max(met_here, key=lambda cm: cm[1][objective]) if by_measurement else met_here[0]
            chosen.details["verification"] = tries
            chosen.details["measured"] = measured
            chosen.details["evaluations"] = len(tries)
            chosen.pool = list(result.pool)
            return chosen
        violating = [(c, known[_key(c.arch)]) for c in candidates if _key(c.arch) in known]
        reason = None
        if len(tries) >= max_tries:
            reason = f"{max_tries} picks measured outside their bounds (max_verify={max_tries})"
        else:
            try:
                limits = list(current.limits)
                for i, name in enumerate(current.names):
                    broke = [(c.resources[name], m[name]) for c, m in violating
                             if name in m and _overshoot(original[name], m[name]) > 0]
                    if broke:
                        limits[i] = _tightened(limits[i], original[name], *map(list, zip(*broke)))
                current = current.with_limits(limits)
                result = solve(current)
            except InfeasibleError as err:
                reason = f"no arch is predicted to leave the room the measurements call for ({err})"
        if reason is not None:
            closest = min(tries, key=lambda t: sum(_overshoot(original[n], v) / problem.ranges[problem.names.index(n)]
                                                      for n, v in t["measured"].items() if n != objective))
            shown = ", ".join(f"{n} {v:.6g} (bound {_bounds(original[n])})" for n, v in closest["measured"].items()
                              if n != objective)
            error = InfeasibleError(f"verification failed: {reason}; the least violating measured pick has {shown}: {closest['arch']}")
            error.tries = tries
            raise error


def _bounds(limit: Limit) -> str:
    parts = ([f">= {limit.lower:.6g}"] if limit.lower is not None else []) + ([f"<= {limit.upper:.6g}"] if limit.upper is not None else [])
    return " and ".join(parts)
