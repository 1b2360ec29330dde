"""Timing one module's forward pass on CPU or CUDA, and describing the machine that timed it.

The rules follow the latency tables of BINAS / HardCoRe-NAS: the module runs in eval mode under
``torch.inference_mode()``, after untimed warm-up calls, a fixed number of times; CPU runs use a
fixed thread count (BINAS: one thread) and CUDA runs are timed with ``torch.cuda.Event`` pairs.
Every repeat is one forward call; the result keeps the median, the minimum, the median of each
round's minimum and the spread (10th and 90th percentiles), in milliseconds. Several modules
timed together are interleaved in rounds so that machine noise hits them alike. ``settings.runtime`` picks what is timed: the module in
PyTorch eager (default), frozen TorchScript or ONNX Runtime (see :mod:`.runtimes`); every table,
calibration and check goes through :func:`time_modules`, so all of them use it.

Example::

    settings = ProfileSettings(input_size=(3, 32, 32), repeats=100)
    result = time_module(subnet, (1, 3, 32, 32), settings)      # TimingResult(median_ms=0.41, ...)
"""

from __future__ import annotations

import contextlib
import ctypes
import platform
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from lightning_nas.profiling.runtimes import RUNTIMES, check_runtime, runtime_callable, runtime_version

__all__ = [
    "DTYPES",
    "RUNTIMES",
    "STATISTICS",
    "ProfileSettings",
    "TimingResult",
    "cpu_model",
    "device_info",
    "example_input",
    "num_threads",
    "pin_malloc_thresholds",
    "time_module",
    "time_modules",
]

DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "float64": torch.float64}
STATISTICS = ("median", "min", "median_of_mins")


def _positive_int(name: str, value: Any, minimum: int = 1) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"`{name}` must be an int >= {minimum}, got {value!r}")
    return value


@dataclass(frozen=True)
class ProfileSettings:
    """How latencies are measured; two tables are comparable only when their settings match.

    Args:
        input_size: ``(C, H, W)`` of one example fed to the network.
        batch_size: examples per forward call (BINAS: 1 on CPU, 64 on GPU).
        threads: ``torch.set_num_threads`` while timing (restored afterwards).
        repeats: timed forward calls per measurement.
        warmup: untimed forward calls before them.
        rounds: when several modules are timed together (all blocks of a table, all checked
            subnets), their repeats are split into this many interleaved rounds (see
            :func:`time_modules`).
        device: ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        dtype: ``"float32"``, ``"float16"``, ``"bfloat16"`` or ``"float64"``.
        statistic: what a table stores per entry: ``"median"`` of the repeats (the default),
            ``"min"`` (the fastest repeat), or ``"median_of_mins"``: the repeats are split into
            ``rounds`` (see :func:`time_modules`) and this is the median over the rounds of each
            round's fastest call. On a machine shared with other jobs the median is slowed by
            them, and the minimum is set by the luckiest call: a virtual machine also has spells
            ~40 % *faster* than usual, and a module timed in one of them kept that time. Timing
            100 subnets four times (2-core VM, 50 repeats in 5 rounds), the 90th percentile of
            one subnet's disagreement between two timings was 5.4 %, 5.1 % and 10.2 % for the
            median of minima (idle, beside one and beside two busy threads); 60 %, 17 % and 11 %
            for the minimum; 5.0 %, 4.7 % and 112 % for the median
            (``benchmarks/timing_statistics.py`` in ``benchmarks/RESULTS.md``).
        pin_malloc: on CPU, call :func:`pin_malloc_thresholds` before timing (process-wide and
            irreversible, so off by default). Recommended for large inputs (e.g. 224×224), where
            glibc's adaptive allocator otherwise makes whole networks slower than their blocks.
        runtime: what is timed: ``"eager"`` (the PyTorch module, the default), ``"torchscript"``
            (traced and frozen) or ``"onnxruntime"`` (exported to ONNX,
            run in an ONNX Runtime session with ``threads`` intra-op threads; needs
            ``pip install 'lightning-nas[onnx]'``). The converted runtimes are CPU only, ONNX
            Runtime float32 only. See :mod:`lightning_nas.profiling.runtimes`.
        vocab_size: ``None`` (default) for float inputs; an int for a language model, whose input
            is then integer token ids of shape ``(batch_size, *input_size)`` (``input_size =
            (seq_len,)``) drawn uniformly from ``[0, vocab_size)``. Blocks inside the network are
            timed on what they really receive (float activations after the embedding).
    """

    input_size: tuple[int, ...]
    batch_size: int = 1
    threads: int = 1
    repeats: int = 100
    warmup: int = 10
    rounds: int = 5
    device: str = "cpu"
    dtype: str = "float32"
    statistic: str = "median"
    pin_malloc: bool = False
    runtime: str = "eager"
    vocab_size: int | None = None

    def __post_init__(self) -> None:
        size = self.input_size
        if not isinstance(size, Sequence) or not size or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size):
            raise ValueError(f"`input_size` must be a non-empty tuple of positive ints such as (3, 32, 32), got {size!r}")
        object.__setattr__(self, "input_size", tuple(size))
        _positive_int("batch_size", self.batch_size)
        _positive_int("threads", self.threads)
        _positive_int("repeats", self.repeats)
        _positive_int("warmup", self.warmup, minimum=0)
        _positive_int("rounds", self.rounds)
        if self.vocab_size is not None:
            _positive_int("vocab_size", self.vocab_size)
        if not isinstance(self.pin_malloc, bool):
            raise ValueError(f"`pin_malloc` must be a bool, got {self.pin_malloc!r}")
        if self.statistic not in STATISTICS:
            raise ValueError(f"`statistic` must be one of {STATISTICS}, got {self.statistic!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"`dtype` must be one of {sorted(DTYPES)}, got {self.dtype!r}")
        try:
            device = torch.device(self.device)
        except (RuntimeError, TypeError) as err:
            raise ValueError(f"`device` must be 'cpu', 'cuda' or 'cuda:N', got {self.device!r}") from err
        if device.type not in ("cpu", "cuda"):
            raise ValueError(f"`device` must be 'cpu', 'cuda' or 'cuda:N', got {self.device!r}")
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"`device` is {self.device!r} but CUDA is not available on this machine; use 'cpu'")
        check_runtime(self.runtime, device, self.dtype)

    @property
    def torch_device(self) -> torch.device:
        return torch.device(self.device)

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    @property
    def batch_shape(self) -> tuple[int, ...]:
        """``(batch_size, *input_size)``: the network's input shape."""
        return (self.batch_size, *self.input_size)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["input_size"] = list(self.input_size)
        if out["vocab_size"] is None:
            # Float-input settings keep the keys of tables written before token inputs existed.
            del out["vocab_size"]
        return out


def example_input(shape: Sequence[int], vocab_size: int | None = None, *, seed: int = 0) -> torch.Tensor:
    """A random CPU input of ``shape`` (batch included): standard-normal floats, or with
    ``vocab_size`` integer token ids (``torch.long``) uniform in ``[0, vocab_size)``."""
    generator = torch.Generator().manual_seed(seed)
    if vocab_size is None:
        return torch.randn(tuple(shape), generator=generator)
    return torch.randint(0, _positive_int("vocab_size", vocab_size), tuple(shape), generator=generator)


@dataclass(frozen=True)
class TimingResult:
    """Forward-pass time of one module, in milliseconds.

    Attributes:
        median_ms: median over the repeats (what tables store by default).
        p10_ms, p90_ms: 10th and 90th percentiles (the spread).
        mean_ms: mean over the repeats.
        min_ms: the fastest repeat.
        median_of_mins_ms: the median over the rounds of each round's fastest repeat (``min_ms``
            when the repeats ran in one round).
        samples_ms: every timed repeat, in order.
    """

    median_ms: float
    p10_ms: float
    p90_ms: float
    mean_ms: float
    min_ms: float
    median_of_mins_ms: float
    samples_ms: tuple[float, ...] = field(repr=False)

    def value(self, statistic: str = "median") -> float:
        """The time of ``statistic`` (one of :data:`STATISTICS`), in milliseconds."""
        if statistic not in STATISTICS:
            raise ValueError(f"`statistic` must be one of {STATISTICS}, got {statistic!r}")
        return {"median": self.median_ms, "min": self.min_ms, "median_of_mins": self.median_of_mins_ms}[statistic]

    @classmethod
    def from_samples(cls, samples_ms: Sequence[float], rounds: Sequence[int] | None = None) -> "TimingResult":
        """The statistics of ``samples_ms`` (ms, in the order they were timed); ``rounds``: how many
        consecutive samples each round holds (default: all in one round)."""
        values = np.asarray(samples_ms, dtype=np.float64)
        if values.size == 0:
            raise ValueError("`samples_ms` must hold at least one timing")
        sizes = [values.size] if rounds is None else [int(n) for n in rounds]
        if any(n < 1 for n in sizes) or sum(sizes) != values.size:
            raise ValueError(f"`rounds` must be positive sizes summing to the {values.size} samples, got {list(rounds or [])}")
        minima = [chunk.min() for chunk in np.split(values, np.cumsum(sizes)[:-1])]
        p10, median, p90 = np.percentile(values, [10, 50, 90])
        return cls(float(median), float(p10), float(p90), float(values.mean()), float(values.min()), float(np.median(minima)),
                   tuple(float(v) for v in values))


@contextlib.contextmanager
def num_threads(threads: int) -> Iterator[None]:
    """``torch.set_num_threads(threads)`` inside the block; the previous count is restored on exit."""
    _positive_int("threads", threads)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@contextlib.contextmanager
def _eval_mode(module: nn.Module) -> Iterator[None]:
    # Remember every submodule's flag: a user may keep parts of a network in eval on purpose.
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


def time_module(module: nn.Module, input_shape: Sequence[int], settings: ProfileSettings, *, seed: int = 0) -> TimingResult:
    """Time ``module`` on a random input of ``input_shape``.

    The module and input are moved to ``settings.device`` / ``settings.dtype`` and the module's
    weights to the default (contiguous) memory layout (in place: pass a copy if that matters);
    its train/eval flags are restored afterwards, and so is the thread count.

    Args:
        module: the module; called as ``module(x)``.
        input_shape: full input shape, batch dimension included (e.g. ``(1, 16, 16, 16)``).
        settings: device, dtype, threads, warm-up, repeats and rounds.
        seed: seed of the random input.

    Returns:
        Median and spread of ``settings.repeats`` timed calls, in milliseconds.
    """
    return time_modules([(module, input_shape)], settings, seed=seed)[0]


def time_modules(items: Sequence[tuple[nn.Module, Sequence[int]]], settings: ProfileSettings, *, seed: int = 0) -> list[TimingResult]:
    """Time several modules, interleaved: ``settings.rounds`` rounds, each timing every module in turn
    (in a new order each round, drawn from ``seed``).

    A slow spell of the machine (another job, a frequency change) then lands on every module
    alike instead of on whichever was being timed, so the *ratios* between the results (what an
    additive latency model needs) stay right. Each module gets ``settings.warmup`` untimed calls
    before its first round and one before each later round, and ``settings.repeats`` timed calls
    in all, split evenly over the rounds.

    Args:
        items: ``(module, input_shape)`` pairs, shapes with the batch dimension (see
            :func:`time_module`), or ``(module, input_shape, vocab_size)`` triples for modules
            that take token ids (see :func:`example_input`; ``None`` for floats).
        settings: device, dtype, threads, warm-up, repeats and rounds.
        seed: seed of the random inputs (the same seed for every module) and of the rounds' orders.

    Returns:
        One ``TimingResult`` per item, in order, in milliseconds.
    """
    device, dtype = settings.torch_device, settings.torch_dtype
    prepared = []
    for item in items:
        if not isinstance(item, (tuple, list)) or len(item) not in (2, 3):
            raise ValueError(f"`items` must hold (module, input_shape) or (module, input_shape, vocab_size) tuples, got {item!r}")
        module, input_shape, vocab = (*item, None) if len(item) == 2 else item
        if not isinstance(module, nn.Module):
            raise ValueError(f"`module` must be an nn.Module, got {type(module).__name__}")
        shape = tuple(input_shape)
        if not shape or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in shape):
            raise ValueError(f"`input_shape` must be a tuple of positive ints, got {input_shape!r}")
        x = example_input(shape, vocab, seed=seed)
        x = x.to(device=device) if vocab is not None else x.to(device=device, dtype=dtype)  # token ids stay integers
        # Weights in the default layout, as the inputs: a supernet trained channels-last would
        # otherwise time its blocks with layout conversions that its table's other entries lack.
        prepared.append((module.to(device=device, dtype=dtype, memory_format=torch.contiguous_format), x))
    if settings.pin_malloc and device.type == "cpu":
        pin_malloc_thresholds()
    rounds = min(settings.rounds, settings.repeats)
    shares = [settings.repeats // rounds + (r < settings.repeats % rounds) for r in range(rounds)]
    samples: list[list[float]] = [[] for _ in prepared]
    timer = _time_cuda if device.type == "cuda" else _time_cpu
    with contextlib.ExitStack() as stack:
        stack.enter_context(num_threads(settings.threads))
        for module, _ in prepared:
            stack.enter_context(_eval_mode(module))
        # Converted in eval mode, before inference mode: tracing and exporting record the eval
        # graph (BatchNorm with running statistics), and all conversions happen before any timing.
        calls = [runtime_callable(module, x, settings) for module, x in prepared]
        stack.enter_context(torch.inference_mode())
        # Each round in its own seeded order. Beside a matrix-product loop, some modules of one call
        # were ~1.45x slow in every round while others were not; in a fixed order, a competing job
        # whose period is near a round's length can slow the same module each round (one subnet timed
        # 44 % slow beside references of its size, in the order it had been timed in minutes before).
        order = np.random.default_rng(seed)
        for r, share in enumerate(shares):
            for i in order.permutation(len(calls)):
                for _ in range(settings.warmup if r == 0 else min(1, settings.warmup)):
                    calls[i]()
                samples[i].extend(timer(calls[i], share, device))
    return [TimingResult.from_samples(values, shares) for values in samples]


def _time_cpu(call: Callable[[], Any], repeats: int, device: torch.device) -> list[float]:
    samples = []
    clock = time.perf_counter_ns
    for _ in range(repeats):
        start = clock()
        call()
        samples.append((clock() - start) / 1e6)
    return samples


def _time_cuda(call: Callable[[], Any], repeats: int, device: torch.device) -> list[float]:
    with torch.cuda.device(device):
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(repeats)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(repeats)]
        torch.cuda.synchronize(device)
        for start, end in zip(starts, ends):
            start.record()
            call()
            end.record()
        torch.cuda.synchronize(device)
        return [start.elapsed_time(end) for start, end in zip(starts, ends)]


_MALLOC_PINNED = False
# glibc mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3


def pin_malloc_thresholds() -> bool:
    """Fix glibc malloc's mmap and trim thresholds for the rest of the process.

    By default glibc adapts both thresholds to the allocation history and hands freed heap memory
    back to the OS, so a network's large activations are page-faulted in afresh on many calls,
    more inside a whole network than in a block timed alone. That breaks the additivity a latency
    table relies on: blocks of the BINAS ImageNet space at 112×112 ran 2-5× slower inside the
    network than alone. With the thresholds pinned (mmap only above 32 MiB, trim above 1 GiB, 64
    MiB top pad), freed memory stays in the heap and block times add up. jemalloc or tcmalloc
    (``LD_PRELOAD``) have the same effect.

    Process-wide and irreversible (glibc has no way back to adaptive thresholds); call it only in
    processes that profile or serve models. Returns whether the thresholds are pinned (``False``
    without glibc).
    """
    global _MALLOC_PINNED
    if not _MALLOC_PINNED:
        try:
            libc = ctypes.CDLL("libc.so.6")
            mallopt = libc.mallopt
        except (OSError, AttributeError):
            return False
        _MALLOC_PINNED = all(
            mallopt(param, value) == 1
            for param, value in ((_M_MMAP_THRESHOLD, 32 << 20), (_M_TRIM_THRESHOLD, 1 << 30), (_M_TOP_PAD, 64 << 20))
        )
    return _MALLOC_PINNED


def cpu_model() -> str:
    """The CPU model name from ``/proc/cpuinfo`` (Linux), else ``platform.processor()`` or the machine type."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "Processor", "cpu model") and value.strip():
                return value.strip()
    return platform.processor() or platform.machine()


def device_info(settings: ProfileSettings) -> dict[str, Any]:
    """Facts about the machine and software that decide whether a latency table still applies to it.

    Includes ``runtime`` and ``runtime_version`` (onnxruntime's version for ONNX Runtime, torch's
    for eager and TorchScript), so a table is not reused after a runtime upgrade.
    """
    device = settings.torch_device
    info = {
        "device_type": device.type,
        "device_name": cpu_model() if device.type == "cpu" else torch.cuda.get_device_name(device),
        "processor": platform.processor() or platform.machine(),
        "machine": platform.machine(),
        "cpu_model": cpu_model(),
        # A plain str: torch.__version__ is a TorchVersion, which weights_only checkpoint loading refuses.
        "torch_version": str(torch.__version__),
        "runtime": settings.runtime,
        "runtime_version": runtime_version(settings.runtime),
    }
    if device.type == "cuda":
        info["cuda_version"] = torch.version.cuda
    return info
