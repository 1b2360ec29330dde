"""Any dataset's table: columns inferred from the naming scheme or given explicitly, no CIFAR-10 default,
clear errors for missing columns; LayerNAS buckets by the table's own cost column."""

from __future__ import annotations

import numpy as np
import pytest

from lightning_nas.evaluators import MissingColumnError, TabularBenchmark, TabularEvaluator, infer_columns
from lightning_nas.spaces.nb201 import nb201_all_archs, nb201_op_code, nb201_search_space

C100_COSTS = ["c100_params_M", "c100_flops_M", "lat_ms_pixel3", "energy_mJ_fpga"]


def c100_benchmark(**more: np.ndarray) -> TabularBenchmark:
    """Every NB201 arch with CIFAR-100-style columns: accuracy from the op code's digits, costs from their sum."""
    archs = list(nb201_all_archs())
    codes = np.array([[int(c) for c in nb201_op_code(a)] for a in archs], dtype=float)
    score = (codes == 3).sum(1) * 8.0 + (codes == 2).sum(1) * 4.0 + (codes == 1).sum(1)  # 3x3 convs best
    size = codes.sum(1)
    table = {"index": np.arange(len(archs), dtype=float), "c100_valid_12": 10 + score, "c100_test_12": 11 + score,
             "c100_valid_200": 20 + score, "c100_test_200": 21 + score, "valid_200_n_seeds": np.full(len(archs), 3.0),
             "c100_params_M": 0.1 * size, "c100_flops_M": 10.0 * size + 1, "lat_ms_pixel3": 0.5 * size + 1,
             "energy_mJ_fpga": 7 * (0.5 * size + 1), **more}
    return TabularBenchmark(archs, table, source="c100.csv")


@pytest.fixture(scope="module")
def bench() -> TabularBenchmark:
    return c100_benchmark()


def test_cifar100_columns_are_inferred_from_their_names(bench):
    evaluator = TabularEvaluator(bench)
    assert evaluator.valid_columns == {12.0: "c100_valid_12", 200.0: "c100_valid_200"}
    assert evaluator.test_columns == {12.0: "c100_test_12", 200.0: "c100_test_200"}
    assert list(evaluator.cost_columns) == C100_COSTS  # index and valid_200_n_seeds are neither
    assert evaluator.full_fidelity == 200 and evaluator.fidelities == [12, 200]
    arch = nb201_search_space().default()
    metrics = evaluator(arch, 12)
    assert metrics["valid_accuracy"] == bench.value(arch, "c100_valid_12")
    assert metrics["test_accuracy"] == bench.value(arch, "c100_test_12")
    assert set(metrics) == {"valid_accuracy", "test_accuracy", *C100_COSTS}
    assert evaluator.costs(arch) == {c: bench.value(arch, c) for c in C100_COSTS}
    assert evaluator.mapping() == {"valid": {"12": "c100_valid_12", "200": "c100_valid_200"},
                                   "test": {"12": "c100_test_12", "200": "c100_test_200"}, "costs": C100_COSTS}


def test_the_issue_example_no_longer_needs_cifar10_costs(bench):
    # Valid and test columns given, costs left out: they come from this table, not the CIFAR-10 list.
    evaluator = TabularEvaluator(bench, valid_columns={200: "c100_valid_200"}, test_columns={200: "c100_test_200"})
    assert list(evaluator.cost_columns) == C100_COSTS and evaluator.fidelities == [200]
    explicit = TabularEvaluator(bench, valid_columns={200: "c100_valid_200"}, test_columns={}, cost_columns=[])
    assert explicit.cost_columns == () and np.isnan(explicit(nb201_search_space().default())["test_accuracy"])


def test_naming_scheme_edge_cases():
    columns = ["index", "imagenet16_valid_200", "imagenet16_test_200", "imagenet16_valid_12.5", "valid_200_n_seeds",
               "imagenet16_params_M", "imagenet16_flops_M", "imagenet16_lat_ms_pixel3", "lat_ms_gold_6226",
               "c10_flops_M", "energy_mJ_fpga", "imagenet16_energy_mJ_edgegpu", "flops"]
    inferred = infer_columns(columns)
    assert inferred["valid_columns"] == {12.5: "imagenet16_valid_12.5", 200.0: "imagenet16_valid_200"}
    assert inferred["test_columns"] == {200.0: "imagenet16_test_200"}
    assert inferred["cost_columns"] == ["imagenet16_params_M", "imagenet16_flops_M", "imagenet16_lat_ms_pixel3",
                                        "lat_ms_gold_6226", "energy_mJ_fpga", "imagenet16_energy_mJ_edgegpu"]


def test_a_table_of_several_datasets_needs_a_prefix():
    columns = ["c10_valid_200", "c10_test_200", "c10_flops_M", "c100_valid_200", "c100_flops_M", "lat_ms_pixel3"]
    with pytest.raises(ValueError, match=r"several datasets \(prefixes \['c10', 'c100'\]\): choose one with `prefix`"):
        infer_columns(columns)
    c10 = infer_columns(columns, "c10")
    assert c10["valid_columns"] == {200.0: "c10_valid_200"} and c10["cost_columns"] == ["c10_flops_M", "lat_ms_pixel3"]
    assert infer_columns(columns, "c100")["test_columns"] == {}
    with pytest.raises(ValueError, match=r"prefix 'imagenet16': the table has no column named 'imagenet16_valid_<epochs>'; "
                                         r"prefixes with validation columns there: \['c10', 'c100'\]"):
        infer_columns(columns, "imagenet16")


def test_missing_columns_are_clear_errors_listing_the_table(bench):
    for kwargs, role in (({"valid_columns": {200: "c10_valid_200"}}, "validation column 'c10_valid_200' \\(fidelity 200"),
                         ({"test_columns": {200: "c10_test_200"}}, "test column 'c10_test_200'"),
                         ({"cost_columns": ["c10_params_M"]}, "cost column 'c10_params_M'"),
                         ({"extra_columns": ["nope"]}, "extra column 'nope'")):
        with pytest.raises(MissingColumnError, match=f"{role}.* is not in c100.csv; the table has columns \\['index', "
                                                     "'c100_valid_12'") as err:
            TabularEvaluator(bench, **kwargs)
        assert isinstance(err.value, KeyError) and isinstance(err.value, ValueError)
        assert not str(err.value).startswith('"')  # not quoted like a plain KeyError
    unnamed = TabularBenchmark(list(nb201_all_archs()), {"acc": np.zeros(15625), "lat": np.ones(15625)}, source="u.csv")
    with pytest.raises(ValueError, match=r"cannot infer the columns of u.csv: no column is named '<prefix>_valid_<epochs>'.*"
                                         r"give the columns explicitly.*the table has columns \['acc', 'lat'\]"):
        TabularEvaluator(unnamed)
    evaluator = TabularEvaluator(unnamed, valid_columns={1: "acc"}, test_columns={}, cost_columns=["lat"])
    assert evaluator.full_fidelity == 1 and evaluator.cost_columns == ("lat",)
    with pytest.raises(ValueError, match="`prefix` must be a non-empty string"):
        TabularEvaluator(bench, prefix="")


def test_from_mapping_reads_json_and_yaml_forms(bench):
    json_form = {"valid": {"12": "c100_valid_12", "200": "c100_valid_200"}, "test": {"200": "c100_test_200"},
                 "costs": ["c100_flops_M"]}
    yaml_form = {"valid": {12: "c100_valid_12", 200: "c100_valid_200"}, "test": {200: "c100_test_200"},
                 "costs": ["c100_flops_M"]}
    for mapping in (json_form, yaml_form):
        evaluator = TabularEvaluator.from_mapping(bench, mapping)
        assert evaluator.mapping() == {**json_form, "test": {"200": "c100_test_200"}}
    single = TabularEvaluator.from_mapping(bench, {"valid": "c100_valid_200", "prefix": "c100"})
    assert single.valid_columns == {200.0: "c100_valid_200"} and list(single.cost_columns) == C100_COSTS
    assert TabularEvaluator.from_mapping(bench, {}).mapping() == TabularEvaluator(bench).mapping()


@pytest.mark.parametrize(("mapping", "match"), [
    ({"accuracy": "x"}, r"my.yaml: unknown keys \['accuracy'\]; allowed: \['prefix', 'valid', 'test', 'costs'\]"),
    ({"valid": "top1"}, r"my.yaml: 'valid' is the column 'top1', whose name does not end in _<epochs>; write \{epochs"),
    ({"valid": {"last": "c100_valid_200"}}, r"'valid' key 'last' must be a positive number of epochs"),
    ({"valid": {"0": "c100_valid_200"}}, r"'valid' key '0' must be a positive number of epochs"),
    ({"test": {"200": 3}}, r"'test' entry '200' must name a column, got 3"),
    ({"test": ["c100_test_200"]}, r"'test' must be \{epochs: column\}"),
    ({"costs": "c100_flops_M"}, r"'costs' must be a list of column names \(\[\] for none\)"),
    ({"prefix": 100}, r"'prefix' must be a dataset prefix such as 'c100', got 100"),
    ({"valid": {}}, r"`valid_columns` needs at least one"),
    (["c100_valid_200"], r"my.yaml: must be a mapping with keys"),
])
def test_bad_mappings_name_the_key_and_what_is_allowed(bench, mapping, match):
    with pytest.raises(ValueError, match=match):
        TabularEvaluator.from_mapping(bench, mapping, where="my.yaml")


def test_extra_columns_and_reserved_names(bench):
    evaluator = TabularEvaluator(bench, extra_columns=["valid_200_n_seeds", "c100_flops_M"])
    assert evaluator.extra_columns == ("valid_200_n_seeds",)  # a cost column is returned once, as a cost
    assert evaluator(nb201_search_space().default())["valid_200_n_seeds"] == 3.0
    assert evaluator.metrics == ["valid_accuracy", "test_accuracy", *C100_COSTS, "valid_200_n_seeds"]
    clash = c100_benchmark(valid_accuracy=np.zeros(15625))
    with pytest.raises(ValueError, match="column 'valid_accuracy' has the name of a reported metric"):
        TabularEvaluator(clash, cost_columns=["valid_accuracy"])


@pytest.mark.filterwarnings("ignore")
def test_layernas_buckets_by_the_cifar100_cost_column(bench):
    from lightning_nas.search_cli import layernas_cost
    from lightning_nas.strategies import Budget, Constraint, LayerNAS, run_search

    evaluator = TabularEvaluator(bench)
    assert layernas_cost(None, [], evaluator.cost_columns) == "c100_flops_M"  # the table's FLOPs column
    limit = [Constraint("lat_ms_pixel3", upper=3.0)]
    assert layernas_cost(None, limit, evaluator.cost_columns) == "lat_ms_pixel3"
    with pytest.raises(ValueError, match=r"--layernas-cost 'c10_flops_M' is not a cost column; allowed: \['c100_params_M'"):
        layernas_cost("c10_flops_M", [], evaluator.cost_columns)
    strategy = LayerNAS(nb201_search_space(), cost="c100_flops_M", cost_model=evaluator.costs, constraints=limit,
                        buckets=4, per_bucket=1)
    results = run_search(strategy, evaluator, objective="valid_accuracy", budget=Budget(evaluations=40))
    assert len(results) == 40
    best = results.best()
    assert best is not None and best.metrics["lat_ms_pixel3"] <= 3.0
    assert set(strategy._cost_cache.values()) <= set(bench.column("c100_flops_M").tolist())
