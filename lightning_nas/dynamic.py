"""MathNAS's dynamic network: re-solve for a new latency (or energy) budget at run time and swap only
the blocks that change, in place, between two forward passes.

A :class:`DynamicNetwork` holds a few Pareto-optimal configurations per block position (MathNAS keeps
5 per node: ``5^m`` networks on the device), each exported once from the supernet as a plain
module. :meth:`DynamicNetwork.set_budget` solves the search over those blocks exactly (the
linear-fractional program of Eq. 5/6 for a :class:`~lightning_nas.estimators.block_performance.BlockPerformance`,
the MILP for an additive :class:`~lightning_nas.bilinear.BilinearTable`) and then replaces only the
changed modules of the running network. Solve time and switch time are reported separately.

Blocks are found through the supernet's structure (:meth:`StagedSpace.from_supernet
<lightning_nas.spaces.staged.StagedSpace.from_supernet>`):

* a stage with a depth decision is a :class:`~lightning_nas.nn.DepthChoice` (exported as an
  ``nn.Sequential``) or a stack of transformer layers decorated by ``mutate(...,
  preset="autoformer")`` (an :class:`~lightning_nas.nn.ElasticLayers`, exported as the model's own
  ``nn.Sequential`` / ``nn.ModuleList``: timm ``VisionTransformer.blocks``, GPT-2's ``transformer.h``,
  BERT's ``encoder.layer``), with a depth (``"prefix"``) or an on/off decision per layer (``"skip"``:
  one stage per layer). Such a stack is rebuilt from the held layers at each switch: layers are
  swapped, added or removed in their order, every ``layer_idx`` is renumbered (Hugging Face caches
  index layers by it) and the model's Hugging Face ``config`` describes the running layers as an
  export's does (``num_hidden_layers``, ``layer_num_heads``, ``layer_intermediate_sizes``,
  ``source_layers``); held layers share that config;
* any other block with a module path (a fixed-depth unit, a layer of a stack without a depth
  decision) is swapped by attribute in its parent, as is a fixed-depth
  :class:`~lightning_nas.nn.OpChoice` node.

A block's module must depend on its own labels only (widths between blocks fixed), as in the
MobileNet, BINAS and NB201-style spaces and the ``autoformer`` preset (heads and MLP width per
layer); a decision read by several blocks (a shared embedding width) is refused, as is a block that a
depth decision adds but that is not a DepthChoice's block or a stack's layer.

Example::

    dynamic = DynamicNetwork(supernet, perf, latency_table, {"latency": 12.0})
    logits = dynamic(x)
    report = dynamic.set_budget({"latency": 8.0})      # re-solve, swap changed blocks only
    report.solve_seconds, report.switch_seconds, report.changed
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from torch import nn

from lightning_nas.bilinear import BilinearTable, _structure
from lightning_nas.estimators.block_performance import BlockPerformance
from lightning_nas.nn.depth_choice import DepthChoice
from lightning_nas.nn.export import export_subnet
from lightning_nas.nn.op_choice import OpChoice
from lightning_nas.nn.transformer_rules import ElasticLayers, _finish_stack, _hf_config
from lightning_nas.solvers.problem import Limit, SearchResult
from lightning_nas.spaces.staged import Stage, StagedSpace, structure_difference
from lightning_nas.supernet import Supernet

__all__ = ["DynamicNetwork", "SwitchReport", "pareto_blocks"]


@dataclass
class SwitchReport:
    """What one budget change did.

    Attributes:
        arch: the new arch.
        changed: ``(stage, block)`` positions whose module was replaced, added or removed.
        solve_seconds: wall time of the search (model building included).
        switch_seconds: wall time of swapping the modules.
        result: the search result (predicted objective and resources).
    """

    arch: dict[str, Any]
    changed: list[tuple[int, int]]
    solve_seconds: float
    switch_seconds: float
    result: SearchResult
    details: dict[str, Any] = field(default_factory=dict)


def pareto_blocks(criteria: list[tuple[np.ndarray, int]], k: int, exists: np.ndarray | None = None) -> np.ndarray:
    """``(S, D, k)`` config indices to keep per block position: Pareto-optimal first.

    Args:
        criteria: ``(block (S, D, C), direction)`` per table, ``+1`` larger is better, ``-1`` smaller.
        k: configs per position (at most ``C``).
        exists: ``(S, D, C)`` bool, the configs each block has (default: all ``C``); a block with
            fewer than ``k`` keeps all of them, its row padded by repeating the last one.

    Configs are ranked by how many others dominate them (0 on the Pareto front); when the front
    has more than ``k`` configs, ``k`` are taken evenly spread along the first criterion.
    """
    values = np.stack([d * blk for blk, d in criteria])  # larger is better for all
    T, S, D, C = values.shape
    if not 1 <= k <= C:
        raise ValueError(f"`blocks_per_node` must be in [1, {C}] (the configurations per block), got {k}")
    exists = np.ones((S, D, C), dtype=bool) if exists is None else exists
    diff = values[..., :, None] - values[..., None, :]  # [.., a, b] = v[a] - v[b]
    dominates = (diff >= 0).all(0) & (diff > 0).any(0) & exists[..., :, None]  # (S, D, a, b): a dominates b
    counts = np.where(exists, dominates.sum(-2), C + 1)  # (S, D, C): how many dominate b; absent configs last
    keep = np.zeros((S, D, k), dtype=np.int64)
    for s in range(S):
        for b in range(D):
            n = min(k, max(int(exists[s, b].sum()), 1))
            front = np.flatnonzero((counts[s, b] == 0) & exists[s, b])
            if len(front) > n:
                front = front[np.argsort(values[0, s, b, front], kind="stable")]
                chosen = front[np.round(np.linspace(0, len(front) - 1, n)).astype(int)]
            else:
                order = np.lexsort((np.arange(C), counts[s, b]))
                chosen = order[:n]
            chosen = np.sort(chosen)
            keep[s, b] = np.concatenate([chosen, np.full(k - n, chosen[-1])])
    return keep


def _check_same_structure(table: BilinearTable, staged: StagedSpace, what: str) -> None:
    difference = structure_difference(_structure(table.staged), _structure(staged), names=("the table", "the objective"))
    if difference:
        raise ValueError(f"{what} table {table.name!r} was made for another space than the objective's: {difference}")


def _check_budget(budget: Any) -> None:
    # Checked here, not inside a solver: a NaN bound or a string would otherwise fail deep in Pyomo.
    if not isinstance(budget, Mapping):
        raise ValueError(f"`budget` must be a mapping {{resource: upper bound}}, got {type(budget).__name__}")
    for name, value in budget.items():
        if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) or not math.isfinite(value):
            raise ValueError(f"`budget` bound of {name!r} must be a finite number, got {value!r}")


def _key(s: int, b: int, c: int) -> str:
    return f"stage{s}_block{b}_config{c}"


def _restricted_space(staged: StagedSpace, keep: np.ndarray) -> StagedSpace:
    stages = []
    for s, st in enumerate(staged.stages):
        # dict.fromkeys: a block with fewer configs than kept slots repeats its last one.
        configs = tuple(tuple(dict.fromkeys(st.configs[b][c] for c in keep[s, b])) for b in range(st.num_blocks))
        stages.append(Stage(st.depth_label, st.depths, st.block_labels, configs, st.paths))
    return StagedSpace(staged.space, stages)


def _restrict(table: BilinearTable, staged: StagedSpace, keep: np.ndarray) -> BilinearTable:
    block = np.take_along_axis(table.block, keep, -1)
    # The metadata travels: it says how the table aggregates (a peak-memory table is a maximum).
    return BilinearTable(staged, table.constant, block, table.depth, name=table.name, unit=table.unit, link=table.link,
                         metadata=table.metadata)


class DynamicNetwork(nn.Module):
    """A plain exported subnet that re-solves and swaps blocks when its budget changes.

    Args:
        supernet: the trained supernet (only read; blocks are exported copies).
        objective: a :class:`BlockPerformance` (Eq. 5, solved as the fractional program) or an
            additive accuracy :class:`BilinearTable` (solved as the MILP).
        resources: the budgeted tables (latency, energy...) on the same node structure.
        budget: ``{resource name: upper bound}``; resources not named are unbounded.
        blocks_per_node: configurations kept per block position (MathNAS: 5).
        solver: Pyomo solver name.
        method: fractional method (``"dinkelbach"`` or ``"charnes_cooper"``) for a ``BlockPerformance``.

    Attributes:
        network: the running exported module; ``forward`` calls it.
        held: every held block module (``ModuleDict``, so ``.to()`` and ``.eval()`` reach them).
        arch: the active arch.
        staged: the restricted node structure (``blocks_per_node`` configs per block).
        num_networks: how many archs the held blocks can form.
    """

    def __init__(self, supernet: Supernet, objective: BlockPerformance | BilinearTable,
                 resources: BilinearTable | Sequence[BilinearTable], budget: Mapping[str, float] | None = None, *,
                 blocks_per_node: int = 5, solver: str = "appsi_highs", method: str = "dinkelbach") -> None:
        super().__init__()
        if not isinstance(supernet, Supernet):
            raise ValueError(f"`supernet` must be a lightning_nas.Supernet, got {type(supernet).__name__}")
        reference = objective.reference if isinstance(objective, BlockPerformance) else supernet.space.default()
        if isinstance(objective, BlockPerformance) and objective.default_law == "additive":
            # Signed deltas predict by the additive law (BlockPerformance.default_law): an ordinary table.
            objective = objective.table("accuracy")
        if isinstance(objective, BlockPerformance):
            full = objective.staged
            accuracy = objective.numerator()
            criteria = [(-accuracy.block, +1)]
        elif isinstance(objective, BilinearTable):
            full = objective.staged
            criteria = [(objective.block, +1)]
        else:
            raise ValueError(f"`objective` must be a BlockPerformance or a BilinearTable, got {type(objective).__name__}")
        resources = [resources] if isinstance(resources, BilinearTable) else list(resources)
        if not resources or not all(isinstance(r, BilinearTable) for r in resources):
            raise ValueError("`resources` must be one BilinearTable or a non-empty list of them (latency, energy, ...)")
        for table in resources:
            _check_same_structure(table, full, "`resources`")
        if isinstance(blocks_per_node, bool) or not isinstance(blocks_per_node, (int, np.integer)) or blocks_per_node < 1:
            raise ValueError(f"`blocks_per_node` must be an int >= 1, got {blocks_per_node!r}")
        from lightning_nas.solvers.fractional import FRACTIONAL_METHODS

        # Checked for either objective: a misspelt method must not pass just because this objective ignores it.
        if method not in FRACTIONAL_METHODS:
            raise ValueError(f"`method` must be one of {FRACTIONAL_METHODS}, got {method!r}")
        _check_budget(budget or {})
        if full.shared_labels:
            raise ValueError(
                f"DynamicNetwork swaps one block's module at a time, but decisions {full.shared_labels!r} are read by several "
                "blocks, so one block cannot change alone; give each block its own decisions"
            )
        self._keep = pareto_blocks(criteria + [(r.block, -1) for r in resources], int(blocks_per_node), full.config_exists())
        self.staged = _restricted_space(full, self._keep)
        self._full = full
        self._objective = objective
        self._resources = {r.name: _restrict(r, self.staged, self._keep) for r in resources}
        self.solver, self.method = solver, method
        self._slots = self._find_slots(supernet)
        # A base arch inside the held blocks (free labels from the reference).
        zeros = np.zeros((self.staged.num_stages, self.staged.max_blocks), dtype=np.int64)
        self._base = self.staged.to_arch(zeros, zeros[:, 0], base=reference)
        # The blocks held on the device: one exported module per kept configuration.
        self.held = nn.ModuleDict()
        for s, st in enumerate(self.staged.stages):
            for b, labels in enumerate(st.block_labels):
                if b >= max(st.depths):
                    continue
                for i, values in enumerate(st.configs[b]):
                    arch = {**self._base, **dict(zip(labels, values))}
                    self.held[_key(s, b, i)] = export_subnet(self._slots[s][b][0], supernet.space.validate(arch))
        self.num_networks = int(np.prod([sum(np.prod([len(c) for c in st.configs[:d]]) for d in st.depths) for st in self.staged.stages]))
        result = self.solve(budget or {})
        self._budget = dict(budget or {})
        self.arch = result.arch
        configs, depths = self.staged.indices(self.arch)
        self.network = supernet.export(self.arch)
        self._attach_stacks()
        self._configs, self._depths = configs.copy(), depths.copy()
        # Start from the held modules, so that a switch replaces exactly the positions it reports.
        self._place(configs, depths, force=True)
        self.initial_solve_seconds = result.solve_seconds

    # -- structure ---------------------------------------------------------------------------------
    def _find_slots(self, supernet: Supernet) -> list[list[tuple[nn.Module, str, str]]]:
        """Per stage and block: ``(supernet module, path of its container, key)``; fills :attr:`_stacks`.

        A block that a depth decision adds or removes lives in a *stack*: the ``nn.Sequential`` a
        :class:`DepthChoice` exports to (its blocks ``blocks.<b>``) or the ``nn.Sequential`` /
        ``nn.ModuleList`` an :class:`~lightning_nas.nn.ElasticLayers` exports to (its layers
        ``<i>``: one stage in ``"prefix"`` mode, one stage per layer in ``"skip"`` mode, always-active
        units without a depth decision). A stack is rebuilt from the held modules at each switch.
        Every other block is replaced by attribute in its parent module.
        """
        root = supernet.module
        paths = {id(m): p for p, m in root.named_modules()}
        depth_choices = {m.label: m for m in root.modules() if isinstance(m, DepthChoice)}
        op_choices = {m.label: m for m in root.modules() if isinstance(m, OpChoice)}
        # container path -> {"members": [(index in the source stack, stage, block)], "layers": whether it is an
        # ElasticLayers (its export is renumbered and described by its config), "kind": its layers' kind}
        self._stacks: dict[str, dict[str, Any]] = {}

        def module_at(path: str) -> nn.Module:
            return root.get_submodule(path) if path else root

        def join_stack(container: str, index: int, s: int, b: int, layers: ElasticLayers | None) -> None:
            stack = self._stacks.setdefault(container, {"members": [], "layers": layers is not None,
                                                        "kind": None if layers is None else layers.layer_kind,
                                                        "size": None if layers is None or layers.mode is None else len(layers),
                                                        # the original config (its MLP width when the kept layers' differ)
                                                        "source": None if layers is None else _hf_config(list(layers.children()))})
            stack["members"].append((index, s, b))

        slots = []
        for s, st in enumerate(self.staged.stages):
            if st.paths:  # read from the supernet's modules: a block's container is its parent module
                row = []
                for b, path in enumerate(st.paths):
                    if path is None:
                        raise ValueError(f"stage {s} block {b} is a shared decision's own unit (no module): it cannot be swapped")
                    parent, _, key = path.rpartition(".")
                    holder = module_at(parent)
                    grand, _, name = parent.rpartition(".")
                    if isinstance(holder, ElasticLayers):
                        join_stack(parent, int(key), s, b, holder)
                        row.append((module_at(path), parent, key))
                    elif name == "blocks" and isinstance(module_at(grand), DepthChoice):
                        join_stack(grand, int(key), s, b, None)  # <DepthChoice>.blocks.<b>: exported as a Sequential
                        row.append((module_at(path), grand, key))
                    elif st.depth_label is not None:
                        raise ValueError(
                            f"stage {s} (depth decision {st.depth_label!r}): block {path!r} is neither a block of a DepthChoice "
                            "nor a layer of an ElasticLayers stack, so DynamicNetwork cannot add or remove it"
                        )
                    else:
                        row.append((module_at(path), parent, key))
                slots.append(row)
                continue
            if st.depth_label is not None:
                dc = depth_choices.get(st.depth_label)
                if dc is None:
                    raise ValueError(f"stage {s}: no DepthChoice with label {st.depth_label!r} in the supernet")
                for b in range(len(dc.blocks)):
                    join_stack(paths[id(dc)], b, s, b, None)
                slots.append([(block, paths[id(dc)], str(b)) for b, block in enumerate(dc.blocks)])
                continue
            row = []
            for b, labels in enumerate(st.block_labels):
                op = op_choices.get(labels[0]) if len(labels) == 1 else None
                if op is None:
                    raise ValueError(
                        f"stage {s} block {b} ({list(labels)}): a fixed-depth block must be one OpChoice to be swapped; "
                        "give the stage a DepthChoice or make the node an OpChoice"
                    )
                parent, _, key = paths[id(op)].rpartition(".")
                row.append((op, parent, key))
            slots.append(row)
        for container, stack in self._stacks.items():
            stack["members"].sort()
            indices = [i for i, _, _ in stack["members"]]
            if len(set(indices)) != len(indices):
                raise ValueError(f"the stack {container!r} has a layer read as two blocks; DynamicNetwork cannot hold it")
            if stack["size"] is not None and len(indices) != stack["size"]:
                raise ValueError(f"the ElasticLayers {container!r} has {stack['size']} layers but {len(indices)} are blocks of its stages")
        return slots

    def _attach_stacks(self) -> None:
        """Bind each stack to the running network: its container, the layers that always run and the
        exported Hugging Face config (layers' ``config`` attributes then share it)."""
        config = next((m.config for m in self.network.modules() if hasattr(getattr(m, "config", None), "to_dict")), None)
        for container, stack in self._stacks.items():
            exported = self.network.get_submodule(container) if container else self.network
            if isinstance(exported, nn.Identity) and not stack["layers"] and container:
                # A DepthChoice at depth 0 exports as nn.Identity: an empty Sequential computes the same
                # and can take blocks back.
                parent, _, key = container.rpartition(".")
                exported = nn.Sequential()
                setattr(self.network.get_submodule(parent) if parent else self.network, key, exported)
            if not isinstance(exported, (nn.Sequential, nn.ModuleList)):
                raise ValueError(f"the stack {container!r} exported as a {type(exported).__name__}, not an nn.Sequential / nn.ModuleList")
            stack["module"] = exported
            members = {i for i, _, _ in stack["members"]}
            # Layers without decisions (a stack without a depth decision) run always, at their own index.
            stack["fixed"] = {i: exported[i] for i in range(len(exported)) if i not in members}
            stack["config"] = config if stack["layers"] else None
            stack["current"] = {}  # (stage, block) -> the held module placed there (None: not running)
        if config is not None:
            for module in self.held.modules():
                if hasattr(getattr(module, "config", None), "to_dict"):
                    module.config = config  # held layers read the running model's config, as its own layers do

    def _container(self, s: int, b: int) -> tuple[nn.Module, str]:
        _, parent, key = self._slots[s][b]
        return (self.network.get_submodule(parent) if parent else self.network), key

    # -- search and switching ------------------------------------------------------------------------
    def solve(self, budget: Mapping[str, float], *, method: str | None = None, **options: Any) -> SearchResult:
        """The best arch of the held blocks under ``budget``, without switching to it.

        ``method`` overrides the fractional method for this call; ``options`` go to the solver
        (``time_limit``...). ``result.solve_seconds`` is the wall time of the search.
        """
        _check_budget(budget)
        unknown = sorted(set(budget) - set(self._resources))
        if unknown:
            raise ValueError(f"`budget` names unknown resources {unknown}; budgeted resources: {sorted(self._resources)}")
        limits = [Limit(self._resources[name], upper=float(value)) for name, value in budget.items()]
        start = time.perf_counter()
        if isinstance(self._objective, BlockPerformance):
            from lightning_nas.solvers.fractional import solve_fractional

            perf = self._objective
            result = solve_fractional(_restrict(perf.numerator(), self.staged, self._keep),
                                      _restrict(perf.flops, self.staged, self._keep), limits,
                                      constant=perf.base["accuracy"], method=method or self.method, solver=self.solver,
                                      base=self._base, **options)
        else:
            from lightning_nas.solvers.search import search_constrained

            result = search_constrained(_restrict(self._objective, self.staged, self._keep), limits, solver=self.solver,
                                        base=self._base, **options)
        result.solve_seconds = time.perf_counter() - start
        return result

    @property
    def resources(self) -> dict[str, BilinearTable]:
        """The budgeted tables over the held blocks (:attr:`staged`)."""
        return dict(self._resources)

    def _place(self, configs: np.ndarray, depths: np.ndarray, force: bool = False) -> list[tuple[int, int]]:
        changed = []
        in_stack = {(s, b) for stack in self._stacks.values() for _, s, b in stack["members"]}
        for s, st in enumerate(self.staged.stages):
            for b in range(st.num_blocks):
                if (s, b) in in_stack:
                    continue
                new = self.held[_key(s, b, int(configs[s, b]))]
                container, key = self._container(s, b)
                if force or getattr(container, key) is not new:
                    setattr(container, key, new)
                    changed.append((s, b))
        for stack in self._stacks.values():
            modules, kept, stack_changed = [], [], []
            entries = sorted([(i, s, b) for i, s, b in stack["members"]] + [(i, -1, -1) for i in stack["fixed"]])
            for index, s, b in entries:
                if s < 0:
                    modules.append(stack["fixed"][index])
                    kept.append(index)
                    continue
                active = b < self.staged.stages[s].depths[int(depths[s])]
                new = self.held[_key(s, b, int(configs[s, b]))] if active else None
                if stack["current"].get((s, b)) is not new or (force and active):
                    stack_changed.append((s, b))
                    stack["current"][(s, b)] = new
                if active:
                    modules.append(new)
                    kept.append(index)
            if stack_changed:
                container = stack["module"]
                container._modules.clear()
                for j, module in enumerate(modules):
                    container._modules[str(j)] = module
                if stack["layers"]:
                    _finish_stack(modules, kept, stack["config"], stack["kind"], stack["source"])
                changed += stack_changed
        return sorted(changed)

    def set_budget(self, budget: Mapping[str, float], resources: BilinearTable | Sequence[BilinearTable] | None = None) -> SwitchReport:
        """Re-solve for ``budget`` (``{resource: upper}``) and swap the changed blocks in place.

        Args:
            budget: the new upper bounds; resources not named are unbounded.
            resources: updated tables (e.g. re-measured block latencies) replacing those of the
                same name; same node structure as at construction.

        Raises:
            InfeasibleError: no network of the held blocks meets the budget (the smallest
                achievable value is in the message); the running network is left unchanged.
        """
        if resources is not None:
            for table in [resources] if isinstance(resources, BilinearTable) else resources:
                if not isinstance(table, BilinearTable):
                    raise ValueError(f"`resources` must be BilinearTables, got {type(table).__name__}")
                if table.name not in self._resources:
                    raise ValueError(f"`resources` table {table.name!r} was not budgeted at construction: {sorted(self._resources)}")
                _check_same_structure(table, self._full, "`resources`")
                self._resources[table.name] = _restrict(table, self.staged, self._keep)
        result = self.solve(budget)
        self._budget = dict(budget)
        configs, depths = self.staged.indices(result.arch)
        start = time.perf_counter()
        changed = self._place(configs, depths)
        switch_seconds = time.perf_counter() - start
        self.arch, self._configs, self._depths = result.arch, configs, depths
        return SwitchReport(arch=result.arch, changed=changed, solve_seconds=result.solve_seconds,
                            switch_seconds=switch_seconds, result=result)

    @property
    def budget(self) -> dict[str, float]:
        return dict(self._budget)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.network(*args, **kwargs)
