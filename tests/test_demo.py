"""The BINAS demo end to end on a tiny slice of its task: files, exact budgets, the printed checks, reproducibility."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from lightning_nas.cli import main
from lightning_nas.demo import DISTURBED_MAPE, LATENCY_ATTEMPTS, REFERENCES, carry_better_picks, format_summary, pick_accuracy, run_demo
from lightning_nas.estimators import kendall_tau
from lightning_nas.solvers import SearchResult

TINY = dict(epochs=1, finetune_epochs=1, max_examples=60, copies=(2, 2, 2), estimation_passes=2, num_ranked=6, num_random=8,
            profile_repeats=3, target_fractions=(0.3, 0.7), progress=False)


@pytest.fixture(scope="module")
def shared_out(tmp_path_factory):
    """One output directory for the module's runs, so that they share (and reuse) one latency table."""
    return tmp_path_factory.mktemp("demo")


def test_demo_pipeline_writes_everything_and_meets_the_budgets(shared_out):
    tmp_path = shared_out
    before = torch.get_num_threads()
    summary = run_demo(out=tmp_path, **{**TINY, "threads": 1})
    assert summary["threads"] == 1 and torch.get_num_threads() == before  # the caller's setting is restored
    assert summary["seed"] == 0  # with the thread count, what repeats a run
    run = Path(summary["run_dir"])
    assert json.loads((run / "accuracy_table.json").read_text())["link"] == "log_error"  # the default estimator
    assert json.loads((run / "summary.json").read_text())["targets"] == json.loads(json.dumps(summary["targets"]))
    for name in ("pareto.png", "contributions.png", "ranking.png", "accuracy_table.json", "arch_0.json", "subnet_1.pt"):
        assert (run / name).stat().st_size > 0
    assert (tmp_path / "latency_table.json").exists()
    assert summary["examples"] == {"train": 36 * 2, "held_out": 12 * 2, "val": 12 * 2}
    low, high = summary["latency_range_ms"]
    for r in summary["targets"]:
        assert r["status"] == "optimal"
        assert low <= r["predicted_ms"] <= r["target_ms"] + 1e-9
        assert 0.0 <= r["one_shot_acc"] <= 1.0 and 0.0 <= r["finetuned_acc"] <= 1.0
        assert r["measured_ms"] > 0
        assert 0 <= r["random_within_budget"] <= 8
    # Targets are quantiles of random subnets' predicted latency: the looser one allows more.
    assert summary["targets"][0]["target_ms"] <= summary["targets"][1]["target_ms"]
    if all(r["first_kept"] for r in summary["targets"]):  # a rejected pick moves to a smaller arch
        assert summary["targets"][1]["table_acc"] >= summary["targets"][0]["table_acc"] - 1e-12
    cal = summary["calibration"]
    for r in summary["targets"]:  # the printed prediction: the line's, corrected by the measured neighbours' residuals
        near = r["neighbours"]
        assert 1 <= len(near["archs"]) <= 8 and len(near["measured_acc"]) == len(near["table_acc"]) == len(near["archs"])
        line = cal["intercept"] + cal["slope"] * np.asarray(near["table_acc"])
        assert r["predicted_acc"] == pytest.approx(pick_accuracy(r["line_acc"], np.subtract(near["measured_acc"], line), cal["residual_std"]))
        assert r["line_acc"] == pytest.approx(cal["intercept"] + cal["slope"] * r["table_acc"])
        assert all(sum(a[k] != r["arch"][k] for k in a) == 1 for a in near["archs"])
    fit = np.polyfit(summary["random"]["predicted_acc"], summary["random"]["measured_acc"], 1)
    assert [cal["slope"], cal["intercept"]] == pytest.approx(list(fit))
    assert set(summary["ranking"]) >= {"full", "num_subnets", "all_random", "held_out_measured"}
    # The τ check's yardstick: the ranked subnets measured on the held-out split, ranked against the validation split.
    held = summary["ranking"]["held_out_measured"]
    assert len(held["accuracy"]) == 6 and all(0.0 <= a <= 1.0 for a in held["accuracy"])
    tau_held = kendall_tau(held["accuracy"], summary["random"]["measured_acc"][:6])
    assert held["kendall_tau"] == pytest.approx(tau_held, nan_ok=True)

    # The truth: every random subnet measured, the reliability figures consistent with them.
    rel, rnd = summary["reliability"], summary["random"]
    assert len(rnd["measured_acc"]) == len(rnd["predicted_acc"]) == len(rnd["measured_ms"]) == 8
    assert rel["val_examples"] == 24 and rel["standard_error"] >= 0
    assert rel["accuracy_range"] == [min(rnd["measured_acc"]), max(rnd["measured_acc"])]
    assert rel["accuracy_std"] == pytest.approx(float(np.std(rnd["measured_acc"], ddof=1)))

    # The printed checks are the summary's, each met or MISSED by its own rule.
    checks = {c["check"].split(",")[0].split(" of ")[0]: c for c in summary["checks"]}
    assert len(summary["checks"]) == 5
    tau = summary["ranking"]["full"]["kendall_tau"]
    assert checks["Kendall τ"]["met"] == (tau >= 0.7)
    assert checks["Kendall τ"]["held_out_tau"] == held["kendall_tau"] or math.isnan(tau_held)
    assert f"measured on the held-out split instead of predicted: {tau_held:.3f}" in checks["Kendall τ"]["check"]
    gap = max(abs(r["one_shot_acc"] - r["predicted_acc"]) for r in summary["targets"])
    assert checks["largest |measured - predicted| accuracy"]["value"] == pytest.approx(100 * gap)
    assert checks["largest |measured - predicted| accuracy"]["met"] == (gap <= 0.01)
    # Non-decreasing accuracy: the smallest step between consecutive picks, printed with its paired standard error
    # (per-image differences in {-1, 0, 1}: at most 1 / sqrt(N - 1)).
    accs = [r["one_shot_acc"] for r in summary["targets"]]
    step = next(c for c in summary["checks"] if c["check"].startswith("measured accuracy non-decreasing"))
    assert step["value"] == pytest.approx(min(np.diff(accs))) and step["met"] == all(np.diff(accs) >= 0)
    assert 0 <= step["standard_error"] <= 1 / math.sqrt(summary["reliability"]["val_examples"] - 1)
    assert f"paired standard error {step['standard_error']:.3f}" in step["check"]
    text = format_summary(summary)
    assert "target ms" in text and "split-half r" in text and "targets:" in text
    assert f"the same 6 measured on the held-out split, against the val split: τ={held['kendall_tau']:.2f}" in text
    older = {**summary, "ranking": {k: v for k, v in summary["ranking"].items() if k != "held_out_measured"}}
    assert "held-out split, against" not in format_summary(older)  # a summary written before the yardstick still prints
    assert "on 1 torch thread(s) (--seed 0 --threads 1 repeats it)" in text
    assert text.count("met   ") + text.count("MISSED") == 5
    # Latency: every pick verified by measuring, then timed again; a pick over its budget is flagged and fails the check.
    lat = summary["latency"]
    assert lat["statistic"] == "median_of_mins" and lat["calibration"]["scale"] > 0 and "built now" in summary["latency_table_note"]
    # 8 random subnets are too few for per-block terms (10 per coefficient): the scale alone, printed so.
    assert lat["calibration"]["terms"] == "scale" and lat["calibration"]["per_block"] == {} and "ms per" not in text
    fitted = {**summary, "latency": {**lat, "calibration": {**lat["calibration"], "per_block": {"block": 0.0123, "se=True": -0.004}}}}
    assert "× table + 0.012 ms per block - 0.004 ms per se=True);" in format_summary(fitted)
    # Timings that the calibrated table cannot follow are reported as disturbed, in the JSON and the printed report.
    assert lat["disturbed"] == (lat["mape_calibrated_percent"] > DISTURBED_MAPE)
    assert ("timings disturbed" in text) == lat["disturbed"]
    for mape in (DISTURBED_MAPE + 8, 2.0):
        noisy = {**summary, "latency": {**lat, "mape_calibrated_percent": mape, "disturbed": mape > DISTURBED_MAPE}}
        assert ("timings disturbed" in format_summary(noisy)) == (mape > DISTURBED_MAPE)
    for r in summary["targets"]:
        assert r["verify_tries"] >= 1
        # Every arch timed while verifying is reported, each met or not by the budget less the headroom.
        assert len(r["verification"]) == r["verify_tries"]
        for v in r["verification"]:
            assert v["met"] == (v["measured_ms"] <= r["target_ms"] * (1 - lat["headroom"])) and v["predicted_ms"] <= v["solver_bound_ms"] + 1e-9
        # Kept by its one-shot accuracy on the held-out split (measured while verifying), printed beside the table's.
        assert r["verified_ms"] is None or 0.0 <= r["held_out_acc"] <= 1.0
        assert r["carried_from_bound_ms"] is None or r["carried_from_bound_ms"] < r["target_ms"]
        # None only when verification gave up (a heavily loaded machine): the unverified pick is reported and flagged.
        assert r["verified_ms"] is None or r["verified_ms"] > 0
        assert r["over_budget"] == (r["measured_ms"] > r["target_ms"])
        # Re-measured beside its own budget's references: each timing scaled by their speed in it, the median.
        raw, then = np.array(r["end_timings_ms"]), np.array(r["reference_ms"])
        speeds = np.median(raw[:, 1:] / then, axis=1)
        assert raw.shape == (r["latency_timings"]["end"], 1 + REFERENCES)
        assert r["measured_ms"] == pytest.approx(np.median(raw[:, 0] / speeds)) and r["speed_at_end"] == pytest.approx(np.median(speeds))
        assert r["measured_raw_ms"] == pytest.approx(np.median(raw[:, 0]))
        assert 1 <= r["latency_timings"]["end"] <= LATENCY_ATTEMPTS and r["latency_timings"]["verification"] >= 1
        assert ("OVER" in text) or not r["over_budget"]
    assert lat["drift"] == [r["speed_at_end"] for r in summary["targets"]]
    assert checks["largest re-measured latency"]["met"] == (not any(r["over_budget"] for r in summary["targets"]))
    for stage in ("data", "profiling", "training", "estimation", "solving", "measuring latency", "measuring accuracy", "export",
                  "fine-tuning"):
        assert summary["stage_seconds"][stage] >= 0, stage
        assert f"{stage} " in text
    assert math.isclose(summary["total_seconds"], summary["stage_seconds"]["total"], abs_tol=0.1)

    # A second run reuses the latency table (and says so), writes a new version, and repeats everything
    # but the timings: training, estimates and the random subnets' accuracies (the picks depend on the
    # timings too: the table calibrated on them sets each budget and the solver's bound).
    # The same thread count: channels-last convolutions round differently on 1 and 2 threads (one
    # validation image out of 24 flipped for a random subnet), so results repeat per seed and thread count.
    again = run_demo(out=tmp_path, **{**TINY, "threads": 1})
    assert Path(again["run_dir"]) != run and (Path(again["run_dir"]) / "summary.json").exists()
    assert again["latency_table_note"].startswith("reused: built ") and "reused" in format_summary(again)
    assert again["random"]["measured_acc"] == summary["random"]["measured_acc"]
    assert again["random"]["predicted_acc"] == summary["random"]["predicted_acc"]


def test_demo_with_the_conditional_means_estimator_and_recalibrated_truth(shared_out, monkeypatch):
    import dataclasses

    import lightning_nas.demo as demo

    # The random subnets' first timings disturbed (every other one by predicted latency 2.5x slower, as
    # when another job comes and goes mid-stage: no line through them): the demo times them again and
    # keeps each one's faster time.
    checks = []

    def check_latency(supernet, table, **kwargs):
        check = demo_check_latency(supernet, table, **kwargs)
        if not checks:
            slower = np.empty(len(check))
            slower[np.argsort(check.predicted)] = np.resize([1.0, 2.5], len(check))
            check = dataclasses.replace(check, measured=check.measured * slower)
            assert check.calibrated(table).metadata["calibration"]["mape_after_percent"] > DISTURBED_MAPE
        checks.append(check)
        return check

    demo_check_latency = demo.check_latency
    monkeypatch.setattr(demo, "check_latency", check_latency)
    summary = run_demo(out=shared_out, estimator="means", **{**TINY, "calibration_batches": 1})
    assert len(checks) == 2 and summary["latency"]["retimed"] and "timed twice" in format_summary(summary)
    np.testing.assert_array_equal(summary["random"]["measured_ms"], np.minimum(checks[0].measured, checks[1].measured))
    table = json.loads((Path(summary["run_dir"]) / "accuracy_table.json").read_text())
    assert table["link"] == "identity" and table["metadata"]["shrinkage"] == "empirical_bayes" and summary["estimator"] == "means"
    assert "recalibrated" in summary["measured"] and "recalibrated" in format_summary(summary)
    assert all(r["status"] == "optimal" for r in summary["targets"])
    if all(r["first_kept"] for r in summary["targets"]):
        assert summary["targets"][1]["table_acc"] >= summary["targets"][0]["table_acc"] - 1e-12


def test_an_interrupted_demo_leaves_no_empty_run_directory(tmp_path, monkeypatch):
    import lightning_nas.demo as demo

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(demo, "_trainer", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_demo(out=tmp_path, **TINY)
    assert not any(tmp_path.glob("version_*"))


def test_demo_refuses_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="`estimator` must be"):
        run_demo(out=tmp_path, **{**TINY, "estimator": "ols"})
    with pytest.raises(ValueError, match="`num_ranked` .* at most `num_random`"):
        run_demo(out=tmp_path, **{**TINY, "num_ranked": 9})
    with pytest.raises(ValueError, match="`num_random` must be an int >= 2"):
        run_demo(out=tmp_path, **{**TINY, "num_random": 1})
    with pytest.raises(ValueError, match="`latency_headroom` must be a fraction"):
        run_demo(out=tmp_path, **{**TINY, "latency_headroom": 0.5})
    with pytest.raises(ValueError, match="`in_chans` must be 1 .* or 3"):
        run_demo(out=tmp_path, **{**TINY, "space": {"in_chans": 2}})
    with pytest.raises(ValueError, match="`threads` must be an int >= 1 or None"):
        run_demo(out=tmp_path, **{**TINY, "threads": 0})
    assert not list(tmp_path.iterdir())  # refused before a run directory was made


def test_cli_rejects_bad_arguments(capsys):
    with pytest.raises(SystemExit):
        main(["demo", "--epochs", "0"])
    assert "must be a positive int" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["demo", "--targets", "1.5"])
    assert "fraction in [0, 1]" in capsys.readouterr().err


def test_cli_passes_only_the_options_given_so_run_demo_defaults_apply(monkeypatch):
    import lightning_nas.demo as demo

    seen = []
    monkeypatch.setattr(demo, "run_demo", lambda **kwargs: seen.append(kwargs) or {})
    monkeypatch.setattr(demo, "format_summary", lambda summary: "")
    assert main(["demo"]) == 0
    assert seen[-1] == {"progress": True}
    main(["demo", "--epochs", "2", "--targets", "0.3", "0.6", "--threads", "1", "--no-progress"])
    assert seen[-1] == {"epochs": 2, "target_fractions": (0.3, 0.6), "threads": 1, "progress": False}


@pytest.mark.parametrize("busy, cores, free", [(0.2, 2, 2), (0.6, 2, 1), (1.0, 2, 1), (3.5, 2, 1), (1.2, 8, 6)])
def test_free_cores_leaves_the_cores_other_jobs_use(monkeypatch, busy, cores, free):
    import lightning_nas.demo as demo

    monkeypatch.setattr(demo.os, "cpu_count", lambda: cores)
    monkeypatch.setattr(demo, "_busy_cores", lambda window_s: busy)
    assert demo.free_cores() == free
    # Without /proc/stat, the load average decides.
    monkeypatch.setattr(demo, "_busy_cores", lambda window_s: None)
    monkeypatch.setattr(demo.os, "getloadavg", lambda: (busy, busy, busy))
    assert demo.free_cores() == free


def test_busy_cores_sees_a_busy_thread():
    import threading

    import lightning_nas.demo as demo

    if demo._busy_cores(0.05) is None:
        pytest.skip("no /proc/stat here")
    stop = threading.Event()

    def spin():
        while not stop.is_set():
            pass

    worker = threading.Thread(target=spin)
    worker.start()
    try:
        busy = demo._busy_cores(0.5)
    finally:
        stop.set()
        worker.join()
    assert 0.5 <= busy <= (os.cpu_count() or 1) + 1e-9


def test_a_killed_demo_command_leaves_no_empty_run_directory(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    command = [sys.executable, "-m", "lightning_nas.cli", "demo", "--out", str(tmp_path), "--max-examples", "60", "--no-progress"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not any(tmp_path.glob("version_*")) and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert process.poll() is None, process.stderr.read()
        time.sleep(1.0)
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 128 + signal.SIGTERM, err[-2000:]
    assert not any(tmp_path.glob("version_*")), os.listdir(tmp_path)
    # The latency table is complete or absent, never half written.
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".*.tmp"))
    if (tmp_path / "latency_table.json").exists():
        assert json.loads((tmp_path / "latency_table.json").read_text())["name"] == "latency"


def test_best_neighbours_are_distinct_networks_one_change_away_within_the_bound():
    from lightning_nas.demo import DEMO_SPACE, best_neighbours
    from lightning_nas.spaces import binas_supernet
    from lightning_nas.spaces.staged import StagedSpace

    supernet = binas_supernet("tiny", num_classes=10, **DEMO_SPACE)
    staged, space = StagedSpace.of(supernet), supernet.space

    class Table:  # any table with predict / predict_many: a fixed score per decision value
        def __init__(self, seed):
            self.rng = np.random.default_rng(seed)
            self.score = {(d.label, repr(v)): float(self.rng.normal()) for d in space for v in d.values}

        def predict(self, arch):
            return sum(self.score[(k, repr(v))] for k, v in arch.items())

        def predict_many(self, archs):
            return np.array([self.predict(a) for a in archs])

    def network(a):
        configs, depths = staged.indices(a)
        return depths.tobytes() + configs[staged.active(depths)].tobytes()

    accuracy, latency = Table(0), Table(1)
    for arch in space.sample_many(5, seed=3):
        bound = latency.predict(arch) + 0.5
        near = best_neighbours(staged, arch, accuracy, latency, bound, count=6)
        assert 1 <= len(near) <= 6
        assert all(sum(a[k] != arch[k] for k in arch) == 1 for a in near)
        keys = {network(a) for a in near}
        assert len(keys) == len(near) and network(arch) not in keys  # inactive-block changes are not new networks
        assert all(latency.predict(a) <= bound for a in near)
        scores = accuracy.predict_many(near)
        assert list(scores) == sorted(scores, reverse=True)
        everything = best_neighbours(staged, arch, accuracy, latency, bound, count=10_000)
        assert near == everything[:len(near)] and min(accuracy.predict_many(everything)) <= scores.min()
    assert best_neighbours(staged, arch, accuracy, latency, -1e9, count=6) == []


@pytest.mark.parametrize("calibrated", [False, True])
def test_measure_subnets_equals_each_arch_active_in_the_supernet(calibrated):
    from torch.utils.data import DataLoader, TensorDataset

    from lightning_nas.demo import DEMO_SPACE, measure_subnets
    from lightning_nas.nn import recalibrate_batch_norm
    from lightning_nas.spaces import binas_supernet

    torch.manual_seed(0)
    supernet = binas_supernet("tiny", num_classes=10, **DEMO_SPACE)
    with torch.no_grad():  # BatchNorm statistics that differ from the defaults, as after training
        for name, buffer in supernet.named_buffers():
            if name.endswith("running_mean"):
                buffer.normal_(0, 0.1)
            elif name.endswith("running_var"):
                buffer.uniform_(0.5, 2.0)
    x, y = torch.randn(300, 1, 16, 16), torch.randint(0, 10, (300,))
    loader = DataLoader(TensorDataset(x, y), batch_size=128)
    calibration = [(torch.randn(64, 1, 16, 16), torch.zeros(64, dtype=torch.long))] if calibrated else None
    archs = supernet.space.sample_many(4, seed=5)
    before = {k: v.clone() for k, v in supernet.state_dict().items()}
    rows = measure_subnets(supernet, archs, loader, calibration)

    assert rows.shape == (4, 300) and rows.dtype == bool
    assert all(torch.equal(before[k], v) for k, v in supernet.state_dict().items())  # the supernet is left as it was
    for arch, row in zip(archs, rows):  # the definition: the arch active in the supernet, eval mode
        supernet.activate(arch)
        if calibrated:
            recalibrate_batch_norm(supernet, calibration)
        supernet.eval()
        with torch.no_grad():
            expected = (supernet(x).argmax(1) == y).numpy()
        supernet.load_state_dict(before)
        assert (row == expected).all()


def test_subnets_are_measured_with_batch_norm_folded_and_untraceable_ones_as_they_are():
    from torch import nn

    from lightning_nas.demo import DEMO_SPACE, _batch_norm_folded
    from lightning_nas.spaces import binas_supernet

    torch.manual_seed(0)
    supernet = binas_supernet("tiny", num_classes=10, **DEMO_SPACE)
    with torch.no_grad():
        for name, buffer in supernet.named_buffers():
            if name.endswith("running_var"):
                buffer.uniform_(0.5, 2.0)
    subnet = supernet.export(supernet.space.sample_many(1, seed=1)[0]).eval()
    x = torch.randn(16, 1, 16, 16)
    with torch.no_grad():
        expected = subnet(x)
        folded = _batch_norm_folded(subnet)
        assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
        torch.testing.assert_close(folded(x), expected, rtol=1e-5, atol=1e-5)

    class Branching(nn.Module):  # control flow on a tensor value: torch.fx cannot trace it
        def __init__(self):
            super().__init__()
            self.conv, self.bn = nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2)

        def forward(self, x):
            return self.bn(self.conv(x)) if x.sum() > 0 else x

    branching = Branching().eval()
    assert _batch_norm_folded(branching) is branching and isinstance(branching.bn, nn.BatchNorm2d)


def test_pick_accuracy_corrects_the_line_by_the_neighbours_residuals_weighted_by_inverse_variance():
    # Neighbours agreeing within 0.2 points correct (almost) fully; the line's residual std is 0.8 points.
    agree = [0.010, 0.012, 0.011, 0.009]
    w = 0.008**2 / (0.008**2 + np.var(agree, ddof=1) / 4)
    assert pick_accuracy(0.69, agree, 0.008) == pytest.approx(0.69 + w * 0.0105)
    assert w > 0.99
    # Few, scattered neighbours correct less: the same mean residual, a wider spread, a smaller share of it.
    def weight(residuals):
        return (pick_accuracy(0.69, residuals, 0.008) - 0.69) / np.mean(residuals)

    scattered, wide = [-0.001, 0.004, 0.03], [-0.026, 0.004, 0.055]
    assert 0 < weight(wide) < weight(scattered) < 1
    # One neighbour: its residual's variance is taken as the line's, so half of it; none: the line.
    assert pick_accuracy(0.69, [0.02], 0.008) == pytest.approx(0.70)
    assert pick_accuracy(0.69, [], 0.008) == 0.69
    # No scatter at all: the whole correction.
    assert pick_accuracy(0.69, [0.01, 0.01], 0.0) == pytest.approx(0.70)
    # The development run that motivated residuals: the table ranked the neighbours below the pick and the
    # line's slope (0.66) says it overstates such gaps; the pick measured 0.7057.
    table, measured = [0.7181, 0.7082, 0.7029, 0.6869, 0.6808, 0.6761, 0.6128], [0.7017, 0.7075, 0.6908, 0.6975, 0.6908, 0.6873, 0.6497]
    line = 0.243 + 0.66 * np.asarray(table)
    assert abs(pick_accuracy(0.7147, np.subtract(measured, line), 0.0084) - 0.7057) < 0.005


def _result(arch, held_out=None):
    details = {} if held_out is None else {"measured": {"latency": 1.0, "accuracy": held_out}}
    return SearchResult(arch=arch, objective=0.5, resources={"latency": 1.0}, limits={}, method="milp", solver=None,
                        status="optimal", feasible=True, details=details)


def test_a_larger_budget_keeps_a_smaller_budgets_pick_that_measured_better():
    found = [_result({"a": 2}, 0.80), _result({"a": 1}, 0.70), _result({"a": 3}, 0.75), _result({"a": 4})]
    bounds = [2.0, 1.0, 3.0, 4.0]  # any order: by bound, picks measure 0.70, 0.80, 0.75 (unverified: none)
    out = carry_better_picks(found, bounds, "accuracy")
    assert [r.arch for r in out] == [{"a": 2}, {"a": 1}, {"a": 2}, {"a": 4}]
    assert out[2].details["carried_from_bound"] == 2.0 and out[2].details["measured"]["accuracy"] == 0.80
    assert "carried_from_bound" not in out[0].details and "carried_from_bound" not in found[0].details  # inputs untouched
    assert out[0] is found[0] and out[3] is found[3]
    # Measured held-out accuracy never falls as the budget grows, among the verified picks.
    chain = [out[i].details["measured"]["accuracy"] for i in sorted(range(3), key=bounds.__getitem__)]
    assert chain == sorted(chain)
    with pytest.raises(ValueError, match="one entry per budget"):
        carry_better_picks(found, bounds[:2], "accuracy")
