"""Training-step time of a supernet against its exported static subnets (CPU, or GPU with ``--device cuda``).

``--space mobilenet`` (default) times ``mobilenet_supernet()``; ``--space binas`` times
``binas_supernet(preset="tiny")`` (the BINAS space: expansion, kernel, SE and depth decisions) at
32×32; ``--space binas-imagenet`` times the paper's ImageNet backbone, ``binas_supernet()``, at 224×224.

Four configurations, measured interleaved in rounds (a, b, c, d, a, b, ...) so that machine noise
hits all of them alike:

* (a) ``supernet``: the supernet with one fixed architecture active (the largest);
* (b) ``exported``: that architecture exported as a static network;
* (c) ``per-example``: the supernet with a fresh uniformly sampled architecture per example each
  step (``space.sample_indices`` + ``activate_indices``, included in the step time);
* (d) ``heaviest``: the heaviest static subnet (the exported largest architecture, a separate copy).

``--breakdown`` adds (c) variants where only one kind of decision (widths, kernels, depths) is
sampled per example and the others are fixed at the largest, to show where the overhead of (c) goes.
Each space writes its own sections of the results file.

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

import torch
from torch import nn

from results_file import device_title, machine, marker_suffix, publish  # benchmarks/ is the script's directory
from lightning_nas.spaces import binas_supernet, mobilenet_supernet

TARGET_AB, TARGET_CD = 1.10, 1.5
# Per space: (builder, description for the report, decision kinds for --breakdown).
SPACES = {
    "mobilenet": (mobilenet_supernet, "`mobilenet_supernet()` defaults", ("expand", "kernel", "depth")),
    "binas": (lambda: binas_supernet(preset="tiny"), '`binas_supernet(preset="tiny")`', ("expand", "kernel", "se", "depth")),
    # The paper's ImageNet backbone at its own input size (224×224 unless --image-size says otherwise).
    "binas-imagenet": (binas_supernet, "`binas_supernet()` (the ImageNet preset)", ("expand", "kernel", "se", "depth")),
}
IMAGE_SIZES = {"binas-imagenet": 224}  # default --image-size per space (else 32)
NAMES = {
    "a": "supernet, largest arch active",
    "b": "exported largest arch",
    "c": "supernet, per-example archs",
    "d": "heaviest static subnet",
}


def markers(breakdown: bool, space: str = "mobilenet", device: str = "cpu", batch_size: int = 64) -> tuple[str, str]:
    """Delimiters of this script's section of the results file (one section per space, mode, batch size and device type)."""
    name = ("benchmarks/train_step.py" + ("" if space == "mobilenet" else f" --space {space}") + (" --breakdown" if breakdown else "")
            + ("" if batch_size == 64 else f" --batch-size {batch_size}") + marker_suffix(device))
    return f"<!-- {name}: begin -->", f"<!-- {name}: end -->"


def make_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, before: Callable[[int], None] | None = None) -> Callable[[int], None]:
    """One SGD training step of ``model`` on ``(x, y)``; ``before(step)`` runs first (arch sampling)."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    model.train()

    def step(i: int) -> None:
        if before is not None:
            before(i)
        optimizer.zero_grad(set_to_none=True)
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()

    return step


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
    per_example = builder().to(args.device)
    per_example.load_state_dict(fixed.state_dict())

    space, full = per_example.space, per_example.space.indices(largest)

    def sampler(kinds: tuple[str, ...] | None) -> Callable[[int], None]:
        """Fresh per-example indices (of the decisions whose label ends in ``.kind`` for a kind in
        ``kinds``, or of all decisions for ``None``); the others stay at the largest candidate."""

        def sample(i: int) -> None:
            indices = space.sample_indices(args.batch_size, seed=i)
            for label in indices:
                if kinds is not None and label.rpartition(".")[2] not in kinds:
                    indices[label] = torch.full((args.batch_size,), full[label])
            per_example.activate_indices(indices)

        return sample

    steps = {
        "a": make_step(fixed, x, y),
        "b": make_step(exported, x, y),
        "c": make_step(per_example, x, y, before=sampler(None)),
        "d": make_step(heaviest, x, y),
    }
    if args.breakdown:
        for kind in SPACES[args.space][2]:
            steps[f"c-{kind}"] = make_step(per_example, x, y, before=sampler((kind,)))
    return steps


def measure(steps: dict[str, Callable[[int], None]], args: argparse.Namespace) -> tuple[dict[str, list[float]], list[dict[str, float]]]:
    """Per-configuration step times (seconds) over all rounds, and each round's medians."""
    times: dict[str, list[float]] = {k: [] for k in steps}
    rounds: list[dict[str, float]] = []
    counter = 0
    # CUDA runs asynchronously: a step's time is only known once the device has finished it.
    sync = (lambda: torch.cuda.synchronize(args.device)) if torch.device(args.device).type == "cuda" else (lambda: None)
    for r in range(args.repeats):
        medians = {}
        for key, step in steps.items():
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
        rounds.append(medians)
        print(
            f"round {r + 1}/{args.repeats}: "
            + ", ".join(f"{k} {1e3 * v:.1f} ms" for k, v in medians.items())
            + f" | a/b {medians['a'] / medians['b']:.3f} c/d {medians['c'] / medians['d']:.3f}",
            flush=True,
        )
    return times, rounds


def report(args: argparse.Namespace, times: dict[str, list[float]], rounds: list[dict[str, float]], command: str) -> str:
    med = {k: statistics.median(v) for k, v in times.items()}
    ab, cd = med["a"] / med["b"], med["c"] / med["d"]
    per_round_ab = [r["a"] / r["b"] for r in rounds]
    per_round_cd = [r["c"] / r["d"] for r in rounds]
    names = dict(NAMES)
    for key in med:
        if key.startswith("c-"):
            names[key] = f"per-example, only the `*.{key[2:]}` decisions sampled (others largest)"
    begin, end = markers(args.breakdown, args.space, args.device, args.batch_size)
    title = "per-example overhead breakdown" if args.breakdown else "supernet vs exported subnet"
    if args.space != "mobilenet":
        title += f", {args.space} space"
    if args.batch_size != 64:
        title += f", batch {args.batch_size}"
    lines = [
        begin,
        f"## Training-step time: {title} ({device_title(args.device)})",
        "",
        f"- Date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}",
        f"- Machine: {machine(args.device, args.threads)}",
        f"- Command: `{command}`",
        f"- Model: {SPACES[args.space][1]}, batch {args.batch_size} × 3 × {args.image_size} × {args.image_size}, "
        f"SGD (momentum 0.9), same batch every step",
        f"- {args.repeats} rounds × {args.steps} timed steps per configuration (after {args.warmup} warm-up steps "
        f"per configuration and round), interleaved {', '.join(med)} per round; medians over all {args.repeats * args.steps} timed steps",
        "",
        "| configuration | median step (ms) | min (ms) |",
        "|---|---:|---:|",
    ]
    for key, name in names.items():
        lines.append(f"| ({key}) {name} | {1e3 * med[key]:.2f} | {1e3 * min(times[key]):.2f} |")
    lines += [
        "",
        "| ratio | measured | per-round | target | |",
        "|---|---:|---|---:|---|",
        f"| a/b fixed-arch supernet / static subnet | {ab:.3f} | {', '.join(f'{v:.3f}' for v in per_round_ab)} | "
        f"≤ {TARGET_AB:.2f} | {'met' if ab <= TARGET_AB else 'MISSED'} |",
        f"| c/d per-example supernet / heaviest subnet | {cd:.3f} | {', '.join(f'{v:.3f}' for v in per_round_cd)} | "
        f"≤ {TARGET_CD:.2f} | {'met' if cd <= TARGET_CD else 'MISSED'} |",
        end,
    ]
    return "\n".join(lines) + "\n"



def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--space", choices=sorted(SPACES), default="mobilenet", help="the supernet to time")
    parser.add_argument("--steps", type=int, default=30, help="timed steps per configuration and round (at least 30)")
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
    parser.add_argument("--no-write", action="store_true", help="print the section without writing --out")
    args = parser.parse_args(argv)
    if args.image_size is None:
        args.image_size = IMAGE_SIZES.get(args.space, 32)
    if args.steps < 30:
        parser.error("--steps must be at least 30")
    if args.repeats < 1 or args.warmup < 0 or args.batch_size < 1:
        parser.error("--repeats and --batch-size must be positive, --warmup non-negative")
    torch.set_num_threads(args.threads)
    publish("train_step.py", argv, args.out, not args.no_write, lambda command: report(args, *measure(build(args), args), command),
            *markers(args.breakdown, args.space, args.device, args.batch_size))


if __name__ == "__main__":
    main()
