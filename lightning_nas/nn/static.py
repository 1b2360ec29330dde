"""Static stand-ins that exported networks use where torch.nn has no equivalent module."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

__all__ = ["FixedValue", "SumInputs"]


class SumInputs(nn.Module):
    """Sums the chosen entries of a list of same-shape tensors (an exported ``InputChoice``)."""

    def __init__(self, chosen: list[int]) -> None:
        super().__init__()
        self.chosen = list(chosen)

    def forward(self, inputs: list[Tensor]) -> Tensor:
        out = inputs[self.chosen[0]]
        for i in self.chosen[1:]:
            out = out + inputs[i]
        return out

    def extra_repr(self) -> str:
        return f"chosen={self.chosen}"


class FixedValue(nn.Module):
    """An exported ``Choice`` that user code reads: ``.value`` is the frozen value."""

    def __init__(self, value: Any, label: str | None = None) -> None:
        super().__init__()
        self.value = value
        self.label = label

    def forward(self) -> Any:
        return self.value

    def extra_repr(self) -> str:
        return f"label={self.label!r}, value={self.value!r}"
