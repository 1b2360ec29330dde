"""The host-read and operator-call counters on hand-made cases."""

from __future__ import annotations

import pytest
import torch

from lightning_nas.profiling.counters import HostReadCounter, OperatorCounter, host_read_reason


def test_each_kind_of_host_read_is_counted_and_named():
    t = torch.arange(6.0)
    with HostReadCounter() as reads:
        t.sum().item()
        bool(t.sum() > 0)
        int(t[1])
        t.tolist()
        t.nonzero()
        t[t > 2]
        torch.unique(t)
        torch.bincount(t.long())
        torch.repeat_interleave(t, t.long())
    counts = dict(reads.by_operator)
    assert counts["_local_scalar_dense"] == 3 and counts["tolist"] == 1 and counts["index"] == 1
    assert {"nonzero", "_unique2", "bincount", "repeat_interleave"} <= counts.keys()
    assert "boolean mask" in reads.reasons["index"] and "tolist" in reads.summary()


def test_device_work_without_reads_counts_nothing():
    t = torch.arange(6.0, requires_grad=True)
    with HostReadCounter() as reads:
        mask = t > 2
        y = torch.where(mask, t, 0).sum() + t[torch.tensor([0, 2])].sum() + torch.repeat_interleave(t, 2, output_size=12).sum()
        y.backward()
    assert reads.total == 0, reads.summary()
    assert host_read_reason(torch.ops.aten.add.Tensor, (t, t)) is None


def test_raise_on_read_lists_the_reads():
    with pytest.raises(AssertionError, match=r"1 host read\(s\): _local_scalar_dense ×1"):
        with HostReadCounter(raise_on_read=True):
            torch.ones(2).sum().item()


def test_operator_counter_counts_forward_backward_and_views():
    w = torch.ones(3, 2, requires_grad=True)
    with OperatorCounter() as ops:
        (torch.ones(4, 3) @ w).view(-1).sum().backward()
    assert ops.by_operator["aten.mm.default"] >= 2  # forward and the weight gradient
    assert ops.by_operator["aten.view.default"] >= 1
    assert 0 < ops.kernels < ops.total
