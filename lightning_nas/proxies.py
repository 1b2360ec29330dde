"""Zero-cost proxies: scores of an untrained network that rank architectures without training them.

Each proxy scores a real network (any ``nn.Module``: a subnet exported from a supernet, a space's
network builder's output, any model) on a few examples of the user's data, larger is better:

- :func:`synflow` (Tanaka et al. 2020; Abdelfattah et al. 2021): the network *linearised* (every
  parameter replaced by its absolute value, normalisation layers removed, double precision) is fed
  one all-ones input; with ``R = Σ output``, the score is ``Σ_θ |θ · ∂R/∂θ|`` over the weights.
  It needs no data, only the input's shape. :func:`log_synflow` is ``log(1 + synflow)``: the same
  order on a scale a surrogate can fit (synflow spans dozens of orders of magnitude).
- :func:`naswot` (Mellor et al. 2021, "Neural Architecture Search without Training"): each
  rectifier's output on each example is a binary code ``c`` (unit active or not); the kernel
  ``K_ij = N_A − Hamming(c_i, c_j)`` (``N_A``: number of rectified units, summed over layers) of the
  ``N`` examples is ``N × N`` and the score is ``log |det K|``.
- :func:`grad_norm` (Abdelfattah et al. 2021): ``Σ_layers ‖∂L/∂W_layer‖₂`` of the loss ``L``
  (cross-entropy by default) on one batch at the given weights.
- :func:`jacob_cov` (Mellor et al. 2020, v1 of NASWOT): ``J`` holds each example's input gradient of
  the summed outputs ``(N, D)``; with ``λ`` the eigenvalues of its ``N × N`` correlation matrix,
  the score is ``−Σ (log(λ + k) + 1 / (λ + k))``, ``k = 1e-5``.

Conventions shared by every proxy:

- **The user's module is never changed**: a proxy runs it through :func:`torch.func.functional_call`
  on stand-ins of its parameters (detached views, or synflow's absolute values in float64) and
  copies of its buffers, so its weights, gradients and BatchNorm statistics are untouched; the
  train/eval modes it switches and the hooks it adds are restored and removed before it returns
  (also on error). Nothing is deep-copied, so scoring costs only the forward/backward passes.
- **Data**: ``data`` is one batch (a tensor of inputs, or a tuple ``(inputs, targets)``) or an
  iterable of such batches (a ``DataLoader``, a list). The examples of the first ``num_batches``
  batches form *one* set of ``N`` examples, which every proxy sees as a single batch; so a score
  depends on which examples were given, not on their order or on how they were split into
  batches (up to floating-point rounding).
- **Mode**: the data-driven proxies run the network in training mode (BatchNorm uses the examples'
  own statistics, as in the published implementations) with dropout switched off, so a score is a
  function of the network and the examples. Any other randomness (stochastic layers) is drawn from
  ``seed`` without touching torch's global random state.
- **Which weights**: "weights" are the parameters with at least 2 dimensions (convolution
  kernels, linear and attention projection matrices, embeddings); biases and normalisation scales
  are left out, as in the published implementations (which sum over Conv and Linear weights).

For search, :class:`ProxyCostModel` scores an arch (``arch -> {"synflow": ..., ...}``, cached), which
a strategy takes as its ``cost_model`` (e.g. BO's ``pretrain_metrics=["log_synflow", "naswot"]``),
and :class:`ProxyEvaluator` is the same with the evaluator interface, for zero-shot search.
"""

from __future__ import annotations

import hashlib
import json
import math
import numbers
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_nas.nn.grouped_norm import GroupedBatchNorm2d
from lightning_nas.seeding import derive_seed

__all__ = [
    "PROXIES",
    "RECTIFIERS",
    "ProxyCostModel",
    "ProxyEvaluator",
    "compute_proxies",
    "grad_norm",
    "jacob_cov",
    "log_synflow",
    "naswot",
    "param_count",
    "proxy_examples",
    "synflow",
    "synthetic_batch",
]

#: Activation modules whose output sign NASWOT reads as the unit's binary code (each is positive
#: exactly where its input is: for ReLU and its piecewise-linear relatives the code is the linear
#: region the example falls in).
RECTIFIERS: tuple[type[nn.Module], ...] = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.RReLU, nn.ELU, nn.CELU,
                                          nn.SELU, nn.GELU, nn.SiLU, nn.Mish, nn.Hardswish)
#: Normalisation layers :func:`synflow` removes (they would normalise the all-ones signal away);
#: their parameters are not weights to the proxies.
_NORMS: tuple[type[nn.Module], ...] = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm,
                                       nn.LocalResponseNorm, GroupedBatchNorm2d)
_DROPOUTS: tuple[type[nn.Module], ...] = (nn.modules.dropout._DropoutNd, nn.AlphaDropout, nn.FeatureAlphaDropout)
#: ``k`` of jacob_cov (Mellor et al.'s value).
JACOB_COV_K = 1e-5

Batch = tuple[Tensor, "Tensor | None"]


# -- data ----------------------------------------------------------------------------------------
def _as_batch(batch: Any, where: str) -> Batch:
    if isinstance(batch, Tensor):
        return batch, None
    if isinstance(batch, (tuple, list)) and len(batch) >= 1 and all(isinstance(b, Tensor) for b in batch[:2]):
        x = batch[0]
        y = batch[1] if len(batch) >= 2 else None
        if y is not None and (y.dim() == 0 or y.shape[0] != x.shape[0]):
            raise ValueError(f"{where}: targets of shape {tuple(y.shape)} do not match inputs of shape {tuple(x.shape)} "
                             "(one target per example expected)")
        return x, y
    raise ValueError(f"{where} must be a tensor of inputs or a tuple (inputs, targets) of tensors, got "
                     f"{type(batch).__name__}")


def proxy_examples(data: Any, num_batches: int = 1) -> tuple[Tensor, Tensor | None]:
    """The set of examples the proxies score a network on.

    Args:
        data: one batch (a tensor of inputs ``(N, ...)`` or a tuple ``(inputs, targets)`` of tensors
            with ``N`` rows each) or an iterable of such batches (a ``DataLoader``, a list of batches).
        num_batches: how many batches of an iterable to take (the first ones).

    Returns:
        ``(inputs (N, ...), targets (N, ...) or None)``: the batches concatenated.

    Raises:
        ValueError: ``num_batches`` is not an int >= 1, ``data`` holds no example, a batch is neither
            a tensor nor a tuple of tensors, batches disagree on the example shape, or some batches
            have targets and others not.
    """
    if isinstance(num_batches, bool) or not isinstance(num_batches, int) or num_batches < 1:
        raise ValueError(f"`num_batches` must be an int >= 1, got {num_batches!r}")
    if isinstance(data, Tensor) or (isinstance(data, tuple) and data and all(isinstance(d, Tensor) for d in data)):
        batches = [_as_batch(data, "`data`")]
    elif isinstance(data, Iterable) and not isinstance(data, (str, bytes, Mapping)):
        batches = []
        for i, batch in enumerate(data):
            if i >= num_batches:
                break
            batches.append(_as_batch(batch, f"batch {i} of `data`"))
    else:
        raise ValueError("`data` must be a tensor of inputs, a tuple (inputs, targets) of tensors, or an iterable of "
                         f"such batches (e.g. a DataLoader), got {type(data).__name__}")
    batches = [(x, y) for x, y in batches if x.shape[0] > 0] if batches else batches
    if not batches:
        raise ValueError("`data` holds no example: give at least one non-empty batch")
    shapes = {tuple(x.shape[1:]) for x, _ in batches}
    if len(shapes) > 1:
        raise ValueError(f"the batches of `data` have different example shapes {sorted(shapes)}; give examples of one shape")
    if len({y is None for _, y in batches}) > 1:
        raise ValueError("some batches of `data` have targets and others not; give (inputs, targets) for every batch")
    x = torch.cat([b[0] for b in batches]) if len(batches) > 1 else batches[0][0]
    y = None if batches[0][1] is None else (torch.cat([b[1] for b in batches]) if len(batches) > 1 else batches[0][1])
    return x, y


def synthetic_batch(shape: Sequence[int], num_classes: int, n: int = 64, *, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Standard-normal inputs ``(n, *shape)`` and uniform labels ``(n,)`` in ``[0, num_classes)``,
    drawn from ``seed`` (for scoring when no real data is at hand; the global RNG is not touched)."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"`n` must be an int >= 1, got {n!r}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"`num_classes` must be an int >= 1, got {num_classes!r}")
    shape = tuple(shape)
    if not shape or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in shape):
        raise ValueError(f"`shape` must be the example shape, positive ints (e.g. (3, 32, 32)), got {shape!r}")
    generator = torch.Generator().manual_seed(derive_seed(seed, 0))
    x = torch.randn((n, *shape), generator=generator)
    y = torch.randint(num_classes, (n,), generator=generator)
    return x, y


# -- helpers -------------------------------------------------------------------------------------
def _check_model(model: Any) -> None:
    if not isinstance(model, nn.Module):
        raise ValueError(f"`model` must be an nn.Module (a network to score), got {type(model).__name__}")


def _check_seed(seed: Any) -> None:
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"`seed` must be a non-negative int, got {seed!r}")


def _device(model: nn.Module) -> torch.device:
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device("cpu")


def _output(out: Any, proxy: str) -> Tensor:
    if not isinstance(out, Tensor):
        raise ValueError(f"{proxy} needs a model whose forward returns one tensor, got {type(out).__name__}; wrap the "
                         "model so that it returns its main output")
    return out


def _float_inputs(x: Tensor, proxy: str) -> Tensor:
    if not x.is_floating_point():
        raise ValueError(f"{proxy} differentiates with respect to the inputs, which must be floating point; got "
                         f"dtype {x.dtype}")
    return x


class _Scoring:
    """Runs ``model`` on stand-in weights without changing it: a context manager, callable inside.

    The forward pass is :func:`torch.func.functional_call` with parameters that are detached views
    (or, with ``linearise``, absolute values) of the model's and buffers that are copies, so neither
    gradients nor BatchNorm's running statistics reach the model. Inside, the model is in training
    mode (``train``) or eval mode with dropout always off; normalisation layers pass their input
    through when ``skip_norms``; torch's RNG is seeded from ``(seed, key)``. On exit every module's
    mode is restored, the hooks removed and torch's global RNG state restored.

    Attributes:
        params: ``{name: tensor}`` the forward pass uses (leaves with gradients when ``grads``).
    """

    def __init__(self, model: nn.Module, *, seed: int, key: int, train: bool = True, grads: bool = False,
                 dtype: torch.dtype | None = None, linearise: bool = False, skip_norms: bool = False) -> None:
        self.model, self.seed, self.key, self.train = model, seed, key, train
        self.grads, self.dtype, self.linearise, self.skip_norms = grads, dtype, linearise, skip_norms
        self.device = _device(model)

    def __enter__(self) -> "_Scoring":
        self.modes = [(m, m.training) for m in self.model.modules()]
        self.handles: list[Any] = []
        self.fork = torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else [])
        self.fork.__enter__()
        try:
            torch.manual_seed(derive_seed(self.seed, self.key))
            self.model.train(self.train)
            for m in self.model.modules():
                if isinstance(m, _DROPOUTS):
                    m.eval()
                if self.skip_norms and isinstance(m, _NORMS):
                    self.handles.append(m.register_forward_hook(lambda module, inputs, output: inputs[0]))
            self.params = {}
            for name, p in self.model.named_parameters():
                value = p.detach().abs() if self.linearise else p.detach()
                value = value.to(self.dtype) if self.dtype is not None and value.is_floating_point() else value
                self.params[name] = value.requires_grad_(True) if self.grads else value
            self.buffers = {}
            for name, b in self.model.named_buffers():
                value = b.detach().clone()
                self.buffers[name] = value.to(self.dtype) if self.dtype is not None and value.is_floating_point() else value
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def hook(self, module: nn.Module, hook: Callable[..., Any]) -> None:
        """Register a forward hook on one of the model's modules, removed on exit."""
        self.handles.append(module.register_forward_hook(hook))

    def __call__(self, x: Tensor) -> Any:
        return torch.func.functional_call(self.model, (self.params, self.buffers), (x,))

    def inputs(self, x: Tensor) -> Tensor:
        """``x`` on the model's device; floating-point inputs in the dtype of its floating parameters."""
        dtype = next((p.dtype for p in self.params.values() if p.is_floating_point()), None)
        return x.to(self.device, dtype=dtype) if x.is_floating_point() and dtype is not None else x.to(self.device)

    def weights(self) -> list[Tensor]:
        """The stand-ins of the weights: parameters with >= 2 dims (each shared tensor once), not
        those of normalisation layers (a :class:`~lightning_nas.nn.GroupedBatchNorm2d`'s are 2-d)."""
        norms = {f"{name}.{p}" if name else p for name, m in self.model.named_modules() if isinstance(m, _NORMS)
                 for p, _ in m.named_parameters(recurse=False)}
        return [p for name, p in self.params.items() if p.dim() >= 2 and name not in norms]

    def __exit__(self, *exc: Any) -> None:
        for handle in self.handles:
            handle.remove()
        for module, training in self.modes:
            module.training = training
        self.fork.__exit__(None, None, None)


# -- the proxies ---------------------------------------------------------------------------------
def synflow(model: nn.Module, data: Any, *, seed: int = 0) -> float:
    """SynFlow: ``Σ_W |W · ∂R/∂W|`` over the weights of the linearised network (see the module docstring).

    The network is run with every parameter replaced by its absolute value, its normalisation layers
    (BatchNorm, InstanceNorm, LayerNorm, GroupNorm) passing their input through (Abdelfattah et al.'s
    ``bn=False``), dropout off and double precision, on one all-ones example of the data's example
    shape; ``R`` is the sum of its outputs and the sum runs over the weights (parameters with >= 2
    dims). Rectifiers pass the all-positive signal unchanged, so for a ReLU network ``R`` is the sum
    over input-output paths of the products of the absolute weights (and biases) along them.

    Args:
        model: the network, ``(N, *shape) -> tensor``; not changed.
        data: any data :func:`proxy_examples` accepts; only the example shape (and, for integer
            inputs such as token ids, the dtype: the input is then all ones of that dtype) is used.
        seed: seeds any randomness in the forward pass.

    Returns:
        The score (>= 0, dimensionless; 0 when no path connects the input to the output).
    """
    _check_model(model)
    _check_seed(seed)
    x, _ = proxy_examples(data)
    return _synflow(model, x, seed)


def _synflow(model: nn.Module, x: Tensor, seed: int) -> float:
    with _Scoring(model, seed=seed, key=1, train=False, grads=True, dtype=torch.float64, linearise=True,
                  skip_norms=True) as run:
        ones = torch.ones((1, *x.shape[1:]), dtype=torch.float64 if x.is_floating_point() else x.dtype,
                          device=run.device)
        out = _output(run(ones), "synflow")
        if not out.requires_grad:
            return 0.0  # the output does not depend on any parameter
        out.sum().backward()
        with torch.no_grad():
            return float(sum(float((w * w.grad).abs().sum()) for w in run.weights() if w.grad is not None))


def log_synflow(model: nn.Module, data: Any, *, seed: int = 0) -> float:
    """``log(1 + synflow)`` (see :func:`synflow`): the same order, on a log scale (0 for no path)."""
    return float(math.log1p(synflow(model, data, seed=seed)))


def _check_activations(activations: Any) -> tuple[type[nn.Module], ...]:
    activations = tuple(activations)
    if not activations or not all(isinstance(a, type) and issubclass(a, nn.Module) for a in activations):
        raise ValueError(f"`activations` must be nn.Module subclasses (e.g. (nn.ReLU,)), got {activations!r}")
    return activations


def _at_least_two(x: Tensor, proxy: str) -> int:
    n = x.shape[0]
    if n < 2:
        raise ValueError(f"{proxy} compares examples with each other: `data` must hold at least 2 examples, got {n}")
    return n


def naswot(model: nn.Module, data: Any, *, seed: int = 0, num_batches: int = 1,
           activations: Sequence[type[nn.Module]] = RECTIFIERS) -> float:
    """NASWOT: ``log |det K|`` of the activation-pattern kernel of the ``N`` examples.

    Every module of a type in ``activations`` is observed; its output ``(N, ...)`` gives each example
    the binary code ``c = 1[output > 0]`` (flattened), and over all observed calls
    ``K = Σ c cᵀ + (1 − c)(1 − c)ᵀ``, i.e. ``K_ij = N_A − Hamming(c_i, c_j)`` (``N_A``: the number of
    observed units). ``K`` is ``N × N``, symmetric positive semi-definite; its log-determinant is the
    sum of the logs of its eigenvalues (float64). Activations called functionally (``F.relu``)
    cannot be observed: use modules.

    Args:
        model: the network; not changed.
        data: examples (see :func:`proxy_examples`); at least 2.
        seed: seeds any randomness in the forward pass.
        num_batches: batches of an iterable ``data`` to take.
        activations: the module types whose output sign is the unit's code (default :data:`RECTIFIERS`).

    Returns:
        ``log det K`` (natural log); ``-inf`` when ``K`` is singular (numerically: its smallest
        eigenvalue is at most ``N · eps · ‖K‖``), e.g. two examples with the same code, or an
        output that no longer depends on the input.

    Raises:
        ValueError: fewer than 2 examples, no activation module of the given types in ``model``, an
            activation output whose first dimension is not ``N``.
    """
    _check_model(model)
    _check_seed(seed)
    activations = _check_activations(activations)
    x, _ = proxy_examples(data, num_batches)
    return _naswot(model, x, seed, activations)


def _naswot(model: nn.Module, x: Tensor, seed: int, activations: tuple[type[nn.Module], ...] = RECTIFIERS) -> float:
    n = _at_least_two(x, "naswot")
    observed = [m for m in model.modules() if isinstance(m, activations)]
    if not observed:
        raise ValueError(f"naswot reads the binary codes of rectifier modules, and `model` has none of "
                         f"{[a.__name__ for a in activations]} (functional calls like F.relu cannot be observed); "
                         "use activation modules or pass `activations`")
    problems: list[str] = []
    with _Scoring(model, seed=seed, key=2) as run:
        kernel = torch.zeros((n, n), dtype=torch.float64, device=run.device)

        def hook(module: nn.Module, inputs: Any, output: Any) -> None:
            if not isinstance(output, Tensor) or output.dim() == 0 or output.shape[0] != n:
                problems.append(f"{type(module).__name__} output of shape "
                                f"{tuple(output.shape) if isinstance(output, Tensor) else type(output).__name__}")
                return
            code = (output.detach().reshape(n, -1) > 0).double()
            kernel.add_(code @ code.T).add_((1.0 - code) @ (1.0 - code).T)

        for m in observed:
            run.hook(m, hook)
        with torch.no_grad():
            run(run.inputs(x))
    if problems:
        raise ValueError(f"naswot reads activations as (N, ...) with N = {n} examples first; got {problems[0]}")
    eigenvalues = torch.linalg.eigvalsh(kernel).cpu().numpy()
    tolerance = max(float(eigenvalues.max()), 0.0) * n * np.finfo(np.float64).eps
    if eigenvalues.min() <= tolerance:
        return -math.inf
    return float(np.log(eigenvalues).sum())


def _check_loss_fn(loss_fn: Any) -> None:
    if loss_fn is not None and not callable(loss_fn):
        raise ValueError(f"`loss_fn` must be None or a callable (output, targets) -> loss, got {loss_fn!r}")


def _need_targets(y: Tensor | None) -> Tensor:
    if y is None:
        raise ValueError("grad_norm differentiates a loss, so `data` must give targets: (inputs, targets) batches")
    return y


def grad_norm(model: nn.Module, data: Any, *, seed: int = 0, num_batches: int = 1,
              loss_fn: Callable[[Tensor, Tensor], Tensor] | None = None) -> float:
    """Gradient norm: ``Σ_W ‖∂L/∂W‖₂`` over the weights ``W`` (parameters with >= 2 dims).

    ``L = loss_fn(model(inputs), targets)`` on the ``N`` examples as one batch (default: mean
    cross-entropy of logits ``(N, C)`` against class indices ``(N,)``).

    Args:
        model: the network; not changed.
        data: examples with targets, ``(inputs, targets)`` batches (see :func:`proxy_examples`).
        seed: seeds any randomness in the forward pass.
        num_batches: batches of an iterable ``data`` to take.
        loss_fn: ``(output, targets) -> scalar loss``; ``None``: ``F.cross_entropy``.

    Returns:
        The sum of per-weight gradient norms (>= 0, in units of the loss per unit weight).

    Raises:
        ValueError: ``data`` has no targets, the loss is not a scalar, or the default loss cannot be
            computed on the model's output (the message gives the shapes).
    """
    _check_model(model)
    _check_seed(seed)
    _check_loss_fn(loss_fn)
    x, y = proxy_examples(data, num_batches)
    return _grad_norm(model, x, _need_targets(y), seed, loss_fn)


def _grad_norm(model: nn.Module, x: Tensor, y: Tensor, seed: int,
               loss_fn: Callable[[Tensor, Tensor], Tensor] | None = None) -> float:
    with _Scoring(model, seed=seed, key=3, grads=True) as run:
        out = _output(run(run.inputs(x)), "grad_norm")
        if loss_fn is None:
            if out.dim() != 2 or y.dim() != 1 or y.is_floating_point():
                raise ValueError(f"grad_norm's default loss is cross-entropy of logits (N, C) against class indices "
                                 f"(N,); got output {tuple(out.shape)} and targets {tuple(y.shape)} of dtype {y.dtype}: "
                                 "pass `loss_fn`")
            if int(y.min()) < 0 or int(y.max()) >= out.shape[1]:
                raise ValueError(f"grad_norm: class indices must lie in [0, {out.shape[1]}) for a model with "
                                 f"{out.shape[1]} outputs; got {int(y.min())}..{int(y.max())}")
            loss = F.cross_entropy(out, y.to(run.device))
        else:
            loss = loss_fn(out, y.to(run.device))
        if not isinstance(loss, Tensor) or loss.numel() != 1:
            raise ValueError(f"`loss_fn` must return a scalar tensor, got {loss!r:.100}")
        if not loss.requires_grad:
            return 0.0
        loss.reshape(()).backward()
        with torch.no_grad():
            return float(sum(float(w.grad.double().norm()) for w in run.weights() if w.grad is not None))


def _check_k(k: Any) -> None:
    if isinstance(k, bool) or not isinstance(k, numbers.Real) or not 0 < k < math.inf:
        raise ValueError(f"`k` must be a positive finite number, got {k!r}")


def jacob_cov(model: nn.Module, data: Any, *, seed: int = 0, num_batches: int = 1, k: float = JACOB_COV_K) -> float:
    """Jacobian covariance: ``−Σ_i (log(λ_i + k) + 1/(λ_i + k))`` over the eigenvalues ``λ`` of the
    correlation matrix ``(N, N)`` of the examples' input Jacobians.

    Row ``i`` of ``J (N, D)`` is ``∂(Σ output)/∂x_i`` flattened (``D`` = input size), computed in one
    backward pass over the ``N`` examples as one batch (Mellor et al.'s implementation); the
    correlation is ``np.corrcoef(J)``'s. Eigenvalues are computed in float64 and clipped at 0.

    Args:
        model: the network; not changed.
        data: floating-point examples (see :func:`proxy_examples`); at least 2.
        seed: seeds any randomness in the forward pass.
        num_batches: batches of an iterable ``data`` to take.
        k: the regulariser (Mellor et al.: ``1e-5``).

    Returns:
        The score, at most ``−N (log(1 + k) + 1/(1 + k)) ≈ −N`` (uncorrelated Jacobians); ``-inf``
        when some example's Jacobian is constant across the input's entries (e.g. zero: the output
        does not depend on the input), so that its correlation is undefined.

    Raises:
        ValueError: fewer than 2 examples, integer inputs, or ``k`` not a positive finite number.
    """
    _check_model(model)
    _check_seed(seed)
    _check_k(k)
    x, _ = proxy_examples(data, num_batches)
    return _jacob_cov(model, x, seed, k)


def _jacob_cov(model: nn.Module, x: Tensor, seed: int, k: float = JACOB_COV_K) -> float:
    x = _float_inputs(x, "jacob_cov")
    n = _at_least_two(x, "jacob_cov")
    with _Scoring(model, seed=seed, key=4) as run:
        x = run.inputs(x.detach()).clone().requires_grad_(True)
        out = _output(run(x), "jacob_cov")
        if not out.requires_grad:
            return -math.inf
        (grad,) = torch.autograd.grad(out, x, torch.ones_like(out), allow_unused=True)
    if grad is None:
        return -math.inf
    jacobian = grad.detach().reshape(n, -1).double().cpu().numpy()
    centred = jacobian - jacobian.mean(axis=1, keepdims=True)
    norms = np.sqrt((centred**2).sum(axis=1))
    if not np.all(norms > 0) or not np.all(np.isfinite(norms)):
        return -math.inf
    unit = centred / norms[:, None]
    eigenvalues = np.clip(np.linalg.eigvalsh(unit @ unit.T), 0.0, None)  # of the correlation matrix
    return float(-np.sum(np.log(eigenvalues + k) + 1.0 / (eigenvalues + k)))


def param_count(model: nn.Module, data: Any = None, *, seed: int = 0) -> float:
    """Number of parameters of ``model`` (a baseline "proxy"; ``data`` and ``seed`` are unused)."""
    _check_model(model)
    return float(sum(p.numel() for p in model.parameters()))


#: The proxies by name: ``fn(model, data, *, seed, ...) -> float``, larger is better.
PROXIES: dict[str, Callable[..., float]] = {
    "synflow": synflow,
    "log_synflow": log_synflow,
    "naswot": naswot,
    "grad_norm": grad_norm,
    "jacob_cov": jacob_cov,
    "params": param_count,
}


def _check_names(proxies: Any) -> tuple[str, ...]:
    if isinstance(proxies, str):
        proxies = (proxies,)
    names = tuple(proxies)
    unknown = [p for p in names if p not in PROXIES]
    if not names or unknown:
        raise ValueError(f"`proxies` must be a non-empty list of proxy names from {list(PROXIES)}, got {list(names)!r}")
    return tuple(dict.fromkeys(names))


def _compute(model: nn.Module, x: Tensor, y: Tensor | None, names: Sequence[str], seed: int,
             loss_fn: Callable[[Tensor, Tensor], Tensor] | None) -> dict[str, float]:
    scores: dict[str, float] = {}
    for name in names:
        if name == "params":
            scores[name] = param_count(model)
        elif name == "naswot":
            scores[name] = _naswot(model, x, seed)
        elif name == "grad_norm":
            scores[name] = _grad_norm(model, x, _need_targets(y), seed, loss_fn)
        elif name == "jacob_cov":
            scores[name] = _jacob_cov(model, x, seed)
        elif "synflow" not in scores:
            scores["synflow"] = _synflow(model, x, seed)
    if "log_synflow" in names:
        scores["log_synflow"] = float(math.log1p(scores["synflow"]))
    return {name: scores[name] for name in names}


def compute_proxies(model: nn.Module, data: Any, proxies: Sequence[str] = ("synflow", "naswot", "grad_norm", "jacob_cov"),
                    *, seed: int = 0, num_batches: int = 1,
                    loss_fn: Callable[[Tensor, Tensor], Tensor] | None = None) -> dict[str, float]:
    """Several proxies of one network: ``{name: score}`` in the order of ``proxies`` (each equal to its
    function's value with the same ``seed``).

    Args:
        model: the network; not changed.
        data: examples (see :func:`proxy_examples`); one set shared by every proxy.
        proxies: names from :data:`PROXIES`.
        seed: seeds any randomness (each proxy its own stream).
        num_batches: batches of an iterable ``data`` to take.
        loss_fn: :func:`grad_norm`'s loss.

    Raises:
        ValueError: an unknown proxy name, or any proxy's own errors.
    """
    _check_model(model)
    _check_seed(seed)
    _check_loss_fn(loss_fn)
    names = _check_names(proxies)
    x, y = proxy_examples(data, num_batches)
    return _compute(model, x, y, names, seed, loss_fn)


# -- search --------------------------------------------------------------------------------------
def _arch_seed(seed: int, arch: Mapping[str, Any]) -> int:
    text = json.dumps({str(k): arch[k] for k in sorted(arch, key=str)}, sort_keys=True, default=repr)
    return derive_seed(seed, int(hashlib.sha1(text.encode()).hexdigest()[:15], 16))


class ProxyCostModel:
    """Zero-cost proxies of an arch's network: ``cost_model(arch) -> {"synflow": ..., ...}``, cached.

    A strategy's ``cost_model`` (metrics known before evaluation): BO pretrains on them with
    ``BayesianOptimization(space, cost_model=ProxyCostModel(...), pretrain_metrics=["log_synflow",
    "naswot"])``, and constraints may bound them. Each arch is scored once; later calls return the
    cached scores.

    Args:
        network: how an arch becomes a network: a :class:`~lightning_nas.supernet.Supernet` (each
            arch's subnet is exported from it, with the supernet's current weights), or a callable
            ``arch -> nn.Module`` (e.g. ``lambda a: nb201_supernet(channels=8).export(a)``), called
            with torch's RNG seeded from ``(seed, arch)`` so every arch gets its own reproducible
            initialisation.
        data: the examples (see :func:`proxy_examples`; read once, here).
        proxies: names from :data:`PROXIES`; each becomes a metric of that name.
        seed: seeds initialisation (callable ``network``) and any randomness in the forward passes.
        num_batches: batches of an iterable ``data`` to take.
        loss_fn: :func:`grad_norm`'s loss (default cross-entropy).

    Raises:
        ValueError: ``network`` is neither a Supernet nor callable, unknown proxies, a bad ``seed``,
            unusable ``data``.
    """

    def __init__(self, network: Any, data: Any,
                 proxies: Sequence[str] = ("synflow", "naswot", "grad_norm", "jacob_cov"), *, seed: int = 0,
                 num_batches: int = 1, loss_fn: Callable[[Tensor, Tensor], Tensor] | None = None) -> None:
        from lightning_nas.supernet import Supernet

        if not isinstance(network, Supernet) and (isinstance(network, nn.Module) or not callable(network)):
            raise ValueError("`network` must be a Supernet (subnets are exported from it) or a callable arch -> "
                             f"nn.Module, got {type(network).__name__}")
        _check_seed(seed)
        if loss_fn is not None and not callable(loss_fn):
            raise ValueError(f"`loss_fn` must be None or a callable (output, targets) -> loss, got {loss_fn!r}")
        self.network_source = network
        self.proxies = _check_names(proxies)
        self.seed, self.loss_fn = seed, loss_fn
        x, y = proxy_examples(data, num_batches)
        if "grad_norm" in self.proxies and y is None:
            raise ValueError("proxy 'grad_norm' differentiates a loss, so `data` must give targets: (inputs, targets) "
                             "batches; or leave 'grad_norm' out of `proxies`")
        self.examples = (x, y)
        self.cache: dict[tuple, dict[str, float]] = {}
        self.calls = 0  # networks scored (cache misses)

    @property
    def metrics(self) -> list[str]:
        """The metric names returned (the proxies')."""
        return list(self.proxies)

    def network(self, arch: Mapping[str, Any]) -> nn.Module:
        """The network of ``arch`` (exported, or built with the arch's seed)."""
        from lightning_nas.supernet import Supernet

        if isinstance(self.network_source, Supernet):
            return self.network_source.export(dict(arch))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(_arch_seed(self.seed, arch))
            net = self.network_source(dict(arch))
        if not isinstance(net, nn.Module):
            raise ValueError(f"`network` must return an nn.Module for an arch, got {type(net).__name__} for {dict(arch)}")
        return net

    def __call__(self, arch: Mapping[str, Any]) -> dict[str, float]:
        """``{proxy: score}`` of ``arch`` (computed once per arch)."""
        from lightning_nas.strategies.base import arch_key

        if not isinstance(arch, Mapping):
            raise ValueError(f"`arch` must be a mapping {{decision label: value}}, got {type(arch).__name__}")
        key = arch_key(arch)
        if key not in self.cache:
            net = self.network(arch)
            x, y = self.examples
            seed = _arch_seed(self.seed, arch) % (2**62)
            self.cache[key] = _compute(net, x, y, self.proxies, seed, self.loss_fn)
            self.calls += 1
        return dict(self.cache[key])

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(proxies={list(self.proxies)}, {self.examples[0].shape[0]} examples of shape "
                f"{tuple(self.examples[0].shape[1:])}, seed={self.seed}, {len(self.cache)} archs cached)")


class ProxyEvaluator(ProxyCostModel):
    """Zero-shot search: an evaluator (``evaluator(arch, fidelity) -> metrics``) whose metrics are the
    proxies of :class:`ProxyCostModel` (same arguments), e.g.
    ``run_search(strategy, ProxyEvaluator(build, data), objective="naswot", budget=...)``.

    A proxy costs the same at any fidelity: ``fidelity`` is accepted (a positive number or ``None``)
    and ignored; :attr:`full_fidelity` is 1. No metric is report-only.
    """

    full_fidelity: float = 1.0
    report_only: tuple[str, ...] = ()

    def __call__(self, arch: Mapping[str, Any], fidelity: float | None = None) -> dict[str, float]:  # type: ignore[override]
        """``{proxy: score}`` of ``arch`` (``fidelity`` is ignored).

        Raises:
            ValueError: ``fidelity`` is not ``None`` or a positive finite number.
        """
        if fidelity is not None and (isinstance(fidelity, bool) or not isinstance(fidelity, numbers.Real)
                                     or not 0 < fidelity < math.inf):
            raise ValueError(f"`fidelity` must be None or a positive finite number (it is ignored), got {fidelity!r}")
        return super().__call__(arch)
