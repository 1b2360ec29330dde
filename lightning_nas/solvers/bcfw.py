"""BINAS Algorithm 1: block-coordinate Frank–Wolfe (BCFW) on the relaxed bilinear program.

The relaxation puts ``α`` (per block position, a distribution over its ``C`` configs) and ``β``
(per stage, a distribution over its depth options) on products of simplices. Objective and
resources are bilinear: linear in ``α`` for fixed ``β`` and in ``β`` for fixed ``α``. Each
iteration updates ``α`` with probability ``p`` (``β`` otherwise) by solving the LP

    max  g(other)ᵀ x   s.t.  x on its simplices,   lower_k <= h_k(other)ᵀ x + r_k(other) <= upper_k

(a relaxed multiple-choice knapsack) with HiGHS's dual simplex, so the answer is a vertex. The
objective is linear along the Frank–Wolfe direction, so exact line search takes the full step and
the iterate *is* that vertex. A block whose last LP brought no improvement is skipped until the
other block moves (its LP would return the same value). The run stops after ``max_iter``
iterations, or earlier once neither block can improve.

**Sparsity (Theorem 3.3).** A vertex of simplices cut by ``K`` rows has at most ``K`` groups with
more than one non-zero (in total at most ``K`` extra non-zeros). With one limit the output is
one-hot except at most one ``α``-group and one ``β``-group, each with two non-zeros; with ``K``
limits, at most ``K`` split groups per block of variables.

**Start.** From the best of: the objective's best arch, and per limit the arch furthest inside its
bound. With one limit the latter is feasible whenever any arch is, and every later iterate stays
feasible. With several limits the start may violate some; an LP with no feasible point is then
replaced by one minimising the total violation (each limit in units of its range), so the run
first heads for feasibility.

**Rounding.** ``"argmax"`` (the paper) takes each group's largest entry. ``"support"`` tries every
combination of the non-zero entries of the split groups (at most ``2^(2K)``) and keeps the best
feasible one, falling back to argmax.
"""

from __future__ import annotations

import itertools
import time

import numpy as np
from scipy.optimize import linprog

from lightning_nas.solvers.problem import ConstrainedProblem, SearchResult

__all__ = ["ROUNDINGS", "solve_bcfw"]

ROUNDINGS = ("argmax", "support")
_TOL = 1e-9


class _Relaxation:
    """Bilinear evaluation and block-LP coefficients of a problem, on dense ``(α, β)`` arrays."""

    def __init__(self, problem: ConstrainedProblem) -> None:
        self.p = problem
        st = problem.staged
        self.S, self.D, self.C = st.num_stages, st.max_blocks, st.num_configs
        self.nd = st.max_depth_options
        self.block = problem._block  # (T, S, D, C), T = 1 + K tables
        self.depth = problem._depth  # (T, S, nd)
        self.const = problem._const
        # reach[s, j, b]: depth option j of stage s runs block b.
        self.reach = (np.arange(self.D)[None, None, :] < problem.depth_values[:, :, None]).astype(float)
        self.alpha_groups = [(s, b) for s in range(self.S) for b in range(self.D) if problem.can_be_active[s, b]]
        self.beta_groups = [s for s in range(self.S) if problem.num_depths[s] > 1]

    def active(self, beta: np.ndarray) -> np.ndarray:
        """``(S, D)`` probability that each block runs."""
        return np.einsum("sj,sjb->sb", beta, self.reach)

    def values(self, alpha: np.ndarray, beta: np.ndarray) -> np.ndarray:
        """``(T,)`` values of all tables at a (possibly fractional) point."""
        per_block = np.einsum("tsbc,sbc->tsb", self.block, alpha)
        return self.const + np.einsum("tsj,sj->t", self.depth, beta) + np.einsum("tsb,sb->t", per_block, self.active(beta))

    def alpha_coefficients(self, beta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For fixed ``β``: ``(T, S, D, C)`` coefficients of ``α`` and ``(T,)`` constant parts."""
        return self.block * self.active(beta)[None, :, :, None], self.const + np.einsum("tsj,sj->t", self.depth, beta)

    def beta_coefficients(self, alpha: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For fixed ``α``: ``(T, S, nd)`` coefficients of ``β`` and ``(T,)`` constant parts."""
        per_block = np.einsum("tsbc,sbc->tsb", self.block, alpha)
        return self.depth + np.einsum("tsb,sjb->tsj", per_block, self.reach), self.const.copy()


def _block_lp(coef: np.ndarray, const: np.ndarray, groups: list[list[int]], n: int, problem: ConstrainedProblem,
              absent: np.ndarray | None = None) -> tuple[np.ndarray | None, bool]:
    """Solve one BCFW step over flat variables (``coef`` ``(T, n)``; ``groups`` index lists summing to 1;
    ``absent`` ``(n,)`` bool: variables held at 0, configs a block does not have).

    Returns ``(x, hard)``: the vertex and whether the limits held; ``(None, False)`` if HiGHS fails.
    """
    K = problem.num_limits
    a_eq = np.zeros((len(groups), n))
    for g, members in enumerate(groups):
        a_eq[g, members] = 1.0
    rows, rhs, which = [], [], []
    for k in range(K):
        if np.isfinite(problem.upper[k]):
            rows.append(coef[1 + k]); rhs.append(problem.upper[k] - const[1 + k]); which.append(k)  # noqa: E702
        if np.isfinite(problem.lower[k]):
            rows.append(-coef[1 + k]); rhs.append(const[1 + k] - problem.lower[k]); which.append(k)  # noqa: E702
    # Scale rows to their resource's range so HiGHS's tolerances mean the same for every unit.
    scale = np.array([problem.ranges[k] for k in which]) if which else np.zeros(0)
    a_ub = np.array(rows) / scale[:, None] if rows else None
    b_ub = np.array(rhs) / scale if rows else None
    objective_range = np.ptp(coef[0]) if np.ptp(coef[0]) > 1e-12 else 1.0
    bounds = [(0, 0) if out else (0, None) for out in (np.zeros(n, dtype=bool) if absent is None else absent)]
    res = linprog(-coef[0] / objective_range, A_ub=a_ub, b_ub=b_ub, A_eq=a_eq, b_eq=np.ones(len(groups)),
                  bounds=bounds, method="highs-ds")
    if res.status == 0:
        return np.clip(res.x, 0.0, None), True
    if res.status != 2 or a_ub is None:
        return None, False
    # Phase 1: no point of this block meets the limits; minimise the total violation instead.
    m = len(rhs)
    c = np.concatenate([np.zeros(n), np.ones(m)])
    a_ub2 = np.hstack([a_ub, -np.eye(m)])
    a_eq2 = np.hstack([a_eq, np.zeros((len(groups), m))])
    res = linprog(c, A_ub=a_ub2, b_ub=b_ub, A_eq=a_eq2, b_eq=np.ones(len(groups)), bounds=bounds + [(0, None)] * m, method="highs-ds")
    if res.status != 0:
        return None, False
    return np.clip(res.x[:n], 0.0, None), False


def solve_bcfw(problem: ConstrainedProblem, *, seed: int = 0, p: float = 0.5, max_iter: int = 200,
               rounding: str = "argmax") -> SearchResult:
    """Run BCFW on ``problem`` and round its fractional output to an arch.

    Args:
        problem: the validated problem.
        seed: seeds the choice of block (α or β) at each iteration.
        p: probability of updating ``α`` (else ``β``), in ``(0, 1)``.
        max_iter: iteration limit (each iteration is one LP).
        rounding: ``"argmax"`` or ``"support"`` (module docstring).

    Returns:
        A :class:`SearchResult` with ``status`` ``"feasible"`` or ``"infeasible"`` (the rounded arch
        violates a limit), ``relaxed = (α, β)`` the final fractional point and ``details`` holding
        ``iterations``, ``relaxed_objective`` (its objective), ``relaxed_feasible`` and
        ``split_groups`` (counts of α- and β-groups with more than one non-zero).
    """
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not (0.0 < p < 1.0):
        raise ValueError(f"`p` (probability of updating α) must be in (0, 1), got {p!r}")
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
        # Zero iterations would return the start point as if BCFW had run.
        raise ValueError(f"`max_iter` must be an int >= 1, got {max_iter!r}")
    if rounding not in ROUNDINGS:
        raise ValueError(f"`rounding` must be one of {ROUNDINGS}, got {rounding!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"`seed` must be a non-negative int, got {seed!r}")
    start = time.perf_counter()
    rel = _Relaxation(problem)
    rng = np.random.default_rng(seed)

    # Start from the candidate with the best objective among the feasible ones (least violation if none).
    configs, depths = problem.extreme_starts()
    obj, res = problem.evaluate(configs, depths)
    viol = problem.violation(res)
    pick = int(np.lexsort((-obj, viol))[0])
    alpha = np.zeros((rel.S, rel.D, rel.C))
    for s, b in rel.alpha_groups:
        alpha[s, b, configs[pick, s, b]] = 1.0
    beta = np.zeros((rel.S, rel.nd))
    beta[np.arange(rel.S), depths[pick]] = 1.0

    def point_score(a, bt):
        v = rel.values(a, bt)
        return float(problem.violation(v[1:])), float(v[0])

    a_idx = np.array([s * rel.D * rel.C + b * rel.C for s, b in rel.alpha_groups], dtype=np.int64)
    alpha_groups = [list(range(i * rel.C, (i + 1) * rel.C)) for i in range(len(rel.alpha_groups))]
    exists = problem.staged.config_exists()
    absent = np.concatenate([~exists[s, b] for s, b in rel.alpha_groups]) if rel.alpha_groups else np.zeros(0, dtype=bool)
    beta_sizes = [int(problem.num_depths[s]) for s in rel.beta_groups]
    beta_groups, offset = [], 0
    for size in beta_sizes:
        beta_groups.append(list(range(offset, offset + size)))
        offset += size

    stale = {"alpha": not rel.alpha_groups, "beta": not rel.beta_groups}
    iterations = lps = 0
    while iterations < max_iter and not (stale["alpha"] and stale["beta"]):
        iterations += 1
        # A block whose last LP brought nothing is skipped until the other block moves.
        draw = rng.random() < p
        update_alpha = not stale["alpha"] and (draw or stale["beta"])
        before = point_score(alpha, beta)
        if update_alpha:
            coef, const = rel.alpha_coefficients(beta)
            flat = np.stack([coef[t].reshape(-1)[a_idx[:, None] + np.arange(rel.C)].reshape(-1) for t in range(len(coef))])
            x, _ = _block_lp(flat, const, alpha_groups, flat.shape[1], problem, absent)
            lps += 1
            candidate = alpha.copy()
            if x is not None:
                for i, (s, b) in enumerate(rel.alpha_groups):
                    candidate[s, b] = x[i * rel.C:(i + 1) * rel.C]
            new = (candidate, beta)
        else:
            coef, const = rel.beta_coefficients(alpha)
            flat = np.stack([np.concatenate([coef[t, s, : problem.num_depths[s]] for s in rel.beta_groups]) for t in range(len(coef))])
            x, _ = _block_lp(flat, const, beta_groups, flat.shape[1], problem)
            lps += 1
            candidate = beta.copy()
            if x is not None:
                for i, s in enumerate(rel.beta_groups):
                    candidate[s, : beta_sizes[i]] = x[beta_groups[i]]
            new = (alpha, candidate)
        after = point_score(*new)
        # Accept only moves that reduce the violation or, at equal violation, raise the objective:
        # that is the exact line search's full step, guarded against solver round-off.
        improved = after[0] < before[0] - _TOL or (after[0] <= before[0] + _TOL and after[1] > before[1] + _TOL * max(1.0, abs(before[1])))
        if improved:
            alpha, beta = new
            stale = {"alpha": not rel.alpha_groups, "beta": not rel.beta_groups}
        else:
            stale["alpha" if update_alpha else "beta"] = True

    relaxed_values = rel.values(alpha, beta)
    splits_a = sum(int((alpha[s, b] > 1e-9).sum() > 1) for s, b in rel.alpha_groups)
    splits_b = sum(int((beta[s, : problem.num_depths[s]] > 1e-9).sum() > 1) for s in range(rel.S))
    configs, depths = _round(problem, rel, alpha, beta, rounding)
    details = {
        "iterations": iterations,
        "lps": lps,
        "p": p,
        "seed": seed,
        "rounding": rounding,
        "relaxed_objective": float(relaxed_values[0]),
        "relaxed_resources": {n: float(v) for n, v in zip(problem.names, relaxed_values[1:])},
        "relaxed_feasible": bool(problem.feasible(relaxed_values[1:])),
        "split_groups": {"alpha": splits_a, "beta": splits_b},
    }
    return problem.make_result(configs, depths, method="bcfw", solver="scipy-highs-ds", status="feasible",
                               solve_seconds=time.perf_counter() - start, details=details,
                               relaxed=(alpha.copy(), beta.copy()))


def _round(problem: ConstrainedProblem, rel: _Relaxation, alpha: np.ndarray, beta: np.ndarray,
           rounding: str) -> tuple[np.ndarray, np.ndarray]:
    configs = problem.base_configs.copy()
    for s, b in rel.alpha_groups:
        configs[s, b] = int(np.argmax(alpha[s, b]))
    depths = np.array([int(np.argmax(beta[s, : problem.num_depths[s]])) for s in range(rel.S)])
    if rounding == "argmax":
        return configs, depths
    # Every way to resolve the split groups among their non-zero entries.
    options = []
    for s, b in rel.alpha_groups:
        support = np.flatnonzero(alpha[s, b] > 1e-9)
        if len(support) > 1:
            options.append(("a", s, b, support))
    for s in range(rel.S):
        support = np.flatnonzero(beta[s, : problem.num_depths[s]] > 1e-9)
        if len(support) > 1:
            options.append(("b", s, None, support))
    if not options or np.prod([len(o[3]) for o in options]) > 4096:
        return configs, depths
    best, best_key = (configs, depths), None
    for combo in itertools.product(*(o[3] for o in options)):
        c, d = configs.copy(), depths.copy()
        for (kind, s, b, _), value in zip(options, combo):
            if kind == "a":
                c[s, b] = value
            else:
                d[s] = value
        obj, res = problem.evaluate(c, d)
        if problem.feasible(res) and (best_key is None or obj > best_key):
            best, best_key = (c, d), float(obj)
    return best
