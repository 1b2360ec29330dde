"""The stage/block structure of a search space, as BINAS and MathNAS see it.

A *staged* space has ``S`` stages; stage ``s`` has block positions and a depth decision; block
``b`` (1-based) of stage ``s`` is active when the stage's depth is at least ``b``. A stage
without a depth decision runs all its blocks: that is how decisions read outside any depth
decision (a stem's kernel, a width shared by many layers) appear, as *always-active units*.
Each block position (a *unit*) has a *configuration*: the joint value of the decisions it reads
(one decision such as ``"stage0.block1.config"``, or several such as ``.expand`` and ``.kernel``).
Blocks may have different numbers of configurations; arrays are padded to the largest number
``C`` and :meth:`StagedSpace.config_exists` says which entries are real.

A decision may be read by several units (one width ``Choice`` given to many layers): it is then
*shared*. Additive models stay exact for quantities such as latency (a unit's latency depends on
every decision it reads, so its table is over their joint values), and the solvers keep the
units' choices consistent. Accuracy gains are counted once per decision: a shared decision's
gain belongs to one *owner* unit (see :meth:`StagedSpace.own_configs`).

This is what the contribution estimator, the latency profiler and the constrained solvers share:
they speak of ``(stage, block, config)`` and ``(stage, depth)`` indices, and ``StagedSpace``
converts those to and from plain arch dicts. The structure comes from the supernet's modules
(:meth:`StagedSpace.from_supernet`: every ``DepthChoice`` is a stage, whatever the labels) or,
for a bare ``SearchSpace``, from label names (:meth:`StagedSpace.from_space`).

Example::

    staged = StagedSpace.of(supernet)
    configs, depths = staged.indices(arch)               # (S, D) and (S,) index arrays
    arch2 = staged.to_arch(configs, depths)               # the same arch back
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from lightning_nas.spaces.search_space import SearchSpace

if TYPE_CHECKING:  # the supernet imports the spaces package
    from lightning_nas.supernet import Supernet

__all__ = ["MAX_UNIT_CONFIGS", "Stage", "StagedSpace", "structure_difference"]

BLOCK_PATTERN = r"stage(?P<stage>\d+)\.block(?P<block>\d+)\.(?P<name>.+)"
DEPTH_PATTERN = r"stage(?P<stage>\d+)\.depth"
# A module outside every DepthChoice reading decisions with more joint values than this is split
# into its children (a table over the whole joint space would not be additive anything).
MAX_UNIT_CONFIGS = 4096
# Shared decisions are enumerated jointly by exact routines such as ``BilinearTable.extreme``.
MAX_SHARED_ASSIGNMENTS = 4096


@dataclass(frozen=True)
class Stage:
    """One stage: its depth decision and its block positions (units).

    Attributes:
        depth_label: label of the depth decision, or ``None`` for a fixed depth (all blocks run).
        depths: candidate depths, sorted, each in ``[0, len(block_labels)]``: the depth decision's
            own candidates, ints (``False`` / ``True`` for the on/off decision of a layer that can
            be skipped, a stage of one block: a bool is the int 0 / 1, and the arch keeps the bool).
        block_labels: per block position, the labels whose values form its configuration.
        configs: per block position, its configurations: tuples of values, one per label, in the
            order of ``itertools.product`` over the labels' candidate values.
        paths: per block position, the path of its module in the supernet's module (``None``: a
            shared decision's own unit, which has no module); empty when not known (label-inferred
            structures).
    """

    depth_label: str | None
    depths: tuple[int, ...]
    block_labels: tuple[tuple[str, ...], ...]
    configs: tuple[tuple[tuple[Any, ...], ...], ...]
    paths: tuple[str | None, ...] = ()

    @property
    def num_blocks(self) -> int:
        return len(self.block_labels)


def _unit(space: SearchSpace, labels: Sequence[str]) -> tuple[tuple[str, ...], tuple[tuple[Any, ...], ...]]:
    labels = tuple(labels)
    return labels, tuple(itertools.product(*(space[lab].values for lab in labels)))


def _stage_layout(module: Any) -> list[tuple[str, tuple[Any, ...], tuple[str, ...]]] | None:
    """The stages ``module`` forms, ``[(depth label, depth candidates, block child names)]``: one for a
    ``DepthChoice``, what :meth:`ElasticLayers.stage_layout <lightning_nas.nn.ElasticLayers.stage_layout>`
    says for a stack of transformer layers (``[]``: one without a depth decision), ``None`` for
    any other module."""
    from lightning_nas.nn.depth_choice import DepthChoice
    from lightning_nas.nn.transformer_rules import ElasticLayers

    if isinstance(module, DepthChoice):
        return [(module.label, tuple(module.choice.values), tuple(f"blocks.{i}" for i in range(len(module.blocks))))]
    if isinstance(module, ElasticLayers):
        return module.stage_layout()
    return None


class StagedSpace:
    """Index view of a ``SearchSpace`` made of stages of blocks (see the module docstring).

    Args:
        space: the full search space.
        stages: the stage structure (see :meth:`from_supernet` and :meth:`from_space`).

    Labels of ``space`` that belong to no stage are *free*: :meth:`to_arch` takes them from a base
    arch (the space's default unless given).

    Raises:
        ValueError: a stage without blocks, depths outside ``[0, blocks]``, an unknown label, a
            depth decision shared by two stages or also read by a block.
    """

    def __init__(self, space: SearchSpace, stages: Sequence[Stage]) -> None:
        if not stages:
            raise ValueError("a StagedSpace needs at least one stage")
        readers: dict[str, list[tuple[int, int]]] = {}
        depth_owner: dict[str, int] = {}
        for s, st in enumerate(stages):
            if st.num_blocks == 0:
                raise ValueError(f"stage {s} has no block positions")
            if not st.depths or min(st.depths) < 0 or max(st.depths) > st.num_blocks:
                raise ValueError(f"stage {s}: depths must be in [0, {st.num_blocks}], got {st.depths!r}")
            if st.paths and len(st.paths) != st.num_blocks:
                raise ValueError(f"stage {s}: {len(st.paths)} paths for {st.num_blocks} block positions")
            if st.depth_label is not None:
                if st.depth_label in depth_owner:
                    raise ValueError(
                        f"depth decision {st.depth_label!r} sets the depth of stages {depth_owner[st.depth_label]} and {s}; "
                        "a depth decision shared by several DepthChoices is not supported: give each its own label"
                    )
                depth_owner[st.depth_label] = s
            for b, (labels, configs) in enumerate(zip(st.block_labels, st.configs)):
                if not configs:
                    raise ValueError(f"stage {s} block {b} has no configuration")
                for lab in labels:
                    if lab not in space._by_label:
                        raise ValueError(f"stage {s} block {b} reads {lab!r}, which is not a decision of the space")
                    readers.setdefault(lab, []).append((s, b))
        both = sorted(set(depth_owner) & set(readers))
        if both:
            raise ValueError(
                f"decision {both[0]!r} is the depth of stage {depth_owner[both[0]]} and is also read by block(s) "
                f"{readers[both[0]]}: the profiler and the solvers cannot separate the two effects"
            )
        self.space = space
        self.stages = tuple(stages)
        self.num_configs = max(len(c) for st in stages for c in st.configs)
        self.shared_labels = [lab for lab in space.labels if len(readers.get(lab, ())) > 1]
        self.readers = {lab: tuple(units) for lab, units in readers.items()}
        covered = set(readers) | set(depth_owner)
        self.free_labels = [lab for lab in space.labels if lab not in covered]
        self.owner = {lab: self._pick_owner(lab) for lab in self.shared_labels}

    def _pick_owner(self, label: str) -> tuple[int, int]:
        # Prefer the decision's own unit, then a unit that always runs, then the first reader.
        units = self.readers[label]
        def runs(s: int, b: int) -> bool:
            return b < min(self.stages[s].depths)

        for pick in (
            lambda s, b: self.stages[s].block_labels[b] == (label,) and runs(s, b),
            runs,
            lambda s, b: True,
        ):
            for s, b in units:
                if pick(s, b):
                    return s, b
        raise AssertionError("unreachable")

    @classmethod
    def from_space(cls, space: SearchSpace, block_pattern: str = BLOCK_PATTERN, depth_pattern: str = DEPTH_PATTERN) -> "StagedSpace":
        """Infer the stages from label names (for a bare ``SearchSpace``; a supernet's structure
        is read from its modules by :meth:`from_supernet`).

        Args:
            space: a search space whose block decisions match ``block_pattern`` (named groups
                ``stage`` and ``block``, 0-based integers) and whose depth decisions match
                ``depth_pattern`` (group ``stage``). A stage without a depth decision has a
                fixed depth (all its blocks).

        Raises:
            ValueError: when no label matches, or block numbers of a stage have gaps.
        """
        for name, pattern in (("block_pattern", block_pattern), ("depth_pattern", depth_pattern)):
            try:
                groups = re.compile(pattern).groupindex
            except (re.error, TypeError) as err:
                raise ValueError(f"`{name}` {pattern!r} is not a regular expression: {err}") from None
            needed = {"stage", "block"} if name == "block_pattern" else {"stage"}
            if not needed <= set(groups):
                raise ValueError(f"`{name}` {pattern!r} must have the named groups {sorted(needed)}, e.g. {BLOCK_PATTERN!r}")
        blocks: dict[int, dict[int, list[str]]] = {}
        depth_labels: dict[int, str] = {}
        for label in space.labels:
            if (m := re.fullmatch(depth_pattern, label)) is not None:
                depth_labels[int(m["stage"])] = label
            elif (m := re.fullmatch(block_pattern, label)) is not None:
                blocks.setdefault(int(m["stage"]), {}).setdefault(int(m["block"]), []).append(label)
        if not blocks:
            raise ValueError(
                f"no label of the space matches the block pattern {block_pattern!r}; labels: {space.labels[:6]!r}...; "
                "for a supernet, use StagedSpace.from_supernet, which reads the structure from its modules"
            )
        stages = []
        for s in sorted(blocks):
            positions = sorted(blocks[s])
            if positions != list(range(len(positions))):
                raise ValueError(f"stage {s}: block numbers must be 0, 1, 2, ... without gaps, got {positions}")
            units = [_unit(space, blocks[s][b]) for b in positions]
            depth_label = depth_labels.get(s)
            depths = tuple(space[depth_label].values) if depth_label else (len(positions),)
            stages.append(Stage(depth_label, depths, tuple(u[0] for u in units), tuple(u[1] for u in units)))
        extra = sorted(set(depth_labels) - set(blocks))
        if extra:
            raise ValueError(f"depth decisions for stages without blocks: {[depth_labels[s] for s in extra]}")
        return cls(space, stages)

    @classmethod
    def from_supernet(cls, supernet: "Supernet", *, max_unit_configs: int = MAX_UNIT_CONFIGS) -> "StagedSpace":
        """Read the structure from the supernet's modules, whatever the labels.

        * every :class:`~lightning_nas.nn.DepthChoice` is a stage; its ``blocks`` are the block
          positions, and a block's configuration is the joint value of the decisions its modules
          read;
        * a stack of transformer layers decorated by :func:`~lightning_nas.nn.transformer_rules.elastic_layers`
          (an :class:`~lightning_nas.nn.ElasticLayers`) forms the stages its ``stage_layout()``
          gives: with a depth (``mode="prefix"``) one stage whose blocks are the layers, as a
          DepthChoice; with "skip any layer" (``mode="skip"``) one stage per layer, holding that
          layer, whose depth is its ``keep`` decision (``False``: 0 blocks, ``True``: 1), so that a
          skipped layer is an inactive block (it costs nothing in an additive table, exactly) and
          every on/off choice stays independent for the solvers; without a depth decision each
          layer is an always-active unit;
        * outside the DepthChoices, each outermost module that reads decisions and contains no
          DepthChoice is an always-active unit; a container (``nn.Sequential``, ``ModuleList``,
          ``ModuleDict``) whose children all read decisions (a stage of fixed depth) is split into
          one unit per child, and so is a module whose decisions have more than
          ``max_unit_configs`` joint values; these units form a last stage without a depth decision;
        * a ``Choice`` read directly by a module that also holds a DepthChoice is a unit of its
          own (its effect on latency cannot be isolated: the profiler refuses it);
        * every decision read by several units gets a unit of its own in that last stage (no
          module, path ``None``), which owns the decision's accuracy gain.

        Raises:
            ValueError: a DepthChoice or ElasticLayers nested in another one's block or inside
                another mutable (an ``OpChoice`` candidate, say), or a single module or block whose
                decisions have more than ``max_unit_configs`` joint values — each naming the module
                path.
        """
        from torch import nn

        from lightning_nas.nn.choice import Choice, Mutable
        from lightning_nas.supernet import Supernet

        if not isinstance(supernet, Supernet):
            raise ValueError(f"`supernet` must be a lightning_nas.Supernet, got {type(supernet).__name__}; wrap the model: Supernet(model)")
        space = supernet.space
        stages: list[Stage] = []
        fixed: list[tuple[str | None, tuple[str, ...]]] = []

        def labels_in(module) -> tuple[str, ...]:
            seen: dict[str, None] = {}
            for m in module.modules():
                if isinstance(m, Choice):
                    seen.setdefault(m.label)
            return tuple(seen)

        def holds_depth(module) -> bool:  # a stage, i.e. a depth decision, somewhere inside
            return any(_stage_layout(m) for m in module.modules())

        def size(labels) -> int:
            return math.prod(len(space[lab].values) for lab in labels)

        def join(path: str, name: str) -> str:
            return f"{path}.{name}" if path else name

        def visit(module, path: str) -> None:
            layout = _stage_layout(module)
            if layout:
                what = f"the {type(module).__name__} at {path or '<root>'!r}"
                for depth_label, depths, names in layout:
                    units, paths = [], []
                    for name in names:
                        block, block_path = module.get_submodule(name), join(path, name)
                        if holds_depth(block):
                            raise ValueError(
                                f"{what} (depth decision {depth_label!r}) has a depth decision (a DepthChoice or an "
                                f"ElasticLayers) inside its block {block_path!r}; nested depth decisions are not supported: "
                                "make them consecutive stages"
                            )
                        labels = [lab for lab in labels_in(block) if lab != depth_label]
                        if size(labels) > max_unit_configs:
                            raise ValueError(
                                f"block {block_path!r} of {what} reads decisions {labels!r} with {size(labels)} joint values, "
                                f"more than max_unit_configs={max_unit_configs}; its tables would be over all of them: "
                                "give it fewer decisions or raise the limit"
                            )
                        units.append(_unit(space, labels))
                        paths.append(block_path)
                    stages.append(Stage(depth_label, tuple(depths), tuple(u[0] for u in units), tuple(u[1] for u in units), tuple(paths)))
                return
            if layout is not None:  # a stack without a depth decision: each layer is a unit of its own
                for name, child in module.named_children():
                    visit(child, join(path, name))
                return
            if isinstance(module, Choice):
                fixed.append((path, (module.label,)))  # read in the forward of a module that also holds a DepthChoice
                return
            labels = labels_in(module)
            if not labels:
                return
            # Modules holding a stage (or a stack of layers, each a unit) are opened up; a mutable
            # holding a depth decision cannot be (its candidates run alternatively).
            split = any(_stage_layout(m) is not None for m in module.modules())
            if isinstance(module, Mutable) and split and not holds_depth(module):
                split = False
            if not split:
                children = list(module.named_children())
                # A chain of blocks that each read decisions (a stage of fixed depth) is one unit per
                # block: smaller tables, and additive as a stage's blocks are. A container with
                # layers that read nothing stays whole, so that their cost follows its decisions.
                blocks = isinstance(module, (nn.Sequential, nn.ModuleList, nn.ModuleDict)) and len(children) > 1 and all(
                    labels_in(child) for _, child in children
                )
                if not blocks and (size(labels) <= max_unit_configs or not children or isinstance(module, Mutable)):
                    if size(labels) > max_unit_configs:
                        raise ValueError(
                            f"module {path or '<root>'!r} ({type(module).__name__}) reads decisions {list(labels)!r} with "
                            f"{size(labels)} joint values, more than max_unit_configs={max_unit_configs}; its latency "
                            "table would be over all of them: split it into smaller modules or raise the limit"
                        )
                    fixed.append((path, labels))
                    return
            elif isinstance(module, Mutable):
                inner = next((name, m) for name, m in module.named_modules() if _stage_layout(m))
                raise ValueError(
                    f"{type(module).__name__} {path or '<root>'!r} holds the {type(inner[1]).__name__} {join(path, inner[0])!r} "
                    "inside one of its candidates: its blocks run only when that candidate is chosen, which the stage "
                    "structure cannot express"
                )
            for name, child in module.named_children():
                visit(child, join(path, name))

        visit(supernet.module, "")
        units = [(path, _unit(space, labels)) for path, labels in fixed]
        counts: dict[str, int] = {}
        for labels in [u[1][0] for u in units] + [lab for st in stages for lab in st.block_labels]:
            for lab in labels:
                counts[lab] = counts.get(lab, 0) + 1
        own = {u[1][0] for u in units} | {labels for st in stages for labels in st.block_labels}
        units += [(None, _unit(space, [lab])) for lab in space.labels if counts.get(lab, 0) > 1 and (lab,) not in own]
        if units:
            stages.append(Stage(None, (len(units),), tuple(u[1][0] for u in units), tuple(u[1][1] for u in units), tuple(u[0] for u in units)))
        if not stages:
            raise ValueError("the supernet has no decisions: there is nothing to search")
        return cls(space, stages)

    @classmethod
    def of(cls, obj: "Supernet | SearchSpace | StagedSpace") -> "StagedSpace":
        """The staged view the pipeline uses: of a supernet, of a bare space (:meth:`from_space`), or itself.

        A supernet's structure is read from its modules (:meth:`from_supernet`), except for a
        supernet without any ``DepthChoice`` (or ``ElasticLayers`` with a depth) whose labels follow the ``stage{s}.block{b}.*`` /
        ``stage{s}.depth`` pattern: there the labels are the only statement of its stages (a
        model that reads its decisions itself), so :meth:`from_space` is used, as before.
        """
        from lightning_nas.supernet import Supernet

        if isinstance(obj, StagedSpace):
            return obj
        if isinstance(obj, Supernet):
            if not any(_stage_layout(m) for m in obj.module.modules()):
                try:
                    return cls.from_space(obj.space)
                except ValueError:
                    pass
            return cls.from_supernet(obj)
        if isinstance(obj, SearchSpace):
            return cls.from_space(obj)
        raise ValueError(f"expected a Supernet, a SearchSpace or a StagedSpace, got {type(obj).__name__}")

    # -- sizes -----------------------------------------------------------------------------
    @property
    def num_stages(self) -> int:
        return len(self.stages)

    @property
    def max_blocks(self) -> int:
        return max(st.num_blocks for st in self.stages)

    @property
    def max_depth_options(self) -> int:
        return max(len(st.depths) for st in self.stages)

    def block_exists(self) -> np.ndarray:
        """``(S, D)`` bool: stage ``s`` has a block position ``b``."""
        out = np.zeros((self.num_stages, self.max_blocks), dtype=bool)
        for s, st in enumerate(self.stages):
            out[s, : st.num_blocks] = True
        return out

    def config_counts(self) -> np.ndarray:
        """``(S, D)`` int: number of configurations of each block position (0 where none)."""
        out = np.zeros((self.num_stages, self.max_blocks), dtype=np.int64)
        for s, st in enumerate(self.stages):
            out[s, : st.num_blocks] = [len(c) for c in st.configs]
        return out

    def config_exists(self) -> np.ndarray:
        """``(S, D, C)`` bool: configuration ``c`` exists at block ``b`` of stage ``s``."""
        return np.arange(self.num_configs) < self.config_counts()[..., None]

    def depth_exists(self) -> np.ndarray:
        """``(S, max_depth_options)`` bool: stage ``s`` has a depth option ``j``."""
        out = np.zeros((self.num_stages, self.max_depth_options), dtype=bool)
        for s, st in enumerate(self.stages):
            out[s, : len(st.depths)] = True
        return out

    def always_active(self) -> np.ndarray:
        """``(S, D)`` bool: blocks active at every depth of their stage (the first ones)."""
        out = np.zeros((self.num_stages, self.max_blocks), dtype=bool)
        for s, st in enumerate(self.stages):
            out[s, : min(st.depths)] = True
        return out

    def own_configs(self) -> np.ndarray:
        """``(S, D, C)`` int: the configuration whose accuracy gain configuration ``c`` takes.

        A unit's accuracy gain depends only on the decisions it owns (all it reads, but the shared
        decisions owned by another unit): ``c`` maps to the configuration with the same owned
        values and every other shared decision at its first candidate. Without shared decisions
        this is ``c`` itself. Padding entries map to 0.
        """
        out = np.zeros((self.num_stages, self.max_blocks, self.num_configs), dtype=np.int64)
        for s, st in enumerate(self.stages):
            for b, (labels, configs) in enumerate(zip(st.block_labels, st.configs)):
                foreign = [i for i, lab in enumerate(labels) if lab in self.owner and self.owner[lab] != (s, b)]
                position = {values: c for c, values in enumerate(configs)}
                for c, values in enumerate(configs):
                    rep = list(values)
                    for i in foreign:
                        rep[i] = self.space[labels[i]].values[0]
                    out[s, b, c] = position[tuple(rep)]
        return out

    def shared_groups(self) -> np.ndarray:
        """``(S, D, C)`` int: configurations of one block with equal values of its shared decisions
        share a group id (only those can replace each other without touching other blocks)."""
        out = np.zeros((self.num_stages, self.max_blocks, self.num_configs), dtype=np.int64)
        for s, st in enumerate(self.stages):
            for b, (labels, configs) in enumerate(zip(st.block_labels, st.configs)):
                shared = [i for i, lab in enumerate(labels) if lab in self.owner]
                ids: dict[tuple[Any, ...], int] = {}
                for c, values in enumerate(configs):
                    out[s, b, c] = ids.setdefault(tuple(values[i] for i in shared), len(ids))
        return out

    # -- shared decisions ------------------------------------------------------------------------
    def shared_assignments(self, limit: int = MAX_SHARED_ASSIGNMENTS) -> Iterator[dict[str, Any]]:
        """Every joint value of the shared decisions (one empty dict when there are none).

        Raises:
            ValueError: when there are more than ``limit`` joint values.
        """
        values = [self.space[lab].values for lab in self.shared_labels]
        count = math.prod(len(v) for v in values)
        if count > limit:
            raise ValueError(
                f"the shared decisions {self.shared_labels!r} have {count} joint values, more than {limit} to enumerate"
            )
        for combo in itertools.product(*values):
            yield dict(zip(self.shared_labels, combo))

    def consistent_with(self, assignment: Mapping[str, Any]) -> np.ndarray:
        """``(S, D, C)`` bool: existing configurations that agree with ``assignment`` (label → value)."""
        out = self.config_exists()
        for s, st in enumerate(self.stages):
            for b, (labels, configs) in enumerate(zip(st.block_labels, st.configs)):
                fixed = [(i, assignment[lab]) for i, lab in enumerate(labels) if lab in assignment]
                if fixed:
                    for c, values in enumerate(configs):
                        out[s, b, c] = all(values[i] == v for i, v in fixed)
        return out

    def consistent(self, configs: np.ndarray, depths: np.ndarray) -> np.ndarray:
        """``(...)`` bool: the running blocks of ``(..., S, D)`` configs under ``(..., S)`` depth
        indices agree on every shared decision (always true without shared decisions)."""
        configs, depths = np.asarray(configs), np.asarray(depths)
        ok = np.ones(configs.shape[:-2], dtype=bool)
        active = self.active(depths)
        for label in self.shared_labels:
            decision = self.space[label]
            seen = np.full(configs.shape[:-2], -1)
            for s, b in self.readers[label]:
                st = self.stages[s]
                pos = st.block_labels[b].index(label)
                value_of = np.array([decision.index(values[pos]) for values in st.configs[b]])
                value = np.where(active[..., s, b], value_of[np.clip(configs[..., s, b], 0, len(value_of) - 1)], -1)
                ok &= (value < 0) | (seen < 0) | (value == seen)
                seen = np.where(seen < 0, value, seen)
        return ok

    def owned_labels(self, stage: int, block: int) -> tuple[str, ...]:
        """The decisions whose effect block ``(stage, block)`` carries: all it reads but the shared
        decisions another block owns."""
        return tuple(lab for lab in self.stages[stage].block_labels[block] if self.owner.get(lab, (stage, block)) == (stage, block))

    def set_values(self, configs: np.ndarray, values: Mapping[str, Any]) -> np.ndarray:
        """``(S, D)`` configs with the decisions ``values`` (label → value) set in every block that reads them."""
        out = np.array(configs, copy=True)
        for label, value in values.items():
            for s, b in self.readers.get(label, ()):
                st = self.stages[s]
                current = list(st.configs[b][max(int(out[s, b]), 0)])
                current[st.block_labels[b].index(label)] = value
                out[s, b] = st.configs[b].index(tuple(current))
        return out

    def canonical(self, configs: np.ndarray) -> np.ndarray:
        """``(S, D)`` configs made consistent: every shared decision takes its owner block's value."""
        values = {}
        for label, (s, b) in self.owner.items():
            st = self.stages[s]
            values[label] = st.configs[b][int(configs[s, b])][st.block_labels[b].index(label)]
        return self.set_values(configs, values)

    # -- conversions -------------------------------------------------------------------------
    def indices(self, arch: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
        """``(configs, depths)``: ``(S, D)`` config index per block (-1 where no block) and
        ``(S,)`` index of each stage's depth in ``stage.depths``."""
        arch = self.space.validate(arch)
        configs = np.full((self.num_stages, self.max_blocks), -1, dtype=np.int64)
        depths = np.zeros(self.num_stages, dtype=np.int64)
        for s, st in enumerate(self.stages):
            for b, labels in enumerate(st.block_labels):
                configs[s, b] = st.configs[b].index(tuple(arch[lab] for lab in labels))
            depths[s] = 0 if st.depth_label is None else st.depths.index(arch[st.depth_label])
        return configs, depths

    def indices_many(self, archs: Sequence[Mapping[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
        """Stacked :meth:`indices`: ``(N, S, D)`` and ``(N, S)``."""
        pairs = [self.indices(a) for a in archs]
        return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])

    def active(self, depth_indices: np.ndarray) -> np.ndarray:
        """``(..., S, D)`` bool: which blocks run, from ``(..., S)`` depth indices."""
        depth_indices = np.asarray(depth_indices)
        values = np.zeros((self.num_stages, self.max_depth_options), dtype=np.int64)
        for s, st in enumerate(self.stages):
            values[s, : len(st.depths)] = st.depths
        depth = np.take_along_axis(np.broadcast_to(values, depth_indices.shape + values.shape[-1:]), depth_indices[..., None], -1)
        return np.arange(1, self.max_blocks + 1) <= depth

    def to_arch(self, configs: np.ndarray, depths: np.ndarray, base: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The arch dict for ``(S, D)`` config indices and ``(S,)`` depth indices.

        Free labels (and nothing else) come from ``base`` (default: the space's default arch).
        A shared decision takes its value from the blocks that run (blocks that do not run are
        written first).

        Raises:
            ValueError: when two running blocks give a shared decision different values.
        """
        arch = dict(self.space.default() if base is None else self.space.validate(base))
        depths = np.asarray(depths)
        active = self.active(depths)
        set_by: dict[str, tuple[int, int]] = {}
        for running in (False, True):
            for s, st in enumerate(self.stages):
                for b, labels in enumerate(st.block_labels):
                    if bool(active[s, b]) != running:
                        continue
                    for lab, value in zip(labels, st.configs[b][int(configs[s][b])]):
                        if running and lab in set_by and arch[lab] != value:
                            raise ValueError(
                                f"blocks {set_by[lab]} and {(s, b)} give the shared decision {lab!r} different values "
                                f"({arch[lab]!r} and {value!r}): the configs are not one architecture"
                            )
                        arch[lab] = value
                        if running:
                            set_by[lab] = (s, b)
                if running and st.depth_label is not None:
                    arch[st.depth_label] = st.depths[int(depths[s])]
        return arch

    def one_hot(self, arch: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
        """BINAS's ``(α, β)``: ``(S, D, C)`` one-hot block configs and ``(S, max_depth_options)`` one-hot depths."""
        configs, depths = self.indices(arch)
        alpha = np.zeros((self.num_stages, self.max_blocks, self.num_configs))
        exists = configs >= 0
        s, b = np.nonzero(exists)
        alpha[s, b, configs[exists]] = 1.0
        beta = np.zeros((self.num_stages, self.max_depth_options))
        beta[np.arange(self.num_stages), depths] = 1.0
        return alpha, beta

    def config_name(self, stage: int, block: int, config: int) -> str:
        """Readable name of a configuration, e.g. ``"expand=96,kernel=5"``."""
        st = self.stages[stage]
        names = [lab.rsplit(".", 1)[-1] for lab in st.block_labels[block]]
        return ",".join(f"{n}={v}" for n, v in zip(names, st.configs[block][config]))

    def __repr__(self) -> str:
        counts = sorted({len(c) for st in self.stages for c in st.configs})
        shared = f", shared={self.shared_labels}" if self.shared_labels else ""
        return (
            f"StagedSpace(stages={self.num_stages}, max_blocks={self.max_blocks}, configs={counts[0] if len(counts) == 1 else counts}, "
            f"depths={[st.depths for st in self.stages]}, free={self.free_labels}{shared})"
        )


def structure_difference(stored: Any, current: Any, *, limit: int = 6, names: tuple[str, str] = ("the file", "this space")) -> str:
    """What differs between two stage structures as files store them (a list of ``{"depth_label",
    "depths", "block_labels", "configs"}`` per stage): labels only in one of them first, then stage
    by stage (depth options, block positions, configurations). ``""`` when they are equal.

    Used to say *why* a table or block-performance file does not fit a space, instead of reporting
    the first label the other space lacks. ``names`` call the two sides in the message.
    """
    one, two = names
    def labels(structure: Any) -> list[str]:
        out: list[str] = []
        for st in structure if isinstance(structure, list) else []:
            if not isinstance(st, Mapping):
                continue
            if st.get("depth_label") is not None:
                out.append(str(st["depth_label"]))
            for block in st.get("block_labels") or []:
                out.extend(str(label) for label in (block if isinstance(block, list) else [block]))
        return list(dict.fromkeys(out))

    if stored == current:
        return ""
    if not isinstance(stored, list) or not all(isinstance(st, Mapping) for st in stored):
        return f"the structure in {one} is malformed (expected a list of stages)"
    mine, theirs = labels(stored), labels(current)
    only_stored = [lab for lab in mine if lab not in theirs]
    only_current = [lab for lab in theirs if lab not in mine]

    def clip(items: list[Any]) -> str:
        return repr(items[:limit])[:-1] + (f", ... {len(items) - limit} more]" if len(items) > limit else "]")

    notes = []
    if only_stored:
        notes.append(f"labels only in {one}: {clip(only_stored)}")
    if only_current:
        notes.append(f"labels only in {two}: {clip(only_current)}")
    if notes:
        return "; ".join(notes)
    if len(stored) != len(current):
        return f"{len(stored)} stages in {one}, {len(current)} in {two}"
    for s, (a, b) in enumerate(zip(stored, current)):
        name = a.get("depth_label") or f"stage {s}"
        for key, what in (("depths", "depth options"), ("block_labels", "blocks (labels per block)"),
                          ("configs", "block configurations (candidate values)")):
            if a.get(key) != b.get(key):
                if key == "configs":
                    for k, (x, y) in enumerate(zip(a.get(key) or [], b.get(key) or [])):
                        if x != y:
                            return (f"{name}: block {k} ({', '.join(map(str, (b.get('block_labels') or [[]])[k]))}) has "
                                    f"configurations {clip(x)} in {one}, {clip(y)} in {two}")
                return f"{name}: {what} {clip(a.get(key) or [])} in {one}, {clip(b.get(key) or [])} in {two}"
    return "the stage structures differ"
