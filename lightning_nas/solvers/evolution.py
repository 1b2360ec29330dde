"""Regularised (aging) evolution (Real et al., 2019) on the table-predicted objective.

A population of ``population`` archs evolves for ``cycles`` cycles. Each cycle draws ``sample``
members uniformly, mutates the best of them (one decision changed: a stage's depth, or the config
of a block that runs in the parent) and replaces the *oldest* member by the child.

**Constraints** follow Deb's rules, so no draw is ever rejected and the run always ends after
``population + cycles`` evaluations: a feasible arch beats an infeasible one; two feasible archs
compare by objective; two infeasible ones by total violation (each limit in units of its range).
The initial population holds the objective's best arch and, per limit, the arch furthest inside
its bound (with one limit: feasible whenever any arch is), the rest drawn uniformly.

Returns the best feasible arch ever evaluated.
"""

from __future__ import annotations

import time

import numpy as np

from lightning_nas.solvers.problem import ConstrainedProblem, SearchFailedError, SearchResult
from lightning_nas.strategies.base import rank_key  # Deb's feasibility rules, shared with the black-box strategies

__all__ = ["solve_evolution"]


def _key(obj: np.ndarray, viol: np.ndarray) -> np.ndarray:
    """A score where larger is better, by Deb's rules (feasible first, then objective / -violation)."""
    return np.where(viol <= 0.0, obj, -np.inf)


def solve_evolution(problem: ConstrainedProblem, *, seed: int = 0, population: int = 50, sample: int = 10,
                    cycles: int = 1000) -> SearchResult:
    """Search ``problem`` by regularised evolution.

    Args:
        problem: the validated problem.
        seed: seeds every random draw (same seed, same result).
        population: population size (at least 2).
        sample: tournament size, in ``[1, population]``.
        cycles: number of children (evaluations after the initial population).

    Raises:
        SearchFailedError: no evaluated arch met the limits (more cycles may help; the caller
            checks whether the problem is infeasible).
    """
    for name, value, low in (("population", population, 2), ("sample", sample, 1), ("cycles", cycles, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"`{name}` must be an int >= {low}, got {value!r}")
    if sample > population:
        raise ValueError(f"`sample` ({sample}) must not exceed `population` ({population})")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"`seed` must be a non-negative int, got {seed!r}")
    start = time.perf_counter()
    rng = np.random.default_rng(seed)
    st = problem.staged
    S, D = st.num_stages, st.max_blocks
    num_depths = problem.num_depths

    # Initial population: informed starts, then uniform draws in index space.
    seeds_c, seeds_d = problem.extreme_starts()
    n_random = max(population - len(seeds_c), 0)
    counts = np.maximum(st.config_counts(), 1)  # (S, D); blocks may have different numbers of configs
    # Missing positions draw from all C too: spaces whose blocks all have C configs keep their stream.
    draw_high = np.where(st.block_exists(), counts, st.num_configs)
    rand_c = np.where(problem.can_be_active, rng.integers(0, draw_high, size=(n_random, S, D)), problem.base_configs)
    rand_d = np.floor(rng.random((n_random, S)) * num_depths).astype(np.int64)
    pop_c = np.concatenate([seeds_c, rand_c])[:population]
    pop_d = np.concatenate([seeds_d, rand_d])[:population]
    obj, res = problem.evaluate(pop_c, pop_d)
    viol = problem.violation(res)
    pop_obj, pop_viol = list(obj), list(viol)
    pop_c, pop_d = list(pop_c), list(pop_d)

    feasible_mask = viol <= 0.0
    best = None
    if feasible_mask.any():
        i = int(np.argmax(_key(obj, viol)))
        best = (pop_c[i].copy(), pop_d[i].copy(), float(obj[i]))
    evaluations = len(pop_c)
    depth_genes = [s for s in range(S) if num_depths[s] > 1]
    for _ in range(cycles):
        members = rng.choice(len(pop_c), size=sample, replace=False)
        parent = members[0]
        for m in members[1:]:
            if rank_key(pop_obj[m], pop_viol[m]) > rank_key(pop_obj[parent], pop_viol[parent]):
                parent = m
        child_c, child_d = pop_c[parent].copy(), pop_d[parent].copy()
        # Genes that change the child: depths with options, and configs of blocks that run.
        active = problem.staged.active(child_d) & problem.can_be_active & (counts > 1)
        block_genes = np.argwhere(active)
        n_genes = len(depth_genes) + len(block_genes)
        if n_genes:
            g = int(rng.integers(n_genes))
            if g < len(depth_genes):
                s = depth_genes[g]
                child_d[s] = (child_d[s] + 1 + rng.integers(num_depths[s] - 1)) % num_depths[s]
            else:
                s, b = block_genes[g - len(depth_genes)]
                child_c[s, b] = (child_c[s, b] + 1 + rng.integers(counts[s, b] - 1)) % counts[s, b]
        c_obj, c_res = problem.evaluate(child_c, child_d)
        c_viol = float(problem.violation(c_res))
        evaluations += 1
        pop_c.append(child_c); pop_d.append(child_d); pop_obj.append(float(c_obj)); pop_viol.append(c_viol)  # noqa: E702
        del pop_c[0], pop_d[0], pop_obj[0], pop_viol[0]  # aging: the oldest dies
        if c_viol <= 0.0 and (best is None or c_obj > best[2]):
            best = (child_c, child_d, float(c_obj))
    seconds = time.perf_counter() - start
    details = {"evaluations": evaluations, "population": population, "sample": sample, "cycles": cycles, "seed": seed}
    if best is None:
        raise SearchFailedError(
            f"evolution evaluated {evaluations} archs and none met the limits {problem.limits_dict()}; "
            "raise `cycles`, or use method='milp' (exact)"
        )
    return problem.make_result(best[0], best[1], method="evolution", solver=None, status="feasible",
                               solve_seconds=seconds, details=details)
