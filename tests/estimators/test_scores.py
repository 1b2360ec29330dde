"""Per-example scores for the estimators: top-1 correctness and its margin-smoothed form."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from lightning_nas.estimators import SmoothedTop1, estimate_contributions, estimate_one_pass, top1_correct

logit_rows = st.integers(2, 6).flatmap(
    lambda k: arrays(np.float64, st.tuples(st.integers(1, 8), st.just(k)), elements=st.floats(-20, 20, allow_nan=False))
)


@settings(max_examples=60, deadline=None)
@given(logit_rows, st.floats(0.05, 4.0), st.floats(-50, 50), st.data())
def test_smoothed_top1_is_the_margin_sigmoid_shift_invariant_and_monotone(logits, temperature, shift, data):
    n, k = logits.shape
    labels = np.array(data.draw(st.lists(st.integers(0, k - 1), min_size=n, max_size=n)))
    score = SmoothedTop1(temperature)
    z, y = torch.as_tensor(logits), torch.as_tensor(labels)
    value = score(z, y).numpy()
    for i in range(n):  # by hand: margin of the true class over the best other class
        margin = logits[i, labels[i]] - np.delete(logits[i], labels[i]).max()
        assert value[i] == pytest.approx(0.5 * (1 + math.tanh(margin / (2 * temperature))), abs=1e-12)  # σ, overflow-free
    assert np.all((value >= 0) & (value <= 1))
    assert np.allclose(score(z + shift, y).numpy(), value, atol=1e-9)  # softmax-style shift invariance
    raised = z.clone()
    raised[torch.arange(n), y] += 1.0  # a more confident true class never scores lower
    assert np.all(score(raised, y).numpy() >= value - 1e-12)


@settings(max_examples=40, deadline=None)
@given(logit_rows, st.data())
def test_smoothed_top1_tends_to_top1_correctness(logits, data):
    n, k = logits.shape
    labels = torch.as_tensor(data.draw(st.lists(st.integers(0, k - 1), min_size=n, max_size=n)))
    z = torch.as_tensor(logits)
    sharp = SmoothedTop1(1e-6)(z, labels)
    others = z.scatter(1, labels[:, None], float("-inf")).amax(1)
    margin = z[torch.arange(n), labels] - others
    decided = margin.abs() > 1e-3
    assert torch.equal(sharp[decided] > 0.5, top1_correct(z, labels)[decided])
    assert torch.allclose(sharp[decided], top1_correct(z, labels)[decided].double())
    assert torch.all(sharp[margin == 0] == 0.5)  # a tie is half right


def test_smoothed_score_on_the_oracle_is_an_exact_affine_map_of_correctness(oracle):
    # The oracle's logits are (0, ±1): its margin is ±1, so each record's smoothed score is
    # σ(−1/T) + (σ(1/T) − σ(−1/T))·correct. The same draws must give gains scaled by exactly that
    # factor, plainly and paired; this checks the score reaches every conditional.
    loader = oracle.loader(600, 200)
    temperature = 0.7
    high, low = 1 / (1 + math.exp(-1 / temperature)), 1 / (1 + math.exp(1 / temperature))
    for kwargs in ({"passes": 2}, {"passes": 3, "paired": True}, {"method": "paper", "passes": 1}):
        hard = estimate_contributions(oracle.supernet, loader, seed=4, **kwargs)
        soft = estimate_contributions(oracle.supernet, loader, seed=4, score=SmoothedTop1(temperature), **kwargs)
        assert soft.constant == pytest.approx(low + (high - low) * hard.constant, abs=1e-12)
        assert np.allclose(soft.block, (high - low) * hard.block, atol=1e-12)
        assert np.allclose(soft.depth, (high - low) * hard.depth, atol=1e-12)
        assert hard.metadata["score"] == "top1_correct" and soft.metadata["score"] == f"SmoothedTop1(temperature={temperature:g})"


def test_an_explicit_top1_score_is_the_default_and_a_constant_score_has_no_gains(oracle):
    loader = oracle.loader(300, 100)
    default = estimate_one_pass(oracle.supernet, loader, passes=2, seed=1)
    explicit = estimate_one_pass(oracle.supernet, loader, passes=2, seed=1, score=top1_correct)
    assert explicit.to_dict() == default.to_dict()
    flat = estimate_one_pass(oracle.supernet, loader, passes=2, seed=1, score=lambda logits, y: torch.full(y.shape, 0.3))
    assert flat.constant == pytest.approx(0.3) and np.allclose(flat.block, 0) and np.allclose(flat.depth, 0)


def test_bad_scores_are_named(oracle):
    loader = oracle.loader(20, 10)
    with pytest.raises(ValueError, match="`score` must be a callable"):
        estimate_one_pass(oracle.supernet, loader, score="smoothed")
    with pytest.raises(ValueError, match=r"per-example score.*\[0, 1\].*2"):
        estimate_one_pass(oracle.supernet, loader, score=lambda logits, y: torch.full(y.shape, 2.0))
    for bad in (0, -1.0, float("inf"), float("nan"), True, "0.25"):
        with pytest.raises(ValueError, match="temperature"):
            SmoothedTop1(bad)
    with pytest.raises(ValueError, match="2 classes"):
        SmoothedTop1()(torch.zeros(3, 1), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="labels must have shape"):
        SmoothedTop1()(torch.zeros(3, 4), torch.zeros(2, dtype=torch.long))
