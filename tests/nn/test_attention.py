"""ElasticMultiheadAttention: sliced heads / head dims / embedding, export, per-example rows, head reordering."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import lightning_nas as ln
from lightning_nas.nn import Choice
from lightning_nas.nn.attention import ElasticMultiheadAttention, MultiheadSelfAttention, attention_mask

EMBED, HEADS, DIMS = [4, 8], [1, 2, 3], [2, 4]


def _attention(causal: bool = False, seed: int = 0) -> ln.Supernet:
    torch.manual_seed(seed)
    attn = ElasticMultiheadAttention(Choice(EMBED, "e", default=8), Choice(HEADS, "h", default=3), Choice(DIMS, "d", default=4), causal=causal)
    with torch.no_grad():  # non-zero biases, so that slicing them is tested too
        attn.in_proj_bias.normal_()
        attn.out_proj_bias.normal_()
    return ln.Supernet(attn)


def _mask(batch: int, length: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(batch, length, length, generator=g) > 0.4) | torch.eye(length, dtype=torch.bool)


def _padded(x: torch.Tensor, width: int) -> torch.Tensor:
    return nn.functional.pad(x, (0, width - x.shape[-1]))


def test_full_attention_equals_nn_multihead_attention():
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(8, 4, batch_first=True)
    nn.init.normal_(mha.in_proj_bias)
    nn.init.normal_(mha.out_proj.bias)
    elastic = ElasticMultiheadAttention.from_multihead_attention(mha, num_heads=Choice([2, 4], "h", default=4))
    assert elastic.in_proj_weight is mha.in_proj_weight and elastic.out_proj_weight is mha.out_proj.weight
    net = ln.Supernet(elastic)
    x = torch.randn(2, 5, 8)
    torch.testing.assert_close(net(x), mha(x, x, x, need_weights=False)[0], atol=1e-6, rtol=1e-5)
    forbidden = torch.ones(5, 5, dtype=torch.bool).triu(1)  # nn.MultiheadAttention: True = may not attend
    expected = mha(x, x, x, need_weights=False, attn_mask=forbidden)[0]
    torch.testing.assert_close(net(x, ~forbidden), expected, atol=1e-6, rtol=1e-5)
    causal = ln.Supernet(ElasticMultiheadAttention.from_multihead_attention(mha, causal=True))
    torch.testing.assert_close(causal(x), expected, atol=1e-6, rtol=1e-5)


def test_subnet_with_square_projection_is_nn_multihead_attention_of_sliced_weights():
    net = _attention()
    attn = net.module
    arch = {"e": 4, "h": 2, "d": 2}
    w_in, b_in, w_out, b_out = attn.sliced_weights(4, 2, 2)
    # Head j's query rows are rows j*D .. j*D+d of the full query projection.
    torch.testing.assert_close(w_in[2:4], attn.in_proj_weight[4:6, :4])
    mha = nn.MultiheadAttention(4, 2, batch_first=True)
    with torch.no_grad():
        mha.in_proj_weight.copy_(w_in), mha.in_proj_bias.copy_(b_in)
        mha.out_proj.weight.copy_(w_out), mha.out_proj.bias.copy_(b_out)
    x = torch.randn(3, 6, 4)
    net.activate(arch)
    torch.testing.assert_close(net(x), mha(x, x, x, need_weights=False)[0], atol=1e-6, rtol=1e-5)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), train=st.booleans(), causal=st.booleans(), masked=st.booleans())
def test_export_equals_supernet(seed, train, causal, masked):
    net = _attention(causal, seed % 7).train(train)
    arch = net.space.sample(seed)
    x = torch.randn(3, 5, arch["e"], generator=torch.Generator().manual_seed(seed))
    mask = _mask(3, 5, seed) if masked else None
    net.activate(arch)
    exported = net.export(arch).train(train)
    assert type(exported) is MultiheadSelfAttention
    assert (exported.embed_dim, exported.num_heads, exported.head_dim) == (arch["e"], arch["h"], arch["d"])
    torch.testing.assert_close(exported(x, mask), net(x, mask), atol=1e-5, rtol=1e-5)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), causal=st.booleans(), masked=st.booleans())
def test_per_example_equals_each_subnet_alone(seed, causal, masked):
    net = _attention(causal, seed % 5)
    n = 5
    archs = net.space.sample_many(n, seed)
    g = torch.Generator().manual_seed(seed)
    # Row i's input uses its own width; its features past that width are zero (as upstream layers make them).
    x = torch.stack([_padded(torch.randn(4, a["e"], generator=g), 8) for a in archs])
    mask = _mask(n, 4, seed) if masked else None
    net.activate(archs)
    together = net(x, mask)
    for i, arch in enumerate(archs):
        e = arch["e"]
        with net.activated(arch):
            alone = net(x[i : i + 1, :, :e], None if mask is None else mask[i : i + 1])
        torch.testing.assert_close(together[i : i + 1, :, :e], alone, atol=1e-5, rtol=1e-5)
        assert torch.all(together[i, :, e:] == 0)


def test_per_example_backward_reaches_only_used_heads():
    net = _attention()
    net.activate([{"e": 8, "h": 1, "d": 4}, {"e": 8, "h": 2, "d": 2}])
    net(torch.randn(2, 3, 8)).sum().backward()
    grad = net.module.out_proj_weight.grad.view(8, 3, 4)
    assert grad[:, 2].abs().sum() == 0 and grad[:, 1, 2:].abs().sum() == 0  # head 3 and head 2's dims 2..3 unused
    assert grad[:, 0].abs().sum() > 0 and grad[:, 1, :2].abs().sum() > 0


@pytest.mark.parametrize("arch", [{"e": 8, "h": 3, "d": 4}, {"e": 4, "h": 2, "d": 2}])
def test_reorder_heads_preserves_the_full_attention_and_ranks_heads(arch):
    net = _attention().eval()
    attn = net.module
    x = torch.randn(2, 5, 8)
    net.activate(net.space.largest())
    before = net(x)
    importance = attn.head_importance()
    order = attn.reorder_heads()
    torch.testing.assert_close(order, torch.argsort(importance, descending=True, stable=True))
    torch.testing.assert_close(net(x), before, atol=1e-6, rtol=1e-5)
    assert torch.all(attn.head_importance()[:-1] >= attn.head_importance()[1:])
    # A smaller head count now keeps the most important heads: export still equals the supernet.
    net.activate(arch)
    torch.testing.assert_close(net.export(arch)(x[..., : arch["e"]]), net(x[..., : arch["e"]]), atol=1e-6, rtol=1e-5)
    custom = torch.tensor([0.0, 2.0, 1.0])
    net.activate(net.space.largest())
    assert attn.reorder_heads(custom).tolist() == [1, 2, 0]
    torch.testing.assert_close(net(x), before, atol=1e-6, rtol=1e-5)


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated")
def test_export_scripts():
    net = _attention(causal=True).eval()
    arch = {"e": 8, "h": 2, "d": 2}
    scripted = torch.jit.script(net.export(arch))
    x, mask = torch.randn(2, 4, 8), _mask(2, 4, 1)
    with net.activated(arch):
        torch.testing.assert_close(scripted(x, mask), net(x, mask), atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(scripted(x), net(x), atol=1e-6, rtol=1e-5)


def test_float_mask_and_causal_combine():
    mask = torch.zeros(3, 3)
    mask[0, 0] = -1.0
    combined = attention_mask(mask, True, 2, 3)
    assert combined[0, 0] == -1.0 and combined[0, 1] == float("-inf") and combined[2, 1] == 0.0
    assert attention_mask(None, True, 2, 3) is None
    assert attention_mask(torch.ones(2, 3, 3, dtype=torch.bool), False, 2, 3).shape == (2, 1, 3, 3)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda a: a(torch.randn(2, 8)), r"expects input \(B, T, E\).*got \(2, 8\)"),
        (lambda a: a(torch.randn(2, 3, 8), torch.ones(3, 4, dtype=torch.bool)), r"`attn_mask` must have shape.*T = 3.*got \[3, 4\]"),
        (lambda a: a(torch.randn(2, 3, 8), torch.ones(2, 2, 3, 3, dtype=torch.bool)), r"`attn_mask` must have shape.*got \[2, 2, 3, 3\]"),
        (lambda a: a(torch.randn(2, 3, 8), torch.ones(3, 3, dtype=torch.long)), r"`attn_mask` must be bool .* got dtype torch.int64"),
        (lambda a: a.reorder_heads(torch.ones(2)), r"`importance` must be a Tensor of shape \(3,\)"),
    ],
)
def test_bad_inputs(call, message):
    with pytest.raises(ValueError, match=message):
        call(_attention().module)


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: ElasticMultiheadAttention(10, 4), r"largest embed_dim \(10\) is not divisible by the largest num_heads \(4\)"),
        (lambda: ElasticMultiheadAttention(8, Choice([0, 2], "h")), r"`num_heads` must be a positive int"),
        (lambda: ElasticMultiheadAttention(8, 2, causal=1), r"`causal` must be a bool, got 1"),
        (lambda: ElasticMultiheadAttention(8, 2, bias=Choice([True, False], "b")), r"`bias` cannot be a Choice"),
        (lambda: ElasticMultiheadAttention.from_multihead_attention(nn.MultiheadAttention(8, 2, kdim=4, vdim=4)), r"plain self-attention"),
        (lambda: ElasticMultiheadAttention.from_multihead_attention(nn.MultiheadAttention(8, 2), num_heads=Choice([1, 4], "h")), r"largest num_heads candidate must be 2, got 4"),
        (lambda: MultiheadSelfAttention(8, 0, 2), r"`num_heads` must be an int >= 1, got 0"),
    ],
)
def test_bad_constructor_arguments(build, message):
    with pytest.raises(ValueError, match=message):
        build()
