"""The tiny ViT and GPT spaces: registered, exact export, per-example == alone, the offline text task."""

from __future__ import annotations

import pytest
import torch

from lightning_nas.spaces import char_dataset, create_space, list_spaces, next_token_accuracy, zen_of_python
from lightning_nas.spaces.staged import StagedSpace


def _inputs(name: str, n: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, 1, 8, 8, generator=g) if name == "vit-tiny" else torch.randint(0, 128, (n, 12), generator=g)


@pytest.mark.parametrize("name", ["vit-tiny", "gpt-tiny"])
def test_export_equals_supernet_and_per_example_equals_alone(name):
    assert name in list_spaces()
    torch.manual_seed(0)
    net = create_space(name, skip_layers=True)
    x = _inputs(name, 4)
    for train in (False, True):
        net.train(train)
        for seed in range(4):
            arch = net.space.sample(seed)
            with net.activated(arch):
                expected = net(x)
            torch.testing.assert_close(net.export(arch).train(train)(x), expected, atol=1e-5, rtol=1e-5)
    net.eval()
    net.activate_indices(net.space.sample_indices(4, 1))
    together, archs = net(x), net.active_arch
    for i, arch in enumerate(archs):
        torch.testing.assert_close(net.export(arch).eval()(x[i : i + 1]), together[i : i + 1], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["vit-tiny", "gpt-tiny"])
def test_structure_depth_is_a_stage_and_every_sized_op_is_in_a_unit(name):
    staged = StagedSpace.of(create_space(name))
    layers, fixed = staged.stages
    assert layers.depth_label == "enc.depth"
    assert all(labels[0] == "embed_dim" for labels in layers.block_labels)
    assert fixed.paths[1:] == ("encoder.norm", "head") and fixed.block_labels == (("embed_dim",),) * 3


def test_zen_text_and_char_windows():
    text = zen_of_python()
    assert text.startswith("The Zen of Python, by Tim Peters") and len(text) == 856
    x, y = char_dataset(length=16, stride=4).tensors
    assert x.shape == y.shape == ((856 - 16 + 3) // 4, 16) and x.dtype == torch.long
    torch.testing.assert_close(x[0, 1:], y[0, :-1])
    assert "".join(map(chr, x[0].tolist())) == text[:16]
    with pytest.raises(ValueError, match=r"`text` must be ASCII .* found 'é'"):
        char_dataset("café au lait " * 5)
    with pytest.raises(ValueError, match=r"`text` must be longer than `length` \(32\) characters, got 5"):
        char_dataset("short")
    with pytest.raises(ValueError, match=r"`stride` must be a positive int, got 0"):
        char_dataset(stride=0)


def test_next_token_accuracy_and_bad_space_arguments():
    logits = torch.zeros(2, 3, 5)
    logits[0, :, 1] = 1
    logits[1, 0, 2] = 1
    score = next_token_accuracy(logits, torch.tensor([[1, 1, 0], [2, 2, 2]]))
    torch.testing.assert_close(score, torch.tensor([2 / 3, 1 / 3]))
    with pytest.raises(ValueError, match=r"`logits` must be \(B, T, V\)"):
        next_token_accuracy(torch.zeros(2, 5), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match=r"`patch_size` \(3\) must divide `image_size` \(8\)"):
        create_space("vit-tiny", patch_size=3)
    with pytest.raises(ValueError, match=r"`embed_dims` must be a non-empty list of distinct positive ints"):
        create_space("gpt-tiny", embed_dims=[16, 16])
    with pytest.raises(ValueError, match=r"PatchEmbedding expects images \(B, 1, 8, 8\)"):
        create_space("vit-tiny")(torch.zeros(1, 3, 8, 8))
