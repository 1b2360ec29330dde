"""The stall fallback's exploratory stream: a pairwise-interaction GP (``InteractionGP``), its batch UCB, and
BO / RANK-NOSH handing a stalled batch's non-local exploratory places to it."""

from __future__ import annotations

import itertools
import statistics
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from lightning_nas.strategies.bo import BayesianOptimization, normal_scores
from lightning_nas.strategies.codec import decode_state, encode_state
from lightning_nas.strategies.driver import Budget, run_search
from lightning_nas.strategies.exploration import InteractionGP, interaction_explorer, normal_scores_np, select_batch
from lightning_nas.strategies.rank_nosh import RankNOSH

sys.path.insert(0, str(Path(__file__).parent))
from synthetic import SyntheticEvaluator, synthetic_space  # noqa: E402

torch.set_num_threads(1)
SMALL = dict(members=3, trunk=(16, 16), branch=16, steps=30)


def encode(codes: np.ndarray, n_values: int) -> np.ndarray:
    """One-hot ``(N, D · n_values)`` of integer codes ``(N, D)``."""
    x = np.zeros((len(codes), codes.shape[1] * n_values))
    x[np.arange(len(codes))[:, None], codes + n_values * np.arange(codes.shape[1])] = 1.0
    return x


def test_normal_scores_one_implementation_for_bo_and_the_stream() -> None:
    # BO's float32 scores are the stream's float64 ones rounded: one code path, no twin that could drift.
    values = np.array([3.0, 1.0, 2.0, 2.0, -5.0, 7.5])
    scores = normal_scores_np(values)
    assert torch.equal(normal_scores(torch.tensor(values)), torch.from_numpy(scores).float())
    # Against the definition: ranks 4, 1, 2.5, 2.5, 0, 5 (ties share their mean rank) of N = 6.
    expected = [statistics.NormalDist().inv_cdf((r + 0.5) / 6) for r in (4, 1, 2.5, 2.5, 0, 5)]
    assert np.allclose(scores, expected, rtol=0, atol=1e-12)


def test_the_gp_learns_an_interaction_and_doubts_unseen_pairs() -> None:
    # 3 decisions of 3 values; the target is a pure interaction of decisions 0 and 1 (no value is good alone).
    codes = np.array(list(itertools.product(range(3), repeat=3)))
    y = np.where(codes[:, 0] == codes[:, 1], 1.0, -0.5)
    seen = codes[:, 0] != 2  # value 2 of decision 0 is never observed with any value of decision 1
    gp = InteractionGP(encode(codes[seen], 3), y[seen])
    assert gp.pair_share > 0  # the marginal likelihood chose a kernel with pairs: an additive one cannot fit y
    mean, variance, _ = gp.posterior(encode(codes, 3))
    assert np.corrcoef(mean[seen], y[seen])[0, 1] > 0.95
    # The unseen pairs are doubted more than any observed one.
    assert variance[~seen].min() > variance[seen].max()
    again = InteractionGP(encode(codes[seen], 3), y[seen]).posterior(encode(codes, 3))[0]
    assert np.array_equal(mean, again)  # no random draw anywhere
    with pytest.raises(ValueError, match="at least 2 observations"):
        InteractionGP(encode(codes[:1], 3), y[:1])
    with pytest.raises(ValueError, match=r"`x` must be \(n, E\) and `y` \(n,\)"):
        InteractionGP(encode(codes, 3), y[:3])


def test_batch_ucb_spreads_its_picks_and_skips_blocked_candidates() -> None:
    codes = np.array(list(itertools.product(range(3), repeat=3)))
    x = encode(codes, 3)
    gp = InteractionGP(x[:6], np.linspace(-1, 1, 6))
    mean, variance, _ = gp.posterior(x)
    ucb = mean + 2.0 * np.sqrt(variance)
    blocked = np.zeros(len(x), dtype=bool)
    blocked[int(np.argmax(ucb))] = True
    picks = gp.ucb_batch(x, 4, blocked)
    assert len(set(picks.tolist())) == 4 and not blocked[picks].any()
    assert picks[0] == int(np.argmax(np.where(blocked, -np.inf, ucb)))  # the first pick is plain UCB
    # Duplicated candidates: once one copy is picked, its twin has lost its doubt and is not picked next.
    twins = np.concatenate([x, x])
    picks = gp.ucb_batch(twins, 2)
    assert picks[1] % len(x) != picks[0] % len(x)
    assert gp.ucb_batch(x, 3, np.ones(len(x), dtype=bool)).tolist() == []


def test_select_batch_gives_only_a_stalled_batch_s_non_local_places_to_the_explorer() -> None:
    calls = []

    def explorer(count: int, blocked: np.ndarray) -> np.ndarray:
        calls.append((count, np.flatnonzero(blocked).tolist()))
        return np.flatnonzero(~blocked)[::-1][:count]  # the last free candidates

    acq, mean, std = np.linspace(1.0, 0.1, 10), np.zeros(10), np.linspace(0.0, 1.0, 10)
    distance = np.array([2, 2, 2, 2, 2, 2, 2, 2, 1, 1])
    feasible = np.ones(10, dtype=bool)
    feasible[7] = False
    chosen, reason = select_batch(acq, mean, std, 8, distance=distance, feasible=feasible, stalled=True,
                                  explore=0.5, explorer=explorer)
    # 4 by the acquisition, 2 neighbours (8, then 9 by the acquisition), then the explorer's 2 among the feasible
    # (7 is blocked).
    assert reason == "stalled" and chosen.tolist() == [0, 1, 2, 3, 8, 9, 6, 5]
    assert calls == [(2, [0, 1, 2, 3, 7, 8, 9])]
    calls.clear()
    assert select_batch(acq, mean, std, 4, distance=distance, explorer=explorer) == (pytest.approx([0, 1, 2, 3]), None)
    assert calls == []  # not stalled and the acquisition ranks: the explorer is never asked


def test_bo_explores_with_its_stream_only_when_stalled_and_reproduces() -> None:
    def run(seed: int, **kwargs) -> BayesianOptimization:
        bo = BayesianOptimization(synthetic_space(), seed=seed, batch_size=4, initial=4, acquisition="ucb", **SMALL,
                                  **kwargs)
        run_search(bo, SyntheticEvaluator(), objective="accuracy", budget=Budget(evaluations=24))
        return bo

    stalled = run(0, stall_window=1.0)
    assert "stalled" in {r for _, r in stalled.explorations} and stalled.stream
    # The stream's picks are archs the search evaluated, all after the first stall.
    first = min(i for i, r in stalled.explorations if r == "stalled")
    numbers = {tuple(sorted(o.arch.items())): o.number for o in stalled.history}
    assert all(numbers[tuple(sorted(dict(k).items()))] >= 4 * first for k in stalled.stream)
    again = run(0, stall_window=1.0)
    assert [o.arch for o in again.history] == [o.arch for o in stalled.history] and again.stream == stalled.stream
    # The stream is part of the stored state: a resumed search continues the same stream.
    restored = decode_state(encode_state(stalled.state_dict()))
    assert restored["stream"] == stalled.stream
    assert run(0, stall_window=None).stream == set()
    old = run(0, stall_window=1.0, explore_with="disagreement")
    assert old.stream == set() and "stalled" in {r for _, r in old.explorations}
    with pytest.raises(ValueError, match="`explore_with` must be one of"):
        BayesianOptimization(synthetic_space(), explore_with="random")


def test_auto_streams_unless_every_refit_restarts_from_a_pretrained_prior() -> None:
    costs = SyntheticEvaluator().costs
    assert BayesianOptimization(synthetic_space()).explore_with == "interaction"
    assert BayesianOptimization(synthetic_space(), warm_start=True).explore_with == "interaction"
    assert BayesianOptimization(synthetic_space(), cost_model=costs, pretrain_metrics=["cost"]).explore_with \
        == "disagreement"
    # Warm-started refits (the multi-fidelity schedule's) drift from the prior: the stream.
    assert BayesianOptimization(synthetic_space(), cost_model=costs, pretrain_metrics=["cost"], warm_start=True,
                                fidelities=(1.0, 4.0)).explore_with == "interaction"
    assert BayesianOptimization(synthetic_space(), cost_model=costs, pretrain_metrics=["cost"], warm_start=True,
                                explore_with="disagreement").explore_with == "disagreement"
    assert BayesianOptimization(synthetic_space(), cost_model=costs, pretrain_metrics=["cost"],
                                explore_with="interaction").explore_with == "interaction"


def test_rank_nosh_explores_with_its_stream_only_when_stalled() -> None:
    def run(**kwargs) -> RankNOSH:
        rank = RankNOSH(synthetic_space(), seed=1, levels=(2.5, 10.0), new_per_round=4, **SMALL, **kwargs)
        run_search(rank, SyntheticEvaluator(), objective="accuracy", budget=Budget(evaluations=30))
        return rank

    stalled = run(stall_window=0.5)
    assert stalled.explorations and stalled.stream
    assert run(stall_window=None).stream == set()
    with pytest.raises(ValueError, match="`explore_with` must be one of"):
        RankNOSH(synthetic_space(), explore_with="random")


def test_the_exploratory_gp_runs_on_one_blas_thread_and_restores_the_pool(monkeypatch) -> None:
    from threadpoolctl import threadpool_info

    from lightning_nas.strategies.base import Observation
    from lightning_nas.strategies.candidates import one_hot

    def blas_threads() -> set[int]:
        return {i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"}

    seen: list[set[int]] = []
    original = InteractionGP.ucb_batch

    def spy(self, *args, **kwargs):
        seen.append(blas_threads())
        return original(self, *args, **kwargs)

    monkeypatch.setattr(InteractionGP, "ucb_batch", spy)
    space = synthetic_space()
    archs = list(space.enumerate())
    history = [Observation(i, a, 10.0, float(i % 7)) for i, a in enumerate(archs[:12])]
    before = blas_threads()
    picks = interaction_explorer(space, history, one_hot(space, archs).numpy())(3, np.zeros(len(archs), dtype=bool))
    assert len(picks) == 3
    assert seen == [{1}]
    assert blas_threads() == before
