from __future__ import annotations

import functools
from pathlib import Path

import pytest
import torch

from lightning_nas.data import digits_dataset, split_dataset, to_tensors
from lightning_nas.evaluators.training import EpochShuffle, TrainingEvaluator
from lightning_nas.spaces.mobilenet import mobilenet_supernet
from lightning_nas.strategies.driver import Budget, run_search
from lightning_nas.strategies.random_search import RandomSearch

torch.set_num_threads(1)
BUILD = functools.partial(mobilenet_supernet, num_classes=10, stem_channels=8, stages=((8, 1, 1), (16, 2, 2)),
                          expand_ratios=(2, 3), kernel_sizes=(3,), head_channels=32)


@pytest.fixture(scope="module")
def digits():
    ds, classes = to_tensors(digits_dataset(), 16)
    small, _ = split_dataset(ds, (0.5, 0.5), seed=0)
    return split_dataset(small, (0.6, 0.4), seed=1)


def evaluator(digits, **kwargs) -> TrainingEvaluator:
    train, val = digits
    return TrainingEvaluator(BUILD, train, val, num_classes=10, full_fidelity=3, **kwargs)


def test_resumed_training_ends_where_training_from_scratch_does(digits, tmp_path: Path) -> None:
    arch = BUILD().space.sample(0)
    scratch = evaluator(digits)
    resuming = evaluator(digits, checkpoint_dir=tmp_path)
    assert resuming.resumes and not scratch.resumes
    low = resuming(arch, 1)
    assert low == scratch(arch, 1)
    resumed = resuming(arch, 3)
    assert resumed == scratch(arch, 3)
    assert resumed["valid_loss"] < low["valid_loss"] and resumed["params"] > 0  # it learns
    # A shorter evaluation later starts from scratch and leaves the longer checkpoint in place.
    assert resuming(arch, 1) == low
    assert len(list(tmp_path.glob("*.ckpt"))) == 1 and not list(tmp_path.glob(".*.tmp"))


def test_in_a_search(digits) -> None:
    space = BUILD().space
    results = run_search(RandomSearch(space, seed=0), evaluator(digits), objective="valid_accuracy",
                         budget=Budget(evaluations=2))
    assert len(results) == 2 and all(0.0 <= r.metrics["valid_accuracy"] <= 1.0 for r in results.done)
    assert all(r.fidelity == 3 for r in results.done)


def test_epoch_shuffle_depends_on_seed_and_epoch_only() -> None:
    a, b = EpochShuffle(10, seed=1), EpochShuffle(10, seed=1)
    assert list(a) == list(b) and sorted(a) == list(range(10))
    first = list(a)
    a.set_epoch(1)
    assert list(a) != first
    b.set_epoch(1)
    assert list(a) == list(b)


def test_bad_arguments(digits) -> None:
    ev = evaluator(digits)
    arch = BUILD().space.sample(0)
    with pytest.raises(ValueError, match=r"`fidelity` must be whole epochs in \[1, 3\]"):
        ev(arch, 4)
    with pytest.raises(ValueError, match=r"`fidelity` must be whole epochs"):
        ev(arch, 1.5)
    with pytest.raises(ValueError, match="not a candidate"):
        ev({**arch, "stage1.depth": 7}, 1)
    with pytest.raises(ValueError, match="`full_fidelity` must be an int"):
        TrainingEvaluator(BUILD, digits[0], digits[1], num_classes=10, full_fidelity=0)


class Planted:
    """Unpickling this creates ``marker``: stands for any code planted in a checkpoint."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_a_planted_checkpoint_is_never_unpickled(digits, tmp_path: Path) -> None:
    from lightning_nas.evaluators.training import _tag

    arch = BUILD().space.sample(0)
    marker = tmp_path / "pwned"
    torch.save({"epoch": 1, "state_dict": {}, "payload": Planted(marker)}, tmp_path / f"{_tag(arch)}.ckpt")
    with pytest.raises(ValueError, match=r"checkpoint '.*\.ckpt' is not a training checkpoint this evaluator can "
                                         r"load safely \(it holds objects other than tensors.*delete it, or give another `checkpoint_dir`"):
        evaluator(digits, checkpoint_dir=tmp_path)(arch, 2)
    assert not marker.exists()


def test_bad_settings_are_refused(digits) -> None:
    for kwargs, message in ((dict(num_classes=1), "`num_classes` must be an int >= 2"),
                            (dict(batch_size=0), "`batch_size` must be an int >= 1"),
                            (dict(lr=float("nan")), "`lr` must be a finite number > 0"),
                            (dict(weight_decay=-1.0), "`weight_decay` must be a finite number >= 0")):
        with pytest.raises(ValueError, match=message):
            TrainingEvaluator(BUILD, *digits, **{"num_classes": 10, **kwargs})
