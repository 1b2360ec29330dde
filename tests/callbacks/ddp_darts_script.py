"""Run by test_darts_ddp.py: 2-process CPU DDP (gloo) DARTS search with DARTS-PT selection; each rank writes
its α, first α batch and PT decisions."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).parent))
from darts_models import TinySearch, tiny_data  # noqa: E402

from lightning_nas.callbacks.darts import DartsSearch, DrNASSearch  # noqa: E402
from lightning_nas.callbacks.selection import PerturbationSelection  # noqa: E402
from lightning_nas.differentiable.selection import count_correct  # noqa: E402

MEASURED: list[int] = []  # examples this rank's PT evaluations saw, per batch


def counting_correct(model, batch):
    MEASURED.append(int(batch[1].shape[0]))
    return count_correct(model, batch)


class Record(pl.Callback):
    def __init__(self, search: DartsSearch, pt: PerturbationSelection) -> None:
        self.search, self.pt = search, pt

    def on_train_end(self, trainer, pl_module):
        path = os.path.join(sys.argv[1], f"rank{trainer.global_rank}.json")
        first = self.search.arch_batch(0, trainer.global_rank, trainer.world_size)[0]
        with open(path, "w") as f:
            json.dump(
                {
                    "alpha": [a.detach().tolist() for a in self.search.relaxation.alpha],
                    "steps": self.search.steps,
                    "first_batch": first.tolist(),
                    "world_size": trainer.world_size,
                    "decisions": self.pt.decisions,
                    "measured": sum(MEASURED),
                    "arch": {k: str(v) for k, v in self.pt.arch.items()},
                },
                f,
            )


def main() -> None:
    arch = tiny_data(48, seed=1)
    search = (
        DrNASSearch(arch, batch_size=8, lr=0.05) if sys.argv[2] == "drnas" else DartsSearch(arch, batch_size=8, lr=0.05, order=int(sys.argv[2]))
    )
    # Both op decisions (epochs 0 and 1) are measured on held-out shards, one per rank.
    pt = PerturbationSelection(search, arch, interval=1, start_epoch=0, batch_size=8, accuracy_fn=counting_correct)
    trainer = pl.Trainer(
        accelerator="cpu", devices=2, strategy="ddp", max_epochs=2, callbacks=[search, pt, Record(search, pt)], logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
    )
    trainer.fit(TinySearch(), DataLoader(tiny_data(), batch_size=8))
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
