"""Held-out data named as a DataModule split (``held_out="held_out"``), as a YAML config gives it.

The name resolves from ``trainer.datamodule`` when fitting starts and gives the same result as
passing the loader object; a trainer without a datamodule, or a datamodule without that split, is
a clear error naming the argument and the splits there are.
"""

from __future__ import annotations

import sys
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch.utils.data import DataLoader

from lightning_nas.callbacks import (
    BlockPerformanceEstimation,
    ContributionEstimation,
    DartsSearch,
    PerturbationSelection,
    UniformSampling,
)
from lightning_nas.datamodule import ImageDataModule
from lightning_nas.spaces import mobilenet_supernet

sys.path.insert(0, str(Path(__file__).parent))
from darts_models import TinySearch, tiny_data  # noqa: E402

pytestmark = [
    pytest.mark.filterwarnings("ignore:PerturbationSelection. .* decisions were still open"),
    pytest.mark.filterwarnings("ignore:Be aware that when using `ckpt_path`"),
]


class Classifier(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.supernet = mobilenet_supernet(
            num_classes=10, stem_channels=8, stages=((8, 1, 2), (8, 2, 1)), expand_ratios=(1, 2), kernel_sizes=(3,), head_channels=8
        )

    def forward(self, x):
        return self.supernet(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return torch.nn.functional.cross_entropy(self(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)


def digits() -> ImageDataModule:
    return ImageDataModule("digits", image_size=8, channels=3, max_examples=60, batch_size=20, eval_batch_size=10)


def fit(tmp_path, callbacks, *args, max_epochs=1, **kwargs) -> pl.Trainer:
    pl.seed_everything(0, verbose=False)
    trainer = pl.Trainer(
        max_epochs=max_epochs, accelerator="cpu", devices=1, callbacks=callbacks, logger=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0, default_root_dir=tmp_path,
        enable_checkpointing=any(isinstance(c, ModelCheckpoint) for c in callbacks),
    )
    trainer.fit(*args, **kwargs)
    return trainer


def test_contribution_by_name_equals_the_loader(tmp_path):
    by_name = ContributionEstimation("held_out", passes=2, seed=1)
    assert by_name.held_out is None and by_name.held_out_split == "held_out"
    dm = digits()
    fit(tmp_path, [UniformSampling(0), by_name], Classifier(), datamodule=dm)
    assert by_name.held_out.dataset is dm.dataset("held_out")

    dm2 = digits()
    dm2.setup("fit")
    by_object = ContributionEstimation(dm2.held_out_dataloader(), passes=2, seed=1)
    fit(tmp_path, [UniformSampling(0), by_object], Classifier(), datamodule=dm2)
    a, b = by_name.accuracy_model.to_dict(), by_object.accuracy_model.to_dict()
    assert a["constant"] == b["constant"] and a["block"] == b["block"] and a["depth"] == b["depth"]


def test_contribution_by_name_resumes(tmp_path):
    checkpoint = ModelCheckpoint(dirpath=tmp_path, filename="run", enable_version_counter=False)
    first = ContributionEstimation("held_out", passes=1)
    fit(tmp_path, [UniformSampling(0), first, checkpoint], Classifier(), datamodule=digits())
    # The state holds no data (neither the name nor the loader): it is what it was with a loader.
    state = torch.load(tmp_path / "run.ckpt", weights_only=True)["callbacks"][first.state_key]
    assert set(state) == {"method", "seed", "passes", "score", "fit", "history", "last_step", "accuracy_model"}
    resumed = ContributionEstimation("held_out", passes=1)
    fit(tmp_path, [UniformSampling(0), resumed], Classifier(), datamodule=digits(), max_epochs=2, ckpt_path=tmp_path / "run.ckpt",
        weights_only=True)
    assert resumed.held_out is not None and [h["global_step"] for h in resumed.history] == [4]


def test_block_performance_by_name(tmp_path):
    estimation = BlockPerformanceEstimation("held_out", (3, 8, 8))
    fit(tmp_path, [estimation], Classifier(), datamodule=digits())
    assert estimation.performance is not None and estimation.held_out is not None


class VectorData(pl.LightningDataModule):
    """The DARTS tests' 6-d vectors as a DataModule with a held_out split."""

    def train_dataloader(self):
        return DataLoader(tiny_data(32, seed=0), batch_size=16)

    def held_out_dataloader(self):
        return DataLoader(tiny_data(32, seed=1), batch_size=16)


def test_darts_and_perturbation_selection_by_name(tmp_path):
    search = DartsSearch("held_out", batch_size=100, seed=0)
    assert search.arch_data is None
    selection = PerturbationSelection(data="held_out", interval=1, start_epoch=1, path=tmp_path / "arch.json")  # finds `search` itself
    dm = VectorData()
    fit(tmp_path, [search, selection], TinySearch(), datamodule=dm, max_epochs=3)
    assert len(search.arch_data) == 32 and search.batch_size == 32  # clipped to the split, as for a Dataset
    assert selection.search is search and len(selection.data) == 32
    assert len(selection.decisions) == 2 and set(selection.arch) == {"op1", "op2"}
    from lightning_nas.select_cli import read_arch

    assert read_arch(tmp_path / "arch.json") == selection.arch  # the file `lightning-nas export --arch` reads


def test_a_name_without_a_datamodule_or_split_is_an_error(tmp_path):
    loader = DataLoader(tiny_data(16), batch_size=8)
    with pytest.raises(MisconfigurationException, match=r"DartsSearch: `arch_data='held_out'` names a DataModule split, but the trainer has no datamodule"):
        fit(tmp_path, [DartsSearch("held_out")], TinySearch(), loader)
    with pytest.raises(MisconfigurationException, match=r"ContributionEstimation: `held_out='holdout'`: ImageDataModule has no split 'holdout'.*'held_out'"):
        fit(tmp_path, [ContributionEstimation("holdout")], Classifier(), datamodule=digits())
    with pytest.raises(MisconfigurationException, match=r"`search=None` takes the Trainer's only DartsSearch .* but it has 0"):
        fit(tmp_path, [PerturbationSelection(data="held_out")], TinySearch(), datamodule=VectorData())
    for make, match in ((lambda: ContributionEstimation(""), "`held_out` must be"), (lambda: DartsSearch(""), "`arch_data` must be"),
                        (lambda: PerturbationSelection(), "`data` must be")):
        with pytest.raises((ValueError, MisconfigurationException), match=match):
            make()
