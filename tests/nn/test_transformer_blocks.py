"""Elastic MLP, embeddings, SkipChoice and transformer encoders: export, per-example rows, reordering."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import lightning_nas as ln
from lightning_nas.nn import Choice, Mutable
from lightning_nas.nn.attention import MultiheadSelfAttention
from lightning_nas.nn.embedding import ElasticEmbedding, ElasticPositionalEmbedding, PositionalEmbedding
from lightning_nas.nn.mlp import ElasticMLP
from lightning_nas.nn.skip_choice import SkipChoice
from lightning_nas.nn.transformer import ElasticTransformerBlock, ElasticTransformerEncoder, TransformerBlock, TransformerEncoder

VOCAB, LENGTH = 11, 5


def _randomise(module: nn.Module, seed: int) -> None:
    """Non-trivial biases and norm parameters, so that slicing every tensor is tested."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            if p.dim() == 1:
                p.copy_(torch.randn(p.shape, generator=g) * 0.5 + (1.0 if p.shape[0] % 2 else 0.0))


class TinyGPT(nn.Module):
    """Token + position embedding, an elastic causal encoder, a language-model head."""

    def __init__(self, skip_layers: bool = True) -> None:
        super().__init__()
        embed = Choice([8, 12], "embed_dim", default=12)
        self.tokens = ElasticEmbedding(VOCAB, embed)
        self.positions = ElasticPositionalEmbedding(LENGTH, embed)
        self.encoder = ElasticTransformerEncoder(
            embed, 3, [1, 2, 3], [1.0, 2.0], [2, 4], depths=[1, 2, 3], skip_layers=skip_layers, causal=True, label="enc"
        )
        self.head = ln.ElasticLinear(embed, VOCAB)

    def forward(self, ids: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.head(self.encoder(self.positions(self.tokens(ids)), attn_mask))


def _gpt(seed: int = 0, skip_layers: bool = True) -> ln.Supernet:
    torch.manual_seed(seed)
    model = TinyGPT(skip_layers)
    _randomise(model, seed)
    return ln.Supernet(model)


def _ids(batch: int, seed: int) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, LENGTH), generator=torch.Generator().manual_seed(seed))


def _padding_mask(batch: int, seed: int) -> torch.Tensor:
    """(B, T, T): each row ignores a random number of trailing (padding) keys, never its first one."""
    lengths = torch.randint(1, LENGTH + 1, (batch,), generator=torch.Generator().manual_seed(seed))
    keys = torch.arange(LENGTH)[None, :] < lengths[:, None]
    return keys[:, None, :].expand(batch, LENGTH, LENGTH)


def test_decisions_and_labels():
    net = _gpt()
    per_layer = [f"enc.{i}.{name}" for i in range(3) for name in ("num_heads", "head_dim", "mlp_hidden", "keep")]
    assert sorted(net.space.labels) == sorted(["embed_dim", "enc.depth", *per_layer])
    assert net.space["enc.0.mlp_hidden"].values == (12, 24)  # mlp_ratio 1, 2 of the largest embedding width
    assert net.space["enc.1.keep"].values == (False, True) and net.space.smallest()["enc.1.keep"] is False
    assert net.space.default() == net.space.largest()


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), train=st.booleans(), masked=st.booleans())
def test_export_equals_supernet(seed, train, masked):
    net = _gpt(seed % 3).train(train)
    arch = net.space.sample(seed)
    ids, mask = _ids(3, seed), _padding_mask(3, seed) if masked else None
    net.activate(arch)
    exported = net.export(arch).train(train)
    assert not any(isinstance(m, (Mutable, Choice)) for m in exported.modules())
    assert isinstance(exported.encoder, TransformerEncoder) and isinstance(exported.encoder.layers, nn.Sequential)
    assert all(type(b) in (TransformerBlock, nn.Identity) for b in exported.encoder.layers)
    torch.testing.assert_close(exported(ids, mask), net(ids, mask), atol=1e-5, rtol=1e-5)


def test_exported_sizes_follow_the_arch():
    net = _gpt()
    arch = {**net.space.largest(), "embed_dim": 8, "enc.depth": 2, "enc.0.keep": False, "enc.1.num_heads": 2,
            "enc.1.head_dim": 2, "enc.1.mlp_hidden": 12}
    exported = net.export(arch)
    assert len(exported.encoder.layers) == 2 and isinstance(exported.encoder.layers[0], nn.Identity)
    block = exported.encoder.layers[1]
    assert isinstance(block.attn, MultiheadSelfAttention) and (block.attn.num_heads, block.attn.head_dim) == (2, 2)
    assert block.attn.qkv.weight.shape == (12, 8) and block.mlp[0].weight.shape == (12, 8)
    assert isinstance(exported.positions, PositionalEmbedding) and exported.tokens.weight.shape == (VOCAB, 8)
    assert exported.head.weight.shape == (VOCAB, 8) and exported.encoder.norm.normalized_shape == (8,)


@settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), masked=st.booleans())
def test_per_example_equals_each_subnet_alone(seed, masked):
    net = _gpt(seed % 3).eval()
    n = 6
    archs = net.space.sample_many(n, seed)
    ids, mask = _ids(n, seed), _padding_mask(n, seed) if masked else None
    net.activate(archs)
    together = net(ids, mask)
    for i, arch in enumerate(archs):
        with net.activated(arch):
            alone = net(ids[i : i + 1], None if mask is None else mask[i : i + 1])
        torch.testing.assert_close(together[i : i + 1], alone, atol=1e-5, rtol=1e-5)


def test_per_example_training_step_backpropagates():
    net = _gpt().train()
    net.activate_indices(net.space.sample_indices(6, 0))
    logits = net(_ids(6, 1), _padding_mask(6, 1))
    nn.functional.cross_entropy(logits.flatten(0, 1), _ids(6, 2).flatten()).backward()
    assert net.module.tokens.weight.grad.abs().sum() > 0
    assert all(p.grad is not None for p in net.module.encoder.blocks()[0].parameters())


def test_reorder_by_importance_preserves_the_function():
    net = _gpt().eval()
    ids = _ids(4, 0)
    net.activate(net.space.largest())
    before = net(ids)
    net.module.encoder.reorder_by_importance()
    torch.testing.assert_close(net(ids), before, atol=1e-5, rtol=1e-5)
    for block in net.module.encoder.blocks():
        heads, hidden = block.attn.head_importance(), block.mlp.hidden_importance()
        assert torch.all(heads[:-1] >= heads[1:]) and torch.all(hidden[:-1] >= hidden[1:])


def _mlp(seed: int = 0) -> ln.Supernet:
    torch.manual_seed(seed)
    width = Choice([4, 6], "e", default=6)
    mlp = ElasticMLP(width, Choice([3, 6, 9], "m", default=9), activation=nn.Sigmoid)  # sigmoid(0) != 0 on purpose
    _randomise(mlp, seed)
    return ln.Supernet(mlp)


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**31 - 1))
def test_mlp_export_and_per_example(seed):
    net = _mlp(seed % 3)
    arch = net.space.sample(seed)
    x = torch.randn(4, 3, 6, generator=torch.Generator().manual_seed(seed))
    net.activate(arch)
    exported = net.export(arch)
    assert [type(m) for m in exported] == [nn.Linear, nn.Sigmoid, nn.Linear] and exported[0].out_features == arch["m"]
    torch.testing.assert_close(exported(x[..., : arch["e"]]), net(x[..., : arch["e"]]), atol=1e-6, rtol=1e-5)
    archs = net.space.sample_many(4, seed + 1)
    x = torch.stack([nn.functional.pad(x[i, :, : a["e"]], (0, 6 - a["e"])) for i, a in enumerate(archs)])
    net.activate(archs)
    together = net(x)
    for i, a in enumerate(archs):
        with net.activated(a):
            torch.testing.assert_close(together[i : i + 1, :, : a["e"]], net(x[i : i + 1, :, : a["e"]]), atol=1e-6, rtol=1e-5)


def test_mlp_reorder_hidden():
    net = _mlp()
    mlp = net.module
    x = torch.randn(2, 6)
    before = net(x)
    importance = mlp.hidden_importance()
    order = mlp.reorder_hidden()
    torch.testing.assert_close(order, torch.argsort(importance, descending=True, stable=True))
    torch.testing.assert_close(net(x), before, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(mlp.hidden_importance(), importance[order])
    with pytest.raises(ValueError, match=r"`importance` must be a Tensor of shape \(9,\)"):
        mlp.reorder_hidden(torch.ones(3))


def test_skip_choice_routes_only_kept_rows():
    calls = []

    class Count(nn.Module):
        def forward(self, x):
            calls.append(x.shape[0])
            return x * 2 + 1

    net = ln.Supernet(SkipChoice(Count(), "keep"))
    x = torch.randn(4, 3)
    net.activate([{"keep": True}, {"keep": False}, {"keep": True}, {"keep": False}])
    y = net(x)
    assert calls == [2]
    torch.testing.assert_close(y[0::2], x[0::2] * 2 + 1)
    torch.testing.assert_close(y[1::2], x[1::2])
    assert isinstance(net.export({"keep": False}), nn.Identity) and isinstance(net.export({"keep": True}), Count)
    bad = ln.Supernet(SkipChoice(nn.Linear(3, 2), "keep"))
    with pytest.raises(ValueError, match=r"SkipChoice 'keep': the block maps shape \(4, 3\) to \(4, 2\)"):
        bad(x)


def test_elastic_block_alone_and_post_norm():
    torch.manual_seed(0)
    width = Choice([4, 8], "e", default=8)
    block = ElasticTransformerBlock(width, Choice([1, 2], "h", default=2), Choice([8, 16], "m", default=16), norm_first=False)
    _randomise(block, 0)
    net = ln.Supernet(block)
    x, mask = torch.randn(2, 4, 8), torch.ones(4, 4, dtype=torch.bool).tril()
    for arch in net.space.enumerate():
        net.activate(arch)
        xe = x[..., : arch["e"]]
        exported = net.export(arch)
        assert type(exported) is TransformerBlock and not exported.norm_first
        torch.testing.assert_close(exported(xe, mask), net(xe, mask), atol=1e-5, rtol=1e-5)


def test_embeddings_from_plain_and_per_example():
    plain = nn.Embedding(VOCAB, 6, padding_idx=0)
    emb = ElasticEmbedding.from_embedding(plain, embedding_dim=Choice([2, 6], "e", default=6))
    assert emb.weight is plain.weight
    net = ln.Supernet(nn.Sequential(emb, ElasticPositionalEmbedding(LENGTH, emb.embedding_dim)))
    ids = _ids(3, 0)
    net.activate([{"e": 2}, {"e": 6}, {"e": 2}])
    together = net(ids)
    assert together.shape == (3, LENGTH, 6) and torch.all(together[0::2, :, 2:] == 0)
    for i, e in enumerate([2, 6, 2]):
        exported = net.export({"e": e})
        torch.testing.assert_close(together[i : i + 1, :, :e], exported(ids[i : i + 1]), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: ElasticTransformerEncoder(8, 0, 2), r"`depth` must be an int >= 1, got 0"),
        (lambda: ElasticTransformerEncoder(8, 2, [2, 2]), r"`num_heads` must be one or a list of distinct positive ints, got \[2, 2\]"),
        (lambda: ElasticTransformerEncoder(8, 2, 2, mlp_ratio=[0.0]), r"`mlp_ratio` must be one or a list of distinct positive finite numbers"),
        (lambda: ElasticTransformerEncoder(10, 2, [2, 4]), r"largest embed_dim \(10\) is not divisible by the largest num_heads \(4\)"),
        (lambda: ElasticTransformerEncoder(8, 2, 2, depths=[3]), r"`depths` of DepthChoice .* must be ints in \[0, 2\], got \[3\]"),
        (lambda: ElasticTransformerEncoder(8, 2, 2, label=""), r"`label` must be a non-empty string or None"),
        (lambda: ElasticMLP(4, 8, activation="gelu"), r"`activation` must be a callable returning an nn.Module"),
        (lambda: ElasticEmbedding(VOCAB, 4, padding_idx=VOCAB), r"`padding_idx` must be < num_embeddings \(11\), got 11"),
        (lambda: SkipChoice(nn.ReLU(), "s", default=1), r"`default` of SkipChoice 's' must be a bool"),
        (lambda: TransformerBlock(nn.Identity(), "attn", nn.Identity(), nn.Identity()), r"`attn` must be an nn.Module, got str"),
    ],
)
def test_bad_constructor_arguments(build, message):
    with pytest.raises(ValueError, match=message):
        build()


def test_bad_inputs():
    net = _gpt()
    with pytest.raises(ValueError, match=r"ElasticEmbedding expects integer token ids"):
        net(torch.randn(2, LENGTH))
    with pytest.raises(ValueError, match=r"ElasticPositionalEmbedding expects \(B, T <= 5, E\)"):
        net(torch.zeros(2, LENGTH + 1, dtype=torch.long))
    with pytest.raises(ValueError, match=r"`attn_mask` must have shape"):
        net(_ids(2, 0), torch.ones(3, 3, dtype=torch.bool))


def test_staged_structure_and_exact_flops_and_params_tables():
    """Depth is a stage, each layer (with its on/off decision) a unit: additive tables are exact."""
    from torch.utils.flop_counter import FlopCounterMode

    from lightning_nas.profiling.tables import build_flops_table, build_params_table
    from lightning_nas.spaces.staged import StagedSpace

    torch.manual_seed(0)
    net = ln.Supernet(ElasticTransformerEncoder(8, 2, [1, 2], [1.0, 2.0], depths=[1, 2], skip_layers=True, label="enc"))
    (stage,) = StagedSpace.of(net).stages
    assert stage.depth_label == "enc.depth"
    assert stage.block_labels == (("enc.0.num_heads", "enc.0.mlp_hidden", "enc.0.keep"), ("enc.1.num_heads", "enc.1.mlp_hidden", "enc.1.keep"))
    flops, params = build_flops_table(net, (LENGTH, 8)), build_params_table(net)
    for seed in range(6):
        arch = net.space.sample(seed)
        exported = net.export(arch)
        with FlopCounterMode(display=False) as counter:
            exported(torch.randn(1, LENGTH, 8))
        assert flops.predict(arch) == pytest.approx(counter.get_total_flops() / 1e6, abs=1e-9)
        assert params.predict(arch) == pytest.approx(sum(p.numel() for p in exported.parameters()))


@pytest.mark.parametrize("static_shapes", [True, False])
@pytest.mark.parametrize("space", ["gpt-tiny", "vit-tiny"])
def test_registered_spaces_per_example_rows_equal_their_exports(space, static_shapes):
    """The registered transformer spaces leave the embeddings' and the blocks' outputs unmasked
    inside the pre-norm stream (its norms ignore each row's features past its width): every row
    still computes exactly its own exported subnet, in both per-example modes."""
    from lightning_nas.spaces import create_space

    torch.manual_seed(1)
    net = create_space(space).train()
    _randomise(net, 1)
    net.static_shapes = static_shapes
    n = 8
    g = torch.Generator().manual_seed(2)
    x = torch.randint(0, 128, (n, 12), generator=g) if space == "gpt-tiny" else torch.randn(n, 1, 8, 8, generator=g)
    archs = net.space.sample_many(n, 5)
    net.activate(archs)
    together = net(x)
    for i, arch in enumerate(archs):
        torch.testing.assert_close(together[i : i + 1], net.export(arch).train()(x[i : i + 1]), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("shape", [(5, 8), (5, 3, 8)])
def test_per_example_layer_norm_rows_and_gradients_equal_each_rows_own_norm(affine, shape):
    """ElasticLayerNorm per example (one native layer_norm, its own backward): each row's output and
    the input / weight / bias gradients equal nn.LayerNorm over the row's own prefix, whatever its
    input holds past that prefix (the row's output there is zero, its gradient there zero)."""
    from lightning_nas.nn import ElasticLayerNorm

    torch.manual_seed(0)
    width = Choice([3, 5, 8], "e", default=8)
    norm = ElasticLayerNorm(width, elementwise_affine=affine).double()
    if affine:
        _randomise(norm, 0)
    net = ln.Supernet(norm)
    widths = [3, 8, 5, 3, 5]
    net.activate([{"e": e} for e in widths])
    x = (torch.randn(shape, dtype=torch.float64) * 3 + 1).requires_grad_()
    weights = torch.randn(shape, dtype=torch.float64)
    out = net(x)
    (out * weights).sum().backward()
    grads = {name: p.grad.clone() for name, p in norm.named_parameters()}
    expected_grads = {name: torch.zeros_like(p) for name, p in norm.named_parameters()}
    for i, e in enumerate(widths):
        alone = nn.LayerNorm(e, elementwise_affine=affine).double()
        if affine:
            with torch.no_grad():
                alone.weight.copy_(norm.weight[:e])
                alone.bias.copy_(norm.bias[:e])
        xi = x.detach()[i : i + 1, ..., :e].clone().requires_grad_()
        yi = alone(xi)
        (yi * weights[i : i + 1, ..., :e]).sum().backward()
        torch.testing.assert_close(out[i : i + 1, ..., :e], yi)
        assert torch.all(out[i, ..., e:] == 0) and torch.all(x.grad[i, ..., e:] == 0)
        torch.testing.assert_close(x.grad[i : i + 1, ..., :e], xi.grad)
        for name, p in alone.named_parameters():
            expected_grads[name][:e] += p.grad
    for name in grads:
        torch.testing.assert_close(grads[name], expected_grads[name], msg=name)
