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

__all__ = ["augment_digits", "augmented_digits", "digits_dataset", "gratings_dataset", "load_image_dataset", "split_dataset", "to_tensors"]


def _int(name: str, value: Any, minimum: int) -> int:
    # bool is an int subclass: True would silently mean 1.
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"`{name}` must be an int >= {minimum}, got {value!r}")
    return int(value)


def _looks_like_path(source: str) -> bool:
    # "owner/name" is a Hub dataset name, so one separator alone does not make a path.
    return (os.path.isabs(source) or source.startswith((".", "~")) or source.count("/") >= 2
            or (os.sep != "/" and os.sep in source))


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


# ---------------------------------------------------------------------------------------------
# Harder digits: seeded augmentation, split on the originals first
# ---------------------------------------------------------------------------------------------
def _finite(name: str, value: Any, low: float, high: float = math.inf) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) or not math.isfinite(value) \
            or not low <= value <= high:
        raise ValueError(f"`{name}` must be a finite number in [{low}, {high}], got {value!r}")
    return float(value)


def augment_digits(
    images: torch.Tensor,
    labels: torch.Tensor,
    copies: int,
    *,
    image_size: int = 20,
    strength: float = 1.0,
    clutter: int = 2,
    noise: float = 0.15,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``copies`` randomly distorted copies of every grey image, drawn from ``seed`` alone.

    Each copy gets its own stroke thickness (erosion or dilation), affine warp (rotation up to
    ±30°·strength, digit size 50–85 % of the canvas, shear and aspect change, a shift that keeps
    the digit mostly on the canvas), elastic distortion (a smooth random displacement field),
    up to ``clutter`` fragments of *other images of the same* ``images`` (so augmenting disjoint
    splits separately never leaks an image across them), contrast and background changes and
    Gaussian pixel noise.

    Args:
        images: ``(N, H, W)`` grey images with values in ``[0, 1]`` (e.g. scikit-learn's 8×8 digits / 16).
        labels: ``(N,)`` class indices.
        copies: distorted copies per image.
        image_size: ``S``, the side of the square output.
        strength: scales every geometric distortion (0: only the resize, noise and clutter).
        clutter: the most fragments of other digits pasted into one copy.
        noise: standard deviation of the Gaussian pixel noise (images span about ``[0, 1]``).
        seed: the only source of randomness.

    Returns:
        ``(images, labels)``: ``(N · copies, 1, S, S)`` float and ``(N · copies,)`` long, ordered
        image-major: example ``i · copies + k`` is copy ``k`` of image ``i``.
    """
    if not isinstance(images, torch.Tensor) or images.dim() != 3 or images.shape[0] == 0:
        raise ValueError(f"`images` must be a non-empty (N, H, W) tensor, got {getattr(images, 'shape', type(images).__name__)}")
    labels = torch.as_tensor(labels, dtype=torch.long)
    if labels.shape != images.shape[:1]:
        raise ValueError(f"`labels` must have shape ({images.shape[0]},), got {tuple(labels.shape)}")
    copies = _int("copies", copies, 1)
    size = _int("image_size", image_size, 4)
    strength = _finite("strength", strength, 0.0, 2.0)
    clutter = _int("clutter", clutter, 0)
    noise = _finite("noise", noise, 0.0)
    g = torch.Generator().manual_seed(_int("seed", seed, 0))
    n, m = images.shape[0], images.shape[0] * copies

    def uniform(low: float, high: float, *shape: int) -> torch.Tensor:
        return low + (high - low) * torch.rand(shape or (m,), generator=g)

    # A smooth, finer source (32 px) for the morphology; stroke thickness: erode, keep, dilate, dilate twice.
    source = F.interpolate(images.float()[:, None], size=(32, 32), mode="bilinear", align_corners=False)
    thickness = torch.randint(-1, 3, (m,), generator=g) if strength > 0 else torch.zeros(m, dtype=torch.long)
    dilated = F.max_pool2d(source, 3, 1, 1)
    variants = torch.stack([-F.max_pool2d(-source, 3, 1, 1), source, dilated, F.max_pool2d(dilated, 3, 1, 1)])
    src = variants[thickness + 1, torch.arange(m) // copies]

    # Forward affine map of the digit onto the canvas (normalised coordinates): p_out = M p_in + t.
    angle = uniform(-1, 1) * math.radians(30) * strength
    fraction = uniform(max(0.85 - 0.35 * strength, 0.4), 0.85)
    aspect = torch.exp(uniform(-1, 1) * 0.2 * strength)
    shear = uniform(-1, 1) * 0.3 * strength
    cos, sin = torch.cos(angle), torch.sin(angle)
    rotation = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)
    shape = torch.zeros(m, 2, 2)
    shape[:, 0, 0], shape[:, 0, 1], shape[:, 1, 1] = aspect, shear, 1 / aspect
    forward_map = fraction[:, None, None] * rotation @ shape
    room = (1 - fraction).clamp_min(0) * min(strength, 1.0)
    shift = torch.stack([uniform(-1, 1), uniform(-1, 1)], -1) * room[:, None]
    inverse = torch.linalg.inv(forward_map)
    theta = torch.cat([inverse, -(inverse @ shift[:, :, None])], 2)
    grid = F.affine_grid(theta, [m, 1, size, size], align_corners=False)
    # Elastic distortion: a 4×4 random displacement field, smoothly upsampled.
    field = torch.randn(m, 2, 4, 4, generator=g) * 0.06 * strength
    grid = grid + F.interpolate(field, size=(size, size), mode="bicubic", align_corners=False).permute(0, 2, 3, 1)
    canvas = F.grid_sample(src, grid, mode="bilinear", padding_mode="zeros", align_corners=False)

    # Clutter: fragments of other images of the same set, each seen through a random window.
    coords = (torch.arange(size, dtype=torch.float32) + 0.5) / size * 2 - 1
    for _ in range(clutter):
        present = torch.rand(m, generator=g) < 0.6
        other = (torch.arange(m) // copies + torch.randint(1, max(n, 2), (m,), generator=g)) % n
        frag_theta = torch.zeros(m, 2, 3)
        scale = uniform(0.9, 1.6)
        frag_theta[:, 0, 0], frag_theta[:, 1, 1] = scale, scale
        frag_theta[:, :, 2] = torch.stack([uniform(-1, 1), uniform(-1, 1)], -1)
        fragment = F.grid_sample(source[other], F.affine_grid(frag_theta, [m, 1, size, size], align_corners=False),
                                 mode="bilinear", padding_mode="zeros", align_corners=False)
        centre, half = uniform(-1, 1, m, 2), uniform(0.15, 0.35, m, 1)
        window = ((coords[None, :, None] - centre[:, None, None, 1]).abs() < half[:, :, None]) & \
                 ((coords[None, None, :] - centre[:, None, None, 0]).abs() < half[:, :, None])
        fragment = fragment * window[:, None] * uniform(0.3, 0.8)[:, None, None, None] * present[:, None, None, None]
        canvas = torch.maximum(canvas, fragment)

    contrast, background = uniform(0.6, 1.0), uniform(0.0, 0.25)
    out = background[:, None, None, None] + contrast[:, None, None, None] * canvas
    out = out + noise * torch.randn(out.shape, generator=g)
    return out, labels.repeat_interleave(copies)


def augmented_digits(
    copies: Sequence[int] = (8, 16, 16),
    *,
    fractions: Sequence[float] = (0.6, 0.2, 0.2),
    image_size: int = 20,
    strength: float = 1.0,
    clutter: int = 2,
    noise: float = 0.15,
    max_originals: int | None = None,
    seed: int = 0,
) -> list[TensorDataset]:
    """scikit-learn's digits, split on the ORIGINAL images, then each part augmented on its own.

    The 1,797 8×8 digits are shuffled and split by ``fractions`` (seeded) before any
    augmentation, so no original (nor a fragment of one, used as clutter) appears in two parts;
    each part then gets ``copies[i]`` distorted copies of each of its images
    (:func:`augment_digits`, its own seed derived from ``seed``). Every part is standardised with
    the first part's pixel mean and standard deviation (no statistics from the evaluation parts).
    Works offline: the digits ship inside scikit-learn.

    Args:
        copies: augmented copies per original, one entry per part.
        fractions: split of the originals, as in :func:`split_dataset`.
        image_size: as in :func:`augment_digits`.
        strength: as in :func:`augment_digits`.
        clutter: as in :func:`augment_digits`.
        noise: as in :func:`augment_digits`.
        max_originals: use only this many originals (seeded choice; quick looks and tests).
        seed: seeds the split and every augmentation.

    Returns:
        One ``TensorDataset(images (N_i · copies[i], 1, S, S) float, labels (N_i · copies[i],) long)``
        per part, image-major as in :func:`augment_digits`: the first ``copies[i] · (N_i // 2)``
        examples and the rest come from disjoint originals (split halves for a reliability check).
    """
    from sklearn.datasets import load_digits

    if not isinstance(copies, Sequence) or isinstance(copies, str) or not copies:
        raise ValueError(f"`copies` must be a sequence of ints >= 1, one per part, got {copies!r}")
    copies = [_int("copies", c, 1) for c in copies]
    if not isinstance(fractions, Sequence) or len(fractions) != len(copies):
        raise ValueError(f"`fractions` must have one entry per part ({len(copies)} in `copies`), got {fractions!r}")
    seed = _int("seed", seed, 0)
    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32) / 16.0
    labels = torch.tensor(digits.target, dtype=torch.long)
    if max_originals is not None:
        max_originals = _int("max_originals", max_originals, len(copies))
        keep = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))[:max_originals]
        images, labels = images[keep], labels[keep]
    parts = split_dataset(TensorDataset(images, labels), tuple(fractions), seed=seed)
    out = []
    for index, (part, c) in enumerate(zip(parts, copies)):
        x, y = augment_digits(*part.tensors, c, image_size=image_size, strength=strength, clutter=clutter, noise=noise,
                              seed=seed * 1009 + index + 1)
        out.append((x, y))
    mean, std = out[0][0].mean(), out[0][0].std().clamp_min(1e-6)
    return [TensorDataset((x - mean) / std, y) for x, y in out]
