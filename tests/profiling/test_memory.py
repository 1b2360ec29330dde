"""Memory tables (KV cache, training activation memory): exact against counts on whole subnets."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

import lightning_nas as ln
from lightning_nas.nn import MultiheadSelfAttention
from lightning_nas.profiling.memory import build_activation_memory_table, build_kv_cache_table, kv_cache_bytes, saved_activation_bytes
from lightning_nas.spaces import create_space

CASES = {"vit-tiny": ((1, 8, 8), None), "gpt-tiny": ((12,), 128)}


def _qkv_count(module: nn.Module, x: torch.Tensor) -> int:
    """Brute force: bytes of the K and V thirds of every qkv projection's output in one forward."""
    total = [0]
    handles = [m.qkv.register_forward_hook(lambda mod, args, out: total.__setitem__(0, total[0] + out.numel() * 2 // 3 * out.element_size()))
               for m in module.modules() if isinstance(m, MultiheadSelfAttention)]
    with torch.no_grad():
        module.eval()(x)
    for h in handles:
        h.remove()
    return total[0]


@pytest.mark.parametrize("name", sorted(CASES))
def test_tables_equal_whole_subnet_counts(name):
    size, vocab = CASES[name]
    torch.manual_seed(0)
    net = create_space(name, skip_layers=True)
    kv = build_kv_cache_table(net, size, batch_size=3, vocab_size=vocab)
    act = build_activation_memory_table(net, size, batch_size=3, vocab_size=vocab)
    assert (kv.name, kv.unit, act.name, act.unit) == ("kv_cache", "bytes", "activation_memory", "bytes")
    x = torch.randint(0, vocab, (3, *size)) if vocab else torch.randn(3, *size)
    for seed in range(8):
        arch = net.space.sample(seed)
        subnet = net.export(arch)
        assert kv.predict(arch) == _qkv_count(subnet, x) == kv_cache_bytes(subnet, x)
        assert act.predict(arch) == saved_activation_bytes(subnet, x)
    assert kv.predict(net.space.smallest()) == 0  # every layer skipped
    check = act.metadata["check_smallest_bytes"]
    assert check["measured"] == check["predicted"]


def test_kv_cache_scales_with_batch_and_sequence_length():
    net = create_space("gpt-tiny")
    arch = net.space.largest()
    base = build_kv_cache_table(net, (8,), vocab_size=128).predict(arch)
    # 2 layers · 2 (K, V) · T · 32 features · 4 bytes
    assert base == 2 * 2 * 8 * 32 * 4
    assert build_kv_cache_table(net, (16,), batch_size=3, vocab_size=128).predict(arch) == 6 * base


def test_saved_activation_bytes_counts_storages_once_and_no_parameters():
    linear = nn.Linear(4, 3)
    x = torch.zeros(2, 4, requires_grad=True)
    assert saved_activation_bytes(linear, x) == 2 * 4 * 4  # the input (for the weight's gradient), not the weight
    double = nn.Sequential(nn.Linear(4, 4), nn.ReLU())  # ReLU saves its output: one new storage
    assert saved_activation_bytes(double, x) == 2 * 4 * 4 + 2 * 4 * 4
    assert linear.training and double.training  # flags restored


def test_torch_multihead_attention_kv_count():
    class SelfAttention(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.mha = nn.MultiheadAttention(8, 2, batch_first=True)

        def forward(self, x):
            return self.mha(x, x, x, need_weights=False)[0]

    assert kv_cache_bytes(SelfAttention(), torch.zeros(2, 5, 8)) == 2 * 2 * 5 * 8 * 4


def test_memory_table_is_a_limit_and_the_search_equals_brute_force():
    torch.manual_seed(0)
    net = create_space("gpt-tiny")
    kv = build_kv_cache_table(net, (8,), vocab_size=128)
    budget = kv.predict(net.space.largest()) / 2
    objective = build_activation_memory_table(net, (8,), vocab_size=128)  # any additive table to maximise
    best = ln.search_constrained(objective, ln.Limit(kv, upper=budget))
    labels = net.space.labels
    archs = [dict(zip(labels, values)) for values in itertools.product(*(net.space[label].values for label in labels))]
    feasible = [a for a in archs if kv.predict(a) <= budget]
    assert kv.predict(best.arch) <= budget
    assert objective.predict(best.arch) == max(objective.predict(a) for a in feasible)


def test_bad_arguments():
    net = create_space("gpt-tiny")
    with pytest.raises(ValueError, match=r"`batch_size` must be an int >= 1, got 0"):
        build_kv_cache_table(net, (8,), batch_size=0, vocab_size=128)
    with pytest.raises(ValueError, match=r"`vocab_size` must be an int >= 1 or None"):
        build_kv_cache_table(net, (8,), vocab_size=-3)
    with pytest.raises(ValueError, match=r"`input_size` must be a non-empty tuple of positive ints"):
        build_activation_memory_table(net, (), vocab_size=128)
    with pytest.raises(ValueError, match=r"`supernet` must be a lightning_nas.Supernet"):
        build_kv_cache_table(nn.Linear(2, 2), (8,))
