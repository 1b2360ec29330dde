"""The storage file: safe to open when someone else wrote it, complete when copied, one search at a time,
and clear about every file it cannot use."""

from __future__ import annotations

import json
import multiprocessing
import os
import pickle
import shutil
import sqlite3
import sys
from collections import deque
from pathlib import Path

import numpy as np
import pytest
import torch

from lightning_nas.strategies.base import Failure, Observation, Proposal
from lightning_nas.strategies.codec import decode_state, encode_state
from lightning_nas.strategies.driver import Budget, run_search
from lightning_nas.strategies.evolution import RegularizedEvolution
from lightning_nas.strategies.random_search import RandomSearch
from lightning_nas.strategies.results import SearchResults
from lightning_nas.strategies.storage import SQLiteStorage

sys.path.insert(0, str(Path(__file__).parent))
from synthetic import SyntheticEvaluator, synthetic_space  # noqa: E402


def evolution(space=None) -> RegularizedEvolution:
    return RegularizedEvolution(space or synthetic_space(), seed=3, population=6, sample=3)


def search(db: Path, evaluations: int = 4, space=None, **kwargs):
    return run_search(evolution(space), SyntheticEvaluator(**kwargs), objective="accuracy",
                      budget=Budget(evaluations=evaluations), storage=db)


class Planted:
    """Unpickling this creates ``marker``: stands for any code an attacker plants in a pickle."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def as_old_format(db: Path, blob: bytes) -> None:
    """Rewrite ``db`` as the pickled-state layout older versions wrote, with ``blob`` as the state."""
    with sqlite3.connect(db) as con:
        con.execute("DELETE FROM meta WHERE key IN ('format', 'space')")
        con.execute("UPDATE strategy SET state = ? WHERE id = 0", (blob,))
    con.close()


def test_a_planted_pickle_is_never_loaded(tmp_path: Path) -> None:
    db, marker = tmp_path / "received.db", tmp_path / "pwned"
    search(db)
    as_old_format(db, pickle.dumps({"history": Planted(marker)}))
    with pytest.raises(ValueError, match="older lightning_nas .* pickle; it is not loaded.*--unsafe-convert-pickle"):
        search(db)
    # The same payload behind a current-format marker is read as JSON: damaged, still not run.
    with sqlite3.connect(db) as con:
        con.execute("INSERT INTO meta VALUES ('format', '2')")
    con.close()
    with pytest.raises(ValueError, match="strategy state is damaged"):
        SQLiteStorage(db)
    assert not marker.exists()


def test_an_old_pickled_file_you_trust_converts_on_request(tmp_path: Path) -> None:
    straight = search(tmp_path / "straight.db", evaluations=8)
    db = tmp_path / "old.db"
    search(db, evaluations=4)
    with SQLiteStorage(db, read_only=True) as storage:
        state = storage.strategy_state()
    as_old_format(db, pickle.dumps(state))
    SQLiteStorage(db, unsafe_convert_pickle=True).close()
    resumed = search(db, evaluations=8)
    assert [r.arch for r in resumed.done] == [r.arch for r in straight.done]


def test_state_encoding_round_trips_every_type_and_refuses_anything_else() -> None:
    rng = np.random.default_rng(5)
    rng.random(3)
    state = {
        "ints": [1, -2**70, True, None, "s", 0.5, float("nan"), float("-inf")],
        "tuple": (1, ("a", 2.0)), "set": {(1, 2), "x"}, "frozen": frozenset({3}), "deque": deque([1, 2], maxlen=4),
        (("l0", 1), ("l1", 2)): "tuple key", 7: "int key",
        "array": np.arange(6, dtype=np.int16).reshape(2, 3), "scalar": np.float32(1.5),
        "tensor": torch.randn(2, 3), "rng": rng,
        "records": [Observation(0, {"l0": 1}, 10.0, 0.5, 0.0, {"cost": 2.0}), Proposal({"l0": 2}, None),
                    Failure(1, {"l0": 3}, 2.5, "timed out")],
    }
    back = decode_state(encode_state(state))
    assert back.keys() == state.keys()
    assert back["ints"][:6] == state["ints"][:6] and np.isnan(back["ints"][6]) and back["ints"][7] == -np.inf
    for key in ("tuple", "set", "frozen", "deque", (("l0", 1), ("l1", 2)), 7, "records"):
        assert back[key] == state[key] and type(back[key]) is type(state[key])
    assert back["deque"].maxlen == 4
    assert back["array"].dtype == np.int16 and (back["array"] == state["array"]).all()
    assert back["scalar"] == np.float32(1.5) and back["scalar"].dtype == np.float32
    assert torch.equal(back["tensor"], state["tensor"])
    assert back["rng"].random() == rng.random()
    with pytest.raises(TypeError, match=r"cannot store state\['f'\]: a function"):
        encode_state({"f": lambda: 0})
    with pytest.raises(TypeError, match="dtype object"):
        encode_state({"a": np.array([None])})
    for hostile in ('{"$": "os.system", "v": "touch x"}', '{"$": "ndarray", "dtype": "|O", "shape": [1], "b64": ""}',
                    '{"$": "generator", "state": {"$": "dict", "v": [["bit_generator", "os"]]}}', '{"no": "tag"}',
                    '{"$": "dict", "v": [[1' , b"\x80\x04K\x01."):
        with pytest.raises(ValueError):
            decode_state(hostile)


def test_a_copy_of_the_file_right_after_run_search_holds_every_trial(tmp_path: Path) -> None:
    db = tmp_path / "search.db"
    search(db, evaluations=6)
    copy = tmp_path / "copy" / "search.db"
    copy.parent.mkdir()
    shutil.copyfile(db, copy)  # the database file only, nothing beside it
    with SQLiteStorage(copy, read_only=True) as storage:
        assert [r.state for r in storage.trials()] == ["done"] * 6
    # Also when the search ends in an error.
    with pytest.raises(ValueError, match="objective 'missing'"):
        run_search(evolution(), SyntheticEvaluator(), objective="missing", budget=Budget(evaluations=2),
                   storage=tmp_path / "err.db")
    shutil.copyfile(tmp_path / "err.db", copy)
    with SQLiteStorage(copy, read_only=True) as storage:
        assert len(storage.trials()) == 1


def _hold_and_search(db: str, started, release) -> None:
    with SQLiteStorage(db):
        started.set()
        release.wait(30)


def _search_in_child(db: str) -> None:
    search(Path(db), evaluations=6, delay=0.3)


def test_a_second_search_process_on_one_file_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "search.db"
    fork = multiprocessing.get_context("fork")
    started, release = fork.Event(), fork.Event()
    holder = fork.Process(target=_hold_and_search, args=(str(db), started, release))
    holder.start()
    try:
        assert started.wait(30)
        with pytest.raises(ValueError, match=rf"in use by another search \(pid {holder.pid} on host .*\); one storage"):
            search(db)
        with SQLiteStorage(db, read_only=True) as reader:  # reading while a search runs is fine
            assert reader.trials() == []
    finally:
        release.set()
        holder.join(30)
    # Two real searches: the second is refused, the first finishes with every trial once.
    worker = fork.Process(target=_search_in_child, args=(str(db),))
    worker.start()
    try:
        for _ in range(200):
            if db.exists() and _has_trials(db):
                break
            worker.join(0.05)
        with pytest.raises(ValueError, match="in use by another search"):
            search(db, evaluations=6)
    finally:
        worker.join(60)
    assert worker.exitcode == 0
    with SQLiteStorage(db, read_only=True) as storage:
        trials = storage.trials()
    assert [r.number for r in trials] == list(range(6)) and all(r.state == "done" for r in trials)
    assert len({json.dumps(r.arch, sort_keys=True) for r in trials}) == 6


def _has_trials(db: Path) -> bool:
    try:
        with sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True, timeout=1) as con:
            return con.execute("SELECT COUNT(*) FROM trials").fetchone()[0] > 0
    except sqlite3.Error:
        return False


def test_files_it_cannot_use_are_named_with_the_reason(tmp_path: Path) -> None:
    other = tmp_path / "other.db"
    with sqlite3.connect(other) as con:
        con.execute("CREATE TABLE users (id INTEGER, name TEXT)")
    con.close()
    with pytest.raises(ValueError, match="SQLite database of another program.*'users'"):
        search(other)
    with pytest.raises(ValueError, match="is a directory"):
        SQLiteStorage(tmp_path)
    (tmp_path / "text.db").write_text("not a database, just text" * 100)
    with pytest.raises(ValueError, match="not a search storage file"):
        SQLiteStorage(tmp_path / "text.db")
    if Path("/sys").is_dir() and not os.access("/sys", os.W_OK | os.X_OK):
        with pytest.raises(ValueError, match="cannot write the storage '/sys/s.db'"):
            SQLiteStorage("/sys/s.db")
    elif Path("/sys").is_dir():
        with pytest.raises(ValueError, match="cannot write the storage '/sys/s.db': Permission denied"):
            SQLiteStorage("/sys/s.db")  # sysfs refuses new files even to root
    with pytest.raises(ValueError, match="does not exist"):
        SQLiteStorage(tmp_path / "absent.db", read_only=True)
    db = tmp_path / "search.db"
    search(db)
    with sqlite3.connect(db) as con:
        con.execute("UPDATE strategy SET state = substr(state, 1, 40)")
    con.close()
    with pytest.raises(ValueError, match="strategy state is damaged .* the trials are intact"):
        search(db)


def test_a_full_disk_says_it_cannot_write(tmp_path: Path) -> None:
    storage = SQLiteStorage(tmp_path / "search.db")
    pages = storage._db.execute("PRAGMA page_count").fetchone()[0]
    storage._db.execute(f"PRAGMA max_page_count = {pages}")  # what a full disk looks like to SQLite
    with pytest.raises(OSError, match="cannot write the storage .*search.db.*the disk is full"):
        run_search(evolution(), SyntheticEvaluator(), objective="accuracy", budget=Budget(evaluations=50),
                   storage=storage)
    storage.close()


def test_another_search_space_is_refused_and_stored_archs_are_checked(tmp_path: Path) -> None:
    db = tmp_path / "search.db"
    search(db)
    with pytest.raises(ValueError, match=r"another search space: decision 'l0' has the options \[0, 1, 2, 3\] "
                                         r"there and \[0, 1, 2\] here"):
        search(db, space=synthetic_space(n_values=3))
    with pytest.raises(ValueError, match=r"its decisions are \['l0', 'l1', 'l2', 'l3'\], this search's are"):
        search(db, space=synthetic_space(n_layers=3))
    with sqlite3.connect(db) as con:
        con.execute("""UPDATE trials SET state = 'pending', arch = '{"l0": 9, "l1": 0, "l2": 0, "l3": 0}'
                       WHERE number = 1""")
    con.close()
    with pytest.raises(ValueError, match="trial 1 holds an arch that is not in this search space"):
        search(db, evaluations=6)


def test_full_fidelity_must_be_positive() -> None:
    class Zero(SyntheticEvaluator):
        full_fidelity = 0

    with pytest.raises(ValueError, match=r"`evaluator.full_fidelity` .* must be a positive finite number, got 0"):
        run_search(RandomSearch(synthetic_space()), Zero(), objective="accuracy", budget=Budget(evaluations=1))
    with pytest.raises(ValueError, match="`full_fidelity` must be a positive finite number"):
        SearchResults([], objective="accuracy", maximize=True, full_fidelity=0)
