from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lightning_nas.evaluators.tabular import TabularBenchmark
from lightning_nas.spaces.nb201 import NB201_OPS, nb201_from_op_code, nb201_op_code, nb201_string

# The real table lives outside the repository (development data); the test skips where it is absent.
NB201_CSV = Path(__file__).resolve().parents[3] / "shared" / "data" / "nb201" / "nb201_cifar10.csv"


def write_table(path: Path, codes: list[str], **columns: list) -> Path:
    header = ["index", "arch_str", "op_code", *columns]
    lines = [",".join(header)]
    for i, code in enumerate(codes):
        cells = [str(i), nb201_string(nb201_from_op_code(code)), code, *(str(v[i]) for v in columns.values())]
        lines.append(",".join(cells))
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def small_table(tmp_path: Path) -> Path:
    return write_table(tmp_path / "t.csv", ["000000", "334131", "012340"], acc=[10.0, 93.5, 50.0], lat=[1.0, 5.0, ""])


def test_from_csv_roundtrip(small_table: Path) -> None:
    bench = TabularBenchmark.from_csv(small_table)
    assert len(bench) == 3
    assert bench.columns == ["index", "acc", "lat"]
    assert [nb201_op_code(a) for a in bench.archs] == ["000000", "334131", "012340"]
    np.testing.assert_array_equal(bench.column("acc"), [10.0, 93.5, 50.0])
    assert np.isnan(bench.column("lat")[2])
    arch = nb201_from_op_code("334131")
    assert bench.row(arch) == {"index": 1.0, "acc": 93.5, "lat": 5.0}
    assert bench.value(arch, "acc") == 93.5
    assert arch in bench and nb201_from_op_code("111111") not in bench and {"x": 1} not in bench
    assert bench.best("acc")[1] == 93.5
    assert bench.best("lat", maximize=False)[0] == nb201_from_op_code("000000")
    assert bench.best("acc", where=bench.column("lat") < 2.0)[1] == 10.0


def test_columns_are_read_only(small_table: Path) -> None:
    bench = TabularBenchmark.from_csv(small_table)
    with pytest.raises(ValueError):
        bench.column("acc")[0] = 1.0
    archs = bench.archs
    archs[0]["edge_1_0"] = "changed"
    assert bench.archs[0]["edge_1_0"] == "none"


def test_lookup_errors(small_table: Path) -> None:
    bench = TabularBenchmark.from_csv(small_table)
    with pytest.raises(KeyError, match="unknown column 'nope'.*columns"):
        bench.column("nope")
    with pytest.raises(KeyError, match="op code 111111 is not in"):
        bench.row(nb201_from_op_code("111111"))
    with pytest.raises(ValueError, match="missing"):
        bench.row({"edge_1_0": "none"})
    with pytest.raises(ValueError, match="unknown NB201 operations"):
        bench.row({**nb201_from_op_code("000000"), "edge_1_0": "conv_7x7"})
    with pytest.raises(ValueError, match="no row .* is allowed"):
        bench.best("acc", where=np.zeros(3, dtype=bool))


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("", "empty file"),
        ("acc,lat\n1,2\n", "needs an 'arch_str' or 'op_code'"),
        ("op_code,acc\n", "no rows"),
        ("op_code,acc\n000000,1,2\n", r":2: 3 cells, the header has 2"),
        ("op_code,acc\n000000,abc\n", r":2: column 'acc' must be numeric, got 'abc'"),
        ("op_code,acc\n000009,1\n", r":2: a NB201 op code"),
        ("op_code,acc\n000000,1\n000000,2\n", "same arch"),
        ("arch_str,op_code,acc\n|none~0|+|none~0|none~1|+|none~0|none~1|none~2|,000001,1\n", "different archs"),
        ("arch_str,acc\n|none~0|+|none~0|\n", "3 '\\+'-separated nodes|cells"),
        ("op_code,acc,acc\n000000,1,2\n", "duplicate column"),
    ],
)
def test_malformed_files(tmp_path: Path, text: str, match: str) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(ValueError, match=match):
        TabularBenchmark.from_csv(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no tabular benchmark"):
        TabularBenchmark.from_csv(tmp_path / "absent.csv")


def test_constructor_checks() -> None:
    arch = nb201_from_op_code("000000")
    with pytest.raises(ValueError, match="expected \\(1,\\)"):
        TabularBenchmark([arch], {"acc": [1.0, 2.0]})
    with pytest.raises(ValueError, match="identifies archs"):
        TabularBenchmark([arch], {"op_code": [1.0]})


@settings(max_examples=25, deadline=None)
@given(st.lists(st.text(alphabet="01234", min_size=6, max_size=6), min_size=1, max_size=20, unique=True),
       st.data())
def test_rows_match_what_was_written(codes: list[str], data: st.DataObject) -> None:
    values = data.draw(st.lists(st.floats(-1e6, 1e6, allow_nan=False), min_size=len(codes), max_size=len(codes)))
    bench = TabularBenchmark([nb201_from_op_code(c) for c in codes], {"v": values})
    for code, v in zip(codes, values):
        assert bench.value(nb201_from_op_code(code), "v") == v


@pytest.mark.skipif(not NB201_CSV.is_file(), reason="NB201 reference table not present")
@pytest.mark.skipif(not NB201_CSV.is_file(), reason="the NB201 reference table is not on this machine")
def test_full_nb201_table() -> None:
    bench = TabularBenchmark.from_csv(NB201_CSV)
    assert len(bench) == len(NB201_OPS) ** 6
    arch, best = bench.best("c10_test_200")
    assert best == pytest.approx(94.37, abs=0.01)
    assert bench.value(arch, "index") == 6111


def full_benchmark() -> TabularBenchmark:
    """Every NB201 arch, valid accuracy = 10 × the digit sum of its op code (lat = the sum)."""
    from lightning_nas.spaces.nb201 import nb201_all_archs

    archs = list(nb201_all_archs())
    digits = np.array([sum(int(c) for c in nb201_op_code(a)) for a in archs], dtype=float)
    return TabularBenchmark(archs, {"c10_valid_12": 5 * digits, "c10_valid_200": 10 * digits,
                                    "c10_test_200": 10 * digits + 1, "lat": digits}, source="full.csv")


def test_tabular_evaluator() -> None:
    from lightning_nas.evaluators.tabular import TabularEvaluator

    bench = full_benchmark()
    evaluator = TabularEvaluator(bench, test_columns={200: "c10_test_200"}, cost_columns=["lat"])
    arch = nb201_from_op_code("334131")
    assert evaluator.full_fidelity == 200 and evaluator.fidelities == [12, 200]
    assert evaluator(arch, 200) == {"valid_accuracy": 150.0, "test_accuracy": 151.0, "lat": 15.0}
    low = evaluator(arch, 12)
    assert low["valid_accuracy"] == 75.0 and np.isnan(low["test_accuracy"])
    assert evaluator(arch) == evaluator(arch, 200)
    assert evaluator.costs(arch) == {"lat": 15.0}
    assert evaluator.report_only == ("test_accuracy",)
    with pytest.raises(ValueError, match=r"`fidelity` 50 has no validation column; allowed: \[12.0, 200.0\]"):
        evaluator(arch, 50)
    inferred = TabularEvaluator(bench)  # from the names: no test column at 12 epochs, 'lat' is not a cost name
    assert inferred.valid_columns == {12: "c10_valid_12", 200: "c10_valid_200"}
    assert inferred.test_columns == {200: "c10_test_200"} and inferred.cost_columns == ()
    with pytest.raises(KeyError, match="test column 'c10_test_12' \\(fidelity 12 epochs\\) is not in full.csv; "
                                       "the table has columns"):
        TabularEvaluator(bench, test_columns={12: "c10_test_12"})
    for fidelity in (0, -12, float("inf")):
        with pytest.raises(ValueError, match="fidelities .* must be positive finite numbers of epochs"):
            TabularEvaluator(bench, valid_columns={fidelity: "c10_valid_12"}, test_columns={}, cost_columns=["lat"])


def test_a_table_missing_archs_is_refused_when_the_evaluator_is_built(tmp_path: Path) -> None:
    from lightning_nas.evaluators.tabular import TabularEvaluator

    path = write_table(tmp_path / "t.csv", ["000000", "334131"], c10_valid_12=[5.0, 80.0], c10_valid_200=[10.0, 91.0],
                       c10_test_200=[11.0, 93.0], lat=[1.0, 4.0])
    with pytest.raises(ValueError, match=r"t.csv has rows for 2 of the 15625 archs of the NB201 space \(missing e.g. "
                                         r"op code 000001\)"):
        TabularEvaluator(TabularBenchmark.from_csv(path), test_columns={200: "c10_test_200"}, cost_columns=["lat"])


def test_undecodable_tables_name_the_file(tmp_path: Path) -> None:
    binary = tmp_path / "binary.csv"
    binary.write_bytes(b"arch_str,acc\n\xff\xfe\x00garbage\n")
    with pytest.raises(ValueError, match=r"binary.csv: not a UTF-8 text CSV"):
        TabularBenchmark.from_csv(binary)
    quoted = tmp_path / "quoted.csv"
    quoted.write_text('op_code,acc\n"000000,1\n')
    with pytest.raises(ValueError, match=r"quoted.csv"):
        TabularBenchmark.from_csv(quoted)
