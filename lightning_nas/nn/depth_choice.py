"""``DepthChoice``: a block sequence whose output is taken after the chosen number of blocks."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from lightning_nas.nn.choice import Choice, Mutable, rows_separable
from lightning_nas.nn.routing import reassemble

__all__ = ["DepthChoice"]


class DepthChoice(Mutable):
    """Runs the first ``depth`` blocks of a sequence (BINAS's "sink point").

    Blocks past the chosen depth are not run. In per-example mode all exit points must produce
    the same shape. With static shapes (the default) every block up to the largest depth runs on
    every row and each row keeps the output of its own depth; the rows that have stopped are
    marked (:attr:`~lightning_nas.nn.ArchContext.alive`) so that batch statistics inside leave them
    out. This needs every mutable inside to honour that mark
    (:attr:`~lightning_nas.nn.Mutable.masks_stopped_rows`) and no plain BatchNorm taking batch
    statistics there; otherwise, and without static shapes, each block runs only on the examples
    that reach it (grouped: data-dependent shapes, host reads).

    Args:
        blocks: the blocks, applied in order (each takes and returns one tensor).
        depths: candidate depths, ints in ``[0, len(blocks)]``.
        label: the decision's label (``None``: named by the supernet after the module path).
        default: the depth active by default (default: the largest).
    """

    def __init__(self, blocks: Sequence[nn.Module], depths: Sequence[int], label: str | None = None, *, default: int | None = None) -> None:
        super().__init__()
        blocks = list(blocks)
        if not blocks or not all(isinstance(b, nn.Module) for b in blocks):
            raise ValueError(f"`blocks` of DepthChoice {label!r} must be a non-empty list of nn.Module")
        depths = list(depths)
        bad = [d for d in depths if not isinstance(d, int) or isinstance(d, bool) or not 0 <= d <= len(blocks)]
        if bad or not depths:
            raise ValueError(f"`depths` of DepthChoice {label!r} must be ints in [0, {len(blocks)}], got {depths!r}")
        self.blocks = nn.ModuleList(blocks)
        self.choice = Choice(sorted(depths), label, default=max(depths) if default is None else default)

    masks_stopped_rows = True

    @property
    def label(self) -> str | None:
        return self.choice.label

    def _forward_static(self, x: Tensor, indices: Tensor) -> Tensor:
        """Every block up to the largest depth on every row; each row keeps its own depth's output."""
        context = self.choice._context
        depth = context.cached(("depths", self.label), lambda: self.choice.values_tensor(indices.device).index_select(0, indices))
        for i in range(max(self.choice.values)):
            if i < min(self.choice.values):  # every row runs this block
                x = self.blocks[i](x)
                continue
            running = context.cached(("running", self.label, i), lambda: (depth > i).to(x.device))
            with context.running(running):
                y = self.blocks[i](x)
            if y.shape != x.shape:
                raise ValueError(
                    f"per-example mode: block {i} of DepthChoice {self.label!r} maps shape {tuple(x.shape)} to "
                    f"{tuple(y.shape)}, but examples of different depths share a batch only when every exit has one shape"
                )
            x = torch.where(running.view(-1, *([1] * (x.dim() - 1))), y, x)
        return x

    def forward(self, x: Tensor) -> Tensor:
        indices = self.choice.example_indices()
        if indices is not None and self.choice.uses_static_shapes() and rows_separable(self.blocks[min(self.choice.values):]):
            if x.shape[0] != indices.shape[0]:
                raise ValueError(f"per-example mode: input batch size {x.shape[0]} != {indices.shape[0]} active architectures")
            return self._forward_static(x, indices)
        uniform = None if indices is None else self.choice.uniform_index()
        if indices is None or uniform is not None:
            depth = self.choice.value if indices is None else self.choice.values[uniform]
            for block in self.blocks[:depth]:
                x = block(x)
            return x
        if x.shape[0] != indices.shape[0]:
            raise ValueError(f"per-example mode: input batch size {x.shape[0]} != {indices.shape[0]} active architectures")
        depth = self.choice.values_tensor(indices.device).index_select(0, indices)  # (n,) depth of each example
        bounds = self.choice.index_bounds()  # known on the host: no GPU read for the shallowest and deepest
        shallowest, deepest = (self.choice.values[b] for b in bounds) if bounds else (0, int(depth.max()))
        context = self.choice._context
        everyone = torch.arange(x.shape[0], device=indices.device)
        rows = None  # positions of the rows still running; None while that is all of them (no routing)
        outputs, output_rows = [], []
        for i in range(deepest):
            if i >= shallowest:  # rows of depth i stop before block i
                done = (depth if rows is None else depth.index_select(0, rows)) == i
                if bool(done.any()):
                    running = everyone if rows is None else rows
                    outputs.append(x[done.to(x.device)])
                    output_rows.append(running[done])
                    rows, x = running[~done], x[(~done).to(x.device)]
            if rows is None:
                x = self.blocks[i](x)
            else:
                with context.route(rows):
                    x = self.blocks[i](x)
        outputs.append(x)
        output_rows.append(everyone if rows is None else rows)
        return reassemble(outputs, torch.cat(output_rows))

    def freeze(self, arch: dict[str, Any], export_child) -> nn.Module:
        depth = arch[self.label]
        if depth == 0:
            return nn.Identity()
        return nn.Sequential(*[export_child(b) for b in self.blocks[:depth]])
