"""Elastic token and position embeddings: the residual stream's width as a prefix of the embedding."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_nas.nn.choice import Choice, Mutable, largest, value_in
from lightning_nas.nn.elastic_size import check_fixed, check_size_spec
from lightning_nas.nn.elastic_size import cached_active_size, fit_features, rows_mask

__all__ = ["ElasticEmbedding", "ElasticPositionalEmbedding", "PositionalEmbedding"]


def _mask_rows(owner: nn.Module, y: Tensor, spec: int | Choice, widths: Tensor | None) -> Tensor:
    """Zero each row's features past its own width under ``spec`` (``widths (B,)``, or ``None``: keep
    all); ``y`` is ``(B, ..., F)``."""
    if widths is None:
        return y
    return y * rows_mask(owner, spec, y.shape[-1], y.dtype, y.device, (-1, *([1] * (y.dim() - 2)), y.shape[-1]))


class ElasticEmbedding(Mutable):
    """``nn.Embedding`` whose embedding width is a decision (the first ``e`` features of each vector).

    Args:
        num_embeddings: vocabulary size.
        embedding_dim: int or ``Choice`` of widths (the residual stream's width ``Choice``).
        padding_idx: as in ``nn.Embedding``.

    Shapes: ``LongTensor (B, ...)`` of token ids ``-> (B, ..., e)``.
    """

    def __init__(self, num_embeddings: int, embedding_dim: int | Choice, padding_idx: int | None = None) -> None:
        super().__init__()
        check_fixed("ElasticEmbedding", "num_embeddings", num_embeddings, "int>=1", "embedding_dim")
        check_size_spec("embedding_dim", embedding_dim)
        if padding_idx is not None:
            check_fixed("ElasticEmbedding", "padding_idx", padding_idx, "int>=0", "embedding_dim")
            if padding_idx >= num_embeddings:
                raise ValueError(f"ElasticEmbedding: `padding_idx` must be < num_embeddings ({num_embeddings}), got {padding_idx}")
        self.num_embeddings, self.embedding_dim, self.padding_idx = num_embeddings, embedding_dim, padding_idx
        self.weight = nn.Parameter(torch.empty(num_embeddings, largest(embedding_dim)))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.normal_(self.weight)
        if self.padding_idx is not None:
            with torch.no_grad():
                self.weight[self.padding_idx].zero_()

    # Cleared by a container whose consumer ignores each row's output features past the row's
    # width (a pre-norm transformer stream, read by ElasticLayerNorms only): the output mask is skipped,
    # so those entries hold whatever the full-width computation gives.
    mask_output = True

    def forward(self, ids: Tensor) -> Tensor:
        if ids.is_floating_point() or ids.dtype == torch.bool or ids.dim() < 1:
            raise ValueError(f"ElasticEmbedding expects integer token ids of shape (B, ...), got dtype {ids.dtype}, shape {tuple(ids.shape)}")
        e, widths = cached_active_size(self.embedding_dim, ids.device)
        y = F.embedding(ids, self.weight[:, :e], self.padding_idx)
        return _mask_rows(self, y, self.embedding_dim, widths) if self.mask_output else y

    def freeze(self, arch: dict[str, Any], export_child) -> nn.Embedding:
        e = value_in(self.embedding_dim, arch)
        emb = nn.Embedding(self.num_embeddings, e, self.padding_idx).to(device=self.weight.device, dtype=self.weight.dtype)
        with torch.no_grad():
            emb.weight.copy_(self.weight[:, :e])
        return emb

    @classmethod
    def from_embedding(cls, embedding: nn.Embedding, *, embedding_dim: int | Choice | None = None) -> "ElasticEmbedding":
        """An elastic copy of a plain ``nn.Embedding`` sharing its weight (the largest width is its own)."""
        if type(embedding) is not nn.Embedding or embedding.max_norm is not None or embedding.sparse:
            raise ValueError(f"only a plain nn.Embedding (no max_norm, not sparse) can be made elastic, got {embedding!r}")
        embedding_dim = embedding.embedding_dim if embedding_dim is None else embedding_dim
        if largest(embedding_dim) != embedding.embedding_dim:
            raise ValueError(f"the largest embedding_dim candidate must be {embedding.embedding_dim}, got {largest(embedding_dim)}")
        elastic = cls(embedding.num_embeddings, embedding_dim, embedding.padding_idx)
        elastic.weight = embedding.weight
        return elastic

    def extra_repr(self) -> str:
        return f"num_embeddings={self.num_embeddings}, embedding_dim={self.embedding_dim!r}, padding_idx={self.padding_idx}"


class PositionalEmbedding(nn.Module):
    """Adds a learned position embedding: ``x + weight[:T]`` (what :class:`ElasticPositionalEmbedding` exports to).

    Args:
        max_length: the longest sequence.
        embed_dim: the width ``E``.

    Shapes: ``(B, T, E) -> (B, T, E)`` with ``T <= max_length``.
    """

    def __init__(self, max_length: int, embed_dim: int) -> None:
        super().__init__()
        check_fixed("PositionalEmbedding", "max_length", max_length, "int>=1", "nothing (a static module)")
        check_fixed("PositionalEmbedding", "embed_dim", embed_dim, "int>=1", "nothing (a static module)")
        self.max_length = max_length
        self.weight = nn.Parameter(torch.zeros(max_length, embed_dim))

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 3 or x.shape[1] > self.max_length or x.shape[2] != self.weight.shape[1]:
            raise ValueError(f"PositionalEmbedding expects (B, T <= {self.max_length}, {self.weight.shape[1]}), got {tuple(x.shape)}")
        return x + self.weight[: x.shape[1]]

    def extra_repr(self) -> str:
        return f"max_length={self.max_length}, embed_dim={self.weight.shape[1]}"


class ElasticPositionalEmbedding(Mutable):
    """A learned position embedding added to a sequence whose width is a decision (prefix of the features).

    Args:
        max_length: the longest sequence.
        embed_dim: int or ``Choice`` (the residual stream's width ``Choice``).
        init_std: standard deviation of the normal initialisation (ViT and GPT-2 use 0.02).

    Shapes: ``(B, T, e) -> (B, T, e)`` with ``T <= max_length`` and ``e`` the active width.
    """

    def __init__(self, max_length: int, embed_dim: int | Choice, init_std: float = 0.02) -> None:
        super().__init__()
        check_fixed("ElasticPositionalEmbedding", "max_length", max_length, "int>=1", "embed_dim")
        check_size_spec("embed_dim", embed_dim)
        check_fixed("ElasticPositionalEmbedding", "init_std", init_std, "eps", "embed_dim")
        self.max_length, self.embed_dim = max_length, embed_dim
        self.weight = nn.Parameter(torch.randn(max_length, largest(embed_dim)) * init_std)

    # Cleared by a container whose consumer ignores each row's features past the row's width (a
    # pre-norm transformer stream): neither the input nor the added positions are masked then, so
    # those entries hold whatever comes in plus the full-width positions.
    mask_output = True

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 3 or x.shape[1] > self.max_length:
            raise ValueError(f"ElasticPositionalEmbedding expects (B, T <= {self.max_length}, E), got {tuple(x.shape)}")
        x = fit_features(self, x, self.embed_dim, "ElasticPositionalEmbedding", mask=self.mask_output)
        _, widths = cached_active_size(self.embed_dim, x.device)
        if not self.mask_output:
            return x + self.weight[: x.shape[1], : x.shape[2]]
        return x + _mask_rows(self, self.weight[: x.shape[1], : x.shape[2]].expand(x.shape[0], -1, -1), self.embed_dim, widths)

    def freeze(self, arch: dict[str, Any], export_child) -> PositionalEmbedding:
        e = value_in(self.embed_dim, arch)
        pos = PositionalEmbedding(self.max_length, e).to(device=self.weight.device, dtype=self.weight.dtype)
        with torch.no_grad():
            pos.weight.copy_(self.weight[:, :e])
        return pos

    def extra_repr(self) -> str:
        return f"max_length={self.max_length}, embed_dim={self.embed_dim!r}"
