"""Under DDP a rank whose held-out batch breaks the estimate (non-finite logits) must not leave the
other ranks waiting for it: every rank raises, none hangs."""

from __future__ import annotations

import multiprocessing as mp
import traceback
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

import lightning_nas as ln
from lightning_nas.estimators import estimate_contributions


def _net() -> ln.Supernet:
    torch.manual_seed(0)
    return ln.Supernet(nn.Sequential(ln.ElasticLinear(4, ln.Choice([4, 8], "stage0.block0.w"), bias=True), nn.ReLU(),
                                     ln.ElasticLinear(ln.Choice([4, 8], "stage0.block0.w"), 3, bias=True)))


def _rank(rank: int, store: str, out: str, poison_rank: int) -> None:
    try:
        dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
        torch.set_num_threads(1)
        supernet = _net()
        held_out = []
        for i in range(4):  # batch i belongs to rank i % 2
            x = torch.randn(6, 4, generator=torch.Generator().manual_seed(i))
            if i % 2 == poison_rank:
                x[0, 0] = float("nan")
            held_out.append((x, torch.randint(0, 3, (6,), generator=torch.Generator().manual_seed(i))))
        estimate_contributions(supernet, held_out, passes=2, rank=rank, world_size=2)
        Path(out, f"rank{rank}").write_text("returned")
    except BaseException as err:  # noqa: BLE001 - the parent test reads what each rank raised
        Path(out, f"rank{rank}").write_text(f"{type(err).__name__}: {err}\n{traceback.format_exc()}")
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def test_a_failure_on_one_rank_stops_every_rank(tmp_path):
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_rank, args=(r, str(tmp_path / "store"), str(tmp_path), 1)) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    alive = [p.is_alive() for p in procs]
    for p in procs:
        if p.is_alive():
            p.kill()
    assert not any(alive), "a rank hung waiting for the rank that failed"
    first = (tmp_path / "rank1").read_text()
    other = (tmp_path / "rank0").read_text()
    assert first.startswith("ValueError: the network returned non-finite logits"), first
    assert other.startswith("RuntimeError: estimating contributions failed on rank 1"), other
