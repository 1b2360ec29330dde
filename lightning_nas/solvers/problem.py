"""The constrained architecture search problem (BINAS Eq. 6/7) and its result type.

An *objective* :class:`~lightning_nas.bilinear.BilinearTable` (predicted accuracy) is maximised
over the archs of a :class:`~lightning_nas.spaces.staged.StagedSpace`, subject to any number of
:class:`Limit` s, each a bound on another additive table (latency, FLOPs, params, energy...)::

    max_arch  objective(arch)   s.t.  lower_k <= resource_k(arch) <= upper_k   for every limit k

Every method of :func:`lightning_nas.solvers.search_constrained` works on a
:class:`ConstrainedProblem`, which validates the inputs once and evaluates all tables on index
arrays, and returns a :class:`SearchResult`.

A limit is *additive* (``aggregate="sum"``, the default: the table's value is a sum over the
running units) or a *maximum* (``aggregate="max"``: the value is ``max(constant, depth[s, d_s],
block[s, b, c_sb] for every running block)``, e.g. the peak inference memory of
:func:`~lightning_nas.profiling.memory.build_peak_memory_table`, whose table says so in
``metadata["aggregate"]``). A maximum is not additive, but its upper bound is exactly a set of
per-unit linear constraints, ``max_u m_u(x_u) <= U`` iff ``m_u(x_u) <= U`` for every running unit
``u``: the MILP forbids each configuration and depth option whose entry exceeds ``U`` (``(m - U) w
<= 0`` on its binary), and the brute-force and heuristic paths evaluate the maximum itself
(:func:`max_indices`). A lower bound on a maximum is a disjunction (some unit at least ``L``) and is
refused.

Feasibility is checked on the exact table values with an absolute tolerance of
:data:`FEASIBILITY_TOL` (in each table's unit), the default primal feasibility tolerance of HiGHS,
so that an arch the MILP solver accepts is never reported infeasible.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lightning_nas.bilinear import BilinearTable, _structure
from lightning_nas.spaces.staged import StagedSpace

__all__ = [
    "AGGREGATES",
    "FEASIBILITY_TOL",
    "ConstrainedProblem",
    "InfeasibleError",
    "Limit",
    "NotOptimalError",
    "NotOptimalWarning",
    "SearchFailedError",
    "SearchResult",
    "check_table_finite",
    "check_top_k",
    "max_extreme",
    "max_indices",
]

FEASIBILITY_TOL = 1e-7
AGGREGATES = ("sum", "max")


class InfeasibleError(ValueError):
    """No arch of the space meets the limits.

    Attributes:
        resource: name of the violated resource (``None`` when only the combination is infeasible).
        bound: ``"upper"`` or ``"lower"``.
        limit: the requested bound.
        achievable: the smallest (upper bound) or largest (lower bound) value any arch reaches,
            subject to the other limits when there are several.
    """

    def __init__(self, message: str, resource: str | None = None, bound: str | None = None,
                 limit: float | None = None, achievable: float | None = None) -> None:
        super().__init__(message)
        self.resource, self.bound, self.limit, self.achievable = resource, bound, limit, achievable


class SearchFailedError(RuntimeError):
    """A heuristic method found no arch meeting the limits although one may exist."""


class NotOptimalError(RuntimeError):
    """An exact method stopped before proving its arch optimal (time limit, or another solver
    limit), with ``require_optimal=True``, or before finding any arch at all.

    Attributes:
        result: the best :class:`SearchResult` found (``None`` when the solver found none).
        termination: the solver's termination condition.
    """

    def __init__(self, message: str, result: "SearchResult | None" = None, termination: str | None = None) -> None:
        super().__init__(message)
        self.result, self.termination = result, termination


class NotOptimalWarning(UserWarning):
    """An exact method returns an arch it has not proven optimal (see ``SearchResult.message``)."""


@dataclass(frozen=True)
class Limit:
    """Bounds on one resource.

    Args:
        table: the resource model (``table.name`` names it in results; names must be unique).
        upper: the largest allowed value (``None``: no upper bound), in ``table.unit``.
        lower: the smallest allowed value (``None``: no lower bound).
        aggregate: how the table's entries make an arch's value: ``"sum"`` (additive: latency,
            FLOPs, parameters, KV cache) or ``"max"`` (the largest running entry: peak memory; upper
            bounds only). ``None``: the table's ``metadata["aggregate"]``, else ``"sum"``.
    """

    table: BilinearTable
    upper: float | None = None
    lower: float | None = None
    aggregate: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.table, BilinearTable):
            raise ValueError(f"`Limit.table` must be a BilinearTable, got {type(self.table).__name__}")
        if self.table.link != "identity":
            # The solvers bound the additive form; a linked table's bound would need the link applied first.
            raise ValueError(f"`Limit.table` must be additive (link 'identity'); {self.table.name!r} has link {self.table.link!r}")
        stated = (self.table.metadata or {}).get("aggregate")
        if stated is not None and stated not in AGGREGATES:
            raise ValueError(f"table {self.table.name!r} has metadata['aggregate'] = {stated!r}; allowed: {AGGREGATES}")
        if self.aggregate is None:
            object.__setattr__(self, "aggregate", stated or "sum")
        elif self.aggregate not in AGGREGATES:
            raise ValueError(f"`aggregate` of the limit on {self.table.name!r} must be one of {AGGREGATES}, got {self.aggregate!r}")
        elif stated is not None and stated != self.aggregate:
            raise ValueError(f"`aggregate`={self.aggregate!r} contradicts table {self.table.name!r}, whose values are a "
                             f"{stated!r} over its units (metadata['aggregate']); leave `aggregate` out")
        for which in ("upper", "lower"):
            value = getattr(self, which)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) or not math.isfinite(value):
                raise ValueError(f"`{which}` limit of {self.table.name!r} must be a finite number or None, got {value!r}")
            object.__setattr__(self, which, float(value))
        if self.upper is None and self.lower is None:
            raise ValueError(f"limit on {self.table.name!r} needs an `upper` or a `lower` bound, got neither")
        if self.aggregate == "max" and self.lower is not None:
            raise ValueError(f"limit on {self.table.name!r} (a maximum over units): only an `upper` bound is supported; a "
                             "lower bound on a maximum is a disjunction (some unit at least that large), not per-unit constraints")
        if self.upper is not None and self.lower is not None and self.lower > self.upper:
            raise ValueError(f"limit on {self.table.name!r}: `lower` ({self.lower}) must not exceed `upper` ({self.upper})")

    @property
    def name(self) -> str:
        return self.table.name

    def predict_indices(self, configs: np.ndarray, depths: np.ndarray) -> np.ndarray:
        """The limited value ``(...)`` for ``(..., S, D)`` config and ``(..., S)`` depth indices (sum or max)."""
        if self.aggregate == "max":
            return max_indices(self.table, configs, depths)
        return self.table.predict_indices(configs, depths)

    def predict(self, arch: Mapping[str, Any]) -> float:
        """The limited value of one arch: the table's sum, or for ``aggregate="max"`` its largest running entry."""
        configs, depths = self.table.staged.indices(arch)
        return float(self.predict_indices(configs, depths))

    def extreme(self, largest: bool = False) -> tuple[float, dict[str, Any]]:
        """The smallest (``largest=True``: largest) value any arch reaches, and such an arch."""
        if self.aggregate == "max":
            return max_extreme(self.table, largest=largest)
        return self.table.extreme(largest=largest)

    def to_dict(self) -> dict[str, Any]:
        out = {"lower": self.lower, "upper": self.upper, "unit": self.table.unit}
        if self.aggregate != "sum":
            out["aggregate"] = self.aggregate
        return out


def max_indices(table: BilinearTable, configs: np.ndarray, depths: np.ndarray) -> np.ndarray:
    """``(...)`` the largest of ``table.constant``, each stage's depth entry and each running block's
    entry, for ``(..., S, D)`` config indices and ``(..., S)`` depth indices: the value of a
    max-type table (peak memory)."""
    st = table.staged
    configs, depths = np.asarray(configs, dtype=np.int64), np.asarray(depths, dtype=np.int64)
    block = np.broadcast_to(table.block, configs.shape + table.block.shape[-1:])
    entries = np.take_along_axis(block, configs[..., None], -1)[..., 0]  # (..., S, D)
    running = st.active(depths) & st.block_exists()
    blocks = np.where(running, entries, -np.inf).max((-2, -1))
    depth = np.broadcast_to(table.depth, depths.shape + table.depth.shape[-1:])
    stages = np.take_along_axis(depth, depths[..., None], -1)[..., 0].max(-1)
    return np.maximum(np.maximum(blocks, stages), table.constant)


def max_extreme(table: BilinearTable, largest: bool = False) -> tuple[float, dict[str, Any]]:
    """The smallest (or largest) value a max-type table takes over the archs of its space, exactly, and such an arch.

    The smallest is the least threshold ``U`` among the table's values at which some arch has every
    term ``<= U``: per stage, a depth option whose entry and whose running blocks' cheapest
    configurations fit (found by bisection; decisions shared by several units are enumerated
    jointly, as in ``BilinearTable.extreme``). The largest is the largest term any arch runs.
    """
    st = table.staged
    exists, depth_exists = st.config_exists(), st.depth_exists()
    if largest:
        best, arch = table.constant, st.space.default()
        can_run = np.arange(st.max_blocks) < np.array([max(stage.depths) for stage in st.stages])[:, None]
        value = np.where(exists & can_run[..., None], table.block, -np.inf)
        s, b, c = np.unravel_index(int(np.argmax(value)), value.shape)
        if value[s, b, c] > best:
            stage = st.stages[s]
            arch = dict(st.space.largest())
            if stage.depth_label is not None:
                arch[stage.depth_label] = max(stage.depths)
            arch.update(zip(stage.block_labels[b], stage.configs[b][c]))
            best = float(value[s, b, c])
        dvalue = np.where(depth_exists, table.depth, -np.inf)
        s, j = np.unravel_index(int(np.argmax(dvalue)), dvalue.shape)
        if dvalue[s, j] > best:
            arch = dict(st.space.default())
            if st.stages[s].depth_label is not None:
                arch[st.stages[s].depth_label] = st.stages[s].depths[j]
            best = float(dvalue[s, j])
        return float(best), st.space.validate(arch)
    candidates = np.unique(np.concatenate([[table.constant], table.block[exists], table.depth[depth_exists]]))
    candidates = candidates[candidates >= table.constant]
    best: tuple[float, dict[str, Any]] | None = None
    for assignment in st.shared_assignments():
        allowed = st.consistent_with(assignment)

        def fits(threshold: float) -> tuple[np.ndarray, np.ndarray] | None:
            configs = np.zeros((st.num_stages, st.max_blocks), dtype=np.int64)
            depths = np.zeros(st.num_stages, dtype=np.int64)
            for s, stage in enumerate(st.stages):
                ok = allowed[s] & (table.block[s] <= threshold)  # (D, C)
                chosen = None
                for j, d in enumerate(stage.depths):
                    if table.depth[s, j] <= threshold and all(ok[b].any() for b in range(d)):
                        chosen = j
                        break
                if chosen is None:
                    return None
                depths[s] = chosen
                for b in range(stage.num_blocks):
                    pick = ok[b] if ok[b].any() else allowed[s, b]
                    configs[s, b] = int(np.argmax(pick)) if pick.any() else 0
            return configs, depths

        lo, hi = 0, len(candidates) - 1
        if fits(candidates[hi]) is None:
            continue  # this joint value of the shared decisions leaves some stage without a fitting depth
        while lo < hi:  # feasibility is monotone in the threshold
            mid = (lo + hi) // 2
            if fits(candidates[mid]) is None:
                lo = mid + 1
            else:
                hi = mid
        configs, depths = fits(candidates[lo])
        value = float(max_indices(table, configs, depths))
        if best is None or value < best[0]:
            best = (value, st.to_arch(configs, depths))
    if best is None:
        raise ValueError(f"table {table.name!r}: no arch of its space is consistent")  # unreachable for a valid space
    return best


@dataclass
class SearchResult:
    """What a constrained search found.

    Attributes:
        arch: the arch (``None`` only for an infeasible target of a Pareto sweep).
        objective: its predicted objective value (exact table value).
        resources: name → its predicted value of each limited resource.
        limits: name → ``{"lower", "upper", "unit"}``.
        method: ``"milp"``, ``"miqcp"``, ``"bcfw"`` or ``"evolution"``.
        solver: the Pyomo solver name (MILP/MIQCP), ``"scipy-highs"`` (BCFW LPs) or ``None``.
        status: ``"optimal"`` (proven), ``"time_limit"`` (an exact method stopped at its
            ``time_limit`` with this arch, which meets the limits, before proving it optimal),
            ``"feasible"`` (meets the limits, optimality not proven: a heuristic, or a solver
            stopped by another of its limits) or ``"infeasible"`` (the returned arch violates a
            limit, or no arch exists). An exact method's non-optimal result also carries the
            reason in ``message`` and emits a :class:`NotOptimalWarning`.
        gap: relative optimality gap ``(bound - objective) / |objective|`` when the method proves
            a bound, else ``None``.
        solve_seconds: wall time of the whole search, seconds (model building included).
        feasible: whether ``arch`` meets every limit (to :data:`FEASIBILITY_TOL`).
        message: a human-readable note (the reason for ``"infeasible"``).
        details: method-specific numbers (``build_seconds``, ``iterations``, ``evaluations``, ...).
        relaxed: BCFW's final fractional point ``(α (S, D, C), β (S, max_depth_options))``.
        pool: with ``top_k > 1``, the k best distinct archs by the model, best first (this result
            among them), each a :class:`SearchResult`; empty otherwise.
    """

    arch: dict[str, Any] | None
    objective: float | None
    resources: dict[str, float]
    limits: dict[str, dict[str, Any]]
    method: str
    solver: str | None
    status: str
    gap: float | None = None
    solve_seconds: float = 0.0
    feasible: bool = False
    message: str = ""
    details: dict[str, Any] = field(default_factory=dict)
    relaxed: tuple[np.ndarray, np.ndarray] | None = None
    pool: list["SearchResult"] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict (``relaxed`` as nested lists, ``pool`` as ``{arch, objective, resources}`` rows)."""
        out = {
            "arch": _jsonable(self.arch),
            "objective": self.objective,
            "resources": dict(self.resources),
            "limits": {k: dict(v) for k, v in self.limits.items()},
            "method": self.method,
            "solver": self.solver,
            "status": self.status,
            "gap": self.gap,
            "solve_seconds": self.solve_seconds,
            "feasible": self.feasible,
            "message": self.message,
            "details": _jsonable(self.details),
        }
        if self.relaxed is not None:
            out["relaxed"] = {"alpha": self.relaxed[0].tolist(), "beta": self.relaxed[1].tolist()}
        if self.pool:
            out["pool"] = [{"arch": _jsonable(r.arch), "objective": r.objective, "resources": dict(r.resources)}
                           for r in self.pool]
        return out


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def check_top_k(top_k: Any) -> int:
    """``top_k`` if it is an int >= 1, else ``ValueError``."""
    if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 1:
        raise ValueError(f"`top_k` must be an int >= 1 (the number of best distinct archs to return), got {top_k!r}")
    return int(top_k)


def _as_limit(item: Any) -> Limit:
    if isinstance(item, Limit):
        return item
    if isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], BilinearTable):
        return Limit(item[0], upper=item[1])
    raise ValueError(f"each limit must be a Limit or a (BilinearTable, upper) pair, got {item!r}")


class ConstrainedProblem:
    """A validated search problem with vectorised evaluation on index arrays.

    Args:
        objective: the table to maximise.
        limits: a :class:`Limit`, a ``(table, upper)`` pair, or a sequence of them (may be empty).
        base: arch whose values fill the labels the tables do not cover, and the configs of blocks
            that never run (default: the space's default arch).

    Raises:
        ValueError: tables on different space structures, duplicate resource names, bad bounds.
    """

    def __init__(self, objective: BilinearTable, limits: Any = (), base: Mapping[str, Any] | None = None) -> None:
        if not isinstance(objective, BilinearTable):
            raise ValueError(f"`objective` must be a BilinearTable, got {type(objective).__name__}")
        check_table_finite(objective, "objective")
        if isinstance(limits, (Limit, tuple)) and not (isinstance(limits, tuple) and all(isinstance(x, (Limit, tuple)) for x in limits)):
            limits = [limits]
        self.limits: tuple[Limit, ...] = tuple(_as_limit(x) for x in limits)
        self.objective = objective
        self.staged: StagedSpace = objective.staged
        structure = None
        for lim in self.limits:
            if lim.table.staged is not self.staged:
                structure = structure if structure is not None else _structure(self.staged)
                if _structure(lim.table.staged) != structure or lim.table.staged.num_configs != self.staged.num_configs:
                    raise ValueError(
                        f"table {lim.name!r} was made for another space structure than the objective {objective.name!r}; "
                        "all tables must share one StagedSpace"
                    )
        for lim in self.limits:
            check_table_finite(lim.table, f"limit on {lim.name!r}")
        names = [lim.name for lim in self.limits]
        if len(set(names)) != len(names):
            raise ValueError(f"limited resources must have unique table names, got {names!r}")
        self.base = dict(self.staged.space.default() if base is None else self.staged.space.validate(base))
        self.base_configs, _ = self.staged.indices(self.base)
        self.names = names

        st = self.staged
        self.depth_values = np.zeros((st.num_stages, st.max_depth_options), dtype=np.int64)
        for s, stage in enumerate(st.stages):
            self.depth_values[s, : len(stage.depths)] = stage.depths
        # A block position can run when some depth option reaches it; the others never matter.
        self.can_be_active = np.zeros((st.num_stages, st.max_blocks), dtype=bool)
        for s, stage in enumerate(st.stages):
            self.can_be_active[s, : max(stage.depths)] = True
        self.always_active = st.always_active()
        self.num_depths = np.array([len(stage.depths) for stage in st.stages])
        self._tables = [objective, *(lim.table for lim in self.limits)]
        self._block = np.stack([t.block for t in self._tables])  # (K+1, S, D, C)
        self._depth = np.stack([t.depth for t in self._tables])  # (K+1, S, nd)
        self._const = np.array([t.constant for t in self._tables])
        self.upper = np.array([np.inf if lim.upper is None else lim.upper for lim in self.limits])
        self.lower = np.array([-np.inf if lim.lower is None else lim.lower for lim in self.limits])
        # Resource ranges put violations of different units on one scale.
        ranges = []
        for lim in self.limits:
            lo, hi = lim.extreme()[0], lim.extreme(largest=True)[0]
            ranges.append(hi - lo if hi > lo else 1.0)
        self.ranges = np.array(ranges)

    @property
    def num_limits(self) -> int:
        return len(self.limits)

    def limits_dict(self) -> dict[str, dict[str, Any]]:
        return {lim.name: lim.to_dict() for lim in self.limits}

    def with_limits(self, limits: Sequence[Limit]) -> "ConstrainedProblem":
        """The same objective and base with other limits."""
        return ConstrainedProblem(self.objective, list(limits), base=self.base)

    # -- evaluation ------------------------------------------------------------------------------
    def evaluate(self, configs: np.ndarray, depths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Objective ``(...)`` and resources ``(..., K)`` for ``(..., S, D)`` configs and ``(..., S)`` depth indices."""
        configs, depths = np.asarray(configs), np.asarray(depths)
        values = np.stack([self.objective.predict_indices(configs, depths)]
                          + [lim.predict_indices(configs, depths) for lim in self.limits], -1)
        return values[..., 0], values[..., 1:]

    @property
    def max_limits(self) -> list[int]:
        """Indices of the limits on a maximum (``aggregate="max"``)."""
        return [k for k, lim in enumerate(self.limits) if lim.aggregate == "max"]

    def violation(self, resources: np.ndarray) -> np.ndarray:
        """``(...)`` total violation of the limits, each in units of its resource's range (0 when feasible)."""
        over = np.maximum(resources - self.upper - FEASIBILITY_TOL, 0.0) + np.maximum(self.lower - FEASIBILITY_TOL - resources, 0.0)
        return (over / self.ranges).sum(-1)

    def feasible(self, resources: np.ndarray) -> np.ndarray:
        """``(...)`` bool: the resources meet every limit to :data:`FEASIBILITY_TOL`."""
        resources = np.asarray(resources)
        return np.all((resources <= self.upper + FEASIBILITY_TOL) & (resources >= self.lower - FEASIBILITY_TOL), -1)

    def complete_configs(self, configs: np.ndarray) -> np.ndarray:
        """``configs`` with the base arch's configs at block positions that never run."""
        return np.where(self.can_be_active, configs, self.base_configs)

    def to_arch(self, configs: np.ndarray, depths: np.ndarray) -> dict[str, Any]:
        return self.staged.to_arch(self.complete_configs(configs), depths, base=self.base)

    def make_result(self, configs: np.ndarray, depths: np.ndarray, *, method: str, solver: str | None,
                    status: str | None = None, gap: float | None = None, solve_seconds: float = 0.0,
                    message: str = "", details: Mapping[str, Any] | None = None,
                    relaxed: tuple[np.ndarray, np.ndarray] | None = None) -> SearchResult:
        """A :class:`SearchResult` for one arch, with exact table values and feasibility.

        ``status`` defaults to ``"feasible"``; any status becomes ``"infeasible"`` when the arch
        violates a limit.
        """
        configs = self.complete_configs(np.asarray(configs))
        obj, res = self.evaluate(configs, depths)
        ok = bool(self.feasible(res))
        if not ok:
            status = "infeasible"
            message = message or "the arch violates: " + ", ".join(self._violations(res))
        return SearchResult(
            arch=self.staged.to_arch(configs, depths, base=self.base),
            objective=float(obj),
            resources={n: float(v) for n, v in zip(self.names, res)},
            limits=self.limits_dict(),
            method=method,
            solver=solver,
            status=status or "feasible",
            gap=gap,
            solve_seconds=solve_seconds,
            feasible=ok,
            message=message,
            details=dict(details or {}),
            relaxed=relaxed,
        )

    def _violations(self, res: np.ndarray) -> list[str]:
        out = []
        for lim, v in zip(self.limits, res):
            if lim.upper is not None and v > lim.upper + FEASIBILITY_TOL:
                out.append(f"{lim.name} {v!r} > upper {lim.upper!r}")
            if lim.lower is not None and v < lim.lower - FEASIBILITY_TOL:
                out.append(f"{lim.name} {v!r} < lower {lim.lower!r}")
        return out

    # -- infeasibility ---------------------------------------------------------------------------
    def check_each_limit(self) -> None:
        """Raise :class:`InfeasibleError` when a single bound is beyond what any arch reaches.

        Exact and cheap (stages are independent for one table, see ``BilinearTable.extreme``);
        necessary but, with several limits, not sufficient for feasibility.
        """
        for lim in self.limits:
            if lim.upper is not None:
                smallest, arch = lim.extreme()
                if smallest > lim.upper + FEASIBILITY_TOL:
                    raise InfeasibleError(
                        f"no arch meets {lim.name} <= {lim.upper!r}{_unit(lim)}: the smallest achievable {lim.name} is "
                        f"{smallest!r}{_unit(lim)} (e.g. arch {arch})",
                        lim.name, "upper", lim.upper, smallest,
                    )
            if lim.lower is not None:
                largest, arch = lim.table.extreme(largest=True)
                if largest < lim.lower - FEASIBILITY_TOL:
                    raise InfeasibleError(
                        f"no arch meets {lim.name} >= {lim.lower!r}{_unit(lim)}: the largest achievable {lim.name} is "
                        f"{largest!r}{_unit(lim)} (e.g. arch {arch})",
                        lim.name, "lower", lim.lower, largest,
                    )

    def extreme_starts(self) -> tuple[np.ndarray, np.ndarray]:
        """Candidate starting archs ``(N, S, D)``, ``(N, S)``: the objective's best arch and, per
        limit, the arch furthest inside each bound (feasible for that limit whenever one is)."""
        archs = [self.objective.extreme(largest=True)[1]]
        for lim in self.limits:
            if lim.upper is not None:
                archs.append(lim.extreme()[1])
            if lim.lower is not None:
                archs.append(lim.table.extreme(largest=True)[1])
        configs, depths = self.staged.indices_many(archs)
        return self.complete_configs(configs), depths


def check_table_finite(table: BilinearTable, role: str) -> None:
    """Raise ``ValueError`` when ``table`` (the ``role`` of a problem) holds a NaN or infinite value.

    The constructor checks them, but the arrays and the constant are public attributes: a NaN set
    afterwards would make every solver answer NaN as "optimal", or report a NaN limit "infeasible".
    """
    st = table.staged
    bad = []
    if not math.isfinite(table.constant):
        bad.append(f"constant {table.constant!r}")
    block, depth = np.asarray(table.block), np.asarray(table.depth)
    if not np.isfinite(block[st.config_exists()]).all():
        bad.append("non-finite `block` entries")
    if not np.isfinite(depth[st.depth_exists()]).all():
        bad.append("non-finite `depth` entries")
    if bad:
        raise ValueError(f"the {role} table {table.name!r} has {' and '.join(bad)}; every value must be a finite number")


def _unit(lim: Limit) -> str:
    return f" {lim.table.unit}" if lim.table.unit else ""
