"""ContributionEstimation on a tiny supernet trained by a real Trainer: table, file, log, resume."""

from __future__ import annotations

import json

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from lightning_nas.bilinear import BilinearTable
from lightning_nas.callbacks import UniformSampling
from lightning_nas.callbacks.contribution import ContributionEstimation
from lightning_nas.estimators import SmoothedTop1, estimate_contributions
from lightning_nas.spaces import mobilenet_supernet
from lightning_nas.spaces.staged import StagedSpace

DATA = {"num_classes": 4, "image_size": 16, "noise": 0.5}
DDP_RUNS = {  # the estimates ddp_contribution_script.py makes, by name
    "one_pass": {"method": "one_pass", "passes": 2},
    "paper": {"method": "paper", "passes": 1},
    "log_error": {"method": "one_pass", "passes": 3, "fit": "log_error", "allocation": "adaptive"},
}


def gratings_dataset(n, *, num_classes, image_size, noise, seed):
    """Noisy copies of one random prototype image per class: learnable in a few steps."""
    prototypes = torch.randn(num_classes, 3, image_size, image_size, generator=torch.Generator().manual_seed(1234))
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(num_classes, (n,), generator=g)
    return TensorDataset(prototypes[labels] + noise * torch.randn(n, 3, image_size, image_size, generator=g), labels)


class SupernetClassifier(pl.LightningModule):
    """A plain classification module holding a supernet (the callbacks do the NAS part)."""

    def __init__(self, supernet, num_classes, lr=0.05, epochs=1):
        super().__init__()
        self.supernet, self.lr = supernet, lr

    def forward(self, x):
        return self.supernet(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return torch.nn.functional.cross_entropy(self(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_acc", (self(x).argmax(1) == y).float().mean())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9)


def tiny_model(seed=0):
    torch.manual_seed(seed)
    supernet = mobilenet_supernet(
        num_classes=4, stem_channels=8, stages=((8, 1, 2), (16, 2, 2)), expand_ratios=(1, 2), kernel_sizes=(3,), head_channels=16
    )
    return SupernetClassifier(supernet, 4, lr=0.05, epochs=2)


def loaders():
    train = DataLoader(gratings_dataset(128, seed=0, **DATA), batch_size=32, shuffle=True)
    val = DataLoader(gratings_dataset(64, seed=1, **DATA), batch_size=32)
    held_out = DataLoader(gratings_dataset(96, seed=2, **DATA), batch_size=32)
    return train, val, held_out


def trainer(tmp_path, callbacks, max_epochs=1):
    return pl.Trainer(
        max_epochs=max_epochs, accelerator="cpu", devices=1, callbacks=callbacks, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0, default_root_dir=tmp_path,
    )


def test_estimates_during_training_saves_logs_and_matches_direct_estimate(tmp_path):
    pl.seed_everything(0, verbose=False)
    train, val, held_out = loaders()
    model = tiny_model()
    callback = ContributionEstimation(held_out, every_n_epochs=1, path=tmp_path / "accuracy.json", seed=3)
    t = trainer(tmp_path, [UniformSampling(0, per_sample=True), callback])
    t.fit(model, train, val)
    table = callback.accuracy_model
    assert isinstance(table, BilinearTable) and table.name == "accuracy"
    # One estimate at the validation epoch end; the end-of-training one would see the same weights.
    assert len(callback.history) == 1 and callback.history[0]["examples"] == 96
    assert float(t.callback_metrics["contributions/expected_accuracy"]) == pytest.approx(table.constant)
    staged = StagedSpace.from_space(model.supernet.space)
    assert BilinearTable.load(tmp_path / "accuracy.json", staged).to_dict() == json.loads(json.dumps(table.to_dict()))
    direct = estimate_contributions(model.supernet, held_out, seed=3)
    assert direct.constant == table.constant and np.array_equal(direct.block, table.block)
    assert np.array_equal(direct.depth, table.depth)
    assert table.metadata["epoch"] == 0 and table.metadata["method"] == "one_pass"


def test_paired_estimate_at_end_matches_direct_estimate(tmp_path):
    pl.seed_everything(0, verbose=False)
    train, val, held_out = loaders()
    model = tiny_model()
    callback = ContributionEstimation(held_out, passes=3, paired=True, seed=5, shrinkage="empirical_bayes", score=SmoothedTop1(0.5))
    trainer(tmp_path, [UniformSampling(0, per_sample=True), callback]).fit(model, train, val)
    table = callback.accuracy_model
    direct = estimate_contributions(model.supernet, held_out, passes=3, seed=5, paired=True, shrinkage="empirical_bayes",
                                    score=SmoothedTop1(0.5))
    assert table.metadata["paired"] and table.metadata["examples"] == 3 * 96
    assert table.metadata["score"] == callback.state_dict()["score"] == "SmoothedTop1(temperature=0.5)"
    assert direct.constant == table.constant and np.array_equal(direct.block, table.block)
    assert np.array_equal(direct.depth, table.depth)


def test_log_error_fit_at_end_matches_direct_estimate_beside_a_means_estimate(tmp_path):
    pl.seed_everything(0, verbose=False)
    train, val, held_out = loaders()
    model = tiny_model()
    means = ContributionEstimation(held_out, passes=2, seed=5)
    log_error = ContributionEstimation(held_out, passes=4, seed=5, fit="log_error", allocation="adaptive", pilot_passes=2)
    assert means.state_key != log_error.state_key  # both fit in one Trainer and one checkpoint
    trainer(tmp_path, [UniformSampling(0, per_sample=True), means, log_error]).fit(model, train, val)
    table = log_error.accuracy_model
    direct = estimate_contributions(model.supernet, held_out, passes=4, seed=5, fit="log_error", allocation="adaptive")
    assert table.link == "log_error" and table.metadata["allocation"] == "adaptive"
    assert direct.constant == table.constant and np.array_equal(direct.block, table.block)
    assert log_error.history[0]["expected_accuracy"] == table.metadata["base_accuracy"]
    assert log_error.state_dict()["fit"] == "log_error" and log_error.state_dict()["accuracy_model"]["link"] == "log_error"
    # The first two records of every example are the means estimate's draws: the same E[Acc].
    assert table.metadata["base_accuracy"] == pytest.approx(means.accuracy_model.metadata["base_accuracy"], abs=0.1)


def test_paper_protocol_at_end_and_resume_keeps_the_table(tmp_path):
    pl.seed_everything(0, verbose=False)
    train, val, held_out = loaders()
    model = tiny_model()
    callback = ContributionEstimation(held_out, method="paper", passes=1, seed=1)
    t = trainer(tmp_path, [UniformSampling(0, per_sample=True), callback])
    t.fit(model, train, val)
    table = callback.accuracy_model
    staged = StagedSpace.from_space(model.supernet.space)
    conditionals = 1 + 2 * (2 + 2 * 2)  # base + per stage: 2 depths, 2 blocks × 2 configs
    assert table.metadata["conditionals"] == conditionals and table.metadata["examples"] == conditionals * 96
    ckpt = tmp_path / "last.ckpt"
    t.save_checkpoint(ckpt)

    # Resume into a fresh callback: the table comes back from the checkpoint before any new estimate.
    resumed = ContributionEstimation(held_out, method="paper", passes=1, seed=1)
    t2 = trainer(tmp_path, [UniformSampling(0, per_sample=True), resumed])
    t2.fit(tiny_model(1), train, val, ckpt_path=ckpt)  # max_epochs=1 already reached: nothing to train
    assert resumed.history == callback.history
    assert resumed.accuracy_model.to_dict() == table.to_dict()

    # Training on: a second estimate at the end, the history kept.
    more = ContributionEstimation(held_out, method="paper", passes=1, seed=1)
    t3 = trainer(tmp_path, [UniformSampling(0, per_sample=True), more], max_epochs=2)
    t3.fit(tiny_model(1), train, val, ckpt_path=ckpt)
    assert len(more.history) == 2 and more.history[0] == callback.history[0]
    assert more.history[1]["global_step"] == 2 * t.global_step
    assert BilinearTable.from_dict(more.state_dict()["accuracy_model"], staged).metadata["epoch"] == t3.current_epoch


def test_bad_arguments_are_rejected():
    held_out = [(torch.zeros(2, 3, 16, 16), torch.zeros(2, dtype=torch.long))]
    for kwargs, name in [
        ({"every_n_epochs": 0}, "every_n_epochs"),
        ({"method": "fast"}, "method"),
        ({"passes": 0}, "passes"),
        ({"seed": -1}, "seed"),
        ({"every_n_epochs": None, "at_end": False}, "never"),
        ({"at_end": "yes"}, "at_end"),
        ({"paired": True}, "paired"),  # one pass: nothing to pair with
        ({"paired": True, "passes": 2, "method": "paper"}, "paired"),
        ({"paired": "yes"}, "paired"),
        ({"score": "smoothed"}, "score"),
        ({"fit": "log_error", "method": "paper"}, "method='one_pass'"),
        ({"allocation": "adaptive"}, "needs fit='log_error'"),
    ]:
        with pytest.raises(ValueError, match=name):
            ContributionEstimation(held_out, **kwargs)
    with pytest.raises(ValueError, match="held_out"):
        ContributionEstimation(None)


@pytest.mark.ddp_scenario("contribution")
def test_ddp_ranks_share_the_single_process_estimate(ddp_runs):
    out = ddp_runs("contribution")  # ddp_contribution_script.py, run by the conftest's one DDP launch
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert all(r["world_size"] == 2 for r in ranks)
    assert ranks[0]["tables"] == ranks[1]["tables"]
    # The same weights estimated by one process over all 7 batches give the same tables.
    model = tiny_model()
    model.load_state_dict(torch.load(out / "model.pt"))
    held_out = DataLoader(gratings_dataset(70, seed=2, **DATA), batch_size=10)
    for name, options in DDP_RUNS.items():
        single = estimate_contributions(model.supernet, held_out, seed=5, **options)
        ddp = ranks[0]["tables"][name]
        assert ddp["metadata"]["examples"] == single.metadata["examples"] and ddp["metadata"]["world_size"] == 2
        assert ddp["constant"] == pytest.approx(single.constant, abs=1e-12)
        np.testing.assert_allclose(np.array(ddp["block"]), single.block, atol=1e-12)
        np.testing.assert_allclose(np.array(ddp["depth"]), single.depth, atol=1e-12)
