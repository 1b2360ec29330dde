"""Latency, FLOPs and parameter tables of a staged supernet (BINAS Eq. 5 lookup tables).

Every block configuration of every stage is exported alone (``export_subnet`` on the block with
an arch that sets its configuration) and measured on an input of the shape it really sees in the
network; the parts outside the searchable blocks (stem, head, fixed layers) form the table's
``constant``. ``table.predict(arch)`` is then ``LAT(arch)`` of BINAS Eq. 5 (plus that constant).

How the pieces are found, for any supernet (:meth:`StagedSpace.from_supernet`):

* a unit is a block of a :class:`~lightning_nas.nn.DepthChoice` or an outermost module that reads
  decisions outside every DepthChoice (a stem conv reading its kernel, a head reading a width);
  its table is over the joint values of the decisions it reads, so a width shared by many layers
  is charged to every unit it changes;
* each unit's input and output shapes are captured with forward hooks under the largest and the
  smallest arch; a unit whose shapes change (one reading the width of the layer before it) is
  captured once per configuration;
* units whose exported module and shapes are identical (BINAS: blocks 2-4 of a stage) share one
  measurement; the key is the exported module's ``repr`` plus its input and output shapes.

The fixed part of the latency cannot be isolated generically (a stem and head are whatever
the user's ``forward`` does around the stages), so it is *estimated*: whole exported networks of a
few random calibration archs are timed, in the same interleaved rounds as the blocks, and the
table's constant is the median of ``measured − Σ block entries``.

Where blocks take tens of microseconds (ONNX Runtime or TorchScript at 32×32), a block timed alone
and the same block inside a network differ by more than noise: per-call costs, fusion and
scheduling across block boundaries, caches. ``build_latency_table(..., fit_archs=N)`` then also
times ``N`` random whole subnets in the same rounds (so machine drift lands on blocks and subnets
alike) and fits every entry to them by ridge least squares with the block table as prior
(:func:`latency_table_of`, :func:`~lightning_nas.profiling.fit.fit_table`); the table's metadata
records the fit and its cross-validated error next to the block table's.

Additivity is only as good as the machine allows: at large inputs (224×224) on CPU, use
``ProfileSettings(pin_malloc=True)`` (glibc's adaptive allocator otherwise makes whole networks
slower than their blocks), and profile on an otherwise idle machine (isolated blocks keep their
weights in cache; inside a network they compete for memory bandwidth). ``benchmarks/latency_mape.py``
measures the resulting error. For FLOPs and parameters, which are exactly additive, the constant is the
network's count minus its blocks' counts for the largest arch.

Example::

    settings = ProfileSettings(input_size=(3, 32, 32), threads=1, repeats=100)
    latency = load_or_build(supernet, "latency.json", settings)     # reused when still valid
    latency.predict(arch)                                          # ms
    fitted = build_latency_table(supernet, settings, fit_archs=40)  # entries fitted to 50 whole subnets
    fitted.metadata["fit"]["heldout"]["mape_percent"]             # its cross-validated error, %
    build_flops_table(supernet, (3, 32, 32)).predict(arch)         # MFLOPs at batch 1
"""

from __future__ import annotations

import contextlib
import copy
import datetime
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from lightning_nas.bilinear import BilinearTable
from lightning_nas.io import check_writable, read_json
from lightning_nas.nn.choice import Choice
from lightning_nas.nn.depth_choice import DepthChoice
from lightning_nas.nn.export import export_subnet
from lightning_nas.profiling.timing import STATISTICS, ProfileSettings, TimingResult, device_info, time_modules
from lightning_nas.seeding import derive_seed
from lightning_nas.spaces.staged import StagedSpace
from lightning_nas.supernet import Supernet

__all__ = [
    "PROFILER_VERSION",
    "BlockShapes",
    "backup_path",
    "block_shapes",
    "build_flops_table",
    "build_latency_table",
    "build_params_table",
    "check_fit_archs",
    "fit_summary",
    "fitted_subnets",
    "integer_input_units",
    "keep_rng_state",
    "latency_table_of",
    "load_or_build",
    "model_signature",
    "settings_of",
    "stage_blocks",
    "stale_reasons",
    "time_archs",
]

log = logging.getLogger("lightning_nas.profiling")

# 2: the runtime is part of the settings; converted runtimes' call overhead is taken off block entries.
PROFILER_VERSION = 2
# Calibration archs, the MAPE check (report.CHECK_STREAM = 1) and the fit archs draw from separate
# streams of the same seed.
CALIBRATION_STREAM = 0
FIT_STREAM = 2
# build_latency_table(fit_archs=N): how the entries are fitted to whole subnets (fit.fit_table).
FIT_METHOD = ("ridge least squares of every block entry, depth term and the constant to the end-to-end times of the "
              "calibration and fit subnets (lightning_nas.profiling.fit.fit_table), prior: the block table rescaled to them; "
              "of the fits at each ridge and the block table itself, the one of least cross-validated MAPE")
# Small: the subnets decide every entry they pin down; large: close to the block table rescaled.
FIT_RIDGES = (1e-3, 1e-2, 1e-1, 1.0, 10.0)
# A fit replaces the block table only when its held-out MAPE is at least this fraction lower.
FIT_MIN_GAIN = 0.1
FIT_FOLDS = 5

Shape = tuple[int, ...]
BlockShapes = list[list[list[tuple[Shape, Shape] | None]]]  # [stage][block][config] -> (input shape, output shape)
Progress = Callable[[str], None] | None


# -- structure ---------------------------------------------------------------------------------
@contextlib.contextmanager
def keep_rng_state() -> Iterator[None]:
    """Restore the global torch RNG afterwards: exporting creates layers, whose initialisation
    would otherwise consume random numbers of the user's run."""
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() and torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=devices):
        yield


def _check_seed(seed: Any) -> int:
    # bool is an int subclass, and torch's seeding error would not name the argument.
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"`seed` must be an int >= 0, got {seed!r}")
    return seed


def _check_supernet(supernet: Any) -> Supernet:
    if not isinstance(supernet, Supernet):
        raise ValueError(f"`supernet` must be a lightning_nas.Supernet, got {type(supernet).__name__}")
    return supernet


def stage_blocks(supernet: Supernet, staged: StagedSpace | None = None) -> list[list[nn.Module | None]]:
    """The module of every unit: ``[stage][block]`` (``None`` for a shared decision's own unit,
    which has no module and costs nothing by itself).

    Structures read from the supernet (:meth:`StagedSpace.from_supernet`) carry each unit's module
    path; label-inferred ones find a stage's blocks through the ``DepthChoice`` with its depth label.

    Raises:
        ValueError: a unit that is a bare decision read by a module holding a DepthChoice (its
            effect on latency cannot be isolated); for a label-inferred structure, a stage without
            a depth decision or ``DepthChoice``, or with another number of blocks.
    """
    _check_supernet(supernet)
    staged = staged or StagedSpace.of(supernet)
    by_label = None
    out: list[list[nn.Module | None]] = []
    for s, stage in enumerate(staged.stages):
        if stage.paths:
            row: list[nn.Module | None] = []
            for path in stage.paths:
                module = None if path is None else supernet.module.get_submodule(path)
                if isinstance(module, Choice):
                    owner = path.rpartition(".")[0] or "<root>"
                    raise ValueError(
                        f"decision {module.label!r} is read directly by the module {owner!r}, which also holds a DepthChoice: "
                        "its effect on latency cannot be isolated into a unit of its own; move the layers that read it "
                        "into a sub-module (or out of the module holding the DepthChoice)"
                    )
                row.append(module)
            out.append(row)
            continue
        if by_label is None:
            by_label = {m.label: m for m in supernet.module.modules() if isinstance(m, DepthChoice)}
        if stage.depth_label is None:
            raise ValueError(f"stage {s} has no depth decision; the profiler finds a stage's blocks through its DepthChoice")
        depth_choice = by_label.get(stage.depth_label)
        if depth_choice is None:
            raise ValueError(f"no DepthChoice with label {stage.depth_label!r} in the supernet (found {sorted(by_label)!r})")
        if len(depth_choice.blocks) != stage.num_blocks:
            raise ValueError(
                f"DepthChoice {stage.depth_label!r} has {len(depth_choice.blocks)} blocks but stage {s} has {stage.num_blocks} block positions"
            )
        out.append(list(depth_choice.blocks))
    return out


def _network_input(shape: Shape, vocab_size: int | None) -> torch.Tensor:
    """Zeros of the network's input: floats, or token id 0 (valid for any vocabulary)."""
    return torch.zeros(shape, dtype=torch.float32 if vocab_size is None else torch.long)


def _timed(module: nn.Module, shape: Shape, vocab_size: int | None) -> tuple:
    """A :func:`time_modules` item: ``(module, shape)``, with the vocabulary only for token inputs."""
    return (module, shape) if vocab_size is None else (module, shape, vocab_size)


def _capture(supernet: Supernet, units: list[list[nn.Module | None]], arch: Mapping[str, Any], input_shape: Shape,
             only: set[tuple[int, int]] | None = None, *, vocab_size: int | None = None,
             integer: set[tuple[int, int]] | None = None) -> dict[tuple[int, int], tuple[Shape, Shape]]:
    """Each unit's ``(input shape, output shape)`` in one forward of ``arch``; units whose input is
    integer (token ids) are added to ``integer`` when given."""
    seen: dict[tuple[int, int], tuple[Shape, Shape]] = {}
    handles = []
    for s, row in enumerate(units):
        for b, unit in enumerate(row):
            if unit is None or (only is not None and (s, b) not in only):
                continue

            def hook(module, args, output, key=(s, b)):
                if not args or not isinstance(args[0], torch.Tensor) or not isinstance(output, torch.Tensor):
                    raise ValueError(f"unit {key} ({type(module).__name__}) must take and return one tensor to be profiled")
                seen[key] = (tuple(args[0].shape), tuple(output.shape))
                if integer is not None and not (args[0].is_floating_point() or args[0].is_complex()):
                    integer.add(key)
            handles.append(unit.register_forward_hook(hook))
    try:
        x = _network_input(input_shape, vocab_size)
        with supernet.activated(arch), torch.inference_mode():
            supernet(x)
    finally:
        for handle in handles:
            handle.remove()
    return seen


@keep_rng_state()
def block_shapes(supernet: Supernet, input_shape: Sequence[int], staged: StagedSpace | None = None, *,
                 vocab_size: int | None = None) -> BlockShapes:
    """Input and output shape of every unit under each of its configurations,
    ``[stage][block][config] -> (in_shape, out_shape)`` (``None`` for units without a module).

    Runs a CPU copy of the supernet in eval mode on zeros of ``input_shape`` (batch included;
    token id 0 when ``vocab_size`` is given: a language model's ``(batch, seq_len)``) with
    forward hooks, under the largest and the smallest arch. A unit whose shapes agree under
    both has them under every configuration; the others (a unit reading the width of the layer
    before it, say) are captured once per configuration, under the largest arch with the unit's
    decisions set, and checked against the smallest arch.

    Raises:
        ValueError: when a unit never runs under the largest arch, or its shapes depend on
            decisions it does not read.
    """
    _check_supernet(supernet)
    staged = staged or StagedSpace.of(supernet)
    work = copy.deepcopy(supernet).cpu().float().eval()
    units = stage_blocks(work, staged)
    shape = tuple(int(v) for v in input_shape)
    largest_arch, smallest_arch = work.space.largest(), work.space.smallest()
    largest = _capture(work, units, largest_arch, shape, vocab_size=vocab_size)
    smallest = _capture(work, units, smallest_arch, shape, vocab_size=vocab_size)
    missing = [(s, b) for s, row in enumerate(units) for b, unit in enumerate(row) if unit is not None and (s, b) not in largest]
    if missing:
        raise ValueError(f"blocks {missing} did not run under the largest arch; cannot capture their input shapes")
    out: BlockShapes = []
    by_arch: dict[str, dict[tuple[int, int], tuple[Shape, Shape]]] = {}
    for s, (stage, row) in enumerate(zip(staged.stages, units)):
        out.append([])
        for b, unit in enumerate(row):
            configs = stage.configs[b]
            if unit is None:
                out[s].append([None] * len(configs))
                continue
            if largest[s, b] == smallest.get((s, b)):
                out[s].append([largest[s, b]] * len(configs))
                continue
            per_config = []
            for values in configs:
                arch = {**largest_arch, **dict(zip(stage.block_labels[b], values))}
                key = json.dumps(arch, sort_keys=True, default=str)
                if key not in by_arch:
                    by_arch[key] = _capture(work, units, arch, shape, vocab_size=vocab_size)
                per_config.append(by_arch[key][s, b])
            small = tuple(smallest_arch[lab] for lab in stage.block_labels[b])
            if (s, b) in smallest and per_config[configs.index(small)] != smallest[s, b]:
                raise ValueError(
                    f"unit {stage.paths[b] if stage.paths else (s, b)!r} sees shapes {smallest[s, b]} under the smallest arch but "
                    f"{per_config[configs.index(small)]} under the largest arch with the same values of the decisions it reads "
                    f"({list(stage.block_labels[b])}): its shapes depend on decisions it does not read, so its latency cannot be tabulated; "
                    "put it in one module with the layer whose width it receives (e.g. nn.Sequential(layer, it)), so that they form one unit"
                )
            out[s].append(per_config)
    return out


def _block_exports(supernet: Supernet, staged: StagedSpace, base: Mapping[str, Any]) -> Iterator[tuple[int, int, int, nn.Module]]:
    """``(stage, block, config, exported unit)`` for every configuration of every unit with a module."""
    units = stage_blocks(supernet, staged)
    for s, stage in enumerate(staged.stages):
        for b, labels in enumerate(stage.block_labels):
            if units[s][b] is None:
                continue
            for c, values in enumerate(stage.configs[b]):
                arch = dict(base)
                arch.update(zip(labels, values))
                yield s, b, c, export_subnet(units[s][b], arch)


def model_signature(supernet: Supernet) -> str:
    """SHA-256 of the supernet's ``repr`` (layer sizes, decisions and candidates): changes when the network does."""
    return hashlib.sha256(repr(_check_supernet(supernet)).encode("utf-8")).hexdigest()


def _unique_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def integer_input_units(supernet: Supernet, input_shape: Sequence[int], vocab_size: int | None,
                        staged: StagedSpace | None = None) -> set[tuple[int, int]]:
    """``(stage, block)`` of the units that receive integer inputs (a language model's token
    embedding) when the network is fed ``vocab_size`` token ids; empty for float inputs."""
    if vocab_size is None:
        return set()
    staged = staged or StagedSpace.of(supernet)
    with keep_rng_state():
        work = copy.deepcopy(supernet).cpu().float().eval()
    integer: set[tuple[int, int]] = set()
    _capture(work, stage_blocks(work, staged), work.space.largest(), tuple(input_shape), vocab_size=vocab_size, integer=integer)
    return integer


def _flops(module: nn.Module, shape: Shape, integer: bool = False) -> int:
    """FLOPs of one call of ``module`` (a copy we own: it is moved) on an input of ``shape``
    (token id 0 when ``integer``)."""
    module = module.eval()
    # Counting needs shapes only: meta tensors skip the arithmetic. Modules that cannot run on
    # the meta device (a Hugging Face GPT-2) are counted on CPU zeros instead, from a copy kept
    # aside: moving to meta drops the weights and buffers the CPU run needs.
    for device in ("meta", "cpu"):
        try:
            work = copy.deepcopy(module) if device == "meta" else module
            work.to(device=device, dtype=torch.float32)
            with FlopCounterMode(display=False) as counter, torch.inference_mode():
                work(torch.zeros(shape, device=device, dtype=torch.long if integer else torch.float32))
            return int(counter.get_total_flops())
        except (NotImplementedError, RuntimeError):
            if device == "cpu":
                raise
    raise AssertionError("unreachable")


# -- FLOPs and parameters ----------------------------------------------------------------------
@keep_rng_state()
def build_params_table(supernet: Supernet, *, base: Mapping[str, Any] | None = None) -> BilinearTable:
    """Parameter counts: ``block[s, b, c]`` = parameters of block ``b`` of stage ``s`` exported
    with config ``c``; ``constant`` = parameters of the rest of the network.

    Args:
        supernet: the supernet (only read: exports are copies).
        base: arch giving the labels outside the blocks (default: the largest).

    Returns:
        A ``BilinearTable`` with ``name="params"``, ``unit="params"``; exact for every arch whose
        non-block decisions equal ``base``'s.
    """
    _check_supernet(supernet)
    staged = StagedSpace.of(supernet)
    base = supernet.space.validate(base) if base is not None else supernet.space.largest()
    block = np.zeros((staged.num_stages, staged.max_blocks, staged.num_configs))
    for s, b, c, module in _block_exports(supernet, staged, base):
        block[s, b, c] = _unique_parameters(module)
    probe = BilinearTable(staged, 0.0, block, name="params")
    constant = _unique_parameters(supernet.export(base)) - probe.predict(base)
    return BilinearTable(
        staged, constant, block, name="params", unit="params",
        metadata={"profiler_version": PROFILER_VERSION, "model": model_signature(supernet), "base_arch": base},
    )


@keep_rng_state()
def build_flops_table(supernet: Supernet, input_size: Sequence[int], *, base: Mapping[str, Any] | None = None,
                      vocab_size: int | None = None) -> BilinearTable:
    """FLOPs at batch 1, in MFLOPs, counted by ``torch.utils.flop_counter.FlopCounterMode``.

    ``FlopCounterMode`` counts matrix products and convolutions, 2 FLOPs per multiply-accumulate
    (normalisation, activations and additions are not counted). ``block[s, b, c]`` is the count
    of block ``b`` of stage ``s`` exported with config ``c`` on its real input shape; ``constant``
    the rest of the network (stem, head).

    Args:
        supernet: the supernet (only read).
        input_size: ``(C, H, W)`` of one example (``(seq_len,)`` for token inputs).
        base: arch giving the labels outside the blocks (default: the largest).
        vocab_size: the network takes token ids (see :class:`ProfileSettings`); ``None``: floats.
    """
    _check_supernet(supernet)
    staged = StagedSpace.of(supernet)
    base = supernet.space.validate(base) if base is not None else supernet.space.largest()
    shape = (1, *_input_size(input_size))
    shapes = block_shapes(supernet, shape, staged, vocab_size=vocab_size)
    integer = integer_input_units(supernet, shape, vocab_size, staged)
    block = np.zeros((staged.num_stages, staged.max_blocks, staged.num_configs))
    for s, b, c, module in _block_exports(supernet, staged, base):
        block[s, b, c] = _flops(module, shapes[s][b][c][0], (s, b) in integer) / 1e6
    probe = BilinearTable(staged, 0.0, block, name="flops")
    constant = _flops(supernet.export(base), shape, vocab_size is not None) / 1e6 - probe.predict(base)
    return BilinearTable(
        staged, constant, block, name="flops", unit="MFLOPs",
        metadata={
            "profiler_version": PROFILER_VERSION, "model": model_signature(supernet), "input_size": list(shape[1:]),
            "batch_size": 1, "counter": "torch.utils.flop_counter.FlopCounterMode", "base_arch": base,
            **({} if vocab_size is None else {"vocab_size": vocab_size}),
        },
    )


def _input_size(input_size: Sequence[int]) -> Shape:
    if not isinstance(input_size, Sequence) or not input_size or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in input_size):
        raise ValueError(f"`input_size` must be a non-empty tuple of positive ints such as (3, 32, 32), got {input_size!r}")
    return tuple(input_size)


# -- latency -----------------------------------------------------------------------------------
@keep_rng_state()
def time_archs(supernet: Supernet, archs: Sequence[Mapping[str, Any]], settings: ProfileSettings, *, seed: int = 0) -> list[TimingResult]:
    """End-to-end latency of each arch's exported network at ``settings`` (one ``TimingResult`` each).

    All archs are exported first (the supernet is only read), then timed in interleaved rounds
    (:func:`~lightning_nas.profiling.timing.time_modules`).
    """
    _check_supernet(supernet)
    subnets = [supernet.export(arch) for arch in archs]
    return time_modules([_timed(subnet, settings.batch_shape, settings.vocab_size) for subnet in subnets], settings, seed=seed)


@keep_rng_state()
def build_latency_table(
    supernet: Supernet,
    settings: ProfileSettings,
    *,
    calibration_archs: int = 10,
    fit_archs: int = 0,
    seed: int = 0,
    base: Mapping[str, Any] | None = None,
    progress: Progress = None,
) -> BilinearTable:
    """Measure every block configuration and the fixed part (BINAS's latency lookup table).

    Args:
        supernet: the supernet (only read: profiling runs on exported copies).
        settings: input size, batch size, device, dtype, threads, warm-up and repeats.
        calibration_archs: random archs whose end-to-end time fixes the constant (at least 1).
        fit_archs: ``0`` (default): the table is the blocks timed alone plus the fixed part
            (BINAS Eq. 5). ``N > 0``: ``N`` more random whole subnets are timed in the same
            interleaved rounds as the blocks, and every entry is fitted to them and to the
            calibration subnets (:func:`~lightning_nas.profiling.fit.fit_table`, the block table
            as prior); needs ``calibration_archs + N >= 5`` (the held-out error's folds). Use it
            where blocks take tens of µs (ONNX Runtime or TorchScript at 32×32), where a block
            alone and the same block inside a network differ by per-call costs and fusion.
        seed: seed of the calibration and fit archs and of the random inputs.
        base: arch giving the labels outside the blocks (default: the largest).
        progress: called with short progress messages.

    Returns:
        ``BilinearTable(name="latency", unit="ms")``: ``block[s, b, c]`` milliseconds of the block
        alone (``settings.statistic`` of the repeats: the median by default); ``constant`` the
        estimated fixed part; ``metadata`` the settings, the device, the model signature,
        per-entry statistics (``spread``: arrays ``(S, D, C)`` of each statistic of
        :data:`~lightning_nas.profiling.timing.STATISTICS`, p10 and p90), the calibration
        residuals and the number of distinct measurements. With ``fit_archs``, the entries (and
        per-stage depth terms) are the fitted ones and ``metadata["fit"]`` records the fit (see
        :func:`latency_table_of`): the measured subnets, how the fit was made and its held-out
        error beside that of the block table; ``spread`` and ``constant_estimate`` keep the
        blocks' own measurements.
    """
    _check_supernet(supernet)
    _check_seed(seed)
    if not isinstance(calibration_archs, int) or isinstance(calibration_archs, bool) or calibration_archs < 1:
        raise ValueError(f"`calibration_archs` must be an int >= 1, got {calibration_archs!r}")
    check_fit_archs(fit_archs, calibration_archs)
    started = time.perf_counter()
    staged = StagedSpace.of(supernet)
    base = supernet.space.validate(base) if base is not None else supernet.space.largest()
    shapes = block_shapes(supernet, settings.batch_shape, staged, vocab_size=settings.vocab_size)
    integer = integer_input_units(supernet, settings.batch_shape, settings.vocab_size, staged)
    full = (staged.num_stages, staged.max_blocks, staged.num_configs)
    p10, p90 = np.zeros(full), np.zeros(full)
    by_statistic = {stat: np.zeros(full) for stat in STATISTICS}
    # Identical blocks (same exported layers, same shapes) share one measurement.
    keys, unique = np.empty(full, dtype=object), {}
    for s, b, c, module in _block_exports(supernet, staged, base):
        in_shape, out_shape = shapes[s][b][c]
        vocab = settings.vocab_size if (s, b) in integer else None  # a token embedding is timed on token ids
        key = f"{module!r}|in={in_shape}|out={out_shape}" + ("" if vocab is None else f"|tokens<{vocab}")
        keys[s, b, c] = key
        unique.setdefault(key, _timed(module, in_shape, vocab))
    archs = supernet.space.sample_many(calibration_archs, derive_seed(seed, CALIBRATION_STREAM))
    fitted = supernet.space.sample_many(fit_archs, derive_seed(seed, FIT_STREAM)) if fit_archs else []
    calibration = [_timed(supernet.export(arch), settings.batch_shape, settings.vocab_size) for arch in archs + fitted]
    if progress is not None:
        progress(
            f"timing {len(unique)} distinct blocks for {int(staged.config_exists().sum())} entries, "
            f"{calibration_archs} calibration subnets{f' and {fit_archs} fit subnets' if fit_archs else ''}, "
            f"in {settings.rounds} interleaved rounds"
        )
    # Blocks and calibration subnets share the rounds, so the fixed part is estimated under the
    # same machine conditions as the block entries it completes.
    # A converted runtime runs a whole network as one call, but each block timed alone pays the call's
    # fixed cost (ONNX Runtime's session.run: ~5 µs, as much as a small block's work). An empty graph
    # timed in the same rounds measures that cost; it is taken off every block entry and the fixed
    # part, estimated below from whole subnets, keeps the one call they really make. Eager runs call
    # every block as a module inside the network too, so nothing is taken off there.
    empty = [_timed(nn.Identity(), settings.batch_shape, settings.vocab_size)] if settings.runtime != "eager" else []
    timed = time_modules(list(unique.values()) + calibration + empty, settings, seed=seed)
    results, whole = dict(zip(unique, timed[: len(unique)])), timed[len(unique) : len(unique) + len(calibration)]
    timings, fit_timings = whole[:calibration_archs], whole[calibration_archs:]
    # One number off every statistic of an entry keeps min <= p10 <= median <= p90.
    overhead = timed[-1].value(settings.statistic) if empty else 0.0
    del calibration
    for at in zip(*np.nonzero(keys != None)):  # noqa: E711 (an object array; units without a module stay 0 ms)
        result = results[keys[at]]
        p10[at], p90[at] = max(result.p10_ms - overhead, 0.0), max(result.p90_ms - overhead, 0.0)
        for stat, arr in by_statistic.items():
            arr[at] = max(result.value(stat) - overhead, 0.0)
    value = by_statistic[settings.statistic]
    blocks_only = BilinearTable(staged, 0.0, value, name="latency")
    residuals = np.array([t.value(settings.statistic) for t in timings]) - blocks_only.predict_many(archs)
    constant = float(np.median(residuals))
    if progress is not None:
        progress(f"fixed part {constant:.4f} ms (median over {calibration_archs} calibration archs)")
    metadata = {
        "profiler": "lightning_nas.profiling",
        "profiler_version": PROFILER_VERSION,
        "settings": settings.to_dict(),
        "device": device_info(settings),
        "model": model_signature(supernet),
        "created": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "build_seconds": round(time.perf_counter() - started, 3),
        "seed": seed,
        "base_arch": base,
        "entries": int(staged.config_exists().sum()),
        "measurements": len(unique),
        "spread": {**{stat: arr.tolist() for stat, arr in by_statistic.items()}, "p10": p10.tolist(), "p90": p90.tolist()},
        # Taken off every statistic of every block entry (the empty graph's settings.statistic); 0 in eager.
        "call_overhead_ms": overhead,
        "constant_estimate": {
            "method": f"median over calibration archs of (end-to-end {settings.statistic} - sum of block entries)",
            "calibration_archs": calibration_archs,
            "residuals_ms": residuals.tolist(),
            # Every statistic, so a table of another one can be derived without re-measuring.
            "residuals_by_statistic_ms": {
                stat: (np.array([t.value(stat) for t in timings]) - BilinearTable(staged, 0.0, arr, name="latency").predict_many(archs)).tolist()
                for stat, arr in by_statistic.items()
            },
        },
    }
    if not fit_archs:
        return BilinearTable(staged, constant, value, name="latency", unit="ms", metadata=metadata)
    metadata["fit"] = {
        "method": FIT_METHOD,
        "subnets": fit_archs,
        "stream": FIT_STREAM,
        "ridges": list(FIT_RIDGES),
        "folds": FIT_FOLDS,
        # The fit's own archs; the calibration archs (fitted too) follow from the seed.
        "archs": fitted,
        # Every statistic, like the residuals: the table of another one is fitted without re-measuring.
        "measured_by_statistic_ms": {stat: [t.value(stat) for t in fit_timings] for stat in STATISTICS},
    }
    table = latency_table_of(BilinearTable(staged, constant, value, name="latency", unit="ms", metadata=metadata), supernet)
    if progress is not None:
        summary = table.metadata["fit"]
        progress(fit_summary(summary))
    return table


def check_fit_archs(fit_archs: Any, calibration_archs: int) -> int:
    """``fit_archs`` of :func:`build_latency_table` if valid with ``calibration_archs``, else a ``ValueError``
    naming it (an int >= 0; when positive, at least 5 whole subnets in all for the held-out folds)."""
    if not isinstance(fit_archs, int) or isinstance(fit_archs, bool) or fit_archs < 0:
        raise ValueError(f"`fit_archs` must be an int >= 0 (0: no fit), got {fit_archs!r}")
    if fit_archs and calibration_archs + fit_archs < max(3, FIT_FOLDS):
        raise ValueError(
            f"`fit_archs` + `calibration_archs` must be at least {max(3, FIT_FOLDS)} whole subnets to fit the table and measure "
            f"its held-out error, got {fit_archs} + {calibration_archs}"
        )
    return fit_archs


def fit_summary(fit: Mapping[str, Any]) -> str:
    """One line on a latency table's ``metadata["fit"]``: which table was kept and its held-out error."""
    blocks = fit["blocks_error"]["mape_percent"]
    if fit["chosen"] == "blocks":
        best = min(c["mape_percent"] for c in fit["candidates"][1:])
        return (f"fit to {fit['measurements']} whole subnets not kept: the best fit's held-out MAPE ({best:.2f} %) is not "
                f"{100 * fit['min_gain']:.0f} % below the block table's error on them ({blocks:.2f} %)")
    return (f"entries fitted to {fit['measurements']} whole subnets (ridge {fit['ridge']:g}): held-out MAPE "
            f"{fit['heldout']['mape_percent']:.2f} % (max {fit['heldout']['max_error_percent']:.2f} %), the block table's "
            f"{blocks:.2f} %; safety margin {100 * fit['margin']:.2f} %")


def fitted_subnets(metadata: Mapping[str, Any] | None) -> int:
    """How many fit subnets a latency table's ``metadata`` records (``fit_archs`` of its build; 0 for
    a table of blocks alone, including every table made before fitting existed)."""
    fit = (metadata or {}).get("fit") if isinstance(metadata, Mapping) else None
    return int(fit.get("subnets", 0)) if isinstance(fit, Mapping) else 0


def latency_table_of(table: BilinearTable, supernet: Supernet, statistic: str | None = None, *, fitted: bool = True) -> BilinearTable:
    """A latency table of ``statistic`` rebuilt from what ``build_latency_table`` measured, without re-measuring.

    The block entries are ``metadata["spread"][statistic]`` and the fixed part the median of the
    calibration residuals of that statistic (BINAS Eq. 5). When the build timed fit subnets
    (``fit_archs``) and ``fitted`` is true, every entry, each stage's depth terms and the constant
    are then fitted by ridge least squares to the calibration and fit subnets' end-to-end times
    (:func:`~lightning_nas.profiling.fit.fit_table` with that block table as prior, rescaled
    first, so entries the subnets do not pin down keep the blocks' values), at each ridge weight
    of ``metadata["fit"]["ridges"]``. The fit of least ``folds``-fold cross-validated MAPE replaces
    the block table only when that error is at least 10 % (``FIT_MIN_GAIN``) below the block
    table's MAPE on the same subnets (only its constant came from some of them). So a fit that
    follows noise (outlier subnet times on a loaded machine, about as many subnets as entries)
    is not kept. The least of five cross-validated errors is slightly optimistic.

    The result's ``metadata["fit"]`` adds ``statistic``, ``chosen`` (``"fitted"`` or
    ``"blocks"``), ``ridge`` (``None`` for the block table), ``heldout`` (the chosen table's
    ``mape_percent``, ``max_error_percent``, ``rmse`` in ms), ``blocks_error`` (the block
    table's), ``prior_heldout`` (the block table rescaled to the subnets, cross-validated),
    ``candidates`` (every candidate's MAPE), ``measurements`` and ``margin`` (90th percentile of
    the held-out under-prediction, see :meth:`~lightning_nas.profiling.fit.TableFit.safe_upper`).

    Args:
        table: a table made by :func:`build_latency_table` (its metadata holds the measurements).
        supernet: the supernet it was built for (to redraw the calibration archs from the seed).
        statistic: one of :data:`~lightning_nas.profiling.timing.STATISTICS` (default: the table's own).
        fitted: ``False``: the block table only, even when fit subnets were measured.

    Raises:
        ValueError: a table whose metadata lacks the measurements, or an unknown statistic.
    """
    meta = table.metadata if isinstance(table.metadata, Mapping) else {}
    statistic = statistic or (meta.get("settings") or {}).get("statistic", "median")
    if statistic not in STATISTICS:
        raise ValueError(f"`statistic` must be one of {STATISTICS}, got {statistic!r}")
    try:
        estimate = meta["constant_estimate"]
        blocks = np.asarray(meta["spread"][statistic], dtype=np.float64)
        residuals = np.asarray(estimate["residuals_by_statistic_ms"][statistic], dtype=np.float64)
    except (KeyError, TypeError) as err:
        raise ValueError(
            f"table {table.name!r} has no per-statistic measurements of {statistic!r} in its metadata (made by build_latency_table "
            f"before the statistic {statistic!r} existed?): {type(err).__name__}: {err}"
        ) from err
    blocks_table = BilinearTable(table.staged, float(np.median(residuals)), blocks, name="latency", unit="ms", metadata=dict(meta))
    fit = meta.get("fit")
    if not fitted or not isinstance(fit, Mapping):
        blocks_table.metadata.pop("fit", None)
        return blocks_table
    calibration = supernet.space.sample_many(int(estimate["calibration_archs"]), derive_seed(int(meta["seed"]), CALIBRATION_STREAM))
    archs = calibration + [supernet.space.validate(a) for a in fit["archs"]]
    # The calibration subnets' end-to-end times are what their residuals were computed from.
    measured = np.concatenate([residuals + BilinearTable(table.staged, 0.0, blocks, name="latency").predict_many(calibration),
                               np.asarray(fit["measured_by_statistic_ms"][statistic], dtype=np.float64)])
    chosen, summary = _choose_fit(blocks_table, archs, measured, [float(r) for r in fit["ridges"]], int(fit["folds"]), int(meta["seed"]))
    return BilinearTable(table.staged, chosen.constant, chosen.block, chosen.depth, name="latency", unit="ms",
                         metadata={**meta, "fit": {**fit, "statistic": statistic, **summary}})


def _choose_fit(blocks: BilinearTable, archs: list[dict[str, Any]], measured: np.ndarray, ridges: list[float], folds: int,
                seed: int) -> tuple[BilinearTable, dict[str, Any]]:
    """``blocks`` or its fit at one of ``ridges``, by their error on networks they were not fitted
    on: each fit's cross-validated MAPE against the block table's MAPE on all ``measured`` subnets
    (only its constant came from some of them). The best fit is kept only when its error is at
    least ``FIT_MIN_GAIN`` below the block table's: whole-subnet times under load carry outliers a
    least-squares fit follows, a fit with about as many subnets as entries interpolates their
    noise, and the least of several cross-validated errors is optimistic."""
    from lightning_nas.profiling.fit import fit_table

    predicted = blocks.predict_many(archs)
    ratio = measured / predicted - 1.0
    blocks_error = {"mape_percent": float(np.mean(np.abs(predicted / measured - 1.0)) * 100),
                    "max_error_percent": float(np.abs(ratio).max() * 100), "rmse": float(np.sqrt(np.mean((predicted - measured) ** 2)))}
    candidates = [{"table": "blocks", "mape_percent": blocks_error["mape_percent"]}]
    fits = [fit_table(blocks.staged, archs, measured, prior=blocks, ridge=ridge, folds=folds, seed=seed, name="latency", unit="ms")
            for ridge in ridges]
    candidates += [{"table": "fitted", "ridge": ridge, "mape_percent": f.heldout["mape_percent"]} for ridge, f in zip(ridges, fits)]
    best = int(np.argmin([f.heldout["mape_percent"] for f in fits]))
    common = {"measurements": int(measured.size), "blocks_error": blocks_error, "prior_heldout": fits[best].prior_heldout,
              "candidates": candidates, "min_gain": FIT_MIN_GAIN}
    if fits[best].heldout["mape_percent"] < (1.0 - FIT_MIN_GAIN) * blocks_error["mape_percent"]:
        return fits[best].table, {"chosen": "fitted", "ridge": ridges[best], "heldout": fits[best].heldout,
                                  "margin": fits[best].margin, "quantile": fits[best].quantile, **common}
    return blocks, {"chosen": "blocks", "ridge": None, "heldout": blocks_error, "margin": max(0.0, float(np.quantile(ratio, 0.9))),
                    "quantile": 0.9, **common}


# -- reuse or rebuild --------------------------------------------------------------------------
def settings_of(table: BilinearTable) -> ProfileSettings:
    """The ``ProfileSettings`` a latency table was measured with (from its metadata)."""
    try:
        raw = dict(table.metadata["settings"])
    except (KeyError, TypeError) as err:
        raise ValueError(f"table {table.name!r} has no profiling settings in its metadata") from err
    raw["input_size"] = tuple(raw["input_size"])
    return ProfileSettings(**raw)


def stale_reasons(metadata: Mapping[str, Any], supernet: Supernet, settings: ProfileSettings, *,
                  fit_archs: int | None = None) -> list[str]:
    """Why a table with ``metadata`` does not apply to ``supernet`` measured with ``settings`` here
    (an empty list when it does); with ``fit_archs``, also when the table was fitted to another
    number of whole subnets (:func:`build_latency_table`; 0: not fitted)."""
    reasons = []
    if fit_archs is not None and fitted_subnets(metadata) != fit_archs:
        reasons.append(f"fitted to {fitted_subnets(metadata)} fit subnets, now {fit_archs} asked (fit_archs)")
    if metadata.get("profiler_version") != PROFILER_VERSION:
        reasons.append(f"profiler version {metadata.get('profiler_version')!r} != {PROFILER_VERSION}")
    if metadata.get("model") != model_signature(supernet):
        reasons.append("the supernet differs (model signature changed)")
    if (metadata.get("settings") or {}).get("vocab_size") != settings.vocab_size:
        # Not in to_dict() for float inputs, so the loop below would not see a token table used for floats.
        reasons.append(f"settings.vocab_size is {(metadata.get('settings') or {}).get('vocab_size')!r}, now {settings.vocab_size!r}")
    expected = {"settings": {k: v for k, v in settings.to_dict().items() if k != "vocab_size"}, "device": device_info(settings)}
    for group, want in expected.items():
        have = metadata.get(group) or {}
        for key, value in want.items():
            if have.get(key) != value:
                reasons.append(f"{group}.{key} is {have.get(key)!r}, now {value!r}")
    return reasons


def backup_path(path: str | Path) -> Path:
    """The first free ``<name>.bak``, ``<name>.bak.1``, ... next to ``path``."""
    path = Path(path)
    candidate, n = path.with_name(path.name + ".bak"), 0
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{path.name}.bak.{n}")
    return candidate


def _atomic_copy(source: Path, target: Path) -> None:
    try:
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    except OSError as err:
        raise type(err)(err.errno, f"cannot back up {str(source)!r} as {str(target)!r}: {err.strerror}; "
                                   f"{str(source)!r} is unchanged") from err
    os.close(fd)
    try:
        shutil.copy2(source, tmp)
        os.replace(tmp, target)
    except OSError as err:
        Path(tmp).unlink(missing_ok=True)
        # The table is not rebuilt over a file that could not be backed up (a full disk, say).
        raise type(err)(err.errno, f"cannot back up {str(source)!r} as {str(target)!r}: {err.strerror}; "
                                   f"{str(source)!r} is unchanged") from err
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@keep_rng_state()
def load_or_build(
    supernet: Supernet,
    path: str | Path,
    settings: ProfileSettings,
    *,
    rebuild: bool = False,
    calibration_archs: int = 10,
    fit_archs: int = 0,
    seed: int = 0,
    progress: Progress = None,
) -> BilinearTable:
    """The latency table at ``path`` if it was made for this supernet, settings and device; else a
    new one, written to ``path``.

    A stale or unreadable file is never lost: it is copied to :func:`backup_path` before the new
    table atomically replaces it, and the reason is logged (logger ``lightning_nas.profiling``).

    Args:
        supernet: the supernet.
        path: the table's JSON file.
        settings: how to measure.
        rebuild: rebuild even when the file is valid.
        calibration_archs: see :func:`build_latency_table`.
        fit_archs: see :func:`build_latency_table`; a table fitted to another number of subnets
            (a table of blocks alone, for ``fit_archs > 0``) is rebuilt.
        seed: see :func:`build_latency_table`.
        progress: see :func:`build_latency_table`.
    """
    _check_supernet(supernet)
    check_fit_archs(fit_archs, calibration_archs)
    path = Path(path)
    # Checked before a build that can take minutes, not when its result is saved.
    check_writable(path, "latency table path")
    reasons: list[str] = []
    if rebuild:
        reasons.append("rebuild requested")
    elif not path.exists():
        reasons.append("no table file yet")
    else:
        try:
            # Any content is possible in a file a user points at; whatever it is, it is kept as
            # .bak and the reason logged, never a crash inside the parser.
            table = BilinearTable.from_dict(read_json(path, "latency table"), StagedSpace.of(supernet))
            if not np.isfinite(table.constant):
                raise ValueError(f"its fixed part (constant) is {table.constant}, not a finite number of ms")
        except (ValueError, KeyError, TypeError, AttributeError, IndexError, OSError) as err:
            reasons.append(f"cannot read it ({type(err).__name__}: {err})")
        else:
            if table.name != "latency":
                reasons.append(f"it holds a {table.name!r} table, not latency")
            if not isinstance(table.metadata, Mapping):
                reasons.append("its metadata is not an object")
            else:
                reasons += stale_reasons(table.metadata, supernet, settings, fit_archs=fit_archs)
            if not reasons:
                log.info("latency table %s reused (same supernet, settings and device)", path)
                return table
    existed = path.exists()
    if existed:
        log.warning("latency table %s is rebuilt: %s", path, "; ".join(reasons))
    else:
        log.info("building latency table %s", path)
    table = build_latency_table(supernet, settings, calibration_archs=calibration_archs, fit_archs=fit_archs, seed=seed,
                                progress=progress)
    if existed:
        backup = backup_path(path)
        # A copy, not a rename: the path keeps a complete file until the new one replaces it.
        _atomic_copy(path, backup)
        log.warning("previous table kept as %s", backup)
    table.save(path)
    return table
