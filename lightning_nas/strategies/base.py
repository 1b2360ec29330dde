"""The ask/tell interface every black-box search strategy implements.

A strategy proposes architectures with :meth:`Strategy.ask` and learns from measured results with
:meth:`Strategy.tell`. The driver (:func:`~lightning_nas.strategies.driver.run_search`) calls them in
this order: ``ask(n)`` any number of times, and ``tell`` exactly once for every proposal asked, in the
order results arrive (asynchronous strategies keep proposing while earlier proposals are evaluated).
``ask`` may return fewer proposals than asked for, or none: the strategy waits for results (LayerNAS
finishing a layer) or has nothing left to propose (the search ends once nothing is in flight).

Results are always compared as "larger is better": the driver negates minimised objectives before
``tell``. Constraints follow Deb's rules (see :func:`rank_key`), so a strategy never has to reject
a proposal outright and never loops forever looking for a feasible one.

A proposal whose evaluation failed (it raised, was stopped by the per-trial timeout, or its objective
came back NaN or infinite) has no result: the driver calls :meth:`Strategy.tell_failure` instead of
``tell``, so it is never ranked, and the strategy never proposes it again.

State that must survive ``kill -9`` is the strategy's ``__dict__`` (stored by the storage after
every ask and tell, as JSON: see :mod:`lightning_nas.strategies.codec` for the types it may hold);
a strategy overrides :meth:`Strategy.state_dict` / :meth:`Strategy.load_state_dict` to leave out
what it can rebuild (a surrogate's weights).
"""

from __future__ import annotations

import math
import numbers
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lightning_nas.spaces.search_space import SearchSpace

__all__ = ["BatchStrategy", "Constraint", "Failure", "Observation", "Proposal", "Strategy", "arch_key", "rank_key", "total_violation"]


def arch_key(arch: Mapping[str, Any]) -> tuple:
    """A hashable key of an arch dict (values in label order; lists become tuples)."""
    return tuple((k, _hashable(arch[k])) for k in sorted(arch))


def _hashable(value: Any) -> Any:
    return tuple(_hashable(v) for v in value) if isinstance(value, (list, tuple)) else value


@dataclass(frozen=True)
class Proposal:
    """An architecture to evaluate, at ``fidelity`` (epochs; ``None``: the evaluator's full fidelity)."""

    arch: dict[str, Any]
    fidelity: float | None = None


@dataclass(frozen=True)
class Observation:
    """A measured proposal, as strategies see it.

    Attributes:
        number: the trial number the driver gave the proposal (0, 1, ... in ask order).
        arch: the architecture.
        fidelity: the fidelity it was evaluated at (epochs).
        value: the objective, larger is better (negated when the objective is minimised).
        violation: total constraint violation, 0 when feasible (see :class:`Constraint`).
        metrics: the evaluator's metrics, without the report-only ones (test accuracy).
    """

    number: int
    arch: dict[str, Any]
    fidelity: float
    value: float
    violation: float = 0.0
    metrics: dict[str, float] = field(default_factory=dict)

    @property
    def feasible(self) -> bool:
        return self.violation <= 0.0


@dataclass(frozen=True)
class Failure:
    """A proposal whose evaluation produced no result: ``reason`` says why (the error, the timeout,
    the non-finite objective)."""

    number: int
    arch: dict[str, Any]
    fidelity: float
    reason: str


def rank_key(value: float, violation: float) -> tuple[bool, float]:
    """Sort key, larger is better, by Deb's rules: feasible beats infeasible; feasible ones compare by
    objective, infeasible ones by smaller violation."""
    return (violation <= 0.0, value if violation <= 0.0 else -violation)


@dataclass(frozen=True)
class Constraint:
    """A bound on one metric: ``lower <= metrics[metric] <= upper``.

    The metric is anything the evaluator or a cost model reports: parameters, FLOPs, a latency or
    energy column, or any black-box cost. Its violation is the distance outside the bound in units
    of the bound's magnitude, so constraints on different scales add up.
    """

    metric: str
    upper: float | None = None
    lower: float | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.metric, str) or not self.metric:
            raise ValueError(f"Constraint `metric` must be a metric name (a non-empty string), got {self.metric!r}")
        if self.upper is None and self.lower is None:
            raise ValueError(f"Constraint on {self.metric!r} needs `upper` and/or `lower`, got neither")
        for name in ("upper", "lower"):
            bound = getattr(self, name)
            if bound is not None and (isinstance(bound, bool) or not isinstance(bound, numbers.Real)
                                      or not math.isfinite(bound)):
                raise ValueError(f"Constraint `{name}` must be a finite number, got {bound!r}")
        if self.upper is not None and self.lower is not None and self.lower > self.upper:
            raise ValueError(f"Constraint on {self.metric!r}: `lower` {self.lower} exceeds `upper` {self.upper}")

    def violation(self, metrics: Mapping[str, float]) -> float:
        """How far ``metrics[self.metric]`` lies outside the bound (0 inside), relative to the bound."""
        if self.metric not in metrics:
            raise KeyError(f"constraint metric {self.metric!r} is not among the metrics {sorted(metrics)}")
        value = float(metrics[self.metric])
        if math.isnan(value):
            return math.inf
        excess = 0.0
        if self.upper is not None and value > self.upper:
            excess += (value - self.upper) / max(abs(self.upper), 1e-12)
        if self.lower is not None and value < self.lower:
            excess += (self.lower - value) / max(abs(self.lower), 1e-12)
        return excess


def total_violation(constraints: Sequence[Constraint], metrics: Mapping[str, float]) -> float:
    """Sum of the constraints' violations (0 when all hold)."""
    return float(sum(c.violation(metrics) for c in constraints))


class Strategy(ABC):
    """Base class of search strategies (see the module docstring for the call order).

    Args:
        space: the search space; proposals are valid archs of it.
        seed: seeds every random choice (same seed and same results told, same proposals).
        constraints: bounds a proposal should meet.
        cost_model: optional ``arch -> {metric: value}`` known *before* evaluation (a latency table,
            a parameter count); strategies use it to steer proposals into the constraints.
    """

    def __init__(self, space: SearchSpace, *, seed: int = 0, constraints: Sequence[Constraint] = (),
                 cost_model: Callable[[Mapping[str, Any]], Mapping[str, float]] | None = None) -> None:
        if not isinstance(space, SearchSpace):
            raise ValueError(f"`space` must be a SearchSpace, got {type(space).__name__}")
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"`seed` must be a non-negative int, got {seed!r}")
        if cost_model is not None and not callable(cost_model):
            raise ValueError(f"`cost_model` must be None or a callable arch -> {{metric: value}}, got {cost_model!r}")
        constraints = tuple(constraints)
        if not all(isinstance(c, Constraint) for c in constraints):
            raise ValueError(f"`constraints` must be Constraint objects, got {constraints!r}")
        self.space = space
        self.seed = seed
        self.constraints = constraints
        self.cost_model = cost_model
        self.rng = np.random.default_rng(seed)
        self.history: list[Observation] = []
        self.failures: list[Failure] = []

    @abstractmethod
    def ask(self, n: int = 1) -> list[Proposal]:
        """Up to ``n`` new proposals (possibly fewer, or none: see the module docstring)."""

    def tell(self, observation: Observation) -> None:
        """Learn from one result. The base class appends it to :attr:`history`."""
        self.history.append(observation)

    def tell_failure(self, failure: Failure) -> None:
        """A proposal asked earlier failed: it has no result. The base class appends it to
        :attr:`failures` (never ranked; strategies never propose an arch already asked)."""
        self.failures.append(failure)

    # -- helpers shared by strategies ----------------------------------------------------------
    def predicted_violation(self, arch: Mapping[str, Any]) -> float:
        """Constraint violation predicted by the cost model (0 without one, or for constraints on
        metrics the cost model does not report — those are only known after evaluation)."""
        if self.cost_model is None or not self.constraints:
            return 0.0
        costs = self.cost_model(arch)
        return float(sum(c.violation(costs) for c in self.constraints if c.metric in costs))

    def steered_draw(self, draw: Callable[[], dict[str, Any]], seen: set[tuple], tries: int) -> dict[str, Any] | None:
        """Up to ``tries`` calls of ``draw()``: the first unseen arch the cost model predicts to meet the
        constraints, else the unseen one predicted to violate them least (``None``: every draw was seen)."""
        best, best_violation = None, float("inf")
        for _ in range(tries):
            arch = draw()
            if arch_key(arch) in seen:
                continue
            violation = self.predicted_violation(arch)
            if violation <= 0.0:
                return arch
            if violation < best_violation:
                best, best_violation = arch, violation
        return best

    def random_arch(self) -> dict[str, Any]:
        """A uniformly random arch of the space, drawn from :attr:`rng`."""
        return {d.label: d.values[int(self.rng.integers(len(d.values)))] for d in self.space}

    def mutate(self, arch: Mapping[str, Any]) -> dict[str, Any]:
        """``arch`` with one decision (uniformly chosen among those with several values) changed to
        another of its values, uniformly."""
        choices = [d for d in self.space if len(d.values) > 1]
        if not choices:
            return dict(arch)
        decision = choices[int(self.rng.integers(len(choices)))]
        others = [v for v in decision.values if v != arch[decision.label]]
        child = dict(arch)
        child[decision.label] = others[int(self.rng.integers(len(others)))]
        return child

    #: Constructor arguments the caller passes again on resume; not part of the stored state.
    config_attributes: tuple[str, ...] = ("space", "cost_model", "constraints")

    def state_dict(self) -> dict[str, Any]:
        """What the storage keeps to resume this strategy (plain data, see
        :mod:`~lightning_nas.strategies.codec`): every attribute but
        :attr:`config_attributes`."""
        return {k: v for k, v in self.__dict__.items() if k not in self.config_attributes}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` output."""
        self.__dict__.update(state)

    def best(self) -> Observation | None:
        """The best observation told so far by :func:`rank_key` at the highest fidelity seen."""
        if not self.history:
            return None
        top = max(o.fidelity for o in self.history)
        return max((o for o in self.history if o.fidelity == top), key=lambda o: rank_key(o.value, o.violation))


class BatchStrategy(Strategy):
    """A strategy that plans one batch at a time (a BO iteration, a successive-halving round) and
    plans the next only when every proposal of the last has been told, so that
    :meth:`_next_batch` always sees all results. :attr:`batches` counts the batches planned.
    """

    def __init__(self, space: SearchSpace, **kwargs: Any) -> None:
        super().__init__(space, **kwargs)
        self.batches = 0
        self.queue: list[Proposal] = []
        self.pending = 0

    def ask(self, n: int = 1) -> list[Proposal]:
        if not self.queue and self.pending == 0:
            self.queue = self._next_batch()
            self.batches += 1
        out, self.queue = self.queue[:n], self.queue[n:]
        self.pending += len(out)
        return out

    def tell(self, observation: Observation) -> None:
        super().tell(observation)
        self.pending -= 1

    def tell_failure(self, failure: Failure) -> None:
        super().tell_failure(failure)
        self.pending -= 1

    @abstractmethod
    def _next_batch(self) -> list[Proposal]:
        """The next batch of proposals (empty: nothing left to propose)."""
