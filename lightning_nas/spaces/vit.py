"""A tiny Vision Transformer search space (AutoFormer-style): ``create_space("vit-tiny")``.

Made for the demo's image task (scikit-learn's 8×8 digits, one channel): the image is cut into
``patch_size × patch_size`` patches, each projected to the embedding width, plus a learned position
embedding; an :class:`~lightning_nas.nn.ElasticTransformerEncoder` follows, then the mean over the
tokens and a linear classifier. Decisions (labels):

====================  =============================================  ==========================
label                 candidates                                     read by
====================  =============================================  ==========================
``embed_dim``         ``embed_dims``                                 every layer (residual stream)
``enc.{i}.num_heads``  ``num_heads`` (prefix of the heads)           layer ``i``'s attention
``enc.{i}.mlp_hidden`` ``round(r * max(embed_dims))`` per ratio      layer ``i``'s MLP
``enc.depth``         ``depths`` (the first ``n`` layers)            the encoder
``enc.{i}.keep``      ``[False, True]``                              with ``skip_layers=True``
====================  =============================================  ==========================

Every operation whose size follows a decision sits inside a module that reads it (the mean over
tokens is in :class:`MeanPoolHead`), so the structure-based tables (latency, FLOPs, parameters,
memory) see the whole network as additive units: the patch embedding, each encoder layer, the final
norm and the head, each over the joint values of the decisions it reads.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from lightning_nas.nn import Choice, ElasticLinear, ElasticPositionalEmbedding, ElasticTransformerEncoder
from lightning_nas.spaces.registry import register_space
from lightning_nas.supernet import Supernet

__all__ = ["MeanPoolHead", "PatchEmbedding", "TinyViT", "vit_tiny_supernet"]


def _positive_int(name: str, value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"`{name}` must be a positive int, got {value!r}")
    return value


class PatchEmbedding(nn.Module):
    """Non-overlapping patches, each linearly projected, plus a learned position embedding.

    Args:
        image_size: height and width of the (square) input.
        patch_size: side of a patch; must divide ``image_size``.
        in_chans: input channels.
        embed_dim: int or the embedding width ``Choice``.

    Shapes: ``(B, C, H, W) -> (B, N, e)`` with ``N = (H / patch_size)²`` and ``e`` the active width.
    """

    def __init__(self, image_size: int, patch_size: int, in_chans: int, embed_dim: int | Choice) -> None:
        super().__init__()
        for name, value in (("image_size", image_size), ("patch_size", patch_size), ("in_chans", in_chans)):
            _positive_int(name, value)
        if image_size % patch_size:
            raise ValueError(f"`patch_size` ({patch_size}) must divide `image_size` ({image_size})")
        self.image_size, self.patch_size, self.in_chans = image_size, patch_size, in_chans
        self.num_patches = (image_size // patch_size) ** 2
        self.proj = ElasticLinear(in_chans * patch_size * patch_size, embed_dim)
        self.pos = ElasticPositionalEmbedding(self.num_patches, embed_dim)

    def forward(self, x: Tensor) -> Tensor:
        expected = (self.in_chans, self.image_size, self.image_size)
        if x.dim() != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(f"PatchEmbedding expects images (B, {', '.join(map(str, expected))}), got {tuple(x.shape)}")
        patches = F.unfold(x, self.patch_size, stride=self.patch_size).transpose(1, 2)  # (B, N, C·p·p)
        return self.pos(self.proj(patches))

    def extra_repr(self) -> str:
        return f"image_size={self.image_size}, patch_size={self.patch_size}, in_chans={self.in_chans}"


class MeanPoolHead(nn.Module):
    """The mean over the tokens, then a linear classifier.

    Shapes: ``(B, N, e) -> (B, num_classes)``.
    """

    def __init__(self, embed_dim: int | Choice, num_classes: int) -> None:
        super().__init__()
        self.fc = ElasticLinear(embed_dim, _positive_int("num_classes", num_classes))

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(x.mean(1))


class TinyViT(nn.Module):
    """Patch embedding, an elastic transformer encoder and a mean-pool head.

    Shapes: ``(B, C, H, W) -> (B, num_classes)`` logits.
    """

    def __init__(self, patch_embed: PatchEmbedding, encoder: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.patch_embed, self.encoder, self.head = patch_embed, encoder, head

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.encoder(self.patch_embed(x)))


@register_space("vit-tiny")
def vit_tiny_supernet(
    *,
    image_size: int = 8,
    patch_size: int = 2,
    in_chans: int = 1,
    num_classes: int = 10,
    embed_dims: Sequence[int] = (16, 32),
    depth: int = 3,
    depths: Sequence[int] | None = (1, 2, 3),
    num_heads: Sequence[int] = (1, 2),
    mlp_ratios: Sequence[float] = (1.0, 2.0),
    skip_layers: bool = False,
) -> Supernet:
    """A tiny ViT supernet for 8×8 one-channel digits (the demo's plain ``"digits"`` task).

    The defaults give 16 patch tokens of widths 16 or 32, 1–3 layers with 1 or 2 heads and MLP
    ratio 1 or 2 (384 architectures; fewer distinct subnets, as layers past the depth do not
    run), each exported as plain ``nn.Linear`` / :class:`~lightning_nas.nn.MultiheadSelfAttention`
    / ``nn.LayerNorm`` modules.

    Args:
        image_size: input height and width.
        patch_size: patch side (must divide ``image_size``).
        in_chans: input channels.
        num_classes: classifier outputs.
        embed_dims: candidate embedding widths (one decision, ``"embed_dim"``).
        depth: the number of encoder layers.
        depths: candidate depths (``"enc.depth"``), or ``None`` for a fixed depth.
        num_heads: candidate head counts per layer; the head dimension is
            ``max(embed_dims) // max(num_heads)``.
        mlp_ratios: candidate MLP ratios per layer (hidden width ``ratio · max(embed_dims)``).
        skip_layers: add an on/off decision per layer (``"enc.{i}.keep"``).

    Raises:
        ValueError: for a bad argument (named in the message).
    """
    widths = sorted(embed_dims) if isinstance(embed_dims, Sequence) and not isinstance(embed_dims, str) else None
    if not widths or not all(isinstance(w, int) and not isinstance(w, bool) and w > 0 for w in widths) or len(set(widths)) != len(widths):
        raise ValueError(f"`embed_dims` must be a non-empty list of distinct positive ints, got {embed_dims!r}")
    embed = widths[0] if len(widths) == 1 else Choice(widths, "embed_dim", default=widths[-1])
    patch_embed = PatchEmbedding(image_size, patch_size, in_chans, embed)
    encoder = ElasticTransformerEncoder(
        embed, depth, list(num_heads), list(mlp_ratios), depths=None if depths is None else list(depths), skip_layers=skip_layers, label="enc",
    )
    head = MeanPoolHead(embed, num_classes)
    # The pre-norm encoder's ElasticLayerNorms ignore each row's features past its width and zero them
    # (per-example mode): the patch embedding need not mask them, nor the head its input (the mean of
    # the final norm's tokens). Two mask multiplications fewer each way per step.
    patch_embed.proj.mask_output = patch_embed.pos.mask_output = False
    head.fc.input_masked = True
    return Supernet(TinyViT(patch_embed, encoder, head))
