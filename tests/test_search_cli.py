"""``lightning-nas search`` on a synthetic NB201-format table: runs, resumes, rejects bad input."""

import argparse
from pathlib import Path

import numpy as np
import pytest

from lightning_nas.cli import main
from lightning_nas.evaluators.tabular import NB201_COST_COLUMNS
from lightning_nas.search_cli import parse_constraint
from lightning_nas.spaces.nb201 import nb201_all_archs, nb201_op_code, nb201_string


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    rng = np.random.default_rng(1)
    effect = rng.normal(0, 2, (6, 5))
    columns = ["c10_valid_200", "c10_test_200", "c10_valid_12", "c10_test_12", *NB201_COST_COLUMNS]
    lines = [",".join(["index", "arch_str", "op_code", *columns])]
    for i, arch in enumerate(nb201_all_archs()):
        code = nb201_op_code(arch)
        acc = 85 + sum(effect[e, int(c)] for e, c in enumerate(code))
        costs = [1 + sum(int(c) for c in code) * (k + 1) for k in range(len(NB201_COST_COLUMNS))]
        lines.append(",".join([str(i), nb201_string(arch), code, *(f"{v:.4f}" for v in (acc, acc + 0.5, acc - 9, acc - 8.5, *costs))]))
    path = tmp_path_factory.mktemp("table") / "nb201.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("strategy", ["random", "evolution", "layernas"])
def test_search_runs_and_resumes(table, tmp_path, capsys, strategy):
    db = tmp_path / "s.db"
    args = ["search", "--table", str(table), "--strategy", strategy, "--budget", "12", "--storage", str(db),
            "--constraint", "c10_flops_M<=20"]
    assert main(args) == 0
    first = capsys.readouterr().out
    assert "12 trials" in first and "best by validation accuracy: |" in first
    assert main(args[:6] + ["20"] + args[7:]) == 0  # a larger budget continues the stored search
    assert "20 trials" in capsys.readouterr().out


def test_bad_input_is_a_clear_error(table, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["search", "--table", str(table), "--constraint", "made_up<=1", "--storage", str(tmp_path / "x.db")])
    assert "not a cost column" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["search", "--table", str(tmp_path / "missing.csv")])
    with pytest.raises(argparse.ArgumentTypeError, match="NAME<=VALUE or NAME>=VALUE"):
        parse_constraint("flops < 3")
    assert parse_constraint("lat>=2.5").lower == 2.5


def search_args(table, db, *extra):
    return ["search", "--table", str(table), "--strategy", "random", "--budget", "2", "--storage", str(db), *extra]


def test_unreachable_constraints_are_refused_with_the_closest_arch(table, tmp_path, capsys):
    for constraint in (["lat_ms_pixel3<=0.0001"], ["c10_flops_M>=20", "c10_flops_M<=10"]):
        with pytest.raises(SystemExit) as exit_:
            main(search_args(table, tmp_path / "x.db", *(a for c in constraint for a in ("--constraint", c))))
        assert exit_.value.code == 2
        err = capsys.readouterr().err
        assert f"no architecture of the table meets {' and '.join(sorted(constraint, key=lambda c: '<' in c))}" in err
        assert "the closest has" in err and "violation" in err and "Traceback" not in err


@pytest.mark.filterwarnings("ignore")
def test_no_feasible_arch_found_is_reported_and_exits_1(table, tmp_path, capsys):
    # Only op code 000000 has c10_flops_M <= 1 in this table: two random proposals miss it.
    assert main(search_args(table, tmp_path / "s.db", "--constraint", "c10_flops_M<=1")) == 1
    out = capsys.readouterr().out
    assert "no feasible architecture found in 2 trials: none meets c10_flops_M<=1" in out
    assert "least violating: |" in out and "violation" in out and "best by validation" not in out


def test_bad_values_and_storages_are_one_line_errors(table, tmp_path, capsys):
    for constraint, reason in (("lat<=1e999", "must be a finite number, got '1e999'"),
                               ("lat>=nan", "must be a finite number, got 'nan'"),
                               ("lat<=1e5e5", "must be a number, got '1e5e5'")):
        with pytest.raises(argparse.ArgumentTypeError, match=reason):
            parse_constraint(constraint)
    with pytest.raises(SystemExit):
        main(search_args(table, tmp_path / "x.db", "--trial-timeout", "0"))
    assert "positive finite number of seconds, got '0'" in capsys.readouterr().err
    storages = [(tmp_path, "is a directory")]
    if Path("/sys").is_dir():
        storages.append((Path("/sys/s.db"), "cannot write the storage '/sys/s.db'"))
    for storage, reason in storages:
        with pytest.raises(SystemExit) as exit_:
            main(search_args(table, storage))
        assert exit_.value.code == 2
        err = capsys.readouterr().err
        assert reason in err and "Traceback" not in err
