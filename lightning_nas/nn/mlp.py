"""``ElasticMLP``: a transformer's feed-forward block whose hidden width (the MLP ratio) is a decision."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from lightning_nas.nn.choice import Choice, Mutable, largest
from lightning_nas.nn.elastic_size import check_size_spec
from lightning_nas.nn.linear import ElasticLinear

__all__ = ["ElasticMLP"]


def _keeps_zero(act: nn.Module) -> bool:
    """Whether ``act`` maps zeros to zeros (GELU, ReLU, SiLU, Tanh: yes; Sigmoid: no); an activation that
    cannot run on a small zero tensor counts as no (its layer then keeps masking its input)."""
    training = act.training
    act.eval()  # no running statistics or dropout state touched by the probe
    try:
        with torch.no_grad():
            out = act(torch.zeros(2, 4))
    except Exception:  # any failure only means the mask is kept
        return False
    finally:
        act.train(training)
    return isinstance(out, Tensor) and bool((out == 0).all())


class ElasticMLP(Mutable):
    """``fc2(activation(fc1(x)))`` with an elastic hidden width (a prefix of the hidden neurons).

    Both layers are :class:`~lightning_nas.nn.ElasticLinear`: a hidden width ``m`` uses the first
    ``m`` rows of ``fc1`` and the first ``m`` columns of ``fc2``; the input and output widths may be
    the residual stream's width ``Choice``. In per-example mode each row runs its own widths (any
    activation works: ``fc2`` zeroes a row's inputs past its own hidden width). Hidden neurons can
    be ranked by importance first (:meth:`reorder_hidden`). Export gives
    ``nn.Sequential(nn.Linear, activation, nn.Linear)``.

    Args:
        in_features: int, or the ``Choice`` of the input width (e.g. the embedding width).
        hidden_features: int or ``Choice`` of hidden widths (``mlp_ratio * embed_dim`` candidates).
        out_features: int or ``Choice`` (default: ``in_features``, the same int or ``Choice``).
        activation: a callable returning the activation module (default ``nn.GELU``); it must hold
            no per-neuron state.
        bias: both layers learn an additive bias.

    Attributes:
        hidden_features: the hidden width (int or ``Choice``); an unlabelled ``Choice`` is named
            after this attribute's path.
        fc1, act, fc2: the two layers and the activation.

    Shapes: ``(B, ..., F_in) -> (B, ..., F_out)``.
    """

    def __init__(
        self,
        in_features: int | Choice,
        hidden_features: int | Choice,
        out_features: int | Choice | None = None,
        activation: Callable[[], nn.Module] = nn.GELU,
        bias: bool = True,
    ) -> None:
        super().__init__()
        check_size_spec("hidden_features", hidden_features)
        if not callable(activation):
            raise ValueError(f"`activation` must be a callable returning an nn.Module (e.g. nn.GELU), got {activation!r}")
        act = activation()
        if not isinstance(act, nn.Module):
            raise ValueError(f"`activation()` must return an nn.Module, got {type(act).__name__}")
        # Registered first so that an unlabelled hidden width is named "<path>.hidden_features".
        self.hidden_features = hidden_features
        self.fc1 = ElasticLinear(in_features, hidden_features, bias=bias)
        self.act = act
        self.fc2 = ElasticLinear(hidden_features, in_features if out_features is None else out_features, bias=bias)
        # fc1 zeroes each row's hidden neurons past its width; an activation that keeps 0 at 0 keeps
        # them zero, so fc2 need not mask its input again (checked on this activation instance).
        self.fc2.input_masked = _keeps_zero(act)

    # Per-row layers around an activation without per-neuron state (no batch statistics): rows a
    # DepthChoice has stopped leave the others' outputs as they are.
    masks_stopped_rows = True

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))

    def hidden_importance(self) -> Tensor:
        """``(M,)`` importance of each hidden neuron: the L1 norm of ``fc2``'s column reading it (the
        consuming layer's weight, as ``elastic_expansion`` ranks CNN channels)."""
        return self.fc2.weight.detach().abs().sum(0)

    @torch.no_grad()
    def reorder_hidden(self, importance: Tensor | None = None) -> Tensor:
        """Permute the hidden neurons, most important first, so that every smaller width keeps the best ones.

        ``fc1``'s rows (and bias) and ``fc2``'s columns move together: the full-width MLP computes
        exactly what it computed. Parameters are permuted in place (the same ``nn.Parameter``
        objects; optimiser state such as momentum is not permuted: reorder before training or
        before building the optimiser). Layers made with ``ElasticLinear.from_linear`` share their
        tensors with the original model, which is then permuted too.

        Args:
            importance: ``(M,)`` scores, higher = kept longer (default: :meth:`hidden_importance`).

        Returns:
            ``(M,)`` the new order: new neuron ``j`` is old neuron ``order[j]``.
        """
        m = largest(self.hidden_features)
        importance = self.hidden_importance() if importance is None else importance
        if not isinstance(importance, Tensor) or tuple(importance.shape) != (m,):
            raise ValueError(f"`importance` must be a Tensor of shape ({m},) (one score per hidden neuron), got {getattr(importance, 'shape', importance)!r}")
        order = torch.argsort(importance.detach().to(self.fc1.weight.device), descending=True, stable=True)
        self.fc1.weight.copy_(self.fc1.weight[order])
        if self.fc1.bias is not None:
            self.fc1.bias.copy_(self.fc1.bias[order])
        self.fc2.weight.copy_(self.fc2.weight[:, order])
        return order

    def freeze(self, arch: dict[str, Any], export_child) -> nn.Sequential:
        return nn.Sequential(export_child(self.fc1), export_child(self.act), export_child(self.fc2))

    def extra_repr(self) -> str:
        return f"hidden_features={self.hidden_features!r}"
