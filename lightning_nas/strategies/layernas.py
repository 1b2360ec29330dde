"""LayerNAS (Algorithm 1 of the LayerNAS paper): layer-by-layer search with cost buckets.

Each decision of the space is a *layer*, searched in order. The models stored for layer ``i - 1``
are expanded by setting layer ``i`` to each of its options (later layers keep their current value,
the *default* at the first pass: ``none`` for topology spaces, the most expensive option for
compression spaces). Every child is evaluated once and stored in a per-layer memo table under a key
``h``; only the ``per_bucket`` best models of each key survive, which keeps the search polynomial:
at most ``buckets · per_bucket · |S_i|`` children per layer.

The key is the cost bucket of Eq. 4,
``h = ⌊(cost − min) / (max − min) · H⌋`` clamped to ``[0, H − 1]`` (``h = 0`` when ``max == min``),
with min and max taken over the costs of the layer's children (all known before any training, as
the cost comes from a cost model). For unconstrained topology spaces pass any ``bucket_key``;
without a cost and a key every model is its own bucket (exhaustive search).

Constraints on the bucket cost are the *target range*: a child is proposed only if some completion of
its later layers meets them (checked by enumerating the completions' costs, so the cost need not be
additive). The search runs ``passes`` passes over the layers (the paper's wrap-around) and then
returns no more proposals. It waits for each layer's results before expanding the next (proposals of
one layer are evaluated in parallel).

Choices where the paper leaves freedom, exposed as arguments: ``select`` (default: every stored
model; ``selections=R`` keeps the R best) and ``apply_search_option`` (default: every option;
``children=T`` draws T options without replacement).

Two ways to set ``buckets`` (H), ``per_bucket`` (k) and ``passes``:

* the paper's settings, the constructor's defaults: H = 100, k = 3, one pass (:data:`PAPER_SETTINGS`).
  Polynomial but not small: on NAS-Bench-201 up to 5 + 5·(H·k)·4 evaluations, and one pass fixes
  each edge while the later ones still hold their default (``none``);
* a budget (:meth:`LayerNAS.for_budget`): the largest H whose worst-case number of evaluations
  (:func:`max_evaluations`) fits the given number, with k = 1 and two passes by default (the second
  pass revisits every layer once the later ones hold real values: on NAS-Bench-201 CIFAR-10, H = 4,
  k = 1, two passes reached 94.26 ± 0.20 test in at most 170 evaluations, against 93.17 for the
  paper's settings stopped at 200; ``benchmarks/layernas_nb201.py``).

Only a pseudo-random tie-break and ``children``/``select`` draw from ``seed``; every other step is
deterministic.
"""

from __future__ import annotations

import hashlib
import itertools
import math
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any

from lightning_nas.strategies.base import Failure, Observation, Proposal, Strategy, arch_key, rank_key
from lightning_nas.spaces.search_space import Decision

__all__ = ["PAPER_SETTINGS", "LayerNAS", "cost_bucket", "max_evaluations"]

#: The LayerNAS paper's settings: H = 100 buckets, the 3 best models per bucket, one pass.
PAPER_SETTINGS = {"buckets": 100, "per_bucket": 3, "passes": 1}


def max_evaluations(space, buckets: int, per_bucket: int, passes: int) -> int:
    """The most evaluations LayerNAS with these settings can ask for on ``space`` (every option of
    every layer applied, no target range).

    The first layer evaluates its ``|S_1|`` children of the default arch; every later layer visit
    expands at most ``min(buckets · per_bucket, models that exist so far)`` stored models into
    ``|S_i| − 1`` new children each (the child keeping the model's value is the model itself,
    already evaluated). Repeated children only make the real number smaller.
    """
    for name, value in (("buckets", buckets), ("per_bucket", per_bucket), ("passes", passes)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"`{name}` must be an int >= 1, got {value!r}")
    sizes = [len(d.values) for d in space]
    total, reachable = sizes[0], sizes[0]
    for visit in range(1, passes * len(sizes)):
        layer = visit % len(sizes)
        stored = min(buckets * per_bucket, reachable)
        total += stored * (sizes[layer] - 1)
        reachable = stored * sizes[layer]
    return total


def cost_bucket(cost: float, low: float, high: float, buckets: int) -> int:
    """Eq. 4 of LayerNAS, clamped to ``[0, buckets − 1]`` (``0`` when ``high == low``)."""
    if not high > low:
        return 0
    scaled = (cost - low) / (high - low) * buckets  # may overflow to inf for a subnormal range: clamp first
    return int(math.floor(min(max(scaled, 0.0), buckets - 1.0)))


class LayerNAS(Strategy):
    """Layer-wise search with bucketed memo tables (see the module docstring).

    Args:
        space: see :class:`~lightning_nas.strategies.base.Strategy`.
        seed: see :class:`~lightning_nas.strategies.base.Strategy`.
        constraints: see :class:`~lightning_nas.strategies.base.Strategy`.
        cost_model: see :class:`~lightning_nas.strategies.base.Strategy`.
        cost: the bucketing cost: a metric of ``cost_model``'s output, or a callable ``arch -> float``.
            Constraints on that metric are the target range.
        buckets: H, the number of cost buckets per layer (the paper uses 100; :meth:`for_budget`
            chooses it for an evaluation budget).
        per_bucket: models kept per bucket (the paper keeps 3 against training noise).
        defaults: the value each layer takes before it is searched (default: each decision's first value).
        selections: keep only the best R stored models of a layer for expansion (default: all).
        children: options applied per selected model, drawn without replacement (default: all).
        select: ``select(models, rng) -> models`` replacing the default selection.
        apply_search_option: ``apply_search_option(arch, decision, rng) -> values`` replacing the default.
        bucket_key: ``bucket_key(arch, layer) -> hashable`` replacing the cost bucket.
        passes: passes over all layers.
        completion_limit: most completions enumerated for the target-range check of one child.
    """

    def __init__(self, space, *, seed: int = 0, constraints=(), cost_model=None,
                 cost: str | Callable[[Mapping[str, Any]], float] | None = None, buckets: int = 100,
                 per_bucket: int = 3, defaults: Mapping[str, Any] | None = None, selections: int | None = None,
                 children: int | None = None, select: Callable | None = None,
                 apply_search_option: Callable | None = None, bucket_key: Callable | None = None,
                 passes: int = 1, completion_limit: int = 100_000) -> None:
        super().__init__(space, seed=seed, constraints=constraints, cost_model=cost_model)
        for name, value in (("buckets", buckets), ("per_bucket", per_bucket), ("passes", passes),
                            ("completion_limit", completion_limit)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"`{name}` must be an int >= 1, got {value!r}")
        for name, value in (("selections", selections), ("children", children)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"`{name}` must be None or an int >= 1, got {value!r}")
        if isinstance(cost, str) and cost_model is None:
            raise ValueError(f"`cost`={cost!r} names a cost-model metric, but no `cost_model` was given")
        if cost is not None and not isinstance(cost, str) and not callable(cost):
            raise ValueError(f"`cost` must be a metric name, a callable arch -> float or None, got {cost!r}")
        self.cost = cost
        self.buckets, self.per_bucket, self.passes = buckets, per_bucket, passes
        self.selections, self.children, self.completion_limit = selections, children, completion_limit
        self.select_fn, self.apply_fn, self.bucket_key_fn = select, apply_search_option, bucket_key
        start = {d.label: d.values[0] for d in space}
        if defaults is not None:
            start.update(defaults)
        self.start = space.validate(start)
        # Search state (pickled by the storage).
        self.layer, self.pass_index = 0, 0
        self.tables: list[dict[Hashable, list[Observation]]] = [{} for _ in space]
        self.queue: list[dict[str, Any]] = []
        self.waiting: dict[tuple, Hashable] = {}  # arch key -> bucket of a proposal in flight
        self.evaluated: dict[tuple, Observation] = {}
        self.failed: set[tuple] = set()  # archs whose evaluation failed: not proposed again
        self.done = False
        self.plan: dict[str, int] | None = None  # what for_budget chose, and why
        self._cost_cache: dict[tuple, float] = {}
        self._expand([self.start])

    @classmethod
    def for_budget(cls, space, evaluations: int, *, per_bucket: int = 1, passes: int = 2, **kwargs: Any) -> "LayerNAS":
        """LayerNAS with the most buckets H whose worst case (:func:`max_evaluations`) fits ``evaluations``.

        Args:
            space: see :class:`LayerNAS`.
            evaluations: the evaluation budget.
            per_bucket: k (1 by default: table look-ups and seeded proxy training are not noisy
                enough to need the paper's 3 at a small budget).
            passes: passes over the layers (2 by default, see the module docstring).
            kwargs: the other arguments of :class:`LayerNAS` (``cost`` or ``bucket_key`` is required:
                without buckets nothing bounds the search).

        Raises:
            ValueError: the budget is below the search's smallest worst case (H = 1), no ``cost``
                nor ``bucket_key``, or ``buckets`` given too.
        """
        if isinstance(evaluations, bool) or not isinstance(evaluations, int) or evaluations < 1:
            raise ValueError(f"`evaluations` must be an int >= 1, got {evaluations!r}")
        if "buckets" in kwargs:
            raise ValueError("`buckets` is what for_budget chooses; call LayerNAS(...) to set it yourself")
        if kwargs.get("cost") is None and kwargs.get("bucket_key") is None:
            raise ValueError("for_budget needs a bucketing `cost` (or a `bucket_key`): without buckets the search is exhaustive")
        smallest = max_evaluations(space, 1, per_bucket, passes)
        if smallest > evaluations:
            raise ValueError(f"`evaluations`={evaluations} is below the worst case of the smallest search (H = 1, "
                             f"k = {per_bucket}, {passes} passes: {smallest}); raise it or lower `per_bucket` / `passes`")
        buckets = 1
        while max_evaluations(space, buckets + 1, per_bucket, passes) <= evaluations and buckets < 10_000:
            buckets += 1
        strategy = cls(space, buckets=buckets, per_bucket=per_bucket, passes=passes, **kwargs)
        strategy.plan = {"evaluations": evaluations, "buckets": buckets, "per_bucket": per_bucket, "passes": passes,
                         "max_evaluations": max_evaluations(space, buckets, per_bucket, passes)}
        return strategy

    #: Besides the base's: the hooks (passed again on resume) and the cost cache (rebuilt on demand).
    config_attributes = Strategy.config_attributes + ("select_fn", "apply_fn", "bucket_key_fn", "cost", "_cost_cache")

    # -- ask / tell ----------------------------------------------------------------------------
    def ask(self, n: int = 1) -> list[Proposal]:
        while not self.queue and not self.waiting and not self.done:
            self._next_layer()
        out = [Proposal(self.queue.pop(0)) for _ in range(min(n, len(self.queue)))]
        return out

    def tell(self, observation: Observation) -> None:
        super().tell(observation)
        key = arch_key(observation.arch)
        self.evaluated[key] = observation
        bucket = self.waiting.pop(key, None)
        if bucket is not None:
            self._store(self.layer, bucket, observation)

    def tell_failure(self, failure: Failure) -> None:
        super().tell_failure(failure)
        key = arch_key(failure.arch)
        self.waiting.pop(key, None)  # never stored in a bucket, so never expanded
        self.failed.add(key)

    # -- the dynamic programme -----------------------------------------------------------------
    def _next_layer(self) -> None:
        models = [o.arch for bucket in self.tables[self.layer].values() for o in bucket]
        if self.layer == len(self.space) - 1:
            self.pass_index += 1
            if self.pass_index >= self.passes:
                self.done = True
                return
        self.layer = (self.layer + 1) % len(self.space)
        self.tables[self.layer] = {}
        self._expand(self._select(models))

    def _select(self, archs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        observed = [self.evaluated[arch_key(a)] for a in archs]
        if self.select_fn is not None:
            return [o.arch for o in self.select_fn(observed, self.rng)]
        observed.sort(key=self._order, reverse=True)
        return [o.arch for o in observed[: self.selections]]

    def _order(self, observation: Observation) -> tuple:
        """Sort key, larger is better: :func:`rank_key`, then a pseudo-random number of (seed, arch),
        so equally good models (isomorphic cells, a table's repeated values) are kept and expanded in
        an order the seed decides rather than in the order they happened to be evaluated."""
        digest = hashlib.blake2b(repr((self.seed, arch_key(observation.arch))).encode(), digest_size=8).digest()
        return (*rank_key(observation.value, observation.violation), int.from_bytes(digest, "big"))

    def _options(self, arch: Mapping[str, Any], decision: Decision) -> list[Any]:
        if self.apply_fn is not None:
            return list(self.apply_fn(dict(arch), decision, self.rng))
        values = list(decision.values)
        if self.children is not None and self.children < len(values):
            values = [values[int(i)] for i in sorted(self.rng.choice(len(values), self.children, replace=False))]
        return values

    def _expand(self, sources: Sequence[Mapping[str, Any]]) -> None:
        """Queue the children of ``sources`` for the current layer, storing those already evaluated."""
        decision = self.space.decisions[self.layer]
        kids, seen = [], set()
        for source in sources:
            for value in self._options(source, decision):
                child = {**source, decision.label: value}
                key = arch_key(child)
                if key not in seen and self._can_meet_target(child):
                    seen.add(key)
                    kids.append(child)
        costs = [self._cost(k) for k in kids] if self.cost is not None else []
        low, high = (min(costs), max(costs)) if costs else (0.0, 0.0)
        for i, child in enumerate(kids):
            if self.bucket_key_fn is not None:
                bucket = self.bucket_key_fn(child, self.layer)
            elif self.cost is not None:
                bucket = cost_bucket(costs[i], low, high, self.buckets)
            else:
                bucket = arch_key(child)
            key = arch_key(child)
            if key in self.evaluated:
                self._store(self.layer, bucket, self.evaluated[key])
            elif key not in self.waiting and key not in self.failed:
                self.waiting[key] = bucket
                self.queue.append(child)

    def _store(self, layer: int, bucket: Hashable, observation: Observation) -> None:
        kept = self.tables[layer].setdefault(bucket, [])
        if any(arch_key(o.arch) == arch_key(observation.arch) for o in kept):
            return
        kept.append(observation)
        kept.sort(key=self._order, reverse=True)
        del kept[self.per_bucket:]

    # -- costs ---------------------------------------------------------------------------------
    def _cost(self, arch: Mapping[str, Any]) -> float:
        key = arch_key(arch)
        if key not in self._cost_cache:
            value = float(self.cost(arch) if callable(self.cost) else self.cost_model(arch)[self.cost])
            if not math.isfinite(value):
                name = self.cost if isinstance(self.cost, str) else "`cost`"
                raise ValueError(f"LayerNAS: the bucketing cost {name} of arch {dict(arch)} is {value}; every arch "
                                 "needs a finite cost (a missing table cell?)")
            self._cost_cache[key] = value
        return self._cost_cache[key]

    def _target(self) -> list:
        name = self.cost if isinstance(self.cost, str) else None
        return [c for c in self.constraints if c.metric == name]

    def _can_meet_target(self, child: Mapping[str, Any]) -> bool:
        """Whether some completion of the layers after the current one meets the target range."""
        target = self._target()
        if not target:
            return True
        later = self.space.decisions[self.layer + 1:]
        count = math.prod(len(d.values) for d in later)
        if count > self.completion_limit:
            raise ValueError(f"checking the target range at layer {self.layer} needs {count} completions, more "
                             f"than `completion_limit`={self.completion_limit}; raise it or search fewer layers")
        for combo in itertools.product(*(d.values for d in later)):
            full = {**child, **{d.label: v for d, v in zip(later, combo)}}
            if all(c.violation({c.metric: self._cost(full)}) <= 0.0 for c in target):
                return True
        return False
