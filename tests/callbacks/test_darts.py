"""DartsSearch / DrNASSearch as callbacks: α apart from the user's optimiser, logging, resume, errors."""

from __future__ import annotations

import sys
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).parent))
from darts_models import TinySearch, tiny_data  # noqa: E402

from lightning_nas.callbacks.darts import DartsSearch, DrNASSearch  # noqa: E402

torch.set_num_threads(1)


def trainer(callbacks, max_epochs, tmp_path=None, **kwargs):
    return pl.Trainer(
        max_epochs=max_epochs, callbacks=callbacks, logger=kwargs.pop("logger", False), enable_progress_bar=False,
        enable_model_summary=False, enable_checkpointing=tmp_path is not None, default_root_dir=tmp_path, **kwargs,
    )


def make(kind: str, seed: int = 0):
    arch = tiny_data(48, seed=1)
    if kind == "drnas":
        return DrNASSearch(arch, batch_size=8, lr=0.05, seed=seed, prune_at={2: 2})
    return DartsSearch(arch, batch_size=8, lr=0.05, order=2 if kind == "darts2" else 1, seed=seed)


def test_alpha_trains_apart_from_the_users_optimiser():
    search = make("darts1")
    model = TinySearch()
    fit = trainer([search], 2)
    fit.fit(model, DataLoader(tiny_data(), batch_size=16))
    assert search.steps == 8
    user_params = {id(p) for group in fit.optimizers[0].param_groups for p in group["params"]}
    assert not user_params & {id(a) for a in search.relaxation.alpha}
    assert all(float(a.abs().max()) > 0.05 for a in search.relaxation.alpha)  # moved far beyond the 1e-3 init
    assert [h["epoch"] for h in search.history] == [0, 1]
    assert sorted(search.history[-1]["weights"]) == ["op1", "op2"]
    arch = search.select()
    assert arch["op2"] != "none" and model.net.space.contains(arch)
    assert "alpha/op1/tanh" in fit.logged_metrics


@pytest.mark.parametrize("kind", ["darts1", "darts2", "drnas"])
def test_resume_reproduces_the_uninterrupted_alpha_trajectory(tmp_path, kind):
    data = lambda: DataLoader(tiny_data(), batch_size=16)  # noqa: E731
    straight = make(kind)
    trainer([straight], 4).fit(TinySearch(), data())

    first = make(kind)
    run = trainer([first], 2, tmp_path)
    run.fit(TinySearch(), data())
    ckpt = tmp_path / "mid.ckpt"
    run.save_checkpoint(ckpt)
    resumed = make(kind)
    trainer([resumed], 4).fit(TinySearch(seed=5), data(), ckpt_path=ckpt)

    assert resumed.steps == straight.steps == 16
    assert [h["epoch"] for h in resumed.history] == [0, 1, 2, 3]
    for a, b in zip(resumed.history, straight.history):
        for label in a["weights"]:
            torch.testing.assert_close(
                torch.tensor(list(a["weights"][label].values())), torch.tensor(list(b["weights"][label].values())), atol=1e-6, rtol=0
            )
    for a, b in zip(resumed.relaxation.alpha, straight.relaxation.alpha):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


def test_start_epoch_and_arch_batches_are_a_function_of_the_step():
    search = DartsSearch(tiny_data(20), batch_size=8, start_epoch=1)
    trainer([search], 1).fit(TinySearch(), DataLoader(tiny_data(), batch_size=32))
    assert search.steps == 0
    a, b = search.arch_batch(3), search.arch_batch(3)
    assert torch.equal(a[0], b[0])
    # One pass of 2 batches, then a reshuffled pass; ranks take interleaved slots.
    assert not set(search.arch_batch(0)[0][:, 0].tolist()) & set(search.arch_batch(1)[0][:, 0].tolist())
    assert torch.equal(search.arch_batch(1, rank=0, world_size=2)[0], search.arch_batch(2)[0])


def test_drnas_prunes_and_anchors_toward_the_prior():
    search = make("drnas")
    trainer([search], 3).fit(TinySearch(), DataLoader(tiny_data(), batch_size=16))
    relaxation = search.relaxation
    assert all(len(relaxation.available_ops(label)) == 2 for label in relaxation.op_labels)
    assert all(sum(w > 0 for w in ws.values()) == 2 for ws in search.history[-1]["weights"].values())
    assert relaxation.draws > 0


def test_bad_arguments_are_named():
    with pytest.raises(MisconfigurationException, match="`order`"):
        DartsSearch(tiny_data(), order=3)
    with pytest.raises(MisconfigurationException, match="`arch_data`"):
        DartsSearch([])
    with pytest.raises(MisconfigurationException, match="`anchor`"):
        DrNASSearch(tiny_data(), anchor="l1")
    with pytest.raises(MisconfigurationException, match="`prune_at`"):
        DrNASSearch(tiny_data(), prune_at={3: 0})
    with pytest.raises(RuntimeError, match="fitted"):
        DartsSearch(tiny_data()).select()


class AdamSearch(TinySearch):
    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=0.01)


def test_second_order_warns_when_the_users_optimiser_is_not_sgd():
    search = DartsSearch(tiny_data(48, seed=1), batch_size=8, order=2)
    with pytest.warns(UserWarning, match="not torch.optim.SGD"):
        trainer([search], 1).fit(AdamSearch(), DataLoader(tiny_data(16), batch_size=16))
    assert search.steps == 1


def test_drnas_defaults_are_drnas_own():
    search = DrNASSearch(tiny_data())
    assert (search.lr, search.betas, search.weight_decay, search.order) == (6e-4, (0.5, 0.999), 0.0, 1)
    assert (search.anchor, search.anchor_weight) == ("l2", 1e-3)
