"""DDP scenario `contribution` of ddp_scenarios.py (read by test_contribution.py): 2-process CPU DDP (gloo) with
ContributionEstimation; each rank writes its table."""

from __future__ import annotations

import json
import os

import lightning.pytorch as pl
import torch
from test_contribution import DATA, DDP_RUNS, gratings_dataset, tiny_model  # ddp_scenarios.py's directory is on sys.path
from torch.utils.data import DataLoader

from lightning_nas.callbacks import UniformSampling
from lightning_nas.callbacks.contribution import ContributionEstimation


def ddp_model():
    model = tiny_model()
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.momentum = 0.0  # identical running statistics on every rank, whatever each rank saw
    return model


def run(out: str, mode: None = None) -> None:
    """One epoch of 2 steps with the DDP_RUNS estimates; each rank writes out/rank<r>.json, rank 0 also the weights
    (out/model.pt). The scenario has no modes."""
    held_out = DataLoader(gratings_dataset(70, seed=2, **DATA), batch_size=10)  # 7 batches: uneven shards
    callbacks = {name: ContributionEstimation(held_out, seed=5, **options) for name, options in DDP_RUNS.items()}
    trainer = pl.Trainer(
        accelerator="cpu", devices=2, strategy="ddp_find_unused_parameters_true", max_epochs=1, limit_train_batches=2,
        callbacks=[UniformSampling(0, per_sample=True), *callbacks.values()], logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False,
    )
    model = ddp_model()
    trainer.fit(model, DataLoader(gratings_dataset(64, seed=0, **DATA), batch_size=8))
    with open(os.path.join(out, f"rank{trainer.global_rank}.json"), "w") as f:
        tables = {name: cb.accuracy_model.to_dict() for name, cb in callbacks.items()}
        json.dump({"tables": tables, "world_size": trainer.world_size}, f)
    if trainer.global_rank == 0:
        torch.save(model.state_dict(), os.path.join(out, "model.pt"))
