"""ImageDataModule: named, seeded, disjoint splits from every kind of source; split names resolved for callbacks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch.utils.data import DataLoader

from lightning_nas.callbacks._checks import datamodule_splits, resolve_split
from lightning_nas.datamodule import ImageDataModule


def _rows(ds) -> set[bytes]:
    return {x.numpy().tobytes() for x in ds.tensors[0]}


def test_digits_splits_are_seeded_disjoint_and_shaped():
    dm = ImageDataModule("digits", fractions=(0.5, 0.3, 0.2), image_size=8, channels=1, max_examples=100, batch_size=16, seed=3)
    dm.setup("fit")
    assert dm.num_classes == 10 and dm.split_names == ("train", "held_out", "val")
    sizes = [len(dm.dataset(name)) for name in dm.split_names]
    assert sizes == [50, 30, 20]
    parts = [_rows(dm.dataset(name)) for name in dm.split_names]
    assert not (parts[0] & parts[1]) and not (parts[0] & parts[2]) and not (parts[1] & parts[2])
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (16, 1, 8, 8) and x.dtype == torch.float32 and y.dtype == torch.long
    # held_out is served in order (the callbacks need the same batches every time)
    first = [b[1] for b in dm.held_out_dataloader()]
    assert all(torch.equal(a, b) for a, b in zip(first, [b[1] for b in dm.held_out_dataloader()]))
    assert torch.equal(torch.cat(first), dm.dataset("held_out").tensors[1])
    # the same seed gives the same split, another seed another one
    again = ImageDataModule("digits", fractions=(0.5, 0.3, 0.2), image_size=8, channels=1, max_examples=100, seed=3)
    assert torch.equal(again.dataset("val").tensors[0], dm.dataset("val").tensors[0])
    other = ImageDataModule("digits", fractions=(0.5, 0.3, 0.2), image_size=8, channels=1, max_examples=100, seed=4)
    assert not torch.equal(other.dataset("val").tensors[0], dm.dataset("val").tensors[0])
    with pytest.raises(ValueError, match="no test split"):
        dm.test_dataloader()
    assert len(dm.predict_dataloader().dataset) == 20  # val when there is no test split


def test_four_fractions_give_a_test_split_and_rgb():
    dm = ImageDataModule("digits", fractions=[0.4, 0.2, 0.2, 0.2], image_size=6, channels=3, max_examples=50)
    assert dm.split_names == ("train", "held_out", "val", "test")
    x, _ = next(iter(dm.test_dataloader()))
    assert x.shape[1:] == (3, 6, 6) and len(dm.dataset("test")) == 10
    assert datamodule_splits(dm) == ["held_out", "predict", "test", "train", "val"]


def test_augmented_digits_parts_and_copies():
    dm = ImageDataModule("augmented_digits", copies=(1, 2, 3), image_size=8, max_examples=30, seed=0)
    sizes = [len(dm.dataset(n)) for n in dm.split_names]
    assert sizes == [18 * 1, 6 * 2, 6 * 3] and dm.num_classes == 10
    assert dm.dataset("train").tensors[0].shape[1:] == (1, 8, 8)


def test_image_folder_and_saved_dataset(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for label in ("cat", "dog"):
        (tmp_path / "folder" / label).mkdir(parents=True)
        for i in range(10):
            Image.fromarray(rng.integers(0, 255, (12, 12, 3), dtype=np.uint8)).save(tmp_path / "folder" / label / f"{i}.png")
    dm = ImageDataModule(str(tmp_path / "folder"), image_size=8, channels=3, fractions=(0.5, 0.25, 0.25))
    assert dm.num_classes == 2 and sum(len(dm.dataset(n)) for n in dm.split_names) == 20

    from lightning_nas.data import digits_dataset

    import datasets

    digits = digits_dataset()
    datasets.DatasetDict({"train": digits.select(range(40)), "test": digits.select(range(40, 52))}).save_to_disk(str(tmp_path / "saved"))
    saved = ImageDataModule(str(tmp_path / "saved"), test_split="test", image_size=8, fractions=(0.5, 0.25, 0.25))
    assert saved.split_names[-1] == "test" and len(saved.dataset("test")) == 12 and len(saved.dataset("train")) == 20


@pytest.mark.parametrize("kwargs, message", [
    ({"fractions": (0.5, 0.5)}, "`fractions` must be 3"),
    ({"fractions": (0.6, 0.3, 0.2)}, "summing to 1"),
    ({"channels": 2}, "`channels` must be 1"),
    ({"batch_size": 0}, "`batch_size` must be an int >= 1"),
    ({"copies": (1, 2)}, "`copies` must have one entry per part"),
    ({"dataset": "augmented_digits", "test_split": "test"}, "`test_split` does not apply"),
    ({"dataset": "digits", "fractions": (0.4, 0.2, 0.2, 0.2), "test_split": "test"}, "give one test split"),
    ({"dataset": ""}, "`dataset` must be"),
])
def test_bad_arguments_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ImageDataModule(**kwargs)
    with pytest.raises(ValueError, match="`name` must be one of"):
        ImageDataModule("digits", max_examples=30).dataset("validation")


def test_resolve_split_passes_loaders_and_names_what_is_missing():
    dm = ImageDataModule("digits", image_size=8, max_examples=40)
    loader = DataLoader(dm.dataset("val"))
    assert resolve_split(loader, None, "X", "held_out") is loader

    class Trainer:
        datamodule = dm

    resolved = resolve_split("held_out", Trainer(), "X", "held_out")
    assert isinstance(resolved, DataLoader) and resolved.dataset is dm.dataset("held_out")
    assert resolve_split("held_out", Trainer(), "X", "arch_data", dataset=True) is dm.dataset("held_out")
    with pytest.raises(MisconfigurationException, match=r"X: `held_out='nope'`: ImageDataModule has no split 'nope'.*\['held_out', 'predict'"):
        resolve_split("nope", Trainer(), "X", "held_out")
    Trainer.datamodule = None
    with pytest.raises(MisconfigurationException, match="the trainer has no datamodule"):
        resolve_split("held_out", Trainer(), "X", "held_out")
