"""Label-keyed categorical decisions and the routing context that activates them.

A :class:`Choice` is a parameter-free ``nn.Module`` so that a :class:`~lightning_nas.Supernet`
finds every decision by walking the module tree, wherever the user stored it. Two choices with
the same label are one decision. The active value of every choice lives in one shared
:class:`ArchContext` owned by the supernet:

* *scalar mode*: one architecture for the whole batch (``context.values[label] -> value``);
* *per-example mode*: one architecture per example (``context.indices[label] -> LongTensor (B,)``
  of candidate indices). Mutables that route a subset of the batch to a sub-module narrow
  ``context.rows`` so that nested decisions read the indices of exactly the rows they see.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import numbers
import weakref
from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn

__all__ = ["ArchContext", "Choice", "Mutable", "candidate_key", "canonical_value", "non_finite_part", "rows_separable"]


def canonical_value(value: Any) -> Any:
    """Hashable canonical form of a candidate value: lists (as JSON gives them back) become tuples."""
    if isinstance(value, list):
        return tuple(canonical_value(v) for v in value)
    return value


class _Bool:
    """Lookup key of a bool candidate: Python has ``True == 1``, but a decision must not take ``True`` for ``1``."""

    __slots__ = ("value",)

    def __init__(self, value: bool) -> None:
        self.value = value

    def __eq__(self, other: object) -> bool:
        return type(other) is _Bool and other.value == self.value

    def __hash__(self) -> int:
        return hash((_Bool, self.value))


def candidate_key(value: Any) -> Any:
    """The key candidates are looked up by: the canonical value, with bools kept apart from ints."""
    value = canonical_value(value)
    if isinstance(value, tuple):
        return tuple(candidate_key(v) for v in value)
    if isinstance(value, (bool, np.bool_)):
        return _Bool(bool(value))
    return value


def non_finite_part(value: Any) -> Any:
    """The first NaN or infinite number in a (nested) candidate value, or ``None``."""
    if isinstance(value, (list, tuple)):
        return next((bad for v in value if (bad := non_finite_part(v)) is not None), None)
    if isinstance(value, numbers.Real) and not isinstance(value, numbers.Integral) and not math.isfinite(value):
        return value
    return None


def _json_value(value: Any) -> Any:
    """JSON form of a canonical value: tuples become lists."""
    if isinstance(value, tuple):
        return [_json_value(v) for v in value]
    return value


# Scope tokens of ArchContext caches: a fresh one each time the visible or running rows change.
_SCOPES = itertools.count(1)


def _compiling() -> bool:
    return torch.compiler.is_compiling()


class ArchContext:
    """The active architecture of one supernet, shared by all of its choices.

    Attributes:
        values: scalar mode, ``{label: value}``; ``None`` in per-example mode.
        indices: per-example mode, ``{label: LongTensor (B,)}`` of candidate indices; else ``None``.
        rows: positions (into the full batch) of the examples the running sub-module sees, or
            ``None`` for the whole batch.
        bounds: per-example mode, ``{label: (lowest, highest)}`` candidate index over the whole batch,
            read once on the host at activation so that mutables need not read them back from a GPU
            (a synchronisation each); ``None`` when unknown.
        static_shapes: per-example mode computes every tensor at the shape the candidate lists fix
            (largest widths and kernels, every optional block on every row, rows told apart by
            masks), so that no value is read back on the host, one compiled graph serves every
            batch and the step can be captured as a CUDA graph. ``False``: rows are grouped by
            candidate (less arithmetic, data-dependent shapes, host reads). See
            :attr:`~lightning_nas.Supernet.static_shapes`. With ``static_shapes_when_compiled``
            (the supernet's ``"auto"``) it is also ``True`` while ``torch.compile`` traces, so that
            a compiled step gets one graph without breaks wherever it runs.
        static_shapes_when_compiled: see ``static_shapes``.
        alive: static shapes only: ``BoolTensor (n,)``, which of the visible rows are still running
            (a :class:`~lightning_nas.nn.DepthChoice` runs its optional blocks on every row and
            keeps the output of the rows that go that deep); ``None`` when all are. Modules whose
            output couples rows (batch statistics) take them over the running rows only.
    """

    # Class-level defaults: contexts pickled before these attributes existed still load.
    _static_shapes: bool = True
    static_shapes_when_compiled: bool = False
    alive: Tensor | None = None

    @property
    def static_shapes(self) -> bool:
        return self._static_shapes or (self.static_shapes_when_compiled and _compiling())

    @static_shapes.setter
    def static_shapes(self, value: bool) -> None:
        self._static_shapes = value

    def __init__(self) -> None:
        self.values: dict[str, Any] | None = {}
        self.indices: dict[str, Tensor] | None = None
        self.rows: Tensor | None = None
        self.bounds: dict[str, tuple[int, int]] | None = None
        self.static_shapes = True
        self.alive = None
        # The supernet this context belongs to (a weak reference: the supernet holds the context).
        self.owner: weakref.ref | None = None
        self.clear_cache()

    def __setstate__(self, state: dict[str, Any]) -> None:
        if "static_shapes" in state:  # pickled when it was a plain attribute
            state = {**state, "_static_shapes": state["static_shapes"]}
            del state["static_shapes"]
        self.__dict__.update(state)

    def __getstate__(self) -> dict[str, Any]:
        # A weak reference cannot be pickled, and a copy belongs to no supernet until one adopts it.
        return {**self.__dict__, "owner": None, "_cache": {}}

    def clear_cache(self) -> None:
        """Forget the tensors derived from the active indices (done at every activation)."""
        self._cache: dict[tuple, Any] = {}
        self._scope = 0

    def cached(self, key: tuple, make: Callable[[], Any]) -> Any:
        """``make()``, computed once per activation and set of visible and running rows.

        Masks and per-row sizes derived from the indices are needed by several layers of a step
        (every layer of one width decision); each would cost operator calls (GPU launches) again.
        Under ``torch.compile`` nothing is cached: the compiler fuses these calls anyway.
        """
        if _compiling():
            return make()
        cache = self.__dict__.get("_cache")
        if cache is None:
            self.clear_cache()
            cache = self._cache
        key = (getattr(self, "_scope", 0), *key)
        if key not in cache:
            cache[key] = make()
        return cache[key]

    @contextlib.contextmanager
    def _scoped(self, rows: Tensor | None, alive: Tensor | None) -> Iterator[None]:
        previous = (self.rows, self.alive, getattr(self, "_scope", 0))
        self.rows, self.alive = rows, alive
        if not _compiling():
            self._scope = next(_SCOPES)
        try:
            yield
        finally:
            self.rows, self.alive = previous[:2]
            if not _compiling():
                self._scope = previous[2]

    @contextlib.contextmanager
    def route(self, positions: Tensor) -> Iterator[None]:
        """Narrow the visible rows to ``positions`` (indices into the rows visible now)."""
        previous = self.rows
        rows = positions if previous is None else previous.index_select(0, positions.to(previous.device))
        alive = None if self.alive is None else self.alive.index_select(0, positions.to(self.alive.device))
        with self._scoped(rows, alive):
            yield

    @contextlib.contextmanager
    def running(self, alive: Tensor) -> Iterator[None]:
        """Mark only the visible rows where ``alive`` (``BoolTensor (n,)``) is true as running."""
        with self._scoped(self.rows, alive if self.alive is None else self.alive & alive):
            yield


class Choice(nn.Module):
    """A categorical decision ``label ∈ values``.

    Pass a ``Choice`` wherever a mutable accepts one (a width, a kernel size) or keep it as an
    attribute and read :attr:`value` in ``forward``. Every ``Choice`` with the same label is the
    same decision; their candidate lists must then be identical.

    Args:
        values: the candidate values (ints, floats, strings, bools or tuples of those), at least one,
            no duplicates.
        label: the decision's name in architecture dicts. ``None`` lets the supernet name it after
            the first module path where it is found.
        default: the value active before any activation (default: the first value).
    """

    def __init__(self, values: Sequence[Any], label: str | None = None, *, default: Any = None) -> None:
        super().__init__()
        if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
            raise ValueError(f"`values` must be a list or tuple of candidates, got {values!r}")
        canon = [canonical_value(v) for v in values]
        if not canon:
            raise ValueError(f"`values` of choice {label!r} must not be empty")
        for v in canon:
            if not isinstance(v, Hashable):
                raise ValueError(f"candidate {v!r} of choice {label!r} is not hashable; use ints, floats, strings or tuples")
            bad = non_finite_part(v)
            if bad is not None:
                # NaN equals nothing, so a NaN candidate could never be chosen; infinities are not JSON.
                raise ValueError(f"candidate {v!r} of choice {label!r} is not finite ({bad!r}); candidates must be finite numbers, strings, bools or tuples of those")
        if len(set(canon)) != len(canon):
            raise ValueError(f"`values` of choice {label!r} has duplicates (1, 1.0 and True count as equal): {list(values)!r}")
        if label is not None and (not isinstance(label, str) or not label):
            raise ValueError(f"`label` must be a non-empty string or None, got {label!r}")
        self.values: tuple[Any, ...] = tuple(canon)
        self.label = label
        self._position = {candidate_key(v): i for i, v in enumerate(self.values)}
        if default is None:
            self.default = canon[0]
        else:
            try:
                self.default = self.values[self._position[candidate_key(default)]]
            except (KeyError, TypeError):
                raise ValueError(f"`default` of choice {label!r} must be one of {list(map(_json_value, self.values))!r}, got {default!r}") from None
        # The context is shared with the supernet; keep it out of the module tree.
        object.__setattr__(self, "_context", None)

    # -- reading the active value -------------------------------------------------------------
    def attach(self, context: ArchContext | None) -> None:
        """Bind this choice to a supernet's context (done by :class:`~lightning_nas.Supernet`)."""
        object.__setattr__(self, "_context", context)

    def index_of(self, value: Any) -> int:
        """Position of ``value`` among the candidates. Raises ``ValueError`` naming the allowed values."""
        try:
            return self._position[candidate_key(value)]
        except (KeyError, TypeError):
            raise ValueError(
                f"{value!r} is not a candidate of choice {self.label!r}; allowed values: {list(map(_json_value, self.values))!r}"
            ) from None

    def example_indices(self) -> Tensor | None:
        """Per-example candidate indices of the visible rows, ``LongTensor (n,)``; ``None`` in scalar mode."""
        ctx = self._context
        if ctx is None or ctx.indices is None:
            return None
        idx = ctx.indices[self.label]
        if ctx.rows is not None:
            rows = ctx.rows
            idx = ctx.cached(("indices", self.label), lambda: idx.index_select(0, rows.to(idx.device)))
        return idx

    def uses_static_shapes(self) -> bool:
        """Whether per-example mode is active with static shapes (see :class:`ArchContext`)."""
        ctx = self._context
        return ctx is not None and ctx.indices is not None and ctx.static_shapes

    @property
    def value(self) -> Any:
        """The active value. In per-example mode, the common value of the visible rows.

        Raises:
            RuntimeError: in per-example mode when the visible rows disagree.
        """
        ctx = self._context
        if ctx is None:
            return self.default
        if ctx.indices is None:
            return ctx.values.get(self.label, self.default)
        idx = self.example_indices()
        lo, hi = int(idx.min()), int(idx.max())
        if lo != hi:
            raise RuntimeError(
                f"choice {self.label!r} differs between the examples of this batch (per-example mode); "
                "read `example_indices()` or use a mutable module that routes examples"
            )
        return self.values[lo]

    def uniform_index(self) -> int | None:
        """Index of the active value when all visible rows agree (or in scalar mode), else ``None``."""
        ctx = self._context
        if ctx is None or ctx.indices is None:
            return self.index_of(self.value)
        bounds = self.index_bounds()
        if bounds is None:
            idx = self.example_indices()
            if idx.numel() == 0:
                return 0
            bounds = tuple(int(v) for v in torch.aminmax(idx))
        lo, hi = bounds
        return lo if lo == hi else None

    def index_bounds(self) -> tuple[int, int] | None:
        """``(lowest, highest)`` candidate index of the visible rows in per-example mode, known on the
        host without reading the indices (a GPU sync); ``None`` in scalar mode or when not known (rows
        routed to a sub-module, or indices activated without bounds)."""
        ctx = self._context
        if ctx is None or ctx.indices is None or ctx.rows is not None or ctx.bounds is None:
            return None
        return ctx.bounds.get(self.label)

    def values_tensor(self, device: torch.device) -> Tensor:
        """The (numeric) candidate values as a ``LongTensor (n_values,)`` on ``device``, cached."""
        cache = self.__dict__.setdefault("_values_tensors", {})
        if device not in cache:
            cache[device] = torch.tensor(self.values, device=device)
        return cache[device]

    def forward(self) -> Any:  # pragma: no cover - a Choice is not called; it is read
        return self.value

    def extra_repr(self) -> str:
        return f"label={self.label!r}, values={list(self.values)!r}"


class Mutable(nn.Module):
    """Base class of modules whose computation depends on one or more :class:`Choice`.

    Subclasses implement :meth:`freeze`, returning a static module (no lightning_nas mutable
    inside) equal to this module under ``arch``.

    Attributes:
        masks_stopped_rows: ``True`` when a row's output never depends on the rows that the
            context marks as stopped (:attr:`ArchContext.alive`): per-row computations, and batch
            statistics over the running rows only. A :class:`~lightning_nas.nn.DepthChoice` with
            static shapes runs its optional blocks on every row only when all the mutables inside
            declare this (and no plain BatchNorm takes batch statistics there); otherwise it
            groups the rows that go deep enough (data-dependent shapes, host reads).
    """

    masks_stopped_rows: ClassVar[bool] = False

    def norms_masking_stopped_rows(self) -> tuple[nn.Module, ...]:
        """BatchNorm sub-modules this mutable applies itself with the stopped rows masked out (never
        called as modules), so that a :class:`~lightning_nas.nn.DepthChoice` need not group rows
        for them. None by default."""
        return ()

    def freeze(self, arch: dict[str, Any], export_child) -> nn.Module:
        """Static module computing what this module computes under ``arch``.

        Args:
            arch: a complete, validated architecture dict.
            export_child: call it on a chosen sub-module to get its own exported copy.
        """
        raise NotImplementedError


def rows_separable(modules: Iterable[nn.Module]) -> bool:
    """Whether running rows through ``modules`` with some rows marked as stopped
    (:attr:`ArchContext.alive`) leaves the other rows' outputs as they are: every mutable inside
    masks stopped rows (:attr:`Mutable.masks_stopped_rows`) and no plain BatchNorm takes batch
    statistics over all rows there (norms a mutable applies itself with the stopped rows masked,
    :meth:`Mutable.norms_masking_stopped_rows`, do not count). What static shapes need to run a
    block or candidate on rows that do not use it, instead of grouping the rows that do."""
    from lightning_nas.nn.grouped_norm import GroupedBatchNorm2d  # (it imports this module)

    for module in modules:
        owned = {id(norm) for m in module.modules() if isinstance(m, Mutable) and m.masks_stopped_rows
                 for norm in m.norms_masking_stopped_rows()}
        for m in module.modules():
            if isinstance(m, Mutable):
                if not m.masks_stopped_rows:
                    return False
            elif (isinstance(m, (nn.modules.batchnorm._BatchNorm, GroupedBatchNorm2d)) and id(m) not in owned
                  and (m.training or not m.track_running_stats)):
                return False
    return True


def value_in(choice_or_int: Choice | Any, arch: dict[str, Any]) -> Any:
    """The value of a ``Choice`` (looked up in ``arch``) or a constant given as is."""
    if isinstance(choice_or_int, Choice):
        return canonical_value(arch[choice_or_int.label]) if arch is not None else choice_or_int.value
    return choice_or_int


def largest(choice_or_int: Choice | int) -> int:
    """The largest candidate of a numeric ``Choice`` (sizes parameters), or the int itself."""
    if isinstance(choice_or_int, Choice):
        return max(choice_or_int.values)
    return choice_or_int
