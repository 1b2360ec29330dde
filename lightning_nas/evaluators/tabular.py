"""A tabular benchmark: one row of measured metrics per architecture of the NAS-Bench-201 cell space.

The table is a CSV in the format of NAS-Bench-201 re-exports: an ``arch_str`` column (the NB201 string)
and/or an ``op_code`` column (6 digits, see :func:`~lightning_nas.spaces.nb201.nb201_op_code`), and any
number of numeric columns (accuracies, parameters, FLOPs, latencies, …). Every column other than
``arch_str`` and ``op_code`` is read as ``float64``; an empty cell or ``nan`` reads as NaN.

Architectures are the dicts of :mod:`lightning_nas.spaces.nb201` (``{"edge_1_0": "nor_conv_3x3", ...}``).
The library never assumes where a table lives: the caller passes the path.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lightning_nas.spaces.nb201 import nb201_from_op_code, nb201_from_string, nb201_op_code, nb201_search_space
from lightning_nas.spaces.search_space import SearchSpace

__all__ = ["NB201_COST_COLUMNS", "TabularBenchmark", "TabularEvaluator"]

#: Columns that identify an architecture rather than measure it.
KEY_COLUMNS: tuple[str, ...] = ("arch_str", "op_code")
#: The cost columns of the NB201 CIFAR-10 table: parameters [M], FLOPs [M], device latencies [ms], energy [mJ].
NB201_COST_COLUMNS: tuple[str, ...] = (
    "c10_params_M", "c10_flops_M", "lat_ms_raspi4", "lat_ms_pixel3", "lat_ms_fpga", "lat_ms_eyeriss",
    "lat_ms_1080ti_1", "lat_ms_1080ti_32", "lat_ms_gold_6226", "energy_mJ_fpga",
)


class TabularBenchmark:
    """Metrics of every architecture in a table, looked up by arch dict.

    Args:
        archs: the NB201 arch dicts, one per row, no duplicates.
        table: ``{column name: float array (len(archs),)}``, aligned with ``archs``.
        source: where the table came from (used in messages only).

    Raises:
        ValueError: duplicate archs, misaligned columns, or a column named like a key column.
    """

    def __init__(self, archs: Sequence[Mapping[str, Any]], table: Mapping[str, Any], *, source: str = "table") -> None:
        self.source = source
        self._codes: dict[str, int] = {}
        self._archs: list[dict[str, str]] = []
        for row, arch in enumerate(archs):
            code = nb201_op_code(arch)
            if code in self._codes:
                raise ValueError(f"{source}: rows {self._codes[code]} and {row} hold the same arch (op code {code})")
            self._codes[code] = row
            self._archs.append(nb201_from_op_code(code))
        self._table: dict[str, np.ndarray] = {}
        for name, values in table.items():
            if name in KEY_COLUMNS:
                raise ValueError(f"{source}: {name!r} identifies archs and cannot be a numeric column")
            array = np.asarray(values, dtype=np.float64)
            if array.shape != (len(self._archs),):
                raise ValueError(
                    f"{source}: column {name!r} has shape {array.shape}, expected ({len(self._archs)},) like `archs`"
                )
            array.setflags(write=False)
            self._table[name] = array

    @classmethod
    def from_csv(cls, path: str | os.PathLike) -> TabularBenchmark:
        """Load a table in the NB201 CSV format from ``path``.

        Raises:
            FileNotFoundError: no file at ``path``.
            ValueError: no header, no ``arch_str``/``op_code`` column, a row with the wrong number of
                cells, a non-numeric value, an invalid arch, ``arch_str`` and ``op_code`` that disagree,
                or a duplicate arch — naming the file, line and column.
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no tabular benchmark at {str(path)!r}")
        try:
            return cls._read_csv(path)
        except UnicodeDecodeError as err:
            raise ValueError(f"{path}: not a UTF-8 text CSV ({err.reason} at byte {err.start})") from None
        except csv.Error as err:
            raise ValueError(f"{path}: not a readable CSV ({err})") from None

    @classmethod
    def _read_csv(cls, path: Path) -> TabularBenchmark:
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if not header:
                raise ValueError(f"{path}: empty file; expected a CSV header with 'arch_str' or 'op_code'")
            header = [h.strip() for h in header]
            if len(set(header)) != len(header):
                raise ValueError(f"{path}: duplicate column names in header {header}")
            if not any(k in header for k in KEY_COLUMNS):
                raise ValueError(f"{path}: needs an 'arch_str' or 'op_code' column to identify archs, got {header}")
            numeric = [i for i, h in enumerate(header) if h not in KEY_COLUMNS]
            archs: list[dict[str, str]] = []
            values: list[list[float]] = []
            for line, cells in enumerate(reader, start=2):
                if not cells:
                    continue
                if len(cells) != len(header):
                    raise ValueError(f"{path}:{line}: {len(cells)} cells, the header has {len(header)}")
                record = dict(zip(header, cells))
                archs.append(_parse_arch(record, f"{path}:{line}"))
                values.append([_parse_float(cells[i], f"{path}:{line}", header[i]) for i in numeric])
        if not archs:
            raise ValueError(f"{path}: the table has a header but no rows")
        matrix = np.asarray(values, dtype=np.float64).reshape(len(archs), len(numeric))
        table = {header[i]: matrix[:, k] for k, i in enumerate(numeric)}
        return cls(archs, table, source=str(path))

    # -- lookup --------------------------------------------------------------------------------
    @property
    def archs(self) -> list[dict[str, str]]:
        """The arch dicts in row order (a fresh list of fresh dicts)."""
        return [dict(a) for a in self._archs]

    @property
    def columns(self) -> list[str]:
        """Names of the numeric columns, in file order."""
        return list(self._table)

    def __len__(self) -> int:
        return len(self._archs)

    def __contains__(self, arch: object) -> bool:
        try:
            return nb201_op_code(arch) in self._codes  # type: ignore[arg-type]
        except (ValueError, TypeError):
            return False

    def __repr__(self) -> str:
        return f"TabularBenchmark({len(self)} archs, columns={self.columns}, source={self.source!r})"

    def column(self, name: str) -> np.ndarray:
        """The read-only ``float64`` array ``(len(self),)`` of column ``name``, aligned with :attr:`archs`."""
        try:
            return self._table[name]
        except KeyError:
            raise KeyError(f"unknown column {name!r} in {self.source}; columns: {self.columns}") from None

    def index(self, arch: Mapping[str, Any]) -> int:
        """Row position of ``arch``.

        Raises:
            ValueError: ``arch`` is not a valid NB201 arch.
            KeyError: ``arch`` is valid but has no row in this table.
        """
        code = nb201_op_code(arch)
        try:
            return self._codes[code]
        except KeyError:
            raise KeyError(f"arch with op code {code} is not in {self.source} ({len(self)} rows)") from None

    def row(self, arch: Mapping[str, Any]) -> dict[str, float]:
        """``{column: value}`` of ``arch`` (see :meth:`index` for errors)."""
        i = self.index(arch)
        return {name: float(values[i]) for name, values in self._table.items()}

    def value(self, arch: Mapping[str, Any], name: str) -> float:
        """One cell: column ``name`` of ``arch``."""
        return float(self.column(name)[self.index(arch)])

    def search_space(self) -> SearchSpace:
        """The NB201 cell space (the archs this table can hold)."""
        return nb201_search_space()

    def best(self, name: str, *, maximize: bool = True, where: np.ndarray | None = None) -> tuple[dict[str, str], float]:
        """The arch with the best value of column ``name`` (NaN ignored), among rows where ``where`` is true.

        Args:
            name: the column to optimise.
            maximize: larger is better (accuracies) or smaller (costs).
            where: optional boolean mask ``(len(self),)`` of allowed rows (e.g. a latency limit).

        Raises:
            ValueError: no allowed row has a value.
        """
        values = self.column(name).copy()
        allowed = ~np.isnan(values)
        if where is not None:
            where = np.asarray(where, dtype=bool)
            if where.shape != values.shape:
                raise ValueError(f"`where` must have shape {values.shape}, got {where.shape}")
            allowed &= where
        if not allowed.any():
            raise ValueError(f"no row of {self.source} is allowed and has a value in column {name!r}")
        values[~allowed] = -np.inf if maximize else np.inf
        i = int(np.argmax(values) if maximize else np.argmin(values))
        return dict(self._archs[i]), float(values[i])


class TabularEvaluator:
    """A search evaluator that looks metrics up in a :class:`TabularBenchmark` instead of training.

    ``evaluator(arch, fidelity)`` returns ``valid_accuracy`` (the objective strategies select by) and
    ``test_accuracy`` at ``fidelity`` epochs, plus every cost column under its own name.
    ``test_accuracy`` is in :attr:`report_only`: the driver stores it but never shows it to a strategy.
    The defaults fit the NB201 CIFAR-10 table (fidelities 12 and 200 epochs).

    Args:
        benchmark: the table.
        valid_columns: ``{fidelity (epochs): validation-accuracy column}``.
        test_columns: ``{fidelity: test-accuracy column}`` (for reporting); fidelities without one
            report NaN.
        cost_columns: columns returned as costs (also by :meth:`costs`, which charges no epochs).

    Raises:
        KeyError: a named column is not in the table.
        ValueError: the table lacks a row for some arch of the NB201 space, or a fidelity is not a
            positive finite number.
    """

    report_only: tuple[str, ...] = ("test_accuracy",)

    def __init__(self, benchmark: TabularBenchmark, *,
                 valid_columns: Mapping[float, str] | None = None,
                 test_columns: Mapping[float, str] | None = None,
                 cost_columns: Sequence[str] = NB201_COST_COLUMNS) -> None:
        if not isinstance(benchmark, TabularBenchmark):
            raise ValueError(f"`benchmark` must be a TabularBenchmark, got {type(benchmark).__name__}")
        self.benchmark = benchmark
        valid = {12: "c10_valid_12", 200: "c10_valid_200"} if valid_columns is None else valid_columns
        test = {12: "c10_test_12", 200: "c10_test_200"} if test_columns is None else test_columns
        if not valid:
            raise ValueError("`valid_columns` needs at least one {fidelity: column} entry")
        for fidelity in (*valid, *test):
            if isinstance(fidelity, bool) or not isinstance(fidelity, (int, float)) or not 0 < fidelity < math.inf:
                raise ValueError(f"fidelities (the keys of `valid_columns` / `test_columns`) must be positive finite "
                                 f"numbers of epochs, got {fidelity!r}")
        self.valid_columns = {float(f): c for f, c in valid.items()}
        self.test_columns = {float(f): c for f, c in test.items()}
        self.cost_columns = tuple(cost_columns)
        for column in (*self.valid_columns.values(), *self.test_columns.values(), *self.cost_columns):
            benchmark.column(column)  # KeyError naming the column and the table's columns
        space = benchmark.search_space()
        if len(benchmark) != space.size:  # rows are distinct valid archs, so fewer rows means missing archs
            missing = next(a for a in space.enumerate() if a not in benchmark)
            raise ValueError(f"{benchmark.source} has rows for {len(benchmark)} of the {space.size} archs of the NB201 "
                             f"space (missing e.g. op code {nb201_op_code(missing)}): a search may propose any arch of "
                             "the space, so the table must have a row for each")
        self.full_fidelity = max(self.valid_columns)

    @property
    def fidelities(self) -> list[float]:
        """The fidelities (epochs) the table has validation accuracies for, ascending."""
        return sorted(self.valid_columns)

    def costs(self, arch: Mapping[str, Any]) -> dict[str, float]:
        """The cost columns of ``arch`` (zero-cost metrics: known without training)."""
        i = self.benchmark.index(arch)
        return {c: float(self.benchmark.column(c)[i]) for c in self.cost_columns}

    def __call__(self, arch: Mapping[str, Any], fidelity: float | None = None) -> dict[str, float]:
        """Metrics of ``arch`` at ``fidelity`` epochs (default: the full fidelity).

        Raises:
            ValueError: ``fidelity`` has no validation column.
        """
        fidelity = self.full_fidelity if fidelity is None else float(fidelity)
        if fidelity not in self.valid_columns:
            raise ValueError(f"`fidelity` {fidelity:g} has no validation column; allowed: {self.fidelities}")
        i = self.benchmark.index(arch)
        test = self.test_columns.get(fidelity)
        return {
            "valid_accuracy": float(self.benchmark.column(self.valid_columns[fidelity])[i]),
            "test_accuracy": float(self.benchmark.column(test)[i]) if test else math.nan,
            **{c: float(self.benchmark.column(c)[i]) for c in self.cost_columns},
        }

    def __repr__(self) -> str:
        return f"TabularEvaluator({self.benchmark!r}, fidelities={self.fidelities})"


def _parse_arch(record: Mapping[str, str], where: str) -> dict[str, str]:
    arch = None
    try:
        if "arch_str" in record:
            arch = nb201_from_string(record["arch_str"])
        if "op_code" in record:
            from_code = nb201_from_op_code(record["op_code"].strip())
            if arch is not None and from_code != arch:
                raise ValueError(
                    f"arch_str {record['arch_str']!r} and op_code {record['op_code']!r} describe different archs"
                )
            arch = from_code
    except ValueError as err:
        raise ValueError(f"{where}: {err}") from None
    assert arch is not None
    return arch


def _parse_float(text: str, where: str, column: str) -> float:
    text = text.strip()
    if text == "":
        return math.nan
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"{where}: column {column!r} must be numeric, got {text!r}") from None
