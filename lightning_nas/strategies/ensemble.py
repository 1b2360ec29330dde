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
  (the same draws as one call per step).
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
from collections.abc import Sequence

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
    operations (see the module docstring for why); ``fused_adam=True``: ATen's fused kernel instead
    (faster, rounds differently; see :class:`_FlatAdam`).

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
    loss = 0.0
    model.train()
    # Every step's minibatches drawn and gathered at once (the same draws as one call per step; three
    # gathers instead of three per step).
    idx = torch.randint(len(x), (steps, model.members, batch), generator=generator)
    xs, ys, masks = x[idx], scaled[idx], None if observed is None else observed[idx]
    for i in range(steps):
        loss = step.gradient(xs[i], ys[i], None if masks is None else masks[i], want_loss=i == steps - 1)
        adam.step(step.flat.grad)
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
        self.denom = None if self.fused else torch.empty_like(param)  # sqrt(v), written in place every step

    @torch.no_grad()
    def step(self, grad: Tensor) -> None:
        """One update of ``param`` from ``grad`` (same shape)."""
        self.t += 1
        beta1, beta2 = self.betas
        if self.fused:
            self.steps.fill_(self.t)
            torch._fused_adam_([self.param], [grad], [self.m], [self.v], [], [self.steps], amsgrad=False, lr=self.lr,
                               beta1=beta1, beta2=beta2, weight_decay=0.0, eps=self.eps, maximize=False)
            return
        self.m.lerp_(grad, 1 - beta1)
        self.v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        # lr/bc1 · m / (sqrt(v)/sqrt(bc2) + eps) = (lr·sqrt(bc2)/bc1) · m / (sqrt(v) + eps·sqrt(bc2)): one op fewer
        root = math.sqrt(1 - beta2 ** self.t)
        denom = torch.sqrt(self.v, out=self.denom).add_(self.eps * root)
        self.param.addcdiv_(self.m, denom, value=-self.lr * root / (1 - beta1 ** self.t))


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
        self.act, _, self.act_backward = ACTIVATIONS[model.activation]
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
        per_block = [tuple(views[4 * i:4 * i + 4]) + tuple(grads[4 * i:4 * i + 4]) for i in range(len(blocks))]
        self.trunk, self.branches = per_block[:len(model.trunk)], per_block[len(model.trunk):]
        first = 4 * len(blocks)
        self.heads = [(views[first + 2 * i], views[first + 2 * i + 1], grads[first + 2 * i], grads[first + 2 * i + 1])
                      for i in range(len(self.active))]

    def _forward(self, h: Tensor, params: tuple[Tensor, ...]) -> tuple[Tensor, tuple[Tensor, ...]]:
        w, b, gain, shift = params[:4]
        z = torch.baddbmm(b, h, w)
        n, mean, rstd = torch.native_layer_norm(z, [z.shape[-1]], None, None, _LN_EPS)
        a = torch.addcmul(shift, n, gain)
        return self.act(a), (h, z, n, mean, rstd, a)

    def _backward(self, dy: Tensor, params: tuple[Tensor, ...], saved: tuple[Tensor, ...], need_input: bool) -> Tensor | None:
        w, _, gain, _, gw, gb, ggain, gshift = params
        h, z, n, mean, rstd, a = saved
        da = self.act_backward(dy, a)
        torch.sum(da * n, dim=1, keepdim=True, out=ggain)
        torch.sum(da, dim=1, keepdim=True, out=gshift)
        dz = torch.ops.aten.native_layer_norm_backward(da * gain, z, [z.shape[-1]], mean, rstd, None, None,
                                                       [True, False, False])[0]
        torch.bmm(h.transpose(1, 2), dz, out=gw)
        torch.sum(dz, dim=1, keepdim=True, out=gb)
        return torch.bmm(dz, w.transpose(1, 2)) if need_input else None

    @torch.no_grad()
    def gradient(self, x: Tensor, target: Tensor, observed: Tensor | None = None, want_loss: bool = False) -> float:
        """Write the gradient of the loss on minibatch ``x`` ``(M, B, in)`` into ``flat.grad``; returns the
        loss when ``want_loss`` (else 0).

        Args:
            x: ``(M, B, in)`` encodings, one minibatch per member.
            target: ``(M, B, len(active))`` standardised targets, finite (0 where missing).
            observed: ``(M, B, len(active))`` float, 1 where the target is observed; ``None``: all are.
        """
        h, saved = x, []
        for params in self.trunk:
            h, s = self._forward(h, params)
            saved.append(s)
        preds, branch_saved = [], []
        for params, (hw, hb, _, _) in zip(self.branches, self.heads):
            y, s = self._forward(h, params)
            branch_saved.append((s, y))
            preds.append(torch.baddbmm(hb, y, hw))
        pred = torch.cat(preds, dim=-1) if len(preds) > 1 else preds[0]  # (M, B, T)
        if observed is None:  # every target observed: no masking, every (member, target) mean is over B rows
            diff = pred - target
            counts = float(target.shape[1])
        else:
            diff = (pred - target).mul_(observed)
            counts = observed.sum(dim=1, keepdim=True).clamp_min_(1)  # (M, 1, T)
        dpred = diff.clamp(-1.0, 1.0).div_(counts)  # d Huber(δ=1) / d pred, per member and target mean
        dh = None
        for t, (params, head, (s, y)) in enumerate(zip(self.branches, self.heads, branch_saved)):
            hw, _, ghw, ghb = head
            d = dpred[..., t:t + 1]
            torch.bmm(y.transpose(1, 2), d, out=ghw)
            torch.sum(d, dim=1, keepdim=True, out=ghb)
            # d (M, B, 1) times the head's weights (M, 1, branch): an outer product, a broadcast multiply
            # (a batched product with one inner dimension costs several times more here)
            dy = self._backward(d * hw.transpose(1, 2), params, s, need_input=True)
            dh = dy if dh is None else dh.add_(dy)
        for i in range(len(self.trunk) - 1, -1, -1):
            dh = self._backward(dh, self.trunk[i], saved[i], need_input=i > 0)
        if not want_loss:
            return 0.0
        absolute = diff.abs()
        huber = torch.where(absolute < 1.0, 0.5 * diff * diff, absolute - 0.5)
        return float((huber.sum(dim=1, keepdim=True) / counts).sum())

    @torch.no_grad()
    def write_back(self) -> None:
        """Copy the trained weights from ``flat`` into the model's parameters."""
        for p, v in zip(self.params, self.views):
            p.copy_(v)
