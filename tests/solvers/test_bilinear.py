"""``BilinearTable`` input checks: non-finite values (constructor, assignment, load), and table files
that are damaged, truncated or not tables at all give an error naming the file and what is wrong."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from lightning_nas.bilinear import BilinearTable
from lightning_nas.solvers import ConstrainedProblem, InfeasibleError, Limit, search_constrained


@pytest.fixture()
def tables(inst):
    space, staged, acc, (lat,), _ = inst.random_instance(6)
    return staged, acc, lat


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, "1.0", None, True, [1.0]])
def test_constant_must_be_a_finite_number(tables, bad):
    staged, acc, lat = tables
    with pytest.raises(ValueError, match=r"`constant` of table 'latency' must be a finite number, got"):
        BilinearTable(staged, bad, lat.block, lat.depth, name="latency")
    # Also when set afterwards: a NaN latency constant used to make every arch "infeasible", a NaN
    # accuracy constant an "optimal" NaN.
    with pytest.raises(ValueError, match=r"`constant` of table 'latency' must be a finite number"):
        lat.constant = bad
    assert math.isfinite(lat.constant)


def test_arrays_made_non_finite_after_construction_are_refused_by_the_solvers(tables):
    staged, acc, lat = tables
    lat.block[0, 0, 0] = math.nan
    with pytest.raises(ValueError, match=r"limit on 'latency' table 'latency' has non-finite `block` entries"):
        search_constrained(acc, Limit(lat, upper=1e6))
    acc.depth[0, 0] = math.inf
    with pytest.raises(ValueError, match=r"objective table 'accuracy' has non-finite `depth` entries"):
        ConstrainedProblem(acc)


def test_non_finite_or_malformed_arrays_name_the_array(tables):
    staged, acc, lat = tables
    block = lat.block.copy()
    block[0, 0, 0] = math.nan
    with pytest.raises(ValueError, match=r"table 'latency' has non-finite `block` entries \(1 NaN"):
        BilinearTable(staged, 1.0, block, name="latency")
    with pytest.raises(ValueError, match=r"`block` of table 'latency' must be a rectangular array of numbers"):
        BilinearTable(staged, 1.0, [[[1.0, "fast"]]], name="latency")
    with pytest.raises(ValueError, match=r"`block` of table 'latency' must have shape"):
        BilinearTable(staged, 1.0, np.ones((1, 2)), name="latency")
    with pytest.raises(ValueError, match=r"`name` must be a non-empty string"):
        BilinearTable(staged, 1.0, lat.block, name=None)


def test_an_infeasible_limit_is_still_an_infeasible_error(tables):
    staged, acc, lat = tables
    with pytest.raises(InfeasibleError, match="smallest achievable latency"):
        search_constrained(acc, Limit(lat, upper=lat.extreme()[0] - 1.0))


def _edit(data, how):
    if how == "no structure":
        del data["structure"]
    elif how == "no block":
        del data["block"]
    elif how == "NaN constant":
        data["constant"] = math.nan
    elif how == "Infinity entry":
        data["block"][0][0][0] = math.inf
    elif how == "string entry":
        data["block"][0][0][0] = "fast"
    elif how == "ragged block":
        data["block"][0].pop()
    elif how == "future version":
        data["version"] = 99
    elif how == "other format":
        data["format"] = "other"
    elif how == "metadata a list":
        data["metadata"] = [1, 2]
    return data


@pytest.mark.parametrize(("how", "message"), [
    ("no structure", r"missing field\(s\) \['structure'\]"),
    ("no block", r"missing field\(s\) \['block'\]"),
    ("NaN constant", r"`constant` of table 'latency' must be a finite number, got nan"),
    ("Infinity entry", r"non-finite `block` entries"),
    ("string entry", r"`block` of table 'latency' must be a rectangular array of numbers"),
    ("ragged block", r"`block` of table 'latency' must be a rectangular array of numbers"),
    ("future version", r"version 99 is not supported"),
    ("other format", r"not a bilinear table \(format 'other'"),
    ("metadata a list", r"`metadata` must be a JSON object"),
])
def test_a_malformed_table_file_names_the_file_and_the_fault(tables, tmp_path, how, message):
    staged, _, lat = tables
    path = tmp_path / "latency_table.json"
    path.write_text(json.dumps(_edit(lat.to_dict(), how)))
    with pytest.raises(ValueError, match=rf"latency_table\.json: .*{message}"):
        BilinearTable.load(path, staged)


@pytest.mark.parametrize(("raw", "message"), [
    (b"", "is empty"),
    (None, r"is not valid JSON \(.*line 1, column .*looks truncated"),
    (bytes(range(256)) * 4, "is not UTF-8 text"),
    ('{"name": "lat\xe9ncy"}'.encode("latin-1"), "is not UTF-8 text"),
    (b"[1, 2, 3]", "holds a JSON array, expected a JSON object"),
    (b"null", "holds a JSON null, expected a JSON object"),
])
def test_an_unreadable_table_file_names_the_file(tables, tmp_path, raw, message):
    staged, _, lat = tables
    path = tmp_path / "latency_table.json"
    path.write_bytes(json.dumps(lat.to_dict()).encode()[:200] if raw is None else raw)
    with pytest.raises(ValueError, match=rf"latency_table\.json'? {message}"):
        BilinearTable.load(path, staged)


def test_a_missing_table_file_or_a_directory_is_named(tables, tmp_path):
    staged, _, _ = tables
    with pytest.raises(FileNotFoundError, match=r"bilinear table file '.*nowhere\.json' does not exist"):
        BilinearTable.load(tmp_path / "nowhere.json", staged)
    with pytest.raises(IsADirectoryError, match="is a directory, not a file"):
        BilinearTable.load(tmp_path, staged)


def test_a_good_table_file_round_trips(tables, tmp_path):
    staged, _, lat = tables
    back = BilinearTable.load(lat.save(tmp_path / "latency_table.json"), staged)
    assert np.array_equal(back.block, lat.block) and back.constant == lat.constant and back.name == "latency"
    with pytest.raises(FileNotFoundError, match="missing.json"):
        BilinearTable.load(tmp_path / "missing.json", staged)
