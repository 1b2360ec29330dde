"""Latency, FLOPs and parameter lookup tables of staged supernets (BINAS Eq. 5), and their accuracy.

* :mod:`~lightning_nas.profiling.timing`: time a module on CPU (fixed thread count) or CUDA.
* :mod:`~lightning_nas.profiling.runtimes`: what is timed: PyTorch eager, frozen TorchScript or ONNX Runtime.
* :mod:`~lightning_nas.profiling.tables`: per-block tables, reuse-or-rebuild of the table file.
* :mod:`~lightning_nas.profiling.report`: MAPE of predicted vs end-to-end latency.
* :mod:`~lightning_nas.profiling.fit`: per-block tables fitted to measured whole networks, with held-out error and margin.
* :mod:`~lightning_nas.profiling.memory`: KV-cache and training-activation memory as additive tables, peak inference
  memory as a max-type table (all usable as limits).
"""

from lightning_nas.profiling.fit import TableFit, design_matrix, fit_table
from lightning_nas.profiling.memory import (
    build_activation_memory_table,
    build_kv_cache_table,
    build_peak_memory_table,
    kv_cache_bytes,
    peak_inference_bytes,
    saved_activation_bytes,
)
from lightning_nas.profiling.report import LatencyCheck, ReferenceTimer, calibrate_latency, check_latency, mape
from lightning_nas.profiling.runtimes import RUNTIMES, runtime_callable, runtime_version
from lightning_nas.profiling.tables import (
    PROFILER_VERSION,
    backup_path,
    block_shapes,
    build_flops_table,
    build_latency_table,
    build_params_table,
    fit_summary,
    fitted_subnets,
    integer_input_units,
    latency_table_of,
    load_or_build,
    model_signature,
    settings_of,
    stage_blocks,
    stale_reasons,
    time_archs,
)
from lightning_nas.profiling.timing import (
    ProfileSettings,
    TimingResult,
    cpu_model,
    device_info,
    example_input,
    num_threads,
    pin_malloc_thresholds,
    time_module,
    time_modules,
)

__all__ = [
    "PROFILER_VERSION",
    "RUNTIMES",
    "LatencyCheck",
    "ReferenceTimer",
    "ProfileSettings",
    "TimingResult",
    "TableFit",
    "backup_path",
    "block_shapes",
    "build_activation_memory_table",
    "build_flops_table",
    "build_kv_cache_table",
    "build_latency_table",
    "build_params_table",
    "build_peak_memory_table",
    "calibrate_latency",
    "check_latency",
    "cpu_model",
    "design_matrix",
    "device_info",
    "example_input",
    "fit_summary",
    "fit_table",
    "fitted_subnets",
    "integer_input_units",
    "kv_cache_bytes",
    "latency_table_of",
    "load_or_build",
    "mape",
    "model_signature",
    "saved_activation_bytes",
    "num_threads",
    "peak_inference_bytes",
    "pin_malloc_thresholds",
    "runtime_callable",
    "runtime_version",
    "settings_of",
    "stage_blocks",
    "stale_reasons",
    "time_archs",
    "time_module",
    "time_modules",
]
