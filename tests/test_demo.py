"""The BINAS demo end to end on a tiny slice of the digits: files, exact budgets, reproducibility."""

from __future__ import annotations

import json

import pytest

from lightning_nas.cli import main
from lightning_nas.demo import format_summary, run_demo

TINY = dict(dataset="digits", epochs=1, finetune_epochs=1, max_examples=160, estimation_passes=2, num_ranked=6,
            profile_repeats=3, target_fractions=(0.3, 0.7), progress=False)


def test_demo_pipeline_writes_everything_and_meets_the_budgets(tmp_path):
    summary = run_demo(out=tmp_path, **TINY)
    run = tmp_path / "version_0"
    assert json.loads((run / "accuracy_table.json").read_text())["link"] == "log_error"  # the default estimator
    assert json.loads((run / "summary.json").read_text())["targets"] == json.loads(json.dumps(summary["targets"]))
    for name in ("pareto.png", "contributions.png", "accuracy_table.json", "arch_0.json", "subnet_1.pt"):
        assert (run / name).stat().st_size > 0
    assert (tmp_path / "latency_table.json").exists()
    low, high = summary["latency_range_ms"]
    for r in summary["targets"]:
        assert r["status"] == "optimal"
        assert low <= r["predicted_ms"] <= r["target_ms"] + 1e-9
        assert 0.0 <= r["one_shot_acc"] <= 1.0 and 0.0 <= r["finetuned_acc"] <= 1.0
        assert r["measured_ms"] > 0
    # The looser target can only allow a better predicted accuracy.
    assert summary["targets"][1]["predicted_acc"] >= summary["targets"][0]["predicted_acc"] - 1e-12
    assert set(summary["ranking"]) >= {"full", "num_subnets"}
    assert "target ms" in format_summary(summary)

    # A second run reuses the latency table, writes a new version and finds the same archs.
    again = run_demo(out=tmp_path, **TINY)
    assert (tmp_path / "version_1" / "summary.json").exists()
    assert [r["arch"] for r in again["targets"]] == [r["arch"] for r in summary["targets"]]


def test_demo_with_the_conditional_means_estimator(tmp_path):
    summary = run_demo(out=tmp_path, estimator="means", **TINY)
    table = json.loads((tmp_path / "version_0" / "accuracy_table.json").read_text())
    assert table["link"] == "identity" and table["metadata"]["shrinkage"] == "empirical_bayes" and summary["estimator"] == "means"
    assert all(r["status"] == "optimal" for r in summary["targets"])
    assert summary["targets"][1]["predicted_acc"] >= summary["targets"][0]["predicted_acc"] - 1e-12
    with pytest.raises(ValueError, match="`estimator` must be"):
        run_demo(out=tmp_path, estimator="ols", **TINY)


def test_cli_rejects_bad_arguments(capsys):
    with pytest.raises(SystemExit):
        main(["demo", "--epochs", "0"])
    assert "must be a positive int" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["demo", "--targets", "1.5"])
    assert "fraction in [0, 1]" in capsys.readouterr().err
