"""build_latency_table(fit_archs=N): entries fitted to whole subnets, recorded, reused or rebuilt."""

from __future__ import annotations

import json

import numpy as np
import pytest

import lightning_nas.profiling.tables as tables_module
from lightning_nas.bilinear import BilinearTable
from lightning_nas.profiling import TimingResult, build_latency_table, build_params_table, load_or_build, stale_reasons
from lightning_nas.profiling.report import CHECK_STREAM
from lightning_nas.profiling.tables import fitted_subnets, latency_table_of
from lightning_nas.seeding import derive_seed

# ms per parameter, and the cost of one call that a block timed alone pays and a whole network pays once.
MS_PER_PARAM, CALL_MS = 1e-5, 0.05


def params_timer(monkeypatch, fit_archs_seen=None):
    """Replace the clock by a law the per-block table cannot capture: a module takes MS_PER_PARAM per
    parameter plus one CALL_MS per call (parameters add up exactly; calls do not: a network with
    more blocks is over-charged by the block table). Whole subnets are the items of the network's
    input shape."""

    def fake(items, settings, **kwargs):
        out = []
        for module, shape, *_ in items:
            ms = MS_PER_PARAM * sum(p.numel() for p in module.parameters()) + CALL_MS
            out.append(TimingResult.from_samples([ms, ms * 1.01]))
        return out

    monkeypatch.setattr(tables_module, "time_modules", fake)


def truth(supernet, archs) -> np.ndarray:
    params = build_params_table(supernet)
    return MS_PER_PARAM * params.predict_many(archs) + CALL_MS


def test_fitted_entries_predict_whole_subnets_the_block_table_misses(tiny, fast_settings, monkeypatch):
    params_timer(monkeypatch)
    table = build_latency_table(tiny, fast_settings, calibration_archs=4, fit_archs=30)
    blocks = latency_table_of(table, tiny, fitted=False)
    archs = tiny.space.sample_many(30, derive_seed(0, CHECK_STREAM))  # not fitted on
    want = truth(tiny, archs)
    block_error = np.abs(blocks.predict_many(archs) / want - 1).mean()
    fit_error = np.abs(table.predict_many(archs) / want - 1).mean()
    assert block_error > 0.02  # the per-call cost breaks additivity here
    assert fit_error < block_error / 10
    fit = table.metadata["fit"]
    assert fit["subnets"] == 30 and fit["measurements"] == 34 and len(fit["archs"]) == 30
    assert fit["statistic"] == "median" and fit["chosen"] == "fitted" and fit["ridge"] in fit["ridges"]
    assert fit["heldout"]["mape_percent"] < fit["prior_heldout"]["mape_percent"] < fit["blocks_error"]["mape_percent"]
    assert fit["heldout"]["mape_percent"] == min(c["mape_percent"] for c in fit["candidates"])
    assert len(fit["candidates"]) == 1 + len(fit["ridges"]) and fit["candidates"][0]["table"] == "blocks"
    assert fit["heldout"]["folds"] == 5 and fit["margin"] >= 0 and "fit_table" in fit["method"]
    json.dumps(table.metadata)  # serialisable as is


def test_a_fit_that_follows_noise_is_not_kept(tiny, fast_settings, monkeypatch):
    # Blocks add up exactly (the network's time is its parameters' plus a fixed part), but every
    # whole subnet is timed with a large zero-mean error: no fit can predict other subnets better
    # than the blocks themselves, and the block table is kept as it is.
    noise = np.random.default_rng(0)

    def fake(items, settings, **kwargs):
        out = []
        for module, shape, *_ in items:
            ms = MS_PER_PARAM * sum(p.numel() for p in module.parameters())
            if tuple(shape) == settings.batch_shape:
                ms *= 1 + noise.choice([-0.3, 0.3])
            out.append(TimingResult.from_samples([ms]))
        return out

    monkeypatch.setattr(tables_module, "time_modules", fake)
    table = build_latency_table(tiny, fast_settings, calibration_archs=5, fit_archs=30)
    fit = table.metadata["fit"]
    assert fit["chosen"] == "blocks" and fit["ridge"] is None and fit["heldout"] == fit["blocks_error"]
    assert fit["blocks_error"]["mape_percent"] * (1 - fit["min_gain"]) <= min(c["mape_percent"] for c in fit["candidates"][1:])
    blocks = latency_table_of(table, tiny, fitted=False)
    np.testing.assert_array_equal(table.block, blocks.block)
    assert table.constant == blocks.constant and not table.depth.any()


def test_block_measurements_are_those_of_an_unfitted_build(tiny, fast_settings, monkeypatch):
    params_timer(monkeypatch)
    plain = build_latency_table(tiny, fast_settings, calibration_archs=4)
    fitted = build_latency_table(tiny, fast_settings, calibration_archs=4, fit_archs=6)
    blocks = latency_table_of(fitted, tiny, fitted=False)
    np.testing.assert_array_equal(blocks.block, plain.block)
    assert blocks.constant == plain.constant and "fit" not in blocks.metadata and "fit" not in plain.metadata
    assert fitted_subnets(plain.metadata) == 0 and fitted_subnets(fitted.metadata) == 6
    assert not np.array_equal(fitted.block, plain.block)
    # The other statistic is fitted from the recorded measurements, without timing anything again.
    for statistic in ("min", "median_of_mins"):
        other = latency_table_of(fitted, tiny, statistic)
        assert other.metadata["fit"]["statistic"] == statistic and np.isfinite(other.block).all()


def test_a_fitted_table_round_trips_and_is_rebuilt_for_another_fit(tiny, fast_settings, monkeypatch, tmp_path):
    params_timer(monkeypatch)
    path = tmp_path / "latency.json"
    plain = load_or_build(tiny, path, fast_settings, calibration_archs=2)  # a table of blocks alone
    fitted = load_or_build(tiny, path, fast_settings, calibration_archs=2, fit_archs=5)
    assert (tmp_path / "latency.json.bak").exists() and fitted_subnets(fitted.metadata) == 5
    again = load_or_build(tiny, path, fast_settings, calibration_archs=2, fit_archs=5)
    assert again.metadata["created"] == fitted.metadata["created"]
    np.testing.assert_allclose(again.block, fitted.block)
    np.testing.assert_allclose(again.depth, fitted.depth)
    assert again.constant == pytest.approx(fitted.constant)
    assert stale_reasons(fitted.metadata, tiny, fast_settings) == []
    assert "fit_archs" in stale_reasons(fitted.metadata, tiny, fast_settings, fit_archs=0)[0]
    # A table written before fitting existed (no "fit" key) still applies to the default.
    assert stale_reasons(plain.metadata, tiny, fast_settings, fit_archs=0) == []
    loaded = BilinearTable.load(tmp_path / "latency.json.bak", fitted.staged)
    assert fitted_subnets(loaded.metadata) == 0


@pytest.mark.parametrize("fit_archs, calibration, message", [(-1, 10, ">= 0"), (True, 10, ">= 0"), (2.0, 10, ">= 0"), (3, 1, "at least 5")])
def test_bad_fit_archs_are_named(tiny, fast_settings, tmp_path, fit_archs, calibration, message):
    with pytest.raises(ValueError, match=f"`fit_archs`.*{message}"):
        build_latency_table(tiny, fast_settings, calibration_archs=calibration, fit_archs=fit_archs)
    with pytest.raises(ValueError, match="`fit_archs`"):
        load_or_build(tiny, tmp_path / "t.json", fast_settings, calibration_archs=calibration, fit_archs=fit_archs)
    assert not (tmp_path / "t.json").exists()


def test_latency_table_of_needs_the_build_measurements(tiny):
    with pytest.raises(ValueError, match="per-statistic measurements"):
        latency_table_of(build_params_table(tiny), tiny, "median")
    with pytest.raises(ValueError, match="`statistic`.*'mean'"):
        latency_table_of(build_params_table(tiny), tiny, "mean")


def test_a_table_from_before_a_statistic_existed_names_it(tiny, fast_settings, monkeypatch):
    params_timer(monkeypatch)
    table = build_latency_table(tiny, fast_settings, calibration_archs=4)
    for key in ("spread", "constant_estimate"):  # as a table written before median_of_mins existed
        block = table.metadata[key] if key == "spread" else table.metadata[key]["residuals_by_statistic_ms"]
        del block["median_of_mins"]
    with pytest.raises(ValueError, match="no per-statistic measurements of 'median_of_mins'"):
        latency_table_of(table, tiny, "median_of_mins")
    residuals = table.metadata["constant_estimate"]["residuals_by_statistic_ms"]["min"]
    assert latency_table_of(table, tiny, "min").constant == pytest.approx(np.median(residuals))  # the others still derive
