"""``OpChoice``: one of several candidate modules."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from torch import Tensor, nn

from lightning_nas.nn.choice import Choice, Mutable, rows_separable
from lightning_nas.nn.routing import check_batch_sizes, pad_widths, route_examples, select_rows

__all__ = ["OpChoice"]

Relaxation = Callable[["OpChoice", tuple], Tensor]


class OpChoice(Mutable):
    """Runs one of several candidate modules.

    With a list of candidates the decision's value is the index; with a dict it is the key. In
    per-example mode each example is routed through its own candidate (one gather per used
    candidate, never every candidate on every example). With static shapes
    (:attr:`~lightning_nas.Supernet.static_shapes`) and candidates that compute each row on its own
    (no plain BatchNorm taking batch statistics, every mutable inside honouring stopped rows, as
    :class:`~lightning_nas.nn.DepthChoice` requires of its blocks: e.g. squeeze-and-excitation on
    or off) every candidate runs on every row and each row keeps its own candidate's output, the
    other rows marked as stopped inside: fixed shapes, no host reads, one compiled graph.

    Continuous relaxations (DARTS's softmax(α) mixing, DrNAS's Dirichlet samples) plug in through
    :meth:`set_relaxation` without subclassing: a relaxation is a callable
    ``relaxation(op_choice, inputs) -> Tensor`` that mixes :meth:`candidate_forward` outputs. It is
    kept outside the module tree, so its parameters never reach the user's optimiser.

    Args:
        candidates: ``list`` or ``dict`` (string keys) of modules taking the same inputs.
        label: the decision's label (``None``: named by the supernet after the module path).
        default: the candidate active by default (default: the first).
    """

    def __init__(
        self,
        candidates: Sequence[nn.Module] | Mapping[str, nn.Module],
        label: str | None = None,
        *,
        default: Any = None,
    ) -> None:
        super().__init__()
        # Checked before nn.ModuleList/ModuleDict, whose own error does not name the OpChoice.
        found = list(candidates.values()) if isinstance(candidates, Mapping) else candidates
        if isinstance(found, Sequence) and not isinstance(found, (str, bytes)):
            for i, module in enumerate(found):
                if not isinstance(module, nn.Module):
                    raise ValueError(f"every candidate of OpChoice {label!r} must be an nn.Module, got "
                                     f"{type(module).__name__} ({module!r}) at position {i}")
        if isinstance(candidates, Mapping):
            keys = list(candidates)
            if not all(isinstance(k, str) for k in keys):
                raise ValueError(f"`candidates` dict keys must be strings, got {keys!r}")
            self.candidates = nn.ModuleDict(candidates)
        elif isinstance(candidates, Sequence) and not isinstance(candidates, (str, bytes)):
            keys = list(range(len(candidates)))
            self.candidates = nn.ModuleList(candidates)
        else:
            raise ValueError(f"`candidates` must be a list or dict of nn.Module, got {type(candidates).__name__}")
        if not keys:
            raise ValueError(f"`candidates` of OpChoice {label!r} must not be empty")
        self.keys = keys
        self.choice = Choice(keys, label, default=default)
        object.__setattr__(self, "_relaxation", None)

    masks_stopped_rows = True  # routing narrows the stopped-rows mark with the rows

    @property
    def label(self) -> str | None:
        return self.choice.label

    def __len__(self) -> int:
        return len(self.keys)

    def candidate(self, key: Any) -> nn.Module:
        """The candidate module for a value (index or key)."""
        return self.candidates[self.keys[self.choice.index_of(key)]]

    def candidate_forward(self, key: Any, *inputs: Any) -> Any:
        """Run one candidate on ``inputs`` (for relaxations)."""
        return self.candidate(key)(*inputs)

    def set_relaxation(self, relaxation: Relaxation | None) -> None:
        """Install (or with ``None`` remove) a continuous relaxation used instead of the discrete choice."""
        if relaxation is not None and not callable(relaxation):
            raise ValueError(f"`relaxation` must be callable(op_choice, inputs) or None, got {relaxation!r}")
        object.__setattr__(self, "_relaxation", relaxation)

    @property
    def relaxation(self) -> Relaxation | None:
        return self._relaxation

    def forward(self, *inputs: Any) -> Any:
        if self._relaxation is not None:
            return self._relaxation(self, inputs)
        indices = self.choice.example_indices()
        if indices is None:
            return self.candidate(self.choice.value)(*inputs)
        if self.choice.uses_static_shapes() and rows_separable(self.candidates.children()):
            return self._forward_static(indices, inputs)
        return route_examples(
            self.choice._context, indices, len(self.keys), lambda i, *xs: self.candidates[self.keys[i]](*xs), inputs
        )

    def _forward_static(self, indices: Tensor, inputs: tuple) -> Tensor:
        """Every candidate on every row (rows of the other candidates marked as stopped while it
        runs); each row keeps its own candidate's output (channel widths zero-padded to the widest,
        as routing does)."""
        check_batch_sizes(inputs, indices)
        context = self.choice._context
        outputs, picks = [], []
        for i, key in enumerate(self.keys):
            picked = context.cached(("op_rows", self.label, i), lambda i=i: indices == i)
            with context.running(picked):
                outputs.append(self.candidates[key](*inputs))
            picks.append(picked)
        if any(not isinstance(o, Tensor) for o in outputs):
            raise TypeError(f"per-example mode: every candidate of OpChoice {self.label!r} must return one batch-first Tensor")
        return select_rows(pad_widths(outputs), picks)

    def freeze(self, arch: dict[str, Any], export_child) -> nn.Module:
        return export_child(self.candidate(arch[self.label]))
