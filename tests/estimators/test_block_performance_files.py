"""A block-performance file that is damaged, truncated or made for another space is refused with a
message naming the file and what is wrong (never a raw KeyError/JSONDecodeError), and a good file
round-trips."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lightning_nas.bilinear import BilinearTable
from lightning_nas.estimators.block_performance import BlockPerformance, estimate_block_performance, nodes_as_stage
from lightning_nas.io import FileFormatError
from lightning_nas.spaces import Decision, SearchSpace
from lightning_nas.spaces.nb201 import nb201_search_space


@pytest.fixture(scope="module")
def setup():
    staged = nodes_as_stage(nb201_search_space())
    rng = np.random.default_rng(0)
    acc = BilinearTable(staged, 80.0, rng.normal(0, 2, (1, 6, 5)), name="accuracy")
    flops = BilinearTable(staged, 10.0, rng.uniform(1, 30, (1, 6, 5)), name="flops")
    perf = estimate_block_performance(lambda archs: {"accuracy": acc.predict_many(archs)}, staged, flops)
    return staged, perf


def write(tmp_path, data, name="perf.json"):
    path = tmp_path / name
    path.write_bytes(data if isinstance(data, bytes) else json.dumps(data).encode())
    return path


def test_round_trip(tmp_path, setup):
    staged, perf = setup
    back = BlockPerformance.load(perf.save(tmp_path / "perf.json"), staged)
    archs = staged.space.sample_many(20, 0)
    assert np.allclose(back.predictor().predict_many(archs), perf.predictor().predict_many(archs))


def damage(data, how):
    if how == "no base":
        data.pop("base")
    elif how == "nan base":
        data["base"]["accuracy"] = float("nan")
    elif how == "string base":
        data["base"]["accuracy"] = "high"
    elif how == "delta without block":
        data["deltas"]["accuracy"].pop("block")
    elif how == "delta without structure":
        data["deltas"]["accuracy"].pop("structure")
    elif how == "nan delta constant":
        data["deltas"]["accuracy"]["constant"] = float("nan")
    elif how == "negative evaluations":
        data["evaluations"] = -3
    elif how == "bool evaluations":
        data["evaluations"] = True
    elif how == "future version":
        data["version"] = 9
    elif how == "unknown method":
        data["method"] = "guess"
    elif how == "deltas a list":
        data["deltas"] = [1, 2]
    return data


@pytest.mark.parametrize("how", ["no base", "nan base", "string base", "delta without block", "delta without structure",
                                 "nan delta constant", "negative evaluations", "bool evaluations", "future version",
                                 "unknown method", "deltas a list"])
def test_damaged_file_is_named(tmp_path, setup, how):
    staged, perf = setup
    path = write(tmp_path, damage(perf.to_dict(), how))
    with pytest.raises(FileFormatError) as info:
        BlockPerformance.load(path, staged)
    assert str(path) in str(info.value)


@pytest.mark.parametrize(("content", "expected"), [
    (b"", "empty"), (b"[]", "JSON array"), (bytes(range(256)), "not UTF-8"), (b'{"format": "lightning_nas.block_perf', "truncated"),
])
def test_unreadable_file_is_named(tmp_path, setup, content, expected):
    staged, _ = setup
    path = write(tmp_path, content)
    with pytest.raises(FileFormatError, match=expected) as info:
        BlockPerformance.load(path, staged)
    assert str(path) in str(info.value) and "block-performance file" in str(info.value)


def test_missing_file_and_directory_are_named(tmp_path, setup):
    staged, _ = setup
    with pytest.raises(FileNotFoundError, match="perf.json"):
        BlockPerformance.load(tmp_path / "perf.json", staged)
    with pytest.raises(IsADirectoryError):
        BlockPerformance.load(tmp_path, staged)


def test_file_of_another_space_says_so_and_names_the_labels(tmp_path, setup):
    staged, perf = setup
    path = perf.save(tmp_path / "perf.json")
    other = nodes_as_stage(SearchSpace([Decision(f"layer{i}", ("a", "b"), "a") for i in range(3)]))
    with pytest.raises(FileFormatError, match="another search space") as info:
        BlockPerformance.load(path, other)
    message = str(info.value)
    assert "labels only in the file" in message and "edge_1_0" in message
    assert "labels only in this space" in message and "layer0" in message
    assert str(path) in message


def test_same_labels_other_candidates_names_the_block(tmp_path, setup):
    staged, perf = setup
    path = perf.save(tmp_path / "perf.json")
    ops = ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "max_pool_3x3")
    other = nodes_as_stage(SearchSpace([Decision(d.label, ops, "none") for d in nb201_search_space()]))
    with pytest.raises(FileFormatError, match="another search space") as info:
        BlockPerformance.load(path, other)
    assert "max_pool_3x3" in str(info.value) and "edge_1_0" in str(info.value)


def test_older_file_without_top_level_structure_still_loads(tmp_path, setup):
    staged, perf = setup
    data = perf.to_dict()
    data.pop("structure")
    back = BlockPerformance.load(write(tmp_path, data), staged)
    assert back.base == perf.base


def test_evaluator_returning_text_is_named(setup):
    staged, _ = setup
    with pytest.raises(ValueError, match="evaluator's 'accuracy' must be .* finite numbers"):
        estimate_block_performance(lambda archs: {"accuracy": ["high"] * len(archs)}, staged, setup[1].flops)


@pytest.mark.parametrize(("kwargs", "name"), [({"num_hosts": "all", "max_hosts": -1}, "`max_hosts`"),
                                              ({"num_hosts": 0}, "`num_hosts`"), ({"num_hosts": True}, "`num_hosts`")])
def test_sampled_host_counts_are_named(setup, kwargs, name):
    from lightning_nas.estimators.block_performance import estimate_block_performance_sampled

    staged, perf = setup
    with pytest.raises(ValueError, match=name):
        estimate_block_performance_sampled(lambda archs: {"accuracy": np.zeros(len(archs))}, staged, perf.flops, **kwargs)


def test_labels_string_and_sampled_seed_are_named(setup):
    from lightning_nas.estimators.block_performance import estimate_block_performance_sampled

    staged, perf = setup
    with pytest.raises(ValueError, match="`labels` must be a list of labels, got the string 'edge_1_0'"):
        nodes_as_stage(nb201_search_space(), "edge_1_0")
    with pytest.raises(ValueError, match="`seed` must be an int >= 0"):
        estimate_block_performance_sampled(lambda archs: {"accuracy": np.zeros(len(archs))}, staged, perf.flops, num_hosts=2, seed=True)


def test_staged_patterns_and_kendall_chunk_are_named():
    from lightning_nas.estimators.ranking import kendall_tau
    from lightning_nas.spaces.staged import StagedSpace

    with pytest.raises(ValueError, match="`block_pattern` '\\(' is not a regular expression"):
        StagedSpace.from_space(nb201_search_space(), block_pattern="(")
    with pytest.raises(ValueError, match="`depth_pattern` .* must have the named groups \\['stage'\\]"):
        StagedSpace.from_space(nb201_search_space(), depth_pattern="depth")
    with pytest.raises(ValueError, match="`chunk` must be an int >= 1"):
        kendall_tau([1, 2, 3], [1, 2, 3], chunk=0)
