"""``SkipChoice``: a per-layer on/off decision ("skip any layer", as LLM layer pruning does)."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from lightning_nas.nn.choice import Choice, Mutable
from lightning_nas.nn.routing import route_examples

__all__ = ["SkipChoice"]


class SkipChoice(Mutable):
    """Runs ``block`` or passes its input through, by a bool decision.

    Unlike :class:`~lightning_nas.nn.DepthChoice` (which keeps a prefix of a stage's blocks) any set
    of layers can be dropped. The decision's candidates are ``[False, True]``: ``True`` runs the
    block (the space's ``largest()``), ``False`` skips it (``smallest()``). In per-example mode only
    the rows that keep the block run it. Export gives the block itself or ``nn.Identity()``.

    Args:
        block: a module taking one tensor and returning one of the same shape (a residual
            transformer block; :class:`~lightning_nas.nn.TransformerEncoder` hands blocks their
            attention mask itself).
        label: the decision's label (``None``: named by the supernet after the module path).
        default: whether the block runs by default.

    Shapes: ``(B, ...) -> (B, ...)``, the same shape.
    """

    def __init__(self, block: nn.Module, label: str | None = None, *, default: bool = True) -> None:
        super().__init__()
        if not isinstance(block, nn.Module):
            raise ValueError(f"`block` of SkipChoice {label!r} must be an nn.Module, got {type(block).__name__}")
        if not isinstance(default, bool):
            raise ValueError(f"`default` of SkipChoice {label!r} must be a bool (True: the block runs), got {default!r}")
        self.block = block
        self.choice = Choice([False, True], label, default=default)

    @property
    def label(self) -> str | None:
        return self.choice.label

    def _run(self, keep: int, x: Tensor) -> Tensor:
        if not keep:
            return x
        out = self.block(x)
        if not isinstance(out, Tensor) or out.shape != x.shape:
            got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise ValueError(
                f"SkipChoice {self.label!r}: the block maps shape {tuple(x.shape)} to {got}; only a block that returns "
                "a tensor of its input's shape can be skipped"
            )
        return out

    def forward(self, x: Tensor) -> Tensor:
        indices = self.choice.example_indices()
        if indices is None:
            return self._run(self.choice.value, x)
        return route_examples(self.choice._context, indices, 2, self._run, (x,))

    def freeze(self, arch: dict[str, Any], export_child) -> nn.Module:
        return export_child(self.block) if arch[self.label] else nn.Identity()
