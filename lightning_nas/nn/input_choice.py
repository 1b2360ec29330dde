"""``InputChoice``: which of several inputs are summed (cell topologies)."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from lightning_nas.nn.choice import Choice, Mutable
from lightning_nas.nn.static import SumInputs

__all__ = ["InputChoice"]


class InputChoice(Mutable):
    """Sums ``n_chosen`` of ``n_candidates`` input tensors.

    The value is the input index when ``n_chosen == 1``, else the sorted tuple of chosen indices
    (a list in JSON). Called with a list of ``n_candidates`` same-shape tensors ``(B, ...)``.
    Relaxations plug in through :meth:`set_relaxation` as for :class:`OpChoice`
    (``relaxation(input_choice, inputs) -> Tensor``).

    Args:
        n_candidates: number of inputs offered.
        n_chosen: number of inputs summed.
        label: the decision's label (``None``: named by the supernet after the module path).
        default: the value active by default (default: the first combination).
    """

    def __init__(self, n_candidates: int, n_chosen: int = 1, label: str | None = None, *, default: Any = None) -> None:
        super().__init__()
        if not isinstance(n_candidates, int) or isinstance(n_candidates, bool) or n_candidates < 1:
            raise ValueError(f"`n_candidates` must be a positive int, got {n_candidates!r}")
        if not isinstance(n_chosen, int) or isinstance(n_chosen, bool) or not 1 <= n_chosen <= n_candidates:
            raise ValueError(f"`n_chosen` must be an int in [1, {n_candidates}], got {n_chosen!r}")
        self.n_candidates = n_candidates
        self.n_chosen = n_chosen
        combos = list(itertools.combinations(range(n_candidates), n_chosen))
        values = [c[0] for c in combos] if n_chosen == 1 else combos
        self.choice = Choice(values, label, default=default)
        # Row v marks the inputs summed by candidate v, for per-example masks.
        mask = torch.zeros(len(combos), n_candidates)
        for row, combo in enumerate(combos):
            mask[row, list(combo)] = 1.0
        self.register_buffer("_selection", mask, persistent=False)
        object.__setattr__(self, "_relaxation", None)

    masks_stopped_rows = True

    @property
    def label(self) -> str | None:
        return self.choice.label

    def chosen(self, value: Any) -> list[int]:
        """The input indices summed under ``value``."""
        self.choice.index_of(value)
        return [value] if self.n_chosen == 1 else sorted(value)

    def set_relaxation(self, relaxation: Callable[["InputChoice", list], Tensor] | None) -> None:
        """Install (or with ``None`` remove) a continuous relaxation used instead of the discrete choice."""
        if relaxation is not None and not callable(relaxation):
            raise ValueError(f"`relaxation` must be callable(input_choice, inputs) or None, got {relaxation!r}")
        object.__setattr__(self, "_relaxation", relaxation)

    @property
    def relaxation(self):
        return self._relaxation

    def forward(self, inputs: list[Tensor]) -> Tensor:
        if len(inputs) != self.n_candidates:
            raise ValueError(f"InputChoice {self.label!r} expects {self.n_candidates} inputs, got {len(inputs)}")
        if self._relaxation is not None:
            return self._relaxation(self, inputs)
        indices = self.choice.example_indices()
        if indices is None or (uniform := self.choice.uniform_index()) is not None:
            value = self.choice.values[uniform] if indices is not None else self.choice.value
            return _sum(inputs, self.chosen(value))
        stacked = torch.stack(list(inputs), 1)  # (B, n_candidates, ...)
        weights = self._selection.to(stacked.dtype).index_select(0, indices.to(stacked.device))
        return (stacked * weights.view(*weights.shape, *([1] * (stacked.dim() - 2)))).sum(1)

    def freeze(self, arch: dict[str, Any], export_child) -> SumInputs:
        return SumInputs(self.chosen(self.choice.values[self.choice.index_of(arch[self.label])]))


def _sum(inputs: list[Tensor], chosen: list[int]) -> Tensor:
    out = inputs[chosen[0]]
    for i in chosen[1:]:
        out = out + inputs[i]
    return out
