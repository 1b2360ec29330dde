"""MathNAS block-performance estimation (Algorithm 1 and Eq. 3) and its network predictor (Eq. 5).

A *node* is a decision of a :class:`~lightning_nas.spaces.staged.StagedSpace`: every block position
``(s, b)`` (its ``C`` configurations are the node's options) and every stage depth with more than one
option (Eq. 9's "stop": the blocks past the depth select nothing). Spaces without stages, such as
the NB201 cell (6 edges × 5 operations), become one stage of fixed depth with
:func:`nodes_as_stage`.

The block performance of option ``j`` of node ``i`` is, for every metric ``X`` the evaluator
returns (accuracy, latency, energy, FLOPs...), MathNAS's *reference minus switched*::

    b^X_ij = X(N[i ← reference option]) − X(N[i ← j])      (b^X of the reference option is 0)

so a positive ``b^A`` loses accuracy and a positive ``b^L`` saves latency. Two ways to choose the
host networks ``N``:

* :func:`estimate_block_performance` (Algorithm 1, ``O(m·n)`` evaluations): one host, ``N^avg``,
  whose every node takes the option whose FLOPs are closest to that node's mean.
* :func:`estimate_block_performance_sampled` (Eq. 3): the average over ``k`` random hosts, or over
  every host (``num_hosts="all"``, the full-sample definition; tabular benchmarks).

Two adjustments keep the additive decomposition consistent with variable depth: a block is measured
in a host where it runs (its stage's depth raised to reach it when needed), and a depth option is
measured with its stage's blocks at their reference configurations (so the depth term carries the
removal of the tail, as MathNAS's stop blocks do, and block terms are not counted twice).

Predictions (Eq. 5): ``X(N) = X(Ñ) − Σ_i b^X_{i,J_i}`` for latency, energy and any additive metric,
and ``Acc(N) = Acc(Ñ) − Σ_i b^A_{i,J_i} · F̄_{i,J_i} / F(N)`` (the FLOPs-reciprocal law; ``F̄_ij``
is the mean FLOPs of the networks containing option ``j`` of node ``i``), or the plain additive
``Acc(Ñ) − Σ b^A``. :meth:`BlockPerformance.search` maximises either exactly under limits (the
reciprocal law through :func:`~lightning_nas.solvers.fractional.solve_fractional`).

Example::

    flops = build_flops_table(supernet, (3, 32, 32))
    perf = estimate_block_performance(supernet_evaluator(supernet, val_loader), flops)
    predictor = perf.predictor()                      # Eq. 5
    best = perf.search(Limit(latency_table, upper=2.0))
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lightning_nas.bilinear import BilinearTable, _structure
from lightning_nas.io import FileFormatError, atomic_write_json, read_json
from lightning_nas.seeding import derive_generator
from lightning_nas.spaces.search_space import SearchSpace
from lightning_nas.spaces.staged import Stage, StagedSpace, structure_difference

__all__ = [
    "LAWS",
    "REFERENCES",
    "BlockPerformance",
    "Evaluator",
    "MathNASPredictor",
    "estimate_block_performance",
    "estimate_block_performance_sampled",
    "mean_flops",
    "nodes_as_stage",
    "supernet_evaluator",
    "tabular_evaluator",
]

LAWS = ("reciprocal", "reciprocal_mean", "additive")
FORMAT = "lightning_nas.block_performance"
VERSION = 1
METHODS = ("algorithm1", "sampled")

#: ``archs -> {metric: (N,) values}``; must return ``"accuracy"`` (and ``"flops"`` when no FLOPs table is given).
Evaluator = Callable[[Sequence[Mapping[str, Any]]], Mapping[str, Any]]


# -- node views ------------------------------------------------------------------------------------
def nodes_as_stage(space: SearchSpace, labels: Sequence[str] | None = None) -> StagedSpace:
    """A :class:`StagedSpace` with one stage of fixed depth whose blocks are the decisions ``labels``.

    For spaces whose nodes are plain labelled decisions (the NB201 edges, ``OpChoice`` s of a
    ``Supernet``). Labels not listed are free (taken from the reference arch).

    Raises:
        ValueError: unknown labels, or decisions with different numbers of options.
    """
    if isinstance(labels, str):
        raise ValueError(f"`labels` must be a list of labels, got the string {labels!r} (write [{labels!r}])")
    labels = list(space.labels if labels is None else labels)
    if not labels:
        raise ValueError("`labels` must name at least one decision")
    unknown = [lab for lab in labels if lab not in space.labels]
    if unknown:
        raise ValueError(f"`labels` {unknown!r} are not decisions of the space; labels: {space.labels!r}")
    counts = {lab: len(space[lab].values) for lab in labels}
    if len(set(counts.values())) != 1:
        raise ValueError(f"every node must have the same number of options, got {counts}")
    stage = Stage(None, (len(labels),), tuple((lab,) for lab in labels),
                  tuple(tuple((v,) for v in space[lab].values) for lab in labels))
    return StagedSpace(space, [stage])


def _nodes(staged: StagedSpace) -> tuple[list[tuple[int, int]], list[int]]:
    """Block nodes ``(s, b)`` that can run, and stages with a depth decision."""
    blocks = [(s, b) for s, st in enumerate(staged.stages) for b in range(min(st.num_blocks, max(st.depths)))]
    depths = [s for s, st in enumerate(staged.stages) if len(st.depths) > 1]
    return blocks, depths


# -- FLOPs means -------------------------------------------------------------------------------------
def _stage_means(flops: BilinearTable) -> tuple[np.ndarray, list[np.ndarray], list[np.ndarray]]:
    """Per stage: the mean FLOPs ``E_s``, ``E_s | depth j`` and ``E_s | block b has config c (and runs)``,
    under independent uniform choices."""
    staged = flops.staged
    counts = np.maximum(staged.config_counts(), 1)
    block_mean = np.where(staged.config_exists(), flops.block, 0.0).sum(-1) / counts  # (S, D), over each block's own configs
    means, given_depth, given_block = [], [], []
    for s, st in enumerate(staged.stages):
        per_depth = np.array([flops.depth[s, j] + block_mean[s, :d].sum() for j, d in enumerate(st.depths)])
        means.append(per_depth.mean())
        given_depth.append(per_depth)
        cond = np.zeros((staged.max_blocks, staged.num_configs))
        for b in range(min(st.num_blocks, max(st.depths))):
            reach = [j for j, d in enumerate(st.depths) if d > b]
            cond[b] = per_depth[reach].mean() - block_mean[s, b] + flops.block[s, b]
        given_block.append(cond)
    return np.array(means), given_depth, given_block


def mean_flops(flops: BilinearTable) -> tuple[float, np.ndarray, np.ndarray]:
    """``F̄`` and the per-option means ``F̄_ij`` of a FLOPs table, exactly, for uniform independent choices.

    ``F̄`` is exact for any structure; with decisions shared by several blocks, ``F̄_ij`` treats the
    blocks as independent (an approximation, as Eq. 5 itself is).

    Returns:
        ``(F̄, block (S, D, C), depth (S, max_depth_options))``: the mean FLOPs of the space, and of
        the networks in which block ``(s, b)`` runs with config ``c`` / stage ``s`` has depth option ``j``.
    """
    means, given_depth, given_block = _stage_means(flops)
    total = flops.constant + means.sum()
    staged = flops.staged
    block = np.zeros_like(flops.block)
    depth = np.zeros_like(flops.depth)
    for s, st in enumerate(staged.stages):
        block[s] = total - means[s] + given_block[s]
        depth[s, : len(st.depths)] = total - means[s] + given_depth[s]
    return float(total), block, depth


# -- results -----------------------------------------------------------------------------------------
@dataclass
class BlockPerformance:
    """Block performances ``b^X`` of every node option, and what the predictors need.

    Attributes:
        staged: the node structure.
        reference: ``Ñ``, the arch of reference options (``b^X`` of its options is 0).
        base: ``{metric: X(Ñ)}``.
        deltas: ``{metric: BilinearTable}`` of ``b^X`` (``block`` (S, D, C), ``depth`` (S, nd), constant 0).
        flops: absolute FLOPs table ``F(N)`` (given, or built from ``b^F`` around ``Ñ``).
        host: ``N^avg`` for Algorithm 1, ``None`` for the sampled estimator.
        evaluations: distinct archs evaluated.
        method: ``"algorithm1"`` or ``"sampled"``.
        details: method-specific facts (hosts, seed).
    """

    staged: StagedSpace
    reference: dict[str, Any]
    base: dict[str, float]
    deltas: dict[str, BilinearTable]
    flops: BilinearTable
    host: dict[str, Any] | None
    evaluations: int
    method: str
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def metrics(self) -> list[str]:
        return list(self.deltas)

    def _check_metric(self, metric: str) -> None:
        if metric not in self.deltas:
            raise ValueError(f"`metric` must be one of the evaluated metrics {self.metrics}, got {metric!r}")

    def table(self, metric: str, *, name: str | None = None, unit: str = "") -> BilinearTable:
        """The additive prediction ``X(Ñ) − Σ b^X`` as a table (a latency/energy :class:`Limit`'s table)."""
        self._check_metric(metric)
        d = self.deltas[metric]
        return BilinearTable(self.staged, self.base[metric], -d.block, -d.depth, name=name or metric, unit=unit,
                             metadata={"estimator": f"mathnas-{self.method}"})

    def numerator(self, metric: str = "accuracy", law: str = "reciprocal") -> BilinearTable:
        """The penalty whose ratio to ``F(N)`` is the accuracy lost against ``Ñ``, as a table:
        ``Σ b^A_ij F̄_ij`` (Eq. 5, ``law="reciprocal"``) or ``F̄ · Σ b^A_ij`` (Eq. 6, ``"reciprocal_mean"``)."""
        self._check_metric(metric)
        if law not in LAWS[:2]:
            raise ValueError(f"`law` must be one of {LAWS[:2]} for a fractional numerator, got {law!r}")
        total, fb, fd = mean_flops(self.flops)
        if law == "reciprocal_mean":
            fb, fd = total, total
        d = self.deltas[metric]
        return BilinearTable(self.staged, 0.0, d.block * fb, d.depth * fd, name=f"{metric}_penalty")

    @property
    def default_law(self) -> str:
        """The law ``predictor`` and ``search`` use when given none: ``"reciprocal"`` (Eq. 5) for deltas
        against an arch reference, ``"additive"`` for signed deltas (``reference`` ``"mean"`` or
        ``"host"``). Eq. 5 divides the summed deltas by the network's FLOPs; once that sum can be
        negative (options better than the reference) the ratio grows without bound as FLOPs shrink,
        and its optimum is the smallest network with a gain, whatever the measurements say."""
        return "additive" if self.details.get("reference") in ("mean", "host") else "reciprocal"

    def predictor(self, metric: str = "accuracy", law: str | None = None) -> "MathNASPredictor":
        """Eq. 5 (``law="reciprocal"``), Eq. 6's form with the space's mean FLOPs (``"reciprocal_mean"``)
        or the plain additive predictor of ``metric`` (``None``: :attr:`default_law`)."""
        return MathNASPredictor(self, metric, law or self.default_law)

    def search(self, limits: Any = (), *, metric: str = "accuracy", law: str | None = None,
               method: str | None = None, solver: str = "appsi_highs", **options: Any):
        """The arch maximising the predicted ``metric`` under ``limits``, exactly.

        ``law="reciprocal"`` (Eq. 5) or ``"reciprocal_mean"`` (Eq. 6) solves the linear-fractional program (``method`` ``"dinkelbach"``
        (default), ``"charnes_cooper"`` or ``"brute_force"``); ``law="additive"`` the MILP of
        :func:`~lightning_nas.solvers.search_constrained` (``method`` ``"milp"`` by default);
        ``None``: :attr:`default_law`. ``options`` go to the solver front end, e.g. ``top_k``,
        ``verify`` and ``max_verify`` (the k best distinct archs, measured, the best one that
        truly meets the limits returned; see :func:`~lightning_nas.solvers.search_constrained`).
        Returns a :class:`~lightning_nas.solvers.SearchResult` whose ``objective`` is the prediction.
        """
        law = law or self.default_law
        _check_law(law)
        if law == "additive":
            from lightning_nas.solvers.search import search_constrained

            return search_constrained(self.table(metric), limits, method=method or "milp", solver=solver,
                                      base=self.reference, **options)
        from lightning_nas.solvers.fractional import solve_fractional

        return solve_fractional(self.numerator(metric, law), self.flops, limits, constant=self.base[metric],
                                method=method or "dinkelbach", solver=solver, base=self.reference, **options)


    # -- persistence -------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable, versioned description (tables with their structure, for checking on load)."""
        from lightning_nas.solvers.problem import _jsonable

        return {
            "format": FORMAT, "version": VERSION, "method": self.method, "structure": _structure(self.staged),
            "reference": _jsonable(self.reference),
            "host": _jsonable(self.host), "base": dict(self.base), "evaluations": self.evaluations,
            "deltas": {name: t.to_dict() for name, t in self.deltas.items()}, "flops": self.flops.to_dict(),
            "details": _jsonable(self.details),
        }

    def save(self, path: str | Path) -> Path:
        """Write to ``path`` as JSON, atomically (an existing file is replaced only once complete)."""
        return atomic_write_json(Path(path), self.to_dict())

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], staged: StagedSpace) -> "BlockPerformance":
        """Rebuild from :meth:`to_dict`; ``staged`` must have the node structure it was made for.

        Raises:
            ValueError: not a block-performance description, another version, made for another
                space (the message lists the labels or stages that differ), or damaged (missing or
                non-finite entries).
        """
        if not isinstance(data, Mapping):
            raise ValueError(f"a block-performance description is a JSON object, got a {type(data).__name__}")
        if data.get("format") != FORMAT:
            raise ValueError(f"not a block-performance file (format {data.get('format')!r}, expected {FORMAT!r})")
        if data.get("version") != VERSION:
            raise ValueError(f"block-performance version {data.get('version')!r} is not supported (this library reads {VERSION})")
        missing = [k for k in ("method", "reference", "host", "base", "evaluations", "deltas", "flops") if k not in data]
        if missing:
            raise ValueError(f"entries {missing} are missing: damaged, or not written by BlockPerformance.save")
        if not isinstance(data["flops"], Mapping) or not isinstance(data["deltas"], Mapping) or not data["deltas"]:
            raise ValueError("'flops' must be a table object and 'deltas' a non-empty {metric: table} object")
        # Compare structures before any label: a file of another space names what differs, not the
        # first label this space lacks.
        difference = structure_difference(data.get("structure", data["flops"].get("structure")), _structure(staged))
        if difference:
            raise ValueError(f"made for another search space than {staged!r}: {difference}")
        base = data["base"]
        if not isinstance(base, Mapping) or set(base) != set(data["deltas"]):
            raise ValueError(f"'base' must hold one value per metric {sorted(data['deltas'])}, "
                             f"got {sorted(base) if isinstance(base, Mapping) else type(base).__name__}")
        for metric, value in base.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value):
                raise ValueError(f"base value of {metric!r} must be a finite number, got {value!r}")
        evaluations = data["evaluations"]
        if isinstance(evaluations, bool) or not isinstance(evaluations, int) or evaluations < 0:
            raise ValueError(f"'evaluations' must be an int >= 0, got {evaluations!r}")
        if data["method"] not in METHODS:
            raise ValueError(f"'method' must be one of {METHODS}, got {data['method']!r}")
        tables = {}
        for name, raw in [*((f"deltas.{k}", v) for k, v in data["deltas"].items()), ("flops", data["flops"])]:
            try:
                table = BilinearTable.from_dict(raw, staged)
            except (ValueError, KeyError, TypeError, AttributeError) as err:
                raise ValueError(f"its {name!r} table is damaged: {type(err).__name__}: {err}") from None
            if not np.isfinite(table.constant):
                raise ValueError(f"its {name!r} table has a non-finite constant {table.constant!r}")
            tables[name] = table
        space = staged.space
        return cls(
            staged=staged, reference=space.validate(data["reference"]), base={k: float(v) for k, v in base.items()},
            deltas={name: tables[f"deltas.{name}"] for name in data["deltas"]}, flops=tables["flops"],
            host=None if data["host"] is None else space.validate(data["host"]), evaluations=evaluations,
            method=data["method"], details=dict(data.get("details") or {}),
        )

    @classmethod
    def load(cls, path: str | Path, staged: StagedSpace) -> "BlockPerformance":
        """Read a file written by :meth:`save`.

        Raises:
            FileNotFoundError, IsADirectoryError, PermissionError: the file cannot be read.
            FileFormatError (a ``ValueError``): anything wrong with its content; the message names
                the file (see :meth:`from_dict`).
        """
        data = read_json(path, "block-performance file")
        try:
            return cls.from_dict(data, staged)
        except ValueError as err:
            raise FileFormatError(f"block-performance file {str(path)!r}: {err}") from None


def _check_law(law: str) -> None:
    if law not in LAWS:
        raise ValueError(f"`law` must be one of {LAWS}, got {law!r}")


class MathNASPredictor:
    """Predicts a metric of any arch from block performances (Eq. 5, or additive).

    Args:
        performance: the estimated block performances.
        metric: which metric.
        law: ``"reciprocal"`` (Eq. 5: ``X(Ñ) − Σ b^X F̄_ij / F(N)``), ``"reciprocal_mean"`` (Eq. 6:
            ``X(Ñ) − F̄ Σ b^X / F(N)``) or ``"additive"`` (``X(Ñ) − Σ b^X``).
    """

    def __init__(self, performance: BlockPerformance, metric: str = "accuracy", law: str = "reciprocal") -> None:
        _check_law(law)
        performance._check_metric(metric)
        self.performance, self.metric, self.law = performance, metric, law
        self._additive = performance.table(metric)
        self._numerator = None if law == "additive" else performance.numerator(metric, law)

    def predict_indices(self, configs: np.ndarray, depths: np.ndarray) -> np.ndarray:
        """``(...)`` predictions for ``(..., S, D)`` configs and ``(..., S)`` depth indices."""
        if self._numerator is None:
            return self._additive.predict_indices(configs, depths)
        flops = self.performance.flops.predict_indices(configs, depths)
        return self.performance.base[self.metric] - self._numerator.predict_indices(configs, depths) / flops

    def predict_many(self, archs: Sequence[Mapping[str, Any]]) -> np.ndarray:
        """``(N,)`` predictions."""
        return self.predict_indices(*self.performance.staged.indices_many(archs))

    def predict(self, arch: Mapping[str, Any]) -> float:
        return float(self.predict_indices(*self.performance.staged.indices(arch)))

    __call__ = predict


# -- evaluation ---------------------------------------------------------------------------------------
class _Measurements:
    """Evaluates index-form archs through an evaluator, each distinct arch once."""

    def __init__(self, evaluator: Evaluator, staged: StagedSpace, reference: Mapping[str, Any]) -> None:
        if not callable(evaluator):
            raise ValueError(f"`evaluator` must be callable (archs -> {{metric: values}}), got {type(evaluator).__name__}")
        self.evaluator, self.staged, self.reference = evaluator, staged, dict(reference)
        self.count = 0
        # Every distinct arch is evaluated once per estimate, even across calls (the FLOPs switches
        # and the host's switches can share archs).
        self._cache: dict[bytes, dict[str, float]] = {}

    def __call__(self, configs: np.ndarray, depths: np.ndarray) -> dict[str, np.ndarray]:
        n = len(depths)
        active = self.staged.active(depths)
        keys = np.concatenate([np.where(active, configs, -1).reshape(n, -1), depths], 1)
        unique, first, inverse = np.unique(keys, axis=0, return_index=True, return_inverse=True)
        new = [i for i, key in zip(first, unique) if key.tobytes() not in self._cache]
        if new:
            fresh = self._evaluate(configs, depths, new)
            for j, i in enumerate(new):
                self._cache[keys[i].tobytes()] = {name: float(v[j]) for name, v in fresh.items()}
        rows = [self._cache[key.tobytes()] for key in unique]
        return {name: np.array([r[name] for r in rows])[inverse.ravel()] for name in rows[0]}

    def _evaluate(self, configs: np.ndarray, depths: np.ndarray, first: list[int]) -> dict[str, np.ndarray]:
        archs = [self.staged.to_arch(configs[i], depths[i], base=self.reference) for i in first]
        values = self.evaluator(archs)
        if not isinstance(values, Mapping) or "accuracy" not in values:
            raise ValueError(f"the evaluator must return a dict with an 'accuracy' entry, got {type(values).__name__}"
                             + (f" with keys {sorted(values)}" if isinstance(values, Mapping) else ""))
        out = {}
        for name, v in values.items():
            try:
                v = np.asarray(v, dtype=np.float64).ravel()
            except (TypeError, ValueError) as err:
                raise ValueError(f"the evaluator's {name!r} must be {len(archs)} finite numbers (one per arch), "
                                 f"got values numpy cannot read as numbers ({err})") from None
            if v.shape != (len(archs),) or not np.isfinite(v).all():
                raise ValueError(f"the evaluator's {name!r} must be {len(archs)} finite values (one per arch), got shape {v.shape}")
            out[name] = v
        if self._cache and set(out) != set(next(iter(self._cache.values()))):
            raise ValueError(f"the evaluator returned the metrics {sorted(out)} for some archs and "
                             f"{sorted(next(iter(self._cache.values())))} for others; return the same metrics every call")
        self.count += len(archs)
        return out


#: ``reference`` modes: signed deltas against each node's mean option (the default), Algorithm 1's host
#: as ``Ñ``, or an arch (``"default"``: the space's default arch, the behaviour before ``"mean"``).
REFERENCES = ("mean", "host", "default", "first", "last")


def _resolve_reference(staged: StagedSpace, reference: Mapping[str, Any] | str | None) -> tuple[str, dict[str, Any]]:
    """``(mode, arch)``: ``mode`` is ``"mean"``, ``"host"`` or ``"arch"``; ``arch`` is ``Ñ`` for ``"arch"``,
    else the space's default arch (it fills labels outside the nodes and anchors the FLOPs switches)."""
    space = staged.space
    if reference is None:
        reference = "mean"
    if isinstance(reference, str):
        if reference not in REFERENCES:
            raise ValueError(f"`reference` must be an arch dict or one of {REFERENCES} (None: 'mean'), got {reference!r}")
        if reference in ("mean", "host", "default"):
            return (reference if reference != "default" else "arch"), space.default()
        picks = {"first": 0, "last": -1}
        return "arch", {d.label: d.values[picks[reference]] for d in space}
    if not isinstance(reference, Mapping):
        raise ValueError(f"`reference` must be an arch dict or one of {REFERENCES} (None: 'mean'), got {reference!r}")
    return "arch", space.validate(reference)


def _center(staged: StagedSpace, block: np.ndarray, depth: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Deltas re-expressed against each node's mean option, and the shift of the constant.

    Returns ``(block', depth', shift)`` with ``X(Ñ) − Σ b = (X(Ñ) − shift) − Σ b'`` for every arch
    (an exact reparametrisation of the additive model), the block options of every node averaging
    to 0 and, per stage, the depth options too. A block that does not always run carries its mean
    into the depth options that reach it, so archs of every depth keep their prediction.
    """
    exists = staged.config_exists()
    own = staged.own_configs()
    distinct = exists & (own == np.arange(staged.num_configs))  # a shared decision's value counted once
    m = np.where(distinct, block, 0.0).sum(-1) / np.maximum(distinct.sum(-1), 1)  # (S, D)
    block = np.where(exists, block - m[..., None], 0.0)
    depth = depth.copy()
    shift = 0.0
    for s, st in enumerate(staged.stages):
        reach = np.array([depth[s, j] + m[s, : min(d, st.num_blocks)].sum() for j, d in enumerate(st.depths)])
        shift += float(reach.mean())
        depth[s, : len(st.depths)] = reach - reach.mean()
    return block, depth, shift


def _check_hosts(staged: StagedSpace, hosts: Any) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(hosts, Mapping) or isinstance(hosts, str) or not isinstance(hosts, Sequence) or not hosts:
        raise ValueError(f"`hosts` must be a non-empty list of archs, got {hosts!r}")
    archs = []
    for i, arch in enumerate(hosts):
        try:
            archs.append(staged.space.validate(arch))
        except (ValueError, TypeError, KeyError) as err:
            raise ValueError(f"`hosts`[{i}] is not an arch of the space: {err}") from None
    configs, depths = staged.indices_many(archs)
    return configs, depths


def _flops_table(flops: BilinearTable | None, measure: _Measurements, ref_c: np.ndarray, ref_d: np.ndarray,
                 flops_metric: str) -> BilinearTable:
    staged = measure.staged
    if flops is not None:
        if not isinstance(flops, BilinearTable):
            raise ValueError(f"`flops` must be a BilinearTable or None, got {type(flops).__name__}")
        if flops.staged is not staged and _structure(flops.staged) != _structure(staged):
            raise ValueError(f"`flops` table {flops.name!r} was made for another node structure than the estimate")
        return flops
    # FLOPs add over blocks, so switching each node of Ñ measures them exactly.
    configs, depths, slots = _switches(staged, ref_c, ref_d, ref_c, ref_d)
    values = measure(configs, depths)
    if flops_metric not in values:
        raise ValueError(f"no `flops` table given and the evaluator returns no {flops_metric!r}; got {sorted(values)}")
    deltas = _deltas(staged, values[flops_metric], slots)
    base = float(values[flops_metric][0])
    return BilinearTable(staged, base, -deltas.block, -deltas.depth, name="flops", unit="",
                         metadata={"estimator": "switches around the reference"})


def _switches(staged: StagedSpace, host_c: np.ndarray, host_d: np.ndarray, ref_c: np.ndarray, ref_d: np.ndarray):
    """Archs of ``host`` with one node switched to each option, and with the reference option.

    Returns ``(configs (N, S, D), depths (N, S), slots)``: row 0 is the host itself, ``slots`` lists
    ``(kind, s, b_or_None, option, row, reference_row)``.
    """
    blocks, depth_nodes = _nodes(staged)
    rows_c, rows_d, slots = [host_c.copy()], [host_d.copy()], []

    def add(c, d):
        rows_c.append(c)
        rows_d.append(d)
        return len(rows_c) - 1

    own = staged.own_configs()
    for s, b in blocks:
        st = staged.stages[s]
        c, d = host_c.copy(), host_d.copy()
        if st.depths[d[s]] <= b:  # the block must run in its host
            d[s] = next(j for j, v in enumerate(st.depths) if v > b)
        # A node's options are the values of the decisions it owns; a shared one changes in every
        # block that reads it (the other blocks' configs follow), as the architecture does.
        owned = staged.owned_labels(s, b)
        options = [opt for opt in range(len(st.configs[b])) if own[s, b, opt] == opt]
        rows = {}
        for opt in options:
            values = dict(zip(st.block_labels[b], st.configs[b][opt]))
            rows[opt] = add(staged.set_values(c, {lab: values[lab] for lab in owned}), d.copy())
        reference = own[s, b, ref_c[s, b]]
        slots += [("block", s, b, opt, rows[opt], rows[reference]) for opt in options]
    for s in depth_nodes:
        c, d = host_c.copy(), host_d.copy()
        # The stage's blocks at their reference configs: the depth term is the tail alone.
        st = staged.stages[s]
        c = staged.set_values(c, {
            lab: value for b in range(st.num_blocks) for lab, value in zip(st.block_labels[b], st.configs[b][ref_c[s, b]])
            if lab in staged.owned_labels(s, b)
        })
        rows = []
        for j in range(len(staged.stages[s].depths)):
            dd = d.copy()
            dd[s] = j
            rows.append(add(c.copy(), dd))
        slots += [("depth", s, None, j, rows[j], rows[ref_d[s]]) for j in range(len(rows))]
    return np.stack(rows_c), np.stack(rows_d), slots


def _deltas(staged: StagedSpace, values: np.ndarray, slots) -> BilinearTable:
    block = np.zeros((staged.num_stages, staged.max_blocks, staged.num_configs))
    depth = np.zeros((staged.num_stages, staged.max_depth_options))
    for kind, s, b, opt, row, ref_row in slots:
        delta = values[ref_row] - values[row]
        if kind == "block":
            block[s, b, opt] = delta
        else:
            depth[s, opt] = delta
    # Every config takes its own config's value: a shared decision's effect sits in its owner only.
    block = np.where(staged.config_exists(), np.take_along_axis(block, staged.own_configs(), -1), 0.0)
    return BilinearTable(staged, 0.0, block, depth, name="delta")


def _average_host(flops: BilinearTable) -> tuple[np.ndarray, np.ndarray]:
    """``N^avg``: per node the option whose FLOPs are closest to the node's mean (first on ties)."""
    staged = flops.staged
    _, given_depth, _ = _stage_means(flops)
    mean = np.where(staged.config_exists(), flops.block, 0.0).sum(-1, keepdims=True) / np.maximum(staged.config_counts(), 1)[..., None]
    configs = np.argmin(np.where(staged.config_exists(), np.abs(flops.block - mean), np.inf), -1)
    configs = np.where(staged.block_exists(), configs, -1)
    depths = np.array([int(np.argmin(np.abs(g - g.mean()))) for g in given_depth], dtype=np.int64)
    return configs, depths


def _finish(staged, reference, measure, flops, deltas_by_metric, base, host, method, details,
            center: bool = False) -> BlockPerformance:
    deltas = {name: BilinearTable(staged, 0.0, d.block, d.depth, name=f"b_{name}") for name, d in deltas_by_metric.items()}
    if "flops" not in deltas:
        # b^F from the FLOPs table itself: FLOPs add over blocks, so every host gives the same deltas.
        ref_c, ref_d = staged.indices(reference)
        configs, depths, slots = _switches(staged, ref_c, ref_d, ref_c, ref_d)
        d = _deltas(staged, flops.predict_indices(configs, depths), slots)
        deltas["flops"] = BilinearTable(staged, 0.0, d.block, d.depth, name="b_flops")
        base = {**base, "flops": float(flops.predict_indices(ref_c, ref_d))}
    if center:
        for name, d in list(deltas.items()):
            block, depth, shift = _center(staged, d.block, d.depth)
            deltas[name] = BilinearTable(staged, 0.0, block, depth, name=f"b_{name}")
            base[name] = base[name] - shift
    return BlockPerformance(staged=staged, reference=reference, base=base, deltas=deltas, flops=flops,
                            host=host, evaluations=measure.count, method=method, details=details)


def estimate_block_performance(
    evaluator: Evaluator,
    staged: StagedSpace,
    flops: BilinearTable | None = None,
    *,
    reference: Mapping[str, Any] | str | None = None,
    flops_metric: str = "flops",
) -> BlockPerformance:
    """MathNAS Algorithm 1: every node option switched into one host network ``N^avg``.

    Args:
        evaluator: ``archs -> {metric: (N,) values}``, with ``"accuracy"`` (see
            :func:`supernet_evaluator`, :func:`tabular_evaluator`).
        staged: the node structure (``StagedSpace.from_space(space)`` or :func:`nodes_as_stage`).
        flops: the absolute FLOPs table; when ``None``, ``b^F`` is measured by switching every
            node of the space's default arch (the evaluator must then return ``flops_metric``).
        reference: what a delta is measured against:

            * ``"mean"`` (default, also ``None``): each node's mean option in the host. ``b^X_ij``
              is signed (negative: option ``j`` is better than the node's average), sums to 0 over
              a node's options, and no arch is favoured by construction;
              ``base[X]`` is the prediction's constant and ``reference`` the host.
            * ``"host"``: ``Ñ = N^avg`` itself (``b`` of the host's options is 0; signed).
            * an arch, ``"first"`` / ``"last"`` (that option of every decision) or ``"default"``
              (the space's default arch, the behaviour of earlier versions): its options get
              ``b = 0``. When ``Ñ`` is each node's best option every ``b^A ≥ 0`` and the search
              returns ``Ñ`` whatever the measurements: pick such a reference only on purpose.

            Under the additive law every mode predicts the same values up to which
            option carries 0; the FLOPs-reciprocal law (Eq. 5) depends on it.
        flops_metric: the evaluator's FLOPs entry (used when ``flops`` is ``None``).

    Returns:
        A :class:`BlockPerformance` with ``b^X`` for every metric the evaluator returns, from
        ``1 + Σ_nodes options`` distinct evaluations (plus the FLOPs switches when measured, and
        ``Ñ`` itself for an arch reference).
    """
    mode, reference = _resolve_reference(staged, reference)
    measure = _Measurements(evaluator, staged, reference)
    ref_c, ref_d = staged.indices(reference)
    flops = _flops_table(flops, measure, ref_c, ref_d, flops_metric)
    host_c, host_d = _average_host(flops)
    host_c = staged.canonical(np.where(ref_c >= 0, host_c, -1))
    if mode != "arch":
        ref_c, ref_d = host_c, host_d  # deltas against the host's options; the row of Ñ is the host's
    configs, depths, slots = _switches(staged, host_c, host_d, ref_c, ref_d)
    ref_row = len(depths)
    values = measure(np.concatenate([configs, ref_c[None]]), np.concatenate([depths, ref_d[None]]))
    deltas = {name: _deltas(staged, v, slots) for name, v in values.items()}
    base = {name: float(v[ref_row]) for name, v in values.items()}
    host = staged.to_arch(host_c, host_d, base=reference)
    if mode != "arch":
        reference = host
    return _finish(staged, reference, measure, flops, deltas, base, host, "algorithm1",
                   {"host": host, "reference": mode}, center=mode == "mean")


def estimate_block_performance_sampled(
    evaluator: Evaluator,
    staged: StagedSpace,
    flops: BilinearTable | None = None,
    *,
    num_hosts: int | str | None = None,
    hosts: Sequence[Mapping[str, Any]] | None = None,
    seed: int = 0,
    reference: Mapping[str, Any] | str | None = None,
    flops_metric: str = "flops",
    max_hosts: int = 100_000,
) -> BlockPerformance:
    """MathNAS Eq. 3: ``b^X_ij`` averaged over host networks drawn uniformly, given, or all of them.

    Args:
        num_hosts: ``k`` random hosts (seeded by ``seed``; default 10), or ``"all"`` for every
            arch of the space as a host (the full-sample definition; at most ``max_hosts``).
        hosts: the host archs themselves, instead of ``num_hosts`` (e.g. Algorithm 1's host and
            the arch a first search picked: the deltas then describe the region the search is in).
        evaluator: as in :func:`estimate_block_performance`.
        staged: as in :func:`estimate_block_performance`.
        flops: as in :func:`estimate_block_performance`.
        reference: ``"mean"`` (default, also ``None``): per host, signed deltas against the node's
            mean option, averaged over the hosts (``base[X]``: the average host-anchored constant);
            or an arch, ``"first"``, ``"last"``, ``"default"`` as in
            :func:`estimate_block_performance` (``"host"`` needs a single host: use Algorithm 1).
        flops_metric: as in :func:`estimate_block_performance`.
        seed: see ``num_hosts``.
        max_hosts: see ``num_hosts``.

    Returns:
        A :class:`BlockPerformance` (``host=None``; ``details["hosts"]`` is the number of hosts).

    Raises:
        ValueError: both ``num_hosts`` and ``hosts``, a host that is not an arch of the space,
            ``reference="host"``, or other bad arguments.
    """
    mode, reference = _resolve_reference(staged, reference)
    if mode == "host":
        raise ValueError("`reference`='host' is Algorithm 1's single host; with several hosts use 'mean' or an arch")
    measure = _Measurements(evaluator, staged, reference)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"`seed` must be an int >= 0, got {seed!r}")
    if isinstance(max_hosts, bool) or not isinstance(max_hosts, int) or max_hosts < 1:
        raise ValueError(f"`max_hosts` must be an int >= 1, got {max_hosts!r}")
    if hosts is not None and num_hosts is not None:
        raise ValueError(f"give `num_hosts` or `hosts`, not both (got num_hosts={num_hosts!r} and {len(hosts)} hosts)")
    if hosts is None and num_hosts is None:
        num_hosts = 10
    if hosts is None and num_hosts != "all" and (isinstance(num_hosts, bool) or not isinstance(num_hosts, int) or num_hosts < 1):
        raise ValueError(f"`num_hosts` must be a positive int or 'all', got {num_hosts!r}")
    ref_c, ref_d = staged.indices(reference)
    flops = _flops_table(flops, measure, ref_c, ref_d, flops_metric)
    if hosts is not None:
        hosts_c, hosts_d = _check_hosts(staged, hosts)
    elif num_hosts == "all":
        from lightning_nas.solvers.fractional import enumerate_indices

        hosts_c, hosts_d = enumerate_indices(staged, limit=max_hosts)
    else:
        g = derive_generator(seed, 6)
        counts = staged.config_counts()
        if (counts[staged.block_exists()] == staged.num_configs).all():  # every block has C configs
            hosts_c = torch.randint(staged.num_configs, (num_hosts, staged.num_stages, staged.max_blocks), generator=g).numpy()
        else:
            uniform = torch.rand((num_hosts, staged.num_stages, staged.max_blocks), generator=g, dtype=torch.float64).numpy()
            hosts_c = (uniform * np.maximum(counts, 1)).astype(np.int64)
        hosts_d = np.stack([torch.randint(len(st.depths), (num_hosts,), generator=g).numpy() for st in staged.stages], 1)
    hosts_c = np.where(ref_c >= 0, hosts_c, -1)
    if num_hosts != "all":  # independent draws per block: shared decisions take their owner's value
        hosts_c = np.stack([staged.canonical(h) for h in hosts_c])
    all_c, all_d, all_slots, base_rows = [], [], [], []
    offset = 0
    if mode == "arch":
        all_c, all_d, offset = [ref_c[None]], [ref_d[None]], 1
    for hc, hd in zip(hosts_c, hosts_d):
        rc, rd = (hc, hd) if mode == "mean" else (ref_c, ref_d)
        configs, depths, slots = _switches(staged, hc, hd, rc, rd)
        all_c.append(configs)
        all_d.append(depths)
        all_slots.append([(k, s, b, o, row + offset, ref + offset) for k, s, b, o, row, ref in slots])
        base_rows.append(offset)  # row 0 of a host's switches is the host
        offset += len(depths)
    values = measure(np.concatenate(all_c), np.concatenate(all_d))
    deltas = {}
    for name, v in values.items():
        tables = [_deltas(staged, v, slots) for slots in all_slots]
        deltas[name] = BilinearTable(staged, 0.0, np.mean([t.block for t in tables], 0), np.mean([t.depth for t in tables], 0))
    if mode == "mean":
        base = {name: float(v[base_rows].mean()) for name, v in values.items()}
        reference = staged.to_arch(hosts_c[0], hosts_d[0], base=reference)
    else:
        base = {name: float(v[0]) for name, v in values.items()}
    random = hosts is None and num_hosts != "all"
    return _finish(staged, reference, measure, flops, deltas, base, None, "sampled",
                   {"hosts": len(hosts_d), "seed": seed if random else None, "reference": mode}, center=mode == "mean")


# -- evaluators ---------------------------------------------------------------------------------------
def supernet_evaluator(supernet, held_out: Iterable[Any], *, tables: Mapping[str, BilinearTable] | None = None,
                       **measure_options: Any) -> Evaluator:
    """An evaluator measuring one-shot top-1 accuracy (fraction) with the supernet's shared weights.

    Args:
        supernet: a trained :class:`~lightning_nas.Supernet`.
        held_out: validation batches (re-iterated for every call; each batch runs every arch).
        tables: extra additive metrics by name (e.g. ``{"latency": latency_table}``), predicted from the tables.
        measure_options: ``batch_to_xy``, ``forward``, ``model`` of
            :func:`~lightning_nas.estimators.ranking.measure_subnet_accuracies`.
    """
    from lightning_nas.estimators.ranking import measure_subnet_accuracies

    tables = dict(tables or {})

    def evaluate(archs):
        out = {"accuracy": measure_subnet_accuracies(supernet, archs, held_out, **measure_options)}
        out.update({name: t.predict_many(archs) for name, t in tables.items()})
        return out

    return evaluate


def tabular_evaluator(benchmark, columns: Mapping[str, str]) -> Evaluator:
    """An evaluator of table look-ups: ``columns`` maps a metric (``"accuracy"``, ``"flops"``,
    ``"latency"``...) to a column of a :class:`~lightning_nas.evaluators.tabular.TabularBenchmark`.

    Raises:
        ValueError: no ``"accuracy"`` entry; KeyError: an unknown column (naming the columns there are).
    """
    if "accuracy" not in columns:
        raise ValueError(f"`columns` must map 'accuracy' to a column, got {dict(columns)}")
    data = {metric: benchmark.column(col) for metric, col in columns.items()}

    def evaluate(archs):
        rows = np.array([benchmark.index(a) for a in archs], dtype=np.int64)
        return {metric: values[rows] for metric, values in data.items()}

    return evaluate
