"""``lightning-nas search`` on a CIFAR-100-style table: --columns, --objective, --maximize/--minimize, --out,
--overwrite, --pareto, --layernas-cost, the summary, progress showing the best so far, the exit status."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest

from lightning_nas.cli import main
from lightning_nas.spaces.nb201 import nb201_all_archs, nb201_op_code, nb201_string
from lightning_nas.strategies.results import pareto_mask

COLUMNS = ["c100_valid_12", "c100_test_12", "c100_valid_200", "c100_test_200", "c100_params_M", "c100_flops_M",
           "lat_ms_pixel3", "energy_mJ_fpga"]
COSTS = ["c100_params_M", "c100_flops_M", "lat_ms_pixel3", "energy_mJ_fpga"]


def write_table(path: Path, *, seed: int = 3, prefixes: tuple[str, ...] = ("c100",)) -> Path:
    """Every NB201 arch; accuracy additive in the ops plus noise, costs from the op codes."""
    rng = np.random.default_rng(seed)
    effect = rng.normal(0, 3, (6, 5))
    header = ["index", "arch_str", "op_code"]
    for prefix in prefixes:
        header += [c.replace("c100", prefix) for c in COLUMNS if c.startswith("c100")]
    header += ["lat_ms_pixel3", "energy_mJ_fpga"]
    lines = [",".join(header)]
    for i, arch in enumerate(nb201_all_archs()):
        code = nb201_op_code(arch)
        acc = 60 + sum(effect[e, int(c)] for e, c in enumerate(code)) + rng.normal(0, 0.5)
        size = sum(int(c) for c in code)
        per_prefix = [acc - 12, acc - 11.5, acc, acc + 0.3, 0.05 * size + 0.07, 9.0 * size + 7.8]
        values = [v for _ in prefixes for v in per_prefix] + [0.4 * size + 0.5 + 0.1 * int(code[0]), 3.5 * size + 4]
        lines.append(",".join([str(i), nb201_string(arch), code, *(f"{v:.4f}" for v in values)]))
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def table(tmp_path_factory) -> Path:
    return write_table(tmp_path_factory.mktemp("c100") / "nb201_cifar100.csv")


def search(table: Path, storage: Path, *extra: str, strategy: str = "random", budget: int = 12) -> list[str]:
    return ["search", "--table", str(table), "--strategy", strategy, "--budget", str(budget), "--storage", str(storage),
            *extra]


def error_of(capsys, argv: list[str]) -> str:
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.filterwarnings("ignore")
def test_layernas_on_cifar100_with_out_and_pareto(table, tmp_path, capsys):
    out = tmp_path / "trials.csv"
    argv = search(table, tmp_path / "s.db", "--constraint", "lat_ms_pixel3<=4", "--out", str(out),
                  "--pareto", "c100_flops_M,lat_ms_pixel3", strategy="layernas", budget=40)
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "LayerNAS buckets by lat_ms_pixel3" in text and "maximising valid_accuracy" in text
    assert '"costs": ["c100_params_M", "c100_flops_M", "lat_ms_pixel3", "energy_mJ_fpga"]' in text
    rows = read_csv(out)
    assert len(rows) == 40 and f"wrote 40 trials to {out}" in text
    assert list(rows[0])[:11] == ["number", "state", "arch_str", "op_code", "fidelity", "epochs", "feasible",
                                  "violation", "pareto", "seconds", "error"]
    assert set(COSTS) <= set(rows[0]) and {"valid_accuracy", "test_accuracy"} <= set(rows[0])
    feasible = [r for r in rows if r["feasible"] == "true"]
    assert f"evaluations used: 40; feasible: {len(feasible)} of 40 finished trials" in text
    assert all(float(r["lat_ms_pixel3"]) <= 4 for r in feasible)
    assert all(float(r["lat_ms_pixel3"]) > 4 for r in rows if r["feasible"] == "false")
    # The front: non-dominated among the feasible trials in (−valid, FLOPs, latency), and printed.
    points = np.array([[-float(r["valid_accuracy"]), float(r["c100_flops_M"]), float(r["lat_ms_pixel3"])] for r in feasible])
    expected = {r["number"] for r, keep in zip(feasible, pareto_mask(points)) if keep}
    assert {r["number"] for r in rows if r["pareto"] == "true"} == expected
    assert f"Pareto front of valid_accuracy (max) vs c100_flops_M, lat_ms_pixel3 (min), feasible trials: {len(expected)}" in text
    best = max(feasible, key=lambda r: float(r["valid_accuracy"]))
    assert f"best by validation accuracy: {best['arch_str']}  (trial {best['number']})" in text
    assert f"  valid {float(best['valid_accuracy']):.2f}  test {float(best['test_accuracy']):.2f}  at 200 epochs" in text


@pytest.mark.filterwarnings("ignore")
def test_layernas_buckets_by_the_tables_flops_column_without_constraints(table, tmp_path, capsys):
    assert main(search(table, tmp_path / "s.db", strategy="layernas", budget=5)) == 0
    assert "LayerNAS buckets by c100_flops_M" in capsys.readouterr().out
    assert main(search(table, tmp_path / "t.db", "--layernas-cost", "energy_mJ_fpga", strategy="layernas", budget=5)) == 0
    assert "LayerNAS buckets by energy_mJ_fpga" in capsys.readouterr().out
    err = error_of(capsys, search(table, tmp_path / "u.db", "--layernas-cost", "c10_flops_M", strategy="layernas"))
    assert "--layernas-cost 'c10_flops_M' is not a cost column; allowed: ['c100_params_M'" in err
    err = error_of(capsys, search(table, tmp_path / "u.db", "--layernas-cost", "c100_flops_M", strategy="bo"))
    assert "--layernas-cost applies to --strategy layernas only, not 'bo'" in err


@pytest.mark.filterwarnings("ignore")
def test_objective_and_direction(table, tmp_path, capsys):
    out = tmp_path / "flops.json"
    argv = search(table, tmp_path / "f.db", "--objective", "c100_flops_M", "--constraint", "lat_ms_pixel3>=2",
                  "--out", str(out))
    assert main(argv) == 0  # a cost column is minimised unless --maximize
    text = capsys.readouterr().out
    data = json.loads(out.read_text())
    assert data["objective"] == "c100_flops_M" and data["maximize"] is False and "minimising c100_flops_M" in text
    feasible = [t for t in data["trials"] if t["feasible"]]
    best = min(feasible, key=lambda t: t["c100_flops_M"])
    assert data["best"] == best["number"] and f"(trial {best['number']})" in text
    assert f"  c100_flops_M = {best['c100_flops_M']:.4g}" in text and "best by c100_flops_M:" in text
    assert main(search(table, tmp_path / "g.db", "--objective", "c100_flops_M", "--maximize", "--out",
                       str(tmp_path / "max.json"))) == 0
    data = json.loads((tmp_path / "max.json").read_text())
    assert data["maximize"] is True
    assert data["best"] == max(data["trials"], key=lambda t: t["c100_flops_M"])["number"]
    # Any numeric column of the table may be the objective (reported under its own name).
    assert main(search(table, tmp_path / "h.db", "--objective", "c100_valid_12", "--out", str(tmp_path / "v.csv"))) == 0
    rows = read_csv(tmp_path / "v.csv")
    assert all(r["c100_valid_12"] for r in rows) and "maximising c100_valid_12" in capsys.readouterr().out
    err = error_of(capsys, search(table, tmp_path / "x.db", "--objective", "c10_valid_200"))
    assert "--objective 'c10_valid_200' is neither valid_accuracy nor test_accuracy nor a column of" in err
    assert "its columns: ['index', 'c100_valid_12'" in err
    err = error_of(capsys, search(table, tmp_path / "x.db", "--maximize", "--minimize"))
    assert "not allowed with argument" in err


@pytest.mark.filterwarnings("ignore")
def test_progress_shows_the_best_so_far(table, tmp_path, capsys):
    out = tmp_path / "p.csv"
    assert main(search(table, tmp_path / "p.db", "--out", str(out), budget=15)) == 0
    err = capsys.readouterr().err
    shown = [float(v) for v in re.findall(r"best valid_accuracy: ([0-9.]+)", err)]
    values = [float(r["valid_accuracy"]) for r in read_csv(out)]
    running = np.maximum.accumulate(values)
    assert shown and shown == sorted(shown)  # never goes down, unlike the latest trial's value
    assert shown[-1] == pytest.approx(running[-1], abs=5e-3 * running[-1])
    assert "feasible 15" in err
    assert main(search(table, tmp_path / "q.db", "--no-progress", budget=2)) == 0
    assert "best valid_accuracy" not in capsys.readouterr().err


@pytest.mark.filterwarnings("ignore")
def test_out_is_never_overwritten_silently(table, tmp_path, capsys):
    out = tmp_path / "trials.csv"
    out.write_text("my data\n")
    err = error_of(capsys, search(table, tmp_path / "o.db", "--out", str(out)))
    assert f"--out '{out}' already exists; pass --overwrite to replace it" in err
    assert out.read_text() == "my data\n" and not (tmp_path / "o.db").exists()  # refused before searching
    assert main(search(table, tmp_path / "o.db", "--out", str(out), "--overwrite", budget=3)) == 0
    assert len(read_csv(out)) == 3
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".trials.csv")]  # no temporary file left
    err = error_of(capsys, search(table, tmp_path / "o.db", "--out", str(tmp_path / "trials.txt")))
    assert "--out must end in .csv or .json (the format), got" in err
    err = error_of(capsys, search(table, tmp_path / "o.db", "--out", str(tmp_path)))
    assert "must end in .csv or .json" in err


@pytest.mark.filterwarnings("ignore")
def test_columns_from_yaml_json_and_inline(table, tmp_path, capsys):
    yaml_file = tmp_path / "columns.yaml"
    yaml_file.write_text("valid:\n  12: c100_valid_12\n  200: c100_valid_200\ntest:\n  200: c100_test_200\n"
                         "costs: [c100_flops_M, lat_ms_pixel3]\n")
    json_file = tmp_path / "columns.json"
    json_file.write_text(json.dumps({"valid": {"12": "c100_valid_12", "200": "c100_valid_200"},
                                     "test": {"200": "c100_test_200"}, "costs": ["c100_flops_M", "lat_ms_pixel3"]}))
    expected = '{"valid": {"12": "c100_valid_12", "200": "c100_valid_200"}, "test": {"200": "c100_test_200"}, ' \
               '"costs": ["c100_flops_M", "lat_ms_pixel3"]}'
    for i, spec in enumerate((str(yaml_file), str(json_file), json_file.read_text())):
        out = tmp_path / f"rn{i}.json"
        argv = search(table, tmp_path / f"c{i}.db", "--columns", spec, "--out", str(out), strategy="rank-nosh", budget=2)
        assert main(argv) == 0
        text = capsys.readouterr().out
        assert expected in text and "full-evaluation equivalents" in text
        trials = json.loads(out.read_text())["trials"]
        assert set(trials[0]) >= {"c100_flops_M", "lat_ms_pixel3"} and "c100_params_M" not in trials[0]
        low = [t for t in trials if t["fidelity"] == 12]
        assert low and all(t["test_accuracy"] is None for t in low)  # NaN (no 12-epoch test column) is null in JSON
    err = error_of(capsys, search(table, tmp_path / "x.db", "--columns", str(json_file), "--constraint",
                                  "c100_params_M<=1"))
    assert "--constraint column 'c100_params_M' is not a cost column; allowed: ['c100_flops_M', 'lat_ms_pixel3']" in err


@pytest.mark.parametrize(("spec", "message"), [
    ('{"valid": {"200": "c10_valid_200"}}', "validation column 'c10_valid_200' (fidelity 200 epochs) is not in"),
    ('{"costs": ["c10_params_M"]}', "cost column 'c10_params_M' is not in"),
    ('{"accuracy": "c100_valid_200"}', "--columns: unknown keys ['accuracy']; allowed: ['prefix', 'valid', 'test', 'costs']"),
    ('{"valid": "top1"}', "--columns: 'valid' is the column 'top1', whose name does not end in _<epochs>"),
    ('{"valid": ', "--columns: the inline JSON is not valid"),
    ("columns.txt", "--columns must be a .json, .yaml or .yml file or inline JSON"),
    ("absent.yaml", "--columns file 'absent.yaml' does not exist"),
])
def test_bad_columns_are_clear_errors(table, tmp_path, capsys, spec, message):
    err = error_of(capsys, search(table, tmp_path / "x.db", "--columns", spec))
    assert message in err
    if "is not in" in message:
        assert "the table has columns ['index', 'c100_valid_12'" in err


def test_bad_yaml_and_pareto(table, tmp_path, capsys):
    bad = tmp_path / "bad.yml"
    bad.write_text("valid: [unclosed\n")
    assert f"--columns file '{bad}' is not valid YAML" in error_of(capsys, search(table, tmp_path / "x.db", "--columns", str(bad)))
    listed = tmp_path / "list.yaml"
    listed.write_text("- c100_valid_200\n")
    assert "must be a mapping with keys prefix, valid, test, costs; got list" in error_of(
        capsys, search(table, tmp_path / "x.db", "--columns", str(listed)))
    err = error_of(capsys, search(table, tmp_path / "x.db", "--pareto", "c10_flops_M"))
    assert "--pareto 'c10_flops_M' is not a metric of this search other than the objective; allowed: ['test_accuracy'," in err
    assert "names a column twice" in error_of(capsys, search(table, tmp_path / "x.db", "--pareto", "a,a"))
    assert "column names separated by commas" in error_of(capsys, search(table, tmp_path / "x.db", "--pareto", "a,,b"))


@pytest.mark.filterwarnings("ignore")
def test_no_feasible_arch_exits_1_and_still_writes_the_trials(table, tmp_path, capsys):
    out = tmp_path / "none.json"
    # Only op code 000000 has lat_ms_pixel3 <= 0.5: two random trials miss it.
    assert main(search(table, tmp_path / "n.db", "--constraint", "lat_ms_pixel3<=0.5", "--out", str(out),
                       "--pareto", "c100_flops_M", budget=2)) == 1
    text = capsys.readouterr().out
    assert "no feasible architecture found in 2 trials" in text and "feasible: 0 of 2 finished trials" in text
    assert "feasible trials: 0" in text
    data = json.loads(out.read_text())
    assert data["best"] is None and data["pareto"] == [] and [t["feasible"] for t in data["trials"]] == [False, False]
    assert data["constraints"] == ["lat_ms_pixel3<=0.5"]


@pytest.mark.filterwarnings("ignore")
def test_several_datasets_and_storages_of_another_table(tmp_path, capsys):
    merged = write_table(tmp_path / "merged.csv", prefixes=("c10", "c100"))
    err = error_of(capsys, search(merged, tmp_path / "m.db"))
    assert "several datasets (prefixes ['c10', 'c100'])" in err and "--columns '{\"prefix\": \"c100\"}'" in err
    assert main(search(merged, tmp_path / "m.db", "--columns", '{"prefix": "c100"}', budget=2)) == 0
    assert '"costs": ["c100_params_M", "c100_flops_M", "lat_ms_pixel3", "energy_mJ_fpga"]' in capsys.readouterr().out
    # The same storage with the other dataset's columns, or another table, is refused instead of mixed.
    err = error_of(capsys, search(merged, tmp_path / "m.db", "--columns", '{"prefix": "c10"}', budget=3))
    assert f"--storage '{tmp_path / 'm.db'}' holds a search on 'merged.csv' with columns" in err
    assert "(the columns differ): use another --storage" in err
    other = write_table(tmp_path / "other.csv", seed=4, prefixes=("c10", "c100"))
    err = error_of(capsys, search(other, tmp_path / "m.db", "--columns", '{"prefix": "c100"}', budget=3))
    assert "(the tables' contents differ)" in err
    assert main(search(merged, tmp_path / "m.db", "--columns", '{"prefix": "c100"}', budget=3)) == 0  # resumes
    assert "3 trials in" in capsys.readouterr().out


@pytest.mark.filterwarnings("ignore")
def test_default_storage_is_named_after_the_table(table, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["search", "--table", str(table), "--strategy", "random", "--budget", "2", "--no-progress"]) == 0
    assert (tmp_path / "runs" / "search_nb201_cifar100_random_0.db").is_file()


@pytest.mark.filterwarnings("ignore")
def test_a_storage_from_before_tables_were_recorded_resumes_and_records_its_table(table, tmp_path, capsys):
    import sqlite3

    db = tmp_path / "old.db"
    assert main(search(table, db, budget=2)) == 0
    with sqlite3.connect(db) as connection:
        connection.execute("DELETE FROM meta WHERE key = 'table'")
    connection.close()
    assert main(search(table, db, budget=4)) == 0
    assert "4 trials in" in capsys.readouterr().out
    with sqlite3.connect(db) as connection:
        stored = json.loads(connection.execute("SELECT value FROM meta WHERE key = 'table'").fetchone()[0])
    connection.close()
    assert stored["name"] == "nb201_cifar100.csv" and stored["columns"]["valid"]["200"] == "c100_valid_200"
