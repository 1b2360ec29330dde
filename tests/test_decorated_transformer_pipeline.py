"""The whole structure-based pipeline on existing transformers decorated by ``mutate`` (issue 20 §3):
a timm ViT (depth as a prefix of its blocks) on 8x8 digits and a Hugging Face GPT-2 ("skip any
layer") on the Zen of Python. UniformSampling per example -> ContributionEstimation ->
LatencyProfiler (token ids for GPT-2) -> exact search under latency, parameter and activation-memory
limits (== brute force over every arch) -> export == supernet, as the libraries' own classes.

The stage structure of such a model (``StagedSpace.from_supernet`` reading ``ElasticLayers``) and
the solvers' exactness on it are tested with Hypothesis in ``tests/spaces/test_structure.py``.
"""

from __future__ import annotations

import itertools
import json

import lightning.pytorch as pl
import numpy as np
import pytest
import timm
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import lightning_nas as ln
from lightning_nas.bilinear import BilinearTable
from lightning_nas.callbacks import ContributionEstimation, LatencyProfiler, UniformSampling
from lightning_nas.classification import SupernetClassifier
from lightning_nas.nn import Mutable, mutate
from lightning_nas.nn.transformer_rules import autoformer
from lightning_nas.profiling.memory import build_activation_memory_table
from lightning_nas.spaces import LanguageModel, char_dataset, next_token_accuracy
from lightning_nas.select_cli import staged_from_structure
from lightning_nas.spaces.staged import StagedSpace

SEQ_LEN, VOCAB = 12, 128


class CausalLM(nn.Module):
    """A Hugging Face causal LM as a plain ``(B, T) ids -> (B, T, V) logits`` network."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.model(ids, use_cache=False).logits


def _digits(n: int) -> TensorDataset:
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.images[:n], dtype=torch.float32)[:, None] / 16.0
    return TensorDataset((x - 0.3) / 0.4, torch.tensor(digits.target[:n]))


def _split(data: TensorDataset, n: int) -> tuple[TensorDataset, TensorDataset]:
    return TensorDataset(*(t[:n] for t in data.tensors)), TensorDataset(*(t[n:] for t in data.tensors))


def _vit():
    """timm's ViT-Tiny recipe at 8x8 (1 channel, 4 patches), 2 blocks of 32 wide: 2 x 6 configurations, depth 1-2."""
    torch.manual_seed(0)
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=8, patch_size=4, in_chans=1,
                            embed_dim=32, depth=2, num_heads=2, num_classes=10)
    net = ln.Supernet(mutate(vit, preset="autoformer"))
    train, held_out = _split(_digits(192), 128)
    return net, SupernetClassifier(net, 10, lr=0.05), train, held_out, {}, (1, 8, 8), None


def _gpt2():
    """A 2-layer GPT-2 (32 wide, 4 heads) over bytes, every layer on/off: 2 x (9 configurations, keep)."""
    transformers = pytest.importorskip("transformers")
    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=VOCAB, n_positions=SEQ_LEN,
                                     bos_token_id=0, eos_token_id=0)
    net = ln.Supernet(CausalLM(mutate(transformers.GPT2LMHeadModel(config), rules=[autoformer(depth="skip")])))
    train, held_out = _split(char_dataset(length=SEQ_LEN, stride=4), 128)
    return net, LanguageModel(net), train, held_out, dict(score=next_token_accuracy), (SEQ_LEN,), VOCAB


def _all_archs(space) -> list[dict]:
    return [dict(zip(space.labels, values)) for values in itertools.product(*(space[label].values for label in space.labels))]


@pytest.mark.parametrize("name", ["vit", "gpt2"])
def test_whole_pipeline_on_a_decorated_transformer(name, tmp_path):
    net, model, train, held_out, estimation, input_size, vocab = (_vit if name == "vit" else _gpt2)()
    staged = StagedSpace.of(net)
    if name == "vit":  # depth over the blocks: one stage, the blocks its positions
        assert [(st.depth_label, st.depths, st.paths) for st in staged.stages] == [("blocks.depth", (1, 2), ("blocks.0", "blocks.1"))]
    else:  # skip any layer: one stage per layer, its depth the layer's keep decision
        assert [(st.depth_label, st.depths, st.paths) for st in staged.stages] == [
            (f"transformer.h.{i}.keep", (False, True), (f"model.transformer.h.{i}",)) for i in range(2)]

    estimate = ContributionEstimation(DataLoader(held_out, batch_size=32), passes=1, **estimation)
    profile = LatencyProfiler(tmp_path / "latency.json", repeats=2, warmup=1, calibration_archs=2, batch_size=2, vocab_size=vocab)
    pl.Trainer(
        max_steps=2, callbacks=[UniformSampling(seed=0, per_sample=True), estimate, profile], logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, accelerator="cpu", devices=1,
    ).fit(model, DataLoader(train, batch_size=16))

    accuracy, latency, params = estimate.accuracy_model, profile.latency_table, profile.params_table
    assert np.isfinite(accuracy.block).all() and np.isfinite(latency.block).all()
    assert latency.metadata["settings"].get("vocab_size") == vocab
    # The table file (its structure holds the keep decisions' False/True depths) loads back.
    reloaded = BilinearTable.load(tmp_path / "latency.json", staged)
    assert reloaded.predict(net.space.smallest()) == pytest.approx(latency.predict(net.space.smallest()))
    # ... also without the supernet (`lightning-nas select` rebuilds the space from the file): bools stay bools.
    rebuilt = staged_from_structure(json.loads((tmp_path / "latency.json").read_text())["structure"])
    assert rebuilt.space.validate(net.space.smallest()) == net.space.smallest()
    memory = build_activation_memory_table(net, input_size, batch_size=2, vocab_size=vocab)
    archs = _all_archs(net.space)
    # Parameter counts are exactly additive, skipped layers included.
    for arch in archs[:: max(1, len(archs) // 6)]:
        assert params.predict(arch) == sum(p.numel() for p in net.export(arch).parameters())

    value = accuracy.predict_many(archs)
    net.eval()
    x = held_out.tensors[0][:3]
    for table in (latency, params, memory):
        costs = table.predict_many(archs)
        budget = float(np.quantile(costs, 0.3))
        best = ln.search_constrained(accuracy, ln.Limit(table, upper=budget))
        assert table.predict(best.arch) <= budget + 1e-6
        assert accuracy.predict(best.arch) == pytest.approx(value[costs <= budget + 1e-9].max(), abs=1e-9)
        with torch.no_grad(), net.activated(best.arch):
            expected = net(x)
        exported = net.export(best.arch).eval()
        torch.testing.assert_close(exported(x), expected, atol=1e-5, rtol=1e-5)

    if name == "vit":
        assert type(exported).__name__ == "VisionTransformer" and len(exported.blocks) == best.arch["blocks.depth"]
    else:
        assert type(exported.model).__name__ == "GPT2LMHeadModel"
        kept = [i for i in range(2) if best.arch[f"transformer.h.{i}.keep"]]
        assert exported.model.config.n_layer == len(kept) == len(exported.model.transformer.h)
    assert not any(isinstance(m, Mutable) for m in exported.modules())
