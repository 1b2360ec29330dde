"""The stage/block structure of a search space, as BINAS and MathNAS see it.

A *staged* space has ``S`` stages; stage ``s`` has up to ``D`` block positions and a depth
decision; block ``b`` (1-based) of stage ``s`` is active when the stage's depth is at least ``b``.
Each block position has a *configuration*: the combination of the values of its decisions (one
decision such as ``"stage0.block1.config"``, or several such as ``.expand`` and ``.kernel``).
Every block has the same number ``C`` of configurations.

This is what the contribution estimator, the latency profiler and the constrained solvers share:
they speak of ``(stage, block, config)`` and ``(stage, depth)`` indices, and ``StagedSpace``
converts those to and from plain arch dicts.

Example::

    staged = StagedSpace.from_space(supernet.space)     # labels "stage{s}.block{b}.*", "stage{s}.depth"
    configs, depths = staged.indices(arch)               # (S, D) and (S,) index arrays
    arch2 = staged.to_arch(configs, depths)               # the same arch back
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from lightning_nas.spaces.search_space import SearchSpace

__all__ = ["Stage", "StagedSpace"]

BLOCK_PATTERN = r"stage(?P<stage>\d+)\.block(?P<block>\d+)\.(?P<name>.+)"
DEPTH_PATTERN = r"stage(?P<stage>\d+)\.depth"


@dataclass(frozen=True)
class Stage:
    """One stage: its depth decision and its block positions.

    Attributes:
        depth_label: label of the depth decision, or ``None`` for a fixed depth (all blocks run).
        depths: candidate depths, sorted, each in ``[1, len(block_labels)]``.
        block_labels: per block position, the labels whose values form its configuration.
        configs: per block position, its configurations: tuples of values, one per label, in the
            order of ``itertools.product`` over the labels' candidate values.
    """

    depth_label: str | None
    depths: tuple[int, ...]
    block_labels: tuple[tuple[str, ...], ...]
    configs: tuple[tuple[tuple[Any, ...], ...], ...]

    @property
    def num_blocks(self) -> int:
        return len(self.block_labels)


class StagedSpace:
    """Index view of a ``SearchSpace`` made of stages of blocks (see the module docstring).

    Args:
        space: the full search space.
        stages: the stage structure (see :meth:`from_space` to infer it from labels).

    Labels of ``space`` that belong to no stage are *free*: :meth:`to_arch` takes them from a base
    arch (the space's default unless given).
    """

    def __init__(self, space: SearchSpace, stages: Sequence[Stage]) -> None:
        if not stages:
            raise ValueError("a StagedSpace needs at least one stage")
        counts = {len(c) for st in stages for c in st.configs}
        if len(counts) != 1:
            raise ValueError(f"every block must have the same number of configurations, got counts {sorted(counts)}")
        for s, st in enumerate(stages):
            if not st.depths or min(st.depths) < 1 or max(st.depths) > st.num_blocks:
                raise ValueError(f"stage {s}: depths must be in [1, {st.num_blocks}], got {st.depths!r}")
        self.space = space
        self.stages = tuple(stages)
        self.num_configs = counts.pop()
        covered = {lab for st in stages for labels in st.block_labels for lab in labels}
        covered |= {st.depth_label for st in stages if st.depth_label is not None}
        self.free_labels = [lab for lab in space.labels if lab not in covered]

    @classmethod
    def from_space(cls, space: SearchSpace, block_pattern: str = BLOCK_PATTERN, depth_pattern: str = DEPTH_PATTERN) -> "StagedSpace":
        """Infer the stages from label names.

        Args:
            space: a search space whose block decisions match ``block_pattern`` (named groups
                ``stage`` and ``block``, 0-based integers) and whose depth decisions match
                ``depth_pattern`` (group ``stage``). A stage without a depth decision has a
                fixed depth (all its blocks).

        Raises:
            ValueError: when no label matches, or block numbers of a stage have gaps.
        """
        blocks: dict[int, dict[int, list[str]]] = {}
        depth_labels: dict[int, str] = {}
        for label in space.labels:
            if (m := re.fullmatch(depth_pattern, label)) is not None:
                depth_labels[int(m["stage"])] = label
            elif (m := re.fullmatch(block_pattern, label)) is not None:
                blocks.setdefault(int(m["stage"]), {}).setdefault(int(m["block"]), []).append(label)
        if not blocks:
            raise ValueError(f"no label of the space matches the block pattern {block_pattern!r}; labels: {space.labels[:6]!r}...")
        stages = []
        for s in sorted(blocks):
            positions = sorted(blocks[s])
            if positions != list(range(len(positions))):
                raise ValueError(f"stage {s}: block numbers must be 0, 1, 2, ... without gaps, got {positions}")
            block_labels = tuple(tuple(blocks[s][b]) for b in positions)
            configs = tuple(tuple(itertools.product(*(space[lab].values for lab in labs))) for labs in block_labels)
            depth_label = depth_labels.get(s)
            depths = tuple(space[depth_label].values) if depth_label else (len(positions),)
            stages.append(Stage(depth_label, depths, block_labels, configs))
        extra = sorted(set(depth_labels) - set(blocks))
        if extra:
            raise ValueError(f"depth decisions for stages without blocks: {[depth_labels[s] for s in extra]}")
        return cls(space, stages)

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
        """
        arch = dict(self.space.default() if base is None else self.space.validate(base))
        for s, st in enumerate(self.stages):
            for b, labels in enumerate(st.block_labels):
                arch.update(zip(labels, st.configs[b][int(configs[s][b])]))
            if st.depth_label is not None:
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
        return (
            f"StagedSpace(stages={self.num_stages}, max_blocks={self.max_blocks}, configs={self.num_configs}, "
            f"depths={[st.depths for st in self.stages]}, free={self.free_labels})"
        )
