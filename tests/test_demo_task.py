"""The demo's task: digits split on the originals, then augmented (seeded, no leakage between parts)."""

from __future__ import annotations

import pytest
import torch

from lightning_nas.data import augment_digits, augmented_digits


def _originals(n=12):
    g = torch.Generator().manual_seed(0)
    return torch.rand(n, 8, 8, generator=g), torch.arange(n) % 10


def test_augment_digits_shapes_order_and_seed():
    images, labels = _originals()
    x, y = augment_digits(images, labels, 3, image_size=20, seed=5)
    assert x.shape == (36, 1, 20, 20) and x.dtype == torch.float32 and torch.isfinite(x).all()
    assert torch.equal(y, labels.repeat_interleave(3))  # image-major: example i·copies + k is copy k of image i
    again, _ = augment_digits(images, labels, 3, image_size=20, seed=5)
    assert torch.equal(x, again)
    other, _ = augment_digits(images, labels, 3, image_size=20, seed=6)
    assert not torch.equal(x, other)
    # Copies of one image differ from each other (the distortions are drawn per copy).
    assert (x[0] - x[1]).abs().mean() > 0.05


def test_augment_digits_strength_zero_keeps_the_digit_and_the_clutter_comes_from_the_same_images():
    images, labels = _originals(4)
    plain, _ = augment_digits(images, labels, 2, image_size=16, strength=0.0, clutter=0, noise=0.0, seed=0)
    # No distortion, no noise: the two copies differ only by contrast and background (an affine map of each other).
    a, b = plain[0].flatten(), plain[1].flatten()
    fit = torch.linalg.lstsq(torch.stack([a, torch.ones_like(a)], 1), b[:, None]).solution
    assert (torch.stack([a, torch.ones_like(a)], 1) @ fit - b[:, None]).abs().max() < 1e-4
    # One blank image among blanks: clutter can only come from the images given, so nothing appears.
    blank = torch.zeros(3, 8, 8)
    x, _ = augment_digits(blank, torch.zeros(3, dtype=torch.long), 4, image_size=16, clutter=3, noise=0.0, seed=1)
    assert (x.amax((1, 2, 3)) - x.amin((1, 2, 3))).abs().max() < 1e-6  # flat backgrounds only


def test_augmented_digits_splits_on_originals_and_standardises_on_train():
    train, held, val = augmented_digits((2, 3, 4), image_size=12, max_originals=50, seed=0)
    assert [len(p) for p in (train, held, val)] == [30 * 2, 10 * 3, 10 * 4]
    assert train.tensors[0].shape[1:] == (1, 12, 12)
    x = train.tensors[0]
    assert abs(float(x.mean())) < 1e-4 and abs(float(x.std()) - 1) < 1e-3  # train statistics only
    again = augmented_digits((2, 3, 4), image_size=12, max_originals=50, seed=0)
    assert all(torch.equal(p.tensors[0], q.tensors[0]) for p, q in zip((train, held, val), again))


def test_no_original_in_two_parts():
    # Without any distortion or noise, copies of one original are identical up to contrast/background; compare
    # the originals themselves through the un-augmented split (same seed, same split as augmented_digits).
    from sklearn.datasets import load_digits

    from lightning_nas.data import split_dataset

    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32)
    parts = split_dataset(torch.utils.data.TensorDataset(images, torch.arange(len(images))), (0.6, 0.2, 0.2), seed=3)
    ids = [set(p.tensors[1].tolist()) for p in parts]
    assert not (ids[0] & ids[1]) and not (ids[0] & ids[2]) and not (ids[1] & ids[2])
    # augmented_digits uses exactly that split: its part sizes follow it, copies per original.
    sizes = [len(p) for p in augmented_digits((1, 2, 3), image_size=8, strength=0.0, clutter=0, seed=3)]
    assert sizes == [len(ids[0]), 2 * len(ids[1]), 3 * len(ids[2])]


@pytest.mark.parametrize("kwargs, match", [
    (dict(copies=0), "`copies` must be an int >= 1"),
    (dict(copies=2, strength=-1), "`strength` must be a finite number"),
    (dict(copies=2, noise=float("nan")), "`noise` must be a finite number"),
    (dict(copies=2, image_size=2), "`image_size` must be an int >= 4"),
    (dict(copies=True), "`copies` must be an int >= 1"),
])
def test_augment_digits_refuses_bad_arguments(kwargs, match):
    images, labels = _originals(3)
    with pytest.raises(ValueError, match=match):
        augment_digits(images, labels, **kwargs)


def test_augmented_digits_refuses_mismatched_parts():
    with pytest.raises(ValueError, match="one entry per part"):
        augmented_digits((2, 2), fractions=(0.6, 0.2, 0.2))
    with pytest.raises(ValueError, match="`copies` must be a sequence"):
        augmented_digits(3)
