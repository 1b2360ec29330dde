"""Supernet discovery, activation, export and per-example mode on a model using every mutable."""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import lightning_nas as ln
from lightning_nas.nn import Choice, Mutable, SumInputs

FIXTURE_OK = settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def test_space_is_discovered_in_order(all_mutables_supernet):
    space = all_mutables_supernet.space
    assert space.labels == ["width", "stem.kernel", "dw.kernel", "op", "depth", "merge", "hidden"]
    assert space["merge"].values == ((0, 1), (0, 2), (1, 2))
    assert space.size == 2 * 2 * 2 * 3 * 3 * 3 * 2
    assert space.encoding_size == 2 + 2 + 2 + 3 + 3 + 3 + 2


@FIXTURE_OK
@given(seed=st.integers(0, 2**31 - 1), train=st.booleans())
def test_export_equals_active_supernet(all_mutables_supernet, seed, train):
    net = all_mutables_supernet
    arch = net.space.sample(seed)
    x = torch.randn(4, 3, 9, 9, generator=torch.Generator().manual_seed(seed))
    net.train(train)
    net.activate(arch)
    exported = net.export(arch).train(train)
    torch.testing.assert_close(exported(x), net(x), atol=1e-5, rtol=1e-5)
    assert not any(isinstance(m, (Mutable, Choice)) for m in exported.modules())


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated")
def test_export_scripts_and_matches(all_mutables_supernet):
    net = all_mutables_supernet.eval()
    arch = net.space.sample(3)
    exported = net.export(arch).eval()
    scripted = torch.jit.script(exported)
    x = torch.randn(2, 3, 8, 8)
    with net.activated(arch):
        torch.testing.assert_close(scripted(x), net(x), atol=1e-5, rtol=1e-5)


class HandWritten(nn.Module):
    """AllMutablesNet written by hand for one fixed architecture."""

    def __init__(self, w: int, k_stem: int, k_dw: int, depth: int, hidden: int) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, w, k_stem, padding=k_stem // 2)
        self.stem_bn = nn.BatchNorm2d(w)
        self.dw = nn.Conv2d(w, w, k_dw, padding=k_dw // 2, groups=w)
        self.dw_bn = nn.BatchNorm2d(w)
        self.body = nn.Sequential(*[nn.Sequential(nn.Conv2d(w, w, 3, padding=1), nn.BatchNorm2d(w)) for _ in range(depth)])
        self.fc1 = nn.Linear(w, hidden)
        self.ln = nn.LayerNorm(hidden)
        self.fc2 = nn.Linear(hidden, 5)


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("seed", range(4))
def test_exported_parameter_count_equals_hand_written(all_mutables_supernet, seed):
    arch = all_mutables_supernet.space.sample(seed)
    exported = all_mutables_supernet.export(arch)
    hand = HandWritten(arch["width"], arch["stem.kernel"], arch["dw.kernel"], arch["depth"], arch["hidden"])
    assert _count(exported) == _count(hand)


def test_export_copies_weights(all_mutables_supernet):
    net = all_mutables_supernet
    arch = net.space.largest()
    exported = net.export(arch)
    with torch.no_grad():
        for p in exported.parameters():
            p.add_(1.0)
    x = torch.randn(2, 3, 8, 8)
    net.eval(), exported.eval()
    with net.activated(arch):
        assert not torch.allclose(net(x), exported(x))


def test_export_keeps_dtype(all_mutables_supernet):
    net = all_mutables_supernet.double().eval()
    arch = net.space.sample(5)
    exported = net.export(arch)
    assert not any(m.training for m in exported.modules())  # the supernet's mode carries over
    assert {p.dtype for p in exported.state_dict().values() if p.is_floating_point()} == {torch.float64}
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    with net.activated(arch):
        torch.testing.assert_close(exported(x), net(x), atol=1e-10, rtol=1e-10)


@FIXTURE_OK
@given(seed=st.integers(0, 2**31 - 1))
def test_per_example_equals_each_subnet_alone(all_mutables_supernet, seed):
    net = all_mutables_supernet.eval()
    n = 6
    archs = net.space.sample_many(n, seed)
    x = torch.randn(n, 3, 8, 8, generator=torch.Generator().manual_seed(seed))
    net.activate(archs)
    assert net.per_example and net.active_arch == archs
    together = net(x)
    for i, arch in enumerate(archs):
        with net.activated(arch):
            alone = net(x[i : i + 1])
        torch.testing.assert_close(together[i : i + 1], alone, atol=1e-5, rtol=1e-5)


def test_per_example_training_backpropagates(all_mutables_supernet):
    net = all_mutables_supernet.train()
    net.activate_indices(net.space.sample_indices(8, 0))
    loss = net(torch.randn(8, 3, 8, 8)).square().mean()
    loss.backward()
    assert net.module.stem.weight.grad is not None and net.module.stem.weight.grad.abs().sum() > 0


def test_activated_restores_previous_state(all_mutables_supernet):
    net = all_mutables_supernet
    first, second = net.space.sample(1), net.space.sample(2)
    net.activate(first)
    with net.activated(second):
        assert net.active_arch == second
    assert net.active_arch == first


def test_arch_is_json_round_trippable(all_mutables_supernet):
    net = all_mutables_supernet
    arch = net.space.sample(5)
    again = json.loads(json.dumps(arch))
    assert net.space.contains(again)
    net.activate(again)
    assert net.active_arch == arch


def test_tied_labels_are_one_decision():
    width = Choice([4, 8], "w")
    twin = Choice([4, 8], "w")
    net = ln.Supernet(nn.Sequential(ln.ElasticConv2d(3, width, 3), ln.ElasticConv2d(twin, 2, 3)))
    assert net.space.labels == ["w"]
    for w in (4, 8):
        net.activate({"w": w})
        assert net(torch.randn(1, 3, 5, 5)).shape == (1, 2, 5, 5)
        assert net.export({"w": w})[0].out_channels == w


def test_conflicting_candidates_for_one_label():
    with pytest.raises(ValueError, match=r"label 'w' is used with different candidate lists: \[4, 8\] and \[4, 16\]"):
        ln.Supernet(nn.Sequential(ln.ElasticConv2d(3, Choice([4, 8], "w"), 3), ln.ElasticConv2d(3, Choice([4, 16], "w"), 3)))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"nope": 1}, r"unknown label\(s\) \['nope'\].*labels of this space"),
        ({"width": 5}, r"value 5 for label 'width' is not a candidate; allowed values: \[4, 8\]"),
        ({"merge": [0, 0]}, r"label 'merge' is not a candidate; allowed values: \[\[0, 1\], \[0, 2\], \[1, 2\]\]"),
    ],
)
def test_invalid_arch_errors(all_mutables_supernet, change, message):
    arch = {**all_mutables_supernet.space.sample(0), **change}
    with pytest.raises(ValueError, match=message):
        all_mutables_supernet.activate(arch)
    with pytest.raises(ValueError, match=message):
        all_mutables_supernet.export(arch)
    assert not all_mutables_supernet.space.contains(arch)


def test_missing_label_error(all_mutables_supernet):
    arch = all_mutables_supernet.space.sample(0)
    del arch["depth"]
    with pytest.raises(ValueError, match=r"missing label 'depth'; allowed values: \[1, 2, 3\]"):
        all_mutables_supernet.activate(arch)


def test_unlabelled_choices_are_named_after_their_path():
    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.op = ln.OpChoice([nn.ReLU(), nn.Tanh()])
            self.conv = ln.ElasticConv2d(2, 2, Choice([1, 3]))

        def forward(self, x):
            return self.conv(self.op(x))

    net = ln.Supernet(nn.Sequential(Block()))
    assert net.space.labels == ["0.op", "0.conv.kernel_size"]


def test_input_choice_and_relaxation_hook():
    choice = ln.InputChoice(3, 1, "in")
    op = ln.OpChoice([nn.Identity(), nn.ReLU()], "op")
    net = ln.Supernet(nn.ModuleList([choice, op]))
    xs = [torch.full((2, 3), float(i)) for i in range(3)]
    net.activate({"in": 2, "op": 0})
    assert torch.equal(choice(xs), xs[2])
    # A relaxation mixes candidates; installing and removing it needs no subclass.
    op.set_relaxation(lambda m, inputs: 0.25 * m.candidate_forward(0, *inputs) + 0.75 * m.candidate_forward(1, *inputs))
    x = torch.tensor([[-2.0, 4.0]])
    assert torch.equal(op(x), torch.tensor([[-0.5, 4.0]]))
    assert not any(p is not None for p in op.parameters())  # nothing leaked into the module tree
    op.set_relaxation(None)
    assert torch.equal(op(x), x)
    with pytest.raises(ValueError, match="expects 3 inputs, got 2"):
        choice(xs[:2])


def test_depth_zero_and_per_example_depths():
    blocks = [nn.Linear(3, 3) for _ in range(2)]
    net = ln.Supernet(ln.DepthChoice(blocks, [0, 1, 2], "d")).eval()
    x = torch.randn(3, 3)
    net.activate([{"d": 0}, {"d": 2}, {"d": 1}])
    y = net(x)
    torch.testing.assert_close(y[0], x[0])
    torch.testing.assert_close(y[1], blocks[1](blocks[0](x[1])))
    torch.testing.assert_close(y[2], blocks[0](x[2]))
    assert isinstance(net.export({"d": 0}), nn.Identity)


def test_per_example_batch_mismatch_is_a_clear_error(all_mutables_supernet):
    all_mutables_supernet.activate(all_mutables_supernet.space.sample_many(3, 0))
    with pytest.raises(ValueError, match="per-example mode"):
        all_mutables_supernet(torch.randn(5, 3, 8, 8))


def test_wrong_input_width_is_a_clear_error():
    net = ln.Supernet(ln.ElasticConv2d(Choice([2, 4], "w"), 3, 3))
    net.activate({"w": 2})
    with pytest.raises(ValueError, match=r"expected 2 input channels .* got shape \(1, 4, 5, 5\)"):
        net(torch.randn(1, 4, 5, 5))


def test_export_of_sum_inputs_and_fixed_value():
    class UsesValue(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.scale = Choice([1, 2], "scale")
            self.pick = ln.InputChoice(2, 1, "pick")

        def forward(self, x):
            return self.pick([x, -x]) * self.scale.value

    net = ln.Supernet(UsesValue())
    arch = {"scale": 2, "pick": 1}
    exported = net.export(arch)
    assert isinstance(exported.pick, SumInputs)
    x = torch.randn(2, 2)
    with net.activated(arch):
        torch.testing.assert_close(exported(x), net(x))


def test_export_passes_torch_export(all_mutables_supernet):
    net = all_mutables_supernet.eval()
    arch = net.space.sample(4)
    exported = net.export(arch).eval()
    x = torch.randn(2, 3, 8, 8)
    program = torch.export.export(exported, (x,))
    with net.activated(arch):
        torch.testing.assert_close(program.module()(x), net(x), atol=1e-5, rtol=1e-5)


@FIXTURE_OK
@given(seed=st.integers(0, 2**31 - 1))
def test_host_index_bounds_change_nothing(all_mutables_supernet, seed):
    # The bounds read at activation spare mutables their GPU reads; without them they read the indices.
    net = all_mutables_supernet.eval()
    net.activate_indices(net.space.sample_indices(6, seed))
    assert net.context.bounds is not None
    x = torch.randn(6, 3, 8, 8, generator=torch.Generator().manual_seed(seed))
    with_bounds = net(x)
    net.context.bounds = None
    torch.testing.assert_close(net(x), with_bounds, atol=0, rtol=0)


# -- issue 17: refused inputs that used to run silently or crash raw ------------------------------


def _small_net() -> nn.Module:
    width = Choice([4, 8], "w")
    return nn.Sequential(ln.ElasticConv2d(3, width, 3), ln.ElasticBatchNorm2d(width), ln.OpChoice([nn.ReLU(), nn.Tanh()], "op"))


def test_a_module_in_two_supernets_is_refused():
    module = _small_net()
    first = ln.Supernet(module)
    with pytest.raises(ValueError, match=r"choice 'w' at '0.out_channels' already belongs to another Supernet"):
        ln.Supernet(module)
    # The first supernet still drives its module: activate() changes what forward computes.
    first.activate({"w": 4, "op": 0})
    assert first(torch.randn(1, 3, 5, 5)).shape == (1, 4, 5, 5)
    assert first.active_arch == {"w": 4, "op": 0}


def test_a_copy_or_a_released_module_can_be_wrapped_again():
    import copy
    import gc

    module = _small_net()
    first = ln.Supernet(module)
    twin = copy.deepcopy(first)  # the copy owns its own context
    with pytest.raises(ValueError, match="already belongs to another Supernet"):
        ln.Supernet(twin.module)
    other = ln.Supernet(copy.deepcopy(module))  # a copy of the module belongs to no supernet
    other.activate({"w": 4, "op": 1})
    first.activate({"w": 8, "op": 0})
    assert first(torch.randn(1, 3, 5, 5)).shape[1] == 8 and other(torch.randn(1, 3, 5, 5)).shape[1] == 4
    del first
    gc.collect()
    assert ln.Supernet(module).space.labels == ["w", "op"]


def test_one_label_with_two_defaults_is_refused():
    with pytest.raises(ValueError, match=r"label 'w' is used with different defaults: 4 \(at '0'\) and 8 \(at '1'\)"):
        ln.Supernet(nn.ModuleList([Choice([4, 8], "w"), Choice([4, 8], "w", default=8)]))


def test_per_example_batch_size_is_checked_when_the_batch_enters():
    net = ln.Supernet(_small_net())
    x = torch.randn(4, 3, 5, 5)
    for archs in ([{"w": 8, "op": 0}] * 5, [{"w": 4, "op": 0}, {"w": 8, "op": 1}] * 3):
        net.activate(archs)
        with pytest.raises(ValueError, match=rf"{len(archs)} architectures are active, so the batch must have {len(archs)} examples.*shape \(4, 3, 5, 5\)"):
            net(x)
    net.activate([{"w": 8, "op": 0}] * 4)
    assert net(x).shape == (4, 8, 5, 5)


def test_bools_are_not_ints_and_ints_not_bools():
    space = ln.Supernet(ln.DepthChoice([nn.Identity(), nn.Identity()], [1, 2], "depth")).space
    with pytest.raises(ValueError, match=r"value True for label 'depth' is not a candidate; allowed values: \[1, 2\]"):
        space.validate({"depth": True})
    flag = ln.Supernet(nn.ModuleList([Choice([False, True], "flag")])).space
    with pytest.raises(ValueError, match="value 1 for label 'flag' is not a candidate"):
        flag.validate({"flag": 1})
    assert flag.validate({"flag": True}) == {"flag": True}
    with pytest.raises(ValueError, match=r"`default` of choice 'd' must be one of \[1, 2\], got True"):
        Choice([1, 2], "d", default=True)
    with pytest.raises(ValueError, match="is not a candidate of choice 'd'"):
        Choice([1, 2], "d").index_of(True)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), (1, float("nan"))])
def test_non_finite_candidates_are_refused(bad):
    with pytest.raises(ValueError, match=r"candidate .* of choice 'c' is not finite"):
        Choice([bad, 1.0], "c")


def test_activation_arguments_are_checked():
    net = ln.Supernet(_small_net())
    for bad in (None, 3, "w"):
        with pytest.raises(ValueError, match="`arch` must be a dict"):
            net.activate(bad)
    with pytest.raises(ValueError, match=r"`indices\['w'\]` must hold integer candidate indices, got dtype torch.float32"):
        net.activate_indices({"w": torch.tensor([0.0, 1.7]), "op": torch.tensor([0, 1])})
    with pytest.raises(ValueError, match=r"`indices\['w'\]` must hold integer candidate indices, got dtype torch.bool"):
        net.activate_indices({"w": torch.tensor([True, False]), "op": torch.tensor([0, 1])})
    with pytest.raises(ValueError, match="`indices` must be a dict"):
        net.activate_indices([0, 1])


def test_space_refuses_counts_indices_and_vectors_it_cannot_decode():
    space = ln.Supernet(_small_net()).space
    for n in (-1, 1.5, True):
        with pytest.raises(ValueError, match=r"`n` \(the number of draws\) must be a non-negative int"):
            space.sample_many(n)
        with pytest.raises(ValueError, match=r"`n` \(the number of draws\) must be a non-negative int"):
            space.sample_indices(n)
    assert space.sample_many(0) == []
    with pytest.raises(ValueError, match=r"`vector` must be finite, got nan"):
        space.decode([float("nan")] * space.encoding_size)
    with pytest.raises(ValueError, match=r"`vector` must be finite, got inf"):
        space.decode([0.0, float("inf"), 0.0, 0.0])
    with pytest.raises(ValueError, match="must hold real numbers"):
        space.decode(torch.zeros(space.encoding_size, dtype=torch.bool))
    assert space.decode([0.0, 1.0, 1.0, 0.0]) == {"w": 8, "op": 0}
    for index in (-1, 2, 0.7, True, torch.tensor(1.0)):
        with pytest.raises(ValueError, match=r"`indices\['w'\]` must be (an integer candidate index in \[0, 2\)|one integer candidate index)"):
            space.from_indices({"w": index, "op": 0})
    assert space.from_indices({"w": torch.tensor(1), "op": 1}) == {"w": 8, "op": 1}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(stride=Choice([1, 2], "s")), r"`stride` cannot be a Choice .*only in_channels, out_channels and kernel_size may be"),
        (dict(stride=0), r"`stride` must be an int >= 1 or a pair of them, got 0"),
        (dict(stride=(1, True)), r"`stride` must be an int >= 1 or a pair of them"),
        (dict(padding=Choice([0, 1], "p")), r"`padding` cannot be a Choice"),
        (dict(dilation=Choice([1, 2], "d")), r"`dilation` cannot be a Choice"),
        (dict(bias=1), r"`bias` must be a bool, got 1"),
    ],
)
def test_elastic_conv_refuses_arguments_that_cannot_be_decisions(kwargs, message):
    kernel = 3 if "padding" not in kwargs else 3
    with pytest.raises(ValueError, match=message):
        ln.ElasticConv2d(3, 8, kernel, **kwargs)


def test_elastic_layers_refuse_bad_fixed_arguments():
    with pytest.raises(ValueError, match=r"ElasticBatchNorm2d: `eps` must be a finite float > 0, got nan"):
        ln.ElasticBatchNorm2d(4, eps=float("nan"))
    with pytest.raises(ValueError, match=r"ElasticBatchNorm2d: `momentum` cannot be a Choice"):
        ln.ElasticBatchNorm2d(4, momentum=Choice([0.1, 0.2], "m"))
    with pytest.raises(ValueError, match=r"ElasticLayerNorm: `eps` must be a finite float > 0, got -1"):
        ln.ElasticLayerNorm(4, eps=-1)
    with pytest.raises(ValueError, match=r"ElasticLinear: `bias` cannot be a Choice"):
        ln.ElasticLinear(4, 4, bias=Choice([True, False], "b"))
    with pytest.raises(ValueError, match=r"`n_candidates` must be a positive int, got True"):
        ln.InputChoice(True)


def test_recalibration_failures_name_the_argument_and_keep_the_statistics():
    from lightning_nas.nn.calibration import recalibrate_batch_norm

    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    with torch.no_grad():
        net[1].running_mean.fill_(0.5)
    before = net[1].running_mean.clone()
    with pytest.raises(FloatingPointError, match=r"BatchNorm '1' got non-finite running statistics from 1 batch"):
        recalibrate_batch_norm(net, [torch.full((2, 3, 5, 5), float("nan"))])
    assert torch.equal(net[1].running_mean, before) and net[1].momentum == 0.1
    with pytest.raises(ValueError, match="`batches` yielded no batch"):
        recalibrate_batch_norm(net, [])
    assert torch.equal(net[1].running_mean, before)
    supernet = ln.Supernet(nn.Sequential(ln.ElasticConv2d(3, ln.Choice([2, 4], "w"), 3), nn.AdaptiveAvgPool2d(1)))
    with pytest.raises(ValueError, match="`calibration_batches` yielded no batch"):
        supernet.export(supernet.space.default(), calibration_batches=[])


def test_op_choice_and_decision_name_bad_candidates_and_defaults():
    from lightning_nas.spaces.search_space import Decision, SearchSpace

    with pytest.raises(ValueError, match=r"every candidate of OpChoice 'op' must be an nn.Module, got int \(3\) at position 1"):
        ln.OpChoice([nn.Identity(), 3], "op")
    with pytest.raises(ValueError, match=r"every candidate of OpChoice 'op' must be an nn.Module, got str"):
        ln.OpChoice({"a": nn.Identity(), "b": "conv"}, "op")
    with pytest.raises(ValueError, match=r"`default` 3 of decision 'a' is not one of its candidates \[1, 2\]"):
        SearchSpace([Decision("a", (1, 2), 3)])
    with pytest.raises(ValueError, match="must be a non-empty sequence"):
        Decision("a", (), None)
    assert Decision("a", [1, 2], 2).values == (1, 2)
