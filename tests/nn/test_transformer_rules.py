"""mutate rules for existing transformers: timm ViTs, Hugging Face GPT-2 and BERT become AutoFormer spaces.

The supernet at the original architecture computes exactly what the model computed; exports are the
libraries' own classes with plain layers, equal to the supernet under the same architecture.
"""

from __future__ import annotations

import copy
import functools

import pytest
import timm
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from lightning_nas import Supernet
from lightning_nas.nn import Mutable, mutate
from lightning_nas.nn.transformer_rules import ElasticLayers, SlicedModule, autoformer, elastic_heads, elastic_layers, elastic_mlp

VOCAB = 50


def _hf():
    transformers = pytest.importorskip("transformers")
    transformers.logging.set_verbosity_error()  # tiny vocabularies: no warnings about GPT-2's token ids
    return transformers


def _vit(name: str) -> nn.Module:
    return timm.create_model(name, pretrained=False, img_size=32, depth=3)


def _gpt2() -> nn.Module:
    hf = _hf()
    config = hf.GPT2Config(n_layer=3, n_embd=32, n_head=4, vocab_size=VOCAB, n_positions=16, bos_token_id=0, eos_token_id=0)
    return hf.GPT2LMHeadModel(config)


def _bert() -> nn.Module:
    hf = _hf()
    config = hf.BertConfig(num_hidden_layers=3, hidden_size=32, num_attention_heads=4, intermediate_size=64,
                           vocab_size=VOCAB, max_position_embeddings=16, num_labels=3)
    return hf.BertForSequenceClassification(config)


MODELS = {
    "vit_tiny_patch16_224": functools.partial(_vit, "vit_tiny_patch16_224"),
    "deit_tiny_patch16_224": functools.partial(_vit, "deit_tiny_patch16_224"),
    "gpt2": _gpt2,
    "bert": _bert,
}
# The stack of layers and the labels' suffixes per model (3 layers each).
STACK = {"vit_tiny_patch16_224": "blocks", "deit_tiny_patch16_224": "blocks", "gpt2": "transformer.h", "bert": "bert.encoder.layer"}
HEADS = {"vit_tiny_patch16_224": "attn", "deit_tiny_patch16_224": "attn", "gpt2": "attn", "bert": "attention"}
MLP = {"vit_tiny_patch16_224": "mlp.hidden_features", "deit_tiny_patch16_224": "mlp.hidden_features", "gpt2": "mlp.n_inner", "bert": "intermediate_size"}


@functools.cache
def _pristine(name: str) -> nn.Module:
    torch.manual_seed(0)
    return MODELS[name]().eval()


def _model(name: str) -> nn.Module:
    return copy.deepcopy(_pristine(name))


def _inputs(name: str, batch: int = 2) -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    if STACK[name] == "blocks":
        return torch.randn(batch, 3, 32, 32, generator=generator)
    return torch.randint(0, VOCAB, (batch, 6), generator=generator)


def _run(model: nn.Module, x: torch.Tensor, seed: int = 0, **kwargs) -> torch.Tensor:
    torch.manual_seed(seed)  # the same dropout masks for every run in train mode
    out = model(x, **kwargs)
    return out if isinstance(out, torch.Tensor) else out.logits


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("train", [False, True])
def test_original_architecture_is_bit_exact(name, train):
    reference = _model(name).train(train)
    model = copy.deepcopy(reference)
    keys = list(model.state_dict())
    supernet = Supernet(mutate(model, rules=[autoformer(reorder=False)]))
    assert list(supernet.module.state_dict()) == keys  # original checkpoints still load
    x = _inputs(name)
    assert torch.equal(_run(supernet, x), _run(reference, x))
    assert torch.equal(_run(supernet.export(supernet.space.default()), x), _run(reference, x))


@pytest.mark.parametrize("name", list(MODELS))
def test_preset_decisions_and_reordering_keep_the_function(name):
    reference = _model(name)
    report = []
    supernet = Supernet(mutate(_model(name), preset="autoformer", report=report))
    heads = [f"{STACK[name]}.{i}.{HEADS[name]}.num_heads" for i in range(3)]
    widths = [f"{STACK[name]}.{i}.{MLP[name]}" for i in range(3)]
    assert set(supernet.space.labels) == {*heads, *widths, f"{STACK[name]}.depth"}
    assert len(report) == 7 and {r.after for r in report} == {"ElasticLayers", "SlicedModule"}
    decision = supernet.space[heads[0]]
    assert decision.default == max(decision.values) and len(decision.values) >= 2
    x = _inputs(name)
    # Heads and neurons sorted by importance: the same function, summed in another order.
    torch.testing.assert_close(_run(supernet, x), _run(reference, x), atol=1e-5, rtol=1e-5)
    sliced = supernet.module.get_submodule(f"{STACK[name]}.0.{HEADS[name]}")
    assert isinstance(sliced, SlicedModule)
    importance = sliced.unit_importance("num_heads")
    assert torch.all(importance[:-1] >= importance[1:])


def _check_export(name: str, exported: nn.Module, arch: dict, mode: str) -> None:
    stack = exported.get_submodule(STACK[name])
    assert not any(isinstance(m, Mutable) for m in exported.modules())
    kept = [i for i in range(3) if (arch[f"{STACK[name]}.depth"] > i if mode == "prefix" else arch[f"{STACK[name]}.{i}.keep"])]
    assert len(stack) == len(kept)
    heads = [arch[f"{STACK[name]}.{i}.{HEADS[name]}.num_heads"] for i in kept]
    widths = [arch[f"{STACK[name]}.{i}.{MLP[name]}"] for i in kept]
    if STACK[name] == "blocks":
        assert type(stack) is nn.Sequential
        assert [b.attn.num_heads for b in stack] == heads
        assert [b.attn.qkv.out_features for b in stack] == [3 * h * 64 for h in heads]
        assert [b.mlp.fc1.out_features for b in stack] == widths
        assert all(type(b.attn.qkv) is nn.Linear and type(b.mlp.fc2) is nn.Linear for b in stack)
        return
    config = exported.config
    assert type(stack) is nn.ModuleList
    assert config.num_hidden_layers == len(kept) and config.source_layers == kept
    assert config.layer_num_heads == heads and config.layer_intermediate_sizes == widths
    if len(set(widths)) == 1:
        assert config.n_inner == widths[0] if name == "gpt2" else config.intermediate_size == widths[0]
    idx = [(m.layer_idx if name == "gpt2" else m.attention.self.layer_idx) for m in (b.attn if name == "gpt2" else b for b in stack)]
    assert idx == list(range(len(kept)))
    assert all(m.config is config for m in exported.modules() if hasattr(m, "config"))


@pytest.mark.parametrize("name", list(MODELS))
@settings(max_examples=4, deadline=None)
@given(seed=st.integers(0, 2**20), mode=st.sampled_from(["prefix", "skip"]), train=st.booleans())
def test_export_equals_supernet_for_random_archs(name, seed, mode, train):
    supernet = Supernet(mutate(_model(name), rules=[autoformer(depth=mode, min_depth=1)])).train(train)
    arch = supernet.space.sample(seed=seed)
    x = _inputs(name)
    with supernet.activated(arch):
        expected = _run(supernet, x, seed)
    exported = supernet.export(arch)
    assert type(exported) is type(_pristine(name))
    assert exported.training == train
    assert torch.equal(_run(exported, x, seed), expected)
    _check_export(name, exported, arch, mode)


@pytest.mark.parametrize("name", list(MODELS))
@settings(max_examples=3, deadline=None)
@given(seed=st.integers(0, 2**20), mode=st.sampled_from(["prefix", "skip"]))
def test_per_example_rows_equal_their_subnet_alone(name, seed, mode):
    supernet = Supernet(mutate(_model(name), rules=[autoformer(depth=mode)]))
    archs = supernet.space.sample_many(3, seed=seed)
    x = _inputs(name, batch=3)
    kwargs = {} if STACK[name] != "transformer.h" else {"use_cache": False}
    supernet.activate(archs)
    rows = _run(supernet, x, **kwargs)
    for i, arch in enumerate(archs):
        with supernet.activated(arch):
            torch.testing.assert_close(rows[i : i + 1], _run(supernet, x[i : i + 1], **kwargs), atol=1e-5, rtol=1e-5)


def test_per_example_skipping_refuses_a_cache():
    supernet = Supernet(mutate(_model("gpt2"), rules=[autoformer(depth="skip")]))
    label = "transformer.h.1.keep"
    archs = [{**supernet.space.default(), label: keep} for keep in (True, False)]
    supernet.activate(archs)
    with pytest.raises(ValueError, match="use_cache=False"):
        supernet(_inputs("gpt2"), use_cache=True)


def test_gradients_reach_the_kept_heads_only():
    supernet = Supernet(mutate(_model("vit_tiny_patch16_224"), rules=[elastic_heads(reorder=False)]))
    arch = {**supernet.space.default(), "blocks.0.attn.num_heads": 2}
    with supernet.activated(arch):
        supernet(_inputs("vit_tiny_patch16_224")).sum().backward()
    grad = supernet.module.blocks[0].attn.qkv.weight.grad.view(3, 3, 64, -1)  # (q/k/v, head, dim, in)
    assert grad[:, :2].abs().sum() > 0 and grad[:, 2].abs().sum() == 0


def test_exported_gpt2_with_its_own_heads_reloads_from_its_config(tmp_path):
    hf = _hf()
    supernet = Supernet(mutate(_model("gpt2"), rules=[autoformer(head_ratios=None, depth="skip")]))
    arch = {**supernet.space.default(), "transformer.h.1.keep": False}
    arch.update({f"transformer.h.{i}.mlp.n_inner": 64 for i in range(3)})
    exported = supernet.export(arch)
    assert exported.config.n_layer == 2 and exported.config.n_inner == 64
    exported.save_pretrained(tmp_path)
    reloaded = hf.GPT2LMHeadModel.from_pretrained(tmp_path).eval()
    x = _inputs("gpt2")
    assert torch.equal(_run(reloaded, x), _run(exported.eval(), x))


def test_rules_alone_and_their_errors():
    vit = mutate(_model("vit_tiny_patch16_224"), rules=[elastic_mlp([0.5], divisor=1), elastic_layers(mode=None)])
    assert isinstance(vit.blocks, ElasticLayers) and isinstance(vit.blocks[0].mlp, SlicedModule)
    assert Supernet(vit).space.labels == [f"blocks.{i}.mlp.hidden_features" for i in range(3)]
    with pytest.raises(ValueError, match="matched no module.*no attention"):
        mutate(nn.Sequential(nn.Linear(4, 4), nn.ReLU()), rules=[elastic_heads()])
    with pytest.raises(ValueError, match=r"`ratios` must hold fractions in \(0, 1\]"):
        elastic_heads([0.5, 2])
    with pytest.raises(ValueError, match="`mode` must be one of"):
        elastic_layers(mode="random")
    with pytest.raises(ValueError, match="`divisor` must be a positive int"):
        elastic_mlp(divisor=0)
    normed = nn.Sequential(timm.layers.Attention(32, num_heads=4, scale_norm=True, norm_layer=nn.LayerNorm))
    with pytest.raises(ValueError, match="'0'.*scale_norm"):
        mutate(normed, rules=[elastic_heads()])
    with pytest.raises(ValueError, match="unknown `preset`.*autoformer"):
        mutate(_model("vit_tiny_patch16_224"), preset="vit")


@pytest.mark.parametrize("name", ["gpt2", "bert"])
def test_skipping_every_layer_still_describes_the_config(name):
    supernet = Supernet(mutate(_model(name), rules=[autoformer(depth="skip")]))
    arch = {**supernet.space.default(), **{f"{STACK[name]}.{i}.keep": False for i in range(3)}}
    exported = supernet.export(arch)
    assert exported.config.num_hidden_layers == 0 and exported.config.layer_num_heads == []
    assert supernet.module.config.num_hidden_layers == 3  # the supernet's own config is left alone
    x = _inputs(name)
    with supernet.activated(arch):
        assert torch.equal(_run(exported, x), _run(supernet, x))
