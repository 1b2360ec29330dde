"""An evaluator that trains each proposed architecture with a Lightning ``Trainer``.

``TrainingEvaluator(build, train, val)(arch, fidelity)`` builds a supernet with ``build()``, exports
the subnet of ``arch`` (a plain ``nn.Module``), trains it for ``fidelity`` epochs and returns its
validation accuracy and loss and its parameter count. Everything is seeded from ``seed`` and the
arch, so an evaluation is reproducible and independent of which worker runs it.

The learning-rate schedule (cosine) always spans ``full_fidelity`` epochs, so a low-fidelity
evaluation is the start of the full one. With ``checkpoint_dir`` the evaluator *resumes*: a later
evaluation of the same arch at a higher fidelity continues from the stored Lightning checkpoint
(``resumes = True``, so the driver charges only the extra epochs — what successive halving and
RANK-NOSH assume) and ends exactly where training from scratch would.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import math
import os
import pickle
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler

from lightning_nas.classification import SupernetClassifier
from lightning_nas.seeding import derive_seed

__all__ = ["EpochShuffle", "TrainingEvaluator"]


class EpochShuffle(Sampler[int]):
    """A shuffle that depends only on ``(seed, epoch)``: Lightning calls :meth:`set_epoch` each epoch,
    so a resumed run sees the same order as an uninterrupted one."""

    def __init__(self, size: int, seed: int) -> None:
        self.size, self.seed, self.epoch = size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(derive_seed(self.seed, self.epoch))
        return iter(torch.randperm(self.size, generator=generator).tolist())

    def __len__(self) -> int:
        return self.size


def _tag(arch: Mapping[str, Any]) -> str:
    """The arch's name in ``checkpoint_dir`` (and the source of its seed)."""
    return hashlib.sha1(json.dumps(dict(arch), sort_keys=True).encode()).hexdigest()[:16]


def _trained_epochs(path: Path) -> int:
    """Epochs completed by the run saved at ``path`` (Lightning stores the next epoch's index).

    Loaded with ``weights_only=True``: tensors and plain containers only, so a checkpoint someone
    planted there cannot run code; Lightning is only handed checkpoints that passed this load.
    """
    try:
        epoch = torch.load(path, map_location="cpu", weights_only=True)["epoch"]
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
            raise ValueError(f"its 'epoch' is {epoch!r}")
    except Exception as err:  # noqa: BLE001 - unpickling refusals, truncation, a foreign layout: one message
        if isinstance(err, pickle.UnpicklingError):
            reason = "it holds objects other than tensors and plain data, which could run code when loaded"
        else:
            reason = f"{type(err).__name__}: {(str(err).splitlines() or [''])[0][:200]}"
        raise ValueError(f"checkpoint {str(path)!r} is not a training checkpoint this evaluator can load safely "
                         f"({reason}); delete it, or give another `checkpoint_dir`") from None
    return epoch


@torch.no_grad()
def _validate(model: nn.Module, loader: DataLoader) -> tuple[float, float]:
    """Top-1 accuracy (fraction) and mean cross-entropy of ``model`` in eval mode over ``loader``."""
    model.eval()
    correct = total = count = 0.0
    for x, y in loader:
        logits = model(x)
        correct += float((logits.argmax(1) == y).sum())
        total += float(nn.functional.cross_entropy(logits, y, reduction="sum"))
        count += len(y)
    return correct / count, total / count


class TrainingEvaluator:
    """Train an exported subnet per evaluation (see the module docstring).

    Args:
        build: picklable callable returning a :class:`~lightning_nas.supernet.Supernet` (e.g.
            ``functools.partial(mobilenet_supernet, num_classes=10)``); its space is the search space.
        train: training dataset of ``(image, label)``.
        val: validation dataset of ``(image, label)``.
        num_classes: classifier outputs.
        full_fidelity: epochs of a full evaluation.
        batch_size: SGD training batch size.
        lr: SGD learning rate.
        weight_decay: SGD weight decay.
        seed: seeds initialisation and data order (combined with the arch).
        checkpoint_dir: where to keep one checkpoint per arch to resume from (``None``: always train
            from scratch). Existing checkpoints there are reused, never overwritten by a shorter run.
    """

    report_only: tuple[str, ...] = ()

    def __init__(self, build: Callable[[], nn.Module], train: Dataset, val: Dataset, *, num_classes: int,
                 full_fidelity: int = 10, batch_size: int = 64, lr: float = 0.05, weight_decay: float = 4e-5,
                 seed: int = 0, checkpoint_dir: str | os.PathLike | None = None) -> None:
        if not callable(build):
            raise ValueError(f"`build` must be a callable returning a Supernet, got {build!r}")
        if isinstance(full_fidelity, bool) or not isinstance(full_fidelity, int) or full_fidelity < 1:
            raise ValueError(f"`full_fidelity` must be an int >= 1 (epochs), got {full_fidelity!r}")
        for name, value, low in (("num_classes", num_classes, 2), ("batch_size", batch_size, 1), ("seed", seed, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"`{name}` must be an int >= {low}, got {value!r}")
        for name, value in (("lr", lr), ("weight_decay", weight_decay)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < math.inf \
                    or (name == "lr" and value == 0):
                raise ValueError(f"`{name}` must be a finite number {'> 0' if name == 'lr' else '>= 0'}, got {value!r}")
        if len(train) == 0 or len(val) == 0:
            raise ValueError(f"`train` and `val` must not be empty, got {len(train)} and {len(val)} examples")
        self.build, self.train, self.val = build, train, val
        self.num_classes, self.full_fidelity = num_classes, full_fidelity
        self.batch_size, self.lr, self.weight_decay, self.seed = batch_size, lr, weight_decay, seed
        self.checkpoint_dir = None if checkpoint_dir is None else Path(checkpoint_dir)

    @property
    def resumes(self) -> bool:
        return self.checkpoint_dir is not None

    def __call__(self, arch: Mapping[str, Any], fidelity: float | None = None) -> dict[str, float]:
        """Train ``arch`` for ``fidelity`` epochs (default: the full fidelity); validation metrics.

        Raises:
            ValueError: ``fidelity`` is not a whole number of epochs in ``[1, full_fidelity]``, or
                ``arch`` is not in the supernet's space.
        """
        epochs = self.full_fidelity if fidelity is None else fidelity
        if float(epochs) != int(epochs) or not 1 <= int(epochs) <= self.full_fidelity:
            raise ValueError(f"`fidelity` must be whole epochs in [1, {self.full_fidelity}], got {fidelity!r}")
        epochs = int(epochs)
        tag = _tag(arch)
        arch_seed = derive_seed(self.seed, int(tag, 16) % (2**62))
        with torch.random.fork_rng(devices=[]):  # seeded initialisation without touching the caller's RNG
            torch.manual_seed(arch_seed)
            supernet = self.build()
            subnet = supernet.export(arch)
        model = SupernetClassifier(subnet, self.num_classes, lr=self.lr, weight_decay=self.weight_decay,
                                   epochs=self.full_fidelity)
        train = DataLoader(self.train, batch_size=self.batch_size, sampler=EpochShuffle(len(self.train), arch_seed))
        val = DataLoader(self.val, batch_size=256)
        with tempfile.TemporaryDirectory() as scratch:
            resume = self._checkpoint(tag, epochs)
            trainer = pl.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, logger=False,
                                 enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                                 num_sanity_val_steps=0, deterministic=True, default_root_dir=scratch)
            # weights_only: what _checkpoint checked is also how Lightning loads it (older Lightning lacks the
            # argument and loads checkpoints only after _trained_epochs accepted them).
            safe = {"weights_only": True} if "weights_only" in inspect.signature(trainer.fit).parameters else {}
            trainer.fit(model, train, ckpt_path=resume, **safe)
            self._save(trainer, tag, epochs)
        accuracy, loss = _validate(model, val)
        return {"valid_accuracy": accuracy, "valid_loss": loss,
                "params": float(sum(p.numel() for p in model.supernet.parameters()))}

    def _path(self, tag: str) -> Path | None:
        return None if self.checkpoint_dir is None else self.checkpoint_dir / f"{tag}.ckpt"

    def _checkpoint(self, tag: str, epochs: int) -> str | None:
        """The stored checkpoint of this arch if it ends at or before ``epochs`` (resume from it)."""
        path = self._path(tag)
        if path is None or not path.exists():
            return None
        return str(path) if _trained_epochs(path) <= epochs else None

    def _save(self, trainer: pl.Trainer, tag: str, epochs: int) -> None:
        path = self._path(tag)
        if path is None:
            return
        if path.exists() and _trained_epochs(path) > epochs:
            return  # a longer run is stored: keep it
        path.parent.mkdir(parents=True, exist_ok=True)
        # Write beside the target, then rename: a reader never sees a half-written checkpoint.
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        try:
            trainer.save_checkpoint(tmp)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
