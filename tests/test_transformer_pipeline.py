"""The whole BINAS pipeline on the tiny ViT (8x8 digits) and the tiny GPT (the Zen of Python):
UniformSampling (per example / sandwich) -> ContributionEstimation -> LatencyProfiler (token inputs)
-> exact search under latency, parameter and memory limits (== brute force) -> export == supernet."""

from __future__ import annotations

import itertools

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import lightning_nas as ln
from lightning_nas.callbacks import ContributionEstimation, LatencyProfiler, UniformSampling
from lightning_nas.classification import SupernetClassifier
from lightning_nas.profiling import ProfileSettings
from lightning_nas.profiling.memory import build_activation_memory_table, build_kv_cache_table, build_peak_memory_table
from lightning_nas.profiling.tables import stale_reasons
from lightning_nas.profiling.timing import example_input
from lightning_nas.spaces import LanguageModel, char_dataset, create_space, next_token_accuracy


def _digits(n: int) -> TensorDataset:
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.images[:n], dtype=torch.float32)[:, None] / 16.0
    return TensorDataset((x - 0.3) / 0.4, torch.tensor(digits.target[:n]))


def _setup(name: str):
    torch.manual_seed(0)
    if name == "vit":
        data = _digits(288)
        train, held_out = TensorDataset(*(t[:192] for t in data.tensors)), TensorDataset(*(t[192:] for t in data.tensors))
        net = create_space("vit-tiny")
        return net, SupernetClassifier(net, 10, lr=0.05), train, held_out, dict(per_sample=True), {}, (1, 8, 8), None
    data = char_dataset(length=12, stride=3)
    train, held_out = TensorDataset(*(t[:192] for t in data.tensors)), TensorDataset(*(t[192:] for t in data.tensors))
    net = create_space("gpt-tiny")
    return net, LanguageModel(net), train, held_out, dict(sandwich=True, num_random=1), dict(score=next_token_accuracy), (12,), 128


def _all_archs(space) -> list[dict]:
    labels = space.labels
    return [dict(zip(labels, values)) for values in itertools.product(*(space[label].values for label in labels))]


@pytest.mark.parametrize("name", ["vit", "gpt"])
def test_whole_pipeline(name, tmp_path):
    net, model, train, held_out, sampling, estimation, input_size, vocab = _setup(name)
    estimate = ContributionEstimation(DataLoader(held_out, batch_size=48), passes=1, **estimation)
    profile = LatencyProfiler(tmp_path / "latency.json", repeats=2, warmup=1, calibration_archs=2, batch_size=2, vocab_size=vocab)
    pl.Trainer(
        max_steps=3, callbacks=[UniformSampling(seed=0, **sampling), estimate, profile], logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, accelerator="cpu", devices=1,
    ).fit(model, DataLoader(train, batch_size=16))

    accuracy, latency, params = estimate.accuracy_model, profile.latency_table, profile.params_table
    assert latency.metadata["settings"]["input_size"] == list(input_size) and latency.metadata["settings"]["batch_size"] == 2
    assert latency.metadata["settings"].get("vocab_size") == vocab
    assert np.isfinite(latency.block).all() and latency.extreme(largest=True)[0] > latency.extreme()[0]
    memory = (build_kv_cache_table if vocab else build_activation_memory_table)(net, input_size, batch_size=2, vocab_size=vocab)
    peak = build_peak_memory_table(net, input_size, batch_size=2, vocab_size=vocab)  # a maximum over units
    archs = _all_archs(net.space)
    value = accuracy.predict_many(archs)
    configs, depths = accuracy.staged.indices_many(archs)
    for table in (latency, params, memory, peak):
        costs = ln.Limit(table, upper=0.0).predict_indices(configs, depths)  # sums, or the peak's max
        budget = float(np.quantile(costs, 0.4))
        best = ln.search_constrained(accuracy, ln.Limit(table, upper=budget))
        assert best.resources[table.name] == ln.Limit(table, upper=budget).predict(best.arch) <= budget + 1e-6
        assert accuracy.predict(best.arch) == pytest.approx(value[costs <= budget + 1e-9].max(), abs=1e-9)
    net.eval()
    x = held_out.tensors[0][:4]
    with torch.no_grad(), net.activated(best.arch):
        expected = net(x)
    torch.testing.assert_close(net.export(best.arch).eval()(x), expected, atol=1e-5, rtol=1e-5)


def test_token_settings_and_inputs():
    settings = ProfileSettings(input_size=(16,), batch_size=4, vocab_size=128)
    assert settings.batch_shape == (4, 16) and settings.to_dict()["vocab_size"] == 128
    assert "vocab_size" not in ProfileSettings(input_size=(3, 8, 8)).to_dict()  # float tables keep their keys
    ids = example_input((4, 16), 128, seed=1)
    assert ids.dtype == torch.long and 0 <= int(ids.min()) and int(ids.max()) < 128
    assert torch.equal(ids, example_input((4, 16), 128, seed=1))
    with pytest.raises(ValueError, match=r"`vocab_size` must be an int >= 1, got 0"):
        ProfileSettings(input_size=(16,), vocab_size=0)
    net = create_space("gpt-tiny")
    reasons = stale_reasons({"settings": {**settings.to_dict(), "vocab_size": None}}, net, settings)
    assert any("vocab_size is None, now 128" in r for r in reasons)


def test_profiler_asks_for_the_vocabulary_of_token_batches(tmp_path):
    net = create_space("gpt-tiny")
    data = char_dataset(length=8, stride=8)
    with pytest.raises(ValueError, match=r"holds torch.int64 inputs of shape \(4, 8\) \(token ids\?\) but `vocab_size` is None"):
        pl.Trainer(max_steps=1, callbacks=[LatencyProfiler(tmp_path / "t.json", repeats=1)], logger=False, enable_checkpointing=False,
                   enable_progress_bar=False, enable_model_summary=False, accelerator="cpu").fit(
            LanguageModel(net), DataLoader(data, batch_size=4))
