"""A deep ensemble of MLP regressors with a shared-trunk, one-branch-per-target design (the BO thesis).

Each of the ``M`` members is ``trunk → branch_t → head_t`` for every target ``t``: the trunk
(``Linear → LayerNorm → SiLU`` blocks) embeds the architecture encoding, a branch
(``Linear → LayerNorm → SiLU``) and a ``Linear(·, 1)`` head predict one target (a zero-cost metric
for pretraining, or a fidelity's accuracy). The members are independently initialised and see
independently shuffled minibatches; their spread is the surrogate's uncertainty.

The M members are computed together with batched matrix products (weights ``(M, in, out)``), which
on a CPU is several times faster than M separate modules. Training minimises the sum over targets of
the Huber loss on the rows where that target is observed (missing targets are NaN), on targets
standardised per column (Huber's δ = 1 assumes unit scale).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["DeepEnsemble", "THESIS_BRANCH", "THESIS_TRUNK", "fit_ensemble", "masked_huber"]

#: Trunk and branch widths of the thesis (Appendix A); the defaults here are smaller, for CPU speed.
THESIS_TRUNK: tuple[int, ...] = (64, 128, 256, 256, 256)
THESIS_BRANCH: int = 512


class _MemberLinear(nn.Module):
    """``M`` independent linear layers: ``(M, N, in) → (M, N, out)``, each initialised like ``nn.Linear``."""

    def __init__(self, members: int, in_features: int, out_features: int, generator: torch.Generator) -> None:
        super().__init__()
        bound = 1.0 / math.sqrt(in_features)
        self.weight = nn.Parameter((torch.rand(members, in_features, out_features, generator=generator) * 2 - 1) * bound)
        self.bias = nn.Parameter((torch.rand(members, 1, out_features, generator=generator) * 2 - 1) * bound)

    def forward(self, x: Tensor) -> Tensor:
        return torch.baddbmm(self.bias, x, self.weight)


class _MemberBlock(nn.Module):
    """``Linear → LayerNorm → SiLU`` for ``M`` members (LayerNorm with per-member affine)."""

    def __init__(self, members: int, in_features: int, out_features: int, generator: torch.Generator) -> None:
        super().__init__()
        self.linear = _MemberLinear(members, in_features, out_features, generator)
        self.norm_weight = nn.Parameter(torch.ones(members, 1, out_features))
        self.norm_bias = nn.Parameter(torch.zeros(members, 1, out_features))

    def forward(self, x: Tensor) -> Tensor:
        h = self.linear(x)
        h = F.layer_norm(h, h.shape[-1:]) * self.norm_weight + self.norm_bias
        return F.silu(h)


class DeepEnsemble(nn.Module):
    """``M`` MLP members with a shared trunk and one branch + head per target.

    Args:
        in_features: encoding length.
        targets: number of targets (heads).
        members: M.
        trunk: widths of the trunk blocks.
        branch: width of each target's branch block.
        seed: initialisation seed (member m gets different weights from member m').

    Shapes: ``forward(x (N, in_features)) → (M, N, targets)`` in standardised target units;
    :meth:`predict` undoes the standardisation.
    """

    def __init__(self, in_features: int, targets: int, *, members: int = 6, trunk: Sequence[int] = (64, 64, 64),
                 branch: int = 64, seed: int = 0) -> None:
        super().__init__()
        for name, value in (("in_features", in_features), ("targets", targets), ("members", members),
                            ("branch", branch)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"`{name}` must be an int >= 1, got {value!r}")
        if not trunk or any(not isinstance(w, int) or w < 1 for w in trunk):
            raise ValueError(f"`trunk` must be a non-empty sequence of positive ints, got {trunk!r}")
        generator = torch.Generator().manual_seed(seed)
        widths = [in_features, *trunk]
        self.members, self.targets = members, targets
        self.trunk = nn.Sequential(*(_MemberBlock(members, a, b, generator) for a, b in zip(widths, widths[1:])))
        self.branches = nn.ModuleList(_MemberBlock(members, widths[-1], branch, generator) for _ in range(targets))
        self.heads = nn.ModuleList(_MemberLinear(members, branch, 1, generator) for _ in range(targets))
        self.register_buffer("target_mean", torch.zeros(targets))
        self.register_buffer("target_std", torch.ones(targets))

    def forward(self, x: Tensor, heads: Sequence[int] | None = None) -> Tensor:
        """Standardised predictions ``(M, N, len(heads))`` (all heads by default) for ``x`` ``(N, in)``
        or per-member inputs ``(M, N, in)``."""
        if x.dim() == 2:
            x = x.unsqueeze(0).expand(self.members, -1, -1)
        y = self.trunk(x)
        heads = range(self.targets) if heads is None else heads
        return torch.cat([self.heads[t](self.branches[t](y)) for t in heads], dim=-1)

    @torch.inference_mode()
    def predict(self, x: Tensor, head: int, chunk: int = 2048) -> Tensor:
        """Predictions of target ``head`` in its own units, ``(M, N)``, computed ``chunk`` rows at a time
        (a chunk's activations, ``M · chunk · width`` floats, then stay in cache: 2048 rows scored
        15,625 NB201 cells ~30 % faster than 8192 on one CPU thread)."""
        out = [self(x[i:i + chunk], heads=[head])[..., 0] for i in range(0, len(x), chunk)]
        pred = torch.cat(out, dim=1) if out else torch.zeros(self.members, 0)
        return pred * self.target_std[head] + self.target_mean[head]

    def set_standardisation(self, targets: Tensor) -> None:
        """Mean and std of each observed target column of ``targets`` ``(N, targets)`` (NaN = missing)."""
        for t in range(self.targets):
            column = targets[:, t]
            column = column[~torch.isnan(column)]
            if len(column):
                self.target_mean[t] = column.mean()
                self.target_std[t] = column.std(unbiased=False).clamp_min(1e-6) if len(column) > 1 else 1.0


def masked_huber(pred: Tensor, target: Tensor) -> Tensor:
    """Sum over targets of the mean Huber loss (δ = 1) on observed (non-NaN) entries.

    Args:
        pred: ``(M, B, T)`` standardised predictions.
        target: ``(M, B, T)`` standardised targets, NaN where missing.

    Returns:
        A scalar: summed over members and targets (targets with no observed entry add nothing).
    """
    observed = ~torch.isnan(target)
    safe = torch.where(observed, target, pred.detach())
    loss = F.huber_loss(pred, safe, reduction="none", delta=1.0) * observed
    counts = observed.sum(dim=1).clamp_min(1)  # (M, T)
    return (loss.sum(dim=1) / counts).sum()


def _adam(params, lr: float) -> torch.optim.Adam:
    """Adam with the fused kernel where this torch has it: one call per step for all parameters, not
    one small op per tensor (~40 % of a refit's time on one CPU thread)."""
    params = list(params)
    try:
        return torch.optim.Adam(params, lr=lr, fused=True)
    except (RuntimeError, TypeError):  # a torch without a fused CPU Adam
        return torch.optim.Adam(params, lr=lr)


def fit_ensemble(model: DeepEnsemble, x: Tensor, targets: Tensor, *, steps: int, lr: float = 5e-3,
                 batch_size: int = 16, seed: int = 0) -> float:
    """Train ``model`` on ``x`` ``(N, in)`` and ``targets`` ``(N, T)`` (NaN = missing) with Adam.

    Each member draws its own minibatches (independent shuffles). Targets are standardised with the
    model's current standardisation (call :meth:`DeepEnsemble.set_standardisation` first). Only the
    heads with an observed target are computed: a head without data gets no gradient, so leaving it
    out changes nothing but the time (a search's refits train one fidelity head beside idle
    pretraining heads).

    Returns:
        The last step's loss.
    """
    if len(x) == 0:
        return 0.0
    if targets.shape != (len(x), model.targets):
        raise ValueError(f"`targets` must have shape ({len(x)}, {model.targets}), got {tuple(targets.shape)}")
    generator = torch.Generator().manual_seed(seed)
    active = [t for t in range(model.targets) if not torch.isnan(targets[:, t]).all()]
    if not active:
        return 0.0
    scaled = ((targets - model.target_mean) / model.target_std)[:, active]
    optimizer = _adam(model.parameters(), lr)
    batch = min(batch_size, len(x))
    loss = torch.zeros(())
    model.train()
    for _ in range(steps):
        idx = torch.randint(len(x), (model.members, batch), generator=generator)
        loss = masked_huber(model(x[idx], heads=active), scaled[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    model.eval()
    return float(loss.detach())
