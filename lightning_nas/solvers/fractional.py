"""MathNAS's 0-1 linear-fractional program (Eq. 6, with Eq. 9's variable depth), solved exactly.

MathNAS predicts a network's accuracy as ``Acc(Ñ) − F̄ · Σ b^A x / Σ b^F x``: a constant minus a
ratio of two additive quantities. Over a :class:`~lightning_nas.spaces.staged.StagedSpace` (whose
stage depths are Eq. 9's "stop" option: blocks past a stage's depth select nothing and cost
nothing) both are :class:`~lightning_nas.bilinear.BilinearTable` s, and the program is::

    max_arch  constant − scale · N(arch) / D(arch)      s.t.  every Limit (additive, linear)

with ``D > 0`` on every arch. Three exact methods:

* ``"charnes_cooper"``: one MILP. With ``z = 1/D`` and ``y = z·w``, ``u = z·β`` (``w``, ``β`` the
  binaries of :class:`~lightning_nas.solvers.milp.MilpModel`), minimise the homogenised numerator
  subject to the homogenised choice constraints, the linking bounds ``y ≤ w / D_min``, and the
  normalisation ``D_hom(y, u, z) = 1`` that the paper's Eq. 11 omits (without it ``z`` is
  unanchored and the optimum drifts to ``z → 0`` or ``∞``). The limits stay linear in ``(w, β)``.
* ``"dinkelbach"``: a few ordinary MILPs ``min N − λ D`` with ``λ`` the ratio of the previous
  solution, until the ratio stops decreasing.
* ``"brute_force"``: enumerate every arch (small spaces; the oracle for the other two).

All Pyomo models accept any MILP solver by name (HiGHS by default). Infeasible limits raise
:class:`~lightning_nas.solvers.problem.InfeasibleError` with the smallest achievable value.

Example::

    result = solve_fractional(penalty, flops, Limit(latency, upper=12.0), constant=acc_ref, scale=mean_flops)
    result.arch, result.objective, result.details["ratio"], result.resources["latency"]
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from lightning_nas.bilinear import BilinearTable, _structure
from lightning_nas.solvers.backends import check_time_limit
from lightning_nas.solvers.milp import (
    MilpModel,
    _linear_expr,
    _pyo,
    diagnose_infeasibility,
    finish_result,
    no_solution_error,
)
from lightning_nas.solvers.problem import ConstrainedProblem, InfeasibleError, SearchResult, check_table_finite, check_top_k
from lightning_nas.solvers.verification import check_verify, verify_result

__all__ = [
    "BRUTE_FORCE_LIMIT",
    "FRACTIONAL_METHODS",
    "CharnesCooperModel",
    "FractionalProblem",
    "count_archs",
    "enumerate_indices",
    "iter_indices",
    "solve_fractional",
]

FRACTIONAL_METHODS = ("charnes_cooper", "dinkelbach", "brute_force")


class FractionalProblem:
    """A validated linear-fractional search problem (see the module docstring).

    Args:
        numerator: ``N``, the additive penalty (MathNAS: ``Σ b^A x``, accuracy lost against the reference).
        denominator: ``D``, positive on every arch (MathNAS: FLOPs ``Σ b^F x`` plus the fixed part).
        limits: :class:`~lightning_nas.solvers.problem.Limit` s on tables of the same space.
        constant: the value the ratio is subtracted from (MathNAS: ``Acc(Ñ)``).
        scale: positive factor of the ratio (MathNAS: the mean FLOPs ``F̄``).
        base: arch giving the labels outside the stages (default: the space's default).

    Raises:
        ValueError: tables of different structures, a denominator that reaches zero or below,
            a non-positive or non-finite ``scale``.
    """

    def __init__(self, numerator: BilinearTable, denominator: BilinearTable, limits: Any = (), *,
                 constant: float = 0.0, scale: float = 1.0, base: Mapping[str, Any] | None = None) -> None:
        if not isinstance(denominator, BilinearTable):
            raise ValueError(f"`denominator` must be a BilinearTable, got {type(denominator).__name__}")
        self.problem = ConstrainedProblem(numerator, limits, base=base)
        check_table_finite(denominator, "denominator")
        if denominator.staged is not self.problem.staged and _structure(denominator.staged) != _structure(self.problem.staged):
            raise ValueError(f"`denominator` {denominator.name!r} was made for another space structure than `numerator` {numerator.name!r}")
        for name, value in (("constant", constant), ("scale", scale)):
            if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) or not math.isfinite(value):
                raise ValueError(f"`{name}` must be a finite number, got {value!r}")
        if scale <= 0:
            raise ValueError(f"`scale` must be positive (the ratio is a penalty), got {scale!r}")
        self.d_min, _ = denominator.extreme()
        self.d_max, _ = denominator.extreme(largest=True)
        if not self.d_min > 0:
            raise ValueError(
                f"`denominator` {denominator.name!r} must be positive on every arch; its smallest value is {self.d_min!r}"
            )
        self.numerator, self.denominator = numerator, denominator
        self.constant, self.scale = float(constant), float(scale)

    @property
    def staged(self):
        return self.problem.staged

    def ratio(self, configs: np.ndarray, depths: np.ndarray) -> np.ndarray:
        """``N / D`` for ``(..., S, D)`` configs and ``(..., S)`` depth indices → ``(...)``."""
        return self.numerator.predict_indices(configs, depths) / self.denominator.predict_indices(configs, depths)

    def value(self, configs: np.ndarray, depths: np.ndarray) -> np.ndarray:
        """The objective ``constant − scale · N / D`` → ``(...)``."""
        return self.constant - self.scale * self.ratio(configs, depths)

    def result(self, configs: np.ndarray, depths: np.ndarray, *, method: str, solver: str | None, start: float,
               status: str = "optimal", gap: float | None = None, details: Mapping[str, Any] | None = None) -> SearchResult:
        """A :class:`SearchResult` whose ``objective`` is the fractional objective, recomputed exactly."""
        configs = self.problem.complete_configs(np.asarray(configs))
        n = float(self.numerator.predict_indices(configs, depths))
        d = float(self.denominator.predict_indices(configs, depths))
        out = self.problem.make_result(configs, depths, method=method, solver=solver, status=status, gap=gap,
                                       details={**dict(details or {}), "numerator": n, "denominator": d, "ratio": n / d})
        out.objective = self.constant - self.scale * n / d
        out.resources.setdefault(self.denominator.name, d)
        out.solve_seconds = time.perf_counter() - start
        return out


class CharnesCooperModel(MilpModel):
    """The Charnes–Cooper MILP of a :class:`FractionalProblem` as a Pyomo model (module docstring).

    The binaries, choice constraints and limits are :class:`MilpModel`'s (unpruned: dominance
    does not carry over to a ratio). ``N`` and ``D`` are rescaled so that ``D_min = 1`` and
    ``max |N| = 1``: ``z``, ``y`` and ``u`` then lie in ``[0, 1]``, well inside the solver's
    tolerances whatever the units (FLOPs or MFLOPs).

    :meth:`solve` returns the scaled ratio as ``value``; decode with the arrays it returns.
    """

    def __init__(self, fractional: FractionalProblem) -> None:
        start = time.perf_counter()
        super().__init__(fractional.problem, "compact", prune=False)
        pyo = _pyo()
        m, idx, p = self.model, self.idx, fractional.problem
        self.d_unit = fractional.d_min
        num, den = fractional.numerator, fractional.denominator
        n_extremes = [abs(num.extreme()[0]), abs(num.extreme(largest=True)[0])]
        self.n_unit = max(max(n_extremes), 1e-300)
        scaled_num = _scaled(num, 1.0 / self.n_unit)
        scaled_den = _scaled(den, 1.0 / self.d_unit)
        z_lo = self.d_unit / fractional.d_max
        m.z = pyo.Var(bounds=(z_lo, 1.0))
        m.y = pyo.Var(m.W, bounds=(0.0, 1.0))
        m.u = pyo.Var(m.Bt, bounds=(0.0, 1.0))
        # y = z·w and u = z·β exactly: each is 0 where its binary is 0 and the homogenised choice
        # equations below force the one nonzero entry to equal z. All four McCormick inequalities,
        # with per-option bounds on z (an arch that uses an option has D within that option's own
        # range), are implied for binaries but tighten the LP relaxation the branch and bound uses.
        y_lo, y_hi, u_lo, u_hi = _option_bounds(den, fractional.d_min, fractional.d_max)
        y_lo, y_hi, u_lo, u_hi = (self.d_unit / a for a in (y_hi, y_lo, u_hi, u_lo))  # D range -> z range
        m.y_le_w = pyo.Constraint(m.W, rule=lambda m, s, b, c: m.y[s, b, c] <= y_hi[s, b, c] * m.w[s, b, c])
        m.y_ge_w = pyo.Constraint(m.W, rule=lambda m, s, b, c: m.y[s, b, c] >= y_lo[s, b, c] * m.w[s, b, c])
        m.y_ge_z = pyo.Constraint(m.W, rule=lambda m, s, b, c: m.y[s, b, c] >= m.z - (1 - m.w[s, b, c]))
        m.y_le_z = pyo.Constraint(m.W, rule=lambda m, s, b, c: m.y[s, b, c] <= m.z - z_lo * (1 - m.w[s, b, c]))
        m.u_le_beta = pyo.Constraint(m.Bt, rule=lambda m, s, j: m.u[s, j] <= u_hi[s, j] * m.beta[s, j])
        m.u_ge_beta = pyo.Constraint(m.Bt, rule=lambda m, s, j: m.u[s, j] >= u_lo[s, j] * m.beta[s, j])
        m.u_ge_z = pyo.Constraint(m.Bt, rule=lambda m, s, j: m.u[s, j] >= m.z - (1 - m.beta[s, j]))
        m.u_le_z = pyo.Constraint(m.Bt, rule=lambda m, s, j: m.u[s, j] <= m.z - z_lo * (1 - m.beta[s, j]))
        m.one_depth_z = pyo.Constraint(
            pyo.Set(initialize=idx.free_stages, ordered=True),
            rule=lambda m, s: pyo.quicksum(m.u[s, j] for j in range(p.num_depths[s])) == m.z,
        )

        def active(m, s, b):
            reach = idx.reach[s, b]
            rhs = m.z if reach is None else pyo.quicksum(m.u[k] for k in reach)
            return pyo.quicksum(m.y[s, b, c] for c in idx.configs[s, b]) == rhs

        m.block_active_z = pyo.Constraint(pyo.Set(initialize=idx.blocks, dimen=2, ordered=True), rule=active)

        def homogenised(table: BilinearTable):
            const = table.constant + sum(table.depth[s, 0] for s in idx.fixed_depth)
            return const * m.z + _linear_expr(pyo, table, idx, m.y, m.u, offset=False)

        m.normalise = pyo.Constraint(expr=homogenised(scaled_den) == 1.0)
        m.del_component(m.obj)
        m.obj = pyo.Objective(expr=homogenised(scaled_num), sense=pyo.minimize)
        self.sense, self.offset = "min", 0.0
        self.default_abs_gap = 1e-9
        self.build_seconds = time.perf_counter() - start

    def unscale(self, value: float | None) -> float | None:
        """A scaled ratio (``value`` or ``bound`` of :meth:`solve`) in the units of ``N / D``."""
        return None if value is None else value * self.n_unit / self.d_unit


def _option_bounds(den: BilinearTable, d_min: float, d_max: float):
    """Smallest and largest ``D`` over the archs that use each option: ``(S, D, C)`` for block
    configs (when the block runs) and ``(S, nd)`` for depth options.

    Swapping one block's config for its cheapest (dearest) one, or one stage for its cheapest
    (dearest) depth and configs, gives another arch, so ``D`` of an arch using an option is at least
    ``D_min`` plus that option's excess over the cheapest alternative (likewise at most).
    """
    staged = den.staged
    lo_depth = np.full(den.depth.shape, d_min)
    hi_depth = np.full(den.depth.shape, d_max)
    if staged.shared_labels:
        # Swapping one block's config would change the blocks that share its decisions: keep the global range.
        return np.full(den.block.shape, d_min), np.full(den.block.shape, d_max), lo_depth, hi_depth
    exists = staged.config_exists()
    block = den.block
    cheapest_block = np.where(exists, block, np.inf).min(-1, keepdims=True)
    dearest_block = np.where(exists, block, -np.inf).max(-1, keepdims=True)
    lo_block = d_min + (block - cheapest_block)
    hi_block = d_max - (dearest_block - block)
    lo_block, hi_block = np.where(exists, lo_block, d_min), np.where(exists, hi_block, d_max)
    for s, st in enumerate(staged.stages):
        cheapest = np.array([den.depth[s, j] + cheapest_block[s, :d].sum() for j, d in enumerate(st.depths)])
        dearest = np.array([den.depth[s, j] + dearest_block[s, :d].sum() for j, d in enumerate(st.depths)])
        lo_depth[s, : len(st.depths)] = d_min + cheapest - cheapest.min()
        hi_depth[s, : len(st.depths)] = d_max - (dearest.max() - dearest)
    return lo_block, hi_block, lo_depth, hi_depth


def _scaled(table: BilinearTable, factor: float) -> BilinearTable:
    return BilinearTable(table.staged, table.constant * factor, table.block * factor, table.depth * factor, name=table.name)


def _combined(num: BilinearTable, den: BilinearTable, lam: float) -> BilinearTable:
    """``N − λ D`` as one table."""
    return BilinearTable(num.staged, num.constant - lam * den.constant, num.block - lam * den.block,
                         num.depth - lam * den.depth, name=f"{num.name}-lambda*{den.name}")


BRUTE_FORCE_LIMIT = 2_000_000
_CHUNK = 65_536


def _stage_option_counts(staged) -> list[int]:
    """Per stage, the number of distinct (depth, running configs) options, counted without listing them."""
    return [sum(math.prod(len(c) for c in st.configs[:d]) for d in st.depths) for st in staged.stages]


def count_archs(staged) -> int:
    """The number of index arrays :func:`enumerate_indices` walks through (exact Python int; with
    shared decisions an upper bound on the distinct archs, as the inconsistent ones are dropped later)."""
    return math.prod(_stage_option_counts(staged))


def _check_size(staged, limit: int) -> int:
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ValueError(f"`limit` must be a positive int, got {limit!r}")
    total = count_archs(staged)
    if total > limit:
        raise ValueError(
            f"brute force refused: the space has {total:.3g} archs to enumerate ({total:,}), more than `limit`={limit:,}; "
            "use an exact solver method (method='dinkelbach' or 'charnes_cooper')"
        )
    return total


def _stage_options(st, max_blocks: int) -> tuple[np.ndarray, np.ndarray]:
    rows, depths = [], []
    for j, d in enumerate(st.depths):
        for combo in itertools.product(*(range(len(c)) for c in st.configs[:d])):
            row = np.zeros(max_blocks, dtype=np.int64)
            row[:d] = combo
            row[st.num_blocks:] = -1
            rows.append(row)
            depths.append(j)
    return np.stack(rows), np.array(depths, dtype=np.int64)


def iter_indices(staged, limit: int = BRUTE_FORCE_LIMIT, chunk: int = _CHUNK):
    """Every distinct arch of a staged space as index arrays, in chunks of at most ``chunk`` archs:
    yields ``(configs (n, S, D), depths (n, S))`` (see :func:`enumerate_indices`).

    Raises:
        ValueError: when there are more than ``limit`` archs, counted before anything is built.
    """
    _check_size(staged, limit)
    options = [_stage_options(st, staged.max_blocks) for st in staged.stages]
    sizes = [len(d) for _, d in options]
    total = math.prod(sizes)
    for begin in range(0, total, chunk):
        picks = np.unravel_index(np.arange(begin, min(begin + chunk, total)), sizes)  # per stage (n,)
        configs = np.stack([options[s][0][picks[s]] for s in range(len(sizes))], 1)
        depths = np.stack([options[s][1][picks[s]] for s in range(len(sizes))], 1)
        if staged.shared_labels:
            keep = staged.consistent(configs, depths)
            configs, depths = configs[keep], depths[keep]
        yield configs, depths


def enumerate_indices(staged, limit: int = BRUTE_FORCE_LIMIT) -> tuple[np.ndarray, np.ndarray]:
    """Every distinct arch of a staged space as index arrays ``(N, S, D)`` configs, ``(N, S)`` depths.

    Blocks past a stage's depth get config 0 (they do not run), so no arch appears twice; with
    shared decisions only the index arrays whose running blocks agree on them are kept.

    Raises:
        ValueError: when there are more than ``limit`` archs (counted arithmetically first, so a
            huge space is refused at once instead of filling the memory).
    """
    chunks = list(iter_indices(staged, limit))
    S, D = staged.num_stages, staged.max_blocks
    if not chunks:
        return np.zeros((0, S, D), dtype=np.int64), np.zeros((0, S), dtype=np.int64)
    return np.concatenate([c for c, _ in chunks]), np.concatenate([d for _, d in chunks])


def solve_fractional(
    numerator: BilinearTable,
    denominator: BilinearTable,
    limits: Any = (),
    *,
    constant: float = 0.0,
    scale: float = 1.0,
    method: str = "dinkelbach",
    solver: str = "appsi_highs",
    base: Mapping[str, Any] | None = None,
    time_limit: float | None = None,
    tol: float = 1e-9,
    max_iter: int = 100,
    require_optimal: bool = False,
    limit: int = BRUTE_FORCE_LIMIT,
    top_k: int = 1,
    verify: Any = None,
    max_verify: int = 5,
) -> SearchResult:
    """Maximise ``constant − scale · numerator / denominator`` subject to ``limits``, exactly.

    Args:
        numerator: see :class:`FractionalProblem`.
        denominator: see :class:`FractionalProblem`.
        limits: see :class:`FractionalProblem`.
        constant: see :class:`FractionalProblem`.
        scale: see :class:`FractionalProblem`.
        base: see :class:`FractionalProblem`.
        method: ``"dinkelbach"`` (default: a few MILPs with the strong relaxation of the plain
            problem), ``"charnes_cooper"`` (one MILP; its LP relaxation is weak, so HiGHS needs many
            more nodes: 10-100× slower in ``benchmarks/mathnas_solve_time.py``) or ``"brute_force"``.
        solver: Pyomo solver name (any installed MILP solver).
        time_limit: per-MILP time limit in seconds; a MILP stopped by it makes the result
            ``status="time_limit"`` (with a :class:`~lightning_nas.solvers.problem.NotOptimalWarning`).
        tol: Dinkelbach stops when the ratio improves by less than ``tol · max(1, |ratio|)``.
        max_iter: Dinkelbach's iteration cap (reaching it: ``status="feasible"``, with a warning).
        require_optimal: raise :class:`~lightning_nas.solvers.problem.NotOptimalError` instead of
            returning an arch whose optimality is not proven.
        limit: the most archs ``"brute_force"`` enumerates (counted before anything is built).
        top_k: also find the ``top_k`` best distinct archs by the objective (``result.pool``, best
            first), exactly: each is the optimum once the ones before it are cut off (no-good cuts
            on the binaries; ``"brute_force"`` sorts).
        verify: measures archs, ``arch -> {name: value}`` (limited resources, optionally the
            objective's name, e.g. the measured accuracy); the pool (or the single pick) is
            measured and the best arch that truly meets every limit returned, as in
            :func:`~lightning_nas.solvers.search_constrained` (tries in ``details["verification"]``,
            their count in ``details["evaluations"]``).
        max_verify: most archs ``verify`` measures.

    Returns:
        A :class:`SearchResult` (``method`` as given): ``objective`` is the fractional objective,
        ``resources`` the limited tables and the denominator, ``details`` holds ``numerator``,
        ``denominator``, ``ratio`` and the method's counts and timings.

    Raises:
        InfeasibleError: no arch meets the limits; names the resource and its smallest (largest)
            achievable value subject to the other limits.
        ValueError: bad arguments.
    """
    start = time.perf_counter()
    if method not in FRACTIONAL_METHODS:
        raise ValueError(f"`method` must be one of {FRACTIONAL_METHODS}, got {method!r}")
    if isinstance(max_iter, bool) or not (isinstance(max_iter, int) and max_iter >= 1):
        raise ValueError(f"`max_iter` must be a positive int, got {max_iter!r}")
    if isinstance(tol, bool) or not (isinstance(tol, (int, float)) and tol >= 0 and math.isfinite(tol)):
        raise ValueError(f"`tol` must be a finite number >= 0, got {tol!r}")
    if not isinstance(require_optimal, bool):
        raise ValueError(f"`require_optimal` must be True or False, got {require_optimal!r}")
    time_limit = check_time_limit(time_limit)
    top_k = check_top_k(top_k)
    fp = FractionalProblem(numerator, denominator, limits, constant=constant, scale=scale, base=base)
    check_verify(verify, max_verify, fp.problem)

    def solve(fp: FractionalProblem) -> SearchResult:
        if method == "brute_force":
            _check_size(fp.staged, limit)  # before anything else: a huge space is refused at once
            fp.problem.check_each_limit()
            return _brute_force(fp, start, limit, top_k)
        fp.problem.check_each_limit()
        if method == "charnes_cooper":
            return _charnes_cooper(fp, solver, time_limit, start, top_k, require_optimal)
        return _dinkelbach(fp, solver, time_limit, tol, max_iter, start, top_k, require_optimal)

    result = solve(fp)
    if verify is not None:
        def resolve(problem: ConstrainedProblem) -> SearchResult:
            return solve(FractionalProblem(numerator, denominator, problem.limits, constant=constant, scale=scale,
                                           base=base))

        result = verify_result(fp.problem, result, verify, resolve, max_tries=max_verify)
        result.solve_seconds = time.perf_counter() - start
    return result


def _charnes_cooper(fp: FractionalProblem, solver: str, time_limit: float | None, start: float, top_k: int,
                    require_optimal: bool) -> SearchResult:
    model = CharnesCooperModel(fp)
    pool: list[SearchResult] = []
    while len(pool) < top_k:
        out = model.solve(solver, time_limit=time_limit)
        if pool and out["status"] in ("infeasible", "error"):
            break  # every arch that meets the limits is in the pool
        _raise_if_infeasible(fp, out, solver, time_limit)
        details = {"build_seconds": model.build_seconds, "solver_seconds": out["solver_seconds"],
                   "bound_ratio": model.unscale(out["bound"]), "termination": out["termination"], "iterations": 1}
        result = fp.result(out["configs"], out["depths"], method="charnes_cooper", solver=solver, start=start,
                           status=out["status"], gap=out["gap"], details=details)
        pool.append(finish_result(result, require_optimal=require_optimal, time_limit=time_limit))
        if len(pool) < top_k and (model.idx.w or model.idx.beta):
            model.add_no_good(out["configs"], out["depths"])
        else:
            break
    return _with_pool(pool, top_k, start)


def _with_pool(pool: list[SearchResult], top_k: int, start: float) -> SearchResult:
    best = pool[0]
    if top_k > 1:
        best.pool = pool
    best.solve_seconds = time.perf_counter() - start
    return best


def _raise_if_infeasible(fp: FractionalProblem, out: Mapping[str, Any], solver: str, time_limit: float | None) -> None:
    if out["status"] == "infeasible":
        diagnose_infeasibility(fp.problem, solver=solver, time_limit=time_limit)
        raise InfeasibleError("the solver reports that no arch meets the limits")
    if out["status"] == "error":
        raise no_solution_error(solver, out, time_limit)


def _dinkelbach(fp: FractionalProblem, solver: str, time_limit: float | None, tol: float, max_iter: int,
                start: float, top_k: int = 1, require_optimal: bool = False) -> SearchResult:
    # One model; only the objective N − λD changes between iterations (unpruned: dominance depends on λ).
    model = MilpModel(fp.problem, "compact", minimise=fp.numerator, prune=False)
    pool: list[SearchResult] = []
    lam = 0.0
    while len(pool) < top_k:
        try:
            result = _dinkelbach_once(fp, model, solver, time_limit, tol, max_iter, start, lam)
        except InfeasibleError:
            if not pool:
                raise
            break  # every arch that meets the limits is in the pool
        pool.append(finish_result(result, require_optimal=require_optimal, time_limit=time_limit))
        if len(pool) >= top_k or not (model.idx.w or model.idx.beta):
            break
        configs, depths = fp.problem.staged.indices(result.arch)
        model.add_no_good(configs, depths)
        # The next ratio is at least this one: starting there, F(λ) ≥ 0 and the first solve jumps
        # to an arch at or above the new optimum, from which Dinkelbach descends as usual.
        lam = result.details["ratio"]
    return _with_pool(pool, top_k, start)


def _dinkelbach_once(fp: FractionalProblem, model: MilpModel, solver: str, time_limit: float | None, tol: float,
                     max_iter: int, start: float, lam: float) -> SearchResult:
    pyo = _pyo()
    m, idx = model.model, model.idx
    best, history, solver_seconds, status = None, [], 0.0, "optimal"
    for iteration in range(1, max_iter + 1):
        table = _combined(fp.numerator, fp.denominator, lam)
        m.del_component(m.obj)
        m.obj = pyo.Objective(expr=_linear_expr(pyo, table, idx, m.w, m.beta, offset=False), sense=pyo.minimize)
        model.offset = table.constant + sum(table.depth[s, 0] for s in idx.fixed_depth)
        spread = max(table.extreme(largest=True)[0] - table.extreme()[0], 1e-300)
        out = model.solve(solver, time_limit=time_limit, abs_gap=1e-10 * spread)
        _raise_if_infeasible(fp, out, solver, time_limit)
        solver_seconds += out["solver_seconds"]
        if out["status"] != "optimal" and status != "time_limit":
            status = out["status"]
        ratio = float(fp.ratio(out["configs"], out["depths"]))
        history.append(ratio)
        improved = best is None or ratio < best[0] - tol * max(1.0, abs(best[0]))
        if best is None or ratio < best[0]:
            best = (ratio, out["configs"], out["depths"])
        # F(λ) = min N − λD = 0 at the optimal ratio: no arch improves on λ any more.
        if not improved:
            break
        lam = ratio
    else:
        if status == "optimal":
            status = "feasible"  # iteration cap reached without the certificate F(λ) = 0
    details = {"build_seconds": model.build_seconds, "solver_seconds": solver_seconds, "iterations": len(history),
               "ratios": history, "termination": "optimal" if status == "optimal" else
               ("time limit in an iteration" if status == "time_limit" else f"max_iter={max_iter} reached or a MILP stopped early")}
    return fp.result(best[1], best[2], method="dinkelbach", solver=solver, start=start, status=status, details=details)


def _brute_force(fp: FractionalProblem, start: float, limit: int = BRUTE_FORCE_LIMIT, top_k: int = 1) -> SearchResult:
    # Chunked, so memory stays bounded by the chunk size (plus the top_k kept) whatever the number of archs.
    p = fp.problem
    kept: list[tuple[float, np.ndarray, np.ndarray]] = []  # the best top_k so far, best first
    evaluations = 0
    # Per limit: the smallest and largest value over the archs that meet the other limits (for the diagnosis).
    lo = np.full(p.num_limits, np.inf)
    hi = np.full(p.num_limits, -np.inf)
    for configs, depths in iter_indices(p.staged, limit):
        configs = p.complete_configs(configs)
        _, resources = p.evaluate(configs, depths)
        evaluations += len(depths)
        ok = p.feasible(resources) if p.num_limits else np.ones(len(depths), dtype=bool)
        for k in range(p.num_limits):
            rest = _meets_others(p, resources, k)
            if rest.any():
                lo[k] = min(lo[k], resources[rest, k].min())
                hi[k] = max(hi[k], resources[rest, k].max())
        if not ok.any():
            continue
        ratios = np.where(ok, fp.ratio(configs, depths), np.inf)
        order = np.argsort(ratios, kind="stable")[: top_k]
        kept += [(float(ratios[i]), configs[i], depths[i]) for i in order if np.isfinite(ratios[i])]
        kept = sorted(kept, key=lambda t: t[0])[: top_k]
    if not kept:
        _brute_force_diagnosis(p, lo, hi)
    pool = [fp.result(c, d, method="brute_force", solver=None, start=start, details={"evaluations": evaluations})
            for _, c, d in kept]
    return _with_pool(pool, top_k, start)


def _meets_others(p: ConstrainedProblem, resources: np.ndarray, k: int) -> np.ndarray:
    others = [i for i in range(p.num_limits) if i != k]
    return np.all((resources[:, others] <= p.upper[others] + 1e-7) & (resources[:, others] >= p.lower[others] - 1e-7), -1)


def _brute_force_diagnosis(p: ConstrainedProblem, lo: np.ndarray, hi: np.ndarray) -> None:
    """Raise for the first bound beyond the smallest (``lo``) or largest (``hi``) value of its resource
    over the archs meeting the other limits (``±inf`` where no arch meets them)."""
    for k, lim in enumerate(p.limits):
        if not np.isfinite(lo[k]):
            continue
        unit = f" {lim.table.unit}" if lim.table.unit else ""
        if lim.upper is not None and lo[k] > lim.upper + 1e-7:
            raise InfeasibleError(
                f"no arch meets {lim.name} <= {lim.upper!r}{unit} together with the other limits: the smallest achievable "
                f"{lim.name} subject to the other limits is {float(lo[k])!r}{unit}", lim.name, "upper", lim.upper,
                float(lo[k]))
        if lim.lower is not None and hi[k] < lim.lower - 1e-7:
            raise InfeasibleError(
                f"no arch meets {lim.name} >= {lim.lower!r}{unit} together with the other limits: the largest achievable "
                f"{lim.name} subject to the other limits is {float(hi[k])!r}{unit}", lim.name, "lower", lim.lower,
                float(hi[k]))
    raise InfeasibleError("no arch meets the limits together, although each bound alone is reachable subject to the others")
