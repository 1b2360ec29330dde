from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lightning_nas.strategies.driver import Budget, run_search
from lightning_nas.strategies.rank_nosh import RankNOSH, pairwise_ranking_loss

sys.path.insert(0, str(Path(__file__).parent))
from synthetic import SyntheticEvaluator, synthetic_space  # noqa: E402

torch.set_num_threads(1)


class Resuming(SyntheticEvaluator):
    resumes = True


def nosh(seed: int = 0, **kwargs) -> RankNOSH:
    args = dict(levels=(2.5, 10.0), eta=3, new_per_round=6, members=2, trunk=(32,), branch=16, steps=60)
    return RankNOSH(synthetic_space(), seed=seed, **{**args, **kwargs})


@settings(max_examples=30, deadline=None)
@given(st.lists(st.floats(-4, 4), min_size=2, max_size=6), st.data())
def test_pairwise_loss_is_ranknet(scores: list[float], data: st.DataObject) -> None:
    n = len(scores)
    pairs = data.draw(st.lists(st.tuples(st.integers(0, n - 1), st.integers(0, n - 1)), min_size=1, max_size=8))
    better = torch.tensor([a for a, _ in pairs])
    worse = torch.tensor([b for _, b in pairs])
    got = float(pairwise_ranking_loss(torch.tensor(scores, dtype=torch.float64), better, worse))
    want = sum(math.log1p(math.exp(-(scores[a] - scores[b]))) for a, b in pairs) / len(pairs)
    assert got == pytest.approx(want, rel=1e-9)


def test_finds_the_optimum_keeps_a_pyramid_and_reproduces() -> None:
    evaluator = Resuming()
    results = run_search(nosh(0), evaluator, objective="accuracy", budget=Budget(evaluations=120))
    high = [r for r in results.done if r.fidelity == 10.0]
    low = [r for r in results.done if r.fidelity == 2.5]
    assert results.best().fidelity == 10.0
    assert results.best().value == pytest.approx(evaluator.optimum())
    assert len(high) <= math.ceil(len(low) / 3) + 1 and len(high) >= len(low) / 3 - 6
    assert {tuple(r.arch.values()) for r in high} <= {tuple(r.arch.values()) for r in low}  # promoted, not new
    # Promotions resume training: charged 7.5 epochs, not 10.
    assert {r.epochs for r in high} == {7.5}
    again = run_search(nosh(0), evaluator, objective="accuracy", budget=Budget(evaluations=40))
    assert [r.arch for r in again.done] == [r.arch for r in results.done[:40]]


def test_ranking_beats_random_entry() -> None:
    evaluator = SyntheticEvaluator(n_layers=6, n_values=4)
    space = synthetic_space(6, 4)
    ranked = run_search(RankNOSH(space, seed=0, levels=(2.5, 10.0), new_per_round=8, members=2, trunk=(32,),
                                 branch=16, steps=80), evaluator, objective="accuracy", budget=Budget(evaluations=60))
    first = ranked.done[:8]  # uniform draws of the first round
    later = [r for r in ranked.done[8:] if r.fidelity == 2.5]
    mean = lambda rs: sum(evaluator.accuracy(r.arch) for r in rs) / len(rs)  # noqa: E731
    assert mean(later) > mean(first)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="`levels` must be positive, strictly ascending"):
        nosh(levels=(10.0, 2.5))
    with pytest.raises(ValueError, match="`eta` must be a number > 1"):
        nosh(eta=1)
    with pytest.raises(ValueError, match="`levels` must be positive, strictly ascending"):
        nosh(levels=(float("nan"), 10.0))
    with pytest.raises(ValueError, match="`lr` must be a finite number > 0"):
        nosh(lr=float("nan"))
    with pytest.raises(ValueError, match="`new_per_round`"):
        nosh(new_per_round=0)


@pytest.mark.parametrize("stall_window", [1.0, None])
def test_a_stall_promotes_the_best_measured_arch_that_the_predictor_ranks_last(stall_window) -> None:
    from lightning_nas.strategies.base import Observation, arch_key

    rank = nosh(0, new_per_round=6, stall_window=stall_window)
    first = rank.ask(6)
    assert {p.fidelity for p in first} == {2.5}
    told = {arch_key(p.arch): float(i) for i, p in enumerate(first)}  # the last entry measured best
    for i, p in enumerate(first):
        rank.tell(Observation(i, p.arch, 2.5, told[arch_key(p.arch)]))

    def predict(archs):  # a predictor stuck elsewhere: the measured order reversed
        scores = np.array([-told.get(arch_key(a), 0.0) for a in archs])
        return np.stack([scores, scores])

    rank._fit = lambda: predict
    promoted = [p for p in rank.ask(len(first) + 6) if p.fidelity == 10.0]
    # 12 archs at the low level: 4 places above it; no top-level result yet, so 1.5 equivalent
    # evaluations have passed without improvement.
    assert len(promoted) == 4
    keys = [arch_key(p.arch) for p in promoted]
    best, second = arch_key(first[-1].arch), arch_key(first[-2].arch)
    if stall_window is None:  # the predictor alone: the 4 it scores highest, the 4 measured worst
        assert set(keys) == {arch_key(p.arch) for p in first[:4]}
    else:  # half the places (explore 0.5) by measured result, the rest by the predictor
        assert keys[:2] == [best, second]
        assert set(keys[2:]) == {arch_key(p.arch) for p in first[:2]}
