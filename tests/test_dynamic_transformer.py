"""DynamicNetwork on existing transformers decorated by ``mutate(..., preset="autoformer")``: the held layers
of an ``ElasticLayers`` stack (depth as a prefix, "skip any layer", or no depth decision) are swapped, added and
removed in the running timm ``VisionTransformer`` / Hugging Face ``GPT2LMHeadModel``; after every budget the
running network computes what the supernet's export of the solved arch computes, its Hugging Face config and
``layer_idx`` describe the kept layers, and structures it cannot hold are refused by name."""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch
from torch import nn

import lightning_nas as ln
from lightning_nas.bilinear import BilinearTable
from lightning_nas.dynamic import DynamicNetwork
from lightning_nas.nn import mutate
from lightning_nas.nn.transformer_rules import autoformer
from lightning_nas.spaces.staged import Stage, StagedSpace

torch.set_num_threads(1)
VOCAB, SEQ = 64, 10


def tables(staged: StagedSpace, seed: int) -> tuple[BilinearTable, BilinearTable]:
    """Accuracy and latency growing with each block's size (its decisions' values over their largest), plus noise,
    and a latency per kept layer: a trade-off whose optimum moves with the budget."""
    rng = np.random.default_rng(seed)
    shape = (staged.num_stages, staged.max_blocks, staged.num_configs)
    size = np.zeros(shape)
    for s, st in enumerate(staged.stages):
        for b, labels in enumerate(st.block_labels):
            largest = [max(staged.space[lab].values) for lab in labels]
            for c, values in enumerate(st.configs[b]):
                size[s, b, c] = 1 + sum(v / m for v, m in zip(values, largest))
    accuracy = BilinearTable(staged, 0.5, 0.02 * size + rng.normal(0, 0.003, shape), name="accuracy")
    latency = BilinearTable(staged, 1.0, size + rng.uniform(0, 0.2, shape), name="latency", unit="ms")
    return accuracy, latency


def vit_supernet() -> ln.Supernet:
    torch.manual_seed(0)
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=8, patch_size=4, in_chans=1,
                            embed_dim=32, depth=3, num_heads=2, num_classes=10)
    return ln.Supernet(mutate(vit, preset="autoformer")).eval()


def gpt2_supernet(depth: str | None) -> ln.Supernet:
    transformers = pytest.importorskip("transformers")
    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=3, n_embd=32, n_head=4, vocab_size=VOCAB, n_positions=SEQ, bos_token_id=0, eos_token_id=0)
    return ln.Supernet(mutate(transformers.GPT2LMHeadModel(config), rules=[autoformer(depth=depth)])).eval()


def run(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        out = model(x)  # GPT-2 in eval mode: use_cache=True, so every layer_idx must index its own cache slot
    return out.logits if hasattr(out, "logits") else out


def check_running(dynamic: DynamicNetwork, supernet: ln.Supernet, x: torch.Tensor) -> None:
    exported = supernet.export(dynamic.arch).eval()
    assert torch.equal(run(dynamic, x), run(exported, x))
    config = getattr(dynamic.network, "config", None)
    if config is not None:  # the running model describes its layers as the export does
        for key in ("num_hidden_layers", "layer_num_heads", "layer_intermediate_sizes", "source_layers", "n_inner"):
            assert getattr(config, key) == getattr(exported.config, key), key
        layers = dynamic.network.transformer.h
        assert [layer.attn.layer_idx for layer in layers] == list(range(len(layers)))
        assert all(m.config is config for m in dynamic.network.modules() if hasattr(m, "config"))


CASES = {
    "vit-prefix": (vit_supernet, lambda: torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(1))),
    "gpt2-skip": (lambda: gpt2_supernet("skip"), lambda: torch.randint(0, VOCAB, (3, SEQ), generator=torch.Generator().manual_seed(1))),
    "gpt2-prefix": (lambda: gpt2_supernet("prefix"), lambda: torch.randint(0, VOCAB, (3, SEQ), generator=torch.Generator().manual_seed(1))),
    "gpt2-fixed-depth": (lambda: gpt2_supernet(None), lambda: torch.randint(0, VOCAB, (3, SEQ), generator=torch.Generator().manual_seed(1))),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_running_network_equals_the_export_across_budget_switches(case):
    build, inputs = CASES[case]
    supernet, x = build(), inputs()
    staged = StagedSpace.from_supernet(supernet)
    accuracy, latency = tables(staged, seed=0)
    lo, hi = latency.extreme(largest=False)[0], latency.extreme(largest=True)[0]
    dynamic = DynamicNetwork(supernet, accuracy, latency, {"latency": hi}, blocks_per_node=3).eval()
    check_running(dynamic, supernet, x)
    archs = [dynamic.arch]
    for fraction in (0.35, 0.0, 0.7, 1.0):
        bound = lo + fraction * (hi - lo)
        before = {id(m) for m in dynamic.network.modules()}
        report = dynamic.set_budget({"latency": bound})
        assert report.result.resources["latency"] <= bound + 1e-7
        check_running(dynamic, supernet, x)
        old_configs, old_depths = dynamic.staged.indices(archs[-1])
        new_configs, new_depths = dynamic.staged.indices(report.arch)
        # A position is reported exactly when its module changed: it starts or stops running, or its config changed.
        expected = set()
        for s, st in enumerate(dynamic.staged.stages):
            d_old, d_new = st.depths[old_depths[s]], st.depths[new_depths[s]]
            expected |= {(s, b) for b in range(max(d_old, d_new)) if b >= min(d_old, d_new) or old_configs[s, b] != new_configs[s, b]}
        assert set(report.changed) == expected
        assert not expected or {id(m) for m in dynamic.network.modules()} != before
        archs.append(report.arch)
    assert len({str(sorted(a.items())) for a in archs}) >= 3  # the budgets really moved the arch


def test_skipped_layers_come_back_in_their_order():
    supernet = gpt2_supernet("skip")
    staged = StagedSpace.from_supernet(supernet)
    accuracy, latency = tables(staged, seed=1)
    # Layer 1 is nearly free and layers 0 and 2 cost much: a tight budget keeps layer 1 alone.
    latency.block[[0, 2]] *= 20
    dynamic = DynamicNetwork(supernet, accuracy, latency, {"latency": latency.extreme(largest=True)[0]}, blocks_per_node=2).eval()
    x = CASES["gpt2-skip"][1]()
    report = dynamic.set_budget({"latency": latency.constant + latency.block[1].max() + 1e-6})
    keeps = [report.arch[f"transformer.h.{i}.keep"] for i in range(3)]
    assert keeps == [False, True, False] and dynamic.network.config.source_layers == [1]
    check_running(dynamic, supernet, x)
    dynamic.set_budget({"latency": latency.extreme(largest=True)[0]})
    assert dynamic.network.config.source_layers == [0, 1, 2]
    check_running(dynamic, supernet, x)


def test_a_depth_block_outside_any_stack_is_refused():
    # A hand-made structure whose depth decision adds blocks that are not a DepthChoice's or an ElasticLayers' own.
    blocks = [nn.Sequential(nn.Conv2d(3, 3, 1), ln.OpChoice({"a": nn.Identity(), "b": nn.ReLU()}, f"op{i}")) for i in range(2)]
    supernet = ln.Supernet(nn.Sequential(ln.DepthChoice(blocks, [1, 2], "depth")))
    space = supernet.space
    stage = Stage("depth", (1, 2), (("op0",), ("op1",)), ((("a",), ("b",)),) * 2, ("0.blocks.0.1", "0.blocks.1.1"))
    staged = StagedSpace(space, [stage])
    accuracy = BilinearTable(staged, 0.5, np.ones((1, 2, 2)), name="accuracy")
    latency = BilinearTable(staged, 1.0, np.ones((1, 2, 2)), name="latency")
    with pytest.raises(ValueError, match="neither a block of a DepthChoice nor a layer of an ElasticLayers"):
        DynamicNetwork(supernet, accuracy, latency, {"latency": 10.0}, blocks_per_node=2)


def test_a_peak_memory_budget_is_a_maximum():
    from lightning_nas.profiling.memory import build_peak_memory_table, peak_inference_bytes

    supernet = vit_supernet()
    staged = StagedSpace.from_supernet(supernet)
    accuracy, latency = tables(staged, seed=2)
    peak = build_peak_memory_table(supernet, (1, 8, 8), batch_size=3)
    x = CASES["vit-prefix"][1]()
    dynamic = DynamicNetwork(supernet, accuracy, [latency, peak], {}, blocks_per_node=3).eval()
    largest = peak_inference_bytes(dynamic.network, x)
    for bound in (largest - 1, largest * 0.8):
        report = dynamic.set_budget({"peak_memory": bound})
        measured = peak_inference_bytes(dynamic.network, x)
        assert measured == report.result.resources["peak_memory"] <= bound
        check_running(dynamic, supernet, x)


def test_a_stage_switched_to_depth_zero_and_back():
    torch.manual_seed(0)
    blocks = [ln.OpChoice({"conv": nn.Conv2d(4, 4, 3, padding=1), "pool": nn.AvgPool2d(3, 1, 1)}, f"op{i}") for i in range(2)]
    supernet = ln.Supernet(nn.Sequential(nn.Conv2d(3, 4, 1), ln.DepthChoice(blocks, [0, 1, 2], "depth"), nn.ReLU())).eval()
    staged = StagedSpace.from_supernet(supernet)
    accuracy = BilinearTable(staged, 0.5, np.array([[[0.2, 0.1], [0.2, 0.1]]]), np.array([[0.0, 0.01, 0.02]]), name="accuracy")
    latency = BilinearTable(staged, 1.0, np.array([[[3.0, 1.0], [3.0, 1.0]]]), name="latency")
    x = torch.randn(2, 3, 8, 8)
    dynamic = DynamicNetwork(supernet, accuracy, latency, {"latency": 1.5}, blocks_per_node=2).eval()
    assert dynamic.arch["depth"] == 0
    for bound, depth in ((10.0, 2), (1.5, 0), (2.5, 1)):
        report = dynamic.set_budget({"latency": bound})
        assert report.arch["depth"] == depth
        with torch.no_grad():
            assert torch.equal(dynamic(x), supernet.export(report.arch)(x))


def test_a_width_shared_by_every_layer_is_refused_by_name():
    from lightning_nas.spaces import create_space

    supernet = create_space("vit-tiny")
    accuracy, latency = tables(StagedSpace.from_supernet(supernet), seed=0)
    with pytest.raises(ValueError, match=r"decisions \['embed_dim'\] are read by several blocks"):
        DynamicNetwork(supernet, accuracy, latency, {"latency": 100.0}, blocks_per_node=2)
