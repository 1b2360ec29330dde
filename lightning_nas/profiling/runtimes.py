"""The runtime a latency table is timed in: PyTorch eager, frozen TorchScript or ONNX Runtime.

A table only predicts the latency of the runtime it was measured in: the same network can be
faster (fused conv + BatchNorm + activation) or slower (per-call overhead) once deployed. The
runtime is part of :class:`~lightning_nas.profiling.ProfileSettings` (``runtime=...``), and
:func:`runtime_callable` turns each module into what that runtime runs, before timing:

* ``"eager"``: the module itself (PyTorch eager, what training uses);
* ``"torchscript"``: ``torch.jit.trace`` on the example input, then ``torch.jit.freeze`` (weights
  folded in as constants, conv + BatchNorm fused); not ``optimize_for_inference``, whose MKL-DNN
  layout conversions at a graph's edges make isolated blocks cost more than they do in a network;
* ``"onnxruntime"``: the module exported to ONNX in memory (``torch.onnx.export``, the
  TorchScript-based exporter, which needs only the ``onnx`` package) and run in an
  ``onnxruntime.InferenceSession`` on the CPU with ``settings.threads`` intra-op threads, one
  inter-op thread, sequential execution and every graph optimisation.

Both converted runtimes run on CPU only here; ONNX Runtime also only in float32. They need a
static input shape: the callable is specialised to the example input it is given.

Example::

    settings = ProfileSettings(input_size=(3, 32, 32), runtime="onnxruntime")
    run = runtime_callable(subnet.eval(), torch.randn(1, 3, 32, 32), settings)
    run()                                                  # [np.ndarray of shape (1, 10)]
"""

from __future__ import annotations

import functools
import io
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:  # timing.py imports this module; only annotations need ProfileSettings
    from lightning_nas.profiling.timing import ProfileSettings

__all__ = ["RUNTIMES", "check_runtime", "runtime_callable", "runtime_version"]

RUNTIMES = ("eager", "torchscript", "onnxruntime")
# ONNX opset of the exported graphs: every operator the spaces use exists at 17 and ONNX Runtime
# >= 1.20 runs it with all optimisations.
ONNX_OPSET = 17


def _onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError as err:
        raise ImportError(
            "runtime='onnxruntime' needs the onnxruntime and onnx packages: pip install 'lightning-nas[onnx]'"
        ) from err
    return onnxruntime


def runtime_version(runtime: str) -> str:
    """Version of the library that runs ``runtime``: torch's for eager and TorchScript, onnxruntime's
    for ONNX Runtime. Raises ``ImportError`` when onnxruntime is missing."""
    if runtime == "onnxruntime":
        return str(_onnxruntime().__version__)
    # A plain str: torch.__version__ is a TorchVersion, which weights_only checkpoint loading refuses.
    return str(torch.__version__)


def check_runtime(runtime: Any, device: torch.device, dtype: str) -> str:
    """Validate ``runtime`` for ``device`` and ``dtype`` (a :class:`ProfileSettings` field); returns it.

    Raises:
        ValueError: an unknown runtime, a converted runtime on CUDA, ONNX Runtime in another dtype
            than float32.
        ImportError: ``"onnxruntime"`` without the onnxruntime package installed.
    """
    if runtime not in RUNTIMES:
        raise ValueError(f"`runtime` must be one of {RUNTIMES}, got {runtime!r}")
    if runtime != "eager" and device.type != "cpu":
        raise ValueError(f"`runtime` {runtime!r} is timed on CPU only; use device='cpu', or runtime='eager' on {device.type}")
    if runtime == "onnxruntime":
        if dtype != "float32":
            raise ValueError(f"`runtime` 'onnxruntime' is timed in float32 only, got dtype={dtype!r}")
        _onnxruntime()  # now, not after minutes of exporting
    return runtime


def runtime_callable(module: nn.Module, x: torch.Tensor, settings: ProfileSettings) -> Callable[[], Any]:
    """What ``settings.runtime`` runs for ``module`` on ``x``, as a call without arguments.

    Args:
        module: the module, already on ``settings.device`` / ``settings.dtype`` and in eval mode
            (only read: the converted runtimes work on copies of its weights).
        x: the example input, ``settings.batch_shape``-like; converted runtimes are specialised
            to its shape.
        settings: ``runtime``, and ``threads`` for ONNX Runtime.

    Returns:
        ``run()``, one forward pass on ``x``: ``module(x)`` (eager), the frozen TorchScript module
        on ``x`` (torchscript), or ``session.run`` on ``x`` as a numpy array prepared beforehand
        (onnxruntime; returns the list of output arrays).
    """
    runtime = settings.runtime
    if runtime == "eager":
        return functools.partial(module, x)
    if runtime not in RUNTIMES:
        raise ValueError(f"`runtime` must be one of {RUNTIMES}, got {runtime!r}")
    # Tracing and exporting warn about every Python-level branch and about their own deprecation;
    # the traced graph is exact for the one input shape we time it on.
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            if runtime == "torchscript":
                traced = torch.jit.trace(module, (x,), check_trace=False)
                # Not optimize_for_inference: its MKL-DNN layout conversions at the graph's edges cost an
                # isolated block far more than the same block pays inside a whole network, so a table of
                # blocks would not add up (measured: a 1×1 conv 103 µs alone against 20 µs in eager).
                frozen = torch.jit.freeze(traced.eval())
                return functools.partial(frozen, x)
            return _onnxruntime_callable(module, x, settings.threads)
    except ImportError:
        raise
    except Exception as err:  # whatever the tracer, exporter or session refuses: name the module
        raise ValueError(
            f"cannot run {type(module).__name__} (input {tuple(x.shape)}) in runtime {runtime!r}: {type(err).__name__}: {err}; "
            "profile it with runtime='eager', or replace the operation the converter rejects"
        ) from err


def _onnxruntime_callable(module: nn.Module, x: torch.Tensor, threads: int) -> Callable[[], Any]:
    ort = _onnxruntime()
    buffer = io.BytesIO()
    # dynamo=False: the TorchScript-based exporter needs only `onnx`; the torch.export-based one
    # needs onnxscript too and takes seconds per module.
    torch.onnx.export(module, (x,), buffer, dynamo=False, opset_version=ONNX_OPSET, input_names=["x"], do_constant_folding=True)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # errors only: no per-session optimiser notices
    session = ort.InferenceSession(buffer.getvalue(), options, providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: x.detach().cpu().numpy()}

    def run() -> list:
        return session.run(None, feed)

    return run
