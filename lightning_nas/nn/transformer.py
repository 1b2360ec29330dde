"""Transformer blocks and encoders, plain and elastic (AutoFormer-style spaces).

:class:`TransformerBlock` and :class:`TransformerEncoder` compose any attention, MLP and norm
modules; :class:`ElasticTransformerBlock` and :class:`ElasticTransformerEncoder` build them from
elastic parts (:class:`~lightning_nas.nn.ElasticMultiheadAttention`,
:class:`~lightning_nas.nn.ElasticMLP`, :class:`~lightning_nas.nn.ElasticLayerNorm`); an exported
block is a plain :class:`TransformerBlock` with sliced weights. The encoder's searchable dimensions:

* the embedding width ``e``, one decision for the whole residual stream (a prefix of the features);
* per layer, the number of heads (a prefix of the heads), optionally the head dimension, and the
  MLP hidden width (``mlp_ratio * largest(embed_dim)`` candidates, a prefix of the neurons);
* the depth (a :class:`~lightning_nas.nn.DepthChoice`: the first ``n`` layers) and/or one on/off
  decision per layer (:class:`~lightning_nas.nn.SkipChoice`: any set of layers).

Every row of a batch may run its own subnet (per-example mode); see each module.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Optional

from torch import Tensor, nn

from lightning_nas.nn.attention import ElasticMultiheadAttention
from lightning_nas.nn.choice import ArchContext, Choice, Mutable, largest
from lightning_nas.nn.depth_choice import DepthChoice
from lightning_nas.nn.elastic_size import check_fixed
from lightning_nas.nn.mlp import ElasticMLP
from lightning_nas.nn.norm import ElasticLayerNorm
from lightning_nas.nn.skip_choice import SkipChoice

__all__ = ["ElasticTransformerBlock", "ElasticTransformerEncoder", "TransformerBlock", "TransformerEncoder"]


class TransformerBlock(nn.Module):
    """A residual transformer block over any attention, MLP and norms.

    Pre-norm (``norm_first``, ViT / GPT-2): ``x = x + attn(norm1(x)); x = x + mlp(norm2(x))``.
    Post-norm (BERT): ``x = norm1(x + attn(x)); x = norm2(x + mlp(x))``.

    Args:
        norm1: the norm around the attention.
        attn: self-attention called as ``attn(x, attn_mask)``, e.g.
            :class:`~lightning_nas.nn.MultiheadSelfAttention`.
        norm2: the norm around the MLP.
        mlp: the feed-forward module.
        norm_first: pre-norm (``True``) or post-norm.

    Shapes: ``x (B, T, E)``, optional ``attn_mask`` (``(T, T)``, ``(B, T, T)`` or ``(B, 1, T, T)``,
    bool ``True`` = may attend, or float added to the scores) ``-> (B, T, E)``.
    """

    def __init__(self, norm1: nn.Module, attn: nn.Module, norm2: nn.Module, mlp: nn.Module, norm_first: bool = True) -> None:
        super().__init__()
        for name, module in (("norm1", norm1), ("attn", attn), ("norm2", norm2), ("mlp", mlp)):
            if not isinstance(module, nn.Module):
                raise ValueError(f"{type(self).__name__}: `{name}` must be an nn.Module, got {type(module).__name__}")
        check_fixed(type(self).__name__, "norm_first", norm_first, "bool", "the sizes of its parts")
        self.norm1, self.attn, self.norm2, self.mlp = norm1, attn, norm2, mlp
        self.norm_first = norm_first
        # (mask, context) handed over by a TransformerEncoder for blocks it calls through a
        # DepthChoice or SkipChoice, which pass one tensor only. Kept out of the module state.
        object.__setattr__(self, "_handed_mask", None)

    def _mask_for_rows(self) -> Optional[Tensor]:
        """The mask handed over by the encoder, narrowed to the rows this block runs (per-example routing)."""
        handed = self.__dict__.get("_handed_mask")
        if handed is None:
            return None
        mask, context = handed
        rows = None if context is None else context.rows
        if rows is not None and mask.dim() >= 3 and mask.shape[0] != 1:
            mask = mask.index_select(0, rows.to(mask.device))
        return mask

    def forward(self, x: Tensor, attn_mask: Optional[Tensor] = None) -> Tensor:
        if attn_mask is None:
            attn_mask = self._mask_for_rows()
        if self.norm_first:
            x = x + self.attn(self.norm1(x), attn_mask)
            return x + self.mlp(self.norm2(x))
        x = self.norm1(x + self.attn(x, attn_mask))
        return self.norm2(x + self.mlp(x))

    def extra_repr(self) -> str:
        return f"norm_first={self.norm_first}"


class TransformerEncoder(nn.Module):
    """A stack of transformer blocks and a final norm.

    Args:
        layers: the blocks, called as ``layers(x)``: an ``nn.Sequential``, a
            :class:`~lightning_nas.nn.DepthChoice`, blocks wrapped in
            :class:`~lightning_nas.nn.SkipChoice`... Every :class:`TransformerBlock` inside receives
            the encoder's ``attn_mask`` (narrowed to the rows it runs in per-example mode).
        norm: the final norm (default ``nn.Identity()``; pre-norm stacks end with a LayerNorm).

    Shapes: ``x (B, T, E)``, optional ``attn_mask`` as for :class:`TransformerBlock` ``-> (B, T, E)``.
    """

    def __init__(self, layers: nn.Module, norm: nn.Module | None = None) -> None:
        super().__init__()
        if not isinstance(layers, nn.Module):
            raise ValueError(f"{type(self).__name__}: `layers` must be an nn.Module (e.g. nn.Sequential of blocks), got {type(layers).__name__}")
        if norm is not None and not isinstance(norm, nn.Module):
            raise ValueError(f"{type(self).__name__}: `norm` must be an nn.Module or None, got {type(norm).__name__}")
        self.layers = layers
        self.norm = nn.Identity() if norm is None else norm

    def forward(self, x: Tensor, attn_mask: Optional[Tensor] = None) -> Tensor:
        if attn_mask is None:
            return self.norm(self.layers(x))
        blocks = [m for m in self.layers.modules() if isinstance(m, TransformerBlock)]
        context = _context_of(self.layers)
        for block in blocks:
            object.__setattr__(block, "_handed_mask", (attn_mask, context))
        try:
            x = self.layers(x)
        finally:
            for block in blocks:
                object.__setattr__(block, "_handed_mask", None)
        return self.norm(x)


def _context_of(module: nn.Module) -> ArchContext | None:
    """The architecture context of the choices inside ``module`` (``None`` when there are none or unbound)."""
    return next((m._context for m in module.modules() if isinstance(m, Choice) and m._context is not None), None)


class ElasticTransformerBlock(TransformerBlock, Mutable):
    """A :class:`TransformerBlock` of elastic parts; exported as a plain :class:`TransformerBlock`.

    Its parts: ``norm1``/``norm2`` :class:`~lightning_nas.nn.ElasticLayerNorm` over ``embed_dim``,
    ``attn`` :class:`~lightning_nas.nn.ElasticMultiheadAttention` and ``mlp``
    :class:`~lightning_nas.nn.ElasticMLP` (``embed_dim -> mlp_hidden -> embed_dim``). In per-example
    mode every row computes exactly its own subnet: the norms read only each row's own features, and
    a block on its own returns zeros past each row's width. Inside a pre-norm
    :class:`ElasticTransformerEncoder` the attention and MLP outputs are not masked (their
    ``mask_output`` is cleared): the stream's features past a row's width then hold values that
    only the norms read, and they ignore them; the encoder's final norm zeroes them.

    Args:
        embed_dim: int or ``Choice``: the residual stream's width (give every block the same one).
        num_heads: int or ``Choice`` of head counts.
        mlp_hidden: int or ``Choice`` of MLP hidden widths.
        head_dim: int or ``Choice`` (default ``largest(embed_dim) // largest(num_heads)``).
        bias: the linear layers learn biases.
        causal: causal self-attention.
        norm_first: pre-norm (``True``) or post-norm.
        activation: callable returning the MLP's activation module (default ``nn.GELU``).
        eps: the layer norms' epsilon.

    Shapes: ``x (B, T, e)``, optional ``attn_mask`` ``-> (B, T, e)`` with ``e`` the active width.
    """

    def __init__(
        self,
        embed_dim: int | Choice,
        num_heads: int | Choice,
        mlp_hidden: int | Choice,
        head_dim: int | Choice | None = None,
        *,
        bias: bool = True,
        causal: bool = False,
        norm_first: bool = True,
        activation: Callable[[], nn.Module] = nn.GELU,
        eps: float = 1e-5,
    ) -> None:
        attn = ElasticMultiheadAttention(embed_dim, num_heads, head_dim, bias=bias, causal=causal)
        mlp = ElasticMLP(embed_dim, mlp_hidden, activation=activation, bias=bias)
        super().__init__(ElasticLayerNorm(embed_dim, eps), attn, ElasticLayerNorm(embed_dim, eps), mlp, norm_first)
        # Pre-norm: the attention and the MLP read an ElasticLayerNorm's output, whose features past
        # each row's width are zero (per-example mode), so they skip masking their input.
        attn.input_masked = mlp.fc1.input_masked = norm_first

    # Its parts are per-row (each declares it): the block adds nothing across rows.
    masks_stopped_rows = True

    def reorder_by_importance(self) -> None:
        """Sort the heads and the MLP's hidden neurons by importance (function preserved; see
        :meth:`ElasticMultiheadAttention.reorder_heads` and :meth:`ElasticMLP.reorder_hidden`)."""
        self.attn.reorder_heads()
        self.mlp.reorder_hidden()

    def freeze(self, arch: dict[str, Any], export_child) -> TransformerBlock:
        parts = (export_child(m) for m in (self.norm1, self.attn, self.norm2, self.mlp))
        return TransformerBlock(*parts, norm_first=self.norm_first)


def _candidates(name: str, spec: Any, ints: bool) -> list:
    """The sorted candidates given as one value or a sequence of them (positive ints, or positive numbers)."""
    values = list(spec) if isinstance(spec, Sequence) and not isinstance(spec, (str, bytes)) else [spec]
    kinds = int if ints else (int, float)
    ok = bool(values) and all(isinstance(v, kinds) and not isinstance(v, bool) and 0 < v < float("inf") for v in values)
    if not ok or len(set(values)) != len(values):
        allowed = "positive ints" if ints else "positive finite numbers"
        raise ValueError(f"ElasticTransformerEncoder: `{name}` must be one or a list of distinct {allowed}, got {spec!r}")
    return sorted(values)


def _decision(values: list, label: str | None) -> int | Choice:
    """A constant for one candidate, else a ``Choice`` defaulting to the largest."""
    return values[0] if len(values) == 1 else Choice(values, label, default=max(values))


class ElasticTransformerEncoder(TransformerEncoder):
    """A searchable stack of :class:`ElasticTransformerBlock` (AutoFormer's space, plus layer skipping).

    Decisions (with ``label="enc"``; with ``label=None`` the supernet names them after their paths):

    ========================  ==================================================  ==========================
    label                     candidates                                          when
    ========================  ==================================================  ==========================
    ``enc.embed_dim``         ``embed_dim``                                       a list of 2+ widths
    ``enc.{i}.num_heads``     ``num_heads``                                       a list of 2+ counts
    ``enc.{i}.head_dim``      ``head_dim``                                        a list of 2+ dims
    ``enc.{i}.mlp_hidden``    ``round(r * largest(embed_dim))`` per ratio ``r``   2+ ``mlp_ratio`` values
    ``enc.depth``             ``depths``                                          ``depths`` given
    ``enc.{i}.keep``          ``[False, True]`` (``True``: layer ``i`` runs)      ``skip_layers=True``
    ========================  ==================================================  ==========================

    Every decision defaults to its largest candidate (all layers kept). The encoder itself is a
    container, not a mutable (so that the staged pipeline sees its ``DepthChoice`` as a stage and
    each block as a unit): export keeps it, with plain :class:`TransformerBlock` s (sliced weights,
    ``nn.Identity`` for skipped layers) in an ``nn.Sequential`` and an ``nn.LayerNorm``; its
    :meth:`blocks` is then empty.

    Args:
        embed_dim: one width, a list of candidate widths, or a ``Choice`` shared with the layers
            around the encoder (token / patch embedding, head).
        depth: the number of layers (the largest depth).
        num_heads: one head count or a list of candidates (a separate decision per layer).
        mlp_ratio: one ratio or a list of candidate ratios of the MLP hidden width to the largest
            embedding width (a separate decision per layer).
        head_dim: one head dimension, a list of candidates (per layer), or ``None`` for
            ``largest(embed_dim) // largest(num_heads)``.
        depths: candidate depths in ``[0, depth]`` (a ``DepthChoice``); ``None``: no depth decision.
        skip_layers: give every layer an on/off decision (a ``SkipChoice``).
        causal: causal self-attention (language models).
        bias: the linear layers learn biases.
        norm_first: pre-norm blocks and a final ``ElasticLayerNorm`` (``True``), or post-norm blocks.
        activation: callable returning the MLPs' activation module (default ``nn.GELU``).
        eps: the layer norms' epsilon.
        label: prefix of the decisions' labels, or ``None``.

    Shapes: ``x (B, T, e)``, optional ``attn_mask`` (``(T, T)``, ``(B, T, T)`` or ``(B, 1, T, T)``,
    bool ``True`` = may attend, or float added to the scores) ``-> (B, T, e)``.
    """

    def __init__(
        self,
        embed_dim: int | Sequence[int] | Choice,
        depth: int,
        num_heads: int | Sequence[int],
        mlp_ratio: float | Sequence[float] = 4.0,
        head_dim: int | Sequence[int] | None = None,
        *,
        depths: Sequence[int] | None = None,
        skip_layers: bool = False,
        causal: bool = False,
        bias: bool = True,
        norm_first: bool = True,
        activation: Callable[[], nn.Module] = nn.GELU,
        eps: float = 1e-5,
        label: str | None = None,
    ) -> None:
        name = "ElasticTransformerEncoder"
        check_fixed(name, "depth", depth, "int>=1", "embed_dim, num_heads, mlp_ratio, head_dim (lists of candidates) and depths")
        check_fixed(name, "skip_layers", skip_layers, "bool", "the sizes")
        if label is not None and (not isinstance(label, str) or not label):
            raise ValueError(f"{name}: `label` must be a non-empty string or None, got {label!r}")
        sub = (lambda suffix: None) if label is None else (lambda suffix: f"{label}.{suffix}")
        embed = embed_dim if isinstance(embed_dim, Choice) else _decision(_candidates("embed_dim", embed_dim, True), sub("embed_dim"))
        heads = _candidates("num_heads", num_heads, True)
        ratios = _candidates("mlp_ratio", mlp_ratio, False)
        hidden = sorted({max(1, round(r * largest(embed))) for r in ratios})
        if head_dim is None:
            if largest(embed) % max(heads):
                raise ValueError(
                    f"{name}: the largest embed_dim ({largest(embed)}) is not divisible by the largest num_heads ({max(heads)}); "
                    "pass `head_dim`"
                )
            head_dims = [largest(embed) // max(heads)]
        else:
            head_dims = _candidates("head_dim", head_dim, True)
        blocks: list[nn.Module] = []
        for i in range(depth):
            block = ElasticTransformerBlock(
                embed, _decision(heads, sub(f"{i}.num_heads")), _decision(hidden, sub(f"{i}.mlp_hidden")),
                _decision(head_dims, sub(f"{i}.head_dim")),
                bias=bias, causal=causal, norm_first=norm_first, activation=activation, eps=eps,
            )
            blocks.append(SkipChoice(block, sub(f"{i}.keep")) if skip_layers else block)
        layers = nn.Sequential(*blocks) if depths is None else DepthChoice(blocks, depths, sub("depth"))
        super().__init__(layers, ElasticLayerNorm(embed, eps) if norm_first else None)
        if norm_first:
            # Inside a pre-norm stack the residual stream is read only by ElasticLayerNorms (each
            # block's two and the final one), which ignore a row's features past its width and zero
            # them in their outputs: the attention and MLP outputs added to the stream need no mask
            # of their own (per-example mode; two calls fewer per block each way).
            for block in self.blocks():
                block.attn.mask_output = block.mlp.fc2.mask_output = False

    def blocks(self) -> list[ElasticTransformerBlock]:
        """The layers, in order (inside their ``SkipChoice`` when ``skip_layers``)."""
        return [m for m in self.layers.modules() if isinstance(m, ElasticTransformerBlock)]

    def reorder_by_importance(self) -> None:
        """Sort every layer's heads and MLP hidden neurons by importance (function preserved)."""
        for block in self.blocks():
            block.reorder_by_importance()
