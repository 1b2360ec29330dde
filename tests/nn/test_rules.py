"""mutate rules: timm and torchvision CNNs become OFA/BINAS spaces whose default arch is the original model."""

from __future__ import annotations

import copy
import functools
import sys
from pathlib import Path

import lightning.pytorch as pl
import pytest
import timm
import torch
import torchvision
from hypothesis import given, settings
from hypothesis import strategies as st
from timm.layers import BatchNormAct2d
from timm.models import _efficientnet_blocks as efficientnet
from timm.models import resnet as timm_resnet
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from torchvision.models import mobilenetv2
from torchvision.models import resnet as torchvision_resnet

import lightning_nas as ln
from lightning_nas import rules
from lightning_nas.callbacks import UniformSampling
from lightning_nas.nn import DepthChoice, ElasticBatchNormAct2d, ElasticConv2d, OpChoice, mutate
from lightning_nas.profiling.counters import HostReadCounter

sys.path.insert(0, str(Path(__file__).parent))
from batch_norm import randomise_batch_norm  # noqa: E402

MODELS = {
    "mobilenetv3_large_100": lambda: timm.create_model("mobilenetv3_large_100", pretrained=False),
    "efficientnet_b0": lambda: timm.create_model("efficientnet_b0", pretrained=False),
    "resnet18": lambda: timm.create_model("resnet18", pretrained=False),
    "torchvision_mobilenet_v2": lambda: torchvision.models.mobilenet_v2(),
}
# What the preset makes on each model: decision counts by kind. Worked out by hand from the
# architectures: mobilenetv3_large has 1 depthwise-separable + 14 inverted-residual blocks (8 with
# SE; runs of 2, 3 and 2 skippable blocks), efficientnet_b0 1 + 15 (all with SE; runs of 1, 1, 2, 2,
# 3 and 0), resnet18 8 basic blocks (layer1 is a run of 2; layers 2-4 a run of 1 after a strided
# block), mobilenet_v2 17 inverted residuals (16 with an expansion conv; runs 1, 2, 3, 2, 2).
EXPECTED_DECISIONS = {
    "mobilenetv3_large_100": {"kernel_size": 15, "width": 14, "se": 8, "depth": 3},
    "efficientnet_b0": {"kernel_size": 16, "width": 15, "se": 16, "depth": 3},
    "resnet18": {"width": 8, "depth": 1},
    "torchvision_mobilenet_v2": {"kernel_size": 17, "width": 16, "depth": 4},
}


@functools.cache
def _pristine(name: str) -> nn.Module:
    torch.manual_seed(0)
    model = MODELS[name]().eval()
    randomise_batch_norm(model)
    return model


def _model(name: str) -> nn.Module:
    """A fresh copy of the named model with random weights and non-trivial BN statistics."""
    return copy.deepcopy(_pristine(name))


def _kind(label: str) -> str:
    return "se" if label.endswith(".se") else label.rsplit(".", 1)[-1]


def _kinds(space) -> dict[str, int]:
    counts: dict[str, int] = {}
    for label in space.labels:
        counts[_kind(label)] = counts.get(_kind(label), 0) + 1
    return counts


def _no_lightning_nas_modules(module: nn.Module) -> bool:
    return not any(type(m).__module__.startswith("lightning_nas") for m in module.modules())


X = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
# Train mode normalises with batch statistics: the last stages (1x1 pixels at 32x32) would see two
# values per channel, an ill-conditioned variance that amplifies float rounding. 64x64 gives 8.
X_TRAIN = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))


# -- the preset on whole models ------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(MODELS))
def test_binas_preset_default_arch_is_the_original_in_eval_and_train_mode(name):
    model = _model(name)
    reference = copy.deepcopy(model)
    report: list[ln.nn.Replacement] = []
    supernet = ln.Supernet(mutate(model, preset="binas", report=report)).eval()
    assert _kinds(supernet.space) == EXPECTED_DECISIONS[name]
    assert supernet.space.size > 1000
    assert supernet.space.default() == {d.label: d.default for d in supernet.space.decisions}
    assert report and all(r.rule.startswith("binas(") for r in report)
    with torch.no_grad():
        torch.testing.assert_close(supernet(X), reference(X), atol=1e-5, rtol=1e-5)
    # Train mode: batch statistics, and the running statistics they update.
    supernet.train()
    reference.train()
    with torch.no_grad():
        torch.manual_seed(0)  # torchvision's classifier has dropout
        expected = reference(X_TRAIN)
        torch.manual_seed(0)
        torch.testing.assert_close(supernet(X_TRAIN), expected, atol=1e-4, rtol=1e-4)
    supernet.eval()
    reference.eval()
    with torch.no_grad():
        torch.testing.assert_close(supernet(X), reference(X), atol=1e-5, rtol=1e-5)


def test_running_statistics_follow_the_original_after_a_train_step():
    # Without reordering the elastic norms share the original BN buffers: compare them pairwise.
    model = _model("mobilenetv3_large_100")
    reference = copy.deepcopy(model)
    pairs = [(m, r) for m, r in zip(model.modules(), reference.modules()) if isinstance(m, nn.BatchNorm2d)]
    supernet = ln.Supernet(mutate(model, rules=[rules.binas(reorder=False)])).train()
    reference.train()
    with torch.no_grad():
        torch.testing.assert_close(supernet(X_TRAIN), reference(X_TRAIN), atol=1e-4, rtol=1e-4)
    for m, r in pairs:
        torch.testing.assert_close(m.running_mean, r.running_mean, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(m.running_var, r.running_var, atol=1e-6, rtol=1e-5)
        assert m.num_batches_tracked == r.num_batches_tracked == 1


@pytest.mark.parametrize("name", list(MODELS))
def test_export_equals_the_supernet_and_is_the_models_own_classes(name):
    supernet = ln.Supernet(mutate(_model(name), preset="binas")).eval()
    block_types = {type(m) for m in _pristine(name).modules() if rules_block(m)}
    for arch in (supernet.space.smallest(), supernet.space.sample(0)):
        with torch.no_grad(), supernet.activated(arch):
            expected = supernet(X)
        exported = supernet.export(arch).eval()
        assert type(exported) is type(_pristine(name))
        assert _no_lightning_nas_modules(exported)
        assert {type(m) for m in exported.modules() if rules_block(m)} == block_types
        with torch.no_grad():
            torch.testing.assert_close(exported(X), expected, atol=1e-5, rtol=1e-5)
    # Train mode (batch statistics) too, on the last arch.
    supernet.train()
    exported.train()
    with torch.no_grad(), supernet.activated(arch):
        torch.manual_seed(0)  # torchvision's classifier has dropout
        expected = supernet(X_TRAIN)
        torch.manual_seed(0)
        torch.testing.assert_close(exported(X_TRAIN), expected, atol=1e-4, rtol=1e-4)


def rules_block(module: nn.Module) -> bool:
    return ln.nn.blocks.block_family(module) is not None


@pytest.mark.parametrize("name", ["mobilenetv3_large_100", "resnet18"])
def test_exported_subnets_pass_torch_export(name):
    supernet = ln.Supernet(mutate(_model(name), preset="binas")).eval()
    arch = supernet.space.sample(3)
    exported = supernet.export(arch).eval()
    if name.startswith("mobilenet"):
        assert any(type(m) is BatchNormAct2d for m in exported.modules())  # timm's own norm-act layers
    program = torch.export.export(exported, (X[:1],))
    with torch.no_grad():
        torch.testing.assert_close(program.module()(X[:1]), exported(X[:1]), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["mobilenetv3_large_100", "resnet18"])
def test_per_example_mode_gives_each_row_its_own_subnet(name):
    supernet = ln.Supernet(mutate(_model(name), preset="binas")).eval()
    archs = [supernet.space.smallest(), supernet.space.default()] + [supernet.space.sample(i) for i in range(4)]
    x = torch.randn(len(archs), 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        with supernet.activated(archs):
            rows = supernet(x)
        for i, arch in enumerate(archs):
            with supernet.activated(arch):
                torch.testing.assert_close(rows[i : i + 1], supernet(x[i : i + 1]), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["mobilenetv3_large_100", "resnet18", "torchvision_mobilenet_v2"])
def test_per_example_static_shapes_equal_grouped_rows_without_host_reads(name):
    """With static shapes a decorated model's per-example training step reads nothing on the host
    (SE on/off runs every candidate on every row, stage depths run every block on every row with the
    stopped rows out of the blocks' norms, the output norms included) and computes what grouping the
    rows by candidate computes: outputs, gradients, running statistics. Float64: batch statistics
    over a few rows amplify float32 rounding."""
    static = ln.Supernet(mutate(_model(name), preset="binas")).double().train()
    static.static_shapes = True
    grouped = copy.deepcopy(static)
    grouped.static_shapes = False
    n = 6
    indices = static.space.sample_indices(n, 0)
    assert any(len(set(v.tolist())) > 1 for label, v in indices.items() if label.endswith("depth"))
    x = torch.randn(n, 3, 64, 64, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    results = []
    for net in (static, grouped):
        net.activate_indices(indices)
        torch.manual_seed(0)  # torchvision's classifier has dropout
        with HostReadCounter() as reads:
            out = net(x)
            (out * torch.linspace(-1, 1, out.shape[1], dtype=out.dtype)).sum().backward()
        results.append((out.detach(), {k: p.grad for k, p in net.named_parameters() if p.grad is not None}, reads.total))
    (out_s, grads_s, reads_s), (out_g, grads_g, reads_g) = results
    assert reads_s == 0 and reads_g > 0
    torch.testing.assert_close(out_s, out_g, atol=1e-10, rtol=1e-9)
    for key in grads_s.keys() | grads_g.keys():  # a block no row reaches: no gradient grouped, zero static
        zero = torch.zeros_like(grads_s.get(key, grads_g.get(key)))
        torch.testing.assert_close(grads_s.get(key, zero), grads_g.get(key, zero), atol=1e-9, rtol=1e-8, msg=key)
    for (key, a), b in zip(static.named_buffers(), grouped.buffers()):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-10, msg=key)


def test_uniform_per_example_sampling_trains_the_preset_model():
    class Classifier(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = ln.Supernet(mutate(timm.create_model("mobilenetv3_small_050", pretrained=False, num_classes=3), preset="binas"))

        def training_step(self, batch, batch_idx):
            x, y = batch
            return nn.functional.cross_entropy(self.net(x), y)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)

    torch.manual_seed(0)
    data = TensorDataset(torch.randn(8, 3, 32, 32), torch.randint(0, 3, (8,)))
    model = Classifier()
    before = {k: v.clone() for k, v in model.net.state_dict().items()}
    trainer = pl.Trainer(
        max_steps=2, callbacks=[UniformSampling(0, per_sample=True)], logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
        accelerator="cpu", devices=1,
    )
    trainer.fit(model, DataLoader(data, batch_size=4))
    assert trainer.global_step == 2
    after = model.net.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before if before[k].is_floating_point())
    assert all(torch.isfinite(v).all() for v in after.values() if v.is_floating_point())


# -- each block type --------------------------------------------------------------------------------


def _blocks() -> dict[str, nn.Module]:
    """One small instance of every supported block type with a hidden width (16 channels in and out)."""
    hard_se = functools.partial(efficientnet.SqueezeExcite, gate_layer=nn.Hardsigmoid)
    return {
        "timm_inverted_residual": efficientnet.InvertedResidual(16, 16, exp_ratio=4.0, act_layer=nn.Hardswish, se_layer=hard_se),
        "timm_edge_residual": efficientnet.EdgeResidual(16, 16, exp_ratio=3.0, act_layer=nn.SiLU, se_layer=efficientnet.SqueezeExcite),
        "timm_basic_block": timm_resnet.BasicBlock(16, 16),
        "timm_bottleneck": timm_resnet.Bottleneck(16, 4),
        "torchvision_inverted_residual": mobilenetv2.InvertedResidual(16, 16, stride=1, expand_ratio=6),
        "torchvision_basic_block": torchvision_resnet.BasicBlock(16, 16),
        "torchvision_bottleneck": torchvision_resnet.Bottleneck(16, 4),
    }


BLOCK_NAMES = list(_blocks())


def _block_model(name: str, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    model = nn.Sequential(_blocks()[name]).eval()  # the root is never offered to rules: wrap the block
    randomise_batch_norm(model)  # also undoes zero-initialised last norms, which would hide the hidden width
    return model


@settings(max_examples=6, deadline=None)
@given(name=st.sampled_from(BLOCK_NAMES), seed=st.integers(0, 2**16), reorder=st.booleans())
def test_hidden_width_keeps_the_block_function_and_ranks_channels(name, seed, reorder):
    model = _block_model(name, seed)
    reference = copy.deepcopy(model)
    supernet = ln.Supernet(mutate(model, rules=[rules.elastic_expansion((0.25, 0.5, 1.0), divisor=2, reorder=reorder)])).eval()
    [width] = [d for d in supernet.space.decisions if d.label == "0.width"]
    x = torch.randn(2, 16, 8, 8, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        torch.testing.assert_close(supernet(x), reference(x), atol=1e-5, rtol=1e-5)
    # The reference block is untouched (mutate builds new tensors to reorder).
    for p, q in zip(reference.parameters(), _block_model(name, seed).parameters()):
        assert torch.equal(p, q)
    # Oracle for the ordering: the narrowest subnet keeps the most important channels (L1 norm of
    # the projection's weight over them) when reordering, the leading ones otherwise.
    narrow = supernet.export({"0.width": width.values[0]})[0]
    projection = {"timm_basic_block": "conv2", "torchvision_basic_block": "conv2", "timm_bottleneck": "conv3",
                  "torchvision_bottleneck": "conv3", "torchvision_inverted_residual": "conv.2"}.get(name, "conv_pwl")
    original = reference[0].get_submodule(projection).weight.abs().sum((0, 2, 3))
    kept = narrow.get_submodule(projection).weight.abs().sum((0, 2, 3))
    expected = original.sort(descending=True).values[: width.values[0]] if reorder else original[: width.values[0]]
    torch.testing.assert_close(kept, expected)
    assert type(narrow) is type(reference[0]) and _no_lightning_nas_modules(narrow)


@settings(max_examples=6, deadline=None)
@given(name=st.sampled_from(BLOCK_NAMES), seed=st.integers(0, 2**16))
def test_per_example_widths_kernels_and_se_on_every_block_type(name, seed):
    model = _block_model(name, seed)
    model.append(_block_model(name, seed + 1)[0])  # a second, skippable block: depth 1 or 2
    supernet = ln.Supernet(mutate(model, rules=[rules.binas(expansion=(0.25, 0.5, 1.0), divisor=2)])).eval()
    assert any(label.endswith(".width") for label in supernet.space.labels)
    archs = [supernet.space.sample(seed + i) for i in range(5)] + [supernet.space.smallest()]
    x = torch.randn(len(archs), 16, 8, 8, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        with supernet.activated(archs):
            rows = supernet(x)
        for i, arch in enumerate(archs):
            exported = supernet.export(arch).eval()
            torch.testing.assert_close(rows[i : i + 1], exported(x[i : i + 1]), atol=1e-4, rtol=1e-4)


def test_blocks_without_a_hidden_width_keep_it_but_get_kernels_and_se():
    ds = efficientnet.DepthwiseSeparableConv(8, 8, se_layer=efficientnet.SqueezeExcite)
    no_expansion = mobilenetv2.InvertedResidual(8, 8, stride=1, expand_ratio=1)
    model = nn.Sequential(ds, no_expansion).eval()
    reference = copy.deepcopy(model)
    with pytest.raises(ValueError, match=r"elastic_expansion.*matched no module.*hidden width"):
        mutate(model, rules=[rules.elastic_expansion()])
    supernet = ln.Supernet(mutate(model, rules=[rules.binas(min_depth=None)]))
    assert sorted(supernet.space.labels) == ["0.conv_dw.kernel_size", "0.se", "1.conv.0.0.kernel_size"]
    assert isinstance(model[0].se, OpChoice) and model[0] is ds  # DS block kept, its layers replaced
    x = torch.randn(2, 8, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(supernet(x), reference(x), atol=1e-6, rtol=1e-6)


def test_batch_norm_act_exports_as_timm_layer_with_the_same_keys():
    block = efficientnet.InvertedResidual(8, 8, exp_ratio=4.0)
    model = nn.Sequential(block).eval()
    keys = set(model.state_dict())
    supernet = ln.Supernet(mutate(model, rules=[rules.elastic_expansion(reorder=False)]))
    assert isinstance(model[0].bn1, ElasticBatchNormAct2d) and model[0] is not block  # a copy of the block
    assert type(block.bn1) is BatchNormAct2d  # the original block object is not edited
    exported = supernet.export({"0.width": 16})
    assert type(exported[0].bn1) is BatchNormAct2d and exported[0].bn1.num_features == 16
    assert set(exported.state_dict()) == keys  # same layers, same state-dict keys as the original


# -- kernels ------------------------------------------------------------------------------------------


def test_zero_padded_kernels_keep_the_output_and_center_the_original():
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 4, 3, padding=1, groups=4)
    model = nn.Sequential(conv, nn.ReLU()).eval()
    reference = copy.deepcopy(model)
    supernet = ln.Supernet(mutate(model, rules=[rules.elastic_kernel([3, 5, 7], grow="zero_pad")]))
    assert supernet.space["0.kernel_size"].values == (3, 5, 7) and supernet.space["0.kernel_size"].default == 3
    x = torch.randn(2, 4, 9, 9)
    with torch.no_grad():
        torch.testing.assert_close(supernet(x), reference(x))
        big = supernet.export({"0.kernel_size": 7})[0]
        assert big.weight.shape == (4, 1, 7, 7) and big.padding == (3, 3)
        torch.testing.assert_close(big.weight[:, :, 2:5, 2:5], conv.weight)
        torch.testing.assert_close(big.weight.abs().sum(), conv.weight.abs().sum())  # zeros around the original
        torch.testing.assert_close(big(x), conv(x))


def test_larger_kernels_are_refused_or_explained():
    model = torchvision.models.mobilenet_v2()
    with pytest.raises(ValueError, match=r"elastic_kernel\(\[5, 7\]\) matched no module of MobileNetV2.*kernels \[1, 3\].*grow='zero_pad'"):
        mutate(model, rules=[rules.elastic_kernel([5, 7])])
    with pytest.raises(ValueError, match=r"'features\.0\.0' has a 3x3 kernel, smaller than the candidates \[5\]"):
        mutate(model, rules=[rules.elastic_kernel([3, 5], grow="error")])
    assert _no_lightning_nas_modules(model)
    with pytest.raises(ValueError, match="grow"):
        rules.elastic_kernel([3], grow="pad")


# -- depth -------------------------------------------------------------------------------------------------


def test_depth_structure_on_flat_and_staged_models():
    mobilenet = mutate(_model("torchvision_mobilenet_v2"), rules=[rules.elastic_depth()])
    depth = {label: m for label, m in ((m.label, m) for m in mobilenet.modules() if isinstance(m, DepthChoice))}
    assert sorted(depth) == ["features.12-13.depth", "features.15-16.depth", "features.5-6.depth", "features.8-10.depth"]
    assert depth["features.8-10.depth"].choice.values == (1, 2, 3)
    assert mobilenet.features._modules["8"] is depth["features.8-10.depth"] and "9" not in mobilenet.features._modules
    resnet = mutate(_model("resnet18"), rules=[rules.elastic_depth(min_depth=0)])
    assert isinstance(resnet.layer1, DepthChoice) and resnet.layer1.label == "layer1.depth"  # the whole stage
    assert isinstance(resnet.layer2[1], DepthChoice) and resnet.layer2[1].choice.values == (0, 1)
    for m in list(mobilenet.modules()) + list(resnet.modules()):  # never nested, blocks are direct children
        if isinstance(m, DepthChoice):
            assert all(not isinstance(b, DepthChoice) and rules_block(b) for b in m.blocks)
    supernet = ln.Supernet(resnet).eval()
    exported = supernet.export(supernet.space.default())
    assert type(exported.layer1) is nn.Sequential and len(exported.layer1) == 2
    layer1_keys = {k for k in _pristine("resnet18").state_dict() if k.startswith("layer1.")}
    assert {k for k in exported.state_dict() if k.startswith("layer1.")} == layer1_keys  # a whole-stage DepthChoice exports as the stage


def test_depth_spans_must_keep_their_shape():
    model = torchvision.models.mobilenet_v2()
    with pytest.raises(ValueError, match=r"features\.4 maps \(B, 24, H, W\) -> \(B, 32, H/2, W/2\)"):
        mutate(model, rules=[rules.elastic_depth(spans=[["features.3", "features.4"]])])
    with pytest.raises(ValueError, match=r"cannot tell whether 0\.2 \(ReLU\) keeps its input shape"):
        stage = nn.Sequential(torchvision_resnet.BasicBlock(4, 4), torchvision_resnet.BasicBlock(4, 4), nn.ReLU())
        mutate(nn.Sequential(stage), rules=[rules.elastic_depth(spans=[["0.0", "0.1", "0.2"]])])
    with pytest.raises(ValueError, match="consecutive"):
        mutate(model, rules=[rules.elastic_depth(spans=[["features.5", "features.9"]])])
    assert _no_lightning_nas_modules(model)
    supernet = ln.Supernet(mutate(model, rules=[rules.elastic_depth(spans=[["features.5", "features.6"]])]))
    assert supernet.space.labels == ["features.depth"] and supernet.space["features.depth"].values == (1, 2)


# -- bad input -----------------------------------------------------------------------------------------


def test_errors_name_the_module_and_leave_the_model_unchanged():
    def check_unchanged(model: nn.Module, reference: nn.Module) -> None:
        assert [type(m) for m in model.modules()] == [type(m) for m in reference.modules()]
        for (k, v), (k2, v2) in zip(model.state_dict().items(), reference.state_dict().items()):
            assert k == k2 and torch.equal(v, v2)

    nothing = nn.Sequential(nn.Linear(2, 2), nn.ReLU())
    with pytest.raises(ValueError, match=r"rule binas\(.*\) matched no module of Sequential"):
        mutate(nothing, preset="binas")
    with pytest.raises(ValueError, match=r"unknown `preset` 'ofa'"):
        mutate(nothing, preset="ofa")

    # A grouped (ResNeXt) bottleneck: its middle conv has no elastic form.
    resnext = nn.Sequential(torchvision_resnet.BasicBlock(32, 32), torchvision_resnet.Bottleneck(32, 8, groups=2, base_width=128))
    reference = copy.deepcopy(resnext)
    with pytest.raises(ValueError, match=r"1\.conv2 is a grouped convolution \(groups=2"):
        mutate(resnext, preset="binas")
    check_unchanged(resnext, reference)

    # A variant of a supported block.
    class MyInvertedResidual(efficientnet.InvertedResidual):
        """A subclass may use its layers differently (timm's CondConvResidual does)."""

    variant = nn.Sequential(efficientnet.InvertedResidual(8, 8, exp_ratio=2.0), MyInvertedResidual(8, 8, exp_ratio=2.0))
    reference = copy.deepcopy(variant)
    with pytest.raises(ValueError, match=r"'1' is a MyInvertedResidual, a variant of .*InvertedResidual"):
        mutate(variant, rules=[rules.elastic_expansion()])
    check_unchanged(variant, reference)
    mutate(variant, rules=[rules.elastic_expansion(where=lambda path, block: path != "1")])  # left out: fine
    with pytest.raises(ValueError, match=r"0\.conv_pw is already elastic"):
        mutate(variant, rules=[rules.elastic_expansion()])  # mutating twice

    # An activation on the hidden width that does not keep zeros at zero.
    sigmoid = nn.Sequential(efficientnet.InvertedResidual(8, 8, exp_ratio=2.0, act_layer=nn.Sigmoid))
    reference = copy.deepcopy(sigmoid)
    with pytest.raises(ValueError, match=r"'0\.bn1\.act' \(Sigmoid\) does not map 0 to 0"):
        mutate(sigmoid, rules=[rules.elastic_expansion()])
    check_unchanged(sigmoid, reference)

    # A timm "same"-padded conv (Conv2dSame) in a block.
    tf_model = timm.create_model("tf_mobilenetv3_small_minimal_100", pretrained=False)
    with pytest.raises(ValueError, match=r"conv_dw is a Conv2dSame"):
        mutate(tf_model, rules=[rules.elastic_expansion()])

    with pytest.raises(ValueError, match="ratios"):
        rules.elastic_expansion((0.5, 1.5))
    with pytest.raises(ValueError, match="min_depth"):
        rules.elastic_depth(min_depth=-1)


def test_rules_see_the_modules_of_replacements_under_their_original_paths():
    model = mutate(_model("resnet18"), rules=[rules.elastic_depth(), rules.elastic_expansion()], report=(report := []))
    paths = [r.path for r in report]
    assert paths[:2] == ["layer1", "layer1.0"] and "layer1.1" in paths  # blocks moved into the DepthChoice keep their paths
    assert isinstance(model.layer1.blocks[0].conv1, ElasticConv2d)
    assert model.layer1.blocks[0].conv1.out_channels.label == "layer1.0.width"
