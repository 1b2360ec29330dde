"""The MobileNet-like supernet: its space, exact export, per-example mode and TorchScript."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from lightning_nas.nn import Choice, ElasticBatchNorm2d, FixedValue, Mutable
from lightning_nas.spaces import InvertedResidual, make_divisible, mobilenet_supernet

SETTINGS = settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
STAGES = ((24, 2, 2), (40, 2, 2), (80, 1, 2))


@pytest.fixture(scope="module")
def supernet():
    torch.manual_seed(0)
    net = mobilenet_supernet(num_classes=7)
    # Non-trivial BN parameters and statistics so both modes exercise them.
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, (nn.BatchNorm2d, ElasticBatchNorm2d)):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
    return net


def _input(n: int, seed: int, size: int = 16) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_space_labels_and_candidates(supernet):
    space = supernet.space
    expected = []
    for s in range(3):
        expected += [f"stage{s}.block{b}.{kind}" for b in range(2) for kind in ("expand", "kernel")] + [f"stage{s}.depth"]
    assert space.labels == expected
    assert space.size == (3 * 2) ** 6 * 2**3
    assert space["stage0.block0.expand"].values == (48, 64, 96)  # 16 * (3, 4, 6)
    assert space["stage0.block1.expand"].values == (72, 96, 144)  # 24 * (3, 4, 6)
    assert space["stage2.block1.expand"].values == (240, 320, 480)
    assert space["stage1.block0.kernel"].values == (3, 5)
    assert space["stage2.depth"].values == (1, 2)
    assert space.default()["stage0.depth"] == 2  # DepthChoice defaults to the full depth


def test_builder_options():
    net = mobilenet_supernet(stages=((16, 1, 1), (32, 2, 3)), expand_ratios=(1, 1.05, 2), kernel_sizes=(5, 3), activation="hswish")
    space = net.space
    assert space["stage0.block0.expand"].values == (16, 32)  # 16 * 1.05 rounds to 16: deduplicated
    assert space["stage0.block0.kernel"].values == (3, 5)
    assert space["stage0.depth"].values == (1,)
    assert space["stage1.depth"].values == (1, 2, 3)
    assert any(isinstance(m, nn.Hardswish) for m in net.modules())
    net.activate(space.sample(0))
    assert net(_input(2, 0)).shape == (2, 10)
    with pytest.raises(ValueError, match="`activation` must be one of"):
        mobilenet_supernet(activation="gelu")
    with pytest.raises(ValueError, match="max_depth must be at least 1"):
        mobilenet_supernet(stages=((16, 1, 0),))


def test_make_divisible():
    assert [make_divisible(v) for v in (16 * 3, 16 * 4, 20, 10, 3, 16 * 1.05)] == [48, 64, 24, 16, 8, 16]
    assert make_divisible(91, 8) == 88 and make_divisible(92, 8) == 96


def test_residual_only_when_shape_is_kept(supernet):
    blocks = [m for m in supernet.modules() if isinstance(m, InvertedResidual)]
    assert [b.has_residual for b in blocks] == [False, True, False, True, False, True]


@SETTINGS
@given(seed=st.integers(0, 2**31 - 1), train=st.booleans())
def test_export_equals_active_supernet(supernet, seed, train):
    arch = supernet.space.sample(seed)
    exported = supernet.export(arch).train(train)
    supernet.train(train)
    x = _input(4, seed)
    with supernet.activated(arch):
        expected = supernet(x)
    torch.testing.assert_close(exported(x), expected, atol=1e-5, rtol=1e-5)
    assert not any(isinstance(m, (Mutable, Choice, FixedValue)) for m in exported.modules())
    supernet.eval()


class HandBlock(nn.Module):
    """``InvertedResidual`` for fixed widths and kernel, written with plain layers."""

    def __init__(self, c_in: int, c_out: int, hidden: int, k: int, stride: int) -> None:
        super().__init__()
        self.has_residual = stride == 1 and c_in == c_out
        self.conv_pw = nn.Conv2d(c_in, hidden, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(hidden)
        self.act1 = nn.ReLU()
        self.conv_dw = nn.Conv2d(hidden, hidden, k, stride, k // 2, groups=hidden, bias=False)
        self.bn2 = nn.BatchNorm2d(hidden)
        self.act2 = nn.ReLU()
        self.conv_pwl = nn.Conv2d(hidden, c_out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn3(self.conv_pwl(self.act2(self.bn2(self.conv_dw(self.act1(self.bn1(self.conv_pw(x))))))))
        return y + x if self.has_residual else y


class HandMobileNet(nn.Module):
    """The default MobileNet-like network for one architecture, written with plain layers."""

    def __init__(self, arch: dict, num_classes: int) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        stages, c_in = [], 16
        for s, (c_out, stride, _) in enumerate(STAGES):
            blocks = []
            for b in range(arch[f"stage{s}.depth"]):
                p = f"stage{s}.block{b}"
                blocks.append(HandBlock(c_in, c_out, arch[f"{p}.expand"], arch[f"{p}.kernel"], stride if b == 0 else 1))
                c_in = c_out
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.head = nn.Sequential(
            nn.Conv2d(80, 128, 1, bias=False), nn.BatchNorm2d(128), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(1)
        )
        self.classifier = nn.Linear(128, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.head(self.stages(self.stem(x))))


@pytest.mark.parametrize("which", ["smallest", "largest", 0, 1])
def test_exported_network_is_the_hand_written_one(supernet, which):
    space = supernet.space
    arch = getattr(space, which)() if isinstance(which, str) else space.sample(which)
    exported = supernet.export(arch).eval()
    hand = HandMobileNet(arch, num_classes=7).eval()
    assert sum(p.numel() for p in exported.parameters()) == sum(p.numel() for p in hand.parameters())
    # Same structure: the exported state loads strictly into the hand-written network and computes the same.
    hand.load_state_dict(exported.state_dict(), strict=True)
    x = _input(2, 1)
    torch.testing.assert_close(hand(x), exported(x), atol=1e-5, rtol=1e-5)


@SETTINGS
@given(seed=st.integers(0, 2**31 - 1))
def test_per_example_equals_each_arch_alone(supernet, seed):
    net = supernet.eval()
    n = 6
    archs = net.space.sample_many(n, seed)
    x = _input(n, seed)
    net.activate(archs)
    together = net(x)
    for i, arch in enumerate(archs):
        with net.activated(arch):
            alone = net(x[i : i + 1])
        torch.testing.assert_close(together[i : i + 1], alone, atol=1e-5, rtol=1e-5)


def test_per_example_training_step_backpropagates(supernet):
    net = supernet.train()
    try:
        net.activate_indices(net.space.sample_indices(8, 0))
        loss = nn.functional.cross_entropy(net(_input(8, 2)), torch.arange(8) % 7)
        loss.backward()
        first = net.module.stages[0].blocks[0].conv_pw.weight.grad
        assert first is not None and first.abs().sum() > 0
    finally:
        net.zero_grad(set_to_none=True)
        net.eval()


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated")
@pytest.mark.parametrize("seed", [0, 1])
def test_exported_subnet_scripts_and_matches(supernet, seed):
    arch = supernet.space.sample(seed)
    exported = supernet.export(arch).eval()
    scripted = torch.jit.script(exported)
    x = _input(3, seed, size=32)
    with supernet.eval().activated(arch):
        torch.testing.assert_close(scripted(x), supernet(x), atol=1e-5, rtol=1e-5)


def test_registered_by_name():
    from lightning_nas.spaces import create_space, list_spaces

    assert "mobilenet" in list_spaces()
    built = create_space("mobilenet", num_classes=3, stages=((8, 1, 2),))
    assert built.space.labels[-1] == "stage0.depth"
    with pytest.raises(ValueError, match="unknown space 'nope'; known: .*'mobilenet'"):
        create_space("nope")


@pytest.mark.parametrize(("kwargs", "name"), [
    ({"num_classes": -1}, "`num_classes`"), ({"num_classes": True}, "`num_classes`"), ({"in_chans": 0}, "`in_chans`"),
    ({"head_channels": 2.5}, "`head_channels`"), ({"stages": ()}, "`stages`"), ({"stages": ((24, 0, 2),)}, r"`stages`\[0\]"),
    ({"stages": ((24, 2),)}, r"`stages`\[0\]"), ({"expand_ratios": (0, 3)}, "`expand_ratios`"),
    ({"expand_ratios": (float("nan"),)}, "`expand_ratios`"), ({"kernel_sizes": (2, 3)}, "`kernel_sizes`"),
    ({"kernel_sizes": ()}, "`kernel_sizes`"),
])
def test_bad_builder_arguments_are_named(kwargs, name):
    with pytest.raises(ValueError, match=name):
        mobilenet_supernet(**kwargs)
