"""``lightning-nas profile``: build a supernet's latency table on the machine it runs on, no training.

Usage::

    lightning-nas profile --space mobilenet --out table.json --threads 1 --batch-size 1 --image-size 32 --check 30
    lightning-nas profile --model mypackage.models:make_supernet --space-kwargs '{"width": 0.5}' --out table.json
    lightning-nas profile --space binas --space-kwargs '{"preset": "tiny"}' --runtime onnxruntime --fit-archs 40 --out binas_ort.json
    python -m lightning_nas.profile_cli --space binas --out binas_cpu.json --image-size 224

The latency table goes to ``--out`` (reused when it already matches this machine and these
settings, else rebuilt with the old file kept as ``<out>.bak``); the FLOPs and parameter tables go
next to it as ``<stem>.flops.json`` and ``<stem>.params.json``. ``--check N`` times N random
exported subnets end to end and reports the table's mean absolute percentage error (MAPE).
``--runtime`` times every block and subnet in the runtime you deploy with: PyTorch eager (default),
frozen TorchScript, or ONNX Runtime (``pip install 'lightning-nas[onnx]'``); the latter two on CPU.
``--fit-archs N`` also times N whole subnets with the blocks and fits every entry to them (see
``build_latency_table``); use it where blocks take tens of microseconds (ONNX Runtime at 32×32).
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

from lightning_nas.profiling.runtimes import RUNTIMES
from lightning_nas.profiling.timing import STATISTICS

__all__ = ["add_arguments", "main", "run"]


def positive_int(text: str) -> int:
    """argparse type: an int >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive int, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive int, got {text}")
    return value


def non_negative_int(text: str) -> int:
    """argparse type: an int >= 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a non-negative int, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a non-negative int, got {text}")
    return value


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"must be a JSON object such as '{{\"num_classes\": 10}}': {err}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"must be a JSON object such as '{{\"num_classes\": 10}}', got {text!r}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``profile`` command's options to ``parser`` (a sub-parser of ``lightning-nas``)."""
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--space", help="registered space name (lightning_nas.spaces.list_spaces()), e.g. mobilenet or binas")
    which.add_argument(
        "--model", metavar="MODULE:FACTORY",
        help="your own supernet: FACTORY(**space_kwargs) in the importable MODULE returns a lightning_nas.Supernet "
             "(or a module with lightning_nas choices, e.g. mutate(model, preset='binas'), which is wrapped in one); "
             "this imports and runs your code",
    )
    parser.add_argument("--out", required=True, type=Path, help="latency table JSON file")
    parser.add_argument("--space-kwargs", type=_json_object, default={}, help="JSON object of keyword arguments for the space builder or --model factory")
    parser.add_argument("--threads", type=positive_int, default=1, help="CPU threads while timing")
    parser.add_argument("--batch-size", type=positive_int, default=1)
    parser.add_argument("--image-size", type=positive_int, default=32, help="input height and width")
    parser.add_argument("--in-chans", type=positive_int, default=None, help="input channels (default: the space's in_chans keyword, else 3)")
    parser.add_argument("--repeats", type=positive_int, default=100, help="timed calls per measurement")
    parser.add_argument("--warmup", type=non_negative_int, default=10, help="untimed calls before them")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16", "float64"])
    parser.add_argument(
        "--runtime", default="eager", choices=list(RUNTIMES),
        help="what is timed: the PyTorch module (eager), traced and frozen TorchScript, or the module exported to ONNX "
             "in an ONNX Runtime session (needs lightning-nas[onnx]); torchscript and onnxruntime on CPU only",
    )
    parser.add_argument(
        "--statistic", default="median", choices=list(STATISTICS),
        help="per-entry statistic of the repeats; median_of_mins (the median over the rounds of each round's fastest call) "
             "is the steadiest on a machine shared with other jobs",
    )
    parser.add_argument(
        "--pin-malloc", action=argparse.BooleanOptionalAction, default=True,
        help="pin glibc malloc's thresholds first (this process only profiles; without it 224x224 tables are "
             "not additive: see pin_malloc_thresholds and benchmarks/RESULTS.md)",
    )
    parser.add_argument("--calibration-archs", type=positive_int, default=10, help="random subnets timed to estimate the fixed part")
    parser.add_argument(
        "--fit-archs", type=non_negative_int, default=0, metavar="N",
        help="also time N random whole subnets with the blocks and fit every entry to them and the calibration subnets "
             "(ridge least squares, the block table as prior), kept only when its held-out error is at least 10 %% below the "
             "block table's (both are printed). Recommended where blocks take tens of microseconds (onnxruntime or "
             "torchscript on small inputs), e.g. 40; 0: blocks alone (BINAS Eq. 5)",
    )
    parser.add_argument("--seed", type=non_negative_int, default=0)
    parser.add_argument("--check", type=non_negative_int, default=0, metavar="N", help="report the MAPE on N random subnets (0: skip)")
    parser.add_argument("--rebuild", action="store_true", help="rebuild even when --out matches")
    return parser


def _create_space(name: str, kwargs: dict[str, Any]):
    from lightning_nas.spaces import create_space, list_spaces

    if name not in list_spaces():
        # Spaces register themselves on import; the BINAS space may not be imported by the package yet.
        module = f"lightning_nas.spaces.{name}"
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as err:
            if err.name != module:
                raise
    try:
        return create_space(name, **kwargs)
    except TypeError as err:
        raise ValueError(f"`--space-kwargs` {kwargs!r} do not fit the {name!r} builder: {err}") from err


def _create_model(spec: str, kwargs: dict[str, Any]):
    from torch import nn

    from lightning_nas.supernet import Supernet

    module_name, _, factory_name = spec.partition(":")
    if not module_name or not factory_name:
        raise ValueError(f"`--model` must be MODULE:FACTORY such as mypackage.models:make_supernet, got {spec!r}")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        raise ValueError(f"`--model` {spec!r}: cannot import {module_name!r} ({err}); is it on PYTHONPATH?") from err
    factory = getattr(module, factory_name, None)
    if not callable(factory):
        raise ValueError(f"`--model` {spec!r}: {module_name} has no callable {factory_name!r}")
    try:
        made = factory(**kwargs)
    except TypeError as err:
        raise ValueError(f"`--space-kwargs` {kwargs!r} do not fit {spec}: {err}") from err
    if isinstance(made, Supernet):
        return made
    if isinstance(made, nn.Module):
        return Supernet(made)
    raise ValueError(f"`--model` {spec!r} returned a {type(made).__name__}, not a lightning_nas.Supernet or nn.Module")


def run(args: argparse.Namespace) -> int:
    """Build (or reuse) the tables for ``args`` (see :func:`add_arguments`), print a summary; returns 0."""
    from lightning_nas.profiling import ProfileSettings, build_flops_table, build_params_table, check_latency, load_or_build
    from lightning_nas.profiling.tables import fit_summary

    if args.model is not None:
        supernet = _create_model(args.model, dict(args.space_kwargs))
    else:
        supernet = _create_space(args.space, dict(args.space_kwargs))
    in_chans = args.in_chans or args.space_kwargs.get("in_chans", 3)
    if isinstance(in_chans, bool) or not isinstance(in_chans, int) or in_chans < 1:
        raise ValueError(f"`--space-kwargs` in_chans must be an int >= 1, got {in_chans!r}")
    settings = ProfileSettings(
        input_size=(in_chans, args.image_size, args.image_size), batch_size=args.batch_size, threads=args.threads,
        repeats=args.repeats, warmup=args.warmup, device=args.device, dtype=args.dtype, statistic=args.statistic,
        pin_malloc=args.pin_malloc, runtime=args.runtime,
    )
    started = time.perf_counter()
    latency = load_or_build(
        supernet, args.out, settings, rebuild=args.rebuild, calibration_archs=args.calibration_archs, fit_archs=args.fit_archs,
        seed=args.seed, progress=lambda message: print(f"  {message}", flush=True),
    )
    flops = build_flops_table(supernet, settings.input_size)
    params = build_params_table(supernet)
    stem = args.out.name[: -len(".json")] if args.out.name.endswith(".json") else args.out.name
    flops_path, params_path = flops.save(args.out.with_name(f"{stem}.flops.json")), params.save(args.out.with_name(f"{stem}.params.json"))
    meta = latency.metadata
    lines = [
        f"{'model ' + args.model if args.model else 'space ' + args.space}: {latency.staged!r}",
        f"device {meta['device']['device_type']} ({meta['device']['device_name']}), torch {meta['device']['torch_version']}, "
        f"runtime {settings.runtime} {meta['device']['runtime_version']}, "
        f"{settings.threads} thread(s), batch {settings.batch_size}, input {settings.input_size}, {settings.dtype}, "
        f"{settings.statistic} of {settings.repeats} repeats after {settings.warmup} warm-up calls",
        f"latency table: {args.out} ({meta['entries']} entries, {meta['measurements']} distinct measurements, "
        f"created {meta['created']}, {time.perf_counter() - started:.1f} s this run)",
    ]
    if "chosen" in (meta.get("fit") or {}):
        lines.append(f"  {fit_summary(meta['fit'])}")
    for table, path in ((latency, args.out), (flops, flops_path), (params, params_path)):
        low, _ = table.extreme()
        high, _ = table.extreme(largest=True)
        lines.append(f"  {table.name:8s} [{table.unit}]: fixed part {table.constant:.4g}, subnets {low:.4g} to {high:.4g} ({path})")
    print("\n".join(lines))
    if args.check:
        check = check_latency(supernet, latency, num_archs=args.check, seed=args.seed)
        errors = check.errors
        print(
            f"check on {len(check)} random subnets: MAPE {check.mape:.2f} %, max |error| {abs(errors).max():.2f} %, "
            f"mean signed error {errors.mean():+.2f} %, measured {check.measured.min():.3f}-{check.measured.max():.3f} ms; "
            f"machine {check.speed:.2f}x as slow as during the build, MAPE at build speed {check.mape_at_build_speed:.2f} %"
        )
    return 0


def main(argv: list[str] | None = None) -> int:
    """Standalone entry point: ``python -m lightning_nas.profile_cli --space mobilenet --out table.json``."""
    parser = add_arguments(argparse.ArgumentParser(prog="lightning-nas profile", description=__doc__.split("\n\n")[0]))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        return run(args)
    except (ValueError, OSError, ImportError) as err:
        # OSError: an --out that is a directory or cannot be written; ImportError: --runtime
        # onnxruntime without the package. Both messages say what to do.
        parser.error(str(err))
    return 2


if __name__ == "__main__":
    sys.exit(main())
