"""Latency on deployment runtimes: eager, frozen TorchScript, ONNX Runtime give eager's outputs,
time positive, build tables that record the runtime and are not reused across runtimes."""

from __future__ import annotations

import builtins
import json
import logging

import numpy as np
import onnxruntime
import pytest
import torch
from torch import nn

from lightning_nas.profile_cli import main
from lightning_nas.profiling import (
    RUNTIMES,
    ProfileSettings,
    build_latency_table,
    device_info,
    load_or_build,
    runtime_callable,
    settings_of,
    stale_reasons,
    time_modules,
)
from lightning_nas.spaces import binas_supernet

from .conftest import tiny_mobilenet

FAST = dict(repeats=3, warmup=1, rounds=1)


def conv_net() -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2, groups=8),
        nn.Hardswish(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4),
    )
    with torch.no_grad():  # non-trivial BatchNorm statistics, so folding them in is checked
        net[1].running_mean.uniform_(-1, 1)
        net[1].running_var.uniform_(0.5, 2)
    return net.eval()


def binas_subnet() -> nn.Module:
    torch.manual_seed(0)
    sn = binas_supernet("tiny", in_chans=1, num_classes=10, max_depth=2, min_depth=1, expand_ratios=(2,), kernel_sizes=(3,))
    return sn.export(sn.space.largest()).eval()


def as_tensor(output) -> torch.Tensor:
    # ONNX Runtime returns the list of output arrays.
    return torch.as_tensor(output[0]) if isinstance(output, list) else output


@pytest.mark.parametrize("runtime", RUNTIMES)
@pytest.mark.parametrize("make, input_size", [(conv_net, (3, 12, 12)), (binas_subnet, (1, 16, 16))], ids=["conv", "binas"])
def test_each_runtime_computes_what_eager_computes(runtime, make, input_size):
    module = make()
    x = torch.randn(1, *input_size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = module(x)
    run = runtime_callable(module, x, ProfileSettings(input_size=input_size, runtime=runtime))
    with torch.inference_mode():
        got = as_tensor(run())
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    # The module is left as it was: converted runtimes work on copies.
    with torch.no_grad():
        assert torch.equal(module(x), expected)


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_time_modules_times_each_runtime(runtime):
    settings = ProfileSettings(input_size=(3, 12, 12), runtime=runtime, threads=1, **FAST)
    small, large = time_modules([(conv_net(), settings.batch_shape), (conv_net(), (1, 3, 48, 48))], settings)
    for result in (small, large):
        assert result.median_ms > 0 and len(result.samples_ms) == 3


def test_onnxruntime_table_records_runtime_and_version():
    supernet = tiny_mobilenet()
    settings = ProfileSettings(input_size=(3, 8, 8), runtime="onnxruntime", **FAST)
    table = build_latency_table(supernet, settings, calibration_archs=1)
    # Block entries are net of the session's per-call cost, which an empty graph measured; the fixed
    # part keeps the one call a whole subnet makes.
    assert table.metadata["call_overhead_ms"] > 0
    assert (table.block[table.staged.config_exists()] >= 0).all() and table.block.max() > 0
    assert np.isfinite(table.constant)
    assert build_latency_table(supernet, ProfileSettings(input_size=(3, 8, 8), **FAST), calibration_archs=1).metadata["call_overhead_ms"] == 0
    meta = table.metadata
    assert meta["settings"]["runtime"] == "onnxruntime" and settings_of(table) == settings
    assert meta["device"]["runtime"] == "onnxruntime" and meta["device"]["runtime_version"] == onnxruntime.__version__
    eager = device_info(ProfileSettings(input_size=(3, 8, 8)))
    assert eager["runtime"] == "eager" and eager["runtime_version"] == torch.__version__
    # A table of another runtime, or of another onnxruntime version, does not apply.
    assert any("runtime" in r for r in stale_reasons(meta, supernet, ProfileSettings(input_size=(3, 8, 8), **FAST)))
    upgraded = {**meta, "device": {**meta["device"], "runtime_version": "0.0.1"}}
    assert stale_reasons(upgraded, supernet, settings) == ["device.runtime_version is '0.0.1', now " + repr(onnxruntime.__version__)]


def test_binas_table_in_onnxruntime():
    supernet = binas_supernet("tiny", in_chans=1, num_classes=10, max_depth=2, min_depth=1, expand_ratios=(2,), kernel_sizes=(3,))
    settings = ProfileSettings(input_size=(1, 8, 8), runtime="onnxruntime", **FAST)
    table = build_latency_table(supernet, settings, calibration_archs=1)
    assert (table.block[table.staged.config_exists()] >= 0).all() and table.predict(supernet.space.largest()) > 0


def test_a_table_of_another_runtime_is_rebuilt_and_kept(tmp_path, caplog):
    supernet, path = tiny_mobilenet(), tmp_path / "lat.json"
    eager = ProfileSettings(input_size=(3, 8, 8), **FAST)
    ort = ProfileSettings(input_size=(3, 8, 8), runtime="onnxruntime", **FAST)
    load_or_build(supernet, path, eager, calibration_archs=1)
    eager_text = path.read_text()
    with caplog.at_level(logging.WARNING, logger="lightning_nas.profiling"):
        table = load_or_build(supernet, path, ort, calibration_archs=1)
    assert table.metadata["settings"]["runtime"] == "onnxruntime"
    assert (tmp_path / "lat.json.bak").read_text() == eager_text
    assert "settings.runtime is 'eager', now 'onnxruntime'" in caplog.text
    ort_text = path.read_text()
    again = load_or_build(supernet, path, ort, calibration_archs=1)  # same runtime: reused
    assert path.read_text() == ort_text and again.metadata["created"] == table.metadata["created"]
    assert not (tmp_path / "lat.json.bak.1").exists()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(runtime="tensorrt"), r"`runtime` must be one of \('eager', 'torchscript', 'onnxruntime'\), got 'tensorrt'"),
        (dict(runtime=None), "`runtime` must be one of"),
        (dict(runtime="onnxruntime", dtype="float64"), "float32 only"),
    ],
)
def test_bad_runtime_is_a_clear_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ProfileSettings(input_size=(3, 8, 8), **kwargs)


@pytest.mark.parametrize("runtime", ["onnxruntime", "torchscript"])
def test_converted_runtimes_refuse_cuda(monkeypatch, runtime):
    # Pretend CUDA exists, so the runtime check (not the missing-CUDA check) answers.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with pytest.raises(ValueError, match=f"`runtime` '{runtime}' is timed on CPU only"):
        ProfileSettings(input_size=(3, 8, 8), device="cuda", runtime=runtime)


class Eigenvalues(nn.Module):
    def forward(self, x):
        return torch.linalg.eigvals(x).real  # no ONNX operator for it


def test_a_module_onnx_cannot_export_is_named():
    settings = ProfileSettings(input_size=(4, 4), runtime="onnxruntime", **FAST)
    with pytest.raises(ValueError, match=r"cannot run Eigenvalues \(input \(1, 4, 4\)\) in runtime 'onnxruntime'"):
        time_modules([(Eigenvalues(), settings.batch_shape)], settings)


def test_missing_onnxruntime_says_what_to_install(monkeypatch):
    real_import = builtins.__import__

    def no_onnxruntime(name, *args, **kwargs):
        if name == "onnxruntime":
            raise ModuleNotFoundError("No module named 'onnxruntime'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_onnxruntime)
    with pytest.raises(ImportError, match=r"pip install 'lightning-nas\[onnx\]'"):
        ProfileSettings(input_size=(3, 8, 8), runtime="onnxruntime")
    ProfileSettings(input_size=(3, 8, 8), runtime="torchscript")  # needs torch only


def test_profile_cli_runtime(tmp_path, capsys):
    out = tmp_path / "t.json"
    tiny = json.dumps({"stem_channels": 8, "stages": [[8, 1, 2]], "expand_ratios": [2], "kernel_sizes": [3], "head_channels": 8})
    argv = ["--space", "mobilenet", "--out", str(out), "--space-kwargs", tiny, "--image-size", "8", "--repeats", "3",
            "--warmup", "1", "--calibration-archs", "1", "--no-pin-malloc"]
    assert main(argv + ["--runtime", "torchscript"]) == 0
    assert f"runtime torchscript {torch.__version__}" in capsys.readouterr().out
    assert json.loads(out.read_text())["metadata"]["settings"]["runtime"] == "torchscript"
    assert main(argv + ["--runtime", "onnxruntime", "--check", "2"]) == 0
    text = capsys.readouterr().out
    assert f"runtime onnxruntime {onnxruntime.__version__}" in text and "check on 2 random subnets" in text
    assert json.loads(out.read_text())["metadata"]["device"]["runtime"] == "onnxruntime"
    assert (tmp_path / "t.json.bak").exists()  # the torchscript table was kept
    with pytest.raises(SystemExit):
        main(argv + ["--runtime", "tflite"])
    assert "--runtime" in capsys.readouterr().err
