"""Persistent trial storage: every proposal and result is written the moment it exists.

:class:`SQLiteStorage` (the default) keeps one search in one SQLite file. Each ask and each result
is one transaction that also stores the strategy's pickled state, so after ``kill -9`` at any point
the file holds a consistent pair (trials, strategy state): the search resumes with no result lost,
and the proposals that were in flight (asked, no result) are evaluated again, as they never finished.
:class:`Storage` itself keeps a search in memory, for runs that need no persistence (benchmarks).

The strategy state is pickled: open only storage files you trust, as with any pickle.
"""

from __future__ import annotations

import json
import os
import pickle
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["SQLiteStorage", "Storage", "TrialRecord"]

PENDING, DONE, FAILED = "pending", "done", "failed"


@dataclass
class TrialRecord:
    """One trial as stored.

    ``state`` is ``"pending"``, ``"done"`` or ``"failed"``; ``epochs`` is what the trial is charged (its
    fidelity, or only the epochs beyond an earlier run of the same arch when the evaluator resumes
    training); ``value`` is the objective, larger is better (negated when minimised).
    """

    number: int
    arch: dict[str, Any]
    fidelity: float
    epochs: float
    state: str = PENDING
    value: float | None = None
    violation: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    seconds: float | None = None
    error: str | None = None


class Storage:
    """In-memory storage; the base of :class:`SQLiteStorage`, which adds the file.

    In memory the strategy state is kept by reference (nothing can be killed and resumed there, and
    pickling it after every result would make long searches quadratic).
    """

    def __init__(self) -> None:
        self._trials: dict[int, TrialRecord] = {}
        self._meta: dict[str, Any] = {}
        self._strategy: Any | None = None

    # -- what the driver calls -----------------------------------------------------------------
    def meta(self) -> dict[str, Any]:
        """The search's identity and counters (strategy class, objective, elapsed seconds, ...)."""
        return dict(self._meta)

    def set_meta(self, **values: Any) -> None:
        self._meta.update(values)

    def trials(self) -> list[TrialRecord]:
        """All trials in number order."""
        return [self._trials[k] for k in sorted(self._trials)]

    def strategy_state(self) -> Any | None:
        """The last strategy state stored, or ``None`` for a new search."""
        return self._strategy

    def add_trials(self, records: list[TrialRecord], strategy_state: Any) -> None:
        """Store new pending trials together with the strategy state after the ask."""
        for r in records:
            if r.number in self._trials:
                raise ValueError(f"trial number {r.number} is already stored")
            self._trials[r.number] = r
        self._strategy = strategy_state

    def finish_trial(self, record: TrialRecord, strategy_state: Any | None, elapsed: float) -> None:
        """Store a finished (or failed) trial, the strategy state after its tell and the elapsed time."""
        self._trials[record.number] = record
        if strategy_state is not None:
            self._strategy = strategy_state
        self._meta["elapsed"] = elapsed

    def close(self) -> None:
        pass



class SQLiteStorage(Storage):
    """A search in one SQLite file at ``path`` (created when absent; an existing one is resumed, never
    overwritten).

    Raises:
        ValueError: ``path`` exists but is not a storage file of this library.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        super().__init__()
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(self.path), isolation_level=None, timeout=30.0)
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            with self._transaction():
                self._db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
                self._db.execute(
                    "CREATE TABLE IF NOT EXISTS trials (number INTEGER PRIMARY KEY, arch TEXT NOT NULL, "
                    "fidelity REAL NOT NULL, epochs REAL NOT NULL, state TEXT NOT NULL, value REAL, violation REAL, metrics TEXT, "
                    "seconds REAL, error TEXT)"
                )
                self._db.execute("CREATE TABLE IF NOT EXISTS strategy (id INTEGER PRIMARY KEY CHECK (id = 0), "
                                 "state BLOB NOT NULL)")
        except sqlite3.DatabaseError as err:
            self._db.close()
            raise ValueError(f"{str(self.path)!r} is not a search storage file ({err})") from None
        self._load()

    def _transaction(self):
        db = self._db

        class _Tx:
            def __enter__(self_inner):
                db.execute("BEGIN IMMEDIATE")

            def __exit__(self_inner, exc_type, exc, tb):
                db.execute("ROLLBACK" if exc_type else "COMMIT")
                return False

        return _Tx()

    def _load(self) -> None:
        self._meta = {k: json.loads(v) for k, v in self._db.execute("SELECT key, value FROM meta")}
        for row in self._db.execute("SELECT number, arch, fidelity, epochs, state, value, violation, metrics, seconds, "
                                    "error FROM trials"):
            number, arch, fidelity, epochs, state, value, violation, metrics, seconds, error = row
            self._trials[number] = TrialRecord(number, json.loads(arch), fidelity, epochs, state, value,
                                               violation, json.loads(metrics or "{}"), seconds, error)
        row = self._db.execute("SELECT state FROM strategy WHERE id = 0").fetchone()
        self._strategy = None if row is None else pickle.loads(bytes(row[0]))

    def set_meta(self, **values: Any) -> None:
        super().set_meta(**values)
        with self._transaction():
            self._db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)",
                                 [(k, json.dumps(v)) for k, v in values.items()])

    def add_trials(self, records: list[TrialRecord], strategy_state: Any) -> None:
        super().add_trials(records, strategy_state)
        with self._transaction():
            self._db.executemany(
                "INSERT INTO trials (number, arch, fidelity, epochs, state) VALUES (?, ?, ?, ?, ?)",
                [(r.number, json.dumps(r.arch), r.fidelity, r.epochs, r.state) for r in records],
            )
            self._save_strategy()

    def finish_trial(self, record: TrialRecord, strategy_state: Any | None, elapsed: float) -> None:
        super().finish_trial(record, strategy_state, elapsed)
        with self._transaction():
            self._db.execute(
                "UPDATE trials SET state = ?, value = ?, violation = ?, metrics = ?, seconds = ?, error = ? "
                "WHERE number = ?",
                (record.state, record.value, record.violation, json.dumps(record.metrics), record.seconds,
                 record.error, record.number),
            )
            if strategy_state is not None:
                self._save_strategy()
            self._db.execute("INSERT OR REPLACE INTO meta VALUES ('elapsed', ?)", (json.dumps(elapsed),))

    def _save_strategy(self) -> None:
        self._db.execute("INSERT OR REPLACE INTO strategy VALUES (0, ?)", (pickle.dumps(self._strategy),))

    def close(self) -> None:
        self._db.close()

    def __repr__(self) -> str:
        return f"SQLiteStorage({str(self.path)!r}, {len(self._trials)} trials)"

