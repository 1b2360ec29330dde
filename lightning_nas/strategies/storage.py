"""Persistent trial storage: every proposal and result is written the moment it exists.

:class:`SQLiteStorage` (the default) keeps one search in one SQLite file. Each ask and each result
is one transaction that also stores the strategy's state, so after ``kill -9`` at any point the file
holds a consistent pair (trials, strategy state): the search resumes with no result lost, and the
proposals that were in flight (asked, no result) are evaluated again, as they never finished.
:class:`Storage` itself keeps a search in memory, for runs that need no persistence (benchmarks).

Opening a storage file someone sent you is safe: the strategy state is JSON in a typed encoding
that can only rebuild plain data (:mod:`~lightning_nas.strategies.codec`), never a pickle. Files
written before that (pickled state) are refused; ``unsafe_convert_pickle=True`` converts one you
trust.

One file takes one search process at a time: a second process opening it for writing is refused,
naming the process that holds it (an OS file lock on ``<path>.lock``, released even by ``kill -9``).
Every commit goes straight into the database file (rollback journal, not WAL), so a copy of the
file taken between trials holds every trial stored so far.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lightning_nas.strategies.codec import decode_state, encode_state

__all__ = ["SQLiteStorage", "Storage", "TrialRecord"]

PENDING, DONE, FAILED = "pending", "done", "failed"
#: Version of the file layout: 2 stores the strategy state as JSON (1, unversioned, pickled it).
FORMAT = 2
_TABLES = {
    "meta": ("key", "value"),
    "trials": ("number", "arch", "fidelity", "epochs", "state", "value", "violation", "metrics", "seconds", "error"),
    "strategy": ("id", "state"),
}
_PICKLE_HELP = ("Start a new search with another storage path; or, only if you trust whoever wrote this file, "
                "convert it once with SQLiteStorage(path, unsafe_convert_pickle=True) (CLI: --unsafe-convert-pickle), "
                "which loads the pickle and can run any code planted in it")

try:  # an OS lock that the kernel releases when its process dies, however it dies
    import fcntl
except ImportError:  # pragma: no cover - Windows: no cross-process guard
    fcntl = None

# Lock files held by this process. A forked child (an evaluation worker) closes its copies, so a
# worker outliving a killed search cannot keep the storage locked.
_HELD_LOCKS: set[int] = set()


def _close_held_locks_in_child() -> None:
    for fd in list(_HELD_LOCKS):
        try:
            os.close(fd)
        except OSError:
            pass
    _HELD_LOCKS.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_held_locks_in_child)


@dataclass
class TrialRecord:
    """One trial as stored.

    ``state`` is ``"pending"`` (asked, no result yet: evaluated again on resume), ``"done"`` or
    ``"failed"`` (no result, never retried: ``error`` says why); ``epochs`` is what the trial is
    charged (its fidelity, or only the epochs beyond an earlier run of the same arch when the
    evaluator resumes training); ``value`` is the objective, larger is better (negated when minimised).
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
    encoding it after every result would make long searches quadratic).
    """

    def __init__(self) -> None:
        self._trials: dict[int, TrialRecord] = {}
        self._meta: dict[str, Any] = {}
        self._strategy: Any | None = None

    # -- what the driver calls -----------------------------------------------------------------
    def meta(self) -> dict[str, Any]:
        """The search's identity and counters (strategy class, objective, space, elapsed seconds, ...)."""
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

    def __enter__(self) -> Storage:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class SQLiteStorage(Storage):
    """A search in one SQLite file at ``path`` (created when absent; an existing one is resumed, never
    overwritten).

    Args:
        path: the file.
        read_only: only read it (no lock: works while a search is writing it); writing raises.
        unsafe_convert_pickle: convert a file written by an older version, whose strategy state is a
            pickle, to the JSON state (in place, one transaction). UNSAFE: loading a pickle runs
            whatever code was planted in it; only for files you trust.

    Raises:
        ValueError: ``path`` is a directory, cannot be created or written, is in use by another search
            process, is not a storage file of this library (another program's SQLite file, not
            SQLite at all, or damaged), or holds pickled state (without ``unsafe_convert_pickle``).
    """

    def __init__(self, path: str | os.PathLike, *, read_only: bool = False, unsafe_convert_pickle: bool = False) -> None:
        self._db: sqlite3.Connection | None = None
        self._lock_fd: int | None = None
        self._pid = os.getpid()  # a forked child must not close the parent's connection or lock
        super().__init__()
        self.path = Path(path)
        self.read_only = bool(read_only)
        where = repr(str(self.path))
        if self.path.is_dir():
            raise ValueError(f"storage {where} is a directory; give the path of a file (created when absent)")
        if read_only and not self.path.is_file():
            raise ValueError(f"storage {where} does not exist (read_only=True opens an existing file only)")
        try:
            if not read_only:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._lock()
                self._db = sqlite3.connect(str(self.path), isolation_level=None, timeout=30.0)
            else:
                self._db = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True, isolation_level=None,
                                           timeout=30.0)
            self._open(unsafe_convert_pickle)
        except BaseException as err:
            self.close()
            if isinstance(err, sqlite3.Error):
                raise ValueError(_sqlite_problem(where, err)) from None
            if isinstance(err, OSError):
                raise ValueError(f"cannot write the storage {where}: {err.strerror or err} "
                                 f"(its directory must exist or be creatable, and be writable)") from None
            raise

    # -- opening ---------------------------------------------------------------------------------
    def _lock(self) -> None:
        if fcntl is None:
            return
        lock_path = self.path.with_name(self.path.name + ".lock")
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 512, 0).decode("utf-8", "replace").strip() or "unknown process"
            os.close(fd)
            raise ValueError(f"storage {str(self.path)!r} is in use by another search ({holder}); one storage file "
                             "takes one search process at a time: wait for that one to finish, or give this search "
                             "another storage path") from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on host {socket.gethostname()}, since "
                      f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode(), 0)
        self._lock_fd = fd
        _HELD_LOCKS.add(fd)

    def _open(self, unsafe_convert_pickle: bool) -> None:
        db, where = self._db, repr(str(self.path))
        tables = {name: tuple(c[1] for c in db.execute(f"PRAGMA table_info('{name}')"))
                  for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()}
        if tables:
            missing = {t: [c for c in cols if c not in tables.get(t, ())] for t, cols in _TABLES.items()}
            missing = {t: cols for t, cols in missing.items() if cols}
            if missing:
                raise ValueError(f"{where} is an SQLite database of another program, not a search storage of "
                                 f"lightning_nas (its tables: {sorted(tables)}; missing: {missing}); "
                                 "give the search a new storage path")
        elif self.read_only:
            raise ValueError(f"{where} is not a search storage file (no tables)")
        if not self.read_only:
            # A rollback journal commits into the database file itself: copying the file after a commit
            # copies every trial (WAL would keep them in a `-wal` file a copy leaves behind).
            db.execute("PRAGMA journal_mode=DELETE")
            db.execute("PRAGMA synchronous=FULL")
        if not tables:
            with self._transaction():
                db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
                db.execute("CREATE TABLE trials (number INTEGER PRIMARY KEY, arch TEXT NOT NULL, fidelity REAL NOT NULL, "
                           "epochs REAL NOT NULL, state TEXT NOT NULL, value REAL, violation REAL, metrics TEXT, "
                           "seconds REAL, error TEXT)")
                db.execute("CREATE TABLE strategy (id INTEGER PRIMARY KEY CHECK (id = 0), state BLOB NOT NULL)")
                db.execute("INSERT INTO meta VALUES ('format', ?)", (json.dumps(FORMAT),))
        self._load(unsafe_convert_pickle)

    def _load(self, unsafe_convert_pickle: bool) -> None:
        db, where = self._db, repr(str(self.path))
        try:
            self._meta = {k: json.loads(v) for k, v in db.execute("SELECT key, value FROM meta")}
            for row in db.execute("SELECT number, arch, fidelity, epochs, state, value, violation, metrics, seconds, "
                                  "error FROM trials"):
                number, arch, fidelity, epochs, state, value, violation, metrics, seconds, error = row
                if state not in (PENDING, DONE, FAILED):
                    raise ValueError(f"trial {number} has state {state!r}")
                self._trials[number] = TrialRecord(number, json.loads(arch), fidelity, epochs, state, value,
                                                   violation, json.loads(metrics or "{}"), seconds, error)
        except (ValueError, TypeError) as err:
            raise ValueError(f"{where}: a damaged trial or meta row ({err})") from None
        row = db.execute("SELECT state FROM strategy WHERE id = 0").fetchone()
        version = self._meta.get("format")
        if version is None and row is not None:
            if not unsafe_convert_pickle:
                raise ValueError(f"{where} was written by an older lightning_nas that stored the strategy state as a "
                                 f"pickle; it is not loaded, as loading a pickle can run code planted in the file. "
                                 f"{_PICKLE_HELP}")
            self._convert_pickle(bytes(row[0]))
            return
        if version is None:  # created but killed before its first trial: nothing to convert
            self._meta["format"] = FORMAT
            if not self.read_only:
                with self._transaction():
                    db.execute("INSERT OR REPLACE INTO meta VALUES ('format', ?)", (json.dumps(FORMAT),))
        elif version != FORMAT:
            raise ValueError(f"{where} has storage format {version!r}; this lightning_nas reads format {FORMAT} "
                             "(a newer version wrote it?)")
        if row is not None:
            try:
                self._strategy = decode_state(row[0])
            except ValueError as err:
                raise ValueError(f"{where}: the stored strategy state is damaged ({err}); the trials are intact "
                                 "(read them with SQLiteStorage(path, read_only=True)), but the search cannot "
                                 "resume from this file") from None

    def _convert_pickle(self, blob: bytes) -> None:
        import pickle

        state = pickle.loads(blob)  # noqa: S301 - only on the caller's explicit, documented-unsafe request
        with self._transaction():
            self._db.execute("INSERT OR REPLACE INTO strategy VALUES (0, ?)", (encode_state(state),))
            self._db.execute("INSERT OR REPLACE INTO meta VALUES ('format', ?)", (json.dumps(FORMAT),))
            # The old format retried failed trials on resume and never told the strategy about them.
            self._db.execute("UPDATE trials SET state = ? WHERE state = ?", (PENDING, FAILED))
        for r in self._trials.values():
            if r.state == FAILED:
                r.state = PENDING
        self._meta["format"] = FORMAT
        self._strategy = state

    def _transaction(self):
        db = self._db

        class _Tx:
            def __enter__(self_inner):
                db.execute("BEGIN IMMEDIATE")

            def __exit__(self_inner, exc_type, exc, tb):
                if not exc_type:
                    db.execute("COMMIT")
                elif db.in_transaction:  # SQLite already rolled back after some errors (a full disk)
                    db.execute("ROLLBACK")
                return False

        return _Tx()

    def _write(self):
        """A transaction whose SQLite failures (disk full, file gone read-only) name the file."""
        if self.read_only:
            raise ValueError(f"storage {str(self.path)!r} was opened read-only")
        if self._db is None:
            raise ValueError(f"storage {str(self.path)!r} is closed")
        storage, tx = self, self._transaction()

        class _Write:
            def __enter__(self_inner):
                try:
                    tx.__enter__()
                except sqlite3.Error as err:
                    raise OSError(_sqlite_problem(repr(str(storage.path)), err, writing=True)) from None

            def __exit__(self_inner, exc_type, exc, tb):
                try:
                    tx.__exit__(exc_type, exc, tb)
                except sqlite3.Error as err:
                    raise OSError(_sqlite_problem(repr(str(storage.path)), err, writing=True)) from None
                if isinstance(exc, sqlite3.Error):
                    raise OSError(_sqlite_problem(repr(str(storage.path)), exc, writing=True)) from None
                return False

        return _Write()

    # -- writing -------------------------------------------------------------------------------
    def set_meta(self, **values: Any) -> None:
        super().set_meta(**values)
        with self._write():
            self._db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)",
                                 [(k, json.dumps(v)) for k, v in values.items()])

    def add_trials(self, records: list[TrialRecord], strategy_state: Any) -> None:
        super().add_trials(records, strategy_state)
        state = encode_state(strategy_state)
        with self._write():
            self._db.executemany(
                "INSERT INTO trials (number, arch, fidelity, epochs, state) VALUES (?, ?, ?, ?, ?)",
                [(r.number, json.dumps(r.arch), r.fidelity, r.epochs, r.state) for r in records],
            )
            self._db.execute("INSERT OR REPLACE INTO strategy VALUES (0, ?)", (state,))

    def finish_trial(self, record: TrialRecord, strategy_state: Any | None, elapsed: float) -> None:
        super().finish_trial(record, strategy_state, elapsed)
        state = None if strategy_state is None else encode_state(strategy_state)
        with self._write():
            self._db.execute(
                "UPDATE trials SET state = ?, value = ?, violation = ?, metrics = ?, seconds = ?, error = ? "
                "WHERE number = ?",
                (record.state, record.value, record.violation, json.dumps(record.metrics), record.seconds,
                 record.error, record.number),
            )
            if state is not None:
                self._db.execute("INSERT OR REPLACE INTO strategy VALUES (0, ?)", (state,))
            self._db.execute("INSERT OR REPLACE INTO meta VALUES ('elapsed', ?)", (json.dumps(elapsed),))

    def close(self) -> None:
        """Close the file and release the lock (idempotent)."""
        if os.getpid() != self._pid:
            self._db = self._lock_fd = None
            return
        if self._db is not None:
            self._db.close()
            self._db = None
        if self._lock_fd is not None:
            _HELD_LOCKS.discard(self._lock_fd)
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None

    def __del__(self) -> None:
        if hasattr(self, "_pid"):
            self.close()

    def __repr__(self) -> str:
        return f"SQLiteStorage({str(self.path)!r}, {len(self._trials)} trials)"


def _sqlite_problem(where: str, err: sqlite3.Error, writing: bool = False) -> str:
    text = str(err)
    lowered = text.lower()
    if "readonly" in lowered or "read-only" in lowered:
        return f"cannot write the storage {where}: the file or its directory is read-only ({text})"
    if "full" in lowered:
        return f"cannot write the storage {where}: the disk is full ({text}); the trials stored so far are kept"
    if "unable to open" in lowered or "disk i/o" in lowered:
        return f"cannot open or write the storage {where} ({text}); its directory must exist and be writable"
    if "locked" in lowered or "busy" in lowered:
        return f"the storage {where} stayed locked by another connection for 30 s ({text})"
    if writing:
        return f"cannot write the storage {where} ({text})"
    return f"{where} is not a search storage file ({text})"
