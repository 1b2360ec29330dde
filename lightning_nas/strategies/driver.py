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
import numbers
import os
import time
from collections.abc import Callable, Mapping
from concurrent.futures import FIRST_COMPLETED, Executor, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

from lightning_nas.spaces.search_space import SearchSpace
from lightning_nas.strategies.base import Failure, Observation, Strategy, total_violation
from lightning_nas.strategies.results import SearchResults
from lightning_nas.strategies.storage import DONE, FAILED, PENDING, SQLiteStorage, Storage, TrialRecord
from lightning_nas.strategies.workers import EvaluationProcessDied, ProcessPerTrialExecutor, TrialTimeout

__all__ = ["Budget", "EvaluationError", "describe_space", "run_search"]

log = logging.getLogger(__name__)


class EvaluationError(RuntimeError):
    """An evaluation raised; the trial is stored as failed (with the error) and the search stopped."""


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
    if not isinstance(metrics, Mapping):
        raise TypeError(f"the evaluator must return a dict {{metric: number}}, got a {type(metrics).__name__}")
    out = {}
    for name, value in metrics.items():
        try:
            out[str(name)] = float(value)
        except (TypeError, ValueError):
            raise TypeError(f"the evaluator returned metric {name!r} = {value!r:.100}, not a number") from None
    return out, time.perf_counter() - start


def run_search(strategy: Strategy, evaluator: Callable[[dict[str, Any], float], Mapping[str, float]], *,
               objective: str, budget: Budget, maximize: bool = True, storage: Storage | str | os.PathLike | None = None,
               executor: Executor | None = None, n_workers: int = 1, progress: bool = False,
               stop_when: Callable[[TrialRecord], bool] | None = None,
               trial_timeout: float | None = None) -> SearchResults:
    """Run ``strategy`` against ``evaluator`` until ``budget`` is spent or the strategy has nothing left.

    A trial *fails* (stored with state ``"failed"`` and the reason, told to the strategy with
    :meth:`~lightning_nas.strategies.base.Strategy.tell_failure`, never ranked, never retried, but
    counted in the budget) when its objective is NaN or infinite, when it runs past
    ``trial_timeout``, or when its evaluation process dies; the search goes on. When the evaluator
    raises, the trial fails the same way and the search stops with :class:`EvaluationError` (usually
    a bug that would fail every trial); rerunning resumes after it.

    Args:
        strategy: the ask/tell strategy; its constraints are checked on the evaluator's metrics.
        evaluator: ``evaluator(arch, fidelity) -> {metric: value}``, with ``full_fidelity`` (epochs).
        objective: the metric to optimise (one of the evaluator's metrics).
        budget: when to stop (see :class:`Budget`).
        maximize: whether larger objective values are better.
        storage: where trials are kept: a :class:`Storage`, or a path for a :class:`SQLiteStorage`
            (opened and closed here: once this returns or raises, the file holds every trial and may
            be copied). A storage that already holds trials of this search is resumed (same strategy
            class, seed, objective, direction and search space required). ``None`` keeps them in
            memory only.
        executor: runs the evaluations; ``None``: inline when ``n_workers == 1``, else a local process
            pool of ``n_workers`` (created and shut down here). A given executor is not shut down.
        n_workers: evaluations kept in flight.
        progress: show a progress bar (tqdm) over the evaluation budget.
        stop_when: called with each finished trial; once it returns true no more proposals are asked
            (those in flight still finish), e.g. ``lambda t: t.metrics["valid_accuracy"] >= 94``.
        trial_timeout: seconds one evaluation may take. Each evaluation then runs in its own child
            process (see :class:`~lightning_nas.strategies.workers.ProcessPerTrialExecutor`), killed
            at the limit; the trial fails and the search goes on. Not combinable with ``executor``
            (a task running on an arbitrary executor cannot be stopped).

    Returns:
        The :class:`SearchResults` of every trial in the storage (resumed ones included).

    Raises:
        EvaluationError: an evaluation raised (the trial is stored as failed).
        ValueError: bad arguments, or a storage holding a different search (or that cannot be opened).
        OSError: the storage could not be written during the search (a full disk); what was stored is kept.
    """
    if not isinstance(strategy, Strategy):
        raise ValueError(f"`strategy` must be a Strategy, got {type(strategy).__name__}")
    if not callable(evaluator) or not hasattr(evaluator, "full_fidelity"):
        raise ValueError("`evaluator` must be callable as evaluator(arch, fidelity) and have `full_fidelity` (epochs)")
    full = _positive_finite(evaluator.full_fidelity, "`evaluator.full_fidelity` (epochs of one full evaluation)")
    if not isinstance(budget, Budget):
        raise ValueError(f"`budget` must be a Budget, got {type(budget).__name__}")
    if isinstance(n_workers, bool) or not isinstance(n_workers, int) or n_workers < 1:
        raise ValueError(f"`n_workers` must be an int >= 1, got {n_workers!r}")
    if trial_timeout is not None:
        trial_timeout = _positive_finite(trial_timeout, "`trial_timeout` (seconds)")
        if executor is not None:
            raise ValueError("`trial_timeout` cannot be combined with `executor`: a task running on an executor "
                             "cannot be stopped; drop `executor` (evaluations then run in child processes that are "
                             "killed at the limit) or drop `trial_timeout`")
    own_storage = storage is not None and not isinstance(storage, Storage)
    if storage is None:
        storage = Storage()
    elif own_storage:
        storage = SQLiteStorage(storage)
    try:
        return _search(strategy, evaluator, full, objective, budget, bool(maximize), storage, executor, n_workers,
                       progress, stop_when, trial_timeout)
    finally:
        if own_storage:
            storage.close()


def _search(strategy: Strategy, evaluator: Callable, full: float, objective: str, budget: Budget, maximize: bool,
            storage: Storage, executor: Executor | None, n_workers: int, progress: bool,
            stop_when: Callable[[TrialRecord], bool] | None, trial_timeout: float | None) -> SearchResults:
    report_only = set(getattr(evaluator, "report_only", ()))
    where = f"storage {str(storage.path)!r}" if isinstance(storage, SQLiteStorage) else "the storage"
    identity = {"strategy": type(strategy).__qualname__, "objective": objective, "maximize": maximize,
                "seed": strategy.seed}
    space = describe_space(strategy.space)
    meta = storage.meta()
    state = storage.strategy_state()
    if state is not None:
        stored = {k: meta.get(k) for k in identity}
        if stored != identity:
            raise ValueError(f"{where} holds another search {stored}; this one is {identity}. "
                             "Use a new storage path to start a new search.")
        if meta.get("space") is None:  # converted from a file that did not record its space
            storage.set_meta(space=space)
        elif meta["space"] != space:
            raise ValueError(f"{where} holds a search over another search space: {_space_difference(meta['space'], space)}. "
                             "Use a new storage path to search this space.")
        for r in storage.trials():
            try:
                strategy.space.validate(r.arch)
            except ValueError as err:
                raise ValueError(f"{where}: trial {r.number} holds an arch that is not in this search space "
                                 f"({err})") from None
        strategy.load_state_dict(state)
    else:
        storage.set_meta(**identity, space=space)
    elapsed0 = float(meta.get("elapsed", 0.0))
    start = time.perf_counter()
    records = {r.number: r for r in storage.trials()}
    ended = [r for r in records.values() if r.state in (DONE, FAILED)]  # both spend the budget
    spent_eval = len(ended)
    spent_equiv = sum(r.epochs / full for r in ended)
    resumes = bool(getattr(evaluator, "resumes", False))
    trained: dict[str, float] = {}  # arch (JSON) -> highest fidelity asked: where a resumed run starts
    for r in records.values():
        trained[_key(r.arch)] = max(trained.get(_key(r.arch), 0.0), r.fidelity)
    next_number = max(records, default=-1) + 1
    # Trials asked before a kill and never finished: evaluate them first, in order.
    backlog = [r for r in records.values() if r.state == PENDING]

    own_executor = executor is None and (n_workers > 1 or trial_timeout is not None)
    if trial_timeout is not None:
        executor = ProcessPerTrialExecutor(trial_timeout)
    elif executor is None:
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

    def end(record: TrialRecord, shown: str) -> None:
        nonlocal spent_eval, spent_equiv
        spent_eval += 1
        spent_equiv += record.epochs / full
        if bar is not None:
            bar.update(1)
            bar.set_postfix({objective: shown})

    def fail(record: TrialRecord, reason: str, metrics: dict[str, float] | None = None,
             seconds: float | None = None) -> None:
        record.state, record.error, record.metrics, record.seconds = FAILED, reason, metrics or {}, seconds
        strategy.tell_failure(Failure(record.number, dict(record.arch), record.fidelity, reason))
        storage.finish_trial(record, strategy.state_dict(), elapsed())
        end(record, "failed")
        log.warning("trial %d (arch %s, fidelity %g) failed: %s", record.number, record.arch, record.fidelity, reason)

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
                    fidelity = full if p.fidelity is None else p.fidelity
                    if isinstance(fidelity, bool) or not isinstance(fidelity, numbers.Real) \
                            or not 0 < fidelity < math.inf:
                        raise ValueError(f"{type(strategy).__name__}.ask proposed fidelity {p.fidelity!r}; a fidelity "
                                         "is a positive finite number of epochs (or None: the full fidelity)")
                    fidelity = float(fidelity)
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
                except (TrialTimeout, EvaluationProcessDied) as err:
                    fail(record, f"{type(err).__name__}: {err}")
                    continue
                except Exception as err:
                    fail(record, f"{type(err).__name__}: {err}")
                    raise EvaluationError(f"trial {record.number} (arch {record.arch}, fidelity {record.fidelity:g}) "
                                          f"failed: {record.error}") from err
                if objective not in metrics:
                    raise ValueError(f"objective {objective!r} is not among the evaluator's metrics {sorted(metrics)}")
                raw = metrics[objective]
                if not math.isfinite(raw):
                    fail(record, f"objective {objective!r} is {raw} (not a finite number)", metrics, seconds)
                    continue
                value = raw if maximize else -raw
                violation = total_violation(strategy.constraints, metrics)
                record.state, record.value, record.violation = DONE, value, violation
                record.metrics, record.seconds = metrics, seconds
                strategy.tell(Observation(record.number, dict(record.arch), record.fidelity, value, violation,
                                          {k: v for k, v in metrics.items() if k not in report_only}))
                storage.finish_trial(record, strategy.state_dict(), elapsed())
                end(record, f"{raw:.4g}")
                exhausted = exhausted or (stop_when is not None and bool(stop_when(record)))
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


def describe_space(space: SearchSpace) -> list[list[Any]]:
    """``[[label, [values...]], ...]`` of ``space`` as JSON gives it back: what a storage records to
    recognise its search space (values that are not JSON are compared by ``repr``)."""
    return json.loads(json.dumps([[d.label, list(d.values)] for d in space], default=repr))


def _space_difference(stored: list, given: list) -> str:
    stored_labels, given_labels = [d[0] for d in stored], [d[0] for d in given]
    if stored_labels != given_labels:
        return f"its decisions are {stored_labels}, this search's are {given_labels}"
    for (label, before), (_, now) in zip(stored, given):
        if before != now:
            return f"decision {label!r} has the options {before} there and {now} here"
    return "the spaces differ"


def _positive_finite(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 < value < math.inf:
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    return float(value)


def _key(arch: Mapping[str, Any]) -> str:
    return json.dumps(arch, sort_keys=True)


def _progress_bar(budget: Budget, initial: int):
    from tqdm.auto import tqdm

    return tqdm(total=budget.evaluations, initial=initial, unit="eval", desc="search")
