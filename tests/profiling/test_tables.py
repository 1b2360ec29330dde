"""Latency / FLOPs / params tables: shapes, shared measurements, exact counts, reuse or rebuild."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
from hypothesis import given, settings as hsettings, strategies as st
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import lightning_nas as ln
import lightning_nas.profiling.tables as tables_module
from lightning_nas.profiling import (
    ProfileSettings,
    TimingResult,
    backup_path,
    block_shapes,
    build_flops_table,
    build_latency_table,
    build_params_table,
    load_or_build,
    settings_of,
    stage_blocks,
    stale_reasons,
)
from lightning_nas.profiling.timing import STATISTICS
from lightning_nas.spaces.staged import StagedSpace

from .conftest import FAST, tiny_mobilenet

SUPERNET = tiny_mobilenet()  # read-only in the hypothesis tests below


def count_timings(monkeypatch):
    calls = []
    real = tables_module.time_modules

    def counting(items, settings, **kwargs):
        calls.extend((repr(module), tuple(shape)) for module, shape in items)
        return real(items, settings, **kwargs)

    monkeypatch.setattr(tables_module, "time_modules", counting)
    return calls


def test_latency_table_shape_keys_and_metadata(tiny, fast_settings):
    table = build_latency_table(tiny, fast_settings, calibration_archs=2)
    staged = StagedSpace.from_space(tiny.space)
    assert (table.name, table.unit) == ("latency", "ms")
    assert table.block.shape == (staged.num_stages, staged.max_blocks, staged.num_configs) == (2, 2, 4)
    assert (table.block > 0).all()
    meta = table.metadata
    assert meta["settings"] == fast_settings.to_dict()
    for key in ("device_type", "device_name", "processor", "cpu_model", "torch_version"):
        assert meta["device"][key]
    assert meta["settings"]["threads"] == 1 and meta["settings"]["batch_size"] == 1 and meta["settings"]["dtype"] == "float32"
    p10, p90 = np.array(meta["spread"]["p10"]), np.array(meta["spread"]["p90"])
    assert p10.shape == p90.shape == table.block.shape
    assert (p10 <= table.block).all() and (table.block <= p90).all()
    assert len(meta["constant_estimate"]["residuals_ms"]) == 2
    assert table.constant == pytest.approx(np.median(meta["constant_estimate"]["residuals_ms"]))
    json.dumps(meta)  # serialisable as is
    # Depth 2 everywhere runs two more blocks than depth 1: robustly slower even with few repeats.
    assert table.predict(tiny.space.largest()) > table.predict(tiny.space.smallest())


@pytest.mark.parametrize("statistic", ["min", "median_of_mins"])
def test_table_of_another_statistic(tiny, statistic):
    settings = ProfileSettings(input_size=(3, 16, 16), statistic=statistic, **FAST)
    table = build_latency_table(tiny, settings, calibration_archs=3)
    spread = {k: np.array(v) for k, v in table.metadata["spread"].items()}
    np.testing.assert_array_equal(table.block, spread[statistic])
    assert (spread["min"] <= spread["median_of_mins"]).all()
    assert (spread["min"] <= spread["median"]).all()
    residuals = table.metadata["constant_estimate"]["residuals_by_statistic_ms"]
    assert residuals[statistic] == table.metadata["constant_estimate"]["residuals_ms"]
    assert sorted(residuals) == sorted(STATISTICS) and all(len(r) == 3 for r in residuals.values())
    assert table.constant == pytest.approx(np.median(residuals[statistic]))
    assert settings_of(table).statistic == statistic


def test_identical_blocks_are_measured_once(monkeypatch):
    supernet = tiny_mobilenet(max_depth=3)  # blocks 1 and 2 of a stage have the same shapes
    calls = count_timings(monkeypatch)
    settings = ProfileSettings(input_size=(3, 16, 16), **FAST)
    table = build_latency_table(supernet, settings, calibration_archs=1)
    block_calls = [c for c in calls if c[1] != settings.batch_shape]
    # Stage 0 keeps 8 channels at stride 1, so all its blocks are alike; stage 1's first block
    # changes width and stride. 4 configs per block: 4 + 2 * 4 distinct measurements.
    assert len(block_calls) == len(set(block_calls)) == 12
    assert table.metadata["measurements"] == 12 and table.metadata["entries"] == 24
    np.testing.assert_array_equal(table.block[0, 0], table.block[0, 1])
    np.testing.assert_array_equal(table.block[:, 1], table.block[:, 2])
    assert not np.array_equal(table.block[1, 0], table.block[1, 1])
    assert len(calls) - len(block_calls) == 1  # the one calibration arch, end to end


def test_block_shapes_are_the_real_input_shapes(tiny):
    shapes = block_shapes(tiny, (2, 3, 16, 16))  # [stage][block][config]
    # stem /2 -> 8x8; stage 0 stride 1, stage 1 stride 2; the same for every config of a block.
    assert [[block[0] for block in stage] for stage in shapes] == [
        [((2, 8, 8, 8), (2, 8, 8, 8))] * 2, [((2, 8, 8, 8), (2, 16, 4, 4)), ((2, 16, 4, 4), (2, 16, 4, 4))]
    ]
    assert all(len(set(block)) == 1 for stage in shapes for block in stage)
    blocks = stage_blocks(tiny)
    assert [len(b) for b in blocks] == [2, 2] and blocks[1][0] is tiny.module.stages[1].blocks[0]


def test_profiling_leaves_the_supernet_alone(tiny, fast_settings):
    tiny.train()
    arch = tiny.space.sample(3)
    tiny.activate(arch)
    before = {k: v.clone() for k, v in tiny.state_dict().items()}
    rng = torch.get_rng_state()
    build_latency_table(tiny, fast_settings, calibration_archs=1)
    build_flops_table(tiny, (3, 16, 16))
    build_params_table(tiny)
    assert tiny.training and all(m.training for m in tiny.modules())
    assert tiny.active_arch == arch
    assert all(torch.equal(before[k], v) for k, v in tiny.state_dict().items())
    assert torch.equal(rng, torch.get_rng_state())


def test_spaces_without_a_depth_choice_are_rejected():
    supernet = ln.Supernet(nn.Sequential(ln.ElasticConv2d(3, 4, ln.Choice([3, 5], "stage0.block0.kernel"))))
    with pytest.raises(ValueError, match="no depth decision"):
        stage_blocks(supernet)
    with pytest.raises(ValueError, match="`supernet`"):
        build_params_table(nn.Linear(2, 2))


# -- FLOPs and parameters --------------------------------------------------------------------
class ConvOnly(nn.Module):
    """Stem conv, then a stage of same-padded convolutions with searchable kernels."""

    def __init__(self, width: int = 6) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, width, 3, stride=2, padding=1, bias=False)
        blocks = [ln.ElasticConv2d(width, width, ln.Choice([1, 3, 5], f"stage0.block{b}.kernel"), bias=False) for b in range(3)]
        self.stage = ln.DepthChoice(blocks, [1, 2, 3], "stage0.depth")

    def forward(self, x):
        return self.stage(self.stem(x))


def test_flops_table_is_exact_for_convolutions():
    width, size = 6, 12
    supernet = ln.Supernet(ConvOnly(width))
    table = build_flops_table(supernet, (3, size, size))
    out = size // 2
    for b in range(3):
        for c, k in enumerate((1, 3, 5)):
            assert table.block[0, b, c] == pytest.approx(2 * width * width * k * k * out * out / 1e6, rel=1e-12)
    assert table.constant == pytest.approx(2 * width * 3 * 9 * out * out / 1e6, rel=1e-12)
    assert (table.name, table.unit) == ("flops", "MFLOPs")


@hsettings(max_examples=8, deadline=None)
@given(st.integers(0, 2**31))
def test_flops_table_matches_the_exported_network(seed):
    arch = SUPERNET.space.sample(seed)
    with FlopCounterMode(display=False) as counter:
        SUPERNET.export(arch).eval()(torch.zeros(1, 3, 16, 16))
    assert FLOPS.predict(arch) == pytest.approx(counter.get_total_flops() / 1e6, rel=1e-9)


FLOPS = build_flops_table(SUPERNET, (3, 16, 16))
PARAMS = build_params_table(SUPERNET)


@hsettings(max_examples=30, deadline=None)
@given(st.integers(0, 2**31))
def test_params_table_equals_exported_parameter_counts(seed):
    arch = SUPERNET.space.sample(seed)
    assert PARAMS.predict(arch) == sum(p.numel() for p in SUPERNET.export(arch).parameters())
    assert (PARAMS.name, PARAMS.unit) == ("params", "params")


# -- reuse or rebuild ------------------------------------------------------------------------
def test_table_is_reused_when_it_matches(tiny, fast_settings, tmp_path, monkeypatch, caplog):
    path = tmp_path / "latency.json"
    first = load_or_build(tiny, path, fast_settings, calibration_archs=1)
    assert path.exists() and settings_of(first) == fast_settings
    text = path.read_text()
    calls = count_timings(monkeypatch)
    with caplog.at_level(logging.INFO, logger="lightning_nas.profiling"):
        again = load_or_build(tiny, path, fast_settings, calibration_archs=1)
    assert calls == [] and "reused" in caplog.text
    assert path.read_text() == text
    np.testing.assert_array_equal(again.block, first.block)
    assert again.metadata == first.metadata
    assert not backup_path(path).name.endswith(".1") and not list(tmp_path.glob("*.bak*"))


def fake_timer(monkeypatch):
    """Instant timings: several threads on a shared 2-core test machine make real ones crawl, and
    these tests are about the file logic, not the numbers."""

    def instant(items, settings, **kwargs):
        return [TimingResult.from_samples([0.1 * (i + 1)] * 3) for i, _ in enumerate(items)]

    monkeypatch.setattr(tables_module, "time_modules", instant)


def test_table_is_rebuilt_when_threads_change_and_old_file_is_kept(tiny, fast_settings, tmp_path, caplog, monkeypatch):
    fake_timer(monkeypatch)
    path = tmp_path / "latency.json"
    load_or_build(tiny, path, fast_settings, calibration_archs=1)
    old = path.read_text()
    two = ProfileSettings(input_size=(3, 16, 16), threads=2, **FAST)
    assert any("threads" in r for r in stale_reasons(json.loads(old)["metadata"], tiny, two))
    with caplog.at_level(logging.INFO, logger="lightning_nas.profiling"):
        table = load_or_build(tiny, path, two, calibration_archs=1)
    assert "rebuilt" in caplog.text and "settings.threads is 1, now 2" in caplog.text
    assert table.metadata["settings"]["threads"] == 2
    assert json.loads(path.read_text())["metadata"]["settings"]["threads"] == 2
    assert (tmp_path / "latency.json.bak").read_text() == old
    # A second rebuild keeps both older files.
    load_or_build(tiny, path, two, rebuild=True, calibration_archs=1)
    assert (tmp_path / "latency.json.bak.1").exists() and (tmp_path / "latency.json.bak").read_text() == old


def test_table_is_rebuilt_for_another_supernet_or_a_broken_file(tiny, fast_settings, tmp_path, caplog):
    path = tmp_path / "latency.json"
    load_or_build(tiny, path, fast_settings, calibration_archs=1)
    other = tiny_mobilenet()
    other.module.head[0] = nn.Conv2d(16, 24, 1)  # same space, different network
    other.module.head[1] = nn.BatchNorm2d(24)
    other.module.classifier = nn.Linear(24, 3)
    assert any("model signature" in r for r in stale_reasons(json.loads(path.read_text())["metadata"], other, fast_settings))
    path.write_text("{not json")
    with caplog.at_level(logging.WARNING, logger="lightning_nas.profiling"):
        load_or_build(tiny, path, fast_settings, calibration_archs=1)
    assert "cannot read it" in caplog.text
    assert (tmp_path / "latency.json.bak").read_text() == "{not json"
    assert json.loads(path.read_text())["name"] == "latency"


def test_bad_arguments(tiny, fast_settings):
    with pytest.raises(ValueError, match="`calibration_archs`"):
        build_latency_table(tiny, fast_settings, calibration_archs=0)
    with pytest.raises(ValueError, match="`input_size`"):
        build_flops_table(tiny, (3, 0))
