"""scripts/convert_tabular.py: a table with its own column names becomes one the library reads."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from lightning_nas.evaluators import TabularBenchmark
from lightning_nas.spaces.nb201 import nb201_from_op_code, nb201_string

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "convert_tabular.py"
spec = importlib.util.spec_from_file_location("convert_tabular", SCRIPT)
convert_tabular = importlib.util.module_from_spec(spec)
spec.loader.exec_module(convert_tabular)


@pytest.fixture
def source(tmp_path: Path) -> Path:
    path = tmp_path / "results.csv"
    path.write_text("arch,val_acc,test_acc,flops,notes\n"
                    f"{nb201_string(nb201_from_op_code('334131'))},0.91,0.93,82000000,1\n"
                    "12340,0.50,0.52,41000000,\n")  # an op code with its leading zero lost
    return path


def test_renamed_and_scaled(source: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "table.csv"
    argv = [str(source), str(out), "--arch-column", "arch", "--rename", "val_acc=c100_valid_200",
            "--rename", "test_acc=c100_test_200", "--rename", "flops=c100_flops_M", "--scale", "flops=1e-6",
            "--scale", "val_acc=100", "--scale", "test_acc=100", "--drop", "notes"]
    assert convert_tabular.main(argv) == 0
    assert out.read_text().splitlines()[0] == "arch_str,op_code,c100_valid_200,c100_test_200,c100_flops_M"
    bench = TabularBenchmark.from_csv(out)
    assert bench.value(nb201_from_op_code("334131"), "c100_valid_200") == pytest.approx(91.0)
    assert bench.value(nb201_from_op_code("012340"), "c100_flops_M") == pytest.approx(41.0)
    captured = capsys.readouterr()
    assert "'cost_columns': ['c100_flops_M']" in captured.out
    assert "2 of the 15625 NB201 cells have a row" in captured.err
    with pytest.raises(SystemExit):
        convert_tabular.main(argv)
    assert "already exists; pass --overwrite" in capsys.readouterr().err
    assert convert_tabular.main([*argv, "--overwrite", "--only-renamed"]) == 0


@pytest.mark.parametrize(("extra", "message"), [
    (["--rename", "acc=c100_valid_200"], "--rename: columns ['acc'] are not in"),
    (["--arch-column", "cell"], "--arch-column: columns ['cell'] are not in"),
    (["--rename", "val_acc=flops"], "output columns ['flops'] would appear twice"),
    (["--scale", "flops=big"], "--scale flops=big: FACTOR must be a number"),
    (["--rename", "val_acc"], "must be NAME=VALUE"),
])
def test_bad_options_are_clear_errors(source: Path, tmp_path: Path, capsys, extra: list[str], message: str) -> None:
    argv = [str(source), str(tmp_path / "t.csv"), "--arch-column", "arch", *extra]
    with pytest.raises(SystemExit):
        convert_tabular.main(argv)
    assert message in capsys.readouterr().err


def test_bad_arch_names_the_line(tmp_path: Path, capsys) -> None:
    source = tmp_path / "bad.csv"
    source.write_text("arch,acc\n999999,1\n")
    with pytest.raises(SystemExit):
        convert_tabular.main([str(source), str(tmp_path / "t.csv"), "--arch-column", "arch"])
    assert "bad.csv:2: column 'arch'" in capsys.readouterr().err
