"""How well the per-block latency table predicts end-to-end latency (BINAS Eq. 5), on this CPU.

For each space, the table is built as ``lightning-nas profile`` builds it (every block
configuration timed alone at its real input shape, the fixed part estimated from calibration
subnets), then ``--num-archs`` other random subnets are exported and timed end to end with the same
settings, and the mean absolute percentage error (MAPE) of the prediction is reported. Target:
MAPE <= 5 % on CPU.

Both per-entry statistics come from the same measurements: ``median`` (the default) and ``min``
(steadier on a machine shared with other jobs). The ``min`` table is derived from the median
table's metadata (per-entry minima and the calibration residuals of the minima); nothing is
re-measured.

Two tables per build (``--fit-archs N``, default 40; 0 leaves the second out): ``blocks``, the
per-block table of BINAS Eq. 5 (every block timed alone, the fixed part from the calibration
subnets), and ``fitted``, the same build with ``N`` more random whole subnets timed in the same
interleaved rounds and every entry fitted to them and the calibration subnets
(``build_latency_table(fit_archs=N)``, ``latency_table_of``). Both are checked on the same
end-to-end timings of the same ``--num-archs`` subnets, which neither was built from.

Spaces: ``mobilenet`` (defaults, 32×32), and, when ``lightning_nas.spaces.binas`` exists, ``binas``
tiny preset (32×32) and ImageNet preset (224×224; ``--skip-imagenet`` leaves it out).

Runtimes (``--runtime``, default all three, side by side): each table and its check are timed in
PyTorch eager, frozen TorchScript or ONNX Runtime (``ProfileSettings(runtime=...)``): a table
predicts the runtime it was measured in. The 224×224 space is measured in eager only unless
``--imagenet-runtimes`` names others (TorchScript and ONNX Runtime at 224² add minutes of
conversion and timing).

Allocator: every space is measured first with glibc malloc as it comes (adaptive thresholds),
then with its thresholds pinned (``ProfileSettings(pin_malloc=True)``; pinning cannot be undone,
hence this order). At 224×224 the adaptive allocator makes whole networks slower than the sum of
their blocks (see ``lightning_nas.profiling.pin_malloc_thresholds``).

Usage::

    .venv/bin/python benchmarks/latency_mape.py                 # rewrites its section of RESULTS.md
    .venv/bin/python benchmarks/latency_mape.py --no-write --skip-imagenet
    .venv/bin/python benchmarks/latency_mape.py --no-write --runtime onnxruntime --malloc pinned --skip-imagenet
    .venv/bin/python benchmarks/latency_mape.py --no-write --fit-archs 0 --skip-imagenet   # blocks tables only
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from results_file import device_title, machine, marker_suffix, publish  # benchmarks/ is the script's directory
from lightning_nas.bilinear import BilinearTable
from lightning_nas.profiling import RUNTIMES, ProfileSettings, build_latency_table, check_latency, cpu_model, mape, time_modules
from lightning_nas.profiling.report import CHECK_STREAM
from lightning_nas.profiling.tables import CALIBRATION_STREAM, latency_table_of
from lightning_nas.seeding import derive_seed
from lightning_nas.spaces import create_space

TARGET = 5.0


def markers(device: str = "cpu") -> tuple[str, str]:
    name = "benchmarks/latency_mape.py" + marker_suffix(device)
    return f"<!-- {name}: begin -->", f"<!-- {name}: end -->"


def cases(skip_imagenet: bool, runtimes: list[str], imagenet_runtimes: list[str]) -> list[tuple[str, str, dict, int, str]]:
    """``(label, space name, builder kwargs, image size, runtime)`` of each benchmarked space and
    runtime, the runtimes of one space next to each other."""
    spaces = [("mobilenet (defaults)", "mobilenet", {}, 32)]
    try:
        import lightning_nas.spaces.binas  # noqa: F401  (registers "binas")
    except ImportError:
        pass
    else:
        spaces.append(("binas, tiny preset", "binas", {"preset": "tiny"}, 32))
        if not skip_imagenet:
            spaces.append(("binas, imagenet preset", "binas", {"preset": "imagenet"}, 224))
    return [(*space, runtime) for space in spaces for runtime in runtimes if space[3] < 224 or runtime in imagenet_runtimes]


def min_table(table: BilinearTable) -> BilinearTable:
    """The block table of per-entry minima, the fixed part re-estimated from the minima (what
    ``latency_table_of(table, supernet, "min", fitted=False)`` gives; kept for ``any_model.py``,
    which has no supernet at hand there)."""
    meta = table.metadata
    residuals = meta["constant_estimate"]["residuals_by_statistic_ms"]["min"]
    return BilinearTable(table.staged, float(np.median(residuals)), np.array(meta["spread"]["min"]), name="latency", unit="ms",
                         metadata=meta)


class PlusOne(nn.Module):
    """A graph that does almost nothing: its time in a runtime is that runtime's cost per call."""

    def forward(self, x):
        return x + 1


def call_overhead_ms(settings: ProfileSettings) -> dict[str, float]:
    """``{"median": ms, "min": ms}`` of one call of ``x + 1`` on one number in ``settings.runtime``."""
    (result,) = time_modules([(PlusOne(), (1, 1))], settings)
    return {"median": result.median_ms, "min": result.min_ms}


def without_call_overhead(table: BilinearTable, statistic: str, overhead_ms: float, supernet, args: argparse.Namespace) -> BilinearTable:
    """``table`` (of ``statistic``) with one runtime call's overhead taken off every block entry and
    the fixed part re-estimated from the same calibration residuals: a block timed alone pays the
    cost of a call (Python, session, output allocation), which a whole network pays only once."""
    has_module = table.block > 0
    archs = supernet.space.sample_many(args.calibration_archs, derive_seed(args.seed, CALIBRATION_STREAM))
    calls = BilinearTable(table.staged, 0.0, has_module.astype(float), name="calls").predict_many(archs)
    residuals = np.array(table.metadata["constant_estimate"]["residuals_by_statistic_ms"][statistic]) + overhead_ms * calls
    block = np.where(has_module, table.block - overhead_ms, 0.0)
    return BilinearTable(table.staged, float(np.median(residuals)), block, name="latency", unit="ms")


def run_case(label: str, name: str, kwargs: dict, image_size: int, runtime: str, malloc: str, args: argparse.Namespace) -> dict:
    supernet = create_space(name, **kwargs)
    settings = ProfileSettings(
        input_size=(3, image_size, image_size), batch_size=args.batch_size, threads=args.threads, repeats=args.repeats,
        warmup=args.warmup, pin_malloc=malloc == "pinned", device=args.device, runtime=runtime,
    )
    label = f"{label}, malloc {malloc}"
    print(f"[{label}, {runtime}] building the table ({settings.repeats} repeats, {settings.threads} thread)", flush=True)
    started = time.perf_counter()
    table = build_latency_table(supernet, settings, calibration_archs=args.calibration_archs, fit_archs=args.fit_archs, seed=args.seed)
    build_s = time.perf_counter() - started
    archs = supernet.space.sample_many(args.num_archs, derive_seed(args.seed, CHECK_STREAM))
    overhead = call_overhead_ms(settings)
    result = {"label": label, "malloc": malloc, "runtime": runtime, "image_size": image_size, "table": table, "build_s": build_s,
              "check_s": 0.0, "rows": []}
    for stat in ("median", "min"):
        tables = {"blocks": latency_table_of(table, supernet, stat, fitted=False)}
        if args.fit_archs:
            tables["fitted"] = latency_table_of(table, supernet, stat)
        # Each statistic's check re-times the table's calibration subnets in the same rounds as the
        # checked ones: their time now / at the build is the machine's speed drift since the build.
        started = time.perf_counter()
        check = check_latency(supernet, tables["blocks"], archs=archs, settings=dataclasses.replace(settings, statistic=stat),
                              seed=args.seed)
        result["check_s"] += time.perf_counter() - started
        measured = check.measured
        for kind, tab in tables.items():
            predicted = tab.predict_many(archs)
            errors = 100 * (predicted - measured) / measured
            # Converted runtimes' tables already have an empty graph's time taken off every block (PROFILER_VERSION 2).
            fit = tab.metadata.get("fit") or {}
            corrected = (without_call_overhead(tab, stat, overhead[stat], supernet, args).predict_many(archs)
                         if runtime == "eager" and not fit else None)
            if fit:
                kind = f"fitted (ridge {fit['ridge']:g})" if fit["chosen"] == "fitted" else "fitted: blocks kept"
            row = {
                "table": kind, "statistic": stat, "mape": mape(predicted, measured), "max": float(np.abs(errors).max()),
                "bias": float(errors.mean()), "measured": (float(measured.min()), float(measured.max())), "constant": tab.constant,
                "speed": check.speed, "mape_at_build_speed": mape(check.speed * predicted, measured),
                "overhead_ms": overhead[stat], "mape_without_overhead": None if corrected is None else mape(corrected, measured),
                "heldout": fit["heldout"]["mape_percent"] if "heldout" in fit else None,
            }
            result["rows"].append(row)
            print(f"[{label}, {runtime}] {stat}, {kind}: MAPE {row['mape']:.2f} % (max {row['max']:.2f} %, bias "
                  f"{row['bias']:+.2f} %); speed now/build {check.speed:.3f}, MAPE at build speed "
                  f"{row['mape_at_build_speed']:.2f} %; fit held-out {_percent(row['heldout'])}; call overhead "
                  f"{1e3 * overhead[stat]:.1f} us, MAPE without it {_percent(row['mape_without_overhead'])}", flush=True)
    return result


def _verdict(row: dict) -> str:
    """met / MISSED, judged on the raw MAPE, else on the MAPE at build speed (said so)."""
    if row["mape"] <= TARGET:
        return "met"
    return "met at build speed" if row["mape_at_build_speed"] <= TARGET else "MISSED"


def _percent(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f} %"


def runtimes_line(results: list[dict]) -> str:
    """What each runtime in ``results`` is, with its version (from the tables' metadata)."""
    what = {
        "eager": "PyTorch eager",
        "torchscript": "`torch.jit.trace` + `torch.jit.freeze`",
        "onnxruntime": "`torch.onnx.export` (TorchScript-based exporter, opset 17) in an `onnxruntime.InferenceSession` on CPU, "
                       "intra-op threads = threads, 1 inter-op thread, sequential, all graph optimisations",
    }
    versions = {r["runtime"]: r["table"].metadata["device"]["runtime_version"] for r in results}
    return "; ".join(f"`{name}` {version}: {what[name]}" for name, version in versions.items())


def report(results: list[dict], args: argparse.Namespace, command: str) -> str:
    first = results[0]["table"].metadata
    cpu = torch.device(args.device).type == "cpu"
    begin, end = markers(args.device)
    host = f"{cpu_model()} ({platform.machine()}, {platform.platform()}), {os.cpu_count()} CPUs visible, torch {torch.__version__}"
    lines = [
        begin,
        f"## Latency lookup table vs end-to-end latency ({device_title(args.device)})",
        "",
        f"- Date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}",
        f"- Machine: {host if cpu else machine(args.device)}, load average {os.getloadavg()[0]:.1f} at the end",
        f"- Command: `{command}`",
        f"- Settings: batch {args.batch_size}, {args.threads} thread, float32, eval mode, inference mode; {args.warmup} warm-up + "
        f"{args.repeats} timed calls per measurement; {args.calibration_archs} calibration subnets for the fixed part"
        + (f", {args.fit_archs} more fit subnets for the `fitted` tables" if args.fit_archs else "")
        + f"; {args.num_archs} other random subnets checked (seed {args.seed}); device `{first['device']['device_name']}`",
        "- Prediction: `blocks`: `table.predict(arch)` = fixed part + Σ active blocks' isolated times (BINAS Eq. 5)"
        + ("; `fitted`: the same build's entries, depth terms and fixed part fitted by ridge least squares to the "
           f"{args.calibration_archs + args.fit_archs} whole subnets timed in its rounds (`build_latency_table(fit_archs="
           f"{args.fit_archs})`, the block table as prior)" if args.fit_archs else "")
        + "; measured: the exported subnet end to end with the same settings, runtime and statistic",
        f"- Runtimes: {runtimes_line(results)}",
        "",
        "| space, allocator | runtime | input | entries / distinct measurements | build (s) | check (s) | statistic | table | "
        "fixed part (ms) | measured range (ms) | MAPE (%) | max error (%) | mean signed error (%) | speed now / build | "
        "MAPE at build speed (%) | target | fit held-out MAPE (%) | call overhead (µs) | MAPE, overhead off blocks (%) |",
        "|---|---|---|---:|---:|---:|---|---|---:|---|---:|---:|---:|---:|---:|---|---:|---:|---:|",
    ]
    for r in results:
        meta = r["table"].metadata
        for s in r["rows"]:
            lines.append(
                f"| {r['label']} | {r['runtime']} | {r['image_size']}² | {meta['entries']} / {meta['measurements']} | {r['build_s']:.0f} | {r['check_s']:.0f} | "
                f"{s['statistic']} | {s['table']} | {s['constant']:.3f} | {s['measured'][0]:.3f}–{s['measured'][1]:.3f} | {s['mape']:.2f} | "
                f"{s['max']:.2f} | {s['bias']:+.2f} | {s['speed']:.3f} | {s['mape_at_build_speed']:.2f} | "
                f"≤ {TARGET:.0f} %: {_verdict(s)} | {_percent(s['heldout']).removesuffix(' %')} | {1e3 * s['overhead_ms']:.1f} | "
                f"{_percent(s['mape_without_overhead']).removesuffix(' %')} |"
            )
    lines += [] if not args.fit_archs else [
        "",
        "`table`: `blocks` and `fitted` come from one build (its `build (s)` includes timing the fit subnets) and are checked "
        "on the same timings of the same subnets. The fit is made at ridge weights 1e-3 to 10 (towards the block table "
        "rescaled to the subnets); the one of least 5-fold cross-validated MAPE replaces the block table only when that "
        "error is at least 10 % below the block table's own MAPE on those subnets, else `blocks kept` (the row then repeats "
        "the blocks row). `fit held-out MAPE`: the error the choice was made on (recorded in `metadata['fit']`): "
        "cross-validated for a fit, on the build's subnets for a kept block table; the check's MAPE adds the machine's "
        "drift between the build and the check.",
    ]
    lines += [
        "",
        "`call overhead`: one call of `x + 1` on a single number in the runtime (Python call, ONNX Runtime session run, "
        "output allocation). Every block timed alone pays it once, a whole subnet also only once, so a table over-charges "
        "subnets with more blocks by one overhead per extra block; the calibrated fixed part removes it only on average. "
        "`MAPE, overhead off blocks`: the same table with that overhead taken off every block entry and the fixed part "
        "re-estimated from the same calibration residuals (no re-measurement); it matters where blocks take tens of µs "
        "(ONNX Runtime at 32²). The torchscript and onnxruntime tables already take an empty graph's time off every block "
        "(PROFILER_VERSION 2), so their `MAPE (%)` is this figure and the column shows —; for eager `blocks` it is what the "
        "same correction would give.",
    ]
    lines += [
        "",
        "`speed now / build`: the table's calibration subnets are timed again in the same interleaved rounds as the checked "
        "subnets (`check_latency`); the median of their time now / their time during the build is how much slower the "
        "machine ran during the check. On a VM whose speed drifts between two runs a few seconds apart, `MAPE at build "
        "speed` (predictions × that ratio) is the table's own error; `MAPE (%)` adds the drift. The target is judged on "
        "`MAPE (%)`, else on `MAPE at build speed` (then said so).",
    ]
    lines += [] if not cpu else [
        "",
        "The machine these numbers come from may be shared with other jobs (see the load average): then a varying share "
        "of timed calls is slowed down, which the median absorbs only partly; the `min` rows show the table's accuracy "
        "with that noise mostly removed. On a dedicated machine both statistics agree.",
        "",
        "`malloc default`: glibc's adaptive mmap/trim thresholds return freed memory to the OS, so large activations are "
        "page-faulted in again on many calls, more often inside a whole network than for a block timed alone; at 224² this "
        "makes end-to-end time non-additive (blocks at 112² ran 2-5× slower inside the network). `malloc pinned` "
        "(`ProfileSettings(pin_malloc=True)`, `lightning-nas profile --pin-malloc`) fixes the thresholds; deploy with the "
        "same allocator setting (or jemalloc / tcmalloc) for the table to apply.",
        "",
        "Where the 224² rows miss the target while the 32² rows meet it, the residual `measured − Σ blocks` varies from arch "
        "to arch by several ms within one interleaved run: a block timed alone keeps its weights hot in cache, while inside "
        "a 224² subnet (about 20 MB of weights) they stream from memory, whose bandwidth other jobs on a shared machine "
        "also use. Per-block timing inside whole subnets (forward hooks) would capture that; rerun on a dedicated machine "
        "first.",
    ]
    lines.append(end)
    return "\n".join(lines) + "\n"



def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--repeats", type=int, default=100, help="timed calls per measurement")
    parser.add_argument("--warmup", type=int, default=10, help="untimed calls before them")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (CUDA: timed with events)")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--num-archs", type=int, default=30, help="random subnets checked (at least 30)")
    parser.add_argument("--calibration-archs", type=int, default=10)
    parser.add_argument("--fit-archs", type=int, default=40,
                        help="whole subnets timed with the blocks for the fitted table (0: blocks table only)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-imagenet", action="store_true", help="leave out the 224×224 BINAS space")
    parser.add_argument(
        "--malloc", default="default,pinned",
        help="comma-separated allocator conditions, run in this order: default (glibc adaptive), pinned (pin_malloc=True)",
    )
    parser.add_argument(
        "--runtime", default=",".join(RUNTIMES),
        help=f"comma-separated runtimes to time each space in, side by side: {', '.join(RUNTIMES)}",
    )
    parser.add_argument(
        "--imagenet-runtimes", default="eager",
        help="comma-separated runtimes (of --runtime) in which the 224x224 space is measured too",
    )
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "RESULTS.md")
    parser.add_argument("--no-write", action="store_true", help="print the section without writing --out")
    args = parser.parse_args(argv)
    if args.num_archs < 30:
        parser.error("--num-archs must be at least 30")
    if args.fit_archs < 0 or (args.fit_archs and args.calibration_archs + args.fit_archs < 5):
        parser.error("--fit-archs must be 0 or a count that makes at least 5 whole subnets with --calibration-archs")
    conditions = [c.strip() for c in args.malloc.split(",") if c.strip()]
    if not conditions or any(c not in ("default", "pinned") for c in conditions) or conditions == ["pinned", "default"]:
        parser.error("--malloc must list default and/or pinned, default first (pinning cannot be undone)")
    runtimes = [r.strip() for r in args.runtime.split(",") if r.strip()]
    imagenet_runtimes = [r.strip() for r in args.imagenet_runtimes.split(",") if r.strip()]
    if not runtimes or any(r not in RUNTIMES for r in runtimes + imagenet_runtimes):
        parser.error(f"--runtime and --imagenet-runtimes must list runtimes of {RUNTIMES}")
    todo = cases(args.skip_imagenet, runtimes, imagenet_runtimes)
    publish("latency_mape.py", argv, args.out, not args.no_write,
            lambda command: report([run_case(*case, malloc, args) for malloc in conditions for case in todo], args, command),
            *markers(args.device))


if __name__ == "__main__":
    main()
