"""Skip gap (thesis Fig. 2.3) and the α figures, from a real search history."""

from __future__ import annotations

import sys
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).parents[1] / "callbacks"))
from darts_models import TinySearch, tiny_data  # noqa: E402

from lightning_nas.callbacks.darts import DartsSearch  # noqa: E402
from lightning_nas.differentiable.diagnostics import skip_gap  # noqa: E402
from lightning_nas.plots import plot_alpha_trajectories, plot_skip_gap  # noqa: E402

torch.set_num_threads(1)


def test_skip_gap_by_hand():
    weights = {
        "a": {"skip_connect": 0.6, "sep_conv_3x3": 0.3, "none": 0.1},  # 0.6 − 0.3
        "b": {"skip_connect": 0.2, "nor_conv_1x1": 0.5, "nor_conv_3x3": 0.3},  # 0.2 − 0.4
        "c": {"avg_pool_3x3": 1.0},  # no skip: ignored
    }
    assert skip_gap(weights) == pytest.approx((0.3 - 0.2) / 2)
    with pytest.raises(ValueError, match="no edge"):
        skip_gap({"c": {"avg_pool_3x3": 1.0}})


class Validated(TinySearch):
    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_acc", (self(x).argmax(-1) == y).float().mean())


def test_history_records_the_monitored_metric_and_plots(tmp_path):
    search = DartsSearch(tiny_data(48, seed=1), batch_size=8, lr=0.05, monitor="val_acc")
    pl.Trainer(max_epochs=3, callbacks=[search], logger=False, enable_checkpointing=False, enable_progress_bar=False,
               enable_model_summary=False).fit(Validated(), DataLoader(tiny_data(), batch_size=16), DataLoader(tiny_data(32, 2), batch_size=32))
    assert [h["epoch"] for h in search.history] == [0, 1, 2]
    assert all(0.0 <= h["metric"] <= 1.0 for h in search.history)
    assert set(search.history[0]["weights"]["op2"]) == {"linear", "none", "skip"}
    for path in (plot_alpha_trajectories(search.history, tmp_path / "alpha.png"), plot_skip_gap(search.history, tmp_path / "gap.png", skip="skip", conv=("linear",))):
        with Image.open(path) as image:
            assert image.format == "PNG" and image.size[0] > 200
    with pytest.raises(ValueError, match="monitor"):
        plot_skip_gap([{**h, "metric": None} for h in search.history], tmp_path / "x.png", skip="skip", conv=("linear",))
