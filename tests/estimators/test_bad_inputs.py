"""What a broken network or malformed held-out data gives the estimators: a clear error naming the
problem, never a finite-looking accuracy table or accuracy."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import lightning_nas as ln
from lightning_nas.estimators import estimate_one_pass, estimate_paper_protocol
from lightning_nas.estimators.ranking import measure_subnet_accuracies


def tiny(nan: bool = False) -> ln.Supernet:
    torch.manual_seed(0)
    width = ln.Choice([4, 8], "width")
    net = ln.Supernet(nn.Sequential(
        ln.ElasticConv2d(3, width, 3, stride=2), nn.ReLU(),
        ln.DepthChoice([nn.Sequential(ln.ElasticConv2d(width, width, 3), nn.ReLU()) for _ in range(2)], [1, 2], "depth"),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), ln.ElasticLinear(width, 5)))
    if nan:
        with torch.no_grad():
            for p in net.parameters():
                p.fill_(float("nan"))
    return net


def data(classes: int = 5, n: int = 8) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    return DataLoader(TensorDataset(torch.randn(n, 3, 8, 8, generator=g), torch.randint(0, classes, (n,), generator=g)), batch_size=4)


@pytest.mark.parametrize("kwargs", [{}, {"fit": "log_error", "passes": 2}, {"paired": True, "passes": 2}])
def test_nan_network_is_refused(kwargs):
    with pytest.raises(ValueError, match="non-finite logits"):
        estimate_one_pass(tiny(nan=True), data(), **kwargs)


def test_nan_network_paper_protocol_and_measurement_are_refused():
    with pytest.raises(ValueError, match="non-finite logits"):
        estimate_paper_protocol(tiny(nan=True), data(), passes=1)
    net = tiny(nan=True)
    with pytest.raises(ValueError, match="non-finite logits"):
        measure_subnet_accuracies(net, net.space.sample_many(2, 0), data())


def test_labels_beyond_the_logits_are_refused():
    with pytest.raises(ValueError, match=r"class indices in \[0, 5\).*got values in \[[0-9]+, [0-9]+\]"):
        estimate_one_pass(tiny(), data(classes=50))
    float_labels = [(torch.randn(4, 3, 8, 8), torch.rand(4))]
    with pytest.raises(ValueError, match="integer class indices"):
        estimate_one_pass(tiny(), float_labels)


def test_single_tensor_batches_are_refused():
    with pytest.raises(ValueError, match="single tensor of shape \\(4, 3, 8, 8\\).*batch_to_xy"):
        estimate_one_pass(tiny(), [torch.randn(4, 3, 8, 8)])


def test_empty_held_out_is_named():
    with pytest.raises(ValueError, match="`held_out` yielded no batches"):
        estimate_one_pass(tiny(), [])


def test_healthy_network_still_estimates():
    table = estimate_one_pass(tiny(), data(), passes=2)
    assert torch.isfinite(torch.as_tensor(table.block)).all()


@pytest.mark.parametrize("kwargs", [{}, {"fit": "log_error", "passes": 2}, {"paired": True, "passes": 2}])
def test_a_score_returning_nan_or_the_wrong_shape_is_named(kwargs):
    nan_score = lambda logits, y: torch.full((len(y),), float("nan"))  # noqa: E731
    with pytest.raises(ValueError, match="`score` .* returned non-finite values"):
        estimate_one_pass(tiny(), data(), score=nan_score, **kwargs)
    with pytest.raises(ValueError, match=r"`score` .* must return a tensor of shape \(4,\)"):
        estimate_one_pass(tiny(), data(), score=lambda logits, y: torch.ones(3), **kwargs)


@pytest.mark.parametrize(("args", "name"), [
    ((torch.tensor([0.5, 0.5]), 6, 1, float("inf")), "`maximum`"),   # hung forever before
    ((torch.tensor([float("nan"), 0.5]), 6, 1, 4), "`spread`"),      # gave a count of -2**63
    ((torch.tensor([0.5, 0.5]), float("nan"), 1, 4), "`budget`"),
    ((torch.tensor([0.5, 0.5]), 6, -1, 4), "`minimum`"),
])
def test_allocate_records_arguments(args, name):
    from lightning_nas.estimators import allocate_records

    with pytest.raises(ValueError, match=name):
        allocate_records(*args)
