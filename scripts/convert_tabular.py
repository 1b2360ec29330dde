"""Convert a table of NAS-Bench-201 results into the CSV format ``lightning_nas`` reads.

The input is any CSV with one row per NB201 cell: a column holding the arch (an NB201 string such as
``|nor_conv_3x3~0|+|none~0|skip_connect~1|+|...|`` or a 6-digit op code), and numeric columns under
any names. The output has ``arch_str`` and ``op_code`` first, then the numeric columns renamed to the
naming scheme the library infers columns from (see ``docs/tabular_format.md``)::

    <prefix>_valid_<epochs>, <prefix>_test_<epochs>   accuracy [%]
    [<prefix>_]params_M, [<prefix>_]flops_M            parameters [M], FLOPs [M]
    [<prefix>_]lat_ms_<device>, [<prefix>_]energy_mJ_<device>   latency [ms], energy [mJ]

Usage::

    python scripts/convert_tabular.py results.csv nb201_cifar100.csv --arch-column arch \\
        --rename val_acc=c100_valid_200 --rename test_acc=c100_test_200 --rename flops=c100_flops_M \\
        --scale flops=1e-6

Columns not renamed are kept under their own names unless ``--only-renamed``; ``--drop`` removes some.
``--scale COLUMN=FACTOR`` multiplies a column (after renaming, by its input name) — e.g. FLOPs counted
in units to millions, or a fraction accuracy ``0.94`` to percent with ``100``. The result is checked by
loading it with :class:`~lightning_nas.evaluators.TabularBenchmark`; the script prints the columns the
evaluator infers and says whether every one of the 15,625 cells has a row (a search needs all). It never
replaces an existing output without ``--overwrite`` and writes atomically.
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import sys
from pathlib import Path

from lightning_nas.evaluators.tabular import TabularBenchmark, TabularEvaluator, infer_columns
from lightning_nas.io import atomic_write_text
from lightning_nas.spaces.nb201 import nb201_from_op_code, nb201_from_string, nb201_op_code, nb201_string

KEY_COLUMNS = ("arch_str", "op_code")


def _pair(text: str) -> tuple[str, str]:
    old, sep, new = text.partition("=")
    if not sep or not old.strip() or not new.strip():
        raise argparse.ArgumentTypeError(f"must be NAME=VALUE, got {text!r}")
    return old.strip(), new.strip()


def parse_arch(text: str, where: str) -> dict[str, str]:
    """An NB201 arch from its string (``|op~0|+|...|``) or its 6-digit op code."""
    text = text.strip()
    try:
        return nb201_from_string(text) if text.startswith("|") else nb201_from_op_code(text.zfill(6))
    except ValueError as err:
        raise ValueError(f"{where}: {err}") from None


def convert(source: Path, *, arch_column: str, rename: dict[str, str], scale: dict[str, float], drop: list[str],
            only_renamed: bool) -> str:
    """The converted CSV text.

    Raises:
        ValueError: a missing column, an unparsable arch or number, or two columns with the same output
            name (naming the file, line and column).
    """
    with source.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        header = [h.strip() for h in reader.fieldnames or []]
        reader.fieldnames = header
        for option, names in (("--arch-column", [arch_column]), ("--rename", list(rename)), ("--scale", list(scale)),
                              ("--drop", drop)):
            missing = [n for n in names if n not in header]
            if missing:
                raise ValueError(f"{option}: columns {missing} are not in {source}; its columns: {header}")
        kept = [h for h in header if h != arch_column and h not in drop and h not in KEY_COLUMNS
                and (h in rename or not only_renamed)]
        names = [rename.get(h, h) for h in kept]
        clashes = sorted({n for n in names if names.count(n) > 1} | {n for n in names if n in KEY_COLUMNS})
        if clashes:
            raise ValueError(f"--rename: output columns {clashes} would appear twice (or clash with arch_str/op_code)")
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow([*KEY_COLUMNS, *names])
        for line, row in enumerate(reader, start=2):
            arch = parse_arch(row[arch_column] or "", f"{source}:{line}: column {arch_column!r}")
            cells = []
            for h in kept:
                text = (row[h] or "").strip()
                if text == "":
                    cells.append("")
                    continue
                try:
                    value = float(text) * scale.get(h, 1.0)
                except ValueError:
                    raise ValueError(f"{source}:{line}: column {h!r} must be numeric, got {text!r}") from None
                cells.append("" if math.isnan(value) else repr(value))
            writer.writerow([nb201_string(arch), nb201_op_code(arch), *cells])
    return out.getvalue()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", type=Path, help="the input CSV")
    parser.add_argument("out", type=Path, help="the NB201-format CSV to write")
    parser.add_argument("--arch-column", default="arch_str", help="the input column holding the NB201 string or op code")
    parser.add_argument("--rename", type=_pair, action="append", default=[], metavar="OLD=NEW",
                        help="rename a column (repeatable), e.g. val_acc=c100_valid_200")
    parser.add_argument("--scale", type=_pair, action="append", default=[], metavar="COLUMN=FACTOR",
                        help="multiply an input column by FACTOR (repeatable), e.g. flops=1e-6")
    parser.add_argument("--drop", action="append", default=[], metavar="COLUMN", help="leave an input column out")
    parser.add_argument("--only-renamed", action="store_true", help="keep only the renamed columns")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    args = parser.parse_args(argv)
    scale = {}
    for column, factor in args.scale:
        try:
            scale[column] = float(factor)
        except ValueError:
            parser.error(f"--scale {column}={factor}: FACTOR must be a number")
    if not args.source.is_file():
        parser.error(f"no input CSV at {str(args.source)!r}")
    if args.out.exists() and not args.overwrite:
        parser.error(f"{str(args.out)!r} already exists; pass --overwrite to replace it")
    try:
        text = convert(args.source, arch_column=args.arch_column, rename=dict(args.rename), scale=scale, drop=args.drop,
                       only_renamed=args.only_renamed)
    except (ValueError, UnicodeDecodeError, csv.Error) as err:
        parser.error(str(err))
    atomic_write_text(args.out, text)
    bench = TabularBenchmark.from_csv(args.out)  # duplicate archs and the like fail here, naming the file
    print(f"wrote {args.out}: {len(bench)} rows, columns {bench.columns}")
    try:
        print(f"inferred columns: {infer_columns(bench.columns, source=str(args.out))}")
    except ValueError as err:
        print(f"note: {err}", file=sys.stderr)
    size = bench.search_space().size
    if len(bench) < size:
        print(f"note: {len(bench)} of the {size} NB201 cells have a row; TabularEvaluator (and a search) needs all",
              file=sys.stderr)
    else:
        try:
            TabularEvaluator(bench)
            print("ready: TabularEvaluator reads it with no column options")
        except ValueError as err:
            print(f"note: {err}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
