"""Memory tables of a supernet: the KV cache and the training activation memory, as additive
:class:`~lightning_nas.bilinear.BilinearTable` s that a :class:`~lightning_nas.solvers.Limit` bounds.

Both quantities are sums over the network's layers, so the structure-based unit tables
(:meth:`~lightning_nas.spaces.staged.StagedSpace.from_supernet`: one table per unit, over the joint
values of the decisions it reads) represent them exactly, as they do FLOPs and parameters:

* **KV cache** (:func:`build_kv_cache_table`): the keys and values an autoregressive model keeps
  for a context of ``T`` tokens, ``2 · B · T · h · d`` elements for every self-attention with ``h``
  heads of ``d`` dimensions (``2 · B · T · E`` for an ``nn.MultiheadAttention``), in bytes of the
  attention's weights. A skipped or cut layer keeps none.
* **Activation memory** (:func:`build_activation_memory_table`): the bytes of the tensors one
  training forward saves for the backward pass (the activations that dominate training memory
  on top of weights, gradients and optimiser state, which follow the parameter table). Measured,
  not modelled: each unit's exported module runs one forward in train mode under
  ``torch.autograd.graph.saved_tensors_hooks`` on its real input shape (with ``requires_grad`` as
  in the network), and the distinct storages it saves are summed, parameters and buffers
  excluded (views of one storage count once). The fixed part is the whole network's count minus
  its units' for the base arch, and the table checks itself on the smallest arch: the sum is
  exact when no tensor crossing a unit boundary is saved on both sides of it (a residual add,
  the usual last op of a block, saves nothing); otherwise the build warns with the difference.

Both are in bytes (``unit="bytes"``), for the batch size and input size given (a language model's
``(batch, seq_len)`` token ids with ``vocab_size``).

The **peak inference memory** (:func:`build_peak_memory_table`) is not a sum: it is the largest
amount of activation memory alive at any moment of a forward pass, a maximum over the network's
units. Its table holds, per unit configuration, the peak live bytes while that unit runs (measured
in place, inside the whole exported network, so the tensors held around the unit, such as the
residual stream's input and the network's input, are counted), and as its ``constant`` the peak
outside every unit. Its value is ``max(constant, max over running units)``, which a
:class:`~lightning_nas.solvers.Limit` bounds exactly: the table's ``metadata["aggregate"] = "max"``
makes ``Limit(table, upper=U)`` a set of per-unit linear constraints (see
:mod:`lightning_nas.solvers.problem`). What is counted (:func:`peak_inference_bytes`): the bytes of
distinct tensor storages that aten operators allocate during one eval-mode forward without
gradients (the input and the output included), from the operator that creates each storage until
its last reference dies; parameters and buffers are not counted, nor are buffers a kernel allocates
and frees inside one operator (a fused attention kernel's or a BLAS routine's scratch space), the
allocator's caching and fragmentation, or Python objects.

Example::

    kv = build_kv_cache_table(gpt, (256,), batch_size=8, vocab_size=128)
    search_constrained(accuracy, [Limit(latency, upper=5.0), Limit(kv, upper=64 * 2**20)])
    peak = build_peak_memory_table(gpt, (256,), batch_size=8, vocab_size=128)
    search_constrained(accuracy, [Limit(latency, upper=5.0), Limit(peak, upper=8 * 2**20)])   # a max, exactly
"""

from __future__ import annotations

import copy
import warnings
import weakref
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from lightning_nas.bilinear import BilinearTable
from lightning_nas.nn.attention import MultiheadSelfAttention
from lightning_nas.nn.choice import Mutable
from lightning_nas.nn.depth_choice import DepthChoice
from lightning_nas.nn.export import export_subnet
from lightning_nas.nn.transformer_rules import ElasticLayers
from lightning_nas.profiling.tables import (
    PROFILER_VERSION,
    _block_exports,
    _check_supernet,
    _input_size,
    block_shapes,
    integer_input_units,
    keep_rng_state,
    model_signature,
    stage_blocks,
)
from lightning_nas.spaces.staged import StagedSpace
from lightning_nas.supernet import Supernet

__all__ = [
    "build_activation_memory_table",
    "build_kv_cache_table",
    "build_peak_memory_table",
    "kv_cache_bytes",
    "peak_inference_bytes",
    "saved_activation_bytes",
]


def _network_input(shape: tuple[int, ...], vocab_size: int | None, requires_grad: bool = False) -> torch.Tensor:
    if vocab_size is not None:
        return torch.zeros(shape, dtype=torch.long)
    return torch.zeros(shape, requires_grad=requires_grad)


def _check_batch(batch_size: Any) -> int:
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"`batch_size` must be an int >= 1, got {batch_size!r}")
    return batch_size


def _check_vocab(vocab_size: Any) -> int | None:
    if vocab_size is not None and (not isinstance(vocab_size, int) or isinstance(vocab_size, bool) or vocab_size < 1):
        raise ValueError(f"`vocab_size` must be an int >= 1 or None (float inputs), got {vocab_size!r}")
    return vocab_size


# -- measurements of one module ---------------------------------------------------------------
def kv_cache_bytes(module: nn.Module, x: torch.Tensor) -> int:
    """Bytes of keys and values that ``module``'s self-attentions keep for the input ``x``.

    Every :class:`~lightning_nas.nn.MultiheadSelfAttention` called with ``(B, T, E)`` keeps
    ``2 · B · T · num_heads · head_dim`` elements, every ``nn.MultiheadAttention`` called with keys
    ``(B, S, ·)`` (batch first) or ``(S, B, ·)`` keeps ``2 · B · S · embed_dim``; each element has the
    size of the attention's weights. Runs one forward in eval mode without gradients.

    Args:
        module: any module (an exported subnet or one of its units).
        x: its input.

    Returns:
        The bytes, summed over every call of every attention module.
    """
    total = [0]

    def self_attention(m: MultiheadSelfAttention, args, output) -> None:
        b, t = args[0].shape[0], args[0].shape[1]
        total[0] += 2 * b * t * m.num_heads * m.head_dim * m.qkv.weight.element_size()

    def torch_attention(m: nn.MultiheadAttention, args, kwargs, output) -> None:
        key = kwargs.get("key", args[1] if len(args) > 1 else None)
        if key is None:
            return
        b, s = (key.shape[0], key.shape[1]) if m.batch_first or key.dim() == 2 else (key.shape[1], key.shape[0])
        total[0] += 2 * b * s * m.embed_dim * m.out_proj.weight.element_size()

    handles = []
    for m in module.modules():
        if isinstance(m, MultiheadSelfAttention):
            handles.append(m.register_forward_hook(self_attention))
        elif isinstance(m, nn.MultiheadAttention):
            handles.append(m.register_forward_hook(torch_attention, with_kwargs=True))
    modes = [(m, m.training) for m in module.modules()]
    try:
        module.eval()
        with torch.no_grad():
            module(x)
    finally:
        for handle in handles:
            handle.remove()
        for m, training in modes:
            m.training = training
    return total[0]


def saved_activation_bytes(module: nn.Module, x: torch.Tensor) -> int:
    """Bytes of the tensors one training forward of ``module`` on ``x`` saves for the backward pass.

    The forward runs in train mode with gradients enabled under
    ``torch.autograd.graph.saved_tensors_hooks``; every saved tensor's storage is counted once
    (views of one storage, such as the query, key and value slices of one projection, share it),
    and the module's own parameters and buffers are not counted. Train/eval flags are restored.

    Args:
        module: any module whose parameters require gradients.
        x: its input (give it ``requires_grad=True`` when, in the network, it depends on weights
            before it: some operations save more then).

    Returns:
        The bytes, an int.
    """
    own = {t.untyped_storage().data_ptr() for t in (*module.parameters(), *module.buffers())}
    saved: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        pointer = storage.data_ptr()
        if pointer and pointer not in own:
            saved[pointer] = storage.nbytes()
        return tensor

    modes = [(m, m.training) for m in module.modules()]
    try:
        module.train()
        # The output keeps every saved tensor alive until counted, so no storage address is reused.
        with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            output = module(x)
        total = sum(saved.values())
        del output
    finally:
        for m, training in modes:
            m.training = training
    return total


# -- tables -----------------------------------------------------------------------------------
def _unit_inputs(supernet: Supernet, staged: StagedSpace, shape: tuple[int, ...], vocab_size: int | None) -> dict[tuple[int, int], bool]:
    """Whether each unit's input requires a gradient in a training forward of the largest arch."""
    with keep_rng_state():
        work = copy.deepcopy(supernet).cpu().float().train()
    units = stage_blocks(work, staged)
    needs: dict[tuple[int, int], bool] = {}
    handles = []
    for s, row in enumerate(units):
        for b, unit in enumerate(row):
            if unit is None:
                continue

            def hook(module, args, output, key=(s, b)) -> None:  # returns None: the output is kept
                needs.setdefault(key, bool(args[0].requires_grad))
            handles.append(unit.register_forward_hook(hook))
    try:
        with work.activated(work.space.largest()), torch.enable_grad():
            work(_network_input(shape, vocab_size))
    finally:
        for handle in handles:
            handle.remove()
    return needs


def _build(
    supernet: Supernet, input_size: Sequence[int], batch_size: int, vocab_size: int | None, base: Mapping[str, Any] | None,
    name: str, measure, training: bool, description: str,
) -> BilinearTable:
    _check_supernet(supernet)
    shape = (_check_batch(batch_size), *_input_size(input_size))
    vocab_size = _check_vocab(vocab_size)
    staged = StagedSpace.of(supernet)
    base = supernet.space.validate(base) if base is not None else supernet.space.largest()
    shapes = block_shapes(supernet, shape, staged, vocab_size=vocab_size)
    integer = integer_input_units(supernet, shape, vocab_size, staged)
    grad = _unit_inputs(supernet, staged, shape, vocab_size) if training else {}
    block = np.zeros((staged.num_stages, staged.max_blocks, staged.num_configs))
    for s, b, c, module in _block_exports(supernet, staged, base):
        in_shape = shapes[s][b][c][0]
        x = torch.zeros(in_shape, dtype=torch.long) if (s, b) in integer else torch.zeros(in_shape, requires_grad=grad.get((s, b), False))
        block[s, b, c] = measure(module.float(), x)

    def whole(arch: Mapping[str, Any]) -> int:
        return measure(supernet.export(arch).float(), _network_input(shape, vocab_size))

    probe = BilinearTable(staged, 0.0, block, name=name)
    constant = whole(base) - probe.predict(base)
    table = BilinearTable(
        staged, constant, block, name=name, unit="bytes",
        metadata={
            "profiler_version": PROFILER_VERSION, "model": model_signature(supernet), "input_size": list(shape[1:]),
            "batch_size": shape[0], "vocab_size": vocab_size, "measure": description, "base_arch": base,
        },
    )
    smallest = supernet.space.smallest()
    measured, predicted = whole(smallest), table.predict(smallest)
    if abs(measured - predicted) > 0.5:
        warnings.warn(
            f"the {name} table predicts {predicted:.0f} bytes for the smallest arch but the network measures {measured}: "
            "its units do not add up exactly (a tensor crossing a unit boundary is counted on both sides, or the fixed "
            "part depends on decisions); treat it as an estimate",
            stacklevel=3,
        )
    table.metadata["check_smallest_bytes"] = {"measured": measured, "predicted": predicted}
    return table


@keep_rng_state()
def build_kv_cache_table(
    supernet: Supernet,
    input_size: Sequence[int],
    *,
    batch_size: int = 1,
    vocab_size: int | None = None,
    base: Mapping[str, Any] | None = None,
) -> BilinearTable:
    """The KV cache of every subnet for a context of ``input_size`` (see :func:`kv_cache_bytes`).

    Args:
        supernet: the supernet (only read: units are exported copies).
        input_size: one example's input: ``(seq_len,)`` for token ids, ``(C, H, W)`` for images.
        batch_size: sequences held at once.
        vocab_size: the network takes token ids (any valid vocabulary size; ids 0 are used).
        base: arch giving the labels outside the units (default: the largest).

    Returns:
        ``BilinearTable(name="kv_cache", unit="bytes")``; exact for every arch (a sum over attention
        layers).
    """
    return _build(supernet, input_size, batch_size, vocab_size, base, "kv_cache", kv_cache_bytes, False,
                  "2 * B * T * heads * head_dim elements per self-attention, bytes of its weights")


@keep_rng_state()
def build_activation_memory_table(
    supernet: Supernet,
    input_size: Sequence[int],
    *,
    batch_size: int = 1,
    vocab_size: int | None = None,
    base: Mapping[str, Any] | None = None,
) -> BilinearTable:
    """The activation memory of a training step of every subnet (see :func:`saved_activation_bytes`).

    Args:
        supernet: the supernet (only read: units are exported copies, measured in float32).
        input_size: one example's input: ``(C, H, W)``, or ``(seq_len,)`` for token ids.
        batch_size: examples per training step.
        vocab_size: the network takes token ids.
        base: arch giving the labels outside the units (default: the largest).

    Returns:
        ``BilinearTable(name="activation_memory", unit="bytes")``; ``metadata["check_smallest_bytes"]``
        holds the smallest arch's measured and predicted bytes (a warning is emitted when they differ).
    """
    return _build(supernet, input_size, batch_size, vocab_size, base, "activation_memory", saved_activation_bytes, True,
                  "bytes of distinct non-parameter storages saved for backward by one train-mode forward")


# -- peak inference memory ------------------------------------------------------------------------
_STORAGE_LIFETIMES_CHECKED = False


def _check_storage_lifetimes() -> None:
    """The count relies on a storage's Python object living as long as the storage (torch keeps it
    for tensors' storages); checked once, so that an older torch fails loudly instead of undercounting."""
    global _STORAGE_LIFETIMES_CHECKED
    if _STORAGE_LIFETIMES_CHECKED:
        return
    died = []
    tensor = torch.zeros(4)
    storage = tensor.untyped_storage()
    weakref.finalize(storage, died.append, True)
    del storage
    alive_while_referenced = not died
    del tensor
    if not alive_while_referenced or not died:
        raise RuntimeError(f"torch {torch.__version__} does not tie a storage's Python object to the storage's lifetime; "
                           "peak inference memory cannot be measured by live storages with it")
    _STORAGE_LIFETIMES_CHECKED = True


class _LiveStorages(TorchDispatchMode):
    """Counts the bytes of the tensor storages aten operators create that are still referenced.

    Every operator's output storages not seen before (and not in ``exclude``: parameters, buffers)
    are added when the operator returns and removed when their last reference dies (a weak
    reference's finaliser: storages keep their Python object as long as they live). ``peak`` is
    the largest total; ``window`` names the unit running now, whose own peak is kept in ``peaks``;
    ``outside`` is the peak while no unit runs.
    """

    def __init__(self, exclude: set[int]) -> None:
        super().__init__()
        _check_storage_lifetimes()
        self.exclude = exclude
        self.live: dict[int, int] = {}
        self.current = self.peak = self.outside = 0
        self.window: Any = None
        self.window_peak = 0
        self.peaks: dict[Any, int] = {}

    def _free(self, pointer: int, nbytes: int) -> None:
        if self.live.pop(pointer, None) is not None:
            self.current -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if not isinstance(t, torch.Tensor):
                continue
            storage = t.untyped_storage()
            pointer, nbytes = storage.data_ptr(), storage.nbytes()
            if not pointer or not nbytes or pointer in self.live or pointer in self.exclude:
                continue
            self.live[pointer] = nbytes
            weakref.finalize(storage, self._free, pointer, nbytes)
            self.current += nbytes
            self.peak = max(self.peak, self.current)
            if self.window is None:
                self.outside = max(self.outside, self.current)
            else:
                self.window_peak = max(self.window_peak, self.current)
        return out

    def open(self, key: Any) -> None:
        if self.window is not None:
            raise ValueError(f"unit {key!r} runs inside unit {self.window!r}; peak memory needs units that do not nest")
        self.window, self.window_peak = key, self.current

    def close(self, key: Any) -> None:
        if self.window == key:
            self.peaks[key] = max(self.peaks.get(key, 0), self.window_peak)
            self.window = None


def _tracked_forward(module: nn.Module, make_input: Callable[[], torch.Tensor],
                     units: Mapping[Any, nn.Module] | None = None) -> _LiveStorages:
    """One eval-mode forward without gradients under :class:`_LiveStorages`, the input created inside
    it (so it counts); each module of ``units`` opens a window while it runs. Modes are restored."""
    exclude = {t.untyped_storage().data_ptr() for t in (*module.parameters(), *module.buffers())}
    tracker = _LiveStorages(exclude)
    handles = []
    for key, unit in (units or {}).items():
        handles.append(unit.register_forward_pre_hook(lambda m, args, key=key: tracker.open(key)))
        handles.append(unit.register_forward_hook(lambda m, args, output, key=key: tracker.close(key)))
    modes = [(m, m.training) for m in module.modules()]
    try:
        module.eval()
        with torch.no_grad(), tracker:
            x = make_input()
            output = module(x)
            del x, output
    finally:
        for handle in handles:
            handle.remove()
        for m, training in modes:
            m.training = training
    return tracker


def peak_inference_bytes(module: nn.Module, x: torch.Tensor) -> int:
    """The peak activation memory of one inference forward of ``module`` on an input like ``x``, in bytes.

    The forward runs in eval mode without gradients; the largest total of live tensor storages
    created by aten operators is returned (see the module docstring for what is and is not
    counted). The input is a fresh copy of ``x`` made inside the measurement, so it counts.

    Args:
        module: any module (an exported subnet).
        x: an input of the shape and dtype the module takes (its values are copied).

    Returns:
        The bytes, an int.
    """
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"`x` must be a tensor (the module's input), got {type(x).__name__}")
    return _tracked_forward(module, x.clone).peak


def _exported_path(root: nn.Module, path: str, arch: Mapping[str, Any]) -> str:
    """Where the module at ``path`` of a supernet's module lies in its export for ``arch``: a
    DepthChoice's ``blocks.<b>`` becomes ``<b>``, an ElasticLayers' layer ``<i>`` becomes its index
    among the layers that run; other modules keep their path."""
    module, out = root, []
    parts = path.split(".") if path else []
    i = 0
    while i < len(parts):
        name = parts[i]
        if isinstance(module, DepthChoice) and name == "blocks":
            index = int(parts[i + 1])
            out.append(str(index))
            module, i = module.blocks[index], i + 2
            continue
        if isinstance(module, ElasticLayers):
            index = int(name)
            out.append(str(sum(module._runs(k, arch) for k in range(index))))
            module, i = module[index], i + 1
            continue
        if isinstance(module, Mutable):
            raise ValueError(f"unit {path!r} lies inside the {type(module).__name__} {'.'.join(parts[:i]) or '<root>'!r}; "
                             "its place in an exported network is unknown")
        out.append(name)
        module, i = module.get_submodule(name), i + 1
    return ".".join(out)


@keep_rng_state()
def build_peak_memory_table(
    supernet: Supernet,
    input_size: Sequence[int],
    *,
    batch_size: int = 1,
    vocab_size: int | None = None,
    base: Mapping[str, Any] | None = None,
) -> BilinearTable:
    """The peak inference activation memory of every subnet, as a max-type table.

    For every configuration of every unit, a subnet in which that unit runs with that
    configuration (the others from ``base``) is exported and run once under the live-storage count
    of :func:`peak_inference_bytes`; the peak while the unit runs is its entry (every unit running
    in that forward is recorded at once, so the number of forwards is at most the number of
    configurations). The peak outside every unit (in the base arch's forward) is the ``constant``.
    An arch's peak is then ``max(constant, max over its running units' entries)``; a
    :class:`~lightning_nas.solvers.Limit` on this table bounds that maximum
    (``metadata["aggregate"] = "max"``), and :meth:`Limit.predict <lightning_nas.solvers.Limit.predict>`
    evaluates it.

    It is exact when what is alive around a unit (the tensors the enclosing modules hold) depends
    only on the decisions the unit reads, as in the transformer and CNN spaces of this library
    (the residual stream's width is a decision of every unit reading it). The build checks this:
    an entry measured again in another arch with another value, or the smallest arch measured
    against its prediction, gives a warning with the difference (the larger entry is kept).

    Args:
        supernet: the supernet (only read: subnets are exported copies, measured in float32 on the CPU).
        input_size: one example's input: ``(C, H, W)``, or ``(seq_len,)`` for token ids.
        batch_size: examples per forward.
        vocab_size: the network takes token ids (id 0 is used).
        base: arch giving the decisions outside the unit measured (default: the largest).

    Returns:
        ``BilinearTable(name="peak_memory", unit="bytes")`` with zero ``depth`` entries;
        ``metadata["check_smallest_bytes"]`` holds the smallest arch's measured and predicted peak.

    Raises:
        ValueError: bad arguments, or a structure without module paths (read it from the
            supernet: ``StagedSpace.from_supernet``), or a unit inside another mutable.
    """
    from lightning_nas.solvers.problem import max_indices

    _check_supernet(supernet)
    shape = (_check_batch(batch_size), *_input_size(input_size))
    vocab_size = _check_vocab(vocab_size)
    staged = StagedSpace.of(supernet)
    if not all(st.paths for st in staged.stages):
        raise ValueError("build_peak_memory_table needs each unit's module path: the supernet's structure must be read from its "
                         "modules (StagedSpace.from_supernet), not inferred from labels")
    space = supernet.space
    base = space.validate(base) if base is not None else space.largest()
    with keep_rng_state():
        work = copy.deepcopy(supernet).cpu().float()
    root = work.module

    def make_input() -> torch.Tensor:
        return _network_input(shape, vocab_size)

    def measure(arch: Mapping[str, Any]) -> tuple[_LiveStorages, dict[tuple[int, int], int]]:
        configs, depths = staged.indices(arch)
        running = staged.active(depths[None])[0]
        exported = export_subnet(root, dict(arch))
        units = {}
        for s, st in enumerate(staged.stages):
            for b, path in enumerate(st.paths):
                if path is not None and running[s, b]:
                    units[s, b] = exported.get_submodule(_exported_path(root, path, arch))
        tracker = _tracked_forward(exported, make_input, units)
        return tracker, {(s, b): int(configs[s, b]) for s, b in units}

    block = np.zeros((staged.num_stages, staged.max_blocks, staged.num_configs))
    measured = np.zeros(block.shape, dtype=bool)
    mismatch: list[str] = []

    def record(tracker: _LiveStorages, configs: Mapping[tuple[int, int], int]) -> None:
        for (s, b), c in configs.items():
            value = tracker.peaks.get((s, b))
            if value is None:
                continue
            if measured[s, b, c] and value != block[s, b, c]:
                mismatch.append(f"{staged.config_name(s, b, c)}: {int(block[s, b, c])} and {value}")
            block[s, b, c] = max(block[s, b, c], value) if measured[s, b, c] else value
            measured[s, b, c] = True

    base_tracker, base_configs = measure(base)
    record(base_tracker, base_configs)
    constant = float(base_tracker.outside)
    for s, st in enumerate(staged.stages):
        for b, (labels, path) in enumerate(zip(st.block_labels, st.paths)):
            if path is None:
                continue
            for c, values in enumerate(st.configs[b]):
                if measured[s, b, c]:
                    continue
                arch = dict(base)
                if st.depth_label is not None:
                    arch[st.depth_label] = max(st.depths)  # the unit runs
                arch.update(zip(labels, values))
                tracker, configs = measure(space.validate(arch))
                record(tracker, configs)
    table = BilinearTable(
        staged, constant, block, name="peak_memory", unit="bytes",
        metadata={
            "profiler_version": PROFILER_VERSION, "model": model_signature(supernet), "input_size": list(shape[1:]),
            "batch_size": shape[0], "vocab_size": vocab_size, "aggregate": "max", "base_arch": base,
            "measure": "peak bytes of live tensor storages created by aten operators in one eval-mode forward without "
                       "gradients, per unit while it runs (in place), parameters and buffers excluded",
        },
    )
    smallest = space.smallest()
    whole, predicted = measure(smallest)[0].peak, float(max_indices(table, *staged.indices(smallest)))
    table.metadata["check_smallest_bytes"] = {"measured": whole, "predicted": predicted}
    if mismatch or abs(whole - predicted) > 0.5:
        warnings.warn(
            "the peak_memory table is not exact for this network: "
            + (f"unit entries differ between archs ({'; '.join(mismatch[:3])}); " if mismatch else "")
            + f"the smallest arch measures {whole} bytes and the table predicts {predicted:.0f}. What is alive around a "
            "unit depends on decisions it does not read; treat the table as an estimate",
            stacklevel=3,
        )
    return table
