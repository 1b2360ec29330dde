"""Image-classification data through Hugging Face ``datasets``, as small in-memory tensors.

``load_image_dataset`` takes a Hub name, a directory written by ``Dataset.save_to_disk``, an image
folder (one sub-folder per class), or ``"digits"``: scikit-learn's handwritten digits (1,797 8×8
grey images, shipped inside the package, so it works offline). ``to_tensors`` resizes to a square
resolution and normalises; the demo and the tests then split the result.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

__all__ = ["digits_dataset", "gratings_dataset", "load_image_dataset", "split_dataset", "to_tensors"]


def _int(name: str, value: Any, minimum: int) -> int:
    # bool is an int subclass: True would silently mean 1.
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"`{name}` must be an int >= {minimum}, got {value!r}")
    return int(value)


def _looks_like_path(source: str) -> bool:
    return os.sep in source or source.startswith((".", "~")) or (os.altsep is not None and os.altsep in source)


def digits_dataset() -> Any:
    """scikit-learn's handwritten digits as a ``datasets.Dataset`` (columns ``image``: 8×8 PIL "L", ``label``: 0–9)."""
    from datasets import ClassLabel, Dataset, Features, Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.round(digits.images * (255 / 16)).astype(np.uint8)  # (1797, 8, 8), values 0..16 → 0..255
    features = Features({"image": Image(), "label": ClassLabel(names=[str(i) for i in range(10)])})
    return Dataset.from_dict({"image": list(images), "label": digits.target.tolist()}, features=features)


def load_image_dataset(source: str, split: str = "train") -> Any:
    """A ``datasets.Dataset`` of images and labels.

    Args:
        source: ``"digits"``; a directory saved with ``save_to_disk`` (a ``Dataset`` or a
            ``DatasetDict``); a directory of class sub-folders of images (the ``imagefolder``
            builder); or a Hugging Face Hub dataset name (needs network access or the local cache).
        split: the split to take from a ``DatasetDict`` or a Hub dataset.

    Raises:
        ValueError: when ``split`` is not one of the dataset's splits.
    """
    import datasets

    if not isinstance(source, str) or not source:
        raise ValueError(f"`source` must be 'digits', a directory or a Hugging Face dataset name, got {source!r}")
    if source == "digits":
        return digits_dataset()
    path = Path(source).expanduser()
    if path.is_file():
        raise ValueError(f"dataset source {source!r} is a file; give a directory (save_to_disk output or class "
                         "sub-folders of images), 'digits' or a Hugging Face dataset name")
    if not path.exists() and _looks_like_path(source):
        raise FileNotFoundError(f"dataset directory {source!r} does not exist")
    try:
        if path.is_dir():
            if (path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists() or (path / "state.json").exists():
                loaded = datasets.load_from_disk(str(path))
            else:
                loaded = datasets.load_dataset("imagefolder", data_dir=str(path))
        else:
            loaded = datasets.load_dataset(source)
    except (FileNotFoundError, ValueError, ConnectionError, OSError, datasets.exceptions.DatasetNotFoundError) as err:
        kind = "directory" if path.is_dir() else "Hugging Face dataset name (no local directory of that name)"
        raise ValueError(f"cannot load dataset {source!r} as a {kind}: {type(err).__name__}: {err}") from err
    if isinstance(loaded, datasets.DatasetDict):
        if split not in loaded:
            raise ValueError(f"`split` {split!r} is not in {source!r}; its splits are {sorted(loaded)!r}")
        loaded = loaded[split]
    return loaded


def _column(ds: Any, wanted: str | None, kind: str, names: tuple[str, ...]) -> str:
    import datasets

    if wanted is not None:
        if wanted not in ds.column_names:
            raise ValueError(f"`{kind}_column` {wanted!r} is not a column; columns: {ds.column_names!r}")
        return wanted
    feature_type = datasets.Image if kind == "image" else datasets.ClassLabel
    for name, feature in ds.features.items():
        if isinstance(feature, feature_type):
            return name
    for name in names:
        if name in ds.column_names:
            return name
    raise ValueError(f"no {kind} column found in {ds.column_names!r}; pass `{kind}_column`")


def to_tensors(
    ds: Any,
    image_size: int,
    *,
    channels: int = 3,
    image_column: str | None = None,
    label_column: str | None = None,
) -> tuple[TensorDataset, int]:
    """Images → ``(N, channels, image_size, image_size)`` float tensor, normalised per channel; labels → ``(N,)`` long.

    Grey images are repeated to 3 channels (and colour images averaged to 1) as ``channels`` asks;
    resizing is bilinear. Returns the dataset and the number of classes.
    """
    if isinstance(channels, bool) or channels not in (1, 3):
        raise ValueError(f"`channels` must be 1 or 3, got {channels!r}")
    image_size = _int("image_size", image_size, 1)
    if len(ds) == 0:
        raise ValueError("`ds` holds no examples; nothing to convert")
    image_col = _column(ds, image_column, "image", ("image", "img", "pixel_values"))
    label_col = _column(ds, label_column, "label", ("label", "labels", "target"))
    batches = []
    for image in ds[image_col]:
        array = np.asarray(image.convert("RGB") if channels == 3 else image.convert("L"), dtype=np.float32) / 255.0
        tensor = torch.from_numpy(array).reshape(array.shape[0], array.shape[1], channels).permute(2, 0, 1)
        batches.append(F.interpolate(tensor[None], size=(image_size, image_size), mode="bilinear", align_corners=False)[0])
    images = torch.stack(batches)
    mean, std = images.mean((0, 2, 3), keepdim=True), images.std((0, 2, 3), keepdim=True).clamp_min(1e-6)
    labels = torch.tensor(ds[label_col], dtype=torch.long)
    feature = ds.features[label_col]
    num_classes = feature.num_classes if hasattr(feature, "num_classes") else int(labels.max()) + 1
    return TensorDataset((images - mean) / std, labels), num_classes


def split_dataset(ds: TensorDataset, fractions: tuple[float, ...], seed: int = 0) -> list[TensorDataset]:
    """Shuffle (seeded) and split into consecutive parts of the given fractions (summing to 1).

    Raises:
        ValueError: ``fractions`` empty, not finite positive numbers summing to 1, or a part would
            be empty; ``seed`` not an int >= 0.
    """
    if not isinstance(fractions, Sequence) or isinstance(fractions, str) or not fractions or any(
            isinstance(f, bool) or not isinstance(f, (int, float, np.integer, np.floating)) or not math.isfinite(f) or f <= 0
            for f in fractions) or abs(sum(fractions) - 1) > 1e-9:
        raise ValueError(f"`fractions` must be positive finite numbers that sum to 1, such as (0.6, 0.2, 0.2); got {fractions!r}")
    seed = _int("seed", seed, 0)
    n = len(ds)
    bounds = np.round(np.cumsum((0,) + tuple(fractions)) * n).astype(int)
    sizes = np.diff(bounds).tolist()
    if min(sizes) < 1:
        raise ValueError(f"`fractions` {tuple(fractions)} of {n} examples leave an empty part (sizes {sizes}); "
                         "use fewer or larger parts, or more data")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return [TensorDataset(*(t[order[a:b]] for t in ds.tensors)) for a, b in zip(bounds[:-1], bounds[1:])]


def gratings_dataset(
    n: int, *, num_classes: int = 4, image_size: int = 32, noise: float = 0.5, seed: int = 0
) -> TensorDataset:
    """``n`` RGB images ``(n, 3, S, S)`` of sinusoidal gratings; the label is the orientation bin.

    Frequency, phase and colour vary per image and Gaussian noise (std ``noise``) is added, so the
    task needs a real feature extractor but is learned in a few CPU epochs.
    """
    n = _int("n", n, 1)
    num_classes = _int("num_classes", num_classes, 2)
    image_size = _int("image_size", image_size, 1)
    seed = _int("seed", seed, 0)
    if isinstance(noise, bool) or not isinstance(noise, (int, float)) or not math.isfinite(noise) or noise < 0:
        raise ValueError(f"`noise` must be a finite number >= 0 (a standard deviation), got {noise!r}")
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(num_classes, (n,), generator=g)
    angle = (labels.float() + 0.3 * torch.rand(n, generator=g) - 0.15) * math.pi / num_classes
    freq = 0.25 + 0.35 * torch.rand(n, generator=g)
    phase = 2 * math.pi * torch.rand(n, generator=g)
    coords = torch.arange(image_size, dtype=torch.float32)
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    proj = torch.cos(angle)[:, None, None] * xx + torch.sin(angle)[:, None, None] * yy
    wave = torch.sin(freq[:, None, None] * proj + phase[:, None, None])  # (n, S, S)
    colour = 0.5 + torch.rand(n, 3, generator=g)
    images = colour[:, :, None, None] * wave[:, None] + noise * torch.randn(n, 3, image_size, image_size, generator=g)
    return TensorDataset(images, labels)
