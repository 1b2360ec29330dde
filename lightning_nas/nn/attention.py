"""Elastic multi-head self-attention: a prefix of the heads, of each head's dimensions and of the embedding.

:class:`ElasticMultiheadAttention` holds the projections of the largest attention (``H`` heads of
``D`` dimensions on an ``E``-wide residual stream) and computes any smaller one from their leading
parts: ``h`` heads of ``d`` dimensions on the first ``e`` features use

* rows ``[:h, :d]`` of each head of the Q, K and V projections, columns ``[:e]``;
* columns ``[:h, :d]`` of each head of the output projection, rows ``[:e]``.

Heads can be ranked by importance first (:meth:`ElasticMultiheadAttention.reorder_heads`) so that a
smaller head count keeps the most important heads. Export gives a :class:`MultiheadSelfAttention`,
a plain module with the sliced weights; both use
:func:`torch.nn.functional.scaled_dot_product_attention`.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_nas.nn.choice import Choice, Mutable, largest, value_in
from lightning_nas.nn.elastic_size import check_fixed, check_size_spec
from lightning_nas.nn.elastic_size import cached_active_size, fit_features, rows_mask

__all__ = ["ElasticMultiheadAttention", "MultiheadSelfAttention", "attention_mask"]


def attention_mask(attn_mask: Optional[Tensor], causal: bool, batch: int, length: int) -> Optional[Tensor]:
    """The mask to give ``scaled_dot_product_attention`` for queries and keys of one sequence.

    Args:
        attn_mask: ``None`` or a mask of shape ``(T, T)``, ``(B, T, T)`` or ``(B, 1, T, T)`` (``B``
            may be 1): bool (``True`` = may attend, the convention of ``scaled_dot_product_attention``,
            the opposite of ``nn.MultiheadAttention``'s) or float (added to the scores).
        causal: also forbid attending to later positions.
        batch: the batch size ``B``.
        length: the sequence length ``T``.

    Returns:
        ``None`` (no mask, or causal only: then pass ``is_causal=causal``) or a ``(T, T)`` /
        ``(B, 1, T, T)`` mask combining both.

    Raises:
        ValueError: for a mask of another shape or dtype.
    """
    if attn_mask is None:
        return None
    if attn_mask.dtype != torch.bool and not attn_mask.is_floating_point():
        raise ValueError(f"`attn_mask` must be bool (True = may attend) or floating point (added to the scores), got dtype {attn_mask.dtype}")
    shape = list(attn_mask.shape)
    if attn_mask.dim() == 3:
        attn_mask = attn_mask.unsqueeze(1)
    ok = (attn_mask.dim() == 2 or attn_mask.dim() == 4) and attn_mask.shape[-2] == length and attn_mask.shape[-1] == length
    if attn_mask.dim() == 4:
        ok = ok and (attn_mask.shape[0] == 1 or attn_mask.shape[0] == batch) and attn_mask.shape[1] == 1
    if not ok:
        raise ValueError(
            f"`attn_mask` must have shape (T, T), (B, T, T) or (B, 1, T, T) with T = {length} and B = {batch} or 1, "
            f"got {shape}"
        )
    if causal:
        allowed = torch.ones(length, length, dtype=torch.bool, device=attn_mask.device).tril()
        if attn_mask.dtype == torch.bool:
            attn_mask = attn_mask & allowed
        else:
            attn_mask = attn_mask.masked_fill(~allowed, float("-inf"))
    return attn_mask


def _check_input(x: Tensor, layer: str) -> None:
    if not isinstance(x, Tensor) or x.dim() != 3:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"{layer} expects input (B, T, E) (batch, sequence, embedding), got {shape}")


class MultiheadSelfAttention(nn.Module):
    """Plain multi-head self-attention (what :class:`ElasticMultiheadAttention` exports to).

    Args:
        embed_dim: input and output width ``E``.
        num_heads: number of heads ``h``.
        head_dim: dimensions per head ``d`` (``h * d`` need not equal ``E``).
        bias: the projections learn an additive bias.
        causal: each position attends only to itself and earlier positions.

    Attributes:
        qkv: ``nn.Linear(E, 3 * h * d)``; its output is ``(q, k, v)``, each ``h`` heads of ``d``
            dimensions, head-major (the layout of ``nn.MultiheadAttention.in_proj_weight``).
        proj: ``nn.Linear(h * d, E)``, the output projection.

    Shapes: ``x (B, T, E)``, optional ``attn_mask`` (see :func:`attention_mask`) ``-> (B, T, E)``.
    """

    def __init__(self, embed_dim: int, num_heads: int, head_dim: int, bias: bool = True, causal: bool = False) -> None:
        super().__init__()
        for name, value in (("embed_dim", embed_dim), ("num_heads", num_heads), ("head_dim", head_dim), ("bias", bias), ("causal", causal)):
            check_fixed("MultiheadSelfAttention", name, value, "bool" if name in ("bias", "causal") else "int>=1",
                        "the arguments of ElasticMultiheadAttention (this is its static form)")
        self.embed_dim, self.num_heads, self.head_dim, self.causal = embed_dim, num_heads, head_dim, causal
        self.qkv = nn.Linear(embed_dim, 3 * num_heads * head_dim, bias=bias)
        self.proj = nn.Linear(num_heads * head_dim, embed_dim, bias=bias)

    def forward(self, x: Tensor, attn_mask: Optional[Tensor] = None) -> Tensor:
        if x.dim() != 3 or x.shape[-1] != self.embed_dim:
            raise ValueError(f"MultiheadSelfAttention expects input (B, T, {self.embed_dim}), got {list(x.shape)}")
        b, t = x.shape[0], x.shape[1]
        qkv = self.qkv(x).view(b, t, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        mask = attention_mask(attn_mask, self.causal, b, t)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], attn_mask=mask, is_causal=self.causal and mask is None)
        return self.proj(out.transpose(1, 2).reshape(b, t, self.num_heads * self.head_dim))

    def extra_repr(self) -> str:
        return f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, head_dim={self.head_dim}, causal={self.causal}"


class ElasticMultiheadAttention(Mutable):
    """Multi-head self-attention whose head count, head dimension and embedding width are decisions.

    The largest attention has ``H = largest(num_heads)`` heads of ``D = largest(head_dim)``
    dimensions on ``E = largest(embed_dim)`` features; an active ``(e, h, d)`` uses the first ``h``
    heads, the first ``d`` dimensions of each and the first ``e`` features (see the module
    docstring). Scores are scaled by ``1 / sqrt(d)`` of the active head dimension, as a plain
    attention of that size would.

    In per-example mode every row runs its own ``(e, h, d)``: the batch is computed once at the
    largest active sizes, and each row's unused heads and head dimensions are zeroed in the queries
    and values (so they contribute nothing), its scores scaled by its own ``1 / sqrt(d)`` and its
    output features past its own ``e`` zeroed. Row ``i``'s output equals its subnet run alone.

    Args:
        embed_dim: int, or the ``Choice`` of the residual stream's width (input and output width).
        num_heads: int or ``Choice`` of head counts (a prefix of the heads).
        head_dim: int or ``Choice`` of dimensions per head (a prefix of each head); default
            ``largest(embed_dim) // largest(num_heads)`` (which must then divide evenly).
        bias: the projections learn an additive bias.
        causal: each position attends only to itself and earlier positions (language models).

    Attributes:
        in_proj_weight: ``(3 * H * D, E)``: Q, K then V, each ``H`` heads of ``D`` rows (the layout
            of ``nn.MultiheadAttention.in_proj_weight`` when ``H * D == E``).
        in_proj_bias: ``(3 * H * D,)`` or ``None``.
        out_proj_weight: ``(E, H * D)``.
        out_proj_bias: ``(E,)`` or ``None``.

    Shapes: ``x (B, T, e)`` with ``e`` the active embedding width, optional ``attn_mask`` (see
    :func:`attention_mask`; its batch dimension must be 1 or ``B``) ``-> (B, T, e)``.
    """

    def __init__(
        self,
        embed_dim: int | Choice,
        num_heads: int | Choice,
        head_dim: int | Choice | None = None,
        *,
        bias: bool = True,
        causal: bool = False,
    ) -> None:
        super().__init__()
        check_size_spec("embed_dim", embed_dim)
        check_size_spec("num_heads", num_heads)
        if head_dim is None:
            if largest(embed_dim) % largest(num_heads):
                raise ValueError(
                    f"ElasticMultiheadAttention: the largest embed_dim ({largest(embed_dim)}) is not divisible by the largest "
                    f"num_heads ({largest(num_heads)}); pass `head_dim` explicitly"
                )
            head_dim = largest(embed_dim) // largest(num_heads)
        check_size_spec("head_dim", head_dim)
        choosable = "embed_dim, num_heads and head_dim"
        check_fixed("ElasticMultiheadAttention", "bias", bias, "bool", choosable)
        check_fixed("ElasticMultiheadAttention", "causal", causal, "bool", choosable)
        self.embed_dim, self.num_heads, self.head_dim, self.causal = embed_dim, num_heads, head_dim, causal
        e, h, d = largest(embed_dim), largest(num_heads), largest(head_dim)
        self.in_proj_weight = nn.Parameter(torch.empty(3 * h * d, e))
        self.in_proj_bias = nn.Parameter(torch.empty(3 * h * d)) if bias else None
        self.out_proj_weight = nn.Parameter(torch.empty(e, h * d))
        self.out_proj_bias = nn.Parameter(torch.empty(e)) if bias else None
        self.reset_parameters()

    # Every row's output reads only that row (no batch statistics): rows a DepthChoice has stopped
    # leave the others' outputs as they are, so the stack may run with static shapes.
    masks_stopped_rows = True

    # Set by an ElasticTransformerBlock whose norm before the attention zeroes each row's features
    # past the row's width: the input mask is skipped (one operator call less each way).
    input_masked = False
    # Cleared by a container whose consumer ignores each row's output features past the row's
    # width (a pre-norm transformer stream, read by ElasticLayerNorms only): the output mask is skipped,
    # so those entries hold whatever the full-width computation gives.
    mask_output = True

    def reset_parameters(self) -> None:
        """``nn.MultiheadAttention``'s initialisation: Xavier-uniform projections, zero biases."""
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.kaiming_uniform_(self.out_proj_weight, a=math.sqrt(5))
        for b in (self.in_proj_bias, self.out_proj_bias):
            if b is not None:
                nn.init.zeros_(b)

    # -- slicing -------------------------------------------------------------------------------
    @property
    def _largest(self) -> tuple[int, int, int]:
        return largest(self.embed_dim), largest(self.num_heads), largest(self.head_dim)

    def sliced_weights(self, e: int, h: int, d: int) -> tuple[Tensor, Tensor | None, Tensor, Tensor | None]:
        """``(in_proj_weight (3hd, e), in_proj_bias (3hd,), out_proj_weight (e, hd), out_proj_bias (e,))`` of
        the attention with ``h`` heads of ``d`` dimensions on ``e`` features (views when nothing is cut)."""
        big_e, big_h, big_d = self._largest
        w_in, b_in = self.in_proj_weight, self.in_proj_bias
        w_out, b_out = self.out_proj_weight, self.out_proj_bias
        if (h, d) != (big_h, big_d):
            w_in = w_in.view(3, big_h, big_d, big_e)[:, :h, :d].reshape(3 * h * d, big_e)
            b_in = None if b_in is None else b_in.view(3, big_h, big_d)[:, :h, :d].reshape(3 * h * d)
            w_out = w_out.view(big_e, big_h, big_d)[:, :h, :d].reshape(big_e, h * d)
        if e != big_e:
            w_in, w_out = w_in[:, :e], w_out[:e]
            b_out = None if b_out is None else b_out[:e]
        return w_in, b_in, w_out, b_out

    # -- forward -------------------------------------------------------------------------------
    def forward(self, x: Tensor, attn_mask: Optional[Tensor] = None) -> Tensor:
        _check_input(x, "ElasticMultiheadAttention")
        if attn_mask is not None and not isinstance(attn_mask, Tensor):
            raise ValueError(f"`attn_mask` must be a Tensor or None, got {type(attn_mask).__name__}")
        x = fit_features(self, x, self.embed_dim, "ElasticMultiheadAttention", mask=not self.input_masked)
        b, t, e = x.shape
        h, heads = cached_active_size(self.num_heads, x.device)
        d, dims = cached_active_size(self.head_dim, x.device)
        _, widths = cached_active_size(self.embed_dim, x.device)
        w_in, b_in, w_out, b_out = self.sliced_weights(e, h, d)
        qkv = F.linear(x, w_in, b_in).view(b, t, 3, h, d).permute(2, 0, 3, 1, 4)  # (3, B, h, T, d)
        q, k, v = qkv[0], qkv[1], qkv[2]
        scale = None
        if dims is not None:
            # Each row's scores over its own d dimensions, scaled by its own 1/sqrt(d): zeroing the
            # query's other dimensions is enough for the scores; the values' are zeroed below.
            q = q * rows_mask(self, self.head_dim, d, q.dtype, q.device, (-1, 1, 1, d), scale=True)  # (B, 1, 1, d)
            v = v * rows_mask(self, self.head_dim, d, v.dtype, v.device, (-1, 1, 1, d))
            scale = 1.0
        if heads is not None:
            v = v * rows_mask(self, self.num_heads, h, v.dtype, v.device, (-1, h, 1, 1))  # a row's unused heads output zero
        mask = attention_mask(attn_mask, self.causal, b, t)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=self.causal and mask is None, scale=scale)
        y = F.linear(out.transpose(1, 2).reshape(b, t, h * d), w_out, b_out)
        if widths is not None and self.mask_output:
            y = y * rows_mask(self, self.embed_dim, e, y.dtype, y.device, (-1, 1, e))
        return y

    # -- importance ----------------------------------------------------------------------------
    def head_importance(self) -> Tensor:
        """``(H,)`` importance of each head: the L1 norm of the output projection's columns that read it
        (Once-for-All's ranking by the consuming layer, as ``elastic_expansion`` ranks CNN channels)."""
        e, h, d = self._largest
        return self.out_proj_weight.detach().view(e, h, d).abs().sum(dim=(0, 2))

    @torch.no_grad()
    def reorder_heads(self, importance: Tensor | None = None) -> Tensor:
        """Permute the heads, most important first, so that every smaller head count keeps the best ones.

        Q, K, V rows and output projection columns of each head move together, so the attention
        with all heads computes exactly what it computed. Parameters are permuted in place (the same
        ``nn.Parameter`` objects, so optimisers keep them; optimiser state such as momentum is not
        permuted: reorder before training or before building the optimiser).

        Args:
            importance: ``(H,)`` scores, higher = kept longer (default: :meth:`head_importance`).

        Returns:
            ``(H,)`` the new order: new head ``j`` is old head ``order[j]``.
        """
        e, h, d = self._largest
        importance = self.head_importance() if importance is None else importance
        if not isinstance(importance, Tensor) or tuple(importance.shape) != (h,):
            raise ValueError(f"`importance` must be a Tensor of shape ({h},) (one score per head), got {getattr(importance, 'shape', importance)!r}")
        order = torch.argsort(importance.detach().to(self.in_proj_weight.device), descending=True, stable=True)
        self.in_proj_weight.copy_(self.in_proj_weight.view(3, h, d, e)[:, order].reshape(3 * h * d, e))
        if self.in_proj_bias is not None:
            self.in_proj_bias.copy_(self.in_proj_bias.view(3, h, d)[:, order].reshape(-1))
        self.out_proj_weight.copy_(self.out_proj_weight.view(e, h, d)[:, order].reshape(e, h * d))
        return order

    # -- export --------------------------------------------------------------------------------
    def freeze(self, arch: dict[str, Any], export_child) -> MultiheadSelfAttention:
        e, h, d = (value_in(s, arch) for s in (self.embed_dim, self.num_heads, self.head_dim))
        static = MultiheadSelfAttention(e, h, d, bias=self.in_proj_bias is not None, causal=self.causal)
        static = static.to(device=self.in_proj_weight.device, dtype=self.in_proj_weight.dtype)
        w_in, b_in, w_out, b_out = self.sliced_weights(e, h, d)
        with torch.no_grad():
            static.qkv.weight.copy_(w_in)
            static.proj.weight.copy_(w_out)
            if b_in is not None:
                static.qkv.bias.copy_(b_in)
                static.proj.bias.copy_(b_out)
        return static

    @classmethod
    def from_multihead_attention(
        cls,
        mha: nn.MultiheadAttention,
        *,
        num_heads: int | Choice | None = None,
        causal: bool = False,
    ) -> "ElasticMultiheadAttention":
        """An elastic copy of a self-attention ``nn.MultiheadAttention`` sharing its parameters.

        The largest head count must be ``mha.num_heads``; the head and embedding widths stay fixed.
        The copy takes ``(B, T, E)`` and returns one tensor (``mha(x, x, x, need_weights=False)[0]``
        of a ``batch_first`` module); its bool masks mean "may attend" (``nn.MultiheadAttention``'s
        mean "may not").
        """
        if not isinstance(mha, nn.MultiheadAttention):
            raise ValueError(f"`mha` must be an nn.MultiheadAttention, got {type(mha).__name__}")
        if not mha._qkv_same_embed_dim or mha.bias_k is not None or mha.add_zero_attn or mha.dropout:
            raise ValueError(
                "only a plain self-attention nn.MultiheadAttention can be made elastic (kdim = vdim = embed_dim, "
                f"no add_bias_kv, no add_zero_attn, dropout 0), got {mha}"
            )
        num_heads = mha.num_heads if num_heads is None else num_heads
        if largest(num_heads) != mha.num_heads:
            raise ValueError(f"the largest num_heads candidate must be {mha.num_heads}, got {largest(num_heads)}")
        elastic = cls(mha.embed_dim, num_heads, mha.head_dim, bias=mha.in_proj_bias is not None, causal=causal)
        elastic.in_proj_weight = mha.in_proj_weight
        elastic.out_proj_weight = mha.out_proj.weight
        if mha.in_proj_bias is not None:
            elastic.in_proj_bias = mha.in_proj_bias
            elastic.out_proj_bias = mha.out_proj.bias
        return elastic

    def extra_repr(self) -> str:
        return f"embed_dim={self.embed_dim!r}, num_heads={self.num_heads!r}, head_dim={self.head_dim!r}, causal={self.causal}"
