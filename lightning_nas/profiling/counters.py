"""Count what a training step costs the host: operator calls and host reads (GPU syncs).

On a GPU a small training step is *launch-bound*: its time follows the number of operator calls
(each a kernel launch costing the host microseconds), not the arithmetic. And every time the host
reads a value computed on the device (``.item()``, ``bool(t)``, a data-dependent output shape such
as ``nonzero`` or boolean-mask indexing) it waits for the device to catch up, so it can no longer
queue work ahead of it, and the step cannot be captured as a CUDA graph.

Both are counted here on any device, the CPU included, with a ``TorchDispatchMode`` (every aten
operator that reaches the dispatcher below autograd, forward and backward) and a
``TorchFunctionMode`` (``Tensor.tolist`` and ``Tensor.numpy``, which read memory without an
operator)::

    with OperatorCounter() as ops, HostReadCounter() as reads:
        loss = model(x).sum()
        loss.backward()
    ops.total, ops.kernels, reads.total, reads.by_operator

On CUDA, ``torch.cuda.set_sync_debug_mode("error")`` is the device's own check; the host-read
counter is its stand-in where no GPU is present (and names the operator that reads).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

__all__ = ["HostReadCounter", "OperatorCounter", "host_read_reason"]

_aten = torch.ops.aten

# Operators whose output (a Python number, or a tensor whose shape depends on values) the host
# can only know by waiting for the device.
_ALWAYS_READS = {
    _aten._local_scalar_dense.default: "a tensor value read as a Python number (.item(), bool(), int(), float())",
    _aten.nonzero.default: "nonzero: its output shape depends on the values",
    _aten.masked_select.default: "masked_select: its output shape depends on the mask",
    _aten._unique.default: "unique: its output shape depends on the values",
    _aten._unique2.default: "unique: its output shape depends on the values",
    _aten.unique_dim.default: "unique: its output shape depends on the values",
    _aten.unique_consecutive.default: "unique_consecutive: its output shape depends on the values",
    _aten.bincount.default: "bincount: its output length depends on the largest value",
    _aten.equal.default: "equal: returns a Python bool",
    _aten.is_nonzero.default: "a tensor read as a Python bool",
}
_BOOL_INDEX = {_aten.index.Tensor, _aten.index_put.default, _aten.index_put_.default, _aten._index_put_impl_.default}
_REPEAT_INTERLEAVE = {_aten.repeat_interleave.Tensor, _aten.repeat_interleave.self_Tensor}
_COPIES = {_aten._to_copy.default, _aten.copy_.default}
# Tensor methods that read memory on the host without an aten operator (on a GPU tensor they copy
# it to the host first).
_HOST_METHODS = {torch.Tensor.tolist: "tolist", torch.Tensor.numpy: "numpy", torch.Tensor.__array__: "__array__"}


def host_read_reason(func: Any, args: tuple, kwargs: dict | None = None) -> str | None:
    """Why the aten operator call ``func(*args, **kwargs)`` reads device values on the host, or ``None``.

    Counted: scalar reads (``_local_scalar_dense``: ``.item()``, ``bool(t)``, ``int(t)``), operators
    whose output shape depends on the values (``nonzero``, ``masked_select``, ``unique``,
    ``bincount``, ``repeat_interleave`` without ``output_size``, indexing or ``index_put`` with a
    boolean mask), ``equal``, and copies from a non-CPU device to the CPU.
    """
    kwargs = kwargs or {}
    if func in _ALWAYS_READS:
        return _ALWAYS_READS[func]
    if func in _BOOL_INDEX:
        indices = args[1] if len(args) > 1 else kwargs.get("indices", ())
        if any(isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in indices):
            return f"{func.__name__} with a boolean mask: the number of selected elements depends on the values"
        return None
    if func in _REPEAT_INTERLEAVE:
        if kwargs.get("output_size") is None and not (len(args) > 3 and args[3] is not None):
            return "repeat_interleave without output_size: its output length depends on the repeats"
        return None
    if func in _COPIES:
        source = args[1] if func is _aten.copy_.default else args[0]
        target = args[0].device if func is _aten.copy_.default else kwargs.get("device")
        if isinstance(source, torch.Tensor) and source.device.type != "cpu" and target is not None and torch.device(target).type == "cpu":
            return "a copy from the device to the host"
    return None


class _Functions(TorchFunctionMode):
    def __init__(self, owner: "HostReadCounter") -> None:
        super().__init__()
        self.owner = owner

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = _HOST_METHODS.get(func)
        if name is not None:
            self.owner._record(name, f"Tensor.{name}: reads the tensor's memory on the host")
        return func(*args, **(kwargs or {}))


class _Dispatch(TorchDispatchMode):
    def __init__(self, on_call) -> None:
        super().__init__()
        self.on_call = on_call

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.on_call(func, args, kwargs or {})
        return func(*args, **(kwargs or {}))


class HostReadCounter:
    """Context manager counting host reads of tensor values (what would be GPU syncs on a GPU).

    Attributes:
        total: number of host reads inside the ``with`` block.
        by_operator: ``Counter`` of reads per operator name (``"_local_scalar_dense"``, ``"nonzero"``,
            ``"index"`` with a boolean mask, ``"tolist"``...).
        reasons: ``{operator name: why it reads}``, for error messages.

    Raises (on exit, only with ``raise_on_read=True``):
        AssertionError: when any host read happened; the message lists them.
    """

    def __init__(self, *, raise_on_read: bool = False) -> None:
        self.raise_on_read = raise_on_read
        self.by_operator: Counter[str] = Counter()
        self.reasons: dict[str, str] = {}
        self._modes: list[Any] = []

    @property
    def total(self) -> int:
        return sum(self.by_operator.values())

    def _record(self, name: str, reason: str) -> None:
        self.by_operator[name] += 1
        self.reasons.setdefault(name, reason)

    def _on_call(self, func, args, kwargs) -> None:
        reason = host_read_reason(func, args, kwargs)
        if reason is not None:
            self._record(func.__name__.split(".")[0], reason)

    def __enter__(self) -> "HostReadCounter":
        self._modes = [_Functions(self), _Dispatch(self._on_call)]
        for mode in self._modes:
            mode.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        for mode in reversed(self._modes):
            mode.__exit__(*exc)
        self._modes = []
        if self.raise_on_read and self.total and exc[0] is None:
            raise AssertionError(f"{self.total} host read(s): " + self.summary())

    def summary(self) -> str:
        """One line per reading operator: count and reason."""
        return "; ".join(f"{name} ×{n} ({self.reasons[name]})" for name, n in self.by_operator.most_common())


class OperatorCounter:
    """Context manager counting aten operator calls below autograd (forward, backward, optimiser).

    Attributes:
        by_operator: ``Counter`` of calls per operator overload name (``"aten.convolution.default"``...).
        total: all calls.
        kernels: calls that are not views (views such as ``view``, ``t``, ``expand``, slicing only
            change metadata; the others launch at least one kernel on a GPU).
    """

    def __init__(self) -> None:
        self.by_operator: Counter[str] = Counter()
        self._views = 0
        self._mode: _Dispatch | None = None

    @property
    def total(self) -> int:
        return sum(self.by_operator.values())

    @property
    def kernels(self) -> int:
        return self.total - self._views

    def _on_call(self, func, args, kwargs) -> None:
        self.by_operator[str(func)] += 1
        if func.is_view:
            self._views += 1

    def __enter__(self) -> "OperatorCounter":
        self._mode = _Dispatch(self._on_call)
        self._mode.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._mode.__exit__(*exc)
        self._mode = None
