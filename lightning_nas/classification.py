"""``ImageClassifier``: a YAML-friendly classification LightningModule whose network is named, not passed.

:class:`SupernetClassifier` takes the network object, which a config file
cannot hold. ``ImageClassifier`` builds it from strings and plain values, then trains exactly like
``SupernetClassifier`` (it is one): a registered space name plus keyword arguments
(:func:`lightning_nas.spaces.create_space`, e.g. ``space: binas``, ``space_kwargs: {preset: tiny}``)
or your own ``package.module:factory`` (``model: mypackage.models:make_supernet``; a factory that
returns a plain ``nn.Module`` with lightning_nas choices is wrapped in a ``Supernet``). Everything is
saved as hyper-parameters, so a checkpoint rebuilds its network (``lightning-nas export``,
``ImageClassifier.load_from_checkpoint``).

Example (YAML, ``lightning-nas fit --config``)::

    model:
      space: binas
      space_kwargs: {preset: tiny, max_depth: 2, expand_ratios: [2, 4], kernel_sizes: [3]}
      lr: 0.1
      distill: true
"""

from __future__ import annotations

import importlib
import inspect
import math
from collections.abc import Callable, Mapping
from typing import Any

import lightning.pytorch as pl
import torch
import torchmetrics
from torch import nn

from lightning_nas.distillation import inplace_distillation_loss
from lightning_nas.supernet import Supernet

__all__ = ["ImageClassifier", "SupernetClassifier", "build_network"]


def _accepts(fn: Callable[..., Any] | None, name: str) -> bool:
    """Whether ``fn`` takes a keyword argument ``name`` (or ``**kwargs``)."""
    if fn is None:
        return False
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return name in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def _builder(space: str | None, model: str | None) -> Callable[..., Any] | None:
    """The callable that builds the network (``None`` when it cannot be found; building then reports why)."""
    if space is not None:
        from lightning_nas.spaces import SPACES

        return SPACES.get(space) if space in SPACES else None
    module_name, _, factory_name = (model or "").partition(":")
    try:
        return getattr(importlib.import_module(module_name), factory_name, None) if module_name and factory_name else None
    except ImportError:
        return None


def build_network(
    space: str | None = None,
    space_kwargs: Mapping[str, Any] | None = None,
    model: str | None = None,
    *,
    num_classes: int | None = None,
    in_chans: int | None = None,
) -> nn.Module:
    """The supernet named by a registered ``space`` (plus ``space_kwargs``) or a ``model`` factory.

    ``num_classes`` and ``in_chans`` are passed to the builder when it takes them and
    ``space_kwargs`` does not already set them (a different value there is an error).

    Args:
        space: a registered space name (``lightning_nas.spaces.list_spaces()``: ``binas``, ``mobilenet``, ...).
        space_kwargs: keyword arguments of the space builder or the factory.
        model: ``"package.module:factory"``; ``factory(**space_kwargs)`` returns a ``Supernet`` or an
            ``nn.Module`` with lightning_nas choices (wrapped in a ``Supernet``). Imports and runs that code.
        num_classes: classes of the output layer.
        in_chans: input channels.

    Returns:
        A :class:`~lightning_nas.Supernet`.

    Raises:
        ValueError: neither or both of ``space`` and ``model``; an unknown space; a factory that
            cannot be imported or returns something else; kwargs the builder does not take.
    """
    from lightning_nas.profile_cli import _create_model, _create_space

    if (space is None) == (model is None):
        raise ValueError(
            f"give exactly one of `space` (a registered space name such as 'binas') and `model` ('package.module:factory'), "
            f"got space={space!r}, model={model!r}"
        )
    if space_kwargs is not None and not isinstance(space_kwargs, Mapping):
        raise ValueError(f"`space_kwargs` must be a mapping of keyword arguments or None, got {space_kwargs!r}")
    kwargs = dict(space_kwargs or {})
    builder = _builder(space, model)
    for name, value in (("num_classes", num_classes), ("in_chans", in_chans)):
        if value is None:
            continue
        if name in kwargs:
            if kwargs[name] != value:
                raise ValueError(f"`space_kwargs` sets {name}={kwargs[name]!r} but `{name}` is {value!r} (from the data?); make them agree")
        elif _accepts(builder, name):
            kwargs[name] = value
    if space is not None:
        if not isinstance(space, str) or not space:
            raise ValueError(f"`space` must be a registered space name (str), got {space!r}")
        return _create_space(space, kwargs)
    if not isinstance(model, str):
        raise ValueError(f"`model` must be 'package.module:factory' (str), got {model!r}")
    return _create_model(model, kwargs)


class SupernetClassifier(pl.LightningModule):
    """An ordinary classification LightningModule around any network (a supernet or a subnet).

    Nothing here knows about NAS: callbacks activate subnets from outside. With ``distill=True``
    (a :class:`~lightning_nas.Supernet` only) each step adds in-place distillation from the
    largest subnet (:func:`~lightning_nas.distillation.inplace_distillation_loss`), BINAS's
    recipe; the logged training accuracy is then the sampled subnets'. SGD (Nesterov momentum 0.9)
    with a cosine schedule over ``epochs`` epochs: stepped per epoch when ``warmup`` is 0, else per
    step after a linear warm-up over the first ``warmup`` fraction of the steps.

    ``channels_last=True`` keeps the network's 4-D weights and every 4-D input it is given in
    channels-last memory layout: on a CPU, oneDNN's convolutions (depthwise above all) then run
    without layout conversions (the BINAS demo's per-example training step 17 % faster, its
    per-example evaluation 30 %; outputs equal to float rounding).
    """

    def __init__(
        self, supernet: nn.Module, num_classes: int, *, lr: float = 0.1, weight_decay: float = 4e-5, epochs: int = 1,
        distill: bool = False, warmup: float = 0.0, channels_last: bool = False,
    ) -> None:
        super().__init__()
        if not isinstance(channels_last, bool):
            raise ValueError(f"`channels_last` must be a bool, got {channels_last!r}")
        if isinstance(warmup, bool) or not isinstance(warmup, (int, float)) or not 0 <= warmup < 1:
            raise ValueError(f"`warmup` must be a fraction of the steps in [0, 1), got {warmup!r}")
        if distill and not isinstance(supernet, Supernet):
            raise ValueError(f"`distill=True` needs a lightning_nas.Supernet to take the teacher from, got {type(supernet).__name__}")
        self.supernet = supernet.to(memory_format=torch.channels_last) if channels_last else supernet
        self.channels_last = channels_last
        self.lr, self.weight_decay, self.epochs, self.distill, self.warmup = lr, weight_decay, epochs, distill, warmup
        self.train_acc = torchmetrics.Accuracy(task="multiclass", num_classes=num_classes)
        self.val_acc = torchmetrics.Accuracy(task="multiclass", num_classes=num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.supernet(self._layout(x))

    def _layout(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last and x.dim() == 4 else x

    def training_step(self, batch, batch_idx):
        x, y = batch
        x = self._layout(x)
        if self.distill:
            loss, logits = inplace_distillation_loss(self.supernet, x, y)
        else:
            logits = self(x)
            loss = nn.functional.cross_entropy(logits, y)
        self.train_acc(logits, y)
        self.log_dict({"train_loss": loss, "train_acc": self.train_acc}, on_step=False, on_epoch=True, batch_size=len(y),
                      prog_bar=True)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.val_acc(self(x), y)
        self.log("val_acc", self.val_acc, on_epoch=True, batch_size=len(y))

    def configure_optimizers(self):
        optimizer = torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9, weight_decay=self.weight_decay, nesterov=True)
        if not self.warmup:  # a cosine over `epochs` epochs, stepped per epoch (a shorter run follows its prefix)
            return {"optimizer": optimizer, "lr_scheduler": torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(self.epochs, 1))}
        # Per step: linear warm-up over the first `warmup` fraction of `epochs` epochs' steps, then a cosine to zero.
        per_epoch = self.trainer.estimated_stepping_batches / max(self.trainer.max_epochs or 1, 1)
        total = max(int(round(per_epoch * max(self.epochs, 1))), 1)
        warm = int(self.warmup * total)

        def factor(step: int) -> float:
            if step < warm:
                return (step + 1) / (warm + 1)
            return 0.5 * (1 + math.cos(math.pi * min(step - warm, total - warm) / max(total - warm, 1)))

        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


class ImageClassifier(SupernetClassifier):
    """A :class:`SupernetClassifier` whose network comes from a name (YAML-friendly).

    Training is ``SupernetClassifier``'s (cross entropy, optional in-place distillation, SGD with
    Nesterov momentum and a cosine schedule); adds ``test_step`` (``test_acc``) and
    ``predict_step`` (logits ``(B, num_classes)``). The network is at ``self.supernet``.

    Args:
        space: a registered space name (``binas``, ``mobilenet``, ``nb201``, ``darts``, ...).
        space_kwargs: keyword arguments of the space builder or of ``model``'s factory.
        model: ``"package.module:factory"`` instead of ``space`` (your own supernet).
        num_classes: output classes; under ``lightning-nas fit`` it comes from the DataModule.
            ``None``: ``space_kwargs["num_classes"]``.
        in_chans: input channels, passed to the builder when it takes ``in_chans``; under
            ``lightning-nas fit`` it comes from the DataModule's ``channels``.
        lr: peak SGD learning rate.
        weight_decay: SGD weight decay.
        epochs: length of the cosine schedule in epochs (``None``: the trainer's ``max_epochs``).
        distill: in-place distillation from the largest subnet (BINAS's recipe).
        warmup: fraction of the steps of linear warm-up (0: the cosine is stepped per epoch).
        channels_last: channels-last memory layout for the network and its 4-D inputs (faster
            convolutions on a CPU; see :class:`SupernetClassifier`).

    Raises:
        ValueError: a bad argument (the message names it and what is allowed).
    """

    def __init__(
        self,
        space: str | None = None,
        space_kwargs: dict[str, Any] | None = None,
        model: str | None = None,
        num_classes: int | None = None,
        in_chans: int | None = None,
        lr: float = 0.1,
        weight_decay: float = 4e-5,
        epochs: int | None = None,
        distill: bool = False,
        warmup: float = 0.0,
        channels_last: bool = False,
    ) -> None:
        for name, value in (("num_classes", num_classes), ("in_chans", in_chans), ("epochs", epochs)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"`{name}` must be an int >= 1 or None, got {value!r}")
        for name, value in (("lr", lr), ("weight_decay", weight_decay)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0 or value == float("inf"):
                raise ValueError(f"`{name}` must be a finite number >= 0, got {value!r}")
        if num_classes is None:
            num_classes = (space_kwargs or {}).get("num_classes")
            if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
                raise ValueError(
                    "`num_classes` must be given (an int >= 2; `lightning-nas fit` takes it from the data), or set in "
                    f"`space_kwargs`; got num_classes=None and space_kwargs={space_kwargs!r}"
                )
        network = build_network(space, space_kwargs, model, num_classes=num_classes, in_chans=in_chans)
        super().__init__(network, num_classes, lr=lr, weight_decay=weight_decay, epochs=epochs or 1, distill=distill, warmup=warmup,
                         channels_last=channels_last)
        self.save_hyperparameters()
        self._epochs_from_trainer = epochs is None
        self.test_acc = torchmetrics.Accuracy(task="multiclass", num_classes=num_classes)

    def configure_optimizers(self):
        """``SupernetClassifier``'s SGD and cosine schedule, over ``epochs`` (default: the trainer's ``max_epochs``)."""
        if self._epochs_from_trainer:
            max_epochs = self.trainer.max_epochs
            self.epochs = max_epochs if max_epochs is not None and max_epochs > 0 else 1
        return super().configure_optimizers()

    def test_step(self, batch, batch_idx):
        x, y = batch
        self.test_acc(self(x), y)
        self.log("test_acc", self.test_acc, on_epoch=True, batch_size=len(y))

    def predict_step(self, batch, batch_idx, dataloader_idx: int = 0) -> torch.Tensor:
        """Logits ``(B, num_classes)`` of a batch ``(images, labels)`` or of bare images."""
        x = batch[0] if isinstance(batch, (list, tuple)) else batch
        return self(x)
