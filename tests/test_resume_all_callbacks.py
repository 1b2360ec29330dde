"""Every callback of the package checkpointed and resumed through Lightning's own ``weights_only`` loading.

Lightning 2.6 resumes with ``torch.load(weights_only=None)``, which is ``weights_only=True`` since
torch 2.6: a checkpoint resumes only if every callback state is plain types. Three runs cover every
callback (the DARTS and DrNAS relaxations exclude each other, and the BINAS callbacks need a staged
space): each is checkpointed, loaded with ``torch.load(weights_only=True)``, resumed by a fresh
Trainer with fresh callbacks, and every restored callback state must equal the saved one.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from torch.utils.data import DataLoader, TensorDataset

import lightning_nas.callbacks as callbacks_module
from lightning_nas.callbacks import (
    BlockPerformanceEstimation,
    ContributionEstimation,
    DartsSearch,
    DrNASSearch,
    LatencyProfiler,
    PerturbationSelection,
    UniformSampling,
)
from lightning_nas.spaces import mobilenet_supernet

sys.path.insert(0, str(Path(__file__).parent / "callbacks"))
from darts_models import TinySearch, tiny_data  # noqa: E402

pytestmark = [
    pytest.mark.filterwarnings("ignore:PerturbationSelection. 1 decisions were still open"),
    pytest.mark.filterwarnings("ignore:Be aware that when using `ckpt_path`"),
]

# The callbacks the runs below resume; a callback added to the package must join one of them.
COVERED = {UniformSampling, ContributionEstimation, LatencyProfiler, BlockPerformanceEstimation, DartsSearch, DrNASSearch,
           PerturbationSelection}


def gratings_dataset(n: int, seed: int) -> TensorDataset:
    """Noisy copies of one random prototype image per class: learnable in a few steps."""
    prototypes = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(1234))
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(4, (n,), generator=g)
    return TensorDataset(prototypes[labels] + 0.5 * torch.randn(n, 3, 8, 8, generator=g), labels)


class SupernetClassifier(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.supernet = mobilenet_supernet(
            num_classes=4, stem_channels=8, stages=((8, 1, 2), (8, 2, 1)), expand_ratios=(1, 2), kernel_sizes=(3,), head_channels=8
        )

    def forward(self, x):
        return self.supernet(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return torch.nn.functional.cross_entropy(self(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_acc", (self(x).argmax(1) == y).float().mean())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)


class StateProbe(Callback):
    """Records every lightning_nas callback's state when training starts: right after the restore."""

    def __init__(self) -> None:
        self.states: dict[str, Any] = {}

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        for cb in trainer.callbacks:
            if type(cb).__module__.startswith("lightning_nas."):
                self.states[cb.state_key] = copy.deepcopy(cb.state_dict())


def assert_same(a: Any, b: Any, where: str = "state") -> None:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        assert isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), f"{where}: keys {sorted(map(str, a))} != {sorted(map(str, b))}"
        for k in a:
            assert_same(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert type(a) is type(b) and a == b, f"{where}: {a!r} != {b!r}"


def trainer(tmp_path, callbacks, max_epochs, **kwargs):
    return pl.Trainer(
        max_epochs=max_epochs, accelerator="cpu", devices=1, callbacks=callbacks, logger=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0, default_root_dir=tmp_path, **kwargs,
    )


def resume_and_compare(tmp_path, checkpoint: Path, make_model, make_callbacks, max_epochs, *fit_args) -> list[Callback]:
    """Load ``checkpoint`` as Lightning does, resume it, and check every restored callback state."""
    raw = torch.load(checkpoint, weights_only=True)  # what Trainer.fit(ckpt_path=...) does by default
    saved = {key: state for key, state in raw["callbacks"].items() if any(n in key for n in callbacks_module.__all__)}
    probe = StateProbe()
    fresh = make_callbacks()
    trainer(tmp_path, [*fresh, probe], max_epochs, enable_checkpointing=False).fit(
        make_model(), *fit_args, ckpt_path=checkpoint, weights_only=True
    )
    assert set(probe.states) == set(saved)
    for key, state in saved.items():
        assert_same(probe.states[key], state, key)
    return fresh


def test_binas_callbacks_resume(tmp_path):
    g = torch.Generator().manual_seed(0)
    train = DataLoader(gratings_dataset(32, seed=0), batch_size=16, shuffle=True, generator=g)
    val = DataLoader(gratings_dataset(16, seed=1), batch_size=16)
    held_out = DataLoader(gratings_dataset(16, seed=2), batch_size=16)

    def make_callbacks():
        return [
            UniformSampling(0, per_sample=True),
            ContributionEstimation(held_out, every_n_epochs=1, seed=1),
            LatencyProfiler(tmp_path / "latency.json", input_size=(3, 8, 8), repeats=2, warmup=1, calibration_archs=1),
            BlockPerformanceEstimation(held_out, (3, 8, 8)),
        ]

    pl.seed_everything(0, verbose=False)
    made = make_callbacks()
    t = trainer(tmp_path, made, 1, enable_checkpointing=False)
    t.fit(SupernetClassifier(), train, val)
    assert made[1].accuracy_model is not None and made[2].latency_table is not None and made[3].performance is not None
    t.save_checkpoint(tmp_path / "binas.ckpt")
    resumed = resume_and_compare(tmp_path, tmp_path / "binas.ckpt", SupernetClassifier, make_callbacks, 2, train, val)
    assert resumed[0].sampled == made[0].sampled + 2  # training went on from the checkpoint
    assert len(resumed[1].history) == 2


@pytest.mark.parametrize("search_class", [DartsSearch, DrNASSearch])
def test_differentiable_callbacks_resume(tmp_path, search_class):
    split = tiny_data(32, seed=1)
    train = DataLoader(tiny_data(32, seed=0), batch_size=16)
    options = {"prune_at": {1: 2}} if search_class is DrNASSearch else {"order": 2}

    def make_callbacks():
        search = search_class(split, batch_size=16, seed=2, **options)
        return [search, PerturbationSelection(search, split, interval=1, start_epoch=1, batch_size=16)]

    made = make_callbacks()
    checkpoints = ModelCheckpoint(dirpath=tmp_path, filename="{epoch}", save_top_k=-1, every_n_epochs=1)
    trainer(tmp_path, [*made, checkpoints], 2).fit(TinySearch(seed=0), train)
    checkpoint = tmp_path / "epoch=1.ckpt"
    # The first decision is in the checkpoint; the second one is made after it (the catch-up at fit end).
    assert len(torch.load(checkpoint, weights_only=True)["callbacks"][made[1].state_key]["decisions"]) == 1
    resumed = resume_and_compare(tmp_path, checkpoint, lambda: TinySearch(seed=0), make_callbacks, 3, train)
    assert resumed[0].steps == 3 * 2 and resumed[1].done


def test_every_callback_was_resumed():
    exported = {getattr(callbacks_module, name) for name in callbacks_module.__all__}
    assert exported <= COVERED, f"not covered by a resume test: {sorted(c.__name__ for c in exported - COVERED)}"
