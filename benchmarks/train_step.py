"""Training-step time of a supernet against its exported static subnets (CPU, or GPU with ``--device cuda``).

``--space mobilenet`` (default) times ``mobilenet_supernet()``; ``--space binas`` times
``binas_supernet(preset="tiny")`` (the BINAS space: expansion, kernel, SE and depth decisions) at
32×32; ``--space binas-imagenet`` times the paper's ImageNet backbone, ``binas_supernet()``, at 224×224;
``--space timm-mobilenetv3`` a user's model decorated, timm's MobileNetV3-Large under
``mutate(preset="binas")``.

Four configurations, measured interleaved in rounds (a, b, c, d, a, b, ...) so that machine noise
hits all of them alike:

* (a) ``supernet``: the supernet with one fixed architecture active (the largest);
* (b) ``exported``: that architecture exported as a static network;
* (c) ``per-example``: the supernet with a fresh uniformly sampled architecture per example each
  step (``space.sample_indices`` + ``activate_indices``, included in the step time);
* (d) ``heaviest``: the heaviest static subnet (the exported largest architecture, a separate copy).

``--breakdown`` adds (c) variants where only one kind of decision (widths, kernels, depths) is
sampled per example and the others are fixed at the largest, to show where the overhead of (c) goes.
``--grouped`` adds (c-grouped): per-example mode with ``Supernet.static_shapes = False`` (rows
grouped by candidate: data-dependent shapes, host reads). ``--compile`` adds (c) and (d) through
``torch.compile`` (``--compile-backend``, default inductor; the compile time is reported, not
timed); ``--cuda-graph`` (CUDA only) adds them captured as CUDA graphs (forward, backward and SGD
step replayed; (c) copies each step's fresh indices into the graph's index buffers).
Every run also counts, per training step (activation excluded), the aten operator calls and the
host reads (a GPU sync each) of (a), (c), (c-grouped) and (d) (``lightning_nas.profiling.counters``):
forward + backward alone, and the whole step with SGD as a for-loop over the parameters (the CPU
default) and with ``foreach=True`` (the CUDA default). Each space writes its own sections of the results file.

A step is forward + cross-entropy + backward + SGD step on the same batch. Each round runs
``--warmup`` untimed steps then ``--steps`` timed steps of every configuration; medians are over
all timed steps. Targets: a/b <= 1.10 (a fixed-arch supernet costs what its static subnet costs)
and c/d <= 1.5 (per-example sampling costs about one path, not the sum of all paths).

Usage::

    .venv/bin/python benchmarks/train_step.py            # defaults; rewrites its section of RESULTS.md
    .venv/bin/python benchmarks/train_step.py --space binas
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from results_file import device_title, machine, marker_suffix, publish, write_section  # benchmarks/ is the script's directory
from lightning_nas.profiling.counters import HostReadCounter, OperatorCounter
from lightning_nas.spaces import binas_supernet, mobilenet_supernet, timm_supernet

TARGET_AB, TARGET_CD, TARGET_CALLS = 1.10, 1.5, 2.0
# Per space: (builder, description for the report, decision kinds for --breakdown).
SPACES = {
    "mobilenet": (mobilenet_supernet, "`mobilenet_supernet()` defaults", ("expand", "kernel", "depth")),
    "binas": (lambda: binas_supernet(preset="tiny"), '`binas_supernet(preset="tiny")`', ("expand", "kernel", "se", "depth")),
    # The paper's ImageNet backbone at its own input size (224×224 unless --image-size says otherwise).
    "binas-imagenet": (binas_supernet, "`binas_supernet()` (the ImageNet preset)", ("expand", "kernel", "se", "depth")),
    # A user's model decorated: timm's MobileNetV3-Large (random weights) under mutate(preset="binas").
    "timm-mobilenetv3": (
        lambda: timm_supernet("mobilenetv3_large_100", num_classes=10),
        '`timm_supernet("mobilenetv3_large_100", num_classes=10)` (`mutate(preset="binas")` on timm\'s model)',
        ("width", "kernel_size", "se", "depth"),
    ),
}
IMAGE_SIZES = {"binas-imagenet": 224}  # default --image-size per space (else 32)
NAMES = {
    "a": "supernet, largest arch active",
    "b": "exported largest arch",
    "c": "supernet, per-example archs",
    "d": "heaviest static subnet",
    "c-grouped": "supernet, per-example archs, rows grouped (`static_shapes=False`)",
    "c-compiled": "(c) through `torch.compile`",
    "d-compiled": "(d) through `torch.compile`",
    "c-graph": "(c) replayed from a CUDA graph",
    "d-graph": "(d) replayed from a CUDA graph",
}


def markers(breakdown: bool, space: str = "mobilenet", device: str = "cpu", batch_size: int = 64, variants: str = "") -> tuple[str, str]:
    """Delimiters of this script's section of the results file (one section per space, mode, batch size and device type)."""
    name = ("benchmarks/train_step.py" + ("" if space == "mobilenet" else f" --space {space}") + (" --breakdown" if breakdown else "")
            + variants + ("" if batch_size == 64 else f" --batch-size {batch_size}") + marker_suffix(device))
    return f"<!-- {name}: begin -->", f"<!-- {name}: end -->"


def _loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return nn.functional.cross_entropy(model(x), y)


class Step:
    """One SGD training step of ``model`` on ``(x, y)``; ``before(step)`` runs first (arch sampling).

    ``loss`` computes the loss (``_loss`` or a ``torch.compile`` of it). ``step.count(i)`` runs
    step ``i`` counting the operator calls and host reads of its forward, backward and SGD step;
    ``step.count_phases(i)`` counts forward + backward apart and the step with either kind of SGD.
    """

    def __init__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, before: Callable[[int], None] | None = None,
                 loss: Callable[..., torch.Tensor] = _loss) -> None:
        self.model, self.x, self.y, self.before, self.loss = model.train(), x, y, before, loss
        self.optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def body(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        self.loss(self.model, self.x, self.y).backward()
        self.optimizer.step()

    def __call__(self, i: int) -> None:
        if self.before is not None:
            self.before(i)
        self.body()

    def count(self, i: int) -> tuple[OperatorCounter, HostReadCounter]:
        if self.before is not None:
            self.before(i)
        with OperatorCounter() as ops, HostReadCounter() as reads:
            self.body()
        return ops, reads

    def count_phases(self, i: int) -> dict[str, Any]:
        """Step ``i``'s operator calls: ``"forward+backward"``, and the whole step with SGD as a
        for-loop over the parameters (``"step, SGD for-loop"``: ``torch.optim.SGD``'s default on a
        CPU) and with ``foreach=True`` (``"step, SGD foreach"``: its default on CUDA), each
        ``(calls, kernel calls)``; ``"reads"``: its host reads (a ``HostReadCounter``)."""
        if self.before is not None:
            self.before(i)
        self.optimizer.zero_grad(set_to_none=True)
        with HostReadCounter() as reads:
            with OperatorCounter() as ops:
                self.loss(self.model, self.x, self.y).backward()
            counts: dict[str, Any] = {"forward+backward": (ops.total, ops.kernels), "reads": reads}
            for foreach in (False, True):
                # A fresh optimiser of each kind, counted at its second step (the first creates the momentum buffers).
                optimizer = torch.optim.SGD(self.model.parameters(), lr=0.01, momentum=0.9, foreach=foreach)
                optimizer.step()
                with OperatorCounter() as step:
                    optimizer.step()
                counts[f"step, SGD {'foreach' if foreach else 'for-loop'}"] = (ops.total + step.total, ops.kernels + step.kernels)
        return counts


def make_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, before: Callable[[int], None] | None = None) -> Step:
    """One SGD training step of ``model`` on ``(x, y)``; ``before(step)`` runs first (arch sampling)."""
    return Step(model, x, y, before)


class GraphStep(Step):
    """A :class:`Step` captured as a CUDA graph after ``warmup`` eager steps and replayed.

    For per-example mode, ``before(i)`` activates fresh indices; they are copied into the index
    tensors the graph was captured with (the step's only host-to-device traffic).
    """

    def __init__(self, model, x, y, before=None, supernet=None, warmup: int = 3) -> None:
        super().__init__(model, x, y, before)
        self.supernet = supernet
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for i in range(warmup):
                Step.__call__(self, i)
        torch.cuda.current_stream().wait_stream(side)
        if supernet is not None:
            supernet.context.clear_cache()  # masks from the indices are computed inside the graph
            self.buffers = dict(supernet.context.indices)
        self.graph = torch.cuda.CUDAGraph()
        self.optimizer.zero_grad(set_to_none=False)  # the graph writes into these gradient tensors
        with torch.cuda.graph(self.graph):
            self.loss(self.model, self.x, self.y).backward()
            self.optimizer.step()

    def body(self) -> None:
        self.graph.replay()

    def __call__(self, i: int) -> None:
        if self.before is not None:
            self.before(i)
            for label, buffer in self.buffers.items():
                buffer.copy_(self.supernet.context.indices[label], non_blocking=True)
        self.optimizer.zero_grad(set_to_none=False)
        self.graph.replay()


def build(args: argparse.Namespace) -> dict[str, Callable[[int], None]]:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch_size, 3, args.image_size, args.image_size, generator=g).to(args.device)
    y = torch.randint(0, 10, (args.batch_size,), generator=g).to(args.device)

    builder = SPACES[args.space][0]
    fixed = builder().to(args.device)
    largest = fixed.space.largest()
    fixed.activate(largest)
    exported = fixed.export(largest).to(args.device)
    heaviest = fixed.export(largest).to(args.device)
    space, full = fixed.space, fixed.space.indices(largest)

    def copy(static_shapes: bool = True):
        model = builder().to(args.device)
        model.load_state_dict(fixed.state_dict())
        model.static_shapes = static_shapes
        return model

    def sampler(model, kinds: tuple[str, ...] | None = None) -> Callable[[int], None]:
        """Fresh per-example indices (of the decisions whose label ends in ``.kind`` for a kind in
        ``kinds``, or of all decisions for ``None``); the others stay at the largest candidate."""

        def sample(i: int) -> None:
            indices = space.sample_indices(args.batch_size, seed=i)
            for label in indices:
                if kinds is not None and label.rpartition(".")[2] not in kinds:
                    indices[label] = torch.full((args.batch_size,), full[label])
            model.activate_indices(indices)

        return sample

    per_example = copy()
    steps = {
        "a": Step(fixed, x, y),
        "b": Step(exported, x, y),
        "c": Step(per_example, x, y, before=sampler(per_example)),
        "d": Step(heaviest, x, y),
    }
    if args.breakdown:
        for kind in SPACES[args.space][2]:
            steps[f"c-{kind}"] = Step(per_example, x, y, before=sampler(per_example, (kind,)))
    if args.grouped:
        grouped = copy(static_shapes=False)
        steps["c-grouped"] = Step(grouped, x, y, before=sampler(grouped))
    args.compile_seconds, args.compile_graphs = {}, {}
    if args.compile:
        for key, model, before in (("c", copy(), None), ("d", fixed.export(largest).to(args.device), None)):
            if key == "c":
                before = sampler(model)
            # Compiled at its first call (in measure(), whose partial sections keep what ran before it).
            compiled = torch.compile(_loss, backend=args.compile_backend)
            steps[f"{key}-compiled"] = Step(model, x, y, before=before, loss=compiled)
    if args.cuda_graph:
        graphed = copy()
        try:
            steps["c-graph"] = GraphStep(graphed, x, y, before=sampler(graphed), supernet=graphed)
        except RuntimeError as err:  # a mutable without static-shape support syncs or changes shapes
            print(f"(c-graph) not captured: {str(err).splitlines()[0]}", flush=True)
        steps["d-graph"] = GraphStep(fixed.export(largest).to(args.device), x, y)
    return steps


COUNTED = ("forward+backward", "step, SGD for-loop", "step, SGD foreach")


def count(steps: dict[str, Step]) -> dict[str, dict[str, Any]]:
    """Per configuration (a, c, c-grouped, d), after a warm-up step: operator calls and kernel
    calls (not views) of forward + backward, and of the whole step with either SGD (``COUNTED``),
    and the host reads (``"reads"``) with the reading operators (``"summary"``)."""
    counts = {}
    for key in ("a", "c", "c-grouped", "d"):
        if key in steps:
            steps[key](10_000)  # warm-up: lazily built tables and caches
            counted = steps[key].count_phases(10_001)
            reads = counted.pop("reads")
            counts[key] = {**counted, "reads": reads.total, "summary": reads.summary()}
    return counts


def measure(steps: dict[str, Callable[[int], None]], args: argparse.Namespace,
            progress: Callable[[dict[str, list[float]], list[dict[str, float]]], None] | None = None,
            ) -> tuple[dict[str, list[float]], list[dict[str, float]]]:
    """Per-configuration step times (seconds) over all rounds, and each round's medians, of the
    configurations in ``args.only`` (all when empty). A compiled configuration is compiled at its
    first call (timed apart, in ``args.compile_seconds``). ``progress(times, rounds)`` gets what is
    measured so far after each configuration (the last round possibly incomplete)."""
    only = getattr(args, "only", None)  # (other benchmarks pass a Namespace of repeats, warmup, steps, device)
    keys = [k for k in only if k in steps] if only else list(steps)  # in --only's order (e.g. the compiled pair last)
    times: dict[str, list[float]] = {k: [] for k in keys}
    rounds: list[dict[str, float]] = []
    counter = 0
    # CUDA runs asynchronously: a step's time is only known once the device has finished it.
    sync = (lambda: torch.cuda.synchronize(args.device)) if torch.device(args.device).type == "cuda" else (lambda: None)
    for r in range(args.repeats):
        medians: dict[str, float] = {}
        rounds.append(medians)
        for key in keys:
            step = steps[key]
            if key.endswith("-compiled") and key[:-9] not in args.compile_seconds:
                graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
                sync()
                started = time.perf_counter()
                step(counter)  # the compilation (each per-example batch reuses this graph)
                sync()
                args.compile_seconds[key[:-9]] = time.perf_counter() - started
                graphs = args.compile_graphs[key[:-9]] = torch._dynamo.utils.counters["stats"]["unique_graphs"] - graphs
                print(f"compiled ({key[:-9]}) in {args.compile_seconds[key[:-9]]:.1f} s, {graphs} graph(s)", flush=True)
                counter += 1
            for _ in range(args.warmup):
                step(counter)
                counter += 1
            these = []
            for _ in range(args.steps):
                sync()
                start = time.perf_counter()
                step(counter)
                sync()
                these.append(time.perf_counter() - start)
                counter += 1
            times[key] += these
            medians[key] = statistics.median(these)
            if progress is not None:
                progress(times, rounds)
        print(f"round {r + 1}/{args.repeats}: " + ", ".join(f"{k} {1e3 * v:.1f} ms" for k, v in medians.items()), flush=True)
    return times, rounds


def report(args: argparse.Namespace, times: dict[str, list[float]], rounds: list[dict[str, float]], command: str,
           counts: dict[str, dict[str, Any]] | None = None) -> str:
    med = {k: statistics.median(v) for k, v in times.items() if v}
    names = dict(NAMES)
    for key in med:
        if key.startswith("c-") and key not in NAMES:
            names[key] = f"per-example, only the `*.{key[2:]}` decisions sampled (others largest)"
    begin, end = markers(args.breakdown, args.space, args.device, args.batch_size, variants(args))
    title = "per-example overhead breakdown" if args.breakdown else "supernet vs exported subnet"
    if args.space != "mobilenet":
        title += f", {args.space} space"
    if args.batch_size != 64:
        title += f", batch {args.batch_size}"
    if variants(args):
        title += ", " + " and ".join(v.strip("- ") for v in variants(args).split())
    lines = [
        begin,
        f"## Training-step time: {title} ({device_title(args.device)})",
        "",
        f"- Date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}",
        f"- Machine: {machine(args.device, args.threads)}",
        f"- Command: `{command}`",
        f"- Model: {SPACES[args.space][1]}, batch {args.batch_size} × 3 × {args.image_size} × {args.image_size}, "
        f"SGD (momentum 0.9), same batch every step",
        *([f"- Compiled with `torch.compile(backend={args.compile_backend!r})`; compile time (first step, not timed): "
           + ", ".join(f"({k}) {v:.0f} s" for k, v in args.compile_seconds.items())
           + "; graphs per step (1: no graph break): " + ", ".join(f"({k}) {v}" for k, v in args.compile_graphs.items())]
          if args.compile_seconds else []),
        f"- {args.repeats} rounds × {args.steps} timed steps per configuration (after {args.warmup} warm-up steps "
        f"per configuration and round), interleaved {', '.join(times)} per round; medians over all timed steps",
        "",
        "| configuration | median step (ms) | min (ms) |",
        "|---|---:|---:|",
    ]
    for key, name in names.items():
        if key not in med:
            continue
        lines.append(f"| ({key}) {name} | {1e3 * med[key]:.2f} | {1e3 * min(times[key]):.2f} |")
    lines += ["", "| ratio | measured | per-round | target | |", "|---|---:|---|---:|---|"]
    for (top, bottom), what, target in ((("a", "b"), "a/b fixed-arch supernet / static subnet", TARGET_AB),
                                        (("c", "d"), "c/d per-example supernet / heaviest subnet", TARGET_CD)):
        if top in med and bottom in med:
            ratio = med[top] / med[bottom]
            per_round = ", ".join(f"{r[top] / r[bottom]:.3f}" for r in rounds if top in r and bottom in r)
            lines.append(f"| {what} | {ratio:.3f} | {per_round} | ≤ {target:.2f} | {'met' if ratio <= target else 'MISSED'} |")
    for variant in ("grouped", "compiled", "graph"):
        if f"c-{variant}" in med and f"d-{variant}" in med:
            ratio = med[f"c-{variant}"] / med[f"d-{variant}"]
            lines.append(f"| c/d, both {variant} | {ratio:.3f} | | ≤ {TARGET_CD:.2f} | {'met' if ratio <= TARGET_CD else 'MISSED'} |")
        elif f"c-{variant}" in med and "d" in med:
            lines.append(f"| c-{variant}/d | {med[f'c-{variant}'] / med['d']:.3f} | | ≤ {TARGET_CD:.2f} | |")
    missing = [f"({k})" for k in times if not times[k]]
    if rounds and len(rounds[-1]) < len(times):
        missing.append(f"the rest of round {len(rounds)} of {args.repeats}")
    if missing:  # a partial section: the run was stopped (a time limit) before these were timed
        lines += ["", f"Partial: the run stopped before timing {', '.join(missing)}."]
    if counts:
        lines += [
            "",
            "Operator calls and host reads per training step (activation excluded), counted with "
            "`lightning_nas.profiling.counters` (aten calls below autograd, as calls / kernel calls: kernel calls leave out views; "
            "a host read is a GPU sync on a GPU): forward + backward alone, and the whole step with SGD (momentum 0.9) "
            "as a for-loop over the parameters (`torch.optim.SGD`'s default on a CPU, what the times above use) and with "
            "`foreach=True` (its default on CUDA: a handful of calls for all parameters, so the per-candidate "
            f"parameters cost no calls there). Target: (c) calls ≤ {TARGET_CALLS:.0f}× (d).",
            "",
            "| configuration | " + " | ".join(f"{what}: calls / kernels | × (d)" for what in COUNTED) + " | host reads |",
            "|---|" + "---:|---:|" * len(COUNTED) + "---:|",
        ]
        for key, counted in counts.items():
            cells = [f"{counted[what][0]} / {counted[what][1]} | {counted[what][0] / counts['d'][what][0]:.2f}" for what in COUNTED]
            lines.append(f"| ({key}) {names[key]} | " + " | ".join(cells) + f" | {counted['reads']} |")
    lines.append(end)
    return "\n".join(lines) + "\n"


def variants(args: argparse.Namespace) -> str:
    """The options that add configurations, as they appear in the section marker."""
    return "".join(f" --{name}" for name in ("grouped", "compile", "cuda-graph") if getattr(args, name.replace("-", "_")))



def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--space", choices=sorted(SPACES), default="mobilenet", help="the supernet to time")
    parser.add_argument("--steps", type=int, default=30,
                        help="timed steps per configuration and round (at least 30 on a CPU, 10 on a GPU, whose step times hardly scatter)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per configuration and round")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved rounds")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--image-size", type=int, default=None, help="input side in pixels (default 224 for binas-imagenet, else 32)")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "RESULTS.md")
    parser.add_argument(
        "--breakdown", action="store_true",
        help="also time per-example mode with only the widths, only the kernels or only the depths sampled",
    )
    parser.add_argument("--grouped", action="store_true", help="also time per-example mode with rows grouped (static_shapes=False)")
    parser.add_argument("--compile", action="store_true", help="also time (c) and (d) through torch.compile")
    parser.add_argument("--compile-backend", default="inductor", help="torch.compile backend for --compile")
    parser.add_argument("--cuda-graph", action="store_true", help="also time (c) and (d) replayed from CUDA graphs (CUDA only)")
    parser.add_argument(
        "--only", default="",
        help="comma-separated configurations to time (e.g. c,d,c-compiled,d-compiled,c-graph,d-graph); default all. "
             "Operator calls are counted for (a), (c), (c-grouped) and (d) either way",
    )
    parser.add_argument("--no-write", action="store_true", help="print the section without writing --out")
    args = parser.parse_args(argv)
    if args.image_size is None:
        args.image_size = IMAGE_SIZES.get(args.space, 32)
    if args.steps < (10 if torch.device(args.device).type == "cuda" else 30):
        parser.error("--steps must be at least 30 (10 with a CUDA --device)")
    args.only = [k.strip() for k in args.only.split(",") if k.strip()]
    unknown = [k for k in args.only if k not in NAMES]
    if unknown:
        parser.error(f"--only: unknown configurations {unknown}; known: {', '.join(NAMES)}")
    if args.repeats < 1 or args.warmup < 0 or args.batch_size < 1:
        parser.error("--repeats and --batch-size must be positive, --warmup non-negative")
    if args.cuda_graph and torch.device(args.device).type != "cuda":
        parser.error("--cuda-graph needs --device cuda")
    torch.set_num_threads(args.threads)

    section = markers(args.breakdown, args.space, args.device, args.batch_size, variants(args))

    def run(command: str) -> str:
        steps = build(args)
        counts = count(steps)
        for key, counted in counts.items():
            print(f"({key}) " + ", ".join(f"{what} {counted[what][0]} calls ({counted[what][1]} kernel calls)" for what in COUNTED)
                  + f", {counted['reads']} host reads {counted['summary']}", flush=True)

        def progress(times, rounds):  # a run stopped by a time limit (run_on_gpu.sh) keeps what it measured
            if not args.no_write:
                write_section(args.out, report(args, times, rounds, command, counts), *section)

        return report(args, *measure(steps, args, progress), command, counts)

    publish("train_step.py", argv, args.out, not args.no_write, run, *section)


if __name__ == "__main__":
    main()
