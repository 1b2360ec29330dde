"""Continuous relaxations of a supernet's ``OpChoice`` and ``InputChoice`` decisions.

:class:`SoftmaxRelaxation` (DARTS) gives every ``OpChoice`` label a vector of architecture
parameters α and mixes the candidates' outputs with ``softmax(α)``; every module sharing a label
shares its α. ``InputChoice`` decisions (cell topologies) become a sum of all inputs, with a
per-input mask that topology selection edits. :class:`DirichletRelaxation` (DrNAS) draws the
mixing weights from ``Dir(ELU(α) + 1)`` with the pathwise gradient.

A relaxation is installed with the public ``set_relaxation`` hook of the mutables; it lives outside
the supernet's module tree, so α never reaches the user's optimiser. Decisions of other mutables
(elastic widths, depths) keep their active value.

Selection edits the relaxation, never α:

* :meth:`~SoftmaxRelaxation.fix` discretises an edge to one operation (its weight becomes exactly 1);
* :meth:`~SoftmaxRelaxation.perturbed` masks one operation of an edge (weight 0, no renormalising)
  for DARTS-PT's perturbation measurement;
* :meth:`~SoftmaxRelaxation.prune` removes operations from the distribution (DrNAS progressive).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_nas.nn.choice import candidate_key
from lightning_nas.nn.input_choice import InputChoice
from lightning_nas.nn.op_choice import OpChoice
from lightning_nas.seeding import derive_generator, derive_seed
from lightning_nas.supernet import Supernet

__all__ = ["DirichletRelaxation", "SoftmaxRelaxation"]

# derive_seed streams of the relaxation.
_INIT, _DIRICHLET = 0, 1


class SoftmaxRelaxation(nn.Module):
    """DARTS's relaxation: ``m̄(x) = Σ_o softmax(α)_o · o(x)`` on every ``OpChoice`` label.

    Args:
        supernet: the supernet to relax (its ``OpChoice`` and ``InputChoice`` modules).
        init_std: α starts as ``init_std · N(0, 1)`` (DARTS: 1e-3).
        seed: seed of α's initialisation.

    Attributes:
        op_labels: the relaxed ``OpChoice`` labels, in the supernet's order.
        input_labels: the ``InputChoice`` labels (summed over all inputs while relaxed).
        alpha: ``ParameterList``, one ``(n_ops,)`` vector per op label (see :meth:`alpha_of`).
        arch_grad: when ``False`` the mixing weights are detached (the weight step).
    """

    def __init__(self, supernet: Supernet, *, init_std: float = 1e-3, seed: int = 0) -> None:
        super().__init__()
        if not isinstance(supernet, Supernet):
            raise ValueError(f"`supernet` must be a lightning_nas Supernet, got {type(supernet).__name__}")
        if isinstance(init_std, bool) or not isinstance(init_std, (int, float)) or not 0 <= init_std < math.inf:
            raise ValueError(f"`init_std` must be a finite float >= 0, got {init_std!r}")
        object.__setattr__(self, "supernet", supernet)
        ops: dict[str, list[Any]] = {}
        inputs: dict[str, int] = {}
        for m in supernet.mutables():
            if isinstance(m, OpChoice):
                ops.setdefault(m.label, list(m.keys))
            elif isinstance(m, InputChoice):
                inputs.setdefault(m.label, m.n_candidates)
        if not ops:
            raise ValueError("`supernet` has no OpChoice to relax")
        self.op_labels: list[str] = list(ops)
        self.input_labels: list[str] = list(inputs)
        self._ops = ops
        self._index = {label: k for k, label in enumerate(self.op_labels)}
        self._input_index = {label: k for k, label in enumerate(self.input_labels)}
        g = derive_generator(seed, _INIT)
        self.alpha = nn.ParameterList([nn.Parameter(init_std * torch.randn(len(ops[label]), generator=g)) for label in self.op_labels])
        for k, label in enumerate(self.op_labels):
            # available: in the distribution (DrNAS pruning); perturb: PT's temporary mask (no renormalising).
            self.register_buffer(f"available_{k}", torch.ones(len(ops[label]), dtype=torch.bool))
            self.register_buffer(f"perturb_{k}", torch.ones(len(ops[label])))
        for k, label in enumerate(self.input_labels):
            self.register_buffer(f"edges_{k}", torch.ones(inputs[label]))
        self.fixed: dict[str, Any] = {}
        self.fixed_inputs: dict[str, tuple[int, ...]] = {}
        self.arch_grad = True
        self.sampling = True  # DrNAS: draw θ in training mode (off: mix with the mean, e.g. while measuring)
        self._cache: dict[str, Tensor] | None = None
        self._handles: list[Any] = []

    # -- structure ---------------------------------------------------------------------------
    def ops(self, label: str) -> list[Any]:
        """Candidate values (operation names or indices) of an op label, in α's order."""
        return list(self._ops[self._check(label)])

    def alpha_of(self, label: str) -> nn.Parameter:
        """The ``(n_ops,)`` architecture parameters of an op label."""
        return self.alpha[self._index[self._check(label)]]

    def _position(self, label: str, op: Any) -> int:
        """Index of ``op`` among ``label``'s candidates, by candidate key: ``True`` is not the op ``1``."""
        key = candidate_key(op)
        for k, candidate in enumerate(self.ops(label)):
            if candidate_key(candidate) == key:
                return k
        raise ValueError(f"`op` {op!r} is not a candidate of {label!r}; candidates: {self.ops(label)}")

    def _check(self, label: str) -> str:
        if label not in self._index:
            raise ValueError(f"{label!r} is not a relaxed OpChoice label; labels: {self.op_labels}")
        return label

    def _available(self, label: str) -> Tensor:
        return getattr(self, f"available_{self._index[label]}")

    def _perturb(self, label: str) -> Tensor:
        return getattr(self, f"perturb_{self._index[label]}")

    def _edges(self, label: str) -> Tensor:
        if label not in self._input_index:
            raise ValueError(f"{label!r} is not an InputChoice label; labels: {self.input_labels}")
        return getattr(self, f"edges_{self._input_index[label]}")

    # -- install -----------------------------------------------------------------------------
    def install(self) -> "SoftmaxRelaxation":
        """Relax every ``OpChoice``/``InputChoice`` of the supernet (idempotent)."""
        for m in self.supernet.mutables():
            if isinstance(m, OpChoice):
                m.set_relaxation(self._mix)
            elif isinstance(m, InputChoice):
                m.set_relaxation(self._sum_inputs)
        if not self._handles:
            self._handles = [
                self.supernet.register_forward_pre_hook(lambda *_: self._begin_forward()),
                self.supernet.register_forward_hook(lambda *_: self._end_forward()),
            ]
        return self

    def remove(self) -> None:
        """Give the supernet back its discrete choices."""
        for m in self.supernet.mutables():
            if isinstance(m, (OpChoice, InputChoice)) and m.relaxation in (self._mix, self._sum_inputs):
                m.set_relaxation(None)
        for handle in self._handles:
            handle.remove()
        self._handles = []

    # -- weights -----------------------------------------------------------------------------
    def _begin_forward(self) -> None:
        self._cache = {}

    def _end_forward(self) -> None:
        self._cache = None

    def distribution_weights(self, label: str) -> Tensor:
        """``softmax(α)`` over the available operations (0 for pruned ones), ``(n_ops,)``."""
        available = self._available(label)
        alpha = self.alpha_of(label)
        logits = alpha.masked_fill(~available, float("-inf"))
        return torch.softmax(logits, 0)

    def expected_weights(self, label: str) -> Tensor:
        """The mean mixing weights (detached), one-hot for a fixed label: what selection and logging read."""
        if label in self.fixed:
            return F.one_hot(torch.tensor(self.ops(label).index(self.fixed[label])), len(self._ops[label])).float()
        with torch.no_grad():
            return self._mean_weights(label).detach().cpu()

    def _mean_weights(self, label: str) -> Tensor:
        return self.distribution_weights(label)

    def probabilities(self) -> dict[str, list[float]]:
        """``{label: expected weights}`` of every op label (JSON-ready)."""
        return {label: self.expected_weights(label).tolist() for label in self.op_labels}

    def mixing_weights(self, label: str) -> Tensor:
        """The weights the current forward pass mixes with (cached per forward; exactly 1 on a fixed op)."""
        cache = self._cache
        if cache is not None and label in cache:
            return cache[label]
        alpha = self.alpha_of(label)
        if label in self.fixed:
            weights = F.one_hot(torch.tensor(self.ops(label).index(self.fixed[label])), len(self._ops[label])).to(alpha)
        else:
            with torch.set_grad_enabled(torch.is_grad_enabled() and self.arch_grad):
                weights = self.distribution_weights(label) * self._perturb(label).to(alpha)
            if not self.arch_grad:
                weights = weights.detach()
        if cache is not None:
            cache[label] = weights
        return weights

    def _mix(self, op_choice: OpChoice, inputs: tuple) -> Tensor:
        weights = self.mixing_weights(op_choice.label)
        active = torch.nonzero(self._available(op_choice.label) & (self._perturb(op_choice.label) != 0)).flatten().tolist()
        if op_choice.label in self.fixed:
            active = [self.ops(op_choice.label).index(self.fixed[op_choice.label])]
        if not active:  # every op masked: the edge contributes nothing
            return op_choice.candidate_forward(op_choice.keys[0], *inputs) * 0.0
        # Ops with weight exactly 0 (masked, pruned) are not run.
        out = weights[active[0]] * op_choice.candidate_forward(op_choice.keys[active[0]], *inputs)
        for k in active[1:]:
            out = out + weights[k] * op_choice.candidate_forward(op_choice.keys[k], *inputs)
        return out

    def _sum_inputs(self, input_choice: InputChoice, inputs: list[Tensor]) -> Tensor:
        mask = self._edges(input_choice.label).tolist()
        used = [i for i, m in enumerate(mask) if m != 0]
        if not used:
            return inputs[0] * 0.0
        out = inputs[used[0]]
        for i in used[1:]:
            out = out + inputs[i]
        return out

    def regulariser(self) -> Tensor:
        """Extra architecture loss (none for DARTS): a 0-dim tensor."""
        return self.alpha[0].new_zeros(())

    def last_draw(self) -> int:
        """Index of the random mixing weights of the latest forward pass (softmax: deterministic, 0)."""
        return 0

    @contextlib.contextmanager
    def replaying(self, draw: int) -> Iterator[None]:
        """Inside, forward passes mix with the weights of draw ``draw`` again (softmax: nothing to replay).

        Second order differentiates one training loss at ``w`` and ``w ± εv``; with a sampled
        relaxation the three evaluations must share their mixing weights, or the finite difference
        measures the sampling noise divided by ``2ε``.
        """
        yield

    # -- selection edits ---------------------------------------------------------------------
    def fix(self, label: str, op: Any) -> None:
        """Discretise ``label`` to ``op``: its mixing weight becomes exactly 1, the others 0."""
        self.fixed[label] = self.ops(label)[self._position(label, op)]

    def fix_inputs(self, label: str, chosen: tuple[int, ...]) -> None:
        """Keep only the inputs ``chosen`` of an ``InputChoice`` label."""
        edges = self._edges(label)
        if not chosen or any(isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < edges.numel() for i in chosen):
            raise ValueError(f"`chosen` must be indices in [0, {edges.numel()}), got {chosen!r}")
        edges.zero_()
        edges[list(chosen)] = 1.0
        self.fixed_inputs[label] = tuple(sorted(chosen))

    @contextlib.contextmanager
    def perturbed(self, label: str, op: Any) -> Iterator[None]:
        """Inside, ``op``'s weight on ``label`` is 0 and the others keep theirs (no renormalising)."""
        mask = self._perturb(label)
        k = self._position(label, op)
        mask[k] = 0.0
        try:
            yield
        finally:
            mask[k] = 1.0

    @contextlib.contextmanager
    def inputs_removed(self, label: str, removed: int) -> Iterator[None]:
        """Inside, input ``removed`` of an ``InputChoice`` label is zeroed (the whole edge)."""
        edges = self._edges(label)
        saved = edges[removed].clone()
        edges[removed] = 0.0
        try:
            yield
        finally:
            edges[removed] = saved

    def prune(self, keep: int) -> None:
        """Keep the ``keep`` operations of largest expected weight on every unfixed label (DrNAS progressive)."""
        if not isinstance(keep, int) or isinstance(keep, bool) or keep < 1:
            raise ValueError(f"`keep` must be a positive int, got {keep!r}")
        for label in self.op_labels:
            if label in self.fixed:
                continue
            available = self._available(label)
            weights = self.expected_weights(label).to(available.device).masked_fill(~available, -1.0)
            top = torch.topk(weights, min(keep, int(available.sum()))).indices
            available.zero_()
            available[top] = True

    def available_ops(self, label: str) -> list[Any]:
        """Operations still in the distribution of ``label``."""
        return [op for op, a in zip(self.ops(label), self._available(label).tolist()) if a]

    # -- state -------------------------------------------------------------------------------
    def get_extra_state(self) -> dict[str, Any]:
        return {"fixed": dict(self.fixed), "fixed_inputs": {k: list(v) for k, v in self.fixed_inputs.items()}}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.fixed = dict(state.get("fixed", {}))
        self.fixed_inputs = {k: tuple(v) for k, v in state.get("fixed_inputs", {}).items()}


class DirichletRelaxation(SoftmaxRelaxation):
    """DrNAS's relaxation: mixing weights ``θ ~ Dir(β)``, ``β = ELU(α) + 1``, resampled every forward.

    In training mode each forward pass draws one θ per label (shared by every module with that
    label) with ``rsample`` so gradients reach α; the draw is a pure function of ``(seed, draw
    count)`` (counted in the state). In eval mode, or with ``sampling = False`` (how DARTS-PT
    measures), the weights are the mean ``β / Σβ``.

    Args:
        supernet: the supernet to relax.
        anchor: ``"l2"`` (``½ Σ ‖β − 1‖²``: its gradient ``(β − 1)·ELU'(α)`` is ``α`` for ``α ≥ 0``,
            the Adam weight decay on α that DrNAS's code uses) or ``"kl"`` (``Σ KL(Dir(β) ‖ Dir(1))``),
            the regulariser pulling β toward the uniform prior; ``None`` for none.
        anchor_weight: its weight λ (DrNAS: 1e-3).
        init_std: α starts as ``init_std · N(0, 1)``.
        seed: seed of α's initialisation and of the draws.
    """

    def __init__(
        self, supernet: Supernet, *, anchor: str | None = "l2", anchor_weight: float = 1e-3, init_std: float = 1e-3, seed: int = 0
    ) -> None:
        super().__init__(supernet, init_std=init_std, seed=seed)
        if anchor not in ("kl", "l2", None):
            raise ValueError(f"`anchor` must be 'kl', 'l2' or None, got {anchor!r}")
        if isinstance(anchor_weight, bool) or not isinstance(anchor_weight, (int, float)) or not 0 <= anchor_weight < math.inf:
            raise ValueError(f"`anchor_weight` must be a finite float >= 0, got {anchor_weight!r}")
        self.anchor = anchor
        self.anchor_weight = float(anchor_weight)
        self.seed = seed
        self.draws = 0  # training-mode forward passes that drew θ (the draw index of the next one is draws + 1)
        self._draw = 0  # the draw the current forward pass mixes with
        self._replay: int | None = None

    def concentration(self, label: str) -> Tensor:
        """``β = ELU(α) + 1`` of the available operations, ``(n_available,)``."""
        return F.elu(self.alpha_of(label)[self._available(label)]) + 1.0

    def _begin_forward(self) -> None:
        super()._begin_forward()
        if self.supernet.training and self.sampling:
            if self._replay is None:
                self.draws += 1
            self._draw = self.draws if self._replay is None else self._replay

    def last_draw(self) -> int:
        return self._draw

    @contextlib.contextmanager
    def replaying(self, draw: int) -> Iterator[None]:
        if not isinstance(draw, int) or not 0 <= draw <= self.draws:
            raise ValueError(f"`draw` must be an int in [0, {self.draws}] (a draw already made), got {draw!r}")
        previous, self._replay = self._replay, draw
        try:
            yield
        finally:
            self._replay = previous

    def distribution_weights(self, label: str) -> Tensor:
        available = self._available(label)
        beta = self.concentration(label)
        if self.supernet.training and self.sampling:
            theta = _seeded_dirichlet(beta, derive_seed(self.seed, _DIRICHLET, self._draw, self._index[label]))
        else:
            theta = beta / beta.sum()
        return beta.new_zeros(available.shape).masked_scatter(available, theta)

    def _mean_weights(self, label: str) -> Tensor:
        beta = self.concentration(label)
        return beta.new_zeros(self._available(label).shape).masked_scatter(self._available(label), beta / beta.sum())

    def regulariser(self) -> Tensor:
        total = self.alpha[0].new_zeros(())
        if self.anchor is None or self.anchor_weight == 0:
            return total
        for label in self.op_labels:
            if label in self.fixed:
                continue
            beta = self.concentration(label)
            if self.anchor == "kl":
                prior = torch.distributions.Dirichlet(torch.ones_like(beta))
                total = total + torch.distributions.kl_divergence(torch.distributions.Dirichlet(beta), prior)
            else:
                total = total + 0.5 * ((beta - 1.0) ** 2).sum()
        return self.anchor_weight * total

    def get_extra_state(self) -> dict[str, Any]:
        return {**super().get_extra_state(), "draws": self.draws}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        super().set_extra_state(state)
        self.draws = int(state.get("draws", 0))
        self._draw = self.draws


def _seeded_dirichlet(beta: Tensor, seed: int) -> Tensor:
    """One reparameterised draw ``θ ~ Dir(β)`` (``rsample``: gradients reach β), a pure function of ``seed``.

    Drawn on the CPU, so the draw is the same on any device. Only the CPU generator is reseeded
    (``torch.manual_seed`` would also reseed every CUDA generator, changing the user's dropout
    masks), and ``fork_rng`` gives it back its state afterwards.
    """
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        theta = torch.distributions.Dirichlet(beta.cpu()).rsample()
    return theta.to(beta)
