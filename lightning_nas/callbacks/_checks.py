"""What every callback of the package checks the same way: plain checkpoint state, finite
networks, non-empty held-out data, and held-out data named as a DataModule split."""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Mapping
from pathlib import PurePath
from typing import Any

import numpy as np
import torch
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import nn

__all__ = ["check_not_empty", "datamodule_splits", "first_non_finite", "plain_state", "require_finite", "resolve_split"]


def plain_state(value: Any, where: str = "state") -> Any:
    """``value`` as plain types that ``torch.load(weights_only=True)`` (Lightning's resume) accepts.

    Strings (a ``TorchVersion`` is a ``str`` subclass that ``weights_only`` refuses), numbers,
    ``None``, lists, tuples, dicts and tensors are kept, each as its plain base type; numpy scalars
    and arrays become numbers and lists, paths strings.

    Raises:
        TypeError: for any other object, naming where it sits: such a state would save but never resume.
    """
    if value is None or type(value) in (bool, int, float, str):
        return value
    if isinstance(value, torch.Tensor):
        return value.detach()
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    if isinstance(value, str):
        return str(value)
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Mapping):
        return {plain_state(k, f"{where} key"): plain_state(v, f"{where}[{k!r}]") for k, v in value.items()}
    if isinstance(value, tuple):
        return tuple(plain_state(v, f"{where}[{i}]") for i, v in enumerate(value))
    if isinstance(value, list):
        return [plain_state(v, f"{where}[{i}]") for i, v in enumerate(value)]
    raise TypeError(
        f"{where} is a {type(value).__module__}.{type(value).__qualname__}; a callback state must hold only str, int, "
        "float, bool, None, lists, tuples, dicts and tensors, or the checkpoint cannot be resumed (weights_only loading)"
    )


def first_non_finite(module: nn.Module) -> str | None:
    """The name of the first parameter or running normalisation statistic of ``module`` holding a NaN or an infinity.

    Other buffers are left alone: an attention mask may hold -inf on purpose. One reduction per
    tensor and a single read back to the host, so a healthy network costs one sync.
    """
    named = [(f"parameter {n!r}", t) for n, t in module.named_parameters()]
    named += [
        (f"buffer {n!r}", t) for n, t in module.named_buffers()
        if t.is_floating_point() and n.rpartition(".")[2] in ("running_mean", "running_var")
    ]
    if not named:
        return None
    finite = torch.stack([torch.isfinite(t.detach()).all().to(named[0][1].device) for _, t in named])
    if bool(finite.all()):
        return None
    return named[int((~finite).nonzero()[0])][0]


def require_finite(module: nn.Module, who: str, what: str) -> None:
    """Raise when ``module`` holds a NaN or an infinity (the training diverged): ``what`` would be meaningless.

    Under DDP every rank holds the same weights, so every rank raises alike (no rank is left waiting).
    """
    bad = first_non_finite(module)
    if bad is not None:
        raise FloatingPointError(
            f"{who}: the network's {bad} holds NaN or infinite values (the training diverged: a NaN loss?), so "
            f"{what} would be meaningless; lower the learning rate, clip gradients, or resume from an earlier checkpoint"
        )


def check_not_empty(data: Iterable[Any], who: str, name: str, *, peek: bool) -> None:
    """Refuse an empty held-out iterable now rather than after training.

    A sized one (a list, a map-style ``DataLoader``) is measured; with ``peek`` an unsized one (an
    iterable dataset) is started once to see that it yields a batch.
    """
    try:
        size = len(data)  # type: ignore[arg-type]
    except TypeError:
        size = None
    if size is None and peek:
        size = 1 if next(iter(data), _NOTHING) is not _NOTHING else 0
    if size == 0:
        raise MisconfigurationException(f"{who}: `{name}` is empty (it yields no batch); pass a non-empty held-out loader")


_NOTHING = object()


def finite_float(value: Any) -> bool:
    """Whether ``value`` is a real number (not a bool) that is finite."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def is_int(value: Any, minimum: int) -> bool:
    """Whether ``value`` is an int (not a bool: ``True`` is not a count) of at least ``minimum``."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= minimum


def is_float(value: Any, minimum: float = -math.inf, maximum: float = math.inf) -> bool:
    """Whether ``value`` is a finite real number (not a bool) in ``[minimum, maximum]``; NaN never is."""
    return finite_float(value) and minimum <= value <= maximum


def check_supernet_path(supernet: Any, error: type[Exception]) -> None:
    if supernet is not None and (not isinstance(supernet, str) or not supernet):
        raise error(f"`supernet` must be the dotted attribute path of the Supernet (a non-empty str) or None, got {supernet!r}")


# ---------------------------------------------------------------------------------------------
# Held-out data named as a DataModule split
# ---------------------------------------------------------------------------------------------
def datamodule_splits(datamodule: Any) -> list[str]:
    """The split names a DataModule offers: every ``<name>`` with a ``<name>_dataloader()`` method.

    Lightning's own hooks (``train``, ``val``, ``test``, ``predict``) count only when the DataModule
    overrides them (the base class defines them all, raising when called).
    """
    from lightning.pytorch import LightningDataModule
    from lightning.pytorch.utilities.model_helpers import is_overridden

    names = []
    for attr in dir(type(datamodule)):
        if not attr.endswith("_dataloader") or attr.startswith("_") or not callable(getattr(datamodule, attr, None)):
            continue
        if hasattr(LightningDataModule, attr) and not is_overridden(attr, datamodule, parent=LightningDataModule):
            continue
        names.append(attr[: -len("_dataloader")])
    return sorted(names)


def resolve_split(value: Any, trainer: Any, who: str, name: str, *, dataset: bool = False) -> Any:
    """The held-out data a callback was given: ``value`` itself, or the DataModule split it names.

    A string names a split of ``trainer.datamodule``: what its ``<value>_dataloader()`` method
    returns (:class:`~lightning_nas.datamodule.ImageDataModule` has ``train``, ``held_out``, ``val``
    and ``test``; any LightningDataModule works that defines such a method). With ``dataset=True``
    (callbacks that draw their own batches from a map-style ``Dataset``) the loader's ``.dataset``
    is returned.

    Args:
        value: a DataLoader / iterable of batches / Dataset (returned unchanged) or a split name.
        trainer: the ``Trainer`` whose ``datamodule`` holds the split (``None`` outside ``fit``).
        who: the callback's name, for messages.
        name: the argument's name, for messages.
        dataset: return the map-style ``Dataset`` behind the split's loader.

    Raises:
        MisconfigurationException: the trainer has no datamodule, the datamodule has no such split,
            or its loader has no map-style ``.dataset`` when one is needed.
    """
    if not isinstance(value, str):
        return value
    datamodule = getattr(trainer, "datamodule", None) if trainer is not None else None
    if datamodule is None:
        raise MisconfigurationException(
            f"{who}: `{name}={value!r}` names a DataModule split, but the trainer has no datamodule; fit with "
            "`trainer.fit(model, datamodule=...)` (LightningCLI's `data:`), or pass the held-out DataLoader itself"
        )
    splits = datamodule_splits(datamodule)
    if value not in splits:
        raise MisconfigurationException(
            f"{who}: `{name}={value!r}`: {type(datamodule).__name__} has no split {value!r} (no `{value}_dataloader()` "
            f"method); its splits are {splits!r}"
        )
    loader = getattr(datamodule, f"{value}_dataloader")()
    if loader is None:
        raise MisconfigurationException(f"{who}: `{name}={value!r}`: {type(datamodule).__name__}.{value}_dataloader() returned None")
    if not dataset:
        return loader
    data = getattr(loader, "dataset", None)
    if data is None or not hasattr(data, "__getitem__") or not hasattr(data, "__len__"):
        raise MisconfigurationException(
            f"{who}: `{name}={value!r}`: {type(datamodule).__name__}.{value}_dataloader() must return a DataLoader over a "
            f"map-style Dataset (with __getitem__ and __len__), got a {type(loader).__name__} over {type(data).__name__}"
        )
    return data
