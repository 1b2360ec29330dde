"""``lightning-nas select``: the best subnet under resource limits, from saved tables, no Python.

Usage::

    lightning-nas select --accuracy accuracy.json --latency latency.json --limit 'latency<=3.0' --out arch.json
    lightning-nas select --accuracy acc.json --latency lat.json --flops lat.flops.json \\
        --limit 'latency<=3.0' --limit 'flops<=40' --limit 'latency>=1.0' --out arch.json
    lightning-nas select --accuracy acc.json --table energy=energy.json --limit 'energy<=2' --out arch.json \\
        --model mypackage.models:make_supernet --space-kwargs '{"width": 0.5}'

The tables are the JSON files that ``ContributionEstimation`` (accuracy), ``LatencyProfiler`` /
``lightning-nas profile`` (latency, ``<stem>.flops.json``, ``<stem>.params.json``) write. Each
``--limit`` is ``NAME<=VALUE`` or ``NAME>=VALUE`` (in the table's unit, e.g. ms or MFLOPs) on a
table given as ``--latency``, ``--flops``, ``--params`` or ``--table NAME=PATH``; several limits on
one name combine. The search is :func:`lightning_nas.solvers.search_constrained` (exact MILP by
default). The search space is read from the tables themselves (each stores its structure), or
built from ``--space``/``--model`` (or a checkpoint's hyper-parameters, ``--checkpoint``) when the
supernet has decisions no table covers.

The pick, its predicted accuracy and resources, and the solver's certificate (status, optimality
gap, solver, time) are printed and written to ``--out`` as
``{"format": "lightning-nas-arch", "arch": {...}, "result": SearchResult.to_dict()}``, which
``lightning-nas export --arch`` reads. An infeasible limit exits with status 2 and a message giving
the smallest (or largest) value any subnet reaches.
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from pathlib import Path
from typing import Any

from lightning_nas.profile_cli import _json_object, non_negative_int

__all__ = ["ARCH_FORMAT", "add_arguments", "main", "parse_limit", "read_arch", "run", "staged_from_structure"]

#: ``format`` of the files ``select`` writes.
ARCH_FORMAT = "lightning-nas-arch"

_LIMIT = re.compile(r"^\s*([A-Za-z_][\w.\-]*)\s*(<=|>=)\s*(\S+)\s*$")


def parse_limit(text: str) -> tuple[str, str, float]:
    """``"latency<=3.0"`` → ``("latency", "upper", 3.0)``; ``"flops>=10"`` → ``("flops", "lower", 10.0)``.

    Raises:
        argparse.ArgumentTypeError: not ``NAME<=VALUE`` / ``NAME>=VALUE`` with a finite number.
    """
    match = _LIMIT.match(text)
    if match is None:
        raise argparse.ArgumentTypeError(f"must be NAME<=VALUE or NAME>=VALUE such as 'latency<=3.0', got {text!r}")
    name, op, number = match.groups()
    try:
        value = float(number)
    except ValueError:
        raise argparse.ArgumentTypeError(f"the bound of {text!r} must be a number, got {number!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"the bound of {text!r} must be a finite number, got {number!r}")
    return name, "upper" if op == "<=" else "lower", value


def _named_table(text: str) -> tuple[str, Path]:
    name, sep, path = text.partition("=")
    if not sep or not name or not path or not re.fullmatch(r"[A-Za-z_][\w.\-]*", name):
        raise argparse.ArgumentTypeError(f"must be NAME=PATH such as 'energy=energy.json', got {text!r}")
    return name, Path(path)


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``select`` command's options to ``parser`` (a sub-parser of ``lightning-nas``)."""
    parser.add_argument("--accuracy", required=True, type=Path, help="accuracy table JSON (ContributionEstimation's `path`): maximised")
    parser.add_argument("--latency", type=Path, help="latency table JSON (LatencyProfiler / lightning-nas profile), named 'latency'")
    parser.add_argument("--flops", type=Path, help="FLOPs table JSON (<stem>.flops.json), named 'flops'")
    parser.add_argument("--params", type=Path, help="parameter-count table JSON (<stem>.params.json), named 'params'")
    parser.add_argument("--table", type=_named_table, action="append", default=[], metavar="NAME=PATH",
                        help="any other additive table (energy, memory), limited as NAME; repeatable")
    parser.add_argument("--limit", type=parse_limit, action="append", default=[], metavar="NAME<=VALUE",
                        help="a bound on a table, e.g. 'latency<=3.0' or 'flops>=10' (the table's unit); repeatable")
    parser.add_argument("--out", required=True, type=Path, help="JSON file for the pick (read by lightning-nas export --arch)")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--space", help="registered space the tables were made for (default: the structure stored in the tables)")
    which.add_argument("--model", metavar="MODULE:FACTORY", help="your own supernet factory (imports and runs your code)")
    which.add_argument("--checkpoint", type=Path, help="a lightning-nas fit checkpoint: its model hyper-parameters rebuild the supernet")
    parser.add_argument("--space-kwargs", type=_json_object, default={}, help="JSON object of keyword arguments for --space / --model")
    parser.add_argument("--method", default="milp", choices=["milp", "miqcp", "bcfw", "evolution"],
                        help="milp: exact (default, HiGHS); bcfw: BINAS Algorithm 1; evolution: heuristic; miqcp needs SCIP/Gurobi/...")
    parser.add_argument("--solver", default=None, help="Pyomo solver name for milp/miqcp (default: appsi_highs for milp)")
    parser.add_argument("--time-limit", type=float, default=None, help="solver time limit in seconds")
    parser.add_argument("--require-optimal", action="store_true", help="fail rather than return an arch not proven optimal")
    parser.add_argument("--seed", type=non_negative_int, default=0, help="seed of bcfw / evolution")
    return parser


# -- the search space -----------------------------------------------------------------------------
def _hashable(value: Any) -> Any:
    return tuple(_hashable(v) for v in value) if isinstance(value, list) else value


def staged_from_structure(structure: list[dict[str, Any]]) -> Any:
    """A :class:`~lightning_nas.spaces.staged.StagedSpace` rebuilt from a table file's ``structure``.

    Every decision is one the tables cover; its candidates are the values its configurations take,
    in their order. Enough to load the tables and solve; the arch it gives has every label the tables
    have (a supernet with further, uncovered decisions needs ``--space``/``--model``/``--checkpoint``).

    Raises:
        ValueError: a malformed structure (the message says which field).
    """
    from lightning_nas.spaces.search_space import Decision, SearchSpace
    from lightning_nas.spaces.staged import Stage, StagedSpace

    if not isinstance(structure, list) or not structure:
        raise ValueError(f"a table's `structure` must be a non-empty list of stages, got {type(structure).__name__}")
    values: dict[str, list[Any]] = {}
    stages = []
    try:
        for st in structure:
            # A layer's keep decision is a depth of False / True (0 / 1 blocks): kept as bools, the supernet's values.
            depth_label, depths = st["depth_label"], tuple(d if isinstance(d, bool) else int(d) for d in st["depths"])
            if depth_label is not None:
                values.setdefault(depth_label, [])
                values[depth_label] += [d for d in depths if d not in values[depth_label]]
            block_labels = tuple(tuple(labels) for labels in st["block_labels"])
            configs = tuple(tuple(tuple(_hashable(v) for v in config) for config in unit) for unit in st["configs"])
            for labels, unit in zip(block_labels, configs):
                for k, label in enumerate(labels):
                    seen = values.setdefault(label, [])
                    seen += [c[k] for c in unit if c[k] not in seen]
            stages.append(Stage(depth_label, depths, block_labels, configs))
    except (KeyError, TypeError, IndexError) as err:
        raise ValueError(f"a table's `structure` is malformed ({type(err).__name__}: {err}); was it written by BilinearTable.save?") from err
    space = SearchSpace([Decision(label, tuple(vals), vals[0]) for label, vals in values.items()])
    return StagedSpace(space, stages)


def _supernet_from_args(args: argparse.Namespace) -> Any:
    """The supernet of ``--space``/``--model``/``--checkpoint``, or ``None`` when none is given."""
    from lightning_nas.classification import build_network

    if args.checkpoint is not None:
        from lightning_nas.export_cli import supernet_from_checkpoint

        return supernet_from_checkpoint(args.checkpoint, load_weights=False)
    if args.space is None and args.model is None:
        return None
    return build_network(args.space, args.space_kwargs, args.model)


def _load_tables(args: argparse.Namespace) -> tuple[Any, dict[str, Any]]:
    from lightning_nas.bilinear import BilinearTable
    from lightning_nas.io import read_json
    from lightning_nas.spaces.staged import StagedSpace

    files: dict[str, Path] = {}
    for name in ("latency", "flops", "params"):
        if getattr(args, name) is not None:
            files[name] = getattr(args, name)
    for name, path in args.table:
        if name in files or name == "accuracy":
            raise ValueError(f"`--table {name}={path}`: the name {name!r} is already given; each table needs its own name")
        files[name] = path
    supernet = _supernet_from_args(args)
    if supernet is not None:
        staged = StagedSpace.of(supernet)
    else:
        staged = staged_from_structure(read_json(args.accuracy, "accuracy table (--accuracy)").get("structure"))
    accuracy = BilinearTable.load(args.accuracy, staged)
    tables = {}
    for name, path in files.items():
        table = BilinearTable.load(path, staged)
        if table.name != name:  # the limit's name is the option's
            table = BilinearTable(staged, table.constant, table.block, table.depth, name=name, unit=table.unit,
                                  metadata=table.metadata, link=table.link)
        tables[name] = table
    return accuracy, tables


def _format_value(value: Any) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def run(args: argparse.Namespace) -> int:
    """Solve for ``args`` (see :func:`add_arguments`), print the pick and the certificate, write ``--out``; returns 0.

    Raises:
        ValueError: a limit on a table that was not given, a table of another space, no limit at all.
        lightning_nas.solvers.InfeasibleError: no arch meets the limits (its message gives the
            smallest/largest achievable value).
        OSError: a table cannot be read or ``--out`` cannot be written.
    """
    from lightning_nas.io import atomic_write_json, check_writable
    from lightning_nas.solvers import Limit, search_constrained

    check_writable(args.out, "`--out`")
    if not args.limit:
        raise ValueError("give at least one `--limit` such as 'latency<=3.0' (without one the answer is simply the most accurate subnet)")
    accuracy, tables = _load_tables(args)
    bounds: dict[str, dict[str, float]] = {}
    for name, which, value in args.limit:
        if name not in tables:
            raise ValueError(
                f"`--limit` on {name!r}, but no table of that name was given; tables: {sorted(tables) or 'none'} "
                "(give --latency, --flops, --params or --table NAME=PATH)"
            )
        if which in bounds.setdefault(name, {}):
            raise ValueError(f"`--limit`: two {which} bounds on {name!r} ({bounds[name][which]} and {value}); give one")
        bounds[name][which] = value
    limits = [Limit(tables[name], upper=b.get("upper"), lower=b.get("lower")) for name, b in bounds.items()]
    result = search_constrained(
        accuracy, limits, method=args.method, solver=args.solver, seed=args.seed, time_limit=args.time_limit,
        require_optimal=args.require_optimal,
    )
    predicted = {name: float(table.predict(result.arch)) for name, table in tables.items()}
    record = result.to_dict()
    record["predicted"] = {"accuracy": float(accuracy.predict(result.arch)), **predicted}
    atomic_write_json(args.out, {"format": ARCH_FORMAT, "arch": record["arch"], "result": record})
    bound_text = ", ".join(
        f"{name} {'>= ' + _format_value(b['lower']) if 'lower' in b else ''}{' and ' if len(b) == 2 else ''}"
        f"{'<= ' + _format_value(b['upper']) if 'upper' in b else ''} {tables[name].unit}".rstrip()
        for name, b in bounds.items()
    )
    lines = [
        f"pick under {bound_text}:",
        *(f"  {label} = {value!r}" for label, value in record["arch"].items()),
        f"predicted accuracy {record['predicted']['accuracy']:.4f} ({accuracy.unit or 'fraction'})",
        *(f"predicted {name} {value:.6g} {tables[name].unit}" for name, value in predicted.items()),
        f"certificate: status {result.status}" + (f", optimality gap {result.gap:.3g}" if result.gap is not None else "")
        + f", method {result.method}" + (f" ({result.solver})" if result.solver else "")
        + f", feasible {result.feasible}, {result.solve_seconds:.2f} s",
    ]
    if result.message:
        lines.append(f"note: {result.message}")
    details = {k: v for k, v in record["details"].items() if isinstance(v, (int, float, str, bool)) or v is None}
    if details:
        lines.append("solver details: " + ", ".join(f"{k} {_format_value(v)}" for k, v in details.items()))
    lines.append(f"written to {args.out}")
    print("\n".join(lines))
    return 0


def read_arch(path: str | Path) -> dict[str, Any]:
    """The arch in ``path``: a ``select`` output (``{"format": "lightning-nas-arch", "arch": ...}``) or a plain arch dict.

    Lists are turned back into tuples where a candidate is a tuple (done by the caller's space
    validation); here the dict is returned as read.

    Raises:
        OSError: the file cannot be read.
        ValueError: not JSON, or not an arch object.
    """
    from lightning_nas.io import read_json

    data = read_json(path, "architecture file (--arch)")
    if data.get("format") == ARCH_FORMAT:
        data = data.get("arch")
        if not isinstance(data, dict):
            raise ValueError(f"{path}: `arch` must be a JSON object {{label: value}}, got {type(data).__name__}")
    return data


def main(argv: list[str] | None = None) -> int:
    """Standalone entry point: ``python -m lightning_nas.select_cli --accuracy ... --limit ... --out ...``."""
    from lightning_nas.solvers import InfeasibleError

    parser = add_arguments(argparse.ArgumentParser(prog="lightning-nas select", description=__doc__.split("\n\n")[0]))
    args = parser.parse_args(argv)
    try:
        return run(args)
    except InfeasibleError as err:
        parser.error(f"infeasible: {err}")
    except (ValueError, OSError, ImportError) as err:
        parser.error(str(err))
    return 2


if __name__ == "__main__":
    sys.exit(main())
