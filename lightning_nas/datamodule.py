"""``ImageDataModule``: image classification with the named splits NAS callbacks need.

The data comes from :func:`~lightning_nas.data.load_image_dataset` (a Hugging Face Hub name, a
``save_to_disk`` directory, an image folder, or ``"digits"``) or from
:func:`~lightning_nas.data.augmented_digits` (``"augmented_digits"``; offline), is converted to
small in-memory tensors (:func:`~lightning_nas.data.to_tensors`) and split, seeded, into

* ``train``: what the supernet is trained on (``train_dataloader()``, shuffled, seeded);
* ``held_out``: kept out of training for the search callbacks (``held_out_dataloader()``, in order):
  ``ContributionEstimation(held_out="held_out")``, ``DartsSearch(arch_data="held_out")``, ...;
* ``val``: validation (``val_dataloader()``);
* ``test`` (when ``fractions`` has a fourth part, or ``test_split`` names a split of the source):
  ``test_dataloader()``.

``predict_dataloader()`` serves the test split when there is one, else the validation split.
The split ``name``'s tensors are :meth:`ImageDataModule.dataset` ``(name)``; a callback given a
split name resolves it through ``<name>_dataloader()``
(:func:`~lightning_nas.callbacks._checks.resolve_split`).

Example (YAML, ``lightning-nas fit --config``)::

    data:
      dataset: digits
      image_size: 16
      channels: 1
      fractions: [0.6, 0.2, 0.2]
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from lightning_nas.data import augmented_digits, load_image_dataset, split_dataset, to_tensors

__all__ = ["SPLITS", "ImageDataModule"]

#: The split names, in the order of ``fractions``.
SPLITS = ("train", "held_out", "val", "test")


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"`{name}` must be an int >= 1, got {value!r}")
    return value


class ImageDataModule(pl.LightningDataModule):
    """Image classification from a dataset name or directory, split into train / held_out / val [/ test].

    Args:
        dataset: ``"augmented_digits"`` (scikit-learn's digits split on the originals, then
            augmented; offline), ``"digits"`` (the plain 8×8 digits; offline), a directory written
            by ``save_to_disk``, an image folder (one sub-folder per class) or a Hugging Face
            dataset name (network access or the local cache).
        split: the split of a Hugging Face dataset or saved ``DatasetDict`` that is divided by
            ``fractions`` (ignored by ``"augmented_digits"``).
        test_split: another split of the source used whole as the ``test`` split (``None``: a test
            split only when ``fractions`` has four parts). Not with ``"augmented_digits"``.
        fractions: the ``train``, ``held_out``, ``val`` (and optionally ``test``) parts, positive,
            summing to 1. For ``"augmented_digits"`` the parts are of the original images.
        image_size: ``S``, the square input side in pixels; batches are ``(B, channels, S, S)``.
        channels: 1 (grey) or 3 (RGB); images are converted to it.
        max_examples: use at most this many examples (a seeded subset; originals for
            ``"augmented_digits"``): quick runs and tests.
        copies: ``"augmented_digits"`` only: augmented copies of each original, one per part.
        strength: ``"augmented_digits"`` only: augmentation strength in ``[0, 2]``.
        batch_size: training batch size.
        eval_batch_size: batch size of the held-out, validation, test and predict loaders.
        num_workers: DataLoader worker processes (0: load in the main process).
        seed: seeds the subset, the split, the augmentation and the training shuffle.
        image_column: the image column's name when it cannot be inferred.
        label_column: the label column's name when it cannot be inferred.

    Attributes:
        num_classes: the number of classes (loads the data on first access).
    """

    def __init__(
        self,
        dataset: str = "augmented_digits",
        *,
        split: str = "train",
        test_split: str | None = None,
        fractions: Sequence[float] = (0.6, 0.2, 0.2),
        image_size: int = 16,
        channels: int = 1,
        max_examples: int | None = None,
        copies: Sequence[int] = (6, 12, 12),
        strength: float = 0.75,
        batch_size: int = 64,
        eval_batch_size: int = 256,
        num_workers: int = 0,
        seed: int = 0,
        image_column: str | None = None,
        label_column: str | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(dataset, str) or not dataset:
            raise ValueError(f"`dataset` must be 'augmented_digits', 'digits', a directory or a Hugging Face dataset name, got {dataset!r}")
        if not isinstance(split, str) or not split:
            raise ValueError(f"`split` must be a split name such as 'train', got {split!r}")
        if test_split is not None and (not isinstance(test_split, str) or not test_split):
            raise ValueError(f"`test_split` must be a split name such as 'test' or None, got {test_split!r}")
        fractions = tuple(fractions) if isinstance(fractions, Sequence) and not isinstance(fractions, str) else fractions
        if not isinstance(fractions, tuple) or len(fractions) not in (3, 4) or any(
                isinstance(f, bool) or not isinstance(f, (int, float)) or not math.isfinite(f) or f <= 0 for f in fractions
        ) or abs(sum(fractions) - 1) > 1e-9:
            raise ValueError(
                f"`fractions` must be 3 (train, held_out, val) or 4 (..., test) positive numbers summing to 1, such as "
                f"[0.6, 0.2, 0.2]; got {fractions!r}"
            )
        if len(fractions) == 4 and test_split is not None:
            raise ValueError(f"`fractions` has a test part and `test_split` is {test_split!r}: give one test split, not both")
        if dataset == "augmented_digits" and test_split is not None:
            raise ValueError("`test_split` does not apply to dataset='augmented_digits' (one source); give `fractions` a 4th part")
        if isinstance(channels, bool) or channels not in (1, 3):
            raise ValueError(f"`channels` must be 1 (grey) or 3 (RGB), got {channels!r}")
        if max_examples is not None:
            _positive_int("max_examples", max_examples)
        copies = tuple(copies) if isinstance(copies, Sequence) and not isinstance(copies, str) else copies
        if not isinstance(copies, tuple) or any(isinstance(c, bool) or not isinstance(c, int) or c < 1 for c in copies):
            raise ValueError(f"`copies` must be ints >= 1, one per part of `fractions`, got {copies!r}")
        if dataset == "augmented_digits" and len(copies) != len(fractions):
            raise ValueError(f"`copies` must have one entry per part of `fractions` ({len(fractions)}), got {list(copies)}")
        if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not 0 <= strength <= 2:
            raise ValueError(f"`strength` must be a number in [0, 2], got {strength!r}")
        for name, value in (("image_size", image_size), ("batch_size", batch_size), ("eval_batch_size", eval_batch_size)):
            _positive_int(name, value)
        if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
            raise ValueError(f"`num_workers` must be an int >= 0, got {num_workers!r}")
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"`seed` must be an int >= 0, got {seed!r}")
        self.save_hyperparameters()
        self.source, self.split, self.test_split = dataset, split, test_split
        self.fractions, self.image_size, self.channels = fractions, image_size, channels
        self.max_examples, self.copies, self.strength = max_examples, copies, float(strength)
        self.batch_size, self.eval_batch_size, self.num_workers, self.seed = batch_size, eval_batch_size, num_workers, seed
        self.image_column, self.label_column = image_column, label_column
        self._splits: dict[str, TensorDataset] | None = None
        self._num_classes: int | None = None

    # -- data ----------------------------------------------------------------------------------
    @property
    def split_names(self) -> tuple[str, ...]:
        """The splits this DataModule serves: ``("train", "held_out", "val")`` plus ``"test"`` when configured."""
        return SPLITS if len(self.fractions) == 4 or self.test_split is not None else SPLITS[:3]

    @property
    def num_classes(self) -> int:
        """The number of classes (loads the data on first access)."""
        self._load()
        return self._num_classes  # type: ignore[return-value]

    def prepare_data(self) -> None:
        """Download (or read) the source once, on one process; the tensors are built in :meth:`setup`."""
        if self.source != "augmented_digits":
            load_image_dataset(self.source, self.split)

    def setup(self, stage: str | None = None) -> None:
        """Build the tensors of every split (once; later calls reuse them)."""
        self._load()

    def _tensors(self, ds: Any) -> tuple[TensorDataset, int]:
        return to_tensors(ds, self.image_size, channels=self.channels, image_column=self.image_column, label_column=self.label_column)

    def _load(self) -> None:
        if self._splits is not None:
            return
        names = self.split_names
        if self.source == "augmented_digits":
            parts = augmented_digits(self.copies, fractions=self.fractions, image_size=self.image_size, strength=self.strength,
                                     max_originals=self.max_examples, seed=self.seed)
            if self.channels == 3:
                parts = [TensorDataset(p.tensors[0].expand(-1, 3, -1, -1).contiguous(), p.tensors[1]) for p in parts]
            splits, num_classes = dict(zip(names, parts)), 10
        else:
            ds = load_image_dataset(self.source, self.split)
            if self.max_examples is not None:
                ds = ds.shuffle(seed=self.seed).select(range(min(self.max_examples, len(ds))))
            tensors, num_classes = self._tensors(ds)
            splits = dict(zip(names, split_dataset(tensors, self.fractions, seed=self.seed)))
            if self.test_split is not None:
                test = load_image_dataset(self.source, self.test_split)
                test_tensors, test_classes = self._tensors(test)
                if test_classes != num_classes:
                    raise ValueError(f"`test_split` {self.test_split!r} has {test_classes} classes, `split` {self.split!r} has {num_classes}")
                splits["test"] = test_tensors
        self._splits, self._num_classes = splits, int(num_classes)

    def dataset(self, name: str) -> TensorDataset:
        """The split ``name``: ``TensorDataset(images (N, channels, S, S) float, labels (N,) long)``.

        Raises:
            ValueError: ``name`` is not one of :attr:`split_names`.
        """
        if name not in self.split_names:
            raise ValueError(f"`name` must be one of this DataModule's splits {list(self.split_names)}, got {name!r}")
        self._load()
        return self._splits[name]  # type: ignore[index]

    def _loader(self, name: str, *, train: bool = False) -> DataLoader:
        data = self.dataset(name)
        if train:
            generator = torch.Generator().manual_seed(self.seed)
            return DataLoader(data, batch_size=self.batch_size, shuffle=True, generator=generator, num_workers=self.num_workers)
        return DataLoader(data, batch_size=self.eval_batch_size, shuffle=False, num_workers=self.num_workers)

    # -- loaders ---------------------------------------------------------------------------------
    def train_dataloader(self) -> DataLoader:
        """The ``train`` split, shuffled (seeded), ``batch_size`` per batch."""
        return self._loader("train", train=True)

    def held_out_dataloader(self) -> DataLoader:
        """The ``held_out`` split in order, ``eval_batch_size`` per batch: the search callbacks' data."""
        return self._loader("held_out")

    def val_dataloader(self) -> DataLoader:
        """The ``val`` split in order."""
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        """The ``test`` split in order.

        Raises:
            ValueError: no test split is configured (give ``fractions`` a fourth part or ``test_split``).
        """
        if "test" not in self.split_names:
            raise ValueError("ImageDataModule has no test split: give `fractions` a 4th part (e.g. [0.5, 0.2, 0.15, 0.15]) or `test_split`")
        return self._loader("test")

    def predict_dataloader(self) -> DataLoader:
        """The ``test`` split when configured, else ``val``, in order (batches are ``(images, labels)``)."""
        return self._loader("test" if "test" in self.split_names else "val")
