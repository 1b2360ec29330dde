"""DARTS-PT selection: on a supernet whose operation strengths are known it picks the strongest op even when α prefers another."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import lightning_nas as ln
from lightning_nas.callbacks.darts import DartsSearch
from lightning_nas.callbacks.selection import PerturbationSelection

torch.set_num_threads(1)

SHIFT = torch.roll(torch.eye(3), 1, dims=0)  # a cyclic permutation: argmax(SHIFT x) != argmax(x)


def shift_op() -> nn.Linear:
    op = nn.Linear(3, 3, bias=False)
    with torch.no_grad():
        op.weight.copy_(10 * SHIFT)
    return op


class TwoHeads(nn.Module):
    """Two edges on separate input blocks, each with {skip, shift}. Head 1's labels need the shift, head 2's the skip."""

    def __init__(self) -> None:
        super().__init__()
        self.e1 = ln.OpChoice({"skip": nn.Identity(), "shift": shift_op()}, "e1")
        self.e2 = ln.OpChoice({"skip": nn.Identity(), "shift": shift_op()}, "e2")

    def forward(self, x):
        return torch.stack([self.e1(x[:, :3]), self.e2(x[:, 3:])], 1)  # (B, 2 heads, 3 classes)


class Model(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = ln.Supernet(TwoHeads())

    def training_step(self, batch, batch_idx):
        return loss(self, batch)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)  # strengths stay as constructed


def loss(model, batch):
    x, y = batch
    return nn.functional.cross_entropy(model.net(x).flatten(0, 1), y.flatten())


def data(seed: int, n: int = 96) -> TensorDataset:
    x = torch.randn(n, 6, generator=torch.Generator().manual_seed(seed))
    return TensorDataset(x, torch.stack([(x[:, :3] @ SHIFT.T).argmax(1), x[:, 3:].argmax(1)], 1))


def both_heads(model, batch):
    x, y = batch
    return (model.net(x).argmax(-1) == y).sum(), y.numel()


@settings(max_examples=4, deadline=None)
@given(gap=st.floats(1.5, 4.0), seed=st.integers(0, 100))
def test_pt_picks_the_strongest_op_where_alpha_prefers_the_other(gap, seed):
    model, split = Model(), data(seed)
    search = DartsSearch(split, lr=0.0, batch_size=32, loss_fn=loss, log_alpha=False)
    pt = PerturbationSelection(search, split, interval=1, batch_size=32, accuracy_fn=both_heads, seed=seed)
    trainer = pl.Trainer(
        max_epochs=pt.epochs_needed(model.net), callbacks=[search, pt], logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False,
    )
    # α says skip on e1 and shift on e2: the wrong op on both edges.
    search.setup(trainer, model, "fit")
    with torch.no_grad():
        search.relaxation.alpha_of("e1").copy_(torch.tensor([gap, 0.0]))
        search.relaxation.alpha_of("e2").copy_(torch.tensor([0.0, gap]))
    magnitude = search.select()
    trainer.fit(model, DataLoader(split, batch_size=32))
    assert magnitude == {"e1": "skip", "e2": "shift"}
    assert pt.arch == {"e1": "shift", "e2": "skip"}
    assert [d["epoch"] for d in pt.decisions] == [0, 1] and pt.done
    for d in pt.decisions:  # masking the chosen op costs the most accuracy
        (label,) = d["labels"]
        assert d["scores"][label][d["chosen"][label]] == min(d["scores"][label].values())
    exported = model.net.export(pt.arch)
    x, y = split.tensors
    assert bool((exported(x).argmax(-1) == y).all())


def test_open_decisions_are_made_when_fitting_ends():
    model, split = Model(), data(0)
    search = DartsSearch(split, lr=0.0, batch_size=32, loss_fn=loss)
    pt = PerturbationSelection(search, split, interval=5, batch_size=32, accuracy_fn=both_heads)
    trainer = pl.Trainer(max_epochs=1, callbacks=[search, pt], logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    with pytest.warns(UserWarning, match="still open"):
        trainer.fit(model, DataLoader(split, batch_size=32))
    assert pt.done and len(pt.decisions) == 2


def test_bad_arguments_are_named():
    split = data(0)
    with pytest.raises(MisconfigurationException, match="`search`"):
        PerturbationSelection(object(), split)
    with pytest.raises(MisconfigurationException, match="`interval`"):
        PerturbationSelection(DartsSearch(split), split, interval=0)
    pt = PerturbationSelection(DartsSearch(split), split)
    trainer = pl.Trainer(max_epochs=1, callbacks=[pt], logger=False, enable_checkpointing=False, enable_progress_bar=False)
    with pytest.raises(MisconfigurationException, match="same Trainer"):
        trainer.fit(Model(), DataLoader(split, batch_size=32))


def test_darts_plan_pairs_normal_and_reduce_cells():
    from lightning_nas.spaces.darts import darts_supernet

    net = darts_supernet(channels=2, layers=3)
    pt = PerturbationSelection(DartsSearch(data(0)), data(0), interval=5)
    plan = pt.plan(net)
    assert [kind for kind, _ in plan] == ["op"] * 14 + ["inputs"] * 3
    assert all(labels == (f"normal.{labels[0][7:]}", f"reduce.{labels[0][7:]}") for _, labels in plan)
    assert plan[-3:] == [("inputs", (f"normal.node_{j}", f"reduce.node_{j}")) for j in (3, 4, 5)]
    assert pt.epochs_needed(net) == 5 * 16 + 1  # as in DARTS-PT's public code: 81 epochs
    assert plan == PerturbationSelection(DartsSearch(data(0)), data(0)).plan(net)  # seeded order
