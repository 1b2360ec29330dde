"""The search driver: runs a strategy against an evaluator under a budget, storing everything.

An *evaluator* is a picklable callable ``evaluator(arch, fidelity) -> {metric: float}`` with a
``full_fidelity`` attribute (epochs of one full evaluation), optionally ``report_only`` (names of
metrics kept in the results but never shown to the strategy, e.g. test accuracy) and ``resumes``
(true when evaluating an arch again at a higher fidelity continues its earlier training, so only the
extra epochs are charged — what successive halving relies on).

Evaluations run on any :class:`concurrent.futures.Executor`: inline with ``n_workers=1`` (the
default), a local process pool with ``n_workers > 1``, or one the caller passes (e.g. Dask
distributed's ``client.get_executor()`` for a cluster). The driver keeps ``n_workers`` evaluations
in flight and asks for a new proposal as soon as one finishes (asynchronous search).
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Callable, Mapping
from concurrent.futures import FIRST_COMPLETED, Executor, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

from lightning_nas.strategies.base import Observation, Strategy, total_violation
from lightning_nas.strategies.results import SearchResults
from lightning_nas.strategies.storage import DONE, FAILED, PENDING, SQLiteStorage, Storage, TrialRecord

__all__ = ["Budget", "EvaluationError", "run_search"]

log = logging.getLogger(__name__)


class EvaluationError(RuntimeError):
    """An evaluation raised; the trial is stored as failed and is evaluated again on resume."""


@dataclass(frozen=True)
class Budget:
    """When to stop asking: after ``evaluations`` trials, ``equivalent_evaluations`` (epochs spent over the
    epochs of one full evaluation, the BO thesis's accounting) or ``seconds`` of wall time (summed over
    resumed runs), whichever comes first. At least one must be set.

    Trials in flight when a limit is reached are finished and stored; with an equivalent-evaluation
    limit the last trial may overshoot it by less than one trial's cost.
    """

    evaluations: int | None = None
    equivalent_evaluations: float | None = None
    seconds: float | None = None

    def __post_init__(self) -> None:
        if self.evaluations is None and self.equivalent_evaluations is None and self.seconds is None:
            raise ValueError("Budget needs `evaluations`, `equivalent_evaluations` or `seconds`; got none")
        if self.evaluations is not None and (isinstance(self.evaluations, bool) or not isinstance(self.evaluations, int)
                                             or self.evaluations < 1):
            raise ValueError(f"Budget `evaluations` must be an int >= 1, got {self.evaluations!r}")
        for name in ("equivalent_evaluations", "seconds"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, (int, float)) and value > 0 and math.isfinite(value)):
                raise ValueError(f"Budget `{name}` must be a positive finite number, got {value!r}")


class _InlineExecutor(Executor):
    """Runs each call at submit time in this process (``n_workers=1``): no pickling, no extra process."""

    def submit(self, fn: Callable, /, *args: Any, **kwargs: Any) -> Future:
        future: Future = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as err:  # noqa: BLE001 - handed to the driver like a pool's failure
            future.set_exception(err)
        return future


def _timed_call(evaluator: Callable, arch: dict[str, Any], fidelity: float) -> tuple[dict[str, float], float]:
    start = time.perf_counter()
    metrics = evaluator(arch, fidelity)
    return {k: float(v) for k, v in dict(metrics).items()}, time.perf_counter() - start


def run_search(strategy: Strategy, evaluator: Callable[[dict[str, Any], float], Mapping[str, float]], *,
               objective: str, budget: Budget, maximize: bool = True, storage: Storage | str | os.PathLike | None = None,
               executor: Executor | None = None, n_workers: int = 1, progress: bool = False,
               stop_when: Callable[[TrialRecord], bool] | None = None) -> SearchResults:
    """Run ``strategy`` against ``evaluator`` until ``budget`` is spent or the strategy has nothing left.

    Args:
        strategy: the ask/tell strategy; its constraints are checked on the evaluator's metrics.
        evaluator: ``evaluator(arch, fidelity) -> {metric: value}``, with ``full_fidelity`` (epochs).
        objective: the metric to optimise (one of the evaluator's metrics).
        budget: when to stop (see :class:`Budget`).
        maximize: whether larger objective values are better.
        storage: where trials are kept: a :class:`Storage`, or a path for a :class:`SQLiteStorage`.
            A storage that already holds trials of this search is resumed (same strategy class and
            objective required). ``None`` keeps them in memory only.
        executor: runs the evaluations; ``None``: inline when ``n_workers == 1``, else a local process
            pool of ``n_workers`` (created and shut down here). A given executor is not shut down.
        n_workers: evaluations kept in flight.
        progress: show a progress bar (tqdm) over the evaluation budget.
        stop_when: called with each finished trial; once it returns true no more proposals are asked
            (those in flight still finish), e.g. ``lambda t: t.metrics["valid_accuracy"] >= 94``.

    Returns:
        The :class:`SearchResults` of every trial in the storage (resumed ones included).

    Raises:
        EvaluationError: an evaluation raised (the trial is stored as failed; resuming retries it).
        ValueError: bad arguments, or a storage holding a different search.
    """
    if not isinstance(strategy, Strategy):
        raise ValueError(f"`strategy` must be a Strategy, got {type(strategy).__name__}")
    if not callable(evaluator) or not hasattr(evaluator, "full_fidelity"):
        raise ValueError("`evaluator` must be callable as evaluator(arch, fidelity) and have `full_fidelity` (epochs)")
    if not isinstance(budget, Budget):
        raise ValueError(f"`budget` must be a Budget, got {type(budget).__name__}")
    if isinstance(n_workers, bool) or not isinstance(n_workers, int) or n_workers < 1:
        raise ValueError(f"`n_workers` must be an int >= 1, got {n_workers!r}")
    full = float(evaluator.full_fidelity)
    report_only = set(getattr(evaluator, "report_only", ()))
    if storage is None:
        storage = Storage()
    elif not isinstance(storage, Storage):
        storage = SQLiteStorage(storage)
    identity = {"strategy": type(strategy).__qualname__, "objective": objective, "maximize": bool(maximize),
                "seed": strategy.seed}
    meta = storage.meta()
    state = storage.strategy_state()
    if state is not None:
        stored = {k: meta.get(k) for k in identity}
        if stored != identity:
            raise ValueError(f"the storage holds another search {stored}; this one is {identity}. "
                             "Use a new storage path to start a new search.")
        strategy.load_state_dict(state)
    else:
        storage.set_meta(**identity)
    elapsed0 = float(meta.get("elapsed", 0.0))
    start = time.perf_counter()
    records = {r.number: r for r in storage.trials()}
    spent_eval = sum(1 for r in records.values() if r.state == DONE)
    spent_equiv = sum(r.epochs / full for r in records.values() if r.state == DONE)
    resumes = bool(getattr(evaluator, "resumes", False))
    trained: dict[str, float] = {}  # arch (JSON) -> highest fidelity asked: where a resumed run starts
    for r in records.values():
        trained[_key(r.arch)] = max(trained.get(_key(r.arch), 0.0), r.fidelity)
    next_number = max(records, default=-1) + 1
    # Trials asked before a kill (or that failed) and never finished: evaluate them first, in order.
    backlog = [r for r in records.values() if r.state in (PENDING, FAILED)]

    own_executor = executor is None and n_workers > 1
    if executor is None:
        executor = _InlineExecutor() if n_workers == 1 else ProcessPoolExecutor(max_workers=n_workers)
    bar = _progress_bar(budget, spent_eval) if progress else None
    inflight: dict[Future, TrialRecord] = {}
    exhausted = stop_when is not None and any(stop_when(r) for r in records.values() if r.state == DONE)

    def elapsed() -> float:
        return elapsed0 + time.perf_counter() - start

    def can_ask() -> bool:
        n_in = len(inflight)
        cost_in = sum(r.epochs / full for r in inflight.values())
        return not (
            (budget.evaluations is not None and spent_eval + n_in >= budget.evaluations)
            or (budget.equivalent_evaluations is not None and spent_equiv + cost_in >= budget.equivalent_evaluations)
            or (budget.seconds is not None and elapsed() >= budget.seconds)
        )

    def submit(record: TrialRecord) -> None:
        inflight[executor.submit(_timed_call, evaluator, record.arch, record.fidelity)] = record

    try:
        while True:
            while backlog and len(inflight) < n_workers:
                submit(backlog.pop(0))
            while not backlog and not exhausted and len(inflight) < n_workers and can_ask():
                room = n_workers - len(inflight)
                if budget.evaluations is not None:
                    room = min(room, budget.evaluations - spent_eval - len(inflight))
                proposals = list(strategy.ask(room))
                if len(proposals) > room:
                    raise ValueError(f"{type(strategy).__name__}.ask({room}) returned {len(proposals)} proposals; "
                                     f"a strategy may return at most the number asked for")
                if not proposals:
                    exhausted = not inflight  # nothing in flight and nothing proposed: the strategy is done
                    break
                new = []
                for p in proposals:
                    fidelity = full if p.fidelity is None else float(p.fidelity)
                    arch = strategy.space.validate(p.arch)
                    before = trained.get(_key(arch), 0.0)
                    epochs = max(fidelity - before, 0.0) if resumes else fidelity
                    trained[_key(arch)] = max(before, fidelity)
                    new.append(TrialRecord(next_number, arch, fidelity, epochs))
                    next_number += 1
                storage.add_trials(new, strategy.state_dict())
                for r in new:
                    submit(r)
            if not inflight:
                break
            finished, _ = wait(list(inflight), return_when=FIRST_COMPLETED)
            for future in sorted(finished, key=lambda f: inflight[f].number):
                record = inflight.pop(future)
                try:
                    metrics, seconds = future.result()
                except Exception as err:
                    record.state, record.error = FAILED, f"{type(err).__name__}: {err}"
                    storage.finish_trial(record, None, elapsed())
                    raise EvaluationError(f"trial {record.number} (arch {record.arch}, fidelity {record.fidelity}) "
                                          f"failed: {record.error}") from err
                if objective not in metrics:
                    raise ValueError(f"objective {objective!r} is not among the evaluator's metrics {sorted(metrics)}")
                raw = metrics[objective]
                value = raw if maximize else -raw
                violation = total_violation(strategy.constraints, metrics)
                record.state, record.value, record.violation = DONE, value, violation
                record.metrics, record.seconds = metrics, seconds
                strategy.tell(Observation(record.number, dict(record.arch), record.fidelity, value, violation,
                                          {k: v for k, v in metrics.items() if k not in report_only}))
                storage.finish_trial(record, strategy.state_dict(), elapsed())
                spent_eval += 1
                spent_equiv += record.epochs / full
                exhausted = exhausted or (stop_when is not None and bool(stop_when(record)))
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix({objective: f"{raw:.4g}"})
                log.debug("trial %d: %s=%.4g at fidelity %g", record.number, objective, raw, record.fidelity)
    finally:
        if bar is not None:
            bar.close()
        if own_executor:
            executor.shutdown(wait=True, cancel_futures=True)
    results = SearchResults(storage.trials(), objective=objective, maximize=maximize, full_fidelity=full)
    best = results.best()
    if best is not None:
        log.info("search done: %d trials, best %s=%.4g", len(results), objective, best.metrics[objective])
    return results


def _key(arch: Mapping[str, Any]) -> str:
    return json.dumps(arch, sort_keys=True)


def _progress_bar(budget: Budget, initial: int):
    from tqdm.auto import tqdm

    return tqdm(total=budget.evaluations, initial=initial, unit="eval", desc="search")
