"""``DartsSearch`` and ``DrNASSearch``: differentiable architecture search as Lightning callbacks.

The weights are trained by the user's own ``training_step`` and optimiser, untouched. Before every
training batch the callback takes one step on the architecture parameters α with its own Adam
optimiser on a batch of a held-out split (DARTS: the α step comes first), so the two alternate as in
DARTS's bilevel optimisation. α lives in a relaxation object outside the LightningModule, so the
user's optimiser never sees it; α and its optimiser state are saved in the callback's
``state_dict`` (a resumed run continues the same α trajectory), and under DDP α's gradient is
averaged over ranks so every rank holds the same α.

Example::

    search = DartsSearch(arch_split, order=2, monitor="val_acc")
    pl.Trainer(max_epochs=50, callbacks=[search]).fit(model, train_loader, val_loader)
    arch = search.select()                      # magnitude selection (argmax α)
    subnet = model.net.export(arch)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from lightning.fabric.utilities.apply_func import move_data_to_device
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from lightning.pytorch.utilities.rank_zero import rank_zero_warn
from torch.utils.data import Dataset, default_collate

from lightning_nas.callbacks._checks import check_supernet_path, is_float, is_int, plain_state, require_finite, resolve_split
from lightning_nas.differentiable.bilevel import LossFn, arch_gradient, cross_entropy_loss
from lightning_nas.differentiable.relaxation import DirichletRelaxation, SoftmaxRelaxation
from lightning_nas.differentiable.selection import magnitude_selection
from lightning_nas.seeding import derive_generator
from lightning_nas.supernet import Supernet, find_supernet

__all__ = ["DartsSearch", "DrNASSearch"]

# derive_generator stream of the architecture batches.
_ARCH_BATCHES = 2


class DartsSearch(Callback):
    """DARTS: softmax-relaxed supernet, α by Adam on held-out batches, first or second order.

    One α step is taken per training batch (per micro-batch under gradient accumulation), on
    the unwrapped LightningModule (never through the DDP wrapper; α's gradient is reduced here).

    Args:
        arch_data: the held-out split α is trained on (a map-style ``Dataset``; DARTS: half of
            the training set). Batches are drawn without replacement, reshuffled every pass,
            as a pure function of ``(seed, step)``; under DDP each rank takes its own batch. Or the
            name of a split of the trainer's DataModule (``"held_out"``: the map-style dataset of its
            ``held_out_dataloader()``, resolved at ``setup``), which is how a YAML config names it.
        batch_size: examples per α step.
        order: 1 (first order) or 2 (unrolled, finite-difference Hessian-vector product).
        lr: α's Adam learning rate (DARTS: 3e-4).
        betas: α's Adam betas (DARTS: (0.5, 0.999)).
        weight_decay: α's Adam weight decay (DARTS: 1e-3).
        init_std: α starts as ``init_std · N(0, 1)``.
        unrolled_lr: ξ of the second-order virtual step (default: the user's optimiser's current lr).
            With a ``torch.optim.SGD`` the virtual step is the one SGD would take (its momentum
            buffer and weight decay, as DARTS); any other optimiser gets a plain gradient step.
        loss_fn: ``loss_fn(pl_module, batch) -> Tensor`` (default: cross entropy of
            ``pl_module(batch[0])`` against ``batch[1]``).
        start_epoch: α steps begin at this epoch (warm-up of the weights before).
        seed: seed of α's initialisation and of the batch order.
        monitor: a logged metric (say ``"val_acc"``) to record next to α every epoch, for the
            skip-gap diagnostic.
        log_alpha: log every label's mixing weights each epoch (``alpha/{label}/{op}``).
        supernet: dotted attribute path of the supernet when the module has several.

    Attributes:
        relaxation: the installed relaxation (after ``setup``).
        history: per epoch ``{"epoch", "weights": {label: {op: expected weight}}, "metric"}`` (the
            weights are softmax(α), or the Dirichlet mean for DrNAS; ``metric`` is ``monitor``'s value).
    """

    def __init__(
        self,
        arch_data: Dataset | str,
        *,
        batch_size: int = 64,
        order: int = 1,
        lr: float = 3e-4,
        betas: tuple[float, float] = (0.5, 0.999),
        weight_decay: float = 1e-3,
        init_std: float = 1e-3,
        unrolled_lr: float | None = None,
        loss_fn: LossFn | None = None,
        start_epoch: int = 0,
        seed: int = 0,
        monitor: str | None = None,
        log_alpha: bool = True,
        supernet: str | None = None,
    ) -> None:
        if isinstance(arch_data, str):
            if not arch_data:
                raise MisconfigurationException("`arch_data` must be a non-empty map-style Dataset or a DataModule split name, got ''")
        elif not hasattr(arch_data, "__getitem__") or not hasattr(arch_data, "__len__") or len(arch_data) == 0:
            raise MisconfigurationException(
                f"`arch_data` must be a non-empty map-style Dataset or the name of a DataModule split (such as 'held_out'), "
                f"got {type(arch_data).__name__}"
            )
        if not is_int(batch_size, 1):
            raise MisconfigurationException(f"`batch_size` must be a positive int, got {batch_size!r}")
        if not is_int(order, 1) or order not in (1, 2):
            raise MisconfigurationException(f"`order` must be 1 or 2, got {order!r}")
        for name, value in (("lr", lr), ("weight_decay", weight_decay), ("init_std", init_std)):
            if not is_float(value, 0.0):
                raise MisconfigurationException(f"`{name}` must be a finite, non-negative float, got {value!r}")
        if not isinstance(betas, Sequence) or len(betas) != 2 or not all(is_float(b, 0.0, 1.0) and b < 1 for b in betas):
            raise MisconfigurationException(f"`betas` must be a pair of floats in [0, 1), got {betas!r}")
        if unrolled_lr is not None and not is_float(unrolled_lr, 0.0):
            raise MisconfigurationException(f"`unrolled_lr` must be a finite, non-negative float or None, got {unrolled_lr!r}")
        if loss_fn is not None and not callable(loss_fn):
            raise MisconfigurationException(f"`loss_fn` must be callable(pl_module, batch) -> Tensor or None, got {loss_fn!r}")
        if not is_int(start_epoch, 0):
            raise MisconfigurationException(f"`start_epoch` must be a non-negative int, got {start_epoch!r}")
        if not is_int(seed, 0):
            raise MisconfigurationException(f"`seed` must be a non-negative int, got {seed!r}")
        if monitor is not None and not isinstance(monitor, str):
            raise MisconfigurationException(f"`monitor` must be a logged metric's name (str) or None, got {monitor!r}")
        if not isinstance(log_alpha, bool):
            raise MisconfigurationException(f"`log_alpha` must be a bool, got {log_alpha!r}")
        check_supernet_path(supernet, MisconfigurationException)
        #: the split name given, or None when a Dataset was given; `arch_data` is the Dataset (None until resolved).
        self.arch_data_split = arch_data if isinstance(arch_data, str) else None
        self.arch_data = None if isinstance(arch_data, str) else arch_data
        self._requested_batch_size = batch_size
        self.batch_size = batch_size if self.arch_data is None else min(batch_size, len(arch_data))
        self.order = order
        self.lr, self.betas, self.weight_decay = lr, tuple(betas), weight_decay
        self.init_std = init_std
        self.unrolled_lr = unrolled_lr
        self.loss_fn = loss_fn or cross_entropy_loss
        self.start_epoch = start_epoch
        self.seed = seed
        self.monitor = monitor
        self.log_alpha = log_alpha
        self.supernet_path = supernet
        self.steps = 0  # α steps taken (restored on resume; indexes the batch stream)
        self.skipped_steps = 0  # of those, steps whose α gradient was NaN or infinite, so α was left as it was
        self.history: list[dict[str, Any]] = []
        self.relaxation: SoftmaxRelaxation | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self._supernet: Supernet | None = None
        self._pending: dict[str, Any] | None = None
        self._initial_alpha: list[torch.Tensor] | None = None

    @property
    def state_key(self) -> str:
        return self._generate_state_key(supernet=self.supernet_path, seed=self.seed)

    # -- construction ------------------------------------------------------------------------
    def make_relaxation(self, supernet: Supernet) -> SoftmaxRelaxation:
        """The relaxation this method searches with (DARTS: softmax)."""
        return SoftmaxRelaxation(supernet, init_std=self.init_std, seed=self.seed)

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if self.arch_data_split is not None and stage == "fit":
            data = resolve_split(self.arch_data_split, trainer, type(self).__name__, "arch_data", dataset=True)
            if len(data) == 0:
                raise MisconfigurationException(
                    f"{type(self).__name__}: `arch_data={self.arch_data_split!r}` is an empty split; it must hold examples"
                )
            self.arch_data, self.batch_size = data, min(self._requested_batch_size, len(data))
        try:
            supernet = find_supernet(pl_module, self.supernet_path)
        except (ValueError, AttributeError) as err:
            raise MisconfigurationException(f"{type(self).__name__}: {err}") from err
        if self.relaxation is None or self._supernet is not supernet:
            self._supernet = supernet
            self.relaxation = self.make_relaxation(supernet)
            self._initial_alpha = [a.detach().cpu().clone() for a in self.relaxation.alpha]
            self.optimizer = torch.optim.Adam(
                self.relaxation.alpha, lr=self.lr, betas=self.betas, weight_decay=self.weight_decay
            )
        self.relaxation.to(pl_module.device).install()
        if self._pending is not None:
            self._load(self._pending)
            self._pending = None

    # -- hooks -------------------------------------------------------------------------------
    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        if trainer.current_epoch >= self.start_epoch:
            self._arch_step(trainer, pl_module, batch)
        # The user's weight step sees α as a constant.
        self.relaxation.arch_grad = False

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.relaxation.arch_grad = True

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        weights = {
            label: dict(zip(map(str, self.relaxation.ops(label)), ws)) for label, ws in self.relaxation.probabilities().items()
        }
        metric = trainer.callback_metrics.get(self.monitor) if self.monitor else None
        self.history.append(
            {"epoch": trainer.current_epoch, "weights": weights, "metric": None if metric is None else float(metric)}
        )
        if self.log_alpha:
            pl_module.log_dict(
                {f"alpha/{label}/{op}": w for label, ops in weights.items() for op, w in ops.items()},
                on_epoch=True, on_step=False, sync_dist=False,
            )

    # -- the α step --------------------------------------------------------------------------
    def arch_batch(self, step: int, rank: int = 0, world_size: int = 1) -> Any:
        """The held-out batch of α step ``step`` on ``rank`` (collated, on the CPU)."""
        if self.arch_data is None:
            raise RuntimeError(
                f"{type(self).__name__}: `arch_data={self.arch_data_split!r}` names a DataModule split, resolved when fitting "
                "starts; call arch_batch() during or after `trainer.fit`"
            )
        n = len(self.arch_data)
        per_pass = max(1, n // self.batch_size)
        slot = step * world_size + rank
        order = torch.randperm(n, generator=derive_generator(self.seed, _ARCH_BATCHES, slot // per_pass))
        start = (slot % per_pass) * self.batch_size
        return default_collate([self.arch_data[int(i)] for i in order[start : start + self.batch_size]])

    def _arch_step(self, trainer: Trainer, pl_module: LightningModule, batch: Any) -> None:
        val_batch = move_data_to_device(self.arch_batch(self.steps, trainer.global_rank, trainer.world_size), pl_module.device)
        unrolled_lr, optimizer = None, None
        if self.order == 2:
            user_optimizer = trainer.optimizers[0]
            unrolled_lr = self.unrolled_lr if self.unrolled_lr is not None else float(user_optimizer.param_groups[0]["lr"])
            if isinstance(user_optimizer, torch.optim.SGD):
                optimizer = user_optimizer  # the virtual step is SGD's, momentum and weight decay included (DARTS)
            elif self.steps == 0:
                rank_zero_warn(
                    f"{type(self).__name__}: second order unrolls a plain gradient step; the weights' optimiser "
                    f"{type(user_optimizer).__name__} is not torch.optim.SGD, so its momentum and weight decay are left out"
                )
        grads = arch_gradient(
            self.loss_fn, pl_module, self.relaxation, val_batch,
            train_batch=batch if self.order == 2 else None, unrolled_lr=unrolled_lr, optimizer=optimizer,
        )
        if trainer.world_size > 1:
            flat = trainer.strategy.reduce(torch.cat([g.flatten() for g in grads]), reduce_op="mean")
            grads = list(torch.split(flat, [g.numel() for g in grads]))
        # Every rank holds the reduced gradient, so every rank skips alike. A skipped step still counts
        # in `steps` (it indexes the batch stream): a resumed run takes the same batches.
        if not bool(torch.stack([torch.isfinite(g).all() for g in grads]).all()):
            self.skipped_steps += 1
            if self.skipped_steps & (self.skipped_steps - 1) == 0:  # 1, 2, 4, 8...: a trend, not a flood
                rank_zero_warn(
                    f"{type(self).__name__}: the architecture gradient is NaN or infinite at α step {self.steps} (epoch "
                    f"{trainer.current_epoch}); α left unchanged ({self.skipped_steps} step(s) skipped so far). A NaN loss: "
                    "lower the learning rates or clip gradients"
                )
            self.steps += 1
            return
        self.optimizer.zero_grad(set_to_none=True)
        for alpha, grad in zip(self.relaxation.alpha, grads):
            alpha.grad = grad.view_as(alpha).detach().clone()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.steps += 1

    # -- results -----------------------------------------------------------------------------
    def select(self, exclude: Sequence[Any] = ("none",)) -> dict[str, Any]:
        """Magnitude selection: the arch of largest expected weights (see :func:`magnitude_selection`).

        Raises:
            RuntimeError: before a search was fitted, or when α is still its random initialisation (no α
                step changed it: ``start_epoch`` past the epochs trained, or every step skipped).
            FloatingPointError: α or the network's weights hold NaN or infinite values (the search
                diverged): an argmax of them would be an arbitrary architecture.
        """
        if self.relaxation is None:
            raise RuntimeError(f"{type(self).__name__}.select() needs a fitted search (no relaxation yet)")
        require_finite(self.relaxation.supernet, f"{type(self).__name__}.select()", "an architecture selected from it")
        initial = self._initial_alpha
        if initial is not None and all(torch.equal(a.detach().cpu(), a0) for a, a0 in zip(self.relaxation.alpha, initial)):
            # Compared with the initial α rather than counting steps: α set by hand or resumed is a real α.
            raise RuntimeError(
                f"{type(self).__name__}.select(): α is still its random initialisation ({self.steps} α steps taken, "
                f"{self.skipped_steps} of them skipped for a non-finite gradient; α steps start at start_epoch="
                f"{self.start_epoch}), so a selection would be arbitrary; train past start_epoch"
            )
        if self.skipped_steps:
            rank_zero_warn(
                f"{type(self).__name__}.select(): {self.skipped_steps} of {self.steps} α steps were skipped for a NaN or "
                "infinite architecture gradient; α reflects only the others"
            )
        return magnitude_selection(self.relaxation, exclude=exclude)

    # -- state -------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        state = {"seed": self.seed, "steps": self.steps, "skipped_steps": self.skipped_steps, "history": self.history}
        if self.relaxation is not None:
            state["relaxation"] = {
                k: v.detach().cpu() if isinstance(v, torch.Tensor) else v for k, v in self.relaxation.state_dict().items()
            }
            state["optimizer"] = self.optimizer.state_dict()
        return plain_state(state, f"{type(self).__name__} state")

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict.get("seed", self.seed) != self.seed:
            rank_zero_warn(f"{type(self).__name__}: resuming with the checkpoint's seed {state_dict['seed']} instead of {self.seed}")
            self.seed = state_dict["seed"]
        if self.relaxation is None:
            self._pending = state_dict  # applied in setup, once the supernet is known
        else:
            self._load(state_dict)

    def _load(self, state: Mapping[str, Any]) -> None:
        self.steps = int(state.get("steps", 0))
        self.skipped_steps = int(state.get("skipped_steps", 0))
        self.history = list(state.get("history", []))
        if "relaxation" in state:
            self.relaxation.load_state_dict(state["relaxation"])
            self.optimizer.load_state_dict(state["optimizer"])


class DrNASSearch(DartsSearch):
    """DrNAS: Dirichlet-relaxed DARTS with an anchor toward the uniform prior and optional progressive pruning.

    Takes :class:`DartsSearch`'s arguments with DrNAS's defaults: first order, α's Adam lr 6e-4
    (DrNAS's DARTS-space script; its NAS-Bench-201 script uses 3e-4), and ``weight_decay`` 0
    because the L2 anchor is the explicit loss term below (DrNAS's code writes it as Adam weight
    decay 1e-3 on α, the same gradient for α ≥ 0). DrNAS's DARTS-space script also starts the α
    steps at epoch 10 of each stage: pass ``start_epoch``. Plus:

    Args:
        anchor: ``"l2"`` (DrNAS's default) or ``"kl"`` (see
            :class:`~lightning_nas.differentiable.DirichletRelaxation`); ``None`` for none.
        anchor_weight: λ (DrNAS: 1e-3).
        prune_at: ``{epoch: ops_kept}``: at the start of each listed epoch keep only that many
            operations per edge, by Dirichlet mean (DrNAS progressive: ``{25: 4}`` on DARTS).
    """

    def __init__(
        self,
        arch_data: Dataset | str,
        *,
        anchor: str | None = "l2",
        anchor_weight: float = 1e-3,
        prune_at: Mapping[int, int] | None = None,
        lr: float = 6e-4,
        weight_decay: float = 0.0,
        order: int = 1,
        **kwargs: Any,
    ) -> None:
        if anchor not in ("kl", "l2", None):
            raise MisconfigurationException(f"`anchor` must be 'kl', 'l2' or None, got {anchor!r}")
        if not is_float(anchor_weight, 0.0):
            raise MisconfigurationException(f"`anchor_weight` must be a finite, non-negative float, got {anchor_weight!r}")
        if prune_at is not None and not isinstance(prune_at, Mapping):
            raise MisconfigurationException(f"`prune_at` must be a dict {{epoch: ops kept}} or None, got {prune_at!r}")
        prune_at = dict(prune_at or {})
        for epoch, keep in prune_at.items():
            if not is_int(epoch, 0) or not is_int(keep, 1):
                raise MisconfigurationException(f"`prune_at` maps epochs (ints >= 0) to ops kept (ints >= 1), got {prune_at!r}")
        super().__init__(arch_data, lr=lr, weight_decay=weight_decay, order=order, **kwargs)
        self.anchor, self.anchor_weight, self.prune_at = anchor, anchor_weight, prune_at

    def make_relaxation(self, supernet: Supernet) -> SoftmaxRelaxation:
        return DirichletRelaxation(
            supernet, anchor=self.anchor, anchor_weight=self.anchor_weight, init_std=self.init_std, seed=self.seed
        )

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        keep = self.prune_at.get(trainer.current_epoch)
        if keep is not None:
            self.relaxation.prune(keep)
