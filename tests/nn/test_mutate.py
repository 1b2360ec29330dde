"""``mutate``: existing model instances become supernets whose default arch is the original model."""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import pytest
import timm
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import lightning_nas as ln
from lightning_nas.nn import ElasticConv2d, OpChoice, elastic_kernel, mutate

sys.path.insert(0, str(Path(__file__).parent))
from batch_norm import randomise_batch_norm  # noqa: E402


def _check_export(supernet: ln.Supernet, arch: dict, x: torch.Tensor) -> torch.Tensor:
    """The exported subnet computes what the supernet computes under ``arch``; returns that output."""
    with torch.no_grad(), supernet.activated(arch):
        expected = supernet(x)
    exported = supernet.export(arch).eval()
    assert not any(isinstance(m, (ln.nn.Mutable, ln.Choice)) for m in exported.modules())
    with torch.no_grad():
        torch.testing.assert_close(exported(x), expected, atol=1e-5, rtol=1e-5)
    return expected


def test_timm_mobilenet_default_arch_is_the_original():
    torch.manual_seed(0)
    model = timm.create_model("mobilenetv3_small_050", pretrained=False).eval()
    randomise_batch_norm(model)
    reference = copy.deepcopy(model)
    # blocks.2.1 is a stride-1 residual block (same input and output shape): Identity can stand in for it.
    assert model.get_submodule("blocks.2.1").has_skip
    out = mutate(
        model,
        ops={"blocks.2.1": [nn.Identity()]},
        rules=[elastic_kernel([3, 5], where=lambda p, m: m.groups > 1)],
    )
    assert out is model
    supernet = ln.Supernet(model).eval()
    labels = supernet.space.labels
    assert len(labels) > 1
    assert "blocks.2.1" in labels and "blocks.2.1.conv_dw.kernel_size" in labels  # inside the original candidate
    assert "blocks.2.0.conv_dw.kernel_size" in labels
    assert all(supernet.space[label].values == (3, 5) for label in labels if label.endswith(".kernel_size"))
    assert not any(label.startswith(("blocks.0", "blocks.1")) for label in labels)  # 3x3 convs stay as they are
    assert type(model.conv_stem) is nn.Conv2d  # not depthwise: filtered out by `where`

    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = reference(x)
        assert torch.equal(supernet(x), expected)

    small = {label: 3 if label.endswith(".kernel_size") else 1 for label in labels}
    assert not torch.allclose(_check_export(supernet, small, x), expected)
    _check_export(supernet, supernet.space.sample(0), x)


def test_small_cnn_default_arch_and_export():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 5, padding=2), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 5, stride=2, padding=2, groups=8, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
        nn.Conv2d(6, 6, 1),  # 1x1: a single candidate, left alone
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 4),
    ).eval()
    randomise_batch_norm(model)
    reference = copy.deepcopy(model)
    mutate(model, ops={"8": {"hswish": nn.Hardswish(), "id": nn.Identity()}}, rules=[elastic_kernel([1, 3, 5])], label_prefix="cnn.")
    assert isinstance(model[0], ElasticConv2d) and isinstance(model[3], ElasticConv2d) and type(model[9]) is nn.Conv2d
    assert isinstance(model[8], OpChoice) and not model[8].training  # takes the eval mode of what it replaces
    supernet = ln.Supernet(model).eval()
    assert supernet.space.default() == {"cnn.0.kernel_size": 5, "cnn.3.kernel_size": 5, "cnn.6.kernel_size": 3, "cnn.8": "original"}
    assert supernet.space["cnn.0.kernel_size"].values == (1, 3, 5)

    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        expected = reference(x)
        assert torch.equal(supernet(x), expected)
    _check_export(supernet, supernet.space.default(), x)
    for seed in range(3):
        _check_export(supernet, supernet.space.sample(seed), x)
    other = {"cnn.0.kernel_size": 1, "cnn.3.kernel_size": 3, "cnn.6.kernel_size": 1, "cnn.8": "hswish"}
    assert not torch.allclose(_check_export(supernet, other, x), expected)


def test_weights_are_shared_not_copied():
    conv = nn.Conv2d(3, 4, 5, padding=2)
    model = nn.Sequential(conv, nn.ReLU())
    mutate(model, rules=[elastic_kernel([3])])
    assert model[0].weight is conv.weight and model[0].bias is conv.bias
    assert len(list(model.parameters())) == 2


def test_nested_ops_paths_and_module_list():
    torch.manual_seed(0)

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layers = nn.ModuleList([nn.Sequential(nn.Conv2d(2, 2, 3, padding=1), nn.ReLU()) for _ in range(2)])

        def forward(self, x):
            for layer in self.layers:
                x = layer(x)
            return x

    model = Net()
    reference = copy.deepcopy(model)
    mutate(model, ops={"layers.1": [nn.Identity()], "layers.1.1": [nn.Tanh()], "layers.0.0": [nn.Conv2d(2, 2, 1)]})
    assert isinstance(model.layers[1], OpChoice) and isinstance(model.layers[1].candidates[0][1], OpChoice)
    supernet = ln.Supernet(model)
    assert sorted(supernet.space.labels) == ["layers.0.0", "layers.1", "layers.1.1"]
    x = torch.randn(1, 2, 5, 5)
    with torch.no_grad():
        assert torch.equal(supernet(x), reference(x))
        with supernet.activated({"layers.0.0": 0, "layers.1": 0, "layers.1.1": 1}):
            torch.testing.assert_close(supernet(x), torch.tanh(reference.layers[1][0](reference.layers[0](x))))


def test_shared_module_gets_one_shared_replacement():
    conv = nn.Conv2d(2, 2, 3, padding=1)
    model = nn.Sequential(conv, nn.ReLU(), conv)
    mutate(model, rules=[elastic_kernel([1, 3])])
    assert isinstance(model[0], ElasticConv2d) and model[0] is model[2]
    assert ln.Supernet(model).space.labels == ["0.kernel_size"]


def test_rules_skip_existing_mutables_and_conv_subclasses():
    class Conv2dSubclass(nn.Conv2d):
        pass

    existing = ln.OpChoice([nn.Conv2d(2, 2, 3, padding=1), nn.Identity()], "mine")
    model = nn.Sequential(existing, Conv2dSubclass(2, 2, 3, padding=1), nn.Conv2d(2, 2, 3, padding=0), nn.Conv2d(2, 2, 3, padding=1))
    mutate(model, rules=[elastic_kernel([1, 3])])
    assert model[0] is existing and type(existing.candidates[0]) is nn.Conv2d
    assert type(model[1]) is Conv2dSubclass  # exact type check
    assert type(model[2]) is nn.Conv2d  # no 'same' padding: a smaller kernel would change the output size
    assert isinstance(model[3], ElasticConv2d)


def test_first_rule_wins_and_rules_get_prefixed_paths():
    seen = []

    def record(path, module):
        seen.append(path)
        return module  # returning the module itself keeps it (and the next rule is tried)

    def relu_to_gelu(path, module):
        return nn.GELU() if isinstance(module, nn.ReLU) else None

    model = nn.Sequential(nn.Linear(2, 2), nn.Sequential(nn.ReLU(), nn.Linear(2, 2)))
    # strict=False: `record` and the Tanh rule never replace anything, on purpose.
    mutate(model, rules=[record, relu_to_gelu, lambda p, m: nn.Tanh() if isinstance(m, nn.ReLU) else None], label_prefix="net.", strict=False)
    assert seen == ["net.0", "net.1", "net.1.0", "net.1.1"]
    assert isinstance(model[1][0], nn.GELU)


def test_errors():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Sequential(nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1)))
    with pytest.raises(ValueError, match=r"'1\.3'.*did you mean '1\.1'"):
        mutate(model, ops={"1.3": [nn.Identity()]})
    with pytest.raises(ValueError, match="'blocks.9'"):
        mutate(model, ops={"blocks.9": [nn.Identity()]})
    with pytest.raises(ValueError, match="at least one alternative"):
        mutate(model, ops={"1.0": []})
    with pytest.raises(ValueError, match="at least one alternative"):
        mutate(model, ops={"1.0": {}})
    with pytest.raises(ValueError, match="wrap it in a list"):
        mutate(model, ops={"1.0": nn.Identity()})
    with pytest.raises(ValueError, match="must be an nn.Module"):
        mutate(model, ops={"1.0": ["relu"]})
    with pytest.raises(ValueError, match="'original'"):
        mutate(model, ops={"1.0": {"original": nn.Identity()}})
    with pytest.raises(ValueError, match="root"):
        mutate(model, ops={"": [nn.Identity()]})
    with pytest.raises(ValueError, match="cycle"):
        mutate(model, ops={"1.0": [model[1]]})
    with pytest.raises(ValueError, match=r"returned a str for '0'"):
        mutate(model, rules=[lambda path, module: "not a module"])
    with pytest.raises(ValueError, match="nn.Module"):
        mutate({"not": "a model"})
    with pytest.raises(ValueError, match="already a Supernet"):
        mutate(ln.Supernet(nn.Linear(2, 2)))
    with pytest.raises(ValueError, match="wrap a single rule"):
        mutate(model, rules=elastic_kernel([3]))
    with pytest.raises(ValueError, match="odd"):
        elastic_kernel([2, 3])
    with pytest.raises(ValueError, match="non-empty"):
        elastic_kernel([])
    with pytest.raises(ValueError, match="at least one alternative"):
        mutate(model, ops={"0": [nn.Identity()], "1.0": []}, rules=[elastic_kernel([1, 3])])
    with pytest.raises(ValueError, match="returned a str"):
        mutate(model, ops={"0": [nn.Identity()]}, rules=[elastic_kernel([1, 3]), lambda p, m: "x" if p == "1.0" else None])
    # Nothing was changed by the failed calls.
    assert type(model[0]) is nn.Conv2d and type(model[1][0]) is nn.ReLU and type(model[1][1]) is nn.Conv2d


@settings(max_examples=20, deadline=None)
@given(
    layers=st.lists(
        st.tuples(
            st.sampled_from([3, 5, 7]),  # kernel size
            st.integers(1, 8),  # output channels
            st.sampled_from([1, 2]),  # stride
            st.sampled_from([1, 2]),  # dilation
            st.booleans(),  # 'same' padding (else none: left alone)
            st.booleans(),  # depthwise (output channels = input channels)
        ),
        min_size=1,
        max_size=4,
    ),
    c_in=st.integers(1, 8),
    seed=st.integers(0, 2**16),
)
def test_default_arch_reproduces_random_conv_stacks(layers, c_in, seed):
    torch.manual_seed(seed)
    modules, c = [], c_in
    for k, c_out, stride, dilation, same, depthwise in layers:
        groups, c_out = (c, c) if depthwise else (1, c_out)
        padding = dilation * (k - 1) // 2 if same else 0
        modules += [nn.Conv2d(c, c_out, k, stride, padding, dilation, groups=groups, bias=not depthwise), nn.ReLU()]
        c = c_out
    model = nn.Sequential(*modules).eval()
    reference = copy.deepcopy(model)
    # strict=False: a stack without 'same' padding has nothing to make elastic.
    supernet = ln.Supernet(mutate(model, rules=[elastic_kernel([1, 3, 5, 7])], strict=False)).eval()
    assert len(supernet.space) == sum(same for *_, same, _ in layers)
    size = 3  # the input size giving a 3x3 output, worked back through the layers
    for k, _, stride, dilation, same, _ in reversed(layers):
        size = max(1, (size - 1) * stride + dilation * (k - 1) + 1 - (dilation * (k - 1) if same else 0))
    x = torch.randn(2, c_in, size, size + 1)
    with torch.no_grad():
        assert torch.equal(supernet(x), reference(x))


def test_rule_replacements_take_the_training_mode_they_replace():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.Linear(5, 2)).eval()
    randomise_batch_norm(model)
    reference = copy.deepcopy(model)

    def elastic_layers(path, module):
        if type(module) is nn.BatchNorm2d:
            return ln.ElasticBatchNorm2d.from_batch_norm(module)
        if type(module) is nn.Linear:
            return ln.ElasticLinear.from_linear(module, out_features=ln.Choice([1, 2], path + ".width", default=2))
        return None

    mutate(model, rules=[elastic_layers])
    assert isinstance(model[1], ln.ElasticBatchNorm2d) and not model[1].training
    supernet = ln.Supernet(model)
    x = torch.randn(2, 3, 5, 5)
    with torch.no_grad():
        assert torch.equal(supernet(x), reference(x))


def test_from_conv_keeps_even_kernels_and_rejects_asymmetric_layers():
    x = torch.randn(1, 3, 8, 8)
    conv = nn.Conv2d(3, 4, 2, stride=2)  # an even kernel has no symmetric 'same' padding
    torch.testing.assert_close(ElasticConv2d.from_conv(conv)(x), conv(x))
    for bad in (nn.Conv2d(3, 4, 3, padding=(1, 0)), nn.Conv2d(3, 4, 3, padding=(2, 1), dilation=(2, 1))):
        with pytest.raises(ValueError, match="symmetric"):
            ElasticConv2d.from_conv(bad)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=(1, 0)), nn.Conv2d(4, 4, 4, padding=1))
    with pytest.raises(ValueError, match=r"elastic_kernel\(\[1, 3\]\) matched no module of Sequential: it has no plain square"):
        mutate(model, rules=[elastic_kernel([1, 3])])  # nothing qualifies: an error, not a silent no-op
    mutate(model, rules=[elastic_kernel([1, 3])], strict=False)
    assert type(model[0]) is nn.Conv2d and type(model[1]) is nn.Conv2d


def test_rules_walk_into_replacements_without_recursing():
    # A rule wrapping ReLUs in a new Sequential holding a new ReLU: that ReLU is not offered again.
    def wrap_relu(path, module):
        return nn.Sequential(nn.ReLU(), nn.Dropout(0.0)) if isinstance(module, nn.ReLU) else None

    # A rule keeping the original module inside its replacement: the kept module's children still
    # meet the rules, under their original paths.
    def optional_block(path, module):
        return ln.OpChoice({"original": module, "skip": nn.Identity()}, label=path) if path == "1" else None

    block = nn.Sequential(nn.Conv2d(2, 2, 3, padding=1), nn.ReLU())
    model = nn.Sequential(nn.Conv2d(3, 2, 3, padding=1), block)
    report: list[ln.nn.Replacement] = []
    mutate(model, rules=[optional_block, wrap_relu, elastic_kernel([1, 3])], report=report)
    assert isinstance(model[1], OpChoice) and model[1].candidates["original"] is block
    assert isinstance(block[0], ElasticConv2d) and isinstance(block[1], nn.Sequential) and type(block[1][0]) is nn.ReLU
    assert [(r.path, r.before, r.after) for r in report] == [
        ("0", "Conv2d", "ElasticConv2d"), ("1", "Sequential", "OpChoice"), ("1.0", "Conv2d", "ElasticConv2d"),
        ("1.1", "ReLU", "Sequential"),
    ]
    assert sorted(ln.Supernet(model).space.labels) == ["0.kernel_size", "1", "1.0.kernel_size"]


def test_mutating_one_path_twice_is_refused_and_leaves_the_model_as_it_was():
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU())
    mutate(model, ops={"0": [nn.Identity()]})
    first = model[0]
    with pytest.raises(ValueError, match=r"`ops\['0'\]` would make a decision labelled '0', but the model already has one at '0.choice'"):
        mutate(model, ops={"0": [nn.Tanh()]})
    assert model[0] is first
    # Both sets of alternatives survive when the second call keeps its decision apart.
    mutate(model, ops={"0": [nn.Tanh()]}, label_prefix="again.")
    space = ln.Supernet(model).space
    assert sorted(space.labels) == ["0", "again.0"] and space.size == 4


def test_a_rule_taking_a_label_the_model_already_has_is_refused():
    model = nn.Sequential(nn.Conv2d(3, 3, 5, padding=2), nn.ReLU(), ln.Choice([1, 2], "0.kernel_size"))
    with pytest.raises(ValueError, match=r"rule elastic_kernel\(\[3, 5\]\) would make a decision labelled '0.kernel_size', but the model already has one at '2'"):
        mutate(model, rules=[elastic_kernel([3, 5])])
    assert type(model[0]) is nn.Conv2d
    # ... and so is a rule taking the label of an `ops` decision of the same call.
    def skippable(path, module):
        return ln.OpChoice([module, nn.Identity()], label=path) if path == "0" else None

    nested = nn.Sequential(nn.Sequential(nn.Conv2d(3, 3, 3, padding=1)))
    with pytest.raises(ValueError, match=r"would make a decision labelled '0', but the model already has one at '0.choice'"):
        mutate(nested, ops={"0": [nn.Identity()]}, rules=[skippable])
    assert type(nested[0]) is nn.Sequential
