"""The BINAS search space: structure, exact export, per-example mode, grouped BatchNorm, TorchScript."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from lightning_nas import Supernet
from lightning_nas.nn import Choice, DepthChoice, FixedValue, GroupedBatchNorm2d, Mutable, export_subnet
from lightning_nas.spaces import BinasBlock, MBInvRes, binas_supernet, create_space, list_spaces
from lightning_nas.spaces.staged import StagedSpace

SETTINGS = settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # Tiny tensors gain nothing from threads, and OpenMP barriers stall badly on a shared CPU.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _perturb_norms(net: nn.Module, seed: int = 0) -> None:
    """Non-trivial BN parameters and statistics so that both modes exercise them."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, (nn.BatchNorm2d, GroupedBatchNorm2d)):
                shape = m.weight.shape
                m.running_mean.copy_(torch.rand(shape, generator=g) - 0.5)
                m.running_var.copy_(0.5 + 1.5 * torch.rand(shape, generator=g))
                m.weight.copy_(0.5 + torch.rand(shape, generator=g))
                m.bias.copy_(torch.rand(shape, generator=g) - 0.5)
            elif isinstance(m, nn.Conv2d) and m.bias is not None:
                m.bias.copy_(torch.rand(m.bias.shape, generator=g) - 0.5)


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    net = binas_supernet(preset="tiny", num_classes=7)
    _perturb_norms(net)
    return net.eval()


def _input(n: int, seed: int, size: int = 16, chans: int = 3) -> torch.Tensor:
    return torch.randn(n, chans, size, size, generator=torch.Generator().manual_seed(seed))


# -- structure --------------------------------------------------------------------------------
def test_default_space_is_the_papers():
    torch.manual_seed(0)
    net = binas_supernet()
    space = net.space
    expected = []
    for s in range(5):
        expected += [f"stage{s}.block{b}.{kind}" for b in range(4) for kind in ("expand", "kernel", "se")] + [f"stage{s}.depth"]
    assert space.labels == expected
    assert space["stage3.block2.expand"].values == (3, 4, 6)
    assert space["stage0.block0.kernel"].values == (3, 5)
    assert space["stage4.block3.se"].values == (False, True)
    assert space["stage2.depth"].values == (2, 3, 4)
    assert space.size == (12**4 * 3) ** 5
    staged = StagedSpace.from_space(space)
    assert (staged.num_stages, staged.max_blocks, staged.num_configs) == (5, 4, 12)
    assert [st_.depths for st_ in staged.stages] == [(2, 3, 4)] * 5
    assert staged.free_labels == []
    # Networks counted the paper's way (inactive blocks do not multiply): (12² + 12³ + 12⁴)^5 ≈ 5.9e21.
    assert (12**2 + 12**3 + 12**4) ** 5 == pytest.approx(5.9e21, rel=0.01)

    body = net.module
    assert (body.stem[0].out_channels, body.stem[0].stride, type(body.stem[2])) == (32, (2, 2), nn.Hardswish)
    assert body.ds[3].out_channels == 16 and isinstance(body.ds[2], nn.ReLU)
    stages = list(body.stages)
    assert all(isinstance(stage, DepthChoice) and stage.label == f"stage{s}.depth" for s, stage in enumerate(stages))
    firsts = [stage.blocks[0] for stage in stages]
    assert [b.out_channels for b in firsts] == [24, 40, 80, 112, 192]
    assert [b.stride for b in firsts] == [2, 2, 2, 1, 2]
    assert [type(b.act) for b in firsts] == [nn.ReLU, nn.ReLU, nn.Hardswish, nn.Hardswish, nn.Hardswish]
    assert all(b.stride == 1 and b.has_residual for stage in stages for b in stage.blocks[1:])
    assert not any(b.has_residual for b in firsts)
    assert firsts[0].hidden == (48, 64, 96)  # 16 × (3, 4, 6)
    assert firsts[4].hidden == (336, 448, 672)  # 112 × (3, 4, 6)
    assert body.head[0].out_channels == 960 and body.head[4].out_channels == 1280
    assert body.classifier.out_features == 1000
    with net.activated(space.smallest()):
        assert net.eval()(torch.randn(1, 3, 224, 224)).shape == (1, 1000)


def test_block_widths_and_shared_parameters():
    block = BinasBlock(24, 24, 1, prefix="stage1.block1")
    assert block.hidden == (72, 96, 144)
    # SE reduce widths: 0.25 × hidden rounded to multiples of 8 as timm does (18 -> 24, 24, 36 -> 40).
    assert block.se_hidden == (24, 24, 40)
    assert block.conv_pw.weight.shape == (144, 24, 1, 1)
    assert [dw.weight.shape for dw in block.conv_dw] == [(144, 1, 3, 3), (144, 1, 5, 5)]
    assert len(block.bn_dw) == 2 and len(block.bn_pwl) == 6
    assert block.bn_dw.weight.shape == (2, 144) and block.bn_pwl.running_mean.shape == (6, 24)
    assert block.se_reduce.weight.shape == (40, 144, 1, 1) and block.se_expand.weight.shape == (144, 40, 1, 1)
    assert block.conv_pwl.weight.shape == (24, 144, 1, 1)


def test_registered_and_configurable():
    assert "binas" in list_spaces()
    net = create_space(
        "binas", preset="tiny", num_classes=4, in_chans=1, stage_channels=(8, 16), stage_strides=(2, 1),
        stage_activations=("hswish", "relu"), max_depth=3, head_channels=(32, 48),
    )
    space = net.space
    assert space["stage1.depth"].values == (2, 3)
    assert "stage2.depth" not in space.labels
    assert StagedSpace.from_space(space).num_configs == 12
    # 8×8 digits upsampled to 32×32 as the demo feeds them.
    x = F.interpolate(torch.randn(3, 1, 8, 8), size=32, mode="bilinear", align_corners=False)
    net.activate(space.sample(0))
    assert net(x).shape == (3, 4)
    net.activate(space.sample_many(3, seed=1))
    assert net(x).shape == (3, 4)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(preset="huge"), r"`preset` must be one of \['imagenet', 'tiny'\], got 'huge'"),
        (dict(num_classes=0), "`num_classes` must be a positive int, got 0"),
        (dict(in_chans=2.0), "`in_chans` must be a positive int"),
        (dict(stem_stride=3), "`stem_stride` must be 1 or 2, got 3"),
        (dict(stage_strides=(2, 2, 3, 1, 2)), "`stage_strides` must be a non-empty list of strides 1 or 2, got 3"),
        (dict(stage_channels=(24, 40)), "one entry per stage, got lengths 2, 5 and 5"),
        (dict(stage_channels=()), "`stage_channels` must be a non-empty list of positive ints"),
        (dict(stage_activations=("relu",) * 4 + ("gelu",)), r"`stage_activations` must be a non-empty list of activations .*, got .gelu."),
        (dict(min_depth=5), r"`min_depth` must be at most `max_depth` \(4\), got 5"),
        (dict(max_depth=0), "`max_depth` must be a positive int, got 0"),
        (dict(head_channels=(960,)), "`head_channels` must be two positive ints"),
        (dict(kernel_sizes=(3, 4)), "`kernel_sizes` must be a non-empty list of distinct positive odd ints, got 4"),
        (dict(expand_ratios=(3, 3, 6)), "`expand_ratios` must not have duplicates"),
        (dict(expand_ratios=(3, -1)), "`expand_ratios` must be a non-empty list of distinct positive numbers, got -1"),
        (dict(se_ratio=0), r"`se_ratio` must be a number in \(0, 1\], got 0"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        binas_supernet(**kwargs)


def test_block_rejects_wrong_input(tiny):
    block = tiny.module.stages[1].blocks[0]
    with pytest.raises(ValueError, match=r"BinasBlock expects input \(B, 16, H, W\), got shape \(2, 24, 8, 8\)"):
        block(torch.randn(2, 24, 8, 8))
    with pytest.raises(ValueError, match="`activation` must be one of"):
        BinasBlock(8, 8, 1, prefix="b", activation="gelu")


# -- export -----------------------------------------------------------------------------------
@SETTINGS
@given(seed=st.integers(0, 2**31 - 1), train=st.booleans())
def test_export_equals_active_supernet(tiny, seed, train):
    arch = tiny.space.sample(seed)
    exported = tiny.export(arch).train(train)
    x = _input(4, seed)
    state = {k: v.clone() for k, v in tiny.state_dict().items()}
    tiny.train(train)
    try:
        with tiny.activated(arch):
            expected = tiny(x)
    finally:
        tiny.load_state_dict(state)  # train mode updates running statistics
        tiny.eval()
    torch.testing.assert_close(exported(x), expected, atol=1e-5, rtol=1e-5)
    assert not any(isinstance(m, (Mutable, Choice, FixedValue)) for m in exported.modules())
    # Only the chosen depth of each stage is exported.
    assert [len(stage) for stage in exported.stages] == [arch[f"stage{s}.depth"] for s in range(3)]


@SETTINGS
@given(seed=st.integers(0, 2**31 - 1))
def test_single_block_export_runs_on_the_block_input(tiny, seed):
    arch = tiny.space.sample(seed)
    stage = tiny.module.stages[1]
    block = stage.blocks[1]
    exported = export_subnet(block, arch)
    assert type(exported) is MBInvRes
    x = _input(3, seed, size=8, chans=24)
    with tiny.activated(arch):
        expected = block(x)
    torch.testing.assert_close(exported.eval()(x), expected, atol=1e-5, rtol=1e-5)
    assert isinstance(exported.se, nn.Identity) != arch["stage1.block1.se"]


def test_exported_network_is_torchscript(tiny):
    arch = tiny.space.sample(3)
    arch["stage2.block1.se"] = True
    arch["stage2.block0.se"] = False
    exported = tiny.export(arch).eval()
    scripted = torch.jit.script(exported)
    x = _input(2, 0, size=32)
    torch.testing.assert_close(scripted(x), exported(x))


class HandBlock(nn.Module):
    """An inverted residual with SE written from the paper's description with plain layers."""

    def __init__(self, c_in: int, c_out: int, hidden: int, k: int, stride: int, se: int, act: type[nn.Module]) -> None:
        super().__init__()
        self.expand = nn.Sequential(nn.Conv2d(c_in, hidden, 1, bias=False), nn.BatchNorm2d(hidden), act())
        self.depthwise = nn.Sequential(nn.Conv2d(hidden, hidden, k, stride, k // 2, groups=hidden, bias=False), nn.BatchNorm2d(hidden), act())
        self.se = nn.Sequential(nn.Conv2d(hidden, se, 1), nn.ReLU(), nn.Conv2d(se, hidden, 1), nn.Hardsigmoid()) if se else None
        self.project = nn.Sequential(nn.Conv2d(hidden, c_out, 1, bias=False), nn.BatchNorm2d(c_out))
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.depthwise(self.expand(x))
        if self.se is not None:
            y = y * self.se(y.mean((2, 3), keepdim=True))
        y = self.project(y)
        return y + x if self.residual else y


def _copy_in_order(dst: nn.Module, src: nn.Module) -> None:
    """Copy parameters and buffers position by position (both modules register them in the same order)."""
    with torch.no_grad():
        for (name_d, d), (name_s, s) in zip(
            [*dst.named_parameters(), *dst.named_buffers()], [*src.named_parameters(), *src.named_buffers()], strict=True
        ):
            assert d.shape == s.shape, (name_d, name_s)
            d.copy_(s)


# (stage, block, ratio, kernel, se) -> (c_in, c_out, hidden, se width, stride, activation) of the tiny preset
HAND_CASES = [
    ((0, 0, 3, 3, False), (8, 16, 24, 0, 1, nn.ReLU)),
    ((0, 2, 6, 5, True), (16, 16, 96, 24, 1, nn.ReLU)),
    ((1, 0, 4, 5, True), (16, 24, 64, 16, 2, nn.Hardswish)),
    ((2, 3, 6, 3, True), (32, 32, 192, 48, 1, nn.Hardswish)),
]


@pytest.mark.parametrize(("choice", "hand"), HAND_CASES)
def test_exported_block_matches_hand_written_block(tiny, choice, hand):
    s, b, ratio, kernel, se = choice
    c_in, c_out, hidden, se_width, stride, act = hand
    arch = tiny.space.default()
    arch.update({f"stage{s}.block{b}.expand": ratio, f"stage{s}.block{b}.kernel": kernel, f"stage{s}.block{b}.se": se})
    exported = export_subnet(tiny.module.stages[s].blocks[b], arch).eval()
    reference = HandBlock(c_in, c_out, hidden, kernel, stride, se_width, act).eval()
    assert sum(p.numel() for p in exported.parameters()) == sum(p.numel() for p in reference.parameters())
    _copy_in_order(reference, exported)
    x = _input(2, 1, size=8, chans=c_in)
    torch.testing.assert_close(reference(x), exported(x))


def test_exported_network_parameter_count(tiny):
    arch = tiny.space.sample(11)
    exported = tiny.export(arch)
    widths = {0: (8, 16), 1: (16, 24), 2: (24, 32)}
    count = 3 * 16 * 9 + 2 * 16  # stem conv + BN
    count += 16 * 9 + 2 * 16 + 16 * 8 + 2 * 8  # fixed depthwise-separable block
    for s in range(3):
        for b in range(arch[f"stage{s}.depth"]):
            c_in = widths[s][0] if b == 0 else widths[s][1]
            c_out = widths[s][1]
            hidden = c_in * arch[f"stage{s}.block{b}.expand"]
            k = arch[f"stage{s}.block{b}.kernel"]
            se = {24: 8, 32: 8, 48: 16, 64: 16, 72: 24, 96: 24, 144: 40, 192: 48}[hidden] if arch[f"stage{s}.block{b}.se"] else 0
            count += c_in * hidden + 2 * hidden + hidden * k * k + 2 * hidden + hidden * c_out + 2 * c_out
            count += (hidden * se + se + se * hidden + hidden) if se else 0
    count += 32 * 96 + 2 * 96 + 96 * 128 + 128 + 128 * 7 + 7  # head convs, BN, classifier
    assert sum(p.numel() for p in exported.parameters()) == count


# -- per-example mode -------------------------------------------------------------------------
@SETTINGS
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(1, 6))
def test_per_example_equals_each_subnet_alone(tiny, seed, n):
    archs = tiny.space.sample_many(n, seed=seed)
    x = _input(n, seed)
    with tiny.activated(archs):
        batch = tiny(x)
    for i, arch in enumerate(archs):
        with tiny.activated(arch):
            alone = tiny(x[i : i + 1])
        torch.testing.assert_close(batch[i : i + 1], alone, atol=1e-5, rtol=1e-5)


def test_per_example_indices_fast_path_matches_archs(tiny):
    indices = tiny.space.sample_indices(6, seed=4)
    x = _input(6, 4)
    tiny.activate_indices(indices)
    fast = tiny(x)
    archs = tiny.active_arch
    tiny.activate(tiny.space.default())
    for i, arch in enumerate(archs):
        torch.testing.assert_close(fast[i : i + 1], tiny.export(arch).eval()(x[i : i + 1]), atol=1e-5, rtol=1e-5)


def test_per_example_training_step_backpropagates():
    torch.manual_seed(0)
    net = binas_supernet(preset="tiny", num_classes=5, max_depth=3)
    net.train()
    n = 12
    indices = net.space.sample_indices(n, seed=2)
    net.activate_indices(indices)
    archs = net.active_arch
    x, y = _input(n, 2), torch.randint(0, 5, (n,), generator=torch.Generator().manual_seed(2))
    tracked = {id(m): m.num_batches_tracked.clone() for m in net.modules() if isinstance(m, GroupedBatchNorm2d)}
    loss = F.cross_entropy(net(x), y)
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is None or bool(torch.isfinite(p.grad).all()) for p in net.parameters())
    for s, stage in enumerate(net.module.stages):
        for b, block in enumerate(stage.blocks):
            rows = [a for a in archs if a[f"stage{s}.depth"] > b]  # the examples reaching this block
            ratio_of = {r: i for i, r in enumerate(block.expand.values)}
            used_proj = {2 * ratio_of[a[f"stage{s}.block{b}.expand"]] + a[f"stage{s}.block{b}.se"] for a in rows}
            used_dw = {block.kernel.index_of(a[f"stage{s}.block{b}.kernel"]) for a in rows}
            bn = block.bn_pwl
            for g in range(len(bn)):
                has_grad = bn.weight.grad is not None and bool(bn.weight.grad[g].abs().sum() > 0)
                assert has_grad == (g in used_proj), (s, b, g)
                # Only BatchNorms some example used count the batch (as in each example's own subnet).
                assert bn.num_batches_tracked[g].item() - tracked[id(bn)][g].item() == (g in used_proj)
            for k, conv in enumerate(block.conv_dw):
                assert (conv.weight.grad is not None and bool(conv.weight.grad.abs().sum() > 0)) == (k in used_dw)
            uses_se = any(a[f"stage{s}.block{b}.se"] for a in rows)
            assert (block.se_reduce.weight.grad is not None and bool(block.se_reduce.weight.grad.abs().sum() > 0)) == uses_se
            widest = max((block.hidden[ratio_of[a[f"stage{s}.block{b}.expand"]]] for a in rows), default=0)
            grad = block.conv_pw.weight.grad
            if widest:
                assert bool(grad[:widest].abs().sum(1).flatten().gt(0).all())
            assert grad is None or not bool(grad[widest:].abs().sum() > 0)
    before = [p.detach().clone() for p in net.parameters()]
    torch.optim.SGD(net.parameters(), lr=0.1).step()
    assert any(not torch.equal(p, q) for p, q in zip(net.parameters(), before))


def test_per_example_uniform_batch_matches_export_in_training_mode(tiny):
    arch = tiny.space.sample(5)
    x = _input(5, 5)
    state = {k: v.clone() for k, v in tiny.state_dict().items()}
    exported = tiny.export(arch).train()
    tiny.train()
    try:
        with tiny.activated([arch] * 5):
            got = tiny(x)
    finally:
        tiny.load_state_dict(state)
        tiny.eval()
    torch.testing.assert_close(got, exported(x), atol=1e-5, rtol=1e-5)


def test_expansion_batch_norm_statistics_use_only_the_rows_of_each_channel():
    torch.manual_seed(0)
    block = BinasBlock(8, 8, 1, prefix="b").train()
    net = Supernet(block)
    narrow = {"b.expand": 3, "b.kernel": 3, "b.se": False}
    wide = {"b.expand": 6, "b.kernel": 5, "b.se": True}
    x = _input(5, 0, size=6, chans=8)
    rows_wide = torch.tensor([1, 3])
    net.activate([wide if i in (1, 3) else narrow for i in range(5)])
    net(x)
    conv = F.conv2d(x, block.conv_pw.weight)  # (5, 48, 6, 6) before the BN
    expected = torch.cat([conv[:, :24].mean((0, 2, 3)), conv[rows_wide, 24:].mean((0, 2, 3))])
    torch.testing.assert_close(block.bn_pw.running_mean, 0.1 * expected, atol=1e-6, rtol=1e-5)
    # Each depthwise BN saw only its kernel's rows; rows_wide use kernel 5, the others kernel 3.
    assert block.bn_dw.num_batches_tracked.tolist() == [1, 1]
    # The kernel-5 BN's channels past the wide rows' width stay untouched; the kernel-3 BN's channels past 24 too.
    assert torch.equal(block.bn_dw.running_mean[0, 24:], torch.zeros(24))
    assert not torch.equal(block.bn_dw.running_mean[1, 24:], torch.zeros(24))
    used = block.bn_pwl.num_batches_tracked.tolist()
    assert used == [1, 0, 0, 0, 0, 1]  # (3, off) and (6, on)


# -- host reads (each one a GPU synchronisation) ------------------------------------------------
class _HostReads(TorchDispatchMode):
    """Counts the operator calls that read a tensor's value back to the host."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += func is torch.ops.aten._local_scalar_dense.default
        return func(*args, **(kwargs or {}))


def test_per_example_block_and_grouped_batch_norm_read_nothing_back():
    # With the batch's index bounds known from activation, an unrouted block decides its widths, SE and
    # norms on the host: no GPU sync in its forward or backward (the kernel grouping reads counts as a list).
    torch.manual_seed(0)
    block = BinasBlock(8, 8, 1, prefix="b").train()
    net = Supernet(block)
    x = _input(16, 0, size=6, chans=8).requires_grad_()
    net.activate_indices(net.space.sample_indices(16, seed=0))
    reads = _HostReads()
    with reads:
        block(x).square().sum().backward()
    assert reads.count == 0


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**31 - 1))
def test_host_index_bounds_change_nothing(tiny, seed):
    tiny.eval()
    tiny.activate_indices(tiny.space.sample_indices(6, seed))
    x = _input(6, seed, size=32)
    with_bounds = tiny(x)
    tiny.context.bounds = None
    torch.testing.assert_close(tiny(x), with_bounds, atol=1e-6, rtol=1e-6)


def test_a_checkpoint_with_separate_candidate_norms_loads():
    # Before GroupedBatchNorm2d, a block's candidate norms were an nn.ModuleList of nn.BatchNorm2d:
    # their keys were "....bn_pwl.{g}.weight". Such a state dict still loads, every value in its place.
    torch.manual_seed(0)
    net = binas_supernet(preset="tiny", num_classes=5, max_depth=2)
    _perturb_norms(net)
    old = {}
    for key, value in net.state_dict().items():
        head, _, name = key.rpartition(".")
        if head.endswith((".bn_dw", ".bn_pwl")):
            old.update({f"{head}.{g}.{name}": row.clone() for g, row in enumerate(value.unbind(0))})
        else:
            old[key] = value.clone()
    assert any(".bn_pwl.5.running_var" in key for key in old)
    fresh = binas_supernet(preset="tiny", num_classes=5, max_depth=2)
    fresh.load_state_dict(old)
    for key, value in net.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value), key
