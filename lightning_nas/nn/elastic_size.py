"""Resolving an elastic size (a width given as an int or a ``Choice``) for the rows being run."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from lightning_nas.nn.choice import Choice

__all__ = [
    "active_size", "cached_active_size", "check_fixed", "check_size_spec", "fit_channels", "fit_features", "prefix", "row_mask",
    "rows_mask", "rows_scaled_mask", "size_mask", "width_mask",
]


def check_fixed(layer: str, name: str, value: Any, kind: str, choosable: str) -> None:
    """Validate an argument that cannot be a decision.

    Args:
        layer: the layer's class name, for the message.
        name: the argument.
        value: its value.
        kind: ``"bool"``, ``"int>=0"``, ``"int>=1"``, ``"pair>=1"`` (an int or a pair of ints >= 1),
            ``"eps"`` (a finite float > 0) or ``"momentum"`` (``None`` or a float in [0, 1]).
        choosable: which arguments of the layer may be a ``Choice``, for the message.
    """
    if isinstance(value, Choice):
        raise ValueError(f"{layer}: `{name}` cannot be a Choice (got {value!r}); only {choosable} may be")
    is_int = lambda v: isinstance(v, int) and not isinstance(v, bool)  # noqa: E731
    if kind == "bool":
        ok, allowed = isinstance(value, bool), "a bool"
    elif kind in ("int>=0", "int>=1"):
        low = int(kind[-1])
        ok, allowed = is_int(value) and value >= low, f"an int >= {low}"
    elif kind == "pair>=1":
        pair = value if isinstance(value, tuple) else (value, value)
        ok, allowed = len(pair) == 2 and all(is_int(v) and v >= 1 for v in pair), "an int >= 1 or a pair of them"
    elif kind == "eps":
        ok, allowed = isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value < float("inf"), "a finite float > 0"
    elif kind == "momentum":
        ok = value is None or (isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value <= 1)
        allowed = "None (cumulative average) or a float in [0, 1]"
    else:  # pragma: no cover - a programming error
        raise AssertionError(kind)
    if not ok:
        raise ValueError(f"{layer}: `{name}` must be {allowed}, got {value!r}")


def check_size_spec(name: str, spec: Any, *, odd: bool = False) -> None:
    """Validate a size argument: a positive int or a ``Choice`` of positive ints (odd if ``odd``)."""
    values = spec.values if isinstance(spec, Choice) else (spec,)
    for v in values:
        if not isinstance(v, int) or isinstance(v, bool) or v < 1 or (odd and v % 2 == 0):
            kind = "positive odd int" if odd else "positive int"
            raise ValueError(f"`{name}` must be a {kind} or a Choice of them, got {v!r} in {spec!r}")


def active_size(spec: int | Choice, device: torch.device) -> tuple[int, Tensor | None]:
    """The size to compute at, and the per-example sizes when they differ.

    Args:
        spec: a constant size or a ``Choice`` of sizes.
        device: where the per-example sizes should live.

    Returns:
        ``(size, per_example)``: in scalar mode (or when all rows agree) the active size and ``None``;
        otherwise the largest size among the rows and a ``LongTensor (n,)`` of each visible row's
        size. Rows routed to a sub-module are computed at the whole batch's largest size. With
        static shapes (:attr:`~lightning_nas.nn.ArchContext.static_shapes`) the size is always the
        largest candidate and the per-example sizes are always given (for a choice of several).
    """
    if not isinstance(spec, Choice):
        return spec, None
    indices = spec.example_indices()
    if indices is None:
        return spec.value, None
    context = spec._context
    if context.static_shapes:
        # Shapes from the candidate list alone: nothing read back, one compiled graph for every batch.
        if len(spec.values) == 1:
            return spec.values[0], None
        return max(spec.values), _sizes(spec, indices, device)
    sizes = spec.values_tensor(indices.device).index_select(0, indices)
    if context.rows is not None and context.bounds is not None and spec.label in context.bounds:
        # Rows routed to a sub-module (a DepthChoice's deeper blocks, an OpChoice candidate): compute
        # at the whole batch's largest size, the width this decision's tensors have outside, so that
        # a residual sum inside (x + f(x)) meets them at one width. A row's extra channels stay zero,
        # so this is exact; the bounds were read on the host at activation, so it reads nothing back.
        lo, hi = context.bounds[spec.label]
        if lo == hi:
            return spec.values[lo], None
        return max(spec.values[lo : hi + 1]), sizes.to(device)
    bounds = spec.index_bounds()  # read on the host at activation: no GPU sync
    if bounds is not None:
        ends, between = (spec.values[bounds[0]], spec.values[bounds[1]]), spec.values[bounds[0] : bounds[1] + 1]
        if bounds[0] == bounds[1]:
            return spec.values[bounds[0]], None
        if max(between) in ends:  # the largest size lies at a present index (always for sorted candidates)
            return max(between), sizes.to(device)
    lo, hi = torch.aminmax(sizes)
    lo, hi = int(lo), int(hi)
    if lo == hi:
        return lo, None
    return hi, sizes.to(device)


def _sizes(spec: Choice, indices: Tensor, device: torch.device) -> Tensor:
    """``LongTensor (n,)``: each visible row's size under ``spec`` (cached for the activation)."""
    return spec._context.cached(
        ("sizes", spec.label, device), lambda: spec.values_tensor(indices.device).index_select(0, indices).to(device)
    )


def width_mask(spec: int | Choice, size: int, dtype: torch.dtype, device: torch.device, *, spatial: int = 0) -> Tensor | None:
    """``(n, size)`` 0/1 mask of the channels each visible row uses under ``spec``, or ``None`` when
    every row uses all ``size`` channels. Cached for the activation (one mask serves every layer of
    a width decision). ``spatial=k`` gives it as ``(n, size, 1, ..., 1)`` with ``k`` trailing ones,
    to broadcast over images (``k=2``), also cached: a view is an operator call too."""
    size_now, per_example = active_size(spec, device)
    if per_example is None:
        if size > size_now:
            raise ValueError(f"width_mask: {size} channels asked, but the active width is {size_now}")
        return None
    cached = spec._context.cached
    mask = cached(("width_mask", spec.label, size, dtype, device), lambda: _prefix_masks(spec, size, dtype, device))
    return mask if not spatial else cached(("width_mask", spec.label, size, dtype, device, spatial), lambda: _spatial(mask, spatial))


def _prefix_masks(spec: Choice, size: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """``(n, size)``: :func:`size_mask` of the visible rows' sizes under ``spec`` (per-example mode),
    as one ``index_select`` of a ``(n_values, size)`` table of each candidate's prefix mask, built
    once per choice, size, dtype and device (``size_mask`` itself costs four calls per mask)."""
    tables = spec.__dict__.setdefault("_prefix_mask_tables", {})
    key = (size, dtype, device)
    if key not in tables:
        tables[key] = size_mask(spec.values_tensor(device), size, dtype)
    return tables[key].index_select(0, spec.example_indices().to(device))


def _spatial(mask: Tensor, spatial: int) -> Tensor:
    return mask.view(*mask.shape, *([1] * spatial))


def row_mask(spec: int | Choice, size: int, dtype: torch.dtype, device: torch.device, context, *, spatial: int = 0) -> Tensor | None:
    """``(n, size)`` 0/1 mask of the channels each visible row uses (:func:`width_mask`), with the
    rows that have stopped (:attr:`~lightning_nas.nn.ArchContext.alive`) all zero; ``None`` when
    every row uses all channels and is running. ``context`` is the supernet's context (or ``None``);
    ``spatial`` as in :func:`width_mask`."""
    alive = None if context is None else context.alive
    if alive is None:
        return width_mask(spec, size, dtype, device, spatial=spatial)
    widths = width_mask(spec, size, dtype, device)
    label = spec.label if isinstance(spec, Choice) else None

    def make() -> Tensor:
        # The running rows as a column, once per set of running rows for all the widths.
        running = context.cached(("running_column", dtype, device), lambda: alive.to(device=device, dtype=dtype)[:, None])
        return running.expand(-1, size) if widths is None else widths * running

    mask = context.cached(("row_mask", label, size, dtype, device), make)
    return mask if not spatial else context.cached(("row_mask", label, size, dtype, device, spatial), lambda: _spatial(mask, spatial))


def prefix(t: Tensor | None, *sizes: int) -> Tensor | None:
    """The leading ``sizes[d]`` entries of ``t`` along its first ``len(sizes)`` dimensions.

    Returns ``t`` itself when nothing is cut: a no-op slice still costs a copy in backward.
    """
    if t is None or all(n == t.shape[d] for d, n in enumerate(sizes)):
        return t
    return t[tuple(slice(0, n) for n in sizes)]


def size_mask(per_example: Tensor, size: int, dtype: torch.dtype) -> Tensor:
    """``(n, size)`` mask: 1 for the first ``per_example[i]`` channels of row ``i``, 0 after."""
    return (torch.arange(size, device=per_example.device) < per_example[:, None]).to(dtype)


def fit_channels(x: Tensor, spec: int | Choice, dim: int, layer: str, *, mask: bool = True) -> Tensor:
    """Check the input width of an elastic layer against ``spec`` and zero what a row does not use.

    In per-example mode an input may be wider than the widest of the rows seeing it (it was
    computed for more rows upstream); it is narrowed, and channels past a row's own width are
    zeroed, so each row gets exactly what its own subnet computes.

    Args:
        x: the input, channels in dimension ``dim``.
        spec: the layer's input width (int or ``Choice``).
        dim: the channel dimension (1 for ``(B, C, H, W)``, -1 for ``(B, ..., C)``).
        layer: the layer's name for error messages.
        mask: zero the channels past each row's width; ``False`` only narrows (for a layer that
            masks them itself, in its weights or its statistics).
    """
    size, per_example = active_size(spec, x.device)
    width = x.shape[dim]
    if width == size and per_example is None:
        return x
    routed = isinstance(spec, Choice) and spec.example_indices() is not None
    if routed and per_example is not None and width < size and spec._context.static_shapes:
        # Static shapes compute at the largest candidate; a producer that computed at the batch's
        # widest row instead (channels past it are zero for every row) is taken at its width.
        size = width
    if not routed or not size <= width <= max(spec.values):
        raise ValueError(
            f"{layer} expected {size} input channels in dimension {dim} for the active architecture, got shape "
            f"{tuple(x.shape)}; pass the Choice that sets the previous layer's width as its input width"
        )
    if width != size:
        x = x.narrow(dim, 0, size)
    if per_example is None or not mask:
        return x
    if dim == 1:
        return x * width_mask(spec, size, x.dtype, x.device, spatial=x.dim() - 2)
    rows = width_mask(spec, size, x.dtype, x.device)
    shape = [1] * x.dim()
    shape[0], shape[dim] = rows.shape
    return x * rows.view(shape)


# -- per-example masks with few operator calls (shared by the elastic transformer modules) ------------
def cached_active_size(spec: int | Choice, device: torch.device) -> tuple[int, Tensor | None]:
    """:func:`active_size`, computed once per activation and set of
    visible rows: a width read by many layers (the residual stream's) costs its per-row sizes once."""
    if not isinstance(spec, Choice) or spec.example_indices() is None:
        return active_size(spec, device)
    return spec._context.cached(("active_size", spec.label, device), lambda: active_size(spec, device))


def rows_mask(owner: nn.Module, spec: Choice, size: int, dtype: torch.dtype, device: torch.device, shape: tuple[int, ...],
              scale: bool = False) -> Tensor:
    """The visible rows' 0/1 masks of the first ``size`` entries of ``spec`` (row ``i`` keeps its own
    value's prefix), viewed as ``shape`` (``-1`` for the rows, ``size`` where the entries go,
    ``1`` elsewhere); ``scale``: each row's mask times ``1 / sqrt(its value)``.

    One ``index_select`` of a ``(candidates, size)`` table (built once per module, size, dtype and
    device) and one ``view``, cached per activation and set of visible rows; the plain
    ``size_mask`` costs an ``index_select``, ``arange``, a comparison, a cast and a view per layer.
    Only for per-example mode (``spec.example_indices()`` not ``None``).
    """
    if scale:
        return rows_scaled_mask(owner, spec, size, dtype, device, shape, "rsqrt", lambda v: v ** -0.5)
    return rows_scaled_mask(owner, spec, size, dtype, device, shape, "mask", lambda v: 1.0)


def fit_features(owner: nn.Module, x: Tensor, spec: int | Choice, layer: str, *, mask: bool = True) -> Tensor:
    """:func:`fit_channels` on the last dimension, with the mask of
    :func:`rows_mask` (the common per-example case: the input at the active width). ``mask=False``
    when the producer already zeroed each row's features past its width (only narrows)."""
    size, per_example = cached_active_size(spec, x.device)
    if per_example is None or x.shape[-1] != size:
        return fit_channels(x, spec, -1, layer, mask=mask)  # scalar mode, or a narrowing (and its checks)
    if not mask:
        return x
    return x * rows_mask(owner, spec, size, x.dtype, x.device, (-1, *([1] * (x.dim() - 2)), size))


def rows_scaled_mask(owner: nn.Module, spec: Choice, size: int, dtype: torch.dtype, device: torch.device,
                     shape: tuple[int, ...], name: str, factor: Callable[[int], float]) -> Tensor:
    """:func:`rows_mask` with row ``i``'s mask times ``factor(its value)`` (``name`` tells factors
    apart in the caches): e.g. ``1 / value`` makes a row's mean over its own prefix one matrix
    product, so that a layer reads an input whose entries past each row's width are not zero
    without masking it first.

    Returns the ``(n, ...)`` tensor viewed as ``shape`` (``-1`` for the rows, ``size`` where the
    entries go, ``1`` elsewhere), cached per activation and set of visible rows; the per-candidate
    table is built once per module, size, dtype, device and ``name``.
    """
    def make() -> Tensor:
        tables = owner.__dict__.setdefault("_mask_tables", {})
        key = (spec.label, size, dtype, device, name)
        if key not in tables:
            values = torch.tensor(spec.values, device=device)
            factors = torch.tensor([float(factor(v)) for v in spec.values], dtype=torch.float64, device=device)
            tables[key] = ((torch.arange(size, device=device) < values[:, None]) * factors[:, None]).to(dtype)
        return tables[key].index_select(0, spec.example_indices().to(device)).view(shape)

    return spec._context.cached(("rows_scaled_mask", spec.label, size, dtype, device, shape, name), make)
