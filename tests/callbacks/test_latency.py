"""LatencyProfiler in a Trainer: tables built or reused, training undisturbed, state, bad arguments."""

from __future__ import annotations

import json

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_nas.callbacks.latency import LatencyProfiler
from lightning_nas.callbacks.sampling import UniformSampling
from lightning_nas.spaces import mobilenet_supernet

FAST = dict(repeats=3, warmup=1, calibration_archs=1)


class Classifier(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = mobilenet_supernet(
            num_classes=3, stem_channels=8, stages=((8, 1, 2), (16, 2, 2)), expand_ratios=(2, 4), kernel_sizes=(3, 5), head_channels=16
        )
        self.dropout = nn.Dropout(0.3)  # draws from the global RNG: profiling must not shift it

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self.net(self.dropout(x)), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def loader() -> DataLoader:
    g = torch.Generator().manual_seed(1)
    return DataLoader(TensorDataset(torch.randn(24, 3, 16, 16, generator=g), torch.randint(0, 3, (24,), generator=g)), batch_size=6)


def fit(callbacks, model=None, **kwargs):
    torch.manual_seed(123)
    model = model or Classifier()
    trainer = pl.Trainer(
        max_epochs=1, callbacks=callbacks, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, accelerator="cpu", devices=1, **kwargs,
    )
    trainer.fit(model, loader())
    return trainer, model


def test_profiler_builds_tables_without_disturbing_training(tmp_path):
    threads = torch.get_num_threads()
    _, plain = fit([UniformSampling(0)])
    profiler = LatencyProfiler(tmp_path / "lat.json", **FAST)  # input size from the first batch
    _, profiled = fit([UniformSampling(0), profiler])
    assert torch.get_num_threads() == threads
    for (name, a), (_, b) in zip(plain.state_dict().items(), profiled.state_dict().items()):
        assert torch.equal(a, b), name
    assert profiler.input_size == (3, 16, 16)
    table = profiler.latency_table
    assert table.name == "latency" and table.block.shape == (2, 2, 4)
    assert table.metadata["settings"]["input_size"] == [3, 16, 16] and table.metadata["settings"]["threads"] == 1
    assert json.loads((tmp_path / "lat.json").read_text())["metadata"]["model"] == table.metadata["model"]
    arch = profiled.net.space.sample(0)
    assert profiler.params_table.predict(arch) == sum(p.numel() for p in profiled.net.export(arch).parameters())
    assert profiler.flops_table.unit == "MFLOPs" and profiler.flops_table.predict(arch) > 0
    state = profiler.state_dict()
    assert state["path"] == str(tmp_path / "lat.json") and state["input_size"] == [3, 16, 16]
    assert state["metadata"]["settings"] == table.metadata["settings"]


def test_profiler_reuses_the_table_at_fit_start(tmp_path):
    first = LatencyProfiler(tmp_path / "lat.json", input_size=(3, 16, 16), **FAST)
    fit([first], max_steps=1)
    created = first.latency_table.metadata["created"]
    second = LatencyProfiler(tmp_path / "lat.json", input_size=(3, 16, 16), **FAST)
    second_state = {}

    class Check(pl.Callback):
        def on_fit_start(self, trainer, pl_module):  # runs after the profiler's on_fit_start
            second_state["table"] = second.latency_table

    fit([second, Check()], max_steps=1)
    assert second_state["table"] is not None
    assert second.latency_table.metadata["created"] == created
    np.testing.assert_array_equal(second.latency_table.block, first.latency_table.block)
    assert not (tmp_path / "lat.json.bak").exists()
    third = LatencyProfiler(tmp_path / "lat.json", input_size=(3, 16, 16), batch_size=2, **FAST)
    fit([third], max_steps=1)
    assert third.latency_table.metadata["settings"]["batch_size"] == 2 and (tmp_path / "lat.json.bak").exists()


def test_profiler_times_in_the_requested_runtime(tmp_path):
    profiler = LatencyProfiler(tmp_path / "lat.json", input_size=(3, 16, 16), runtime="onnxruntime", **FAST)
    fit([profiler], max_steps=1)
    meta = profiler.latency_table.metadata
    assert meta["settings"]["runtime"] == meta["device"]["runtime"] == "onnxruntime"
    assert profiler.settings.runtime == "onnxruntime" and (profiler.latency_table.block > 0).any()


def test_profiler_fits_the_table_to_whole_subnets(tmp_path):
    profiler = LatencyProfiler(tmp_path / "lat.json", input_size=(3, 16, 16), fit_archs=4, **FAST)
    fit([profiler], max_steps=1)
    meta = profiler.latency_table.metadata
    assert meta["fit"]["subnets"] == 4 and meta["fit"]["measurements"] == 5 and meta["fit"]["heldout"]["mape_percent"] >= 0
    again = LatencyProfiler(tmp_path / "lat.json", input_size=(3, 16, 16), fit_archs=4, **FAST)
    fit([again], max_steps=1)
    assert again.latency_table.metadata["created"] == meta["created"] and not (tmp_path / "lat.json.bak").exists()
    unfitted = LatencyProfiler(tmp_path / "lat.json", input_size=(3, 16, 16), **FAST)  # another fit_archs: rebuilt
    fit([unfitted], max_steps=1)
    assert "fit" not in unfitted.latency_table.metadata and (tmp_path / "lat.json.bak").exists()


def test_state_restores_the_inferred_input_size(tmp_path):
    profiler = LatencyProfiler(tmp_path / "lat.json", **FAST)
    fresh = LatencyProfiler(tmp_path / "lat.json", **FAST)
    fresh.load_state_dict({"path": str(tmp_path / "lat.json"), "input_size": [3, 16, 16], "metadata": {}})
    assert fresh.input_size == (3, 16, 16) and profiler.input_size is None
    assert fresh.settings.input_size == (3, 16, 16)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(threads=0), "threads"),
        (dict(batch_size=-1), "batch_size"),
        (dict(repeats=0), "repeats"),
        (dict(input_size=(3, 0, 8)), "input_size"),
        (dict(device="gpu0"), "device"),
        (dict(dtype="half"), "dtype"),
        (dict(runtime="tflite"), "runtime"),
        (dict(calibration_archs=0), "calibration_archs"),
        (dict(fit_archs=-1), "fit_archs"),
        (dict(fit_archs=2, calibration_archs=1), "fit_archs"),
        (dict(seed=-1), "seed"),
    ],
)
def test_bad_arguments_name_the_argument(tmp_path, kwargs, name):
    with pytest.raises(ValueError, match=f"`{name}`"):
        LatencyProfiler(tmp_path / "t.json", **kwargs)
    with pytest.raises(ValueError, match="`path`"):
        LatencyProfiler(3)


@pytest.mark.ddp_scenario("latency")
def test_ddp_rank_zero_builds_and_the_others_load(ddp_runs):
    out = ddp_runs("latency")  # ddp_latency_script.py, run by the conftest's one DDP launch
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert all(r["world_size"] == 2 for r in ranks)
    assert ranks[0] == ranks[1]  # rank 1 loaded what rank 0 measured
    assert not list(out.glob("lat.json.bak*"))
