"""BO's handling of a flat acquisition (``select_batch(flat="exploit")``): the acquisition, then the
fallback, then the mean fill the batch; only a stall makes places exploratory."""

from __future__ import annotations

import numpy as np
import pytest

from lightning_nas.strategies.exploration import select_batch


def test_a_flat_acquisition_is_filled_by_the_fallback_then_the_mean() -> None:
    acq = np.zeros(10)
    acq[7] = 0.5  # ranks one candidate
    fallback = np.zeros(10)
    fallback[[2, 4]] = [1 / 3, 2 / 3]  # ranks two more: 4, then 2
    mean = np.arange(10.0)  # the rest by the mean: 9, 8, ...
    std = np.array([0, 0, 0, 0, 0, 5, 0, 0, 0, 1.0])  # disagreement would take 5: not flat's business here
    distance = np.array([3, 1, 2, 1, 2, 3, 3, 3, 3, 3])  # neither are the incumbent's neighbours 1 and 3
    chosen, reason = select_batch(acq, mean, std, 5, distance=distance, fallback=fallback, flat="exploit")
    assert reason == "flat" and chosen.tolist() == [7, 4, 2, 9, 8]
    chosen, reason = select_batch(np.linspace(1, 0.1, 10), mean, std, 5, distance=distance, fallback=fallback,
                                  flat="exploit")
    assert reason is None and chosen.tolist() == [0, 1, 2, 3, 4]


def test_a_stall_makes_a_share_exploratory_and_infeasible_candidates_come_last() -> None:
    acq, fallback = np.zeros(10), np.zeros(10)
    mean = np.arange(10.0)
    std = np.array([0, 0, 0, 0, 0, 5, 0, 0, 0, 1.0])
    distance = np.array([3, 1, 2, 1, 2, 3, 3, 3, 3, 3])
    feasible = np.ones(10, dtype=bool)
    feasible[9] = False
    chosen, reason = select_batch(acq, mean, std, 4, distance=distance, feasible=feasible, stalled=True,
                                  explore=0.5, fallback=fallback, flat="exploit")
    # 2 by the mean among the feasible (8, 7), 1 trust-region move (3 before 1 by mean + std), 1 by disagreement (5).
    assert reason == "stalled" and chosen.tolist() == [8, 7, 3, 5]
    with pytest.raises(ValueError, match="`flat` must be one of"):
        select_batch(acq, mean, std, 4, flat="random")
