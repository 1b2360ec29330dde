"""Evaluations in child processes that can be stopped: what makes a per-trial timeout real.

A thread running a hung evaluation cannot be stopped in Python, and a process pool cannot kill one
task without breaking the pool. :class:`ProcessPerTrialExecutor` therefore starts one child process
per evaluation (``fork`` where the OS has it: no pickling of the evaluator, no re-import, a few
milliseconds per trial; ``spawn`` elsewhere, which needs a picklable evaluator). The child is the
leader of its own process group, so a timeout kills the evaluation and whatever it started (data
loader workers, a compiler) with ``SIGKILL``.

Limits: a forked child cannot use a CUDA context the parent already created, and state the
evaluator changes in the child is not seen by the parent (as with any process pool).
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import Any

__all__ = ["EvaluationProcessDied", "ProcessPerTrialExecutor", "TrialTimeout"]


class TrialTimeout(TimeoutError):
    """An evaluation ran past the per-trial timeout and was killed."""


class EvaluationProcessDied(RuntimeError):
    """The child process of an evaluation ended without a result (killed by the OS, e.g. out of memory; a crash)."""


def _child(send, fn: Callable, args: tuple, kwargs: dict) -> None:
    if hasattr(os, "setpgid"):
        os.setpgid(0, 0)
    try:
        out = ("ok", fn(*args, **kwargs))
    except BaseException as err:  # noqa: BLE001 - everything goes back to the parent as the trial's error
        out = ("error", err)
    try:
        send.send(out)
    except Exception as err:  # an unpicklable result or exception
        what = "result" if out[0] == "ok" else "exception"
        send.send(("error", RuntimeError(f"the evaluation's {what} could not be sent back from its process "
                                         f"({type(err).__name__}: {err}); it was: {out[1]!r:.500}")))
    send.close()


class ProcessPerTrialExecutor(Executor):
    """Runs each call in a new child process, killed after ``timeout`` seconds (``None``: no limit).

    A killed call's future raises :class:`TrialTimeout`; a child that dies without a result raises
    :class:`EvaluationProcessDied`; an exception in the call is re-raised as is.
    """

    def __init__(self, timeout: float | None = None) -> None:
        self.timeout = timeout
        methods = multiprocessing.get_all_start_methods()
        self._context = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
        self._children: set[Any] = set()
        self._guard = threading.Lock()
        self._closed = False

    def submit(self, fn: Callable, /, *args: Any, **kwargs: Any) -> Future:
        if self._closed:
            raise RuntimeError("cannot submit to a ProcessPerTrialExecutor after shutdown")
        receive, send = self._context.Pipe(duplex=False)
        child = self._context.Process(target=_child, args=(send, fn, args, kwargs), daemon=True)
        child.start()
        send.close()  # the parent keeps only the reading end: EOF then means the child is gone
        with self._guard:
            self._children.add(child)
        future: Future = Future()
        future.set_running_or_notify_cancel()
        threading.Thread(target=self._collect, args=(future, receive, child), daemon=True).start()
        return future

    def _collect(self, future: Future, receive, child) -> None:
        status, value = "died", None
        try:
            if receive.poll(self.timeout):
                status, value = receive.recv()
            else:
                status = "timeout"
        except (EOFError, OSError):
            pass
        finally:
            receive.close()
        if status != "ok":
            _kill(child)
        child.join()
        with self._guard:
            self._children.discard(child)
        if status == "ok":
            future.set_result(value)
        elif status == "error":
            future.set_exception(value)
        elif status == "timeout":
            future.set_exception(TrialTimeout(f"timed out after {self.timeout:g} s; the evaluation was killed"))
        else:
            future.set_exception(EvaluationProcessDied(
                f"the evaluation's process ended without a result (exit code {child.exitcode}; a negative code is "
                f"the signal that killed it, e.g. -9 from the out-of-memory killer)"))

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Kill every child still running (their futures raise :class:`EvaluationProcessDied`)."""
        self._closed = True
        with self._guard:
            children = list(self._children)
        for child in children:
            _kill(child)
        if wait:
            for child in children:
                child.join()


def _kill(child) -> None:
    """SIGKILL the child's process group (what the evaluation started too), or the child alone."""
    if child.pid is None:
        return
    try:
        os.killpg(child.pid, signal.SIGKILL)
        return
    except (AttributeError, ProcessLookupError, PermissionError):
        pass  # no process groups here, or the child had not made its group yet
    try:
        child.kill()
    except (OSError, ValueError):
        pass
