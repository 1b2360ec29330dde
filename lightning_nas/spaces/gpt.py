"""A tiny GPT-2-like character-level language model search space: ``create_space("gpt-tiny")``.

The network: token and learned position embeddings (one module, :class:`TokenEmbedding`), a
causal :class:`~lightning_nas.nn.ElasticTransformerEncoder` (pre-norm, final LayerNorm) and a
linear head to the vocabulary; ``(B, T)`` token ids in, ``(B, T, V)`` next-token logits out.
Decisions: ``embed_dim`` (the residual stream), ``enc.{i}.num_heads``, ``enc.{i}.mlp_hidden``,
``enc.depth`` and, with ``skip_layers=True``, ``enc.{i}.keep`` (see :mod:`lightning_nas.spaces.vit`).

**The text task, offline.** :func:`zen_of_python` is the Zen of Python (PEP 20), which ships
inside CPython itself (the standard library's ``this`` module, ROT13-encoded): 19 aphorisms, 856
ASCII characters, identical in every Python 3, so the task needs no download and no extra package
and is the same on every machine. :func:`char_dataset` cuts a text into ``(input, next
characters)`` windows of byte ids (vocabulary 128, ASCII). It is a toy task, for the pipeline and
the benchmarks, not for language-model quality. :class:`LanguageModel` is a plain
LightningModule that trains any such network on it, and :func:`next_token_accuracy` is the
per-sequence score that :class:`~lightning_nas.callbacks.ContributionEstimation` takes for it.
"""

from __future__ import annotations

import contextlib
import importlib
import io
from collections.abc import Sequence

import lightning.pytorch as pl
import torch
from torch import Tensor, nn
from torch.utils.data import TensorDataset

from lightning_nas.nn import Choice, ElasticEmbedding, ElasticLinear, ElasticPositionalEmbedding, ElasticTransformerEncoder
from lightning_nas.spaces.registry import register_space
from lightning_nas.supernet import Supernet

__all__ = [
    "LanguageModel",
    "TinyGPT",
    "TokenEmbedding",
    "char_dataset",
    "gpt_tiny_supernet",
    "next_token_accuracy",
    "zen_of_python",
]

ASCII = 128


def _positive_int(name: str, value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"`{name}` must be a positive int, got {value!r}")
    return value


def zen_of_python() -> str:
    """The Zen of Python (PEP 20) as plain text, decoded from the standard library's ``this`` module.

    Importing ``this`` prints the text once per process; that print is swallowed here.
    """
    with contextlib.redirect_stdout(io.StringIO()):
        this = importlib.import_module("this")
    return "".join(this.d.get(c, c) for c in this.s)


def char_dataset(text: str | None = None, *, length: int = 32, stride: int = 1) -> TensorDataset:
    """Next-character windows of ``text`` as byte ids: ``(x (N, length), y (N, length))`` LongTensors
    with ``y[:, t] = x[:, t + 1]`` (the character after each position).

    Args:
        text: ASCII text (default :func:`zen_of_python`).
        length: characters per window (the context length ``T``).
        stride: characters between the starts of consecutive windows.

    Raises:
        ValueError: non-ASCII text, a text not longer than ``length``, or a bad ``length`` / ``stride``.
    """
    text = zen_of_python() if text is None else text
    if not isinstance(text, str):
        raise ValueError(f"`text` must be a str, got {type(text).__name__}")
    _positive_int("length", length)
    _positive_int("stride", stride)
    ids = torch.tensor([ord(c) for c in text], dtype=torch.long)
    if ids.numel() and int(ids.max()) >= ASCII:
        bad = next(c for c in text if ord(c) >= ASCII)
        raise ValueError(f"`text` must be ASCII (the vocabulary is the 128 byte values), found {bad!r}")
    if ids.numel() <= length:
        raise ValueError(f"`text` must be longer than `length` ({length}) characters, got {ids.numel()}")
    starts = torch.arange(0, ids.numel() - length, stride)
    windows = ids[starts[:, None] + torch.arange(length + 1)]  # (N, length + 1)
    return TensorDataset(windows[:, :-1].contiguous(), windows[:, 1:].contiguous())


def next_token_accuracy(logits: Tensor, target: Tensor) -> Tensor:
    """``(B,)``: the fraction of each sequence's positions whose arg-max logit is the next token.

    Args:
        logits: ``(B, T, V)``.
        target: ``(B, T)`` token ids.
    """
    if logits.dim() != 3 or target.shape != logits.shape[:2]:
        raise ValueError(f"`logits` must be (B, T, V) and `target` (B, T), got {tuple(logits.shape)} and {tuple(target.shape)}")
    return (logits.argmax(-1) == target).float().mean(1)


class TokenEmbedding(nn.Module):
    """Token embedding plus a learned position embedding, both of the elastic width.

    Shapes: ``LongTensor (B, T) -> (B, T, e)`` with ``T <= max_length``.
    """

    def __init__(self, vocab_size: int, max_length: int, embed_dim: int | Choice) -> None:
        super().__init__()
        self.tokens = ElasticEmbedding(_positive_int("vocab_size", vocab_size), embed_dim)
        self.positions = ElasticPositionalEmbedding(_positive_int("max_length", max_length), embed_dim)

    def forward(self, ids: Tensor) -> Tensor:
        return self.positions(self.tokens(ids))


class TinyGPT(nn.Module):
    """Embeddings, a causal elastic transformer encoder and a linear head to the vocabulary.

    Shapes: ``LongTensor (B, T) -> (B, T, vocab_size)`` logits.
    """

    def __init__(self, embed: TokenEmbedding, encoder: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.embed, self.encoder, self.head = embed, encoder, head

    def forward(self, ids: Tensor) -> Tensor:
        return self.head(self.encoder(self.embed(ids)))


@register_space("gpt-tiny")
def gpt_tiny_supernet(
    *,
    vocab_size: int = ASCII,
    max_length: int = 32,
    embed_dims: Sequence[int] = (16, 32),
    depth: int = 2,
    depths: Sequence[int] | None = (1, 2),
    num_heads: Sequence[int] = (1, 2),
    mlp_ratios: Sequence[float] = (1.0, 2.0),
    skip_layers: bool = False,
) -> Supernet:
    """A tiny causal character-level language-model supernet (GPT-2 layout: pre-norm, learned positions).

    The defaults: byte vocabulary (128), context up to 32 characters, width 16 or 32, 1–2 layers of 1
    or 2 heads and MLP ratio 1 or 2 (64 architectures).

    Args:
        vocab_size: number of token ids.
        max_length: the longest context ``T``.
        embed_dims: candidate embedding widths (one decision, ``"embed_dim"``).
        depth: the number of layers.
        depths: candidate depths (``"enc.depth"``), or ``None`` for a fixed depth.
        num_heads: candidate head counts per layer (head dimension ``max(embed_dims) // max(num_heads)``).
        mlp_ratios: candidate MLP ratios per layer.
        skip_layers: add an on/off decision per layer (``"enc.{i}.keep"``).

    Raises:
        ValueError: for a bad argument (named in the message).
    """
    widths = sorted(embed_dims) if isinstance(embed_dims, Sequence) and not isinstance(embed_dims, str) else None
    if not widths or not all(isinstance(w, int) and not isinstance(w, bool) and w > 0 for w in widths) or len(set(widths)) != len(widths):
        raise ValueError(f"`embed_dims` must be a non-empty list of distinct positive ints, got {embed_dims!r}")
    embed = widths[0] if len(widths) == 1 else Choice(widths, "embed_dim", default=widths[-1])
    encoder = ElasticTransformerEncoder(
        embed, depth, list(num_heads), list(mlp_ratios), depths=None if depths is None else list(depths),
        skip_layers=skip_layers, causal=True, label="enc",
    )
    tokens, head = TokenEmbedding(vocab_size, max_length, embed), ElasticLinear(embed, vocab_size)
    # The pre-norm encoder's ElasticLayerNorms ignore each row's features past its width and zero them
    # (per-example mode): the embeddings need not mask them, nor the head its input (the final norm's).
    tokens.tokens.mask_output = tokens.positions.mask_output = False
    head.input_masked = True
    return Supernet(TinyGPT(tokens, encoder, head))


class LanguageModel(pl.LightningModule):
    """A plain next-token LightningModule around any network ``(B, T) -> (B, T, V)``.

    Nothing here knows about NAS (callbacks activate subnets from outside). Loss: cross-entropy
    over every position; logs ``train_loss`` and ``val_loss``; AdamW.

    Args:
        network: the language model (a :class:`~lightning_nas.Supernet` or a plain module).
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay.
    """

    def __init__(self, network: nn.Module, *, lr: float = 3e-3, weight_decay: float = 0.0) -> None:
        super().__init__()
        self.network, self.lr, self.weight_decay = network, lr, weight_decay

    def forward(self, ids: Tensor) -> Tensor:
        return self.network(ids)

    def _loss(self, batch) -> Tensor:
        x, y = batch
        logits = self(x)
        return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))

    def training_step(self, batch, batch_idx):
        loss = self._loss(batch)
        self.log("train_loss", loss, on_step=False, on_epoch=True, batch_size=len(batch[0]))
        return loss

    def validation_step(self, batch, batch_idx):
        self.log("val_loss", self._loss(batch), on_epoch=True, batch_size=len(batch[0]))

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=self.lr, weight_decay=self.weight_decay)
