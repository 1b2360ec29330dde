"""Data loading through `datasets`: the shipped digits, a saved dataset and an image folder made here."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from lightning_nas.data import digits_dataset, load_image_dataset, split_dataset, to_tensors


def test_digits_offline_and_tensors():
    ds = load_image_dataset("digits")
    assert len(ds) == 1797 and ds.features["label"].num_classes == 10
    tensors, num_classes = to_tensors(ds.select(range(50)), 16)
    images, labels = tensors.tensors
    assert images.shape == (50, 3, 16, 16) and labels.dtype == torch.long and num_classes == 10
    assert images.mean((0, 2, 3)).abs().max() < 1e-4  # normalised per channel


def test_saved_dataset_dict_and_split_errors(tmp_path):
    from datasets import DatasetDict

    DatasetDict({"train": digits_dataset().select(range(20))}).save_to_disk(str(tmp_path / "saved"))
    assert len(load_image_dataset(str(tmp_path / "saved"))) == 20
    with pytest.raises(ValueError, match="`split` 'test' is not in .*'train'"):
        load_image_dataset(str(tmp_path / "saved"), split="test")


def test_image_folder(tmp_path):
    rng = np.random.default_rng(0)
    for cls in ("cat", "dog"):
        (tmp_path / "images" / cls).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 255, (12, 10, 3), dtype=np.uint8)).save(tmp_path / "images" / cls / f"{i}.png")
    ds = load_image_dataset(str(tmp_path / "images"))
    tensors, num_classes = to_tensors(ds, 8, channels=1)
    assert tensors.tensors[0].shape == (6, 1, 8, 8) and num_classes == 2
    assert sorted(tensors.tensors[1].tolist()) == [0, 0, 0, 1, 1, 1]


def test_split_is_seeded_and_disjoint():
    ds = torch.utils.data.TensorDataset(torch.arange(100).float(), torch.arange(100))
    a, b, c = split_dataset(ds, (0.6, 0.2, 0.2), seed=1)
    assert (len(a), len(b), len(c)) == (60, 20, 20)
    seen = torch.cat([a.tensors[1], b.tensors[1], c.tensors[1]])
    assert sorted(seen.tolist()) == list(range(100))
    assert torch.equal(split_dataset(ds, (0.6, 0.2, 0.2), seed=1)[1].tensors[1], b.tensors[1])
    with pytest.raises(ValueError, match="sum to 1"):
        split_dataset(ds, (0.5, 0.2))


def test_bad_columns():
    ds = digits_dataset().select(range(4))
    with pytest.raises(ValueError, match="`image_column` 'pixels' is not a column"):
        to_tensors(ds, 8, image_column="pixels")


# -- bad arguments are refused by name, before any work ----------------------------------------
from lightning_nas.data import gratings_dataset  # noqa: E402


@pytest.mark.parametrize(("kwargs", "name"), [
    ({"n": -1}, "`n`"), ({"n": True}, "`n`"), ({"n": 4, "num_classes": 0}, "`num_classes`"),
    ({"n": 4, "image_size": 0}, "`image_size`"), ({"n": 4, "noise": float("nan")}, "`noise`"),
    ({"n": 4, "noise": -1.0}, "`noise`"), ({"n": 4, "seed": "a"}, "`seed`"),
])
def test_gratings_arguments(kwargs, name):
    with pytest.raises(ValueError, match=name):
        gratings_dataset(**kwargs)


@pytest.mark.parametrize("fractions", [(0.5, 0.6), (float("nan"), 1.0), (-0.5, 1.5), (True,), (), "1", (0.9, 0.1)])
def test_split_fractions(fractions):
    data = torch.utils.data.TensorDataset(torch.arange(4.0))
    with pytest.raises(ValueError, match="`fractions`"):
        split_dataset(data, fractions)


def test_split_seed():
    with pytest.raises(ValueError, match="`seed`"):
        split_dataset(torch.utils.data.TensorDataset(torch.arange(10.0)), (0.5, 0.5), seed="a")


@pytest.mark.parametrize("image_size", [True, 15.5, 0])
def test_to_tensors_image_size(image_size):
    with pytest.raises(ValueError, match="`image_size`"):
        to_tensors(digits_dataset().select(range(2)), image_size)


def test_missing_empty_and_file_sources_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="no_such_dir"):
        load_image_dataset(str(tmp_path / "no_such_dir"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="empty"):
        load_image_dataset(str(tmp_path / "empty"))
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ValueError, match="notes.txt.*is a file"):
        load_image_dataset(str(tmp_path / "notes.txt"))


def test_hub_names_are_not_taken_for_paths(monkeypatch):
    import datasets

    seen = []

    def fake_load(name, *args, **kwargs):
        seen.append(name)
        raise datasets.exceptions.DatasetNotFoundError(f"Dataset '{name}' doesn't exist on the Hub")

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    with pytest.raises(ValueError, match="cannot load dataset 'someone/cifar_like'.*Hugging Face dataset name"):
        load_image_dataset("someone/cifar_like")
    assert seen == ["someone/cifar_like"]
