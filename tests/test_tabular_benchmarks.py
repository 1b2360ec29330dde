"""The NB201 benchmark scripts on any dataset's table: columns and dataset from the table, sections whose
title and markers name the table and dataset (the CIFAR-10 markers unchanged), paper figures only for
the dataset run on, MathNAS without an energy column. No benchmark is run here (they are long)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pytest

from lightning_nas.evaluators import TabularBenchmark, TabularEvaluator
from lightning_nas.spaces.nb201 import nb201_all_archs, nb201_op_code

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))  # the scripts import results_file from their own directory
blackbox = pytest.importorskip("blackbox_nb201")
mathnas = pytest.importorskip("mathnas_nb201")


def benchmark(prefix: str = "c100", *, energy: bool = True, fidelities: tuple[int, ...] = (12, 200)) -> TabularBenchmark:
    archs = list(nb201_all_archs())
    size = np.array([sum(int(c) for c in nb201_op_code(a)) for a in archs], dtype=float)
    table = {"index": np.arange(len(archs), dtype=float)}
    for epochs in fidelities:
        table[f"{prefix}_valid_{epochs}"] = 30 + size + epochs / 100
        table[f"{prefix}_test_{epochs}"] = 31 + size + epochs / 100
    table.update({f"{prefix}_params_M": 0.1 * size, f"{prefix}_flops_M": 10 * size + 1, "lat_ms_pixel3": size + 1,
                  "lat_ms_gold_6226": 2 * size + 1})
    if energy:
        table["energy_mJ_fpga"] = 7 * size + 1
    return TabularBenchmark(archs, table, source=f"{prefix}.csv")


def test_blackbox_markers_keep_cifar10_and_name_every_other_table():
    c10 = TabularEvaluator(benchmark("c10"))
    assert blackbox.dataset_of(c10, None) == "CIFAR-10"
    assert blackbox.markers(Path("x/nb201_cifar10.csv"), "CIFAR-10") == (
        "<!-- benchmarks/blackbox_nb201.py: begin -->", "<!-- benchmarks/blackbox_nb201.py: end -->")
    # A renamed CIFAR-10 table, or another dataset, gets its own section.
    assert blackbox.markers(Path("my_c10.csv"), "CIFAR-10")[0] == \
        "<!-- benchmarks/blackbox_nb201.py --table my_c10.csv (CIFAR-10): begin -->"
    assert blackbox.markers(Path("nb201_cifar10.csv"), "CIFAR-100")[1] == \
        "<!-- benchmarks/blackbox_nb201.py --table nb201_cifar10.csv (CIFAR-100): end -->"
    assert blackbox.dataset_of(TabularEvaluator(benchmark("imagenet16")), None) == "ImageNet16-120"
    assert blackbox.dataset_of(TabularEvaluator(benchmark("svhn")), None) is None
    assert blackbox.dataset_of(TabularEvaluator(benchmark("svhn")), "SVHN") == "SVHN"


def test_blackbox_uses_the_tables_columns():
    evaluator = TabularEvaluator(benchmark("c100"))
    settings = blackbox.cost_settings(evaluator, None)
    assert settings == {"flops": "c100_flops_M", "latency": "lat_ms_pixel3",
                        "pretrain": ("c100_params_M", "c100_flops_M", "lat_ms_pixel3")}
    assert blackbox.cost_settings(evaluator, "lat_ms_gold_6226")["latency"] == "lat_ms_gold_6226"
    with pytest.raises(ValueError, match=r"--latency 'lat_ms_raspi4' is not a cost column of the table; allowed: \["):
        blackbox.cost_settings(evaluator, "lat_ms_raspi4")
    names = [m[0] for m in blackbox.methods(evaluator)]
    assert "LayerNAS (c100_flops_M, H=10, k=2, 3 passes)" in names and "RANK-NOSH (12 → 200, eta 3)" in names
    one = TabularEvaluator(benchmark("c100", fidelities=(200,)))
    assert not [n for n in (m[0] for m in blackbox.methods(one)) if "MF" in n or "RANK" in n]  # needs two fidelities
    no_latency = TabularEvaluator(benchmark("c100"), cost_columns=["c100_flops_M"])
    assert blackbox.cost_settings(no_latency, None)["latency"] is None


def _report(table: str, prefix: str, dataset: str | None) -> str:
    evaluator = TabularEvaluator(benchmark(prefix))
    args = argparse.Namespace(seeds=1, mf_seeds=1, jobs=1, table=Path(table), proxy_cache=None)
    run = {"reached": 5, "spent": 5, "test100": 40.0, "test200": 41.0, "overhead_ms": 0.1}
    rows = {"random": {"runs": [run], "cap": 15625}, "BO + pretraining": {"runs": [run], "cap": 300}}
    return blackbox.report(args, rows, None, "cmd", evaluator, dataset)


def test_blackbox_paper_figures_only_for_the_dataset_run_on(tmp_path):
    c100 = _report("nb201_cifar100.csv", "c100", "CIFAR-100")
    assert c100.startswith("<!-- benchmarks/blackbox_nb201.py --table nb201_cifar100.csv (CIFAR-100): begin -->\n"
                           "## Black-box search on NAS-Bench-201 CIFAR-100 (`nb201_cifar100.csv`, table lookups)")
    assert "Thesis (CIFAR-100, mean): random 7141.5" in c100 and "BO thesis 53.7" in c100
    assert "| *paper (CIFAR-100): BO thesis* | *73.51* | *73.51* |" in c100
    assert "94.37" not in c100 and "78.9" not in c100 and "CIFAR-10," not in c100
    assert "### Targets (issue 23, the same on every dataset)" in c100 and "`c100_valid_200`" in c100
    assert "mean 5.0 ≤ 45: met" in c100  # BO + pretraining's target holds on every table
    imagenet = _report("nb201_imagenet16.csv", "imagenet16", "ImageNet16-120")
    assert "Thesis Table 5.3: no paper figure for ImageNet16-120." in imagenet
    assert "| *paper (ImageNet16-120): BO thesis* | *47.19* | *47.31* |" in imagenet
    other = _report("svhn.csv", "svhn", None)
    assert "Thesis Table 5.3: no paper figure for this table." in other and "Table 5.4: no paper figure" in other
    assert "*paper" not in other and "unknown dataset" in other
    c10 = _report("nb201_cifar10.csv", "c10", "CIFAR-10")
    assert c10.startswith("<!-- benchmarks/blackbox_nb201.py: begin -->") and "mean 5.0 ≤ 45: met" in c10
    # Written into a results file, another dataset's section is added beside the CIFAR-10 one, never over it.
    from results_file import write_section

    results = tmp_path / "RESULTS.md"
    write_section(results, c10, *blackbox.markers(Path("nb201_cifar10.csv"), "CIFAR-10"))
    write_section(results, c100, *blackbox.markers(Path("nb201_cifar100.csv"), "CIFAR-100"))
    text = results.read_text()
    assert c10 in text and c100 in text


def _mathnas_args(table: str, **given) -> argparse.Namespace:
    options = dict(prefix=None, dataset=None, accuracy=None, test=None, flops=None, latency=None, energy=None)
    return argparse.Namespace(table=Path(table), **{**options, **given})


def test_mathnas_columns_without_energy():
    columns = mathnas.resolve_columns(_mathnas_args("c100.csv"), benchmark("c100", energy=False))
    assert columns == {"accuracy": "c100_valid_200", "test": "c100_test_200", "flops": "c100_flops_M",
                       "latency": "lat_ms_gold_6226", "energy": None, "dataset": "CIFAR-100"}
    full = mathnas.resolve_columns(_mathnas_args("c10.csv", latency="lat_ms_pixel3"), benchmark("c10"))
    assert full["energy"] == "energy_mJ_fpga" and full["latency"] == "lat_ms_pixel3" and full["dataset"] == "CIFAR-10"
    assert mathnas.resolve_columns(_mathnas_args("c10.csv", energy="none"), benchmark("c10"))["energy"] is None
    with pytest.raises(ValueError, match=r"--energy 'energy_mJ_fpga' is not a column of c100.csv; the table has columns"):
        mathnas.resolve_columns(_mathnas_args("c100.csv", energy="energy_mJ_fpga"), benchmark("c100", energy=False))
    with pytest.raises(ValueError, match="several datasets"):
        two = benchmark("c10")
        merged = TabularBenchmark(two.archs, {**{c: two.column(c) for c in two.columns},
                                              "c100_valid_200": two.column("c10_valid_200")}, source="m.csv")
        mathnas.resolve_columns(_mathnas_args("m.csv"), merged)


def test_mathnas_sections_and_paper_figures():
    assert mathnas.markers(Path("nb201_cifar10.csv"), "CIFAR-10")[0] == "<!-- benchmarks/mathnas_nb201.py: begin -->"
    assert mathnas.markers(Path("nb201_cifar100.csv"), "CIFAR-100")[0] == \
        "<!-- benchmarks/mathnas_nb201.py --table nb201_cifar100.csv (CIFAR-100): begin -->"
    results = {"ranking": {("Algorithm 1 (N^avg host)", "reciprocal"): {"valid": {"spearman_rho": 0.8}}},
               "searches": [{"test": 71.0}]}
    c100 = mathnas.paper_comparison(results, "CIFAR-100")
    assert "Paper (CIFAR-100)" in c100 and "70.82 % test" in c100 and "93.31" not in c100
    assert "unconstrained pick 71.00 % test (met within 0.5 points)" in c100
    other = mathnas.paper_comparison(results, None)
    assert other.startswith("Paper: no paper figure for this table") and "MISSED" not in other and "met" not in other
