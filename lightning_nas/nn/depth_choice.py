"""``DepthChoice``: a block sequence whose output is taken after the chosen number of blocks."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from lightning_nas.nn.choice import Choice, Mutable
from lightning_nas.nn.routing import reassemble

__all__ = ["DepthChoice"]


class DepthChoice(Mutable):
    """Runs the first ``depth`` blocks of a sequence (BINAS's "sink point").

    Blocks past the chosen depth are not run. In per-example mode each block runs only on the
    examples that reach it; all exit points must then produce the same shape.

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

    @property
    def label(self) -> str | None:
        return self.choice.label

    def forward(self, x: Tensor) -> Tensor:
        indices = self.choice.example_indices()
        uniform = None if indices is None else self.choice.uniform_index()
        if indices is None or uniform is not None:
            depth = self.choice.value if indices is None else self.choice.values[uniform]
            for block in self.blocks[:depth]:
                x = block(x)
            return x
        if x.shape[0] != indices.shape[0]:
            raise ValueError(f"per-example mode: input batch size {x.shape[0]} != {indices.shape[0]} active architectures")
        table = torch.tensor(self.choice.values, device=indices.device)
        depth = table.index_select(0, indices)  # (n,) depth of each example
        context = self.choice._context
        rows = torch.arange(x.shape[0], device=indices.device)  # rows still running, as positions
        outputs, output_rows = [], []
        done = depth == 0
        if bool(done.any()):
            outputs.append(x[done.to(x.device)])
            output_rows.append(rows[done])
            rows, x = rows[~done], x[(~done).to(x.device)]
        for i in range(int(depth.max())):
            with context.route(rows):
                x = self.blocks[i](x)
            done = depth.index_select(0, rows) == i + 1
            if bool(done.any()):
                outputs.append(x[done.to(x.device)])
                output_rows.append(rows[done])
                rows, x = rows[~done], x[(~done).to(x.device)]
        return reassemble(outputs, torch.cat(output_rows))

    def freeze(self, arch: dict[str, Any], export_child) -> nn.Module:
        depth = arch[self.label]
        if depth == 0:
            return nn.Identity()
        return nn.Sequential(*[export_child(b) for b in self.blocks[:depth]])
