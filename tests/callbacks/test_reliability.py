"""Every callback refuses what would otherwise fail late or give a silently wrong result.

Diverged (NaN) networks, empty held-out data, arguments of the wrong type (bools as counts,
NaN rates), and checkpoint states that Lightning's ``weights_only`` resume would refuse.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import nn
from torch.utils.data import DataLoader, IterableDataset, TensorDataset

from lightning_nas.callbacks import (
    BlockPerformanceEstimation,
    ContributionEstimation,
    DartsSearch,
    DrNASSearch,
    LatencyProfiler,
    PerturbationSelection,
    UniformSampling,
)
from lightning_nas.callbacks._checks import first_non_finite, plain_state
from lightning_nas.differentiable import SoftmaxRelaxation
from lightning_nas.differentiable.selection import magnitude_selection, select_op_by_perturbation
from lightning_nas.spaces import mobilenet_supernet

sys.path.insert(0, str(Path(__file__).parent))
from darts_models import TinySearch, tiny_data  # noqa: E402

torch.set_num_threads(1)


class Classifier(pl.LightningModule):
    """A tiny BINAS-style supernet classifier; ``nan_loss`` makes its first step diverge (NaN weights)."""

    def __init__(self, nan_loss: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.supernet = mobilenet_supernet(
            num_classes=3, stem_channels=8, stages=((8, 1, 2),), expand_ratios=(1, 2), kernel_sizes=(3,), head_channels=8
        )
        self.nan_loss = nan_loss
        self.steps = 0

    def forward(self, x):
        return self.supernet(x)

    def training_step(self, batch, batch_idx):
        self.steps += 1
        x, y = batch
        loss = nn.functional.cross_entropy(self(x), y)
        return loss * float("nan") if self.nan_loss else loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


def images(n: int = 8, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.randn(n, 3, 8, 8, generator=g), torch.randint(0, 3, (n,), generator=g))


def fit(model, callbacks, train, max_epochs=1, **kwargs):
    trainer = pl.Trainer(
        max_epochs=max_epochs, accelerator="cpu", devices=1, callbacks=callbacks, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0, **kwargs,
    )
    trainer.fit(model, train)
    return trainer


class Nothing(IterableDataset):
    def __iter__(self):
        return iter(())


# -- empty held-out data: refused when fitting starts, not after training ------------------------


@pytest.mark.parametrize("empty", [DataLoader(images(0), batch_size=4), DataLoader(Nothing(), batch_size=4), []])
@pytest.mark.parametrize("make", [
    lambda held_out: ContributionEstimation(held_out),
    lambda held_out: BlockPerformanceEstimation(held_out, (3, 8, 8)),
], ids=["contribution", "block_performance"])
def test_empty_held_out_data_is_refused_before_training(make, empty):
    model = Classifier()
    with pytest.raises(MisconfigurationException, match=r"`held_out` is empty \(it yields no batch\)"):
        fit(model, [UniformSampling(0), make(empty)], DataLoader(images(), batch_size=4))
    assert model.steps == 0


# -- a diverged network: no table, no selection from it --------------------------------------------


def test_contribution_estimation_refuses_a_diverged_network():
    callback = ContributionEstimation(DataLoader(images(6, seed=1), batch_size=3))
    with pytest.raises(FloatingPointError, match=r"ContributionEstimation: the network's parameter 'supernet\..*' holds NaN"):
        fit(Classifier(nan_loss=True), [UniformSampling(0, per_sample=True), callback], DataLoader(images(), batch_size=4))
    assert callback.accuracy_model is None


def test_contribution_estimation_refuses_non_finite_logits_of_finite_weights():
    callback = ContributionEstimation(DataLoader(images(6, seed=1), batch_size=3), forward=lambda module, x: module(x) * math.inf)
    # Refused by the estimator itself (lightning_nas.estimators.contributions).
    with pytest.raises(ValueError, match=r"non-finite logits \(NaN or inf\)"):
        fit(Classifier(), [UniformSampling(0, per_sample=True), callback], DataLoader(images(), batch_size=4))
    assert callback.accuracy_model is None


def test_block_performance_refuses_a_diverged_network():
    callback = BlockPerformanceEstimation(DataLoader(images(6, seed=1), batch_size=3), (3, 8, 8))
    with pytest.raises(FloatingPointError, match="BlockPerformanceEstimation: the network's parameter"):
        fit(Classifier(nan_loss=True), [UniformSampling(0), callback], DataLoader(images(), batch_size=4))
    assert callback.performance is None


class NanLoss(TinySearch):
    def training_step(self, batch, batch_idx):
        return super().training_step(batch, batch_idx) * float("nan")


def test_darts_skips_non_finite_alpha_steps_and_select_refuses_a_diverged_network():
    search = DartsSearch(tiny_data(32, seed=1), batch_size=8, lr=0.05)
    with pytest.warns(UserWarning, match=r"architecture gradient is NaN or infinite at α step 1 .*α left unchanged \(1 step\(s\) skipped"):
        fit(NanLoss(), [search], DataLoader(tiny_data(32), batch_size=8))
    assert search.steps == 4 and search.skipped_steps == 3  # the first step saw finite weights
    assert all(bool(torch.isfinite(a).all()) for a in search.relaxation.alpha)
    with pytest.raises(FloatingPointError, match=r"DartsSearch.select\(\): the network's parameter 'module\.0\.weight' holds NaN"):
        search.select()
    assert search.state_dict()["skipped_steps"] == 3


def test_darts_alpha_stays_finite_when_only_the_architecture_loss_is_nan():
    def nan_loss(module, batch):
        return nn.functional.cross_entropy(module(batch[0]), batch[1]) * float("nan")

    search = DrNASSearch(tiny_data(32, seed=1), batch_size=8, loss_fn=nan_loss)
    with pytest.warns(UserWarning, match="α left unchanged"):
        fit(TinySearch(), [search], DataLoader(tiny_data(32), batch_size=8))
    assert search.skipped_steps == search.steps == 4
    assert all(bool(torch.isfinite(a).all()) for a in search.relaxation.alpha)
    with pytest.raises(RuntimeError, match=r"α is still its random initialisation \(4 α steps taken, 4 of them skipped"):
        search.select()


def test_darts_select_warns_about_skipped_steps_and_refuses_an_untouched_alpha():
    calls = []

    def sometimes_nan(module, batch):
        calls.append(1)
        loss = nn.functional.cross_entropy(module(batch[0]), batch[1])
        return loss * float("nan") if len(calls) == 2 else loss

    search = DartsSearch(tiny_data(32, seed=1), batch_size=8, loss_fn=sometimes_nan)
    with pytest.warns(UserWarning, match="α left unchanged"):
        fit(TinySearch(), [search], DataLoader(tiny_data(32), batch_size=8))
    with pytest.warns(UserWarning, match=r"1 of 4 α steps were skipped"):
        assert set(search.select()) == {"op1", "op2"}

    late = DartsSearch(tiny_data(32, seed=1), batch_size=8, start_epoch=5)
    fit(TinySearch(), [late], DataLoader(tiny_data(32), batch_size=8))
    with pytest.raises(RuntimeError, match=r"α is still its random initialisation \(0 α steps taken.*start_epoch=5"):
        late.select()


def test_periodic_contribution_estimates_need_a_validation_loop():
    model = Classifier()  # no validation_step
    callback = ContributionEstimation(DataLoader(images(6), batch_size=3), every_n_epochs=1, at_end=False)
    with pytest.raises(MisconfigurationException, match=r"`every_n_epochs=1` estimates at the end of validation epochs, but Classifier runs no validation"):
        fit(model, [UniformSampling(0), callback], DataLoader(images(), batch_size=4))
    assert model.steps == 0


def test_magnitude_selection_refuses_nan_alpha():
    model = TinySearch()
    relaxation = SoftmaxRelaxation(model.net)
    with torch.no_grad():
        relaxation.alpha_of("op2").fill_(float("nan"))
    with pytest.raises(FloatingPointError, match=r"mixing weights of 'op2' are not finite"):
        magnitude_selection(relaxation)


@pytest.mark.filterwarnings("ignore:DartsSearch. the architecture gradient is NaN")
def test_perturbation_decision_refuses_nan_scores_and_a_diverged_network():
    model = TinySearch()
    relaxation = SoftmaxRelaxation(model.net).install()
    with pytest.raises(FloatingPointError, match=r"perturbation scores of 'op1' are not finite"):
        select_op_by_perturbation(relaxation, "op1", lambda: float("nan"))
    assert "op1" not in relaxation.fixed

    split = tiny_data(32, seed=1)
    search = DartsSearch(split, batch_size=8)
    selection = PerturbationSelection(search, split, interval=1, start_epoch=1, batch_size=8)
    with pytest.raises(FloatingPointError, match="PerturbationSelection: the network's parameter"):
        fit(NanLoss(), [search, selection], DataLoader(tiny_data(32), batch_size=8), max_epochs=2)
    assert selection.decisions == []


# -- arguments: bools are not counts, NaN is not a rate --------------------------------------------


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: DartsSearch(tiny_data(8), batch_size=True), "`batch_size` must be a positive int, got True"),
        (lambda: DartsSearch(tiny_data(8), order=True), "`order` must be 1 or 2, got True"),
        (lambda: DartsSearch(tiny_data(8), lr=float("nan")), "`lr` must be a finite, non-negative float, got nan"),
        (lambda: DartsSearch(tiny_data(8), weight_decay=True), "`weight_decay` must be a finite, non-negative float, got True"),
        (lambda: DartsSearch(tiny_data(8), betas=(0.5, 1.5)), r"`betas` must be a pair of floats in \[0, 1\)"),
        (lambda: DartsSearch(tiny_data(8), unrolled_lr="0.1"), "`unrolled_lr` must be a finite, non-negative float or None"),
        (lambda: DartsSearch(tiny_data(8), start_epoch=False), "`start_epoch` must be a non-negative int, got False"),
        (lambda: DartsSearch(tiny_data(8), supernet=3), "`supernet` must be the dotted attribute path"),
        (lambda: DrNASSearch(tiny_data(8), anchor_weight=float("nan")), "`anchor_weight` must be a finite, non-negative float"),
        (lambda: DrNASSearch(tiny_data(8), prune_at={True: 2}), r"`prune_at` maps epochs"),
        (lambda: PerturbationSelection(DartsSearch(tiny_data(8)), tiny_data(8), seed=True), "`seed` must be a non-negative int, got True"),
        (lambda: PerturbationSelection(DartsSearch(tiny_data(8)), tiny_data(8), interval=True), "`interval` must be a positive int"),
        (lambda: UniformSampling(0, supernet=""), "`supernet` must be the dotted attribute path"),
    ],
)
def test_misconfigured_differentiable_and_sampling_callbacks(make, message):
    with pytest.raises(MisconfigurationException, match=message):
        make()


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: BlockPerformanceEstimation([], (3, 8, 8), seed=True), "`seed` must be a non-negative int, got True"),
        (lambda: BlockPerformanceEstimation([], (3, 8, 8), num_hosts=True), "`num_hosts` must be a positive int, got True"),
        (lambda: BlockPerformanceEstimation([], (3, 8, 8), reference="middle"), "`reference` must be an arch dict, one of"),
        (lambda: BlockPerformanceEstimation([], (3, 8, 8), tables={"latency": 3.0}), r"`tables` must be a dict \{name: BilinearTable\}"),
        (lambda: ContributionEstimation([], forward="model"), "`forward` must be callable or None"),
        (lambda: LatencyProfiler("t.json", rebuild="yes"), "`rebuild` must be a bool, got 'yes'"),
        (lambda: LatencyProfiler("t.json", supernet=["net"]), "`supernet` must be the dotted attribute path"),
    ],
)
def test_misconfigured_binas_callbacks(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_block_performance_reference_is_checked_before_training():
    model = Classifier()
    callback = BlockPerformanceEstimation(DataLoader(images(6), batch_size=3), (3, 8, 8), reference={"nope": 1})
    with pytest.raises(ValueError, match=r"`reference` is not an architecture of the supernet: unknown label\(s\) \['nope'\]"):
        fit(model, [UniformSampling(0), callback], DataLoader(images(), batch_size=4))
    assert model.steps == 0


# -- callback states are plain types ---------------------------------------------------------------


def test_plain_state_keeps_plain_types_and_names_anything_else():
    version = torch.__version__  # a TorchVersion: a str subclass that weights_only loading refuses
    assert type(version) is not str
    state = plain_state({"v": version, "n": np.int64(3), "x": np.float32(0.5), "a": np.arange(2), "p": Path("t"), "t": (1, [True])})
    assert state == {"v": str(version), "n": 3, "x": 0.5, "a": [0, 1], "p": "t", "t": (1, [True])}
    assert type(state["v"]) is str and type(state["n"]) is int and type(state["x"]) is float
    with pytest.raises(TypeError, match=r"state\['history'\]\[0\] is a builtins.object; a callback state must hold only"):
        plain_state({"history": [object()]})


def test_first_non_finite_names_parameters_and_running_statistics_only():
    net = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    net.register_buffer("mask", torch.tensor([0.0, -math.inf]))  # an attention-style mask may hold -inf
    assert first_non_finite(net) is None
    net[1].running_var[0] = math.nan
    assert first_non_finite(net) == "buffer '1.running_var'"
    net[0].bias.data[1] = math.inf
    assert first_non_finite(net) == "parameter '0.bias'"


def test_an_output_path_that_cannot_take_a_file_is_refused_when_the_callback_is_made(tmp_path):
    held = [(torch.zeros(2, 3, 8, 8), torch.zeros(2, dtype=torch.long))]
    (tmp_path / "a_file").write_text("x")
    for bad, error, message in ((tmp_path, IsADirectoryError, "is a directory"),
                                (tmp_path / "a_file" / "table.json", NotADirectoryError, "is a file, not a directory")):
        with pytest.raises(error, match=rf"ContributionEstimation `path` .*{message}"):
            ContributionEstimation(held, path=bad)
        with pytest.raises(error, match=rf"BlockPerformanceEstimation `path` .*{message}"):
            BlockPerformanceEstimation(held, (3, 8, 8), path=bad)
        with pytest.raises(error, match=rf"LatencyProfiler `path` .*{message}"):
            LatencyProfiler(bad, input_size=(3, 8, 8))
    # A path whose folders do not exist yet is fine: they are made when the file is written.
    ContributionEstimation(held, path=tmp_path / "new" / "table.json")
