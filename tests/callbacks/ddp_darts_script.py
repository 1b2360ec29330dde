"""DDP scenario `darts:<method>` of ddp_scenarios.py (read by test_darts_ddp.py): 2-process CPU DDP (gloo) DARTS
search with DARTS-PT selection; each rank writes its α, first α batch and PT decisions."""

from __future__ import annotations

import json
import os

import lightning.pytorch as pl
from darts_models import TinySearch, tiny_data  # ddp_scenarios.py's directory is on sys.path
from torch.utils.data import DataLoader

from lightning_nas.callbacks.darts import DartsSearch, DrNASSearch
from lightning_nas.callbacks.selection import PerturbationSelection
from lightning_nas.differentiable.selection import count_correct


class Record(pl.Callback):
    def __init__(self, out: str, search: DartsSearch, pt: PerturbationSelection, measured: list[int]) -> None:
        self.out, self.search, self.pt, self.measured = out, search, pt, measured

    def on_train_end(self, trainer, pl_module):
        path = os.path.join(self.out, f"rank{trainer.global_rank}.json")
        first = self.search.arch_batch(0, trainer.global_rank, trainer.world_size)[0]
        with open(path, "w") as f:
            json.dump(
                {
                    "alpha": [a.detach().tolist() for a in self.search.relaxation.alpha],
                    "steps": self.search.steps,
                    "first_batch": first.tolist(),
                    "world_size": trainer.world_size,
                    "decisions": self.pt.decisions,
                    "measured": sum(self.measured),
                    "arch": {k: str(v) for k, v in self.pt.arch.items()},
                },
                f,
            )


def run(out: str, method: str) -> None:
    """A 2-epoch search with DrNAS (method "drnas") or DARTS of order 1 or 2 (method "1" or "2"); each rank writes
    out/rank<r>.json."""
    measured: list[int] = []  # examples this rank's PT evaluations saw, per batch

    def counting_correct(model, batch):
        measured.append(int(batch[1].shape[0]))
        return count_correct(model, batch)

    arch = tiny_data(48, seed=1)
    search = DrNASSearch(arch, batch_size=8, lr=0.05) if method == "drnas" else DartsSearch(arch, batch_size=8, lr=0.05, order=int(method))
    # Both op decisions (epochs 0 and 1) are measured on held-out shards, one per rank.
    pt = PerturbationSelection(search, arch, interval=1, start_epoch=0, batch_size=8, accuracy_fn=counting_correct)
    trainer = pl.Trainer(
        accelerator="cpu", devices=2, strategy="ddp", max_epochs=2, callbacks=[search, pt, Record(out, search, pt, measured)],
        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
    )
    trainer.fit(TinySearch(), DataLoader(tiny_data(), batch_size=8))
