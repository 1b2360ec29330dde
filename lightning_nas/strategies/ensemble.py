"""A deep ensemble of MLP regressors with a shared-trunk, one-branch-per-target design (the BO thesis).

Each of the ``M`` members is ``trunk → branch_t → head_t`` for every target ``t``: the trunk
(``Linear → LayerNorm → activation`` blocks, SiLU or its cheaper stand-in hard-swish: see
:data:`ACTIVATIONS`) embeds the architecture encoding, a branch (``Linear → LayerNorm →
activation``) and a ``Linear(·, 1)`` head predict one target (a zero-cost metric
for pretraining, or a fidelity's accuracy). The members are independently initialised and see
independently shuffled minibatches; their spread is the surrogate's uncertainty.

The M members are computed together with batched matrix products (weights ``(M, in, out)``), which
on a CPU is several times faster than M separate modules. Training minimises the sum over targets of
the Huber loss on the rows where that target is observed (missing targets are NaN), on targets
standardised per column (Huber's δ = 1 assumes unit scale).

Speed (a BO search refits and rescores every few evaluations, so both run hundreds of times):

- :func:`fit_ensemble` computes the gradient by hand (the network is a fixed stack of
  ``Linear → LayerNorm → affine → activation`` blocks) and writes every parameter's gradient into one
  flat buffer, which Adam updates in a few whole-buffer operations (:class:`_FlatAdam`). At a
  search's sizes (M · 16 rows) a step is all per-operator overhead, and autograd's graph and
  ``torch.optim``'s per-step bookkeeping were most of it: a refit of 100 steps on 100 NB201
  results takes 90 ms instead of 166 ms on one CPU thread (measured side by side), with the same
  gradient (tested against autograd). Every step's minibatches are drawn and gathered at once
  (the same draws as one call per step). The step loop then runs compiled by TorchScript
  (:func:`_train_steps`): the same ATen operators in the same order, so the same bits (tested), without
  Python's cost per call (~130 calls a step): such a refit then takes ~65 ms instead of ~92 ms (one
  CPU thread, alternated).
- :meth:`DeepEnsemble.predict` folds LayerNorm's centring into the linear layer (centring is
  linear: ``z − mean(z) = x(W − mean_j W) + (b − mean_j b)``), leaving one norm reduction, the
  affine and the activation per block, in place in buffers reused across chunks: scoring 15,625
  NB201 cells takes 69 ms instead of 123 ms with ``F.layer_norm`` and the affine (SiLU, one CPU
  thread, side by side).
- SiLU's exponential was then a third of the scoring time; ``activation="hardswish"`` replaces it
  with a few comparisons and multiplies (:data:`ACTIVATIONS`), and ``fused_adam=True`` runs ATen's
  fused Adam kernel (:class:`_FlatAdam`). Both are opt-in: they change the model or the float
  rounding, and on NB201 that reshuffled the BO searches seed by seed, with seeds at the cap that
  the defaults do not have (RESULTS.md, issue 23 notes).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import List, Optional
import warnings

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["ACTIVATIONS", "DeepEnsemble", "check_activation", "THESIS_BRANCH", "THESIS_TRUNK", "fit_ensemble", "masked_huber"]

#: Trunk and branch widths of the thesis (Appendix A); the defaults here are smaller, for CPU speed.
THESIS_TRUNK: tuple[int, ...] = (64, 128, 256, 256, 256)
THESIS_BRANCH: int = 512
_LN_EPS = 1e-5  # F.layer_norm's default eps, which the blocks use

#: The blocks' activations: name -> (forward, in-place forward, ``backward(grad_out, input)``).
#: ``"hardswish"`` (x · relu6(x + 3) / 6, MobileNetV3's piecewise-polynomial stand-in for SiLU) has
#: SiLU's shape (identity for large inputs, zero for very negative ones, a dip below zero between)
#: without its exponential: on one CPU thread (AVX2) it takes 0.2 ms on a (6, 2048, 64) tensor
#: against 1.1 ms for SiLU, which was a third of the time of scoring the 15,625 NB201 cells.
ACTIVATIONS = {
    "silu": (F.silu, lambda x: F.silu(x, inplace=True), torch.ops.aten.silu_backward),
    "hardswish": (F.hardswish, lambda x: F.hardswish(x, inplace=True), torch.ops.aten.hardswish_backward),
}


def check_activation(activation: str) -> str:
    """``activation`` if it names one of :data:`ACTIVATIONS`, else a ``ValueError`` that lists them."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"`activation` must be one of {tuple(ACTIVATIONS)}, got {activation!r}")
    return activation


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
    """``Linear → LayerNorm → activation`` for ``M`` members (LayerNorm with per-member affine)."""

    def __init__(self, members: int, in_features: int, out_features: int, generator: torch.Generator,
                 activation: str = "silu") -> None:
        super().__init__()
        self.activation = check_activation(activation)
        self.linear = _MemberLinear(members, in_features, out_features, generator)
        self.norm_weight = nn.Parameter(torch.ones(members, 1, out_features))
        self.norm_bias = nn.Parameter(torch.zeros(members, 1, out_features))

    def forward(self, x: Tensor) -> Tensor:
        h = self.linear(x)
        h = F.layer_norm(h, h.shape[-1:]) * self.norm_weight + self.norm_bias
        return ACTIVATIONS[self.activation][0](h)


class DeepEnsemble(nn.Module):
    """``M`` MLP members with a shared trunk and one branch + head per target.

    Args:
        in_features: encoding length.
        targets: number of targets (heads).
        members: M.
        trunk: widths of the trunk blocks.
        branch: width of each target's branch block.
        seed: initialisation seed (member m gets different weights from member m').
        activation: the blocks' activation, a key of :data:`ACTIVATIONS` (``"silu"``, the default;
            ``"hardswish"``: its cheaper piecewise-polynomial stand-in). The initialisation does not
            depend on it.

    Shapes: ``forward(x (N, in_features)) → (M, N, targets)`` in standardised target units;
    :meth:`predict` undoes the standardisation.
    """

    def __init__(self, in_features: int, targets: int, *, members: int = 6, trunk: Sequence[int] = (64, 64, 64),
                 branch: int = 64, seed: int = 0, activation: str = "silu") -> None:
        super().__init__()
        check_activation(activation)
        for name, value in (("in_features", in_features), ("targets", targets), ("members", members),
                            ("branch", branch)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"`{name}` must be an int >= 1, got {value!r}")
        if not trunk or any(not isinstance(w, int) or w < 1 for w in trunk):
            raise ValueError(f"`trunk` must be a non-empty sequence of positive ints, got {trunk!r}")
        generator = torch.Generator().manual_seed(seed)
        widths = [in_features, *trunk]
        self.members, self.targets = members, targets
        self.activation = activation
        self.trunk = nn.Sequential(*(_MemberBlock(members, a, b, generator, activation)
                                     for a, b in zip(widths, widths[1:])))
        self.branches = nn.ModuleList(_MemberBlock(members, widths[-1], branch, generator, activation)
                                      for _ in range(targets))
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

    def blocks(self, head: int) -> list[_MemberBlock]:
        """The blocks from the encoding to target ``head``'s branch output, in order (trunk, then branch)."""
        return [*self.trunk, self.branches[head]]

    @torch.inference_mode()
    def predict(self, x: Tensor, head: int, chunk: int = 2048) -> Tensor:
        """Predictions of target ``head`` in its own units, ``(M, N)``, for ``x`` ``(N, in_features)``,
        computed ``chunk`` rows at a time (a chunk's activations, ``M · chunk · width`` floats, then
        stay in cache).

        Equal to :meth:`forward` up to float rounding; LayerNorm's centring is folded into each
        linear layer's weights (see the module docstring), so a block costs one matrix product, one
        norm reduction, the affine and the activation, all in place in reused buffers.
        """
        act = ACTIVATIONS[self.activation][1]
        folded = []
        for block in self.blocks(head):
            w, b = block.linear.weight, block.linear.bias
            folded.append((w - w.mean(-1, keepdim=True), b - b.mean(-1, keepdim=True), block.norm_weight,
                           block.norm_bias, math.sqrt(w.shape[-1])))
        head_w, head_b = self.heads[head].weight, self.heads[head].bias
        width = max(w.shape[-1] for w, *_ in folded)
        rows = min(chunk, len(x))
        # Two activation buffers used in turn and a norm buffer, reused by every chunk: no multi-MB
        # allocation (and page faults) per operation (~10 % of the time on one CPU thread).
        buffers = (x.new_empty(self.members, rows, width), x.new_empty(self.members, rows, width))
        norms = x.new_empty(self.members, rows, 1)
        pred = x.new_empty(self.members, len(x), 1)
        for i in range(0, len(x), chunk):
            n = min(chunk, len(x) - i)
            h = x[i:i + n].unsqueeze(0).expand(self.members, -1, -1)
            for k, (w, b, gain, shift, root) in enumerate(folded):
                z = buffers[k % 2][:, :n, :w.shape[-1]]
                torch.baddbmm(b, h, w, out=z)  # already centred: mean over features 0
                # rsqrt(mean(z²) + eps) = 1 / sqrt(||z||² / width + eps), LayerNorm's biased variance and eps
                scale = torch.linalg.vector_norm(z, dim=-1, keepdim=True, out=norms[:, :n])
                scale.div_(root).square_().add_(_LN_EPS).rsqrt_()
                h = act(z.mul_(scale).mul_(gain).add_(shift))
            torch.baddbmm(head_b, h, head_w, out=pred[:, i:i + n])
        pred = pred[..., 0]
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
                 batch_size: int = 16, seed: int = 0, fused_adam: bool = False) -> float:
    """Train ``model`` on ``x`` ``(N, in)`` and ``targets`` ``(N, T)`` (NaN = missing) with Adam.

    Each member draws its own minibatches (independent shuffles). Targets are standardised with the
    model's current standardisation (call :meth:`DeepEnsemble.set_standardisation` first). Only the
    heads with an observed target are computed: a head without data gets no gradient and Adam leaves
    it unchanged, so leaving it out changes nothing but the time (a search's refits train one
    fidelity head beside idle pretraining heads).

    The loss is :func:`masked_huber`; its gradient is computed by hand (:class:`_ManualStep`, equal
    to autograd's up to float rounding) into one flat buffer, and Adam (:class:`_FlatAdam`, the
    algorithm and defaults of ``torch.optim.Adam``) updates every parameter at once in a few
    operations (see the module docstring for why), the whole loop compiled by TorchScript
    (:func:`_train_steps`, bit-identical to running the steps from Python); ``fused_adam=True``:
    ATen's fused kernel instead (faster, rounds differently; see :class:`_FlatAdam`), from Python.

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
    x = x.float()
    scaled = ((targets - model.target_mean) / model.target_std)[:, active].float()
    seen = ~torch.isnan(scaled)
    observed = None if bool(seen.all()) else seen.float()
    scaled = torch.nan_to_num(scaled, nan=0.0)
    step = _ManualStep(model, active)
    adam = _FlatAdam(step.flat.data, lr, fused=fused_adam)
    batch = min(batch_size, len(x))
    model.train()
    # Every step's minibatches drawn and gathered at once (the same draws as one call per step; three
    # gathers instead of three per step).
    idx = torch.randint(len(x), (steps, model.members, batch), generator=generator)
    xs, ys, masks = x[idx], scaled[idx], None if observed is None else observed[idx]
    # The whole loop in TorchScript (see _train_steps): the same operators in the same order as the
    # step-by-step Python path (_ManualStep.gradient + _FlatAdam.step), hence the same bits. Not with
    # the fused kernel: a scripted call of it left the parameters unchanged (its in-place update of
    # tensor lists is lost in TorchScript), so that option keeps the Python loop.
    train = _train_steps_compiled() if not adam.fused else torch.no_grad()(_train_steps)
    loss = train(xs, ys, masks, step.trunk, step.branches, step.heads, model.activation, adam.param, step.flat.grad,
                 adam.m, adam.v, adam.denom, adam.steps, adam.lr, adam.betas[0], adam.betas[1], adam.eps, adam.fused,
                 adam.t)
    adam.t += steps
    step.write_back()
    model.eval()
    return loss


class _FlatAdam:
    """Adam on one flat parameter tensor, in place: ``torch.optim.Adam``'s algorithm and defaults
    (betas 0.9 / 0.999, eps 1e-8, bias-corrected, no weight decay) without its per-step Python
    bookkeeping, which at a refit's sizes costs more than the update itself.

    ``fused=True`` runs ATen's fused Adam kernel (``torch._fused_adam_``, what
    ``torch.optim.Adam(fused=True)`` runs) directly, where this torch has it: one pass over the
    ~90,000 floats of a BO refit instead of six whole-buffer operations (55 µs against 150 µs a step
    on one CPU thread, ~9 ms per 100-step refit; through ``torch.optim.Adam(fused=True)`` its
    bookkeeping makes it 300 µs). Not the default: it rounds differently, and on NB201 that alone
    reshuffled the multi-fidelity and proxy-pretrained BO runs seed by seed (one multi-fidelity seed
    reached the evaluation cap), so the searches would no longer reproduce the published runs.
    """

    def __init__(self, param: Tensor, lr: float, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 fused: bool = False) -> None:
        self.param, self.lr, self.betas, self.eps = param, lr, betas, eps
        self.m, self.v, self.t = torch.zeros_like(param), torch.zeros_like(param), 0
        self.fused = bool(fused) and hasattr(torch, "_fused_adam_")
        self.steps = torch.zeros((), dtype=torch.float32)  # the kernel's step count (it reads, not increments, it)
        self.denom = torch.empty_like(param)  # sqrt(v), written in place every step (unfused)

    @torch.no_grad()
    def step(self, grad: Tensor) -> None:
        """One update of ``param`` from ``grad`` (same shape)."""
        self.t += 1
        _adam_update(self.param, grad, self.m, self.v, self.denom, self.steps, self.t, self.lr, self.betas[0],
                     self.betas[1], self.eps, self.fused)


class _ManualStep:
    """One training step's gradient of :func:`masked_huber` for the blocks of ``model`` leading to the
    ``active`` heads, by hand, into ``flat.grad``.

    ``flat`` holds a copy of the parameters on the path to an active head (:meth:`write_back`
    copies them back; the others would get no gradient, so Adam would leave them unchanged); each
    block reads its weights from views of it and writes its gradients into views of ``flat.grad``
    with ``out=`` (every gradient is overwritten each step).

    Per block ``y = act(g · LN(h W + b) + β)``, with LN without affine (eps 1e-5). Backward:
    ``da = act'(a) dy``, ``dg = Σ da · n``, ``dβ = Σ da``, ``dz = LN'(g · da)``, ``dW = hᵀ dz``,
    ``db = Σ dz``, ``dh = dz Wᵀ``.
    """

    def __init__(self, model: DeepEnsemble, active: Sequence[int]) -> None:
        self.model, self.active = model, list(active)
        blocks = [*model.trunk, *(model.branches[t] for t in self.active)]
        # Only the parameters on the path to an active head: the rest would get a zero gradient.
        params = [p for b in blocks for p in (b.linear.weight, b.linear.bias, b.norm_weight, b.norm_bias)]
        params += [p for t in self.active for p in (model.heads[t].weight, model.heads[t].bias)]
        self.params = params
        self.flat = nn.Parameter(torch.cat([p.detach().reshape(-1) for p in params]).float())
        self.flat.grad = torch.zeros_like(self.flat)
        views, grads, offset = [], [], 0
        for p in params:
            views.append(self.flat.data[offset:offset + p.numel()].view(p.shape))
            grads.append(self.flat.grad[offset:offset + p.numel()].view(p.shape))
            offset += p.numel()
        self.views = views
        # Lists (not tuples) of tensors: what the TorchScript loop (_train_steps) takes.
        per_block = [views[4 * i:4 * i + 4] + grads[4 * i:4 * i + 4] for i in range(len(blocks))]
        self.trunk, self.branches = per_block[:len(model.trunk)], per_block[len(model.trunk):]
        first = 4 * len(blocks)
        self.heads = [[views[first + 2 * i], views[first + 2 * i + 1], grads[first + 2 * i], grads[first + 2 * i + 1]]
                      for i in range(len(self.active))]

    @torch.no_grad()
    def gradient(self, x: Tensor, target: Tensor, observed: Tensor | None = None, want_loss: bool = False) -> float:
        """Write the gradient of the loss on minibatch ``x`` ``(M, B, in)`` into ``flat.grad``; returns the
        loss when ``want_loss`` (else 0). See :func:`_gradient`.

        Args:
            x: ``(M, B, in)`` encodings, one minibatch per member.
            target: ``(M, B, len(active))`` standardised targets, finite (0 where missing).
            observed: ``(M, B, len(active))`` float, 1 where the target is observed; ``None``: all are.
        """
        return _gradient(x, target, observed, self.trunk, self.branches, self.heads, self.model.activation, want_loss)

    @torch.no_grad()
    def write_back(self) -> None:
        """Copy the trained weights from ``flat`` into the model's parameters."""
        for p, v in zip(self.params, self.views):
            p.copy_(v)


# -- one training step, written for TorchScript ------------------------------------------------------
# A refit is ~100 steps of ~130 small operators on (M, 16, 64) tensors, where Python's per-call cost
# (argument parsing, the loop itself) is a large share of the time. fit_ensemble therefore runs the
# whole loop (_train_steps) compiled by TorchScript, which calls the same ATen operators in the same
# order without Python in between: the same bits as the step-by-step path (_ManualStep.gradient and
# _FlatAdam.step call the same functions from Python; tested), 25-35 % less time per refit on one CPU
# thread. Blocks are lists [weight, bias, gain, shift, d weight, d bias, d gain, d shift]; heads
# [weight, bias, d weight, d bias]; forward state [output, input, z, normalised z, mean, rstd, a].

def _act(a: Tensor, activation: str) -> Tensor:
    """The blocks' activation (:data:`ACTIVATIONS`; the same operators)."""
    if activation == "hardswish":
        return F.hardswish(a)
    return F.silu(a)


def _act_backward(dy: Tensor, a: Tensor, activation: str) -> Tensor:
    if activation == "hardswish":
        return torch.ops.aten.hardswish_backward(dy, a)
    return torch.ops.aten.silu_backward(dy, a)


def _block_forward(h: Tensor, p: List[Tensor], activation: str) -> List[Tensor]:
    """``y = act(gain · LN(h W + b) + shift)`` with what the backward pass needs: ``[y, h, z, n, mean, rstd, a]``."""
    z = torch.baddbmm(p[1], h, p[0])
    n, mean, rstd = torch.native_layer_norm(z, [z.shape[-1]], None, None, 1e-5)  # _LN_EPS (TorchScript: no float globals)
    a = torch.addcmul(p[3], n, p[2])
    return [_act(a, activation), h, z, n, mean, rstd, a]


def _block_backward(dy: Tensor, p: List[Tensor], saved: List[Tensor], activation: str,
                    need_input: bool) -> Optional[Tensor]:
    """Writes the block's parameter gradients into ``p[4:8]``; returns ``d input`` when ``need_input``.

    ``da = act'(a) dy``, ``dg = Σ da · n``, ``dβ = Σ da``, ``dz = LN'(g · da)``, ``dW = hᵀ dz``,
    ``db = Σ dz``, ``dh = dz Wᵀ``.
    """
    h, z, n, mean, rstd, a = saved[1], saved[2], saved[3], saved[4], saved[5], saved[6]
    da = _act_backward(dy, a, activation)
    torch.sum(da * n, dim=[1], keepdim=True, out=p[6])
    torch.sum(da, dim=[1], keepdim=True, out=p[7])
    dz = torch.ops.aten.native_layer_norm_backward(da * p[2], z, [z.shape[-1]], mean, rstd, None, None,
                                                   [True, False, False])[0]
    torch.bmm(h.transpose(1, 2), dz, out=p[4])
    torch.sum(dz, dim=[1], keepdim=True, out=p[5])
    if need_input:
        return torch.bmm(dz, p[0].transpose(1, 2))
    return None


def _gradient(x: Tensor, target: Tensor, observed: Optional[Tensor], trunk: List[List[Tensor]],
              branches: List[List[Tensor]], heads: List[List[Tensor]], activation: str, want_loss: bool) -> float:
    """The gradient of :func:`masked_huber` on minibatch ``x`` ``(M, B, in)`` (targets ``(M, B, T)``, 0 where
    ``observed`` ``(M, B, T)`` is 0; ``None``: all observed) written into the blocks' and heads' gradient
    views; returns the loss when ``want_loss`` (else 0)."""
    h = x
    saved: List[List[Tensor]] = []
    for p in trunk:
        s = _block_forward(h, p, activation)
        saved.append(s)
        h = s[0]
    preds: List[Tensor] = []
    branch_saved: List[List[Tensor]] = []
    for k in range(len(branches)):
        s = _block_forward(h, branches[k], activation)
        branch_saved.append(s)
        preds.append(torch.baddbmm(heads[k][1], s[0], heads[k][0]))
    pred = torch.cat(preds, dim=-1) if len(preds) > 1 else preds[0]  # (M, B, T)
    counts = torch.empty(0)
    if observed is None:  # every target observed: no masking, every (member, target) mean is over B rows
        diff = pred - target
        dpred = diff.clamp(-1.0, 1.0).div_(float(target.shape[1]))  # d Huber(δ=1) / d pred, per mean
    else:
        diff = (pred - target).mul_(observed)
        counts = observed.sum(dim=[1], keepdim=True).clamp_min_(1)  # (M, 1, T)
        dpred = diff.clamp(-1.0, 1.0).div_(counts)
    dh: Optional[Tensor] = None
    for k in range(len(branches)):
        head = heads[k]
        d = dpred[:, :, k:k + 1]
        torch.bmm(branch_saved[k][0].transpose(1, 2), d, out=head[2])
        torch.sum(d, dim=[1], keepdim=True, out=head[3])
        # d (M, B, 1) times the head's weights (M, 1, branch): an outer product, a broadcast multiply
        # (a batched product with one inner dimension costs several times more here)
        dy = _block_backward(d * head[0].transpose(1, 2), branches[k], branch_saved[k], activation, True)
        assert dy is not None
        dh = dy if dh is None else dh.add_(dy)
    for i in range(len(trunk) - 1, -1, -1):
        assert dh is not None
        dh = _block_backward(dh, trunk[i], saved[i], activation, i > 0)
    if not want_loss:
        return 0.0
    absolute = diff.abs()
    huber = torch.where(absolute < 1.0, 0.5 * diff * diff, absolute - 0.5)
    if observed is None:
        return float((huber.sum(dim=[1], keepdim=True) / float(target.shape[1])).sum())
    return float((huber.sum(dim=[1], keepdim=True) / counts).sum())


def _adam_update(param: Tensor, grad: Tensor, m: Tensor, v: Tensor, denom: Tensor, steps: Tensor, t: int,
                 lr: float, beta1: float, beta2: float, eps: float, fused: bool) -> None:
    """Adam's ``t``-th update of ``param`` in place (see :class:`_FlatAdam`); ``steps``: the fused
    kernel's step count, ``denom``: a buffer for ``sqrt(v)``."""
    if fused:
        steps.fill_(t)
        torch._fused_adam_([param], [grad], [m], [v], [], [steps], amsgrad=False, lr=lr, beta1=beta1, beta2=beta2,
                           weight_decay=0.0, eps=eps, maximize=False)
        return
    m.lerp_(grad, 1 - beta1)
    v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    # lr/bc1 · m / (sqrt(v)/sqrt(bc2) + eps) = (lr·sqrt(bc2)/bc1) · m / (sqrt(v) + eps·sqrt(bc2)): one op fewer
    root = math.sqrt(1 - beta2 ** t)
    torch.sqrt(v, out=denom).add_(eps * root)
    param.addcdiv_(m, denom, value=-lr * root / (1 - beta1 ** t))


def _train_steps(xs: Tensor, ys: Tensor, masks: Optional[Tensor], trunk: List[List[Tensor]],
                 branches: List[List[Tensor]], heads: List[List[Tensor]], activation: str, param: Tensor,
                 grad: Tensor, m: Tensor, v: Tensor, denom: Tensor, steps: Tensor, lr: float, beta1: float,
                 beta2: float, eps: float, fused: bool, t0: int) -> float:
    """``len(xs)`` training steps (minibatches ``xs[i]`` ``(M, B, in)``, targets ``ys[i]``, masks
    ``masks[i]`` or all observed), each a :func:`_gradient` and an :func:`_adam_update` (Adam's updates
    ``t0 + 1, ...``); returns the last step's loss."""
    loss = 0.0
    n = xs.shape[0]
    for i in range(n):
        mask: Optional[Tensor] = None
        if masks is not None:
            mask = masks[i]
        loss = _gradient(xs[i], ys[i], mask, trunk, branches, heads, activation, i == n - 1)
        _adam_update(param, grad, m, v, denom, steps, t0 + i + 1, lr, beta1, beta2, eps, fused)
    return loss


_COMPILED: list[Callable] = []


def _train_steps_compiled() -> Callable:
    """:func:`_train_steps` compiled by TorchScript once per process (~0.04 s), run by its plain interpreter
    (``optimized_execution(False)``: no profiling passes that could fuse operators, i.e. round
    differently); the Python function itself where this torch has no TorchScript."""
    if not _COMPILED:
        try:
            with warnings.catch_warnings():
                # torch.jit.script is deprecated in favour of torch.compile, which fuses operators into new
                # kernels (other float rounding); TorchScript runs the very ATen operators of the Python path.
                warnings.simplefilter("ignore", FutureWarning)
                scripted = torch.jit.script(_train_steps)

            def run(*args):
                with torch.jit.optimized_execution(False), torch.no_grad():
                    return scripted(*args)
            _COMPILED.append(run)
        except Exception:  # noqa: BLE001 - a torch without TorchScript: the same function, run by Python
            _COMPILED.append(torch.no_grad()(_train_steps))
    return _COMPILED[0]
