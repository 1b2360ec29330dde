"""A tabular benchmark: one row of measured metrics per architecture of the NAS-Bench-201 cell space.

The table is a CSV in the format of NAS-Bench-201 re-exports: an ``arch_str`` column (the NB201 string)
and/or an ``op_code`` column (6 digits, see :func:`~lightning_nas.spaces.nb201.nb201_op_code`), and any
number of numeric columns (accuracies, parameters, FLOPs, latencies, …). Every column other than
``arch_str`` and ``op_code`` is read as ``float64``; an empty cell or ``nan`` reads as NaN. Any dataset
works: nothing here defaults to CIFAR-10 (see ``docs/tabular_format.md`` for the full format and
``scripts/convert_tabular.py`` for a converter).

Column naming scheme. :class:`TabularEvaluator` reads the columns it is given; those it is not given
are inferred (:func:`infer_columns`) from these names, where ``<prefix>`` names the dataset
(NAS-Bench-201 uses ``c10`` for CIFAR-10, ``c100`` for CIFAR-100, ``imagenet16`` for ImageNet16-120;
any prefix works):

=================================  ===============================================================
``<prefix>_valid_<epochs>``        validation accuracy [%] after ``<epochs>`` epochs (the search signal)
``<prefix>_test_<epochs>``         test accuracy [%] after ``<epochs>`` epochs (reported only)
``[<prefix>_]params_M``            parameters [millions] (a cost)
``[<prefix>_]flops_M``             FLOPs [millions] (a cost)
``[<prefix>_]lat_ms_<device>``     inference latency [ms] on ``<device>`` (a cost)
``[<prefix>_]energy_mJ_<device>``  energy per inference [mJ] on ``<device>`` (a cost)
=================================  ===============================================================

A cost column without a prefix is shared by every dataset of the table; other columns (``index``,
``valid_200_n_seeds``, …) are kept in the table but are neither accuracies nor costs.

Architectures are the dicts of :mod:`lightning_nas.spaces.nb201` (``{"edge_1_0": "nor_conv_3x3", ...}``).
The library never assumes where a table lives: the caller passes the path.
"""

from __future__ import annotations

import csv
import math
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lightning_nas.spaces.nb201 import nb201_from_op_code, nb201_from_string, nb201_op_code, nb201_search_space
from lightning_nas.spaces.search_space import SearchSpace

__all__ = ["NB201_COST_COLUMNS", "MissingColumnError", "TabularBenchmark", "TabularEvaluator", "infer_columns"]

#: Columns that identify an architecture rather than measure it.
KEY_COLUMNS: tuple[str, ...] = ("arch_str", "op_code")
#: The cost columns of the NB201 CIFAR-10 table: parameters [M], FLOPs [M], device latencies [ms], energy [mJ].
#: For reference only: nothing defaults to it (the evaluator infers each table's own cost columns).
NB201_COST_COLUMNS: tuple[str, ...] = (
    "c10_params_M", "c10_flops_M", "lat_ms_raspi4", "lat_ms_pixel3", "lat_ms_fpga", "lat_ms_eyeriss",
    "lat_ms_1080ti_1", "lat_ms_1080ti_32", "lat_ms_gold_6226", "energy_mJ_fpga",
)
#: The keys of a column mapping (:meth:`TabularEvaluator.from_mapping`, ``lightning-nas search --columns``).
MAPPING_KEYS: tuple[str, ...] = ("prefix", "valid", "test", "costs")

_ACCURACY = re.compile(r"(?P<prefix>.+)_(?P<split>valid|test)_(?P<epochs>\d+(?:\.\d+)?)")
_COST = re.compile(r"(?:(?P<prefix>.+?)_)?(?:params_M|flops_M|lat_ms_.+|energy_mJ_.+)")
_METRICS = ("valid_accuracy", "test_accuracy")  # what the evaluator reports besides the table's own columns


class MissingColumnError(KeyError, ValueError):
    """A column is not in the table; the message names it and lists the table's columns.

    A ``KeyError`` (what a missing column always was) and a ``ValueError`` (bad input).
    """

    def __str__(self) -> str:  # KeyError would show the message in quotes
        return str(self.args[0]) if self.args else ""


def infer_columns(columns: Sequence[str], prefix: str | None = None, *, source: str = "the table") -> dict[str, Any]:
    """The evaluator's columns, inferred from the naming scheme of the module docstring.

    Args:
        columns: the table's numeric column names (:attr:`TabularBenchmark.columns`).
        prefix: the dataset prefix (``"c100"``, ...); ``None``: the one prefix the table's
            ``<prefix>_valid_<epochs>`` columns have.
        source: the table's name, for messages.

    Returns:
        ``{"valid_columns": {epochs: column}, "test_columns": {epochs: column}, "cost_columns": [column, ...]}``
        (keyword arguments of :class:`TabularEvaluator`). Test columns may be empty.

    Raises:
        ValueError: no ``<prefix>_valid_<epochs>`` column, several prefixes and no ``prefix``, or a
            ``prefix`` the table has no validation column for; the message lists the table's columns.
    """
    if prefix is not None and (not isinstance(prefix, str) or not prefix):
        raise ValueError(f"`prefix` must be a non-empty string such as 'c100', got {prefix!r}")
    found: dict[str, dict[str, dict[float, str]]] = {}
    for name in columns:
        match = _ACCURACY.fullmatch(name)
        if match is not None:
            split = found.setdefault(match["prefix"], {"valid": {}, "test": {}})[match["split"]]
            split[float(match["epochs"])] = name
    prefixes = sorted(p for p, splits in found.items() if splits["valid"])
    explicit = "; give the columns explicitly (TabularEvaluator(valid_columns=..., test_columns=..., cost_columns=...) " \
               "or `lightning-nas search --columns`)"
    if not prefixes:
        raise ValueError(f"cannot infer the columns of {source}: no column is named '<prefix>_valid_<epochs>' "
                         f"(e.g. 'c100_valid_200'){explicit}; the table has columns {list(columns)}")
    if prefix is None and len(prefixes) > 1:
        raise ValueError(f"{source} has validation columns of several datasets (prefixes {prefixes}): choose one with "
                         f"`prefix` (`--columns '{{\"prefix\": \"{prefixes[-1]}\"}}'` on the command line)")
    if prefix is not None and prefix not in prefixes:
        raise ValueError(f"prefix {prefix!r}: {source} has no column named '{prefix}_valid_<epochs>'; prefixes with "
                         f"validation columns there: {prefixes}")
    prefix = prefixes[0] if prefix is None else prefix
    costs = []
    for name in columns:
        match = _COST.fullmatch(name)
        if match is not None and match["prefix"] in (None, prefix):
            costs.append(name)
    return {"valid_columns": dict(sorted(found[prefix]["valid"].items())),
            "test_columns": dict(sorted(found[prefix]["test"].items())), "cost_columns": costs}


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
        """The read-only ``float64`` array ``(len(self),)`` of column ``name``, aligned with :attr:`archs`.

        Raises:
            MissingColumnError (a ``KeyError``): no such column (the message lists the table's columns).
        """
        try:
            return self._table[name]
        except KeyError:
            raise MissingColumnError(f"unknown column {name!r} in {self.source}; columns: {self.columns}") from None

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
    ``test_accuracy`` at ``fidelity`` epochs, plus every cost column and extra column under its own name.
    ``test_accuracy`` is in :attr:`report_only`: the driver stores it but never shows it to a strategy.

    Columns that are not given are inferred from the table's column names (the naming scheme of the
    module docstring, see :func:`infer_columns`); nothing defaults to a particular dataset. For example
    the NB201 CIFAR-100 table gives ``valid_columns={12: "c100_valid_12", 200: "c100_valid_200"}``, the
    matching ``c100_test_*`` columns and the costs ``c100_params_M``, ``c100_flops_M``, ``lat_ms_*``,
    ``energy_mJ_fpga``.

    Args:
        benchmark: the table.
        valid_columns: ``{fidelity (epochs): validation-accuracy column}``; ``None``: inferred.
        test_columns: ``{fidelity: test-accuracy column}`` (for reporting; fidelities without one report
            NaN); ``None``: inferred (may be empty). ``{}``: no test accuracy.
        cost_columns: columns returned as costs (also by :meth:`costs`, which charges no epochs; the
            columns ``--constraint`` may bound); ``None``: inferred. ``[]``: none.
        prefix: the dataset prefix used for inference (``"c10"``, ``"c100"``, ``"imagenet16"``, ...);
            ``None``: the table's only one. Needed only for a table holding several datasets' columns.
        extra_columns: more columns returned under their own name (e.g. an objective other than
            validation accuracy); neither costs nor report-only.

    Raises:
        MissingColumnError (a ``KeyError`` and ``ValueError``): a named column is not in the table (the
            message lists the table's columns).
        ValueError: columns that cannot be inferred, a column named like a reported metric, the table
            lacks a row for some arch of the NB201 space, or a fidelity is not a positive finite number.
    """

    report_only: tuple[str, ...] = ("test_accuracy",)

    def __init__(self, benchmark: TabularBenchmark, *,
                 valid_columns: Mapping[float, str] | None = None,
                 test_columns: Mapping[float, str] | None = None,
                 cost_columns: Sequence[str] | None = None,
                 prefix: str | None = None,
                 extra_columns: Sequence[str] = ()) -> None:
        if not isinstance(benchmark, TabularBenchmark):
            raise ValueError(f"`benchmark` must be a TabularBenchmark, got {type(benchmark).__name__}")
        self.benchmark = benchmark
        if valid_columns is None or test_columns is None or cost_columns is None:
            inferred = infer_columns(benchmark.columns, prefix, source=benchmark.source)
            valid_columns = inferred["valid_columns"] if valid_columns is None else valid_columns
            test_columns = inferred["test_columns"] if test_columns is None else test_columns
            cost_columns = inferred["cost_columns"] if cost_columns is None else cost_columns
        if not valid_columns:
            raise ValueError("`valid_columns` needs at least one {fidelity: column} entry")
        for fidelity in (*valid_columns, *test_columns):
            if isinstance(fidelity, bool) or not isinstance(fidelity, (int, float)) or not 0 < fidelity < math.inf:
                raise ValueError(f"fidelities (the keys of `valid_columns` / `test_columns`) must be positive finite "
                                 f"numbers of epochs, got {fidelity!r}")
        if isinstance(cost_columns, str) or isinstance(extra_columns, str):
            raise ValueError("`cost_columns` and `extra_columns` must be lists of column names, not a string")
        self.valid_columns = {float(f): c for f, c in sorted(valid_columns.items())}
        self.test_columns = {float(f): c for f, c in sorted(test_columns.items())}
        self.cost_columns = tuple(cost_columns)
        self.extra_columns = tuple(c for c in dict.fromkeys(extra_columns) if c not in self.cost_columns)
        for column in (*self.cost_columns, *self.extra_columns):
            if column in _METRICS:
                raise ValueError(f"column {column!r} has the name of a reported metric ({list(_METRICS)}); "
                                 "rename it in the table")
        roles = [*(("validation", f, c) for f, c in self.valid_columns.items()),
                 *(("test", f, c) for f, c in self.test_columns.items()),
                 *(("cost", None, c) for c in self.cost_columns), *(("extra", None, c) for c in self.extra_columns)]
        for role, fidelity, column in roles:
            if column not in benchmark.columns:
                at = f" (fidelity {fidelity:g} epochs)" if fidelity is not None else ""
                raise MissingColumnError(f"{role} column {column!r}{at} is not in {benchmark.source}; "
                                         f"the table has columns {benchmark.columns}")
        space = benchmark.search_space()
        if len(benchmark) != space.size:  # rows are distinct valid archs, so fewer rows means missing archs
            missing = next(a for a in space.enumerate() if a not in benchmark)
            raise ValueError(f"{benchmark.source} has rows for {len(benchmark)} of the {space.size} archs of the NB201 "
                             f"space (missing e.g. op code {nb201_op_code(missing)}): a search may propose any arch of "
                             "the space, so the table must have a row for each")
        self.full_fidelity = max(self.valid_columns)

    @classmethod
    def from_mapping(cls, benchmark: TabularBenchmark, mapping: Mapping[str, Any], *,
                     where: str = "the column mapping", extra_columns: Sequence[str] = ()) -> TabularEvaluator:
        """An evaluator whose columns come from a mapping as a JSON or YAML file holds it::

            {"prefix": "c100",                                     # optional: inference's dataset prefix
             "valid": {"12": "c100_valid_12", "200": "c100_valid_200"},   # {epochs: column}
             "test": {"200": "c100_test_200"},                     # optional; {} for none
             "costs": ["c100_flops_M", "lat_ms_pixel3"]}           # optional; [] for none

        A key left out is inferred as in the constructor. ``valid`` and ``test`` may also be one column
        name ending in ``_<epochs>`` (``"valid": "acc_valid_200"``).

        Args:
            benchmark: the table.
            mapping: the mapping (keys ``prefix``, ``valid``, ``test``, ``costs``).
            where: where the mapping came from, for messages (``"--columns"``, a file name).
            extra_columns: see the constructor.

        Raises:
            ValueError: an unknown key or a value of the wrong form (naming ``where``, the key and what is
                allowed); the constructor's errors.
        """
        if not isinstance(mapping, Mapping):
            raise ValueError(f"{where}: must be a mapping with keys {list(MAPPING_KEYS)}, got {type(mapping).__name__}")
        unknown = [k for k in mapping if k not in MAPPING_KEYS]
        if unknown:
            raise ValueError(f"{where}: unknown keys {unknown}; allowed: {list(MAPPING_KEYS)}")
        prefix = mapping.get("prefix")
        if prefix is not None and (not isinstance(prefix, str) or not prefix):
            raise ValueError(f"{where}: 'prefix' must be a dataset prefix such as 'c100', got {prefix!r}")
        costs = mapping.get("costs")
        if costs is not None and (not isinstance(costs, list) or not all(isinstance(c, str) and c for c in costs)):
            raise ValueError(f"{where}: 'costs' must be a list of column names ([] for none), got {costs!r}")
        return cls(benchmark, valid_columns=_fidelity_columns(mapping.get("valid"), "valid", where),
                   test_columns=_fidelity_columns(mapping.get("test"), "test", where),
                   cost_columns=costs, prefix=prefix, extra_columns=extra_columns)

    def mapping(self) -> dict[str, Any]:
        """The columns in use, in the form :meth:`from_mapping` reads (JSON-ready: epochs as strings)."""
        return {"valid": {f"{f:g}": c for f, c in self.valid_columns.items()},
                "test": {f"{f:g}": c for f, c in self.test_columns.items()}, "costs": list(self.cost_columns)}

    @property
    def metrics(self) -> list[str]:
        """Every metric name :meth:`__call__` returns."""
        return [*_METRICS, *self.cost_columns, *self.extra_columns]

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
            **{c: float(self.benchmark.column(c)[i]) for c in (*self.cost_columns, *self.extra_columns)},
        }

    def __repr__(self) -> str:
        return f"TabularEvaluator({self.benchmark!r}, fidelities={self.fidelities})"


def _fidelity_columns(value: Any, key: str, where: str) -> dict[float, str] | None:
    """``{epochs: column}`` from a mapping's ``valid`` / ``test`` entry (``None`` stays ``None``: inferred)."""
    allowed = (f"{{epochs: column}} (e.g. {{\"200\": \"acc_{key}_200\"}}) or one column name ending in _<epochs> "
               f"(e.g. \"acc_{key}_200\")")
    if value is None:
        return None
    if isinstance(value, str):
        match = re.fullmatch(r".+_(\d+(?:\.\d+)?)", value)
        if match is None:
            raise ValueError(f"{where}: {key!r} is the column {value!r}, whose name does not end in _<epochs>; "
                             f"write {allowed}")
        return {float(match[1]): value}
    if not isinstance(value, Mapping):
        raise ValueError(f"{where}: {key!r} must be {allowed}, got {value!r}")
    out = {}
    for epochs, column in value.items():
        try:
            fidelity = float(epochs)
        except (TypeError, ValueError):
            fidelity = math.nan
        if isinstance(epochs, bool) or not 0 < fidelity < math.inf:
            raise ValueError(f"{where}: {key!r} key {epochs!r} must be a positive number of epochs; write {allowed}")
        if not isinstance(column, str) or not column:
            raise ValueError(f"{where}: {key!r} entry {epochs!r} must name a column, got {column!r}")
        out[fidelity] = column
    return out


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
