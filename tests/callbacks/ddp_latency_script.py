"""DDP scenario `latency` of ddp_scenarios.py (read by test_latency.py): LatencyProfiler under 2-process CPU DDP
(gloo); each rank writes the table it holds."""

from __future__ import annotations

import json
import os

import lightning.pytorch as pl
from test_latency import Classifier, loader  # ddp_scenarios.py's directory is on sys.path

from lightning_nas.callbacks.latency import LatencyProfiler


class Report(pl.Callback):
    def __init__(self, out: str, profiler: LatencyProfiler) -> None:
        self.out, self.profiler = out, profiler

    def on_train_end(self, trainer, pl_module):
        table = self.profiler.latency_table
        with open(os.path.join(self.out, f"rank{trainer.global_rank}.json"), "w") as f:
            json.dump({"block": table.block.tolist(), "created": table.metadata["created"], "world_size": trainer.world_size}, f)


def run(out: str, mode: None = None) -> None:
    """Two steps with a LatencyProfiler writing out/lat.json; each rank writes out/rank<r>.json. No modes."""
    profiler = LatencyProfiler(os.path.join(out, "lat.json"), repeats=3, warmup=1, calibration_archs=1)
    trainer = pl.Trainer(
        accelerator="cpu", devices=2, strategy="ddp_find_unused_parameters_true", max_steps=2, callbacks=[profiler, Report(out, profiler)],
        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
    )
    trainer.fit(Classifier(), loader())
