"""The reliability suite's classifier: each outcome is decided as benchmarks/reliability.py documents
(a fast check on synthetic cases; the suite itself runs as a benchmark)."""

from __future__ import annotations

import importlib.util
import pickle
import sys
import time
from pathlib import Path

import pytest

SUITE = Path(__file__).resolve().parents[1] / "benchmarks" / "reliability.py"


@pytest.fixture(scope="module")
def rel():
    spec = importlib.util.spec_from_file_location("reliability_suite", SUITE)
    module = importlib.util.module_from_spec(spec)
    sys.modules["reliability_suite"] = module
    spec.loader.exec_module(module)
    return module


def run(rel, fn, *expect, ok=False, timeout=20.0):
    return rel.run_case(rel.Case("test", fn.__name__, fn, expect, timeout, False, ok))[:2]


def test_deliberate_named_error_is_clear(rel):
    from lightning_nas.io import read_json

    def missing(c):
        read_json(c.tmp / "missing_table.json", "latency table")

    assert run(rel, missing, "missing_table.json")[0] == "clear"
    assert run(rel, missing, "some_other_name")[0] == "unhelpful"


def test_internal_errors_are_unhelpful(rel):
    def key_error(c):
        return {}["structure"]

    def numpy_error(c):
        import numpy as np

        np.asarray(["high"], dtype=float)

    assert run(rel, key_error, "structure")[0] == "unhelpful"
    assert run(rel, numpy_error, "high")[0] == "unhelpful"


def test_accepted_bad_input_and_wrong_oracle_are_silent_wrong(rel):
    def accepted(c):
        return 42

    def oracle(c):
        c.wrong("NaN best")

    assert run(rel, accepted, "n")[0] == "silent_wrong"
    assert run(rel, oracle, ok=True)[0] == "silent_wrong"
    assert run(rel, accepted, ok=True)[0] == "ok"


def test_hang_code_exec_and_data_lost(rel):
    def sleeps(c):
        time.sleep(60)

    def payload(c):
        pickle.loads(pickle.dumps(rel.payload_factory(c.marker)()))

    def damages(c):
        path = c.protect(c.path("user.json", "{}"))
        path.write_text("[]")

    start = time.perf_counter()
    assert run(rel, sleeps, timeout=1.0)[0] == "hang"
    assert time.perf_counter() - start < 10
    assert run(rel, payload, ok=True)[0] == "code_exec"
    assert run(rel, damages, ok=True)[0] == "data_lost"


def test_report_table_counts(rel):
    case = rel.Case("a", "x", lambda c: None, (), 1.0, False, True)
    results = [(case, "clear", "", 0.1), (case, "hang", "", 0.1), (case, "ok", "", 0.1)]
    header, rows = rel._table(results)
    assert header[:3] == ["area", "cases", "clear"] and rows[-1][:3] == ["total", 3, 1]
    assert rows[-1][header.index("hangs")] == 1
    assert "| **total** |" in rel._report(results, "cmd", 1.0)
