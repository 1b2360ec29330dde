"""Fuzzing and fault-injection suite over the whole library: what a careless or hostile user gets.

Usage::

    uv run --locked python benchmarks/reliability.py            # every case (~10 minutes on 2 cores)
    uv run --locked python benchmarks/reliability.py --quick    # skips the slow subprocess cases
    uv run --locked python benchmarks/reliability.py --only storage --verbose

Each case is a small function that feeds bad or hostile input to the public API (malformed or
truncated files, NaN/inf/negative/bool/huge arguments, wrong types, planted pickle payloads) or
injects a fault (``kill -9`` of a running search, two writers on one storage, a hanging evaluator,
a read-only directory). Every case runs in its own forked process with a time limit, so a hang or
a memory blow-up costs one case, not the run. Its outcome is classified automatically:

- ``clear``: the library raised a deliberate error (the innermost frame is a ``raise`` in
  ``lightning_nas``, or the CLI exited through its argument parser) whose message names the
  argument or file (the case's keywords);
- ``ok``: a fault the library is supposed to survive (a valid but extreme input, a kill and a
  resume) was handled correctly, as the case's oracle checks;
- ``unhelpful``: any other exception (an internal ``KeyError``/``AttributeError``/... , an error
  from numpy/torch/sqlite/json, a deliberate one that does not name what was wrong);
- ``silent_wrong``: the call returned but the input should have been refused, or the oracle says
  the result is wrong (a NaN optimum, an infeasible arch reported as the best, ...);
- ``hang``: the case exceeded its time limit or its memory limit;
- ``data_lost``: a file the user gave changed or vanished, or stored trials are missing;
- ``code_exec``: a planted payload ran (its marker file exists).

The table goes to the terminal and, with the machine, date and command, to ``RELIABILITY.md``
(written atomically).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import io
import json
import linecache
import math
import multiprocessing as mp
import os
import pickle
import platform
import resource
import shlex
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
NB201_CSV = ROOT.parent / "shared" / "data" / "nb201" / "nb201_cifar10.csv"
OUTCOMES = ("clear", "ok", "unhelpful", "silent_wrong", "hang", "data_lost", "code_exec")
# Exceptions that, whatever their message, come from an unchecked access rather than a decision.
INTERNAL = (AttributeError, KeyError, IndexError, ZeroDivisionError, UnboundLocalError, NameError, RecursionError,
            AssertionError, json.JSONDecodeError, UnicodeDecodeError, sqlite3.Error, pickle.UnpicklingError, EOFError)
DEFAULT_TIMEOUT = 60.0
MEMORY_LIMIT = 6 * 2**30


# -- verdicts a case raises itself ---------------------------------------------------------------
class Verdict(Exception):
    outcome = ""


class SilentWrong(Verdict):
    outcome = "silent_wrong"


class DataLost(Verdict):
    outcome = "data_lost"


class Hang(Verdict):
    outcome = "hang"


class CliError(Exception):
    """The command line exited non-zero through its parser (a deliberate, user-facing error)."""


@dataclass
class Case:
    area: str
    name: str
    fn: Callable[["Context"], Any]
    expect: tuple[str, ...]
    timeout: float
    slow: bool
    # Returning is the right behaviour (the case's oracle raises a verdict when it is not).
    returns_ok: bool


CASES: list[Case] = []


def case(area: str, *expect: str, timeout: float = DEFAULT_TIMEOUT, slow: bool = False, ok: bool = False, name: str | None = None):
    """Register ``fn(ctx)``. ``expect``: keywords the error message must contain (case-insensitive);
    ``ok=True``: the call should succeed (its oracle checks the result)."""

    def register(fn):
        CASES.append(Case(area, name or fn.__name__, fn, tuple(expect), timeout, slow, ok))
        return fn

    return register


def bad(area: str, name: str, fn: Callable[["Context"], Any], *expect: str, timeout: float = DEFAULT_TIMEOUT) -> None:
    """A case whose call must be refused with a message naming ``expect``."""
    CASES.append(Case(area, name, fn, tuple(expect), timeout, False, False))


class Context:
    """What a case gets: a private directory, a marker path for payloads, file protection, the CLI."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.marker = tmp / "PAYLOAD_RAN"
        self.protected: dict[Path, bytes | None] = {}

    def protect(self, path: Path) -> Path:
        """A user's file: its content must be the same after the case (else ``data_lost``)."""
        self.protected[Path(path)] = Path(path).read_bytes() if Path(path).is_file() else None
        return Path(path)

    def wrong(self, message: str) -> None:
        raise SilentWrong(message)

    def lost(self, message: str) -> None:
        raise DataLost(message)

    def path(self, name: str, content: bytes | str | None = None) -> Path:
        path = self.tmp / name
        if content is not None:
            path.write_bytes(content.encode() if isinstance(content, str) else content)
        return path

    def cli(self, *argv: str) -> str:
        """Run ``lightning-nas ARGV`` in this process; its stdout, or :class:`CliError` with its stderr."""
        from lightning_nas import cli

        out, err = io.StringIO(), io.StringIO()
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                code = cli.main([str(a) for a in argv])
        except SystemExit as exit_:
            code = exit_.code
        if code not in (0, None):
            # Progress bars are not messages; the last real lines of both streams are.
            lines = [ln for ln in (out.getvalue() + "\n" + err.getvalue()).replace("\r", "\n").splitlines()
                     if ln.strip() and "eval/s" not in ln and not ln.startswith(("usage:", " "))]
            raise CliError(f"exit status {code}: {' / '.join(lines[-3:])}")
        return out.getvalue()

    def as_nobody(self) -> None:
        """Drop root in this (throw-away) case process, so file permissions apply."""
        if os.geteuid() == 0:
            os.chmod(self.tmp, 0o777)
            os.setgid(65534)
            os.setuid(65534)


def payload_factory(marker: Path):
    """A class whose unpickling creates ``marker`` (open(..., 'w')): a stand-in for any code."""

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    return Payload


# -- classification -----------------------------------------------------------------------------
def _deliberate(err: BaseException) -> bool:
    if isinstance(err, CliError):
        return True
    tb = err.__traceback__
    last = None
    while tb is not None:
        last = tb
        tb = tb.tb_next
    if last is None:
        return False
    filename = last.tb_frame.f_code.co_filename
    line = linecache.getline(filename, last.tb_lineno).strip()
    return f"{os.sep}lightning_nas{os.sep}" in filename and line.startswith("raise")


def classify_error(err: BaseException, expect: tuple[str, ...]) -> tuple[str, str]:
    message = f"{type(err).__name__}: {err}"
    text = str(err).lower()
    # "a|b": either alternative names the problem (e.g. "nan|finite").
    missing = [k for k in expect if not any(alt.lower() in text for alt in k.split("|"))]
    if not _deliberate(err):
        return "unhelpful", "internal " + message
    if isinstance(err, INTERNAL) and missing:
        return "unhelpful", message
    if missing:
        return "unhelpful", f"does not name {missing}: {message}"
    return "clear", message


def run_in_child(c: Case, tmp: Path, conn) -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))
    os.chdir(tmp)
    import torch

    torch.set_num_threads(1)
    ctx = Context(tmp)
    # Libraries that bound sys.stderr at import time (Lightning's logging) write to the fds.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            import warnings

            warnings.simplefilter("ignore")
            try:
                returned = c.fn(ctx)
            except Verdict as verdict:
                outcome, detail = verdict.outcome, str(verdict)
            except MemoryError:
                outcome, detail = "hang", "MemoryError: resource blow-up"
            except BaseException as err:  # noqa: BLE001 (every exception is classified)
                if isinstance(err, SystemExit) and err.code in (0, None):
                    outcome, detail = ("ok", "exited 0") if c.returns_ok else ("silent_wrong", "exited 0")
                else:
                    outcome, detail = classify_error(err, c.expect)
                    if c.returns_ok and outcome == "clear":
                        outcome = "unhelpful"
                        detail = "should have succeeded: " + detail
            else:
                if c.returns_ok:
                    outcome, detail = "ok", ""
                else:
                    outcome, detail = "silent_wrong", f"accepted, returned {_short(returned)}"
        for path, before in ctx.protected.items():
            after = path.read_bytes() if path.is_file() else None
            if after != before:
                outcome, detail = "data_lost", f"{path.name} {'changed' if after is not None else 'vanished'}; " + detail
        if ctx.marker.exists():
            outcome, detail = "code_exec", "planted payload ran; " + detail
    except BaseException as err:  # noqa: BLE001
        outcome, detail = "unhelpful", f"suite error {type(err).__name__}: {err}"
    conn.send((outcome, detail[:400]))
    conn.close()
    os._exit(0)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) < 120 else text[:117] + "..."


def run_case(c: Case) -> tuple[str, str, float]:
    tmp = Path(tempfile.mkdtemp(prefix=f"rel_{c.name[:40]}_"))
    parent, child = mp.Pipe(duplex=False)
    ctx = mp.get_context("fork")
    started = time.perf_counter()
    proc = ctx.Process(target=run_in_child, args=(c, tmp, child))
    proc.start()
    child.close()
    outcome = None
    if parent.poll(c.timeout):
        try:
            outcome, detail = parent.recv()
        except EOFError:
            pass
    if outcome is None:
        if proc.is_alive():
            # The whole process group: a case may have started subprocesses.
            proc.kill()
            outcome, detail = "hang", f"no result within {c.timeout:.0f} s"
        else:
            proc.join()
            outcome, detail = "hang", f"case process died (exit {proc.exitcode}): memory or crash"
    proc.join(5)
    for p in (tmp,):
        shutil.rmtree(p, ignore_errors=True)
    return outcome, detail, time.perf_counter() - started


# -- shared fixtures (built in the parent, inherited by every forked case) ------------------------
_FIXTURES: dict[str, Any] = {}


def fixture(name: str, build: Callable[[], Any]) -> Any:
    if name not in _FIXTURES:
        _FIXTURES[name] = build()
    return _FIXTURES[name]


def tiny_net():
    """The README's 20-line supernet: width, stem.kernel, op, depth."""
    import torch
    from torch import nn

    import lightning_nas as ln

    torch.manual_seed(0)
    width = ln.Choice([8, 16, 24], "width")
    return ln.Supernet(nn.Sequential(
        ln.ElasticConv2d(3, width, ln.Choice([3, 5], "stem.kernel"), stride=2), ln.ElasticBatchNorm2d(width), nn.ReLU(),
        ln.OpChoice({"conv": nn.Sequential(ln.ElasticConv2d(width, width, 3), ln.ElasticBatchNorm2d(width), nn.ReLU()),
                     "skip": nn.Identity()}, "op"),
        ln.DepthChoice([nn.Sequential(ln.ElasticConv2d(width, width, 3), nn.ReLU()) for _ in range(3)], [1, 2, 3], "depth"),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), ln.ElasticLinear(width, 10)))


def staged_net():
    """A staged supernet with two DepthChoice stages of blocks with kernel/width choices."""
    import torch
    from torch import nn

    import lightning_nas as ln

    torch.manual_seed(0)

    def block(s, b):
        return nn.Sequential(ln.ElasticConv2d(8, 8, ln.Choice([3, 5], f"s{s}.b{b}.k"), depthwise=True), nn.ReLU(),
                             ln.OpChoice({"id": nn.Identity(), "relu": nn.ReLU()}, f"s{s}.b{b}.op"))

    return ln.Supernet(nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        ln.DepthChoice([block(0, b) for b in range(3)], [1, 2, 3], "s0.depth"),
        ln.DepthChoice([block(1, b) for b in range(2)], [1, 2], "s1.depth"),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4)))


def loader(n: int = 16, classes: int = 10, size: int = 16, batch: int = 8):
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    g = torch.Generator().manual_seed(0)
    return DataLoader(TensorDataset(torch.randn(n, 3, size, size, generator=g), torch.randint(0, classes, (n,), generator=g)),
                      batch_size=batch)


def tables(net=None, seed: int = 0):
    """(accuracy, latency, flops) random tables over ``net``'s staged space (default: staged_net)."""
    import numpy as np

    from lightning_nas import BilinearTable, StagedSpace

    staged = StagedSpace.of(net if net is not None else fixture("staged_net", staged_net))
    rng = np.random.default_rng(seed)
    shape = (staged.num_stages, staged.max_blocks, staged.num_configs)
    depth = (staged.num_stages, staged.max_depth_options)
    acc = BilinearTable(staged, 0.5, rng.normal(0, 0.02, shape), rng.normal(0, 0.02, depth), name="accuracy")
    lat = BilinearTable(staged, 1.0, rng.uniform(0.1, 1.0, shape), name="latency", unit="ms")
    flops = BilinearTable(staged, 10.0, rng.uniform(1.0, 5.0, shape), name="flops", unit="MFLOPs")
    return acc, lat, flops


def nb201_tables(seed: int = 0):
    import numpy as np

    from lightning_nas import BilinearTable
    from lightning_nas.estimators.block_performance import nodes_as_stage
    from lightning_nas.spaces.nb201 import nb201_search_space

    staged = nodes_as_stage(nb201_search_space())
    rng = np.random.default_rng(seed)
    acc = BilinearTable(staged, 80.0, rng.normal(0, 2, (1, 6, 5)), name="accuracy")
    flops = BilinearTable(staged, 10.0, rng.uniform(1, 30, (1, 6, 5)), name="flops")
    lat = BilinearTable(staged, 2.0, rng.uniform(0.1, 1, (1, 6, 5)), name="latency")
    return staged, acc, flops, lat


def nb201_benchmark():
    from lightning_nas.evaluators import TabularBenchmark

    return TabularBenchmark.from_csv(NB201_CSV)


def synthetic():
    """A 4x4 synthetic search problem (tests/strategies/synthetic.py)."""
    sys.path.insert(0, str(ROOT / "tests" / "strategies"))
    from synthetic import SyntheticEvaluator, synthetic_space

    return synthetic_space(), SyntheticEvaluator()


NAN, INF = float("nan"), float("inf")


def _ln():
    import lightning_nas as ln

    return ln


def _nn():
    from torch import nn

    return nn


# == mutables (lightning_nas/nn) ===================================================================
A = "mutables"
bad(A, "Choice empty values", lambda c: _ln().Choice([], "x"), "values")
bad(A, "Choice duplicate values", lambda c: _ln().Choice([1, 1], "x"), "values")
bad(A, "Choice NaN value", lambda c: _ln().Choice([NAN, 1.0], "x"), "nan")
bad(A, "Choice non-str label", lambda c: _ln().Choice([1, 2], 5), "label")
bad(A, "Choice default not a candidate", lambda c: _ln().Choice([1, 2], "x", default=3), "default")
bad(A, "Choice values not a sequence", lambda c: _ln().Choice(5, "x"), "values")
bad(A, "ElasticConv2d zero out_channels", lambda c: _ln().ElasticConv2d(3, 0, 3), "out_channels")
bad(A, "ElasticConv2d negative out_channels", lambda c: _ln().ElasticConv2d(3, -8, 3), "out_channels")
bad(A, "ElasticConv2d bool in_channels", lambda c: _ln().ElasticConv2d(True, 8, 3), "in_channels")
bad(A, "ElasticConv2d Choice stride", lambda c: _ln().ElasticConv2d(3, 8, 3, stride=_ln().Choice([1, 2], "s")), "stride")
bad(A, "ElasticConv2d zero kernel", lambda c: _ln().ElasticConv2d(3, 8, 0), "kernel")
bad(A, "ElasticConv2d kernel Choice with 0", lambda c: _ln().ElasticConv2d(3, 8, _ln().Choice([0, 3], "k")), "kernel")
bad(A, "ElasticLinear width Choice with 0", lambda c: _ln().ElasticLinear(4, _ln().Choice([0, 4], "w")), "features")
bad(A, "ElasticLinear float in_features", lambda c: _ln().ElasticLinear(4.5, 3), "in_features")
bad(A, "ElasticBatchNorm2d zero features", lambda c: _ln().ElasticBatchNorm2d(0), "features")
bad(A, "OpChoice empty dict", lambda c: _ln().OpChoice({}, "op"), "candidates")
bad(A, "OpChoice non-module candidate", lambda c: _ln().OpChoice({"a": 5, "b": _nn().ReLU()}, "op"), "candidate")
bad(A, "DepthChoice no blocks", lambda c: _ln().DepthChoice([], [1], "d"), "blocks")
bad(A, "DepthChoice depth above block count", lambda c: _ln().DepthChoice([_nn().ReLU(), _nn().ReLU()], [3], "d"), "depth")
bad(A, "DepthChoice negative depth", lambda c: _ln().DepthChoice([_nn().ReLU()], [-1, 1], "d"), "depth")
bad(A, "DepthChoice bool depth", lambda c: _ln().DepthChoice([_nn().ReLU(), _nn().ReLU()], [True, 2], "d"), "depth")
bad(A, "InputChoice n_chosen above n_candidates", lambda c: _ln().InputChoice(3, 4, "m"), "n_chosen")
bad(A, "InputChoice zero candidates", lambda c: _ln().InputChoice(0, 1, "m"), "n_candidates")
bad(A, "InputChoice bool n_chosen", lambda c: _ln().InputChoice(3, True, "m"), "n_chosen")


@case(A, "width")
def same_label_different_candidates(c):
    ln, nn = _ln(), _nn()
    ln.Supernet(nn.Sequential(ln.ElasticLinear(4, ln.Choice([2, 4], "width")), ln.ElasticLinear(ln.Choice([2, 3], "width"), 2)))


@case(A, "default")
def same_label_different_default(c):
    ln, nn = _ln(), _nn()
    a, b = ln.Choice([2, 4], "w", default=2), ln.Choice([2, 4], "w", default=4)
    ln.Supernet(nn.Sequential(ln.ElasticLinear(4, a), nn.ReLU(), ln.ElasticLinear(b, 2)))


@case(A, "fc")
def mutate_same_path_twice(c):
    ln, nn = _ln(), _nn()
    model = nn.Sequential(nn.Linear(4, 4))
    model.fc = nn.Linear(4, 4)
    ln.mutate(model, ops={"fc": [nn.Identity()]})
    ln.mutate(model, ops={"fc": [nn.Tanh()]})
    net = ln.Supernet(model)
    if len(net.space["fc"].values) != 3:
        c.wrong(f"second mutate silently replaced the first alternatives: {net.space['fc'].values}")


@case(A, "rule")
def mutate_rule_matching_nothing(c):
    ln, nn = _ln(), _nn()
    ln.mutate(nn.Sequential(nn.Linear(4, 4)), preset="binas")


@case(A, "nonexistent")
def mutate_unknown_path(c):
    ln, nn = _ln(), _nn()
    ln.mutate(nn.Sequential(nn.Linear(4, 4)), ops={"nonexistent": [nn.Identity()]})


@case(A, "preset")
def mutate_unknown_preset(c):
    ln, nn = _ln(), _nn()
    ln.mutate(nn.Sequential(nn.Linear(4, 4)), preset="bogus")


@case(A, "supernet")
def module_in_two_supernets(c):
    import torch

    ln = _ln()
    net1 = tiny_net()
    net2 = ln.Supernet(net1.module)
    arch = net1.space.smallest()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        net1.activate(arch)
        net2.activate(net2.space.largest())
        net1.activate(arch)
        out = net1.eval()(x)
        expected = net1.export(arch).eval()(x)
    if not torch.allclose(out, expected, atol=1e-5):
        c.wrong("first supernet's activate() is a no-op once a second Supernet wraps the same module")
    c.wrong("one module accepted inside two Supernets")


# == supernet and search space (supernet.py, spaces/search_space.py) ===============================
A = "supernet/space"


def _space():
    return fixture("tiny_net", tiny_net).space


bad(A, "activate(None)", lambda c: fixture("tiny_net", tiny_net).activate(None), "arch")
bad(A, "activate missing label", lambda c: fixture("tiny_net", tiny_net).activate({"width": 8}), "stem.kernel")
bad(A, "activate unknown label", lambda c: fixture("tiny_net", tiny_net).activate({**_space().default(), "bogus": 1}), "bogus")
bad(A, "activate value not a candidate", lambda c: fixture("tiny_net", tiny_net).activate({**_space().default(), "width": 7}), "width")
bad(A, "activate bool for int decision", lambda c: fixture("tiny_net", tiny_net).activate({**_space().default(), "depth": True}), "depth")
bad(A, "activate string for int decision", lambda c: fixture("tiny_net", tiny_net).activate({**_space().default(), "width": "8"}), "width")
bad(A, "activate_indices float indices", lambda c: fixture("tiny_net", tiny_net).activate_indices(
    {k: __import__("torch").tensor([0.7, 1.2]) for k in _space().labels}), "indices")
bad(A, "activate_indices out of range", lambda c: fixture("tiny_net", tiny_net).activate_indices(
    {k: __import__("torch").tensor([0, 9]) for k in _space().labels}), "width")
bad(A, "activate_indices missing label", lambda c: fixture("tiny_net", tiny_net).activate_indices(
    {"width": __import__("torch").tensor([0])}), "stem.kernel")
bad(A, "validate bool depth", lambda c: _space().validate({**_space().default(), "depth": True}), "depth")
bad(A, "validate not a mapping", lambda c: _space().validate([1, 2, 3]), "arch")
bad(A, "sample_many negative", lambda c: _space().sample_many(-1), "n")
bad(A, "sample_many bool", lambda c: _space().sample_many(True), "n")
bad(A, "sample_many float", lambda c: _space().sample_many(2.5), "n")
bad(A, "sample_indices negative", lambda c: _space().sample_indices(-3), "n")
bad(A, "sample string seed", lambda c: _space().sample(seed="abc"), "seed")
bad(A, "sample float seed", lambda c: _space().sample(seed=1.5), "seed")
bad(A, "decode NaN vector", lambda c: _space().decode([NAN] * _space().encoding_size), "vector")
bad(A, "decode wrong length", lambda c: _space().decode([1.0, 0.0]), "vector")
bad(A, "decode inf vector", lambda c: _space().decode([INF] * _space().encoding_size), "vector")
bad(A, "encode invalid arch", lambda c: _space().encode({**_space().default(), "op": "bogus"}), "op")
bad(A, "enumerate negative limit", lambda c: list(_space().enumerate(limit=-1)), "limit")
bad(A, "enumerate beyond limit", lambda c: list(_space().enumerate(limit=3)), "limit")
bad(A, "export invalid arch", lambda c: fixture("tiny_net", tiny_net).export({**_space().default(), "width": 9}), "width")
bad(A, "export empty calibration batches", lambda c: fixture("tiny_net", tiny_net).export(_space().default(), calibration_batches=[]),
    "calibration")
bad(A, "Supernet of a non-module", lambda c: _ln().Supernet("model"), "module")
bad(A, "SearchSpace duplicate labels", lambda c: _ln().SearchSpace([
    __import__("lightning_nas.spaces.search_space", fromlist=["Decision"]).Decision("a", (1, 2), 1),
    __import__("lightning_nas.spaces.search_space", fromlist=["Decision"]).Decision("a", (1, 2), 1)]), "a")
bad(A, "Decision default not a value", lambda c: _ln().SearchSpace([
    __import__("lightning_nas.spaces.search_space", fromlist=["Decision"]).Decision("a", (1, 2), 3)]), "default")
bad(A, "recalibrate num_batches 0", lambda c: _ln().recalibrate_batch_norm(fixture("tiny_net", tiny_net), loader(), num_batches=0),
    "num_batches")
bad(A, "recalibrate num_batches bool", lambda c: _ln().recalibrate_batch_norm(fixture("tiny_net", tiny_net), loader(), num_batches=True),
    "num_batches")
bad(A, "recalibrate empty loader", lambda c: _ln().recalibrate_batch_norm(fixture("tiny_net", tiny_net), []), "batches")
bad(A, "find_supernet without one", lambda c: _ln().find_supernet(_nn().Linear(2, 2)), "supernet")


bad(A, "recalibrate on NaN batches", lambda c: _ln().recalibrate_batch_norm(
    tiny_net(), [(__import__("torch").full((4, 3, 16, 16), NAN), __import__("torch").zeros(4, dtype=__import__("torch").long))]),
    "nan|finite")


@case(A, "batch")
def per_example_wrong_batch_equal_archs(c):
    import torch

    net = tiny_net()
    net.activate([net.space.default()] * 3)
    net(torch.randn(5, 3, 16, 16))


@case(A, "batch")
def per_example_wrong_batch_different_archs(c):
    import torch

    net = tiny_net()
    net.activate(net.space.sample_many(3, 0))
    net(torch.randn(5, 3, 16, 16))


@case(A, ok=True)
def numpy_and_json_values_accepted(c):
    import numpy as np

    net = tiny_net()
    arch = {**net.space.default(), "width": np.int64(16), "depth": np.int32(2)}
    net.activate(arch)
    if json.loads(json.dumps(net.active_arch)) != net.active_arch:
        c.wrong(f"active_arch is not plain JSON: {net.active_arch!r}")
    net.activate(json.loads(json.dumps(net.space.sample(4))))


@case(A, ok=True)
def per_example_equals_single(c):
    import torch

    net = tiny_net().eval()
    archs = net.space.sample_many(4, 1)
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        net.activate(archs)
        joint = net(x)
        for i, a in enumerate(archs):
            net.activate(a)
            if not torch.allclose(net(x[i:i + 1]), joint[i:i + 1], atol=1e-5):
                c.wrong(f"example {i} differs from its subnet run alone")


@case(A, ok=True)
def export_equals_supernet(c):
    import torch

    net = tiny_net().eval()
    arch = net.space.sample(3)
    x = torch.randn(2, 3, 16, 16)
    sub = net.export(arch).eval()
    with torch.no_grad(), net.activated(arch):
        if not torch.allclose(net(x), sub(x), atol=1e-5):
            c.wrong("exported subnet differs from the supernet")


# == bilinear tables (bilinear.py) =================================================================
A = "tables"


def _table_file(c, name: str, mutate: Callable[[dict], Any] | None = None, raw: bytes | None = None) -> Path:
    acc, lat, _ = tables()
    path = c.path(name)
    if raw is not None:
        path.write_bytes(raw)
        return path
    data = lat.to_dict()
    if mutate is not None:
        data = mutate(data) or data
    path.write_text(json.dumps(data))
    return path


def _load_table(c, name, mutate=None, raw=None):
    from lightning_nas import BilinearTable, StagedSpace

    path = _table_file(c, name, mutate, raw)
    return BilinearTable.load(path, StagedSpace.of(fixture("staged_net", staged_net)))


def _bt(**kw):
    import numpy as np

    from lightning_nas import BilinearTable, StagedSpace

    staged = StagedSpace.of(fixture("staged_net", staged_net))
    args = dict(constant=1.0, block=np.ones((staged.num_stages, staged.max_blocks, staged.num_configs)))
    args.update(kw)
    return BilinearTable(staged, args.pop("constant"), args.pop("block"), **args)


bad(A, "table NaN constant", lambda c: _bt(constant=NAN), "constant")
bad(A, "table inf constant", lambda c: _bt(constant=INF), "constant")
bad(A, "table string constant", lambda c: _bt(constant="1.0"), "constant")
bad(A, "table NaN block", lambda c: _bt(block=__import__("numpy").full_like(_bt().block, NAN)), "non-finite")
bad(A, "table wrong block shape", lambda c: _bt(block=__import__("numpy").ones((1, 2))), "block")
bad(A, "table wrong depth shape", lambda c: _bt(depth=__import__("numpy").ones((1, 9))), "depth")
bad(A, "table NaN depth", lambda c: _bt(depth=__import__("numpy").full((2, 3), NAN)), "non-finite")
bad(A, "table bad link", lambda c: _bt(link="logit"), "link")
bad(A, "table load missing file", lambda c: __import__("lightning_nas").BilinearTable.load(
    c.tmp / "missing_table.json", __import__("lightning_nas").StagedSpace.of(fixture("staged_net", staged_net))), "missing_table.json")
bad(A, "table load empty file", lambda c: _load_table(c, "empty_table.json", raw=b""), "empty_table.json")
bad(A, "table load truncated", lambda c: _load_table(c, "trunc_table.json", raw=json.dumps(tables()[1].to_dict()).encode()[:200]),
    "trunc_table.json")
bad(A, "table load binary garbage", lambda c: _load_table(c, "garbage_table.json", raw=bytes(range(256)) * 4), "garbage_table.json")
bad(A, "table load latin-1 text", lambda c: _load_table(c, "latin_table.json", raw='{"name": "lat\xe9ncy"}'.encode("latin-1")),
    "latin_table.json")
bad(A, "table load JSON list", lambda c: _load_table(c, "list_table.json", raw=b"[1, 2, 3]"), "list_table.json")
bad(A, "table load JSON null", lambda c: _load_table(c, "null_table.json", raw=b"null"), "null_table.json")
bad(A, "table load missing structure", lambda c: _load_table(c, "nostruct_table.json", lambda d: d.pop("structure") and None),
    "nostruct_table.json")
bad(A, "table load missing block", lambda c: _load_table(c, "noblock_table.json", lambda d: d.pop("block") and None), "noblock_table.json")
bad(A, "table load NaN constant", lambda c: _load_table(c, "nanconst_table.json", lambda d: d.update(constant=NAN)), "nanconst_table.json")
bad(A, "table load Infinity entry", lambda c: _load_table(c, "infblock_table.json",
    lambda d: d["block"][0][0].__setitem__(0, INF)), "infblock_table.json")
bad(A, "table load string entries", lambda c: _load_table(c, "strblock_table.json",
    lambda d: d["block"][0][0].__setitem__(0, "fast")), "strblock_table.json")
bad(A, "table load ragged block", lambda c: _load_table(c, "ragged_table.json", lambda d: d["block"][0].pop()), "ragged_table.json")
bad(A, "table load future version", lambda c: _load_table(c, "v99_table.json", lambda d: d.update(version=99)), "v99_table.json")
bad(A, "table load wrong format", lambda c: _load_table(c, "fmt_table.json", lambda d: d.update(format="other")), "fmt_table.json")
def _load_table_path(path):
    from lightning_nas import BilinearTable, StagedSpace

    return BilinearTable.load(path, StagedSpace.of(fixture("staged_net", staged_net)))


bad(A, "table load a directory", lambda c: (c.path("dir_table.json").mkdir(), _load_table_path(c.tmp / "dir_table.json")),
    "dir_table.json")


@case(A, "other_table.json", "another space")
def table_load_other_space(c):
    from lightning_nas import BilinearTable, StagedSpace

    path = c.path("other_table.json")
    tables(fixture("tiny_net", tiny_net))[1].save(path)
    BilinearTable.load(path, StagedSpace.of(fixture("staged_net", staged_net)))


bad(A, "predict invalid arch", lambda c: tables()[0].predict({"bogus": 1}), "bogus")


@case(A, ok=True)
def table_save_atomic_keeps_old_on_failure(c):
    acc, lat, _ = tables()
    path = c.path("kept_table.json")
    lat.save(path)
    before = path.read_bytes()
    lat.metadata["unserialisable"] = object()
    try:
        lat.save(path)
    except Exception:  # noqa: BLE001 (the failure is the point)
        pass
    if path.read_bytes() != before:
        c.lost("a failed save damaged the previous table file")


@case(A, ok=True)
def table_round_trip(c):
    from lightning_nas import BilinearTable, StagedSpace

    acc, lat, _ = tables()
    path = lat.save(c.path("rt_table.json"))
    back = BilinearTable.load(path, StagedSpace.of(fixture("staged_net", staged_net)))
    arch = back.staged.space.sample(0)
    if abs(back.predict(arch) - lat.predict(arch)) > 1e-12:
        c.wrong("round trip changed the table")


# == solvers (solvers/) ============================================================================
A = "solvers"


def _solve(**kw):
    from lightning_nas import Limit, search_constrained

    acc, lat, _ = tables()
    limits = kw.pop("limits", None)
    if limits is None:
        limits = [Limit(lat, upper=kw.pop("upper", 3.0))]
    return search_constrained(kw.pop("objective", acc), limits, **kw)


def _limit(**kw):
    from lightning_nas import Limit

    return Limit(tables()[1], **kw)


bad(A, "Limit NaN upper", lambda c: _limit(upper=NAN), "upper")
bad(A, "Limit inf upper", lambda c: _limit(upper=INF), "upper")
bad(A, "Limit bool upper", lambda c: _limit(upper=True), "upper")
bad(A, "Limit string upper", lambda c: _limit(upper="3"), "upper")
bad(A, "Limit lower above upper", lambda c: _limit(upper=1.0, lower=2.0), "lower")
bad(A, "Limit table not a table", lambda c: __import__("lightning_nas").Limit("latency.json", upper=1.0), "table")
bad(A, "unreachable limit", lambda c: _solve(upper=-1.0), "latency")
bad(A, "method unknown", lambda c: _solve(method="simplex"), "method")
bad(A, "solver unknown", lambda c: _solve(solver="no_such_solver"), "no_such_solver")
bad(A, "solver persistent", lambda c: _solve(solver="gurobi_persistent"), "gurobi_persistent")
bad(A, "time_limit NaN", lambda c: _solve(time_limit=NAN), "time_limit")
bad(A, "time_limit negative", lambda c: _solve(time_limit=-1.0), "time_limit")
bad(A, "time_limit bool", lambda c: _solve(time_limit=True), "time_limit")
bad(A, "time_limit string", lambda c: _solve(time_limit="10"), "time_limit")
bad(A, "rel_gap negative", lambda c: _solve(rel_gap=-0.1), "rel_gap")
bad(A, "rel_gap NaN", lambda c: _solve(rel_gap=NAN), "rel_gap")
bad(A, "formulation unknown", lambda c: _solve(formulation="bogus"), "formulation")
bad(A, "unknown option", lambda c: _solve(colour="red"), "colour")
bad(A, "bcfw p zero", lambda c: _solve(method="bcfw", p=0.0), "p")
bad(A, "bcfw p NaN", lambda c: _solve(method="bcfw", p=NAN), "p")
bad(A, "bcfw max_iter zero", lambda c: _solve(method="bcfw", max_iter=0), "max_iter")
bad(A, "bcfw max_iter bool", lambda c: _solve(method="bcfw", max_iter=True), "max_iter")
bad(A, "bcfw rounding unknown", lambda c: _solve(method="bcfw", rounding="floor"), "rounding")
bad(A, "evolution population 1", lambda c: _solve(method="evolution", population=1), "population")
bad(A, "evolution sample 0", lambda c: _solve(method="evolution", sample=0), "sample")
bad(A, "evolution cycles negative", lambda c: _solve(method="evolution", cycles=-5), "cycles")
bad(A, "evolution seed string", lambda c: _solve(method="evolution", seed="x"), "seed")
bad(A, "limit on another space", lambda c: _solve(limits=[__import__("lightning_nas").Limit(tables(fixture("tiny_net", tiny_net))[1],
                                                                                             upper=5.0)]), "space")
bad(A, "objective not a table", lambda c: _solve(objective={"a": 1}), "objective")
bad(A, "base invalid arch", lambda c: _solve(base={"bogus": 1}), "bogus")
bad(A, "two limits same name", lambda c: _solve(limits=[_limit(upper=3.0), _limit(upper=4.0)]), "latency")
bad(A, "pareto_sweep empty targets", lambda c: __import__("lightning_nas").pareto_sweep(tables()[0], tables()[1], []), "targets")
bad(A, "pareto_sweep NaN target", lambda c: __import__("lightning_nas").pareto_sweep(tables()[0], tables()[1], [NAN]), "targets")
bad(A, "miqcp without a bilinear solver", lambda c: _solve(method="miqcp", solver="appsi_highs"), "miqcp")


bad(A, "unreachable lower limit", lambda c: _solve(limits=[_limit(lower=1e6)]), "latency")


@case(A, ok=True)
def pareto_sweep_infeasible_target_reported(c):
    from lightning_nas import pareto_sweep

    acc, lat, _ = tables()
    results = pareto_sweep(acc, lat, [-1.0, lat.extreme(largest=True)[0]])
    bad_one = [r for r in results if r.status == "infeasible"]
    if not bad_one or bad_one[0].arch is not None or "latency" not in (bad_one[0].message or ""):
        c.wrong(f"an unreachable sweep target is not reported as infeasible: {[(r.status, r.arch) for r in results]}")


@case(A, "constant")
def objective_nan_constant_after_construction(c):
    acc, lat, _ = tables()
    acc.constant = NAN
    result = _solve(objective=acc)
    if not math.isfinite(result.objective):
        c.wrong(f"NaN objective reported with status {result.status!r}")


@case(A, "latency")
def latency_nan_constant_after_construction(c):
    from lightning_nas import Limit

    acc, lat, _ = tables()
    lat.constant = NAN
    result = _solve(limits=[Limit(lat, upper=3.0)])
    c.wrong(f"NaN latency constant gave status {result.status!r}, arch {result.arch}")


def _brute(acc, lat, upper):
    best = None
    for arch in acc.staged.space.enumerate():
        if lat.predict(arch) <= upper + 1e-9:
            v = acc.predict(arch)
            best = v if best is None or v > best else best
    return best


for _method in ("milp", "bcfw", "evolution"):
    def _feasible_case(c, method=_method):
        from lightning_nas import Limit

        acc, lat, _ = tables(seed=3)
        upper = 0.5 * (lat.extreme()[0] + lat.extreme(largest=True)[0])
        result = _solve(objective=acc, limits=[Limit(lat, upper=upper)], method=method)
        used = lat.predict(result.arch)
        if used > upper + 1e-6 and result.status not in ("infeasible",):
            c.wrong(f"{method}: arch over the limit ({used:.3f} > {upper:.3f}) with status {result.status!r}")
        if not math.isfinite(result.objective):
            c.wrong(f"{method}: non-finite objective {result.objective}")
        if method == "milp" and abs(result.objective - _brute(acc, lat, upper)) > 1e-6:
            c.wrong(f"milp objective {result.objective} != brute-force optimum {_brute(acc, lat, upper)}")
        if result.arch != acc.staged.space.validate(result.arch):
            c.wrong("result arch not canonical")

    CASES.append(Case(A, f"{_method} result feasible and finite", _feasible_case, (), DEFAULT_TIMEOUT, False, True))


@case(A, ok=True)
def result_archs_are_plain_json(c):
    from lightning_nas import Limit

    acc, lat, _ = tables()
    for method in ("milp", "bcfw", "evolution"):
        arch = _solve(method=method).arch
        if json.loads(json.dumps(arch)) != arch:
            c.wrong(f"{method} result arch is not plain JSON: {arch!r}")
    perf_arch = _perf().search(Limit(nb201_tables()[3], upper=5.0)).arch
    if json.loads(json.dumps(perf_arch)) != perf_arch:
        c.wrong(f"MathNAS search arch is not plain JSON: {perf_arch!r}")


@case(A, ok=True)
def scip_listed_when_pyscipopt_installed(c):
    import importlib.util

    from lightning_nas.solvers import KNOWN_SOLVERS, available_solvers

    if importlib.util.find_spec("pyscipopt") is not None:
        if "scip_direct" not in KNOWN_SOLVERS and "scip_direct" not in available_solvers():
            c.wrong("pyscipopt is installed but scip_direct is not offered")


@case(A, ok=True, timeout=60)
def time_limit_returns(c):
    result = _solve(time_limit=5.0)
    if result.status not in ("optimal", "feasible"):
        c.wrong(f"status {result.status!r}")


# == MathNAS fractional program (solvers/fractional.py) ============================================
A = "fractional"


def _frac(**kw):
    from lightning_nas.solvers.fractional import solve_fractional

    staged, acc, flops, lat = nb201_tables()
    num = kw.pop("numerator", flops)
    den = kw.pop("denominator", flops)
    return solve_fractional(num, den, kw.pop("limits", ()), **kw)


def _big_space(decisions: int, values: int):
    from lightning_nas import BilinearTable
    from lightning_nas.estimators.block_performance import nodes_as_stage
    from lightning_nas.spaces.search_space import Decision, SearchSpace
    import numpy as np

    staged = nodes_as_stage(SearchSpace([Decision(f"d{i}", tuple(range(values)), 0) for i in range(decisions)]))
    block = np.random.default_rng(0).uniform(1, 2, (1, decisions, values))
    return BilinearTable(staged, 1.0, block, name="num"), BilinearTable(staged, 5.0, block + 1, name="den")


bad(A, "method unknown", lambda c: _frac(method="newton"), "method")
bad(A, "max_iter zero", lambda c: _frac(max_iter=0), "max_iter")
bad(A, "max_iter bool", lambda c: _frac(max_iter=True), "max_iter")
bad(A, "tol negative", lambda c: _frac(tol=-1.0), "tol")
bad(A, "tol NaN", lambda c: _frac(tol=NAN), "tol")
bad(A, "scale NaN", lambda c: _frac(scale=NAN), "scale")
bad(A, "constant inf", lambda c: _frac(constant=INF), "constant")
bad(A, "time_limit NaN", lambda c: _frac(time_limit=NAN), "time_limit")
bad(A, "denominator not positive", lambda c: _frac(denominator=nb201_tables()[2].__class__(
    nb201_tables()[0], -100.0, nb201_tables()[2].block, name="flops")), "denominator")
bad(A, "brute force 4.8e6 archs refused fast", lambda c: _frac(numerator=_big_space(7, 9)[0], denominator=_big_space(7, 9)[1],
                                                                method="brute_force"), "brute", timeout=15)
bad(A, "brute force 1e20 archs refused fast", lambda c: _frac(numerator=_big_space(20, 10)[0], denominator=_big_space(20, 10)[1],
                                                               method="brute_force"), "brute", timeout=15)
bad(A, "unreachable limit", lambda c: _frac(limits=[__import__("lightning_nas").Limit(nb201_tables()[3], upper=0.01)]), "latency")


bad(A, "denominator zero for some archs", lambda c: _frac(denominator=nb201_tables()[2].__class__(
    nb201_tables()[0], 0.0, __import__("numpy").zeros((1, 6, 5)), name="flops")), "denominator")
bad(A, "unreachable lower limit", lambda c: _frac(limits=[__import__("lightning_nas").Limit(nb201_tables()[3], lower=1e6)]), "latency")


@case(A, ok=True)
def dinkelbach_equals_brute_force(c):
    from lightning_nas import Limit

    staged, acc, flops, lat = nb201_tables(1)
    num = acc.__class__(staged, 0.0, acc.block - acc.block.min() + 0.1, name="pen")
    a = _frac(numerator=num, denominator=flops, limits=[Limit(lat, upper=4.0)])
    b = _frac(numerator=num, denominator=flops, limits=[Limit(lat, upper=4.0)], method="brute_force")
    if abs(a.objective - b.objective) > 1e-6 or lat.predict(a.arch) > 4.0 + 1e-6:
        c.wrong(f"dinkelbach {a.objective} vs brute force {b.objective}")


# == estimators (estimators/contributions.py, log_error.py, ranking.py, regression.py) =============
A = "estimators"


def _estimate(net=None, data=None, **kw):
    from lightning_nas.estimators import estimate_one_pass

    net = net if net is not None else tiny_net()
    return estimate_one_pass(net, loader() if data is None else data, **kw)


def _nan_net():
    import torch

    net = tiny_net()
    with torch.no_grad():
        for p in net.parameters():
            p.fill_(NAN)
    return net


bad(A, "one_pass empty held_out", lambda c: _estimate(data=[]), "held_out")
bad(A, "one_pass passes 0", lambda c: _estimate(passes=0), "passes")
bad(A, "one_pass passes bool", lambda c: _estimate(passes=True), "passes")
bad(A, "one_pass passes float", lambda c: _estimate(passes=2.5), "passes")
bad(A, "one_pass seed negative", lambda c: _estimate(seed=-1), "seed")
bad(A, "one_pass seed bool", lambda c: _estimate(seed=True), "seed")
bad(A, "shrinkage unknown", lambda c: _estimate(shrinkage="james_stein"), "shrinkage")
bad(A, "fit unknown", lambda c: _estimate(fit="poisson"), "fit")
bad(A, "allocation unknown", lambda c: _estimate(allocation="greedy"), "allocation")
bad(A, "paired with one pass", lambda c: _estimate(paired=True, passes=1), "paired")
bad(A, "paired not a bool", lambda c: _estimate(paired="yes", passes=2), "paired")
bad(A, "score not callable", lambda c: _estimate(score="top5"), "score")
bad(A, "pilot_passes negative", lambda c: _estimate(fit="log_error", allocation="adaptive", passes=4, pilot_passes=-1), "pilot_passes")
bad(A, "rank above world_size", lambda c: _estimate(rank=2, world_size=2), "rank")
bad(A, "world_size zero", lambda c: _estimate(world_size=0), "world_size")
bad(A, "supernet not a Supernet", lambda c: _estimate(net=_nn().Linear(2, 2)), "supernet")
bad(A, "held_out labels out of range", lambda c: _estimate(data=loader(classes=50)), "target|label|class")
bad(A, "held_out not (x, y)", lambda c: _estimate(data=[__import__("torch").randn(4, 3, 16, 16)]), "batch")
bad(A, "NaN weights, means", lambda c: _estimate(net=_nan_net()), "nan|finite")
bad(A, "score returns NaN", lambda c: _estimate(score=lambda logits, y: __import__("torch").full((len(y),), NAN)), "score")
bad(A, "score returns wrong shape", lambda c: _estimate(score=lambda logits, y: __import__("torch").ones(3)), "score")
bad(A, "score returns values above 1", lambda c: _estimate(score=lambda logits, y: __import__("torch").full((len(y),), 2.0)),
    "[0, 1]")
bad(A, "float labels", lambda c: _estimate(data=[(__import__("torch").randn(4, 3, 16, 16), __import__("torch").rand(4))]), "labels")
bad(A, "NaN weights, log_error", lambda c: _estimate(net=_nan_net(), fit="log_error", passes=2), "nan|finite")
bad(A, "paper protocol passes 0", lambda c: __import__("lightning_nas.estimators", fromlist=["x"]).estimate_paper_protocol(
    tiny_net(), loader(), passes=0), "passes")
bad(A, "SmoothedTop1 temperature 0", lambda c: __import__("lightning_nas.estimators", fromlist=["x"]).SmoothedTop1(0.0), "temperature")
bad(A, "SmoothedTop1 temperature NaN", lambda c: __import__("lightning_nas.estimators", fromlist=["x"]).SmoothedTop1(NAN), "temperature")
bad(A, "SmoothedTop1 temperature bool", lambda c: __import__("lightning_nas.estimators", fromlist=["x"]).SmoothedTop1(True), "temperature")
bad(A, "kendall_tau NaN", lambda c: __import__("lightning_nas.estimators.ranking", fromlist=["x"]).kendall_tau([1, NAN, 3], [1, 2, 3]),
    "nan|finite")
bad(A, "spearman_rho NaN", lambda c: __import__("lightning_nas.estimators.ranking", fromlist=["x"]).spearman_rho([1, 2, 3], [1, INF, 3]),
    "nan|finite")
bad(A, "kendall_tau length mismatch", lambda c: __import__("lightning_nas.estimators.ranking", fromlist=["x"]).kendall_tau([1, 2], [1, 2, 3]),
    "length|shape")


def _regression(kind="BilinearRegression", ridge=0.0, y=None, n=8):
    from lightning_nas import estimators

    staged = __import__("lightning_nas").StagedSpace.of(fixture("staged_net", staged_net))
    archs = staged.space.sample_many(n, 0)
    model = getattr(estimators, kind)(staged, ridge=ridge)
    return model.fit(archs, y if y is not None else list(range(n)))


bad(A, "regression ridge negative", lambda c: _regression(ridge=-1.0), "ridge")
bad(A, "regression ridge NaN", lambda c: _regression(ridge=NAN), "ridge")
bad(A, "regression ridge bool", lambda c: _regression(ridge=True), "ridge")
bad(A, "regression NaN accuracies", lambda c: _regression(y=[NAN] * 8), "accuracies")
bad(A, "regression wrong length", lambda c: _regression(y=[1.0, 2.0]), "accuracies")
bad(A, "quadratic NaN accuracies", lambda c: _regression("QuadraticRegression", 0.01, y=[1.0] * 7 + [INF]), "accuracies")
bad(A, "measure_subnet_accuracies empty archs", lambda c: __import__("lightning_nas.estimators.ranking", fromlist=["x"])
    .measure_subnet_accuracies(tiny_net(), [], loader()), "archs")
bad(A, "measure_subnet_accuracies empty held_out", lambda c: __import__("lightning_nas.estimators.ranking", fromlist=["x"])
    .measure_subnet_accuracies(tiny_net(), [tiny_net().space.default()], []), "held_out")
bad(A, "allocate_records infinite maximum", lambda c: __import__("lightning_nas.estimators", fromlist=["x"]).allocate_records(
    __import__("torch").tensor([0.5, 0.5]), 6, 1, INF), "maximum", timeout=20)
bad(A, "allocate_records NaN spread", lambda c: __import__("lightning_nas.estimators", fromlist=["x"]).allocate_records(
    __import__("torch").tensor([NAN, 0.5]), 6, 1, 4), "spread")
bad(A, "ablate unknown term", lambda c: __import__("lightning_nas.estimators", fromlist=["x"]).ablate(tables()[0], "bogus"), "term")


@case(A, "nan|finite")
def measure_nan_weights(c):
    from lightning_nas.estimators.ranking import measure_subnet_accuracies

    net = _nan_net()
    acc = measure_subnet_accuracies(net, net.space.sample_many(2, 0), loader())
    c.wrong(f"a NaN network measured as accuracies {acc}")


@case(A, ok=True)
def one_pass_table_finite(c):
    import numpy as np

    table = _estimate(passes=2)
    if not (np.isfinite(table.block).all() and np.isfinite(table.constant)):
        c.wrong("non-finite accuracy table from a healthy network")


# == MathNAS block performance (estimators/block_performance.py) ===================================
A = "block_performance"


def _perf(evaluate=None, flops=None, **kw):
    from lightning_nas.estimators.block_performance import estimate_block_performance

    staged, acc, fl, lat = nb201_tables()
    if evaluate is None:
        evaluate = lambda archs: {"accuracy": acc.predict_many(archs), "latency": lat.predict_many(archs)}  # noqa: E731
    return estimate_block_performance(evaluate, staged, fl if flops is None else flops, **kw)


def _perf_sampled(**kw):
    from lightning_nas.estimators.block_performance import estimate_block_performance_sampled

    staged, acc, fl, lat = nb201_tables()
    return estimate_block_performance_sampled(lambda archs: {"accuracy": acc.predict_many(archs)}, staged, fl, **kw)


def _nan_eval(archs):
    import numpy as np

    out = np.linspace(0.5, 0.9, len(archs))
    out[len(out) // 2] = NAN
    return {"accuracy": out}


bad(A, "evaluator returns NaN accuracy", lambda c: _perf(evaluate=_nan_eval), "nan|finite")
bad(A, "evaluator returns inf latency", lambda c: _perf(evaluate=lambda a: {"accuracy": [0.5] * len(a), "latency": [INF] * len(a)}),
    "latency")
bad(A, "evaluator returns wrong length", lambda c: _perf(evaluate=lambda a: {"accuracy": [0.5]}), "accuracy")
bad(A, "evaluator without accuracy", lambda c: _perf(evaluate=lambda a: {"acc": [0.5] * len(a)}), "accuracy")
bad(A, "evaluator returns a list", lambda c: _perf(evaluate=lambda a: [0.5] * len(a)), "evaluator")
bad(A, "evaluator not callable", lambda c: _perf(evaluate="tabular"), "evaluator")
bad(A, "evaluator returns strings", lambda c: _perf(evaluate=lambda a: {"accuracy": ["high"] * len(a)}), "accuracy")
bad(A, "reference unknown string", lambda c: _perf(reference="middle"), "reference")
bad(A, "reference invalid arch", lambda c: _perf(reference={"bogus": 1}), "bogus")
bad(A, "flops not a table", lambda c: _perf(flops="flops.json"), "flops")
bad(A, "flops table of another space", lambda c: _perf(flops=tables()[2]), "flops")
bad(A, "sampled num_hosts 0", lambda c: _perf_sampled(num_hosts=0), "num_hosts")
bad(A, "sampled num_hosts bool", lambda c: _perf_sampled(num_hosts=True), "num_hosts")
bad(A, "sampled num_hosts string", lambda c: _perf_sampled(num_hosts="many"), "num_hosts")
bad(A, "sampled seed bool", lambda c: _perf_sampled(num_hosts=2, seed=True), "seed")
bad(A, "nodes_as_stage labels a string", lambda c: __import__("lightning_nas.estimators.block_performance", fromlist=["x"])
    .nodes_as_stage(__import__("lightning_nas.spaces.nb201", fromlist=["x"]).nb201_search_space(), "edge_1_0"), "labels")
bad(A, "sampled max_hosts negative", lambda c: _perf_sampled(num_hosts="all", max_hosts=-1), "max_hosts")
bad(A, "predictor unknown law", lambda c: _perf().predictor(law="inverse"), "law")
bad(A, "table unknown metric", lambda c: _perf().table("energy"), "metric")
bad(A, "nodes_as_stage unknown label", lambda c: __import__("lightning_nas.estimators.block_performance", fromlist=["x"]).nodes_as_stage(
    __import__("lightning_nas.spaces.nb201", fromlist=["x"]).nb201_search_space(), ["edge_9_9"]), "edge_9_9")
bad(A, "tabular_evaluator unknown column", lambda c: __import__("lightning_nas.estimators.block_performance", fromlist=["x"])
    .tabular_evaluator(fixture("nb201", nb201_benchmark), {"accuracy": "c10_valid_999"}), "c10_valid_999")
bad(A, "supernet_evaluator empty held_out", lambda c: __import__("lightning_nas.estimators.block_performance", fromlist=["x"])
    .supernet_evaluator(tiny_net(), [])([tiny_net().space.default()]), "held_out")


def _perf_file(c, name, mutate=None, raw=None):
    from lightning_nas.estimators import BlockPerformance

    staged = nb201_tables()[0]
    path = c.path(name)
    if raw is not None:
        path.write_bytes(raw)
    else:
        data = _perf().to_dict()
        if mutate is not None:
            data = mutate(data) or data
        path.write_text(json.dumps(data))
    return BlockPerformance.load(path, staged)


bad(A, "load missing file", lambda c: __import__("lightning_nas.estimators", fromlist=["x"]).BlockPerformance.load(
    c.tmp / "missing_perf.json", nb201_tables()[0]), "missing_perf.json")
bad(A, "load empty file", lambda c: _perf_file(c, "empty_perf.json", raw=b""), "empty_perf.json")
bad(A, "load truncated", lambda c: _perf_file(c, "trunc_perf.json", raw=json.dumps(_perf().to_dict()).encode()[:300]), "trunc_perf.json")
bad(A, "load binary garbage", lambda c: _perf_file(c, "bin_perf.json", raw=os.urandom(512)), "bin_perf.json")
bad(A, "load JSON list", lambda c: _perf_file(c, "list_perf.json", raw=b"[]"), "list_perf.json")
bad(A, "load missing base", lambda c: _perf_file(c, "nobase_perf.json", lambda d: d.pop("base") and None), "nobase_perf.json")
bad(A, "load missing deltas", lambda c: _perf_file(c, "nodeltas_perf.json", lambda d: d.pop("deltas") and None), "nodeltas_perf.json")
bad(A, "load NaN base", lambda c: _perf_file(c, "nanbase_perf.json", lambda d: d["base"].update(accuracy=NAN)), "nanbase_perf.json")
bad(A, "load string base", lambda c: _perf_file(c, "strbase_perf.json", lambda d: d["base"].update(accuracy="high")), "strbase_perf.json")
bad(A, "load delta table truncated", lambda c: _perf_file(c, "delta_perf.json", lambda d: d["deltas"]["accuracy"].pop("block") and None),
    "delta_perf.json")
bad(A, "load negative evaluations", lambda c: _perf_file(c, "evals_perf.json", lambda d: d.update(evaluations=-3)), "evals_perf.json")
bad(A, "load future version", lambda c: _perf_file(c, "v9_perf.json", lambda d: d.update(version=9)), "v9_perf.json")
bad(A, "load a directory", lambda c: (c.path("dir_perf.json").mkdir(), __import__("lightning_nas.estimators", fromlist=["x"])
    .BlockPerformance.load(c.tmp / "dir_perf.json", nb201_tables()[0])), "dir_perf.json")


@case(A, "other_perf.json", "space")
def load_file_of_another_space(c):
    from lightning_nas.estimators import BlockPerformance
    from lightning_nas.estimators.block_performance import nodes_as_stage
    from lightning_nas.spaces.search_space import Decision, SearchSpace

    path = c.path("other_perf.json")
    _perf().save(path)
    other = nodes_as_stage(SearchSpace([Decision(f"layer{i}", ("a", "b"), "a") for i in range(3)]))
    BlockPerformance.load(path, other)


@case(A, ok=True)
def save_load_round_trip(c):
    from lightning_nas.estimators import BlockPerformance

    perf = _perf()
    back = BlockPerformance.load(perf.save(c.path("rt_perf.json")), nb201_tables()[0])
    arch = back.staged.space.sample(1)
    if abs(back.predictor().predict(arch) - perf.predictor().predict(arch)) > 1e-12:
        c.wrong("round trip changed the prediction")


# == profiling (profiling/, profile_cli.py) ========================================================
A = "profiling"


def _settings(**kw):
    from lightning_nas.profiling import ProfileSettings

    args = dict(input_size=(3, 16, 16), repeats=2, warmup=0, rounds=1)
    args.update(kw)
    return ProfileSettings(**args)


def _load_or_build(c, path, **kw):
    from lightning_nas.profiling import load_or_build

    return load_or_build(fixture("tiny_net", tiny_net), path, _settings(), calibration_archs=2, **kw)


bad(A, "input_size zero", lambda c: _settings(input_size=(3, 0, 16)), "input_size")
bad(A, "input_size bool", lambda c: _settings(input_size=(True, 16, 16)), "input_size")
bad(A, "input_size floats", lambda c: _settings(input_size=(3.0, 16.0, 16.0)), "input_size")
bad(A, "input_size string", lambda c: _settings(input_size="3x16x16"), "input_size")
bad(A, "batch_size 0", lambda c: _settings(batch_size=0), "batch_size")
bad(A, "batch_size bool", lambda c: _settings(batch_size=True), "batch_size")
bad(A, "threads negative", lambda c: _settings(threads=-1), "threads")
bad(A, "repeats float", lambda c: _settings(repeats=2.5), "repeats")
bad(A, "warmup negative", lambda c: _settings(warmup=-1), "warmup")
bad(A, "rounds 0", lambda c: _settings(rounds=0), "rounds")
bad(A, "statistic unknown", lambda c: _settings(statistic="mean"), "statistic")
bad(A, "dtype unknown", lambda c: _settings(dtype="int8"), "dtype")
bad(A, "device unknown", lambda c: _settings(device="tpu"), "device")
bad(A, "device cuda missing", lambda c: _settings(device="cuda:7") if not __import__("torch").cuda.is_available() else
    _settings(device="cuda:99"), "device")
bad(A, "pin_malloc string", lambda c: _settings(pin_malloc="yes"), "pin_malloc")
bad(A, "calibration_archs 0", lambda c: __import__("lightning_nas.profiling", fromlist=["x"]).build_latency_table(
    fixture("tiny_net", tiny_net), _settings(), calibration_archs=0), "calibration_archs")
bad(A, "calibration_archs bool", lambda c: __import__("lightning_nas.profiling", fromlist=["x"]).build_latency_table(
    fixture("tiny_net", tiny_net), _settings(), calibration_archs=True), "calibration_archs")
bad(A, "build on non-supernet", lambda c: __import__("lightning_nas.profiling", fromlist=["x"]).build_latency_table(
    _nn().Linear(2, 2), _settings()), "supernet")
bad(A, "flops input_size negative", lambda c: __import__("lightning_nas.profiling", fromlist=["x"]).build_flops_table(
    fixture("tiny_net", tiny_net), (3, -1, 16)), "input_size")
bad(A, "flops input_size wrong channels", lambda c: __import__("lightning_nas.profiling", fromlist=["x"]).build_flops_table(
    fixture("tiny_net", tiny_net), (5, 16, 16)), "input")
bad(A, "check_latency num_archs 0", lambda c: __import__("lightning_nas.profiling", fromlist=["x"]).check_latency(
    fixture("tiny_net", tiny_net), _lat_table(), num_archs=0), "num_archs")
bad(A, "check_latency table of another space", lambda c: __import__("lightning_nas.profiling", fromlist=["x"]).check_latency(
    fixture("tiny_net", tiny_net), tables()[1], num_archs=2), "table|space|structure")
bad(A, "mape zero measured", lambda c: __import__("lightning_nas.profiling", fromlist=["x"]).mape([1.0, 2.0], [0.0, 2.0]), "measured")
bad(A, "mape NaN predicted", lambda c: __import__("lightning_nas.profiling", fromlist=["x"]).mape([NAN, 2.0], [1.0, 2.0]), "predicted")
bad(A, "mape length mismatch", lambda c: __import__("lightning_nas.profiling", fromlist=["x"]).mape([1.0], [1.0, 2.0]), "predicted|measured")
bad(A, "mape empty", lambda c: __import__("lightning_nas.profiling", fromlist=["x"]).mape([], []), "predicted|measured")
bad(A, "settings_of table without settings", lambda c: __import__("lightning_nas.profiling", fromlist=["x"]).settings_of(tables()[1]),
    "settings")
bad(A, "build_latency_table seed bool", lambda c: __import__("lightning_nas.profiling", fromlist=["x"]).build_latency_table(
    fixture("tiny_net", tiny_net), _settings(), calibration_archs=1, seed=True), "seed")
bad(A, "check_latency seed text", lambda c: __import__("lightning_nas.profiling", fromlist=["x"]).check_latency(
    fixture("tiny_net", tiny_net), _lat_table(), num_archs=2, seed="x"), "seed")


def _lat_table():
    from lightning_nas.profiling import build_latency_table

    return build_latency_table(fixture("tiny_net", tiny_net), _settings(), calibration_archs=2)


@case(A, ok=True)
def latency_table_finite_positive(c):
    import numpy as np

    table = _lat_table()
    exists = table.staged.config_exists()
    if not (np.isfinite(table.block).all() and (table.block[exists] > 0).all() and math.isfinite(table.constant)):
        c.wrong("latency table with non-finite or non-positive entries")


for _name, _raw in (("truncated", None), ("list", b"[1, 2]"), ("null", b"null"), ("garbage", bytes(range(256))), ("empty", b""),
                    ("nan", "NAN"), ("other space", "OTHER"), ("missing metadata", "NOMETA")):
    def _rebuild_case(c, raw=_raw, name=_name):
        path = c.path(f"lat_{name.replace(' ', '_')}.json")
        good = _lat_table()
        if raw is None:
            path.write_bytes(json.dumps(good.to_dict()).encode()[:150])
        elif raw == "NAN":
            d = good.to_dict()
            d["constant"] = NAN
            path.write_text(json.dumps(d))
        elif raw == "OTHER":
            tables()[1].save(path)
        elif raw == "NOMETA":
            d = good.to_dict()
            d.pop("metadata")
            path.write_text(json.dumps(d))
        else:
            path.write_bytes(raw)
        before = path.read_bytes()
        table = _load_or_build(c, path)
        backups = [p for p in c.tmp.iterdir() if p.name.startswith(path.name + ".bak")]
        if not backups or backups[0].read_bytes() != before:
            c.lost(f"the unreadable {name} table was replaced without a .bak copy")
        if not math.isfinite(table.constant):
            c.wrong("rebuilt table has a non-finite constant")

    CASES.append(Case(A, f"load_or_build over a {_name} file keeps a .bak", _rebuild_case, (), DEFAULT_TIMEOUT, False, True))


@case(A, "lat_dir.json")
def load_or_build_directory(c):
    c.path("lat_dir.json").mkdir()
    _load_or_build(c, c.tmp / "lat_dir.json")


@case(A, "readonly")
def load_or_build_read_only_directory(c):
    target = c.tmp / "readonly"
    target.mkdir()
    c.as_nobody()
    os.chmod(target, 0o555) if os.access(target, os.W_OK) else None
    _load_or_build(c, target / "lat.json")


@case(A, ok=True)
def load_or_build_reuses_matching(c):
    path = c.path("lat_reuse.json")
    first = _load_or_build(c, path)
    c.protect(path)
    second = _load_or_build(c, path)
    if second.metadata["created"] != first.metadata["created"]:
        c.wrong("a matching table was rebuilt")


# == callbacks (callbacks/) ========================================================================
A = "callbacks"


def _cb(name, *args, **kw):
    import lightning_nas.callbacks as cbs

    return getattr(cbs, name)(*args, **kw)


def _arch_data(n=16):
    import torch
    from torch.utils.data import TensorDataset

    return TensorDataset(torch.randn(n, 3, 16, 16), torch.randint(0, 10, (n,)))


bad(A, "UniformSampling seed bool", lambda c: _cb("UniformSampling", True), "seed")
bad(A, "UniformSampling seed negative", lambda c: _cb("UniformSampling", -1), "seed")
bad(A, "UniformSampling eval_arch unknown", lambda c: _cb("UniformSampling", 0, eval_arch="median"), "eval_arch")
bad(A, "UniformSampling per_sample string", lambda c: _cb("UniformSampling", 0, per_sample="yes"), "per_sample")
bad(A, "ContributionEstimation passes 0", lambda c: _cb("ContributionEstimation", loader(), passes=0), "passes")
bad(A, "ContributionEstimation every_n_epochs 0", lambda c: _cb("ContributionEstimation", loader(), every_n_epochs=0), "every_n_epochs")
bad(A, "ContributionEstimation never runs", lambda c: _cb("ContributionEstimation", loader(), at_end=False), "at_end|every_n_epochs")
bad(A, "ContributionEstimation method unknown", lambda c: _cb("ContributionEstimation", loader(), method="two_pass"), "method")
bad(A, "LatencyProfiler repeats 0", lambda c: _cb("LatencyProfiler", c.tmp / "l.json", repeats=0), "repeats")
bad(A, "LatencyProfiler input_size bad", lambda c: _cb("LatencyProfiler", c.tmp / "l.json", input_size=(3, -2, 2)), "input_size")
bad(A, "LatencyProfiler statistic unknown", lambda c: _cb("LatencyProfiler", c.tmp / "l.json", statistic="mean"), "statistic")
bad(A, "DartsSearch empty arch_data", lambda c: _cb("DartsSearch", _arch_data(0)), "arch_data")
bad(A, "DartsSearch order 3", lambda c: _cb("DartsSearch", _arch_data(), order=3), "order")
bad(A, "DartsSearch lr NaN", lambda c: _cb("DartsSearch", _arch_data(), lr=NAN), "lr")
bad(A, "DartsSearch lr negative", lambda c: _cb("DartsSearch", _arch_data(), lr=-1e-3), "lr")
bad(A, "DartsSearch batch_size 0", lambda c: _cb("DartsSearch", _arch_data(), batch_size=0), "batch_size")
bad(A, "DartsSearch betas out of range", lambda c: _cb("DartsSearch", _arch_data(), betas=(1.5, 0.9)), "betas")
bad(A, "DrNASSearch anchor unknown", lambda c: _cb("DrNASSearch", _arch_data(), anchor="l1"), "anchor")
bad(A, "DrNASSearch anchor_weight NaN", lambda c: _cb("DrNASSearch", _arch_data(), anchor_weight=NAN), "anchor_weight")
bad(A, "DrNASSearch prune_at bad", lambda c: _cb("DrNASSearch", _arch_data(), prune_at={2: 0}), "prune_at")
bad(A, "PerturbationSelection interval 0", lambda c: _cb("PerturbationSelection", _cb("DartsSearch", _arch_data()), _arch_data(),
                                                          interval=0), "interval")
bad(A, "PerturbationSelection search wrong type", lambda c: _cb("PerturbationSelection", "darts", _arch_data()), "search")
bad(A, "BlockPerformanceEstimation num_hosts 0", lambda c: _cb("BlockPerformanceEstimation", loader(), (3, 16, 16), method="sampled",
                                                                num_hosts=0), "num_hosts")
bad(A, "BlockPerformanceEstimation method unknown", lambda c: _cb("BlockPerformanceEstimation", loader(), (3, 16, 16), method="exact"),
    "method")


class _Classifier:
    """Built lazily: a LightningModule around a supernet (the README's)."""

    @staticmethod
    def make(net, lr=0.05, nan_loss=False):
        import lightning.pytorch as pl
        import torch
        from torch import nn

        class Classifier(pl.LightningModule):
            def __init__(self):
                super().__init__()
                self.net = net

            def forward(self, x):
                return self.net(x)

            def training_step(self, batch, _):
                x, y = batch
                loss = nn.functional.cross_entropy(self(x), y)
                return loss * NAN if nan_loss else loss

            def validation_step(self, batch, _):
                pass

            def configure_optimizers(self):
                return torch.optim.SGD(self.parameters(), lr=lr)

        return Classifier()


def _trainer(c, callbacks, **kw):
    import lightning.pytorch as pl

    args = dict(max_steps=2, logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                default_root_dir=c.tmp, accelerator="cpu", devices=1, callbacks=callbacks)
    args.update(kw)
    return pl.Trainer(**args)


class _Late(Exception):
    """Raised by a case when the library refused the input only after the work it should have saved."""


def _empty_held_out_case(make):
    def run(c):
        import lightning.pytorch as pl

        callback = make(c)  # refusing here is the best outcome
        steps = []

        class Count(pl.Callback):
            def on_train_batch_end(self, *args, **kwargs):
                steps.append(1)

        try:
            _trainer(c, [_cb("UniformSampling", 0), callback, Count()], max_steps=2).fit(_Classifier.make(tiny_net()), loader())
        except Exception as err:
            if steps:
                raise _Late(f"refused only after {len(steps)} training steps: {type(err).__name__}: {err}") from None
            raise
        c.wrong("training finished without an error")

    return run


for _label, _make, _keyword in (
    ("ContributionEstimation empty held_out", lambda c: _cb("ContributionEstimation", []), "held_out"),
    ("BlockPerformanceEstimation empty held_out", lambda c: _cb("BlockPerformanceEstimation", [], (3, 16, 16)), "held_out"),
    ("ContributionEstimation path is a directory", lambda c: (c.path("acc_dir").mkdir(),
                                                             _cb("ContributionEstimation", loader(), path=c.tmp / "acc_dir"))[1], "acc_dir"),
    ("LatencyProfiler path is a directory", lambda c: (c.path("lat_dir").mkdir(), _cb("LatencyProfiler", c.tmp / "lat_dir",
                                                      input_size=(3, 16, 16), repeats=2, warmup=0))[1], "lat_dir"),
):
    CASES.append(Case(A, f"{_label} (refused before training)", _empty_held_out_case(_make), (_keyword,), 90, False, False))


@case(A, "nan|finite", timeout=90)
def contribution_estimation_after_nan_loss(c):
    import numpy as np

    estimate = _cb("ContributionEstimation", loader(), passes=1, path=c.tmp / "acc.json")
    net = tiny_net()
    _trainer(c, [_cb("UniformSampling", 0), estimate]).fit(_Classifier.make(net, lr=1e30, nan_loss=True), loader())
    table = estimate.accuracy_model
    if table is not None and np.isfinite(table.block).all():
        c.wrong("a finite-looking accuracy table from a network whose weights are NaN")


@case(A, "nan|finite", timeout=90)
def darts_select_after_nan_loss(c):
    from lightning_nas.spaces.nb201 import nb201_supernet

    search = _cb("DartsSearch", _arch_data(8), batch_size=4)
    net = nb201_supernet(channels=4, cells_per_stage=1, num_classes=10)
    _trainer(c, [search]).fit(_Classifier.make(net, nan_loss=True), loader(8, size=16, batch=4))
    arch = search.select()
    c.wrong(f"select() returned {arch} from NaN alpha")


@case(A, ok=True, timeout=120)
def checkpoint_with_every_callback_resumes(c):
    import torch

    net = tiny_net()
    cbs = [_cb("UniformSampling", 0, per_sample=True), _cb("ContributionEstimation", loader(), passes=1),
           _cb("LatencyProfiler", c.tmp / "lat.json", input_size=(3, 16, 16), repeats=2, warmup=0)]
    trainer = _trainer(c, cbs, max_epochs=1, max_steps=-1, enable_checkpointing=True)
    trainer.fit(_Classifier.make(net), loader())
    ckpt = next(c.tmp.rglob("*.ckpt"))
    torch.load(ckpt, weights_only=True)  # what Lightning's resume does
    cbs2 = [_cb("UniformSampling", 0, per_sample=True), _cb("ContributionEstimation", loader(), passes=1),
            _cb("LatencyProfiler", c.tmp / "lat.json", input_size=(3, 16, 16), repeats=2, warmup=0)]
    _trainer(c, cbs2, max_epochs=2, max_steps=-1).fit(_Classifier.make(tiny_net()), loader(), ckpt_path=ckpt)


# == differentiable (differentiable/) ==============================================================
A = "differentiable"


def _relaxation(nan=False):
    import torch

    from lightning_nas.differentiable import SoftmaxRelaxation
    from lightning_nas.spaces.nb201 import nb201_supernet

    net = nb201_supernet(channels=4, cells_per_stage=1, num_classes=10)
    relax = SoftmaxRelaxation(net)
    if nan:
        with torch.no_grad():
            for p in relax.alpha:
                p.fill_(NAN)
    return relax


bad(A, "magnitude_selection NaN alpha", lambda c: __import__("lightning_nas.differentiable", fromlist=["x"]).magnitude_selection(
    _relaxation(nan=True)), "nan|finite")
bad(A, "SoftmaxRelaxation init_std negative", lambda c: __import__("lightning_nas.differentiable", fromlist=["x"]).SoftmaxRelaxation(
    tiny_net(), init_std=-1.0), "init_std")
bad(A, "SoftmaxRelaxation init_std NaN", lambda c: __import__("lightning_nas.differentiable", fromlist=["x"]).SoftmaxRelaxation(
    tiny_net(), init_std=NAN), "init_std")
bad(A, "SoftmaxRelaxation non-supernet", lambda c: __import__("lightning_nas.differentiable", fromlist=["x"]).SoftmaxRelaxation(
    _nn().Linear(2, 2)), "supernet")
bad(A, "DirichletRelaxation non-supernet", lambda c: __import__("lightning_nas.differentiable", fromlist=["x"]).DirichletRelaxation(
    "net"), "supernet")


# == strategies and storage (strategies/) ==========================================================
A = "strategies"


def _strategies():
    import lightning_nas.strategies as st

    return st


def _search(c, evaluator=None, strategy=None, budget=6, storage="default", objective="accuracy", **kw):
    st = _strategies()
    space, synth = synthetic()
    strategy = strategy if strategy is not None else st.RandomSearch(space, seed=0)
    if storage == "default":
        storage = c.tmp / "search.db"
    return st.run_search(strategy, evaluator if evaluator is not None else synth, objective=objective,
                         budget=st.Budget(evaluations=budget) if isinstance(budget, int) else budget, storage=storage, **kw)


class _Eval:
    """The synthetic evaluator with a twist on chosen calls."""

    full_fidelity = 10.0

    def __init__(self, twist: Callable[[int, dict], dict] | None = None) -> None:
        self.base, self.calls, self.twist = synthetic()[1], 0, twist

    def __call__(self, arch, fidelity):
        # Counted in a file (the case's directory): evaluations may run in child processes.
        with open("evaluator.calls", "ab") as f:
            f.write(b".")
        self.calls = os.path.getsize("evaluator.calls")
        out = self.base(arch, fidelity)
        return self.twist(self.calls, out) if self.twist else out

    def costs(self, arch):
        return self.base.costs(arch)


bad(A, "Budget none", lambda c: _strategies().Budget(), "evaluations")
bad(A, "Budget evaluations 0", lambda c: _strategies().Budget(evaluations=0), "evaluations")
bad(A, "Budget evaluations bool", lambda c: _strategies().Budget(evaluations=True), "evaluations")
bad(A, "Budget evaluations float", lambda c: _strategies().Budget(evaluations=2.5), "evaluations")
bad(A, "Budget seconds NaN", lambda c: _strategies().Budget(seconds=NAN), "seconds")
bad(A, "Budget seconds negative", lambda c: _strategies().Budget(seconds=-1.0), "seconds")
bad(A, "Budget equivalent inf", lambda c: _strategies().Budget(equivalent_evaluations=INF), "equivalent_evaluations")
bad(A, "Constraint no bound", lambda c: _strategies().Constraint("lat"), "upper")
bad(A, "Constraint NaN upper", lambda c: _strategies().Constraint("lat", upper=NAN), "upper")
bad(A, "Constraint inf upper", lambda c: _strategies().Constraint("lat", upper=INF), "upper")
bad(A, "Constraint bool upper", lambda c: _strategies().Constraint("lat", upper=True), "upper")
bad(A, "Constraint lower above upper", lambda c: _strategies().Constraint("lat", upper=1.0, lower=2.0), "lower")
bad(A, "Constraint metric not a string", lambda c: _strategies().Constraint(5, upper=1.0), "metric")
bad(A, "RandomSearch max_tries 0", lambda c: _strategies().RandomSearch(synthetic()[0], max_tries=0), "max_tries")
bad(A, "RandomSearch space None", lambda c: _strategies().RandomSearch(None), "space")
bad(A, "RandomSearch seed string", lambda c: _strategies().RandomSearch(synthetic()[0], seed="a"), "seed")
bad(A, "RandomSearch cost_model not callable", lambda c: _strategies().RandomSearch(synthetic()[0], cost_model=5), "cost_model")
bad(A, "Evolution population 1", lambda c: _strategies().RegularizedEvolution(synthetic()[0], population=1), "population")
bad(A, "Evolution sample above population", lambda c: _strategies().RegularizedEvolution(synthetic()[0], population=4, sample=9),
    "sample")
bad(A, "LayerNAS buckets 0", lambda c: _strategies().LayerNAS(synthetic()[0], cost="cost", cost_model=synthetic()[1].costs, buckets=0),
    "buckets")
bad(A, "LayerNAS cost metric without cost_model", lambda c: _strategies().LayerNAS(synthetic()[0], cost="cost"), "cost")
bad(A, "LayerNAS per_bucket negative", lambda c: _strategies().LayerNAS(synthetic()[0], cost="cost", cost_model=synthetic()[1].costs,
                                                                       per_bucket=-1), "per_bucket")
bad(A, "BO acquisition unknown", lambda c: _strategies().BayesianOptimization(synthetic()[0], acquisition="thompson"), "acquisition")
bad(A, "BO members 0", lambda c: _strategies().BayesianOptimization(synthetic()[0], members=0), "members")
bad(A, "BO lr NaN", lambda c: _strategies().BayesianOptimization(synthetic()[0], lr=NAN), "lr")
bad(A, "BO initial negative", lambda c: _strategies().BayesianOptimization(synthetic()[0], initial=-1), "initial")
bad(A, "BO batch_size bool", lambda c: _strategies().BayesianOptimization(synthetic()[0], batch_size=True), "batch_size")
bad(A, "BO pretrain without cost_model", lambda c: _strategies().BayesianOptimization(synthetic()[0], pretrain_metrics=["cost"]),
    "cost_model")
bad(A, "RankNOSH eta 1", lambda c: _strategies().RankNOSH(synthetic()[0], eta=1.0), "eta")
bad(A, "RankNOSH levels empty", lambda c: _strategies().RankNOSH(synthetic()[0], levels=()), "levels")
bad(A, "RankNOSH levels descending", lambda c: _strategies().RankNOSH(synthetic()[0], levels=(200, 12)), "levels")
bad(A, "run_search n_workers 0", lambda c: _search(c, n_workers=0), "n_workers")
bad(A, "run_search n_workers bool", lambda c: _search(c, n_workers=True), "n_workers")
bad(A, "run_search objective missing", lambda c: _search(c, objective="top5"), "top5")
bad(A, "run_search budget not a Budget", lambda c: _search(c, budget=10.0), "budget")
bad(A, "run_search evaluator without full_fidelity", lambda c: _search(c, evaluator=lambda a, f: {"accuracy": 1.0}), "full_fidelity")
bad(A, "run_search evaluator returns a list", lambda c: _search(c, evaluator=_Eval(lambda n, out: [1.0])), "evaluator")
bad(A, "run_search evaluator returns string objective", lambda c: _search(c, evaluator=_Eval(lambda n, out: {**out, "accuracy": "high"})),
    "accuracy")
bad(A, "run_search evaluator full_fidelity 0", lambda c: _search(c, evaluator=type("E", (_Eval,), {"full_fidelity": 0})()),
    "full_fidelity")
bad(A, "run_search evaluator full_fidelity NaN", lambda c: _search(c, evaluator=type("E", (_Eval,), {"full_fidelity": NAN})()),
    "full_fidelity")
bad(A, "run_search equivalent budget, full_fidelity 0", lambda c: _search(
    c, evaluator=type("E", (_Eval,), {"full_fidelity": 0})(), budget=_strategies().Budget(equivalent_evaluations=3.0)), "full_fidelity")
bad(A, "pareto_front unknown cost", lambda c: _search(c, storage=None).pareto_front(["joules"]), "joules")


def _tiny_space_search(c, make):
    from lightning_nas.spaces.search_space import Decision, SearchSpace

    st = _strategies()
    space = SearchSpace([Decision("l0", (0, 1), 0)])

    class Two:
        full_fidelity = 10.0

        def __call__(self, arch, fidelity):
            return {"accuracy": float(arch["l0"]), "cost": 1.0}

        def costs(self, arch):
            return {"cost": 1.0}

    res = st.run_search(make(st, space, Two()), Two(), objective="accuracy", budget=st.Budget(evaluations=10), storage=None)
    if res.best() is None or res.best().value != 1.0:
        c.wrong("the best of a 2-arch space was not found")


for _label, _make in (
    ("RandomSearch", lambda st, space, ev: st.RandomSearch(space, seed=0)),
    ("RegularizedEvolution", lambda st, space, ev: st.RegularizedEvolution(space, seed=0, population=2, sample=1)),
    ("LayerNAS", lambda st, space, ev: st.LayerNAS(space, seed=0, cost="cost", cost_model=ev.costs)),
    ("BayesianOptimization", lambda st, space, ev: st.BayesianOptimization(space, seed=0, initial=1, members=2, steps=5)),
):
    CASES.append(Case(A, f"{_label} on a 2-arch space with budget 10 ends", lambda c, make=_make: _tiny_space_search(c, make), (),
                      60, False, True))


@case(A, ok=True)
def nan_first_trial_not_best(c):
    res = _search(c, evaluator=_Eval(lambda n, out: {**out, "accuracy": NAN} if n == 1 else out), storage=None)
    best = res.best()
    if best is None or not math.isfinite(best.value):
        c.wrong(f"best() is {None if best is None else best.value} after a NaN first trial")
    front = res.pareto_front(["cost"])
    if any(not math.isfinite(r.value) for r in front):
        c.wrong("a NaN trial is on the Pareto front")


@case(A, ok=True)
def nan_first_trial_not_best_when_minimising(c):
    res = _search(c, evaluator=_Eval(lambda n, out: {**out, "accuracy": NAN} if n == 1 else out), storage=None, maximize=False)
    best = res.best()
    if best is None or not math.isfinite(best.value):
        c.wrong(f"best() is {None if best is None else best.value} after a NaN first trial (maximize=False)")


@case(A, ok=True)
def inf_trial_not_best(c):
    res = _search(c, evaluator=_Eval(lambda n, out: {**out, "accuracy": INF} if n == 2 else out), storage=None)
    if not math.isfinite(res.best().value):
        c.wrong("an inf objective ranked as the best trial")


@case(A, ok=True)
def nan_cost_constraint(c):
    st = _strategies()
    space, synth = synthetic()
    strategy = st.RandomSearch(space, seed=0, constraints=[st.Constraint("cost", upper=8.0)])
    res = _search(c, strategy=strategy, evaluator=_Eval(lambda n, out: {**out, "cost": NAN}), storage=None)
    best = res.best()
    if best is not None and best.violation is not None and best.violation <= 0:
        c.wrong("a trial whose constrained cost is NaN counts as feasible")


@case(A, ok=True)
def infeasible_constraint_best(c):
    st = _strategies()
    space, synth = synthetic()
    strategy = st.RandomSearch(space, seed=0, constraints=[st.Constraint("cost", upper=0.0001)])
    res = _search(c, strategy=strategy, storage=None)
    best = res.best()
    if best is not None and (best.violation or 0) > 0:
        c.wrong(f"best() returns an infeasible trial (violation {best.violation}) as the best")


@case(A, ok=True)
def evaluator_error_recorded(c):
    st = _strategies()

    def twist(n, out):
        if n == 2:
            raise RuntimeError("out of memory in trial")
        return out

    try:
        res = _search(c, evaluator=_Eval(twist))
    except st.EvaluationError as err:
        if "out of memory" not in str(err):
            c.wrong(f"EvaluationError hides the cause: {err}")
        return
    if not any(r.error and "out of memory" in r.error for r in res.records):
        c.wrong("a failed evaluation left no failed trial with its reason")


@case(A, ok=True, timeout=45)
def hanging_evaluator_times_out(c):
    import inspect

    def twist(n, out):
        if n == 2:
            time.sleep(3600)
        return out

    params = inspect.signature(_strategies().run_search).parameters
    option = next((p for p in params if "timeout" in p), None)
    budget_params = inspect.signature(_strategies().Budget).parameters
    if option is not None:
        res = _search(c, evaluator=_Eval(twist), **{option: 2.0})
    elif any("timeout" in p for p in budget_params):
        name = next(p for p in budget_params if "timeout" in p)
        res = _search(c, evaluator=_Eval(twist), budget=_strategies().Budget(evaluations=4, **{name: 2.0}))
    else:
        _search(c, evaluator=_Eval(twist))
        c.wrong("unreachable")
    if not any(r.error for r in res.records):
        c.wrong("a timed-out trial is not stored as failed")


@case(A, ok=True)
def storage_copy_has_every_trial(c):
    _search(c, budget=5)
    copy = c.tmp / "copy.db"
    shutil.copy(c.tmp / "search.db", copy)
    n = sqlite3.connect(copy).execute("SELECT COUNT(*) FROM trials").fetchone()[0]
    if n != 5:
        c.lost(f"a copy of search.db after run_search returned holds {n} of 5 trials (the rest are in -wal)")


@case(A, ok=True)
def resume_continues(c):
    first = _search(c, budget=4)
    second = _search(c, budget=8)
    if len(second.records) != 8 or [r.arch for r in second.records[:4]] != [r.arch for r in first.records]:
        c.lost(f"resume: {len(second.records)} trials, first 4 changed: "
               f"{[r.arch for r in second.records[:4]] != [r.arch for r in first.records]}")


@case(A, "space")
def resume_with_another_space(c):
    from lightning_nas.spaces.search_space import Decision, SearchSpace

    _search(c, budget=3)
    other = SearchSpace([Decision(f"l{i}", tuple(range(4)), 0) for i in range(3)])
    _search(c, strategy=_strategies().RandomSearch(other, seed=0), budget=6,
            evaluator=type("E", (), {"full_fidelity": 10.0, "__call__": lambda s, a, f: {"accuracy": 1.0}})())


@case(A, "strategy|RegularizedEvolution|RandomSearch")
def resume_with_another_strategy(c):
    _search(c, budget=3)
    _search(c, strategy=_strategies().RegularizedEvolution(synthetic()[0], population=4, sample=2), budget=6)


@case(A, "objective")
def resume_with_another_objective(c):
    _search(c, budget=3)
    _search(c, budget=6, objective="test_accuracy")


def _storage_file(c, name: str, content: bytes | None = None) -> Path:
    path = c.path(name, content)
    return path


bad(A, "storage is a text file", lambda c: _search(c, storage=c.protect(_storage_file(c, "notes.db", b"my notes\n" * 50))), "notes.db")
bad(A, "storage is another program's SQLite", lambda c: _search(c, storage=c.protect(_other_sqlite(c))), "other.db")
bad(A, "storage is a directory", lambda c: (c.path("dir.db").mkdir(), _search(c, storage=c.tmp / "dir.db")), "dir.db")
bad(A, "storage truncated", lambda c: _search(c, storage=c.protect(_truncated_storage(c))), "trunc.db")
bad(A, "storage damaged strategy blob", lambda c: _search(c, storage=_patched_storage(c, "blob.db", os.urandom(64))), "blob.db")
bad(A, "storage pending trial out of space", lambda c: _search(c, storage=_pending_bad_arch(c), budget=6), "l0|arch")


def _other_sqlite(c) -> Path:
    path = c.tmp / "other.db"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE trials (id INTEGER, name TEXT)")
    db.execute("INSERT INTO trials VALUES (1, 'x')")
    db.commit()
    db.close()
    return path


def _truncated_storage(c) -> Path:
    _search(c, budget=4, storage=c.tmp / "full.db")
    data = (c.tmp / "full.db").read_bytes()
    path = c.tmp / "trunc.db"
    path.write_bytes(data[: len(data) // 2 + 100])
    return path


def _patched_storage(c, name: str, blob: bytes) -> Path:
    path = c.tmp / name
    _search(c, budget=3, storage=path)
    db = sqlite3.connect(path)
    db.execute("UPDATE strategy SET state = ? WHERE id = 0", (blob,))
    db.commit()
    db.close()
    return path


def _pending_bad_arch(c) -> Path:
    path = c.tmp / "pending.db"
    _search(c, budget=3, storage=path)
    db = sqlite3.connect(path)
    cols = [r[1] for r in db.execute("PRAGMA table_info(trials)")]
    row = dict(zip(cols, db.execute("SELECT * FROM trials ORDER BY number DESC LIMIT 1").fetchone()))
    row.update(number=row["number"] + 1, arch=json.dumps({"l0": 99, "l1": 0, "l2": 0, "l3": 0}), state="pending", value=None,
               metrics=None, seconds=None, error=None)
    db.execute(f"INSERT INTO trials ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})", list(row.values()))
    db.commit()
    db.close()
    return path


@case(A, "readonly")
def storage_in_read_only_directory(c):
    d = c.tmp / "readonly"
    d.mkdir()
    c.as_nobody()
    _search(c, storage=d / "search.db")


@case(A, "ro.db")
def storage_read_only_file(c):
    path = c.tmp / "ro.db"
    _search(c, budget=3, storage=path)
    for p in c.tmp.glob("ro.db*"):
        os.chmod(p, 0o444)
    c.as_nobody()
    _search(c, budget=6, storage=path)


# == security: files that could carry code =========================================================
A = "security"


@case(A, "blob.db")
def storage_pickle_payload_resume(c):
    _search(c, storage=_patched_storage(c, "blob.db", pickle.dumps(payload_factory(c.marker)())), budget=6)


@case(A, "blob.db")
def storage_pickle_payload_open(c):
    from lightning_nas.strategies.storage import SQLiteStorage

    SQLiteStorage(_patched_storage(c, "blob.db", pickle.dumps(payload_factory(c.marker)())))


@case(A, "blob.db")
def storage_pickle_payload_cli(c):
    path = _patched_storage(c, "blob.db", pickle.dumps(payload_factory(c.marker)()))
    c.cli("search", "--table", NB201_CSV, "--strategy", "random", "--budget", "3", "--storage", path)


@case(A, ok=True, timeout=120)
def training_checkpoint_payload(c):
    import hashlib as hl

    import torch

    from lightning_nas.evaluators import TrainingEvaluator

    ckpt_dir = c.tmp / "ckpts"
    ckpt_dir.mkdir()
    net = tiny_net()
    arch = net.space.default()
    tag = hl.sha1(json.dumps(dict(arch), sort_keys=True).encode()).hexdigest()[:16]
    torch.save({"epoch": 0, "x": payload_factory(c.marker)()}, ckpt_dir / f"{tag}.ckpt")
    data = loader(16).dataset
    evaluator = TrainingEvaluator(tiny_net, data, data, num_classes=10, full_fidelity=1, batch_size=8, checkpoint_dir=ckpt_dir)
    try:
        evaluator(arch, 1)
    except Exception as err:  # noqa: BLE001 (refusing the file is right; running it is not)
        if "ckpt" not in str(err) and tag not in str(err):
            raise


@case(A, ok=True)
def profile_model_help_says_it_runs_code(c):
    from lightning_nas import profile_cli

    parser = profile_cli.add_arguments(argparse.ArgumentParser())
    text = parser.format_help().lower()
    if "runs your code" not in text and "imports and runs" not in text and "import" not in text:
        c.wrong("--model help does not say the factory's code is imported and run")


@case(A, ok=True)
def latency_table_json_payload_inert(c):
    d = tables()[1].to_dict()
    d["metadata"] = {"__reduce__": ["os.system", "touch " + str(c.marker)], "py/object": "os.system"}
    path = c.path("payload_table.json")
    path.write_text(json.dumps(d))
    _load_table_path(path)


# == evaluators (evaluators/) ======================================================================
A = "evaluators"


def _csv_lines(n: int | None = None) -> list[str]:
    lines = fixture("nb201_lines", lambda: NB201_CSV.read_text().splitlines())
    return lines if n is None else lines[: n + 1]


def _from_csv(c, name: str, text: str | bytes):
    from lightning_nas.evaluators import TabularBenchmark

    path = c.path(name, text)
    return TabularBenchmark.from_csv(path)


bad(A, "csv missing file", lambda c: __import__("lightning_nas.evaluators", fromlist=["x"]).TabularBenchmark.from_csv(c.tmp / "nope.csv"),
    "nope.csv")
bad(A, "csv is a directory", lambda c: (c.path("d.csv").mkdir(), __import__("lightning_nas.evaluators", fromlist=["x"])
    .TabularBenchmark.from_csv(c.tmp / "d.csv")), "d.csv")
bad(A, "csv empty", lambda c: _from_csv(c, "empty.csv", ""), "empty.csv")
bad(A, "csv header only", lambda c: _from_csv(c, "header.csv", _csv_lines(0)[0] + "\n"), "header.csv")
bad(A, "csv binary garbage", lambda c: _from_csv(c, "bin.csv", os.urandom(2048)), "bin.csv")
bad(A, "csv latin-1 bytes", lambda c: _from_csv(c, "latin.csv", ("\n".join(_csv_lines(3)) + "\ncaf\xe9,1,2\n").encode("latin-1")),
    "latin.csv")
bad(A, "csv without arch column", lambda c: _from_csv(c, "noarch.csv", "a,b\n1,2\n"), "noarch.csv")
bad(A, "csv duplicate rows", lambda c: _from_csv(c, "dup.csv", "\n".join(_csv_lines(3) + _csv_lines(3)[1:2]) + "\n"), "dup.csv")
bad(A, "csv truncated last line", lambda c: _from_csv(c, "trunc.csv", "\n".join(_csv_lines(5))[:-40]), "trunc.csv")
bad(A, "csv non-numeric accuracy", lambda c: _from_csv(c, "text.csv", "\n".join(_csv_lines(3)).replace(",3,", ",three,", 1) + "\n"),
    "text.csv")
bad(A, "csv bad arch string", lambda c: _from_csv(c, "arch.csv", "\n".join([_csv_lines(0)[0], "0,|conv~0|,,1,1,3,1,1,1,1,1,1,1,1,1,1,1,1"])
                                                 + "\n"), "arch.csv")
bad(A, "csv NaN accuracy", lambda c: _tab_eval(_from_csv(c, "nan.csv", "\n".join(_csv_lines(3)).replace(
    _csv_lines(3)[1].split(",")[4], "nan", 1) + "\n")), "nan.csv|nan")
bad(A, "TabularEvaluator unknown column", lambda c: __import__("lightning_nas.evaluators", fromlist=["x"]).TabularEvaluator(
    fixture("nb201", nb201_benchmark), valid_columns={12: "c10_valid_999"}), "c10_valid_999")
bad(A, "TabularEvaluator not a benchmark", lambda c: __import__("lightning_nas.evaluators", fromlist=["x"]).TabularEvaluator("t.csv"),
    "benchmark")
bad(A, "TabularEvaluator NaN fidelity", lambda c: __import__("lightning_nas.evaluators", fromlist=["x"]).TabularEvaluator(
    fixture("nb201", nb201_benchmark), valid_columns={NAN: "c10_valid_12"}), "fidelity|valid_columns")
bad(A, "tabular fidelity not in table", lambda c: _tab_eval()(_nb201_arch(), 50), "fidelity")
bad(A, "tabular arch invalid", lambda c: _tab_eval()({**_nb201_arch(), "edge_1_0": "conv_7x7"}), "edge_1_0|conv_7x7")
bad(A, "tabular arch missing", lambda c: _tab_eval(_from_csv(c, "small.csv", "\n".join(_csv_lines(5)) + "\n"))(
    __import__("lightning_nas.spaces.nb201", fromlist=["x"]).nb201_from_op_code("000000"), 200), "small.csv")


def _tab_eval(bench=None):
    from lightning_nas.evaluators import TabularEvaluator

    return TabularEvaluator(bench if bench is not None else fixture("nb201", nb201_benchmark))


def _nb201_arch():
    from lightning_nas.spaces.nb201 import nb201_search_space

    return nb201_search_space().sample(0)


def _training(**kw):
    from lightning_nas.evaluators import TrainingEvaluator

    data = loader(16).dataset
    args = dict(num_classes=10, full_fidelity=1, batch_size=8)
    args.update(kw)
    train = args.pop("train", data)
    return TrainingEvaluator(args.pop("build", tiny_net), train, data, **args)


bad(A, "training full_fidelity 0", lambda c: _training(full_fidelity=0), "full_fidelity")
bad(A, "training full_fidelity bool", lambda c: _training(full_fidelity=True), "full_fidelity")
bad(A, "training empty train", lambda c: _training(train=__import__("torch.utils.data", fromlist=["x"]).TensorDataset(
    __import__("torch").zeros(0, 3, 16, 16), __import__("torch").zeros(0, dtype=__import__("torch").long))), "train")
bad(A, "training batch_size 0", lambda c: _training(batch_size=0), "batch_size")
bad(A, "training lr NaN", lambda c: _training(lr=NAN), "lr")
bad(A, "training num_classes 0", lambda c: _training(num_classes=0), "num_classes")
bad(A, "training build not callable", lambda c: _training(build="tiny"), "build")
bad(A, "training fidelity above full", lambda c: _training()(tiny_net().space.default(), 5), "fidelity")
bad(A, "training arch invalid", lambda c: _training()({"width": 3}), "width|stem.kernel")


@case(A, "ckpt")
def training_corrupt_checkpoint(c):
    import hashlib as hl

    ckpt_dir = c.tmp / "ckpts"
    ckpt_dir.mkdir()
    arch = tiny_net().space.default()
    tag = hl.sha1(json.dumps(dict(arch), sort_keys=True).encode()).hexdigest()[:16]
    (ckpt_dir / f"{tag}.ckpt").write_bytes(b"PK\x03\x04 not really a checkpoint")
    _training(checkpoint_dir=ckpt_dir)(arch, 1)


# == command line (cli.py, search_cli.py, profile_cli.py) ==========================================
A = "cli"
_S = ("search", "--table", str(NB201_CSV), "--strategy", "random")
bad(A, "search table missing", lambda c: c.cli("search", "--table", c.tmp / "nope.csv"), "nope.csv")
bad(A, "search table directory", lambda c: c.cli("search", "--table", c.tmp), "table")
bad(A, "search table garbage", lambda c: c.cli("search", "--table", c.path("g.csv", os.urandom(500))), "g.csv")
bad(A, "search budget 0", lambda c: c.cli(*_S, "--budget", "0"), "--budget")
bad(A, "search budget negative", lambda c: c.cli(*_S, "--budget", "-3"), "--budget")
bad(A, "search workers 0", lambda c: c.cli(*_S, "--workers", "0"), "--workers")
bad(A, "search strategy unknown", lambda c: c.cli("search", "--table", NB201_CSV, "--strategy", "grid"), "--strategy")
bad(A, "search constraint 1e999", lambda c: c.cli(*_S, "--constraint", "lat_ms_pixel3<=1e999"), "1e999")
bad(A, "search constraint nan", lambda c: c.cli(*_S, "--constraint", "lat_ms_pixel3<=nan"), "nan")
bad(A, "search constraint unknown column", lambda c: c.cli(*_S, "--constraint", "joules<=1", "--storage", c.tmp / "s.db"), "joules")
bad(A, "search constraint garbage", lambda c: c.cli(*_S, "--constraint", "latency is low"), "constraint")
bad(A, "search storage directory", lambda c: c.cli(*_S, "--budget", "2", "--storage", c.tmp), "storage|" + "rel_")
bad(A, "search storage text file", lambda c: c.cli(*_S, "--budget", "2", "--storage", c.protect(c.path("n.db", "notes\n" * 100))), "n.db")
bad(A, "search unreachable constraint", lambda c: c.cli(*_S, "--budget", "3", "--storage", c.tmp / "u.db", "--constraint",
                                                       "lat_ms_pixel3<=0.0001"), "lat_ms_pixel3")
bad(A, "search contradictory constraints", lambda c: c.cli(*_S, "--budget", "3", "--storage", c.tmp / "u.db", "--constraint",
                                                          "lat_ms_pixel3>=20", "--constraint", "lat_ms_pixel3<=10"), "lat_ms_pixel3")


bad(A, "search storage is a JSON table", lambda c: c.cli(*_S, "--budget", "2", "--storage", c.protect(tables()[1].save(c.tmp / "t.json"))),
    "t.json")


@case(A, "readonly")
def search_storage_read_only_dir(c):
    d = c.tmp / "readonly"
    d.mkdir()
    c.as_nobody()
    c.cli(*_S, "--budget", "2", "--storage", d / "s.db")


@case(A, ok=True, timeout=90)
def search_runs_and_resumes(c):
    c.cli(*_S, "--budget", "3", "--storage", c.tmp / "ok.db")
    out2 = c.cli(*_S, "--budget", "5", "--storage", c.tmp / "ok.db")
    if "5 trials" not in out2:
        c.wrong(f"resume output: {out2[-200:]}")


_P = ("profile", "--space", "mobilenet", "--repeats", "2", "--warmup", "0", "--image-size", "16", "--calibration-archs", "2")
bad(A, "profile space unknown", lambda c: c.cli("profile", "--space", "resnet9000", "--out", c.tmp / "t.json"), "resnet9000")
bad(A, "profile space-kwargs list", lambda c: c.cli(*_P, "--out", c.tmp / "t.json", "--space-kwargs", "[1]"), "--space-kwargs")
bad(A, "profile space-kwargs bad key", lambda c: c.cli(*_P, "--out", c.tmp / "t.json", "--space-kwargs", '{"colour": 1}'), "colour")
bad(A, "profile space-kwargs bad value", lambda c: c.cli(*_P, "--out", c.tmp / "t.json", "--space-kwargs", '{"num_classes": -1}'),
    "num_classes")
bad(A, "profile model no colon", lambda c: c.cli("profile", "--model", "mymodels", "--out", c.tmp / "t.json"), "MODULE:FACTORY")
bad(A, "profile model missing module", lambda c: c.cli("profile", "--model", "no_such_pkg_xyz:make", "--out", c.tmp / "t.json"),
    "no_such_pkg_xyz")
bad(A, "profile model not callable", lambda c: c.cli("profile", "--model", "os:sep", "--out", c.tmp / "t.json"), "sep")
bad(A, "profile model returns a str", lambda c: c.cli("profile", "--model", "os:getcwd", "--out", c.tmp / "t.json"), "getcwd")
bad(A, "profile threads 0", lambda c: c.cli(*_P, "--out", c.tmp / "t.json", "--threads", "0"), "--threads")
bad(A, "profile repeats text", lambda c: c.cli(*_P, "--out", c.tmp / "t.json", "--repeats", "many"), "--repeats")
bad(A, "profile image-size 0", lambda c: c.cli(*_P, "--out", c.tmp / "t.json", "--image-size", "0"), "--image-size")
bad(A, "profile device tpu", lambda c: c.cli(*_P, "--out", c.tmp / "t.json", "--device", "tpu"), "device")
bad(A, "profile out is a directory", lambda c: c.cli(*_P, "--out", c.tmp), "out|" + "rel_")
bad(A, "profile out in read-only dir", lambda c: (os.makedirs(c.tmp / "readonly"), c.as_nobody(),
                                                  c.cli(*_P, "--out", c.tmp / "readonly" / "t.json")), "readonly")
bad(A, "demo targets above 1", lambda c: c.cli("demo", "--targets", "1.5"), "--targets")
bad(A, "demo targets nan", lambda c: c.cli("demo", "--targets", "nan"), "--targets")
bad(A, "demo epochs 0", lambda c: c.cli("demo", "--epochs", "0"), "--epochs")
bad(A, "demo epochs text", lambda c: c.cli("demo", "--epochs", "ten"), "--epochs")
bad(A, "demo image-size 0", lambda c: c.cli("demo", "--image-size", "0"), "--image-size")
bad(A, "demo max-examples 0", lambda c: c.cli("demo", "--max-examples", "0"), "--max-examples")
bad(A, "demo seed negative", lambda c: c.cli("demo", "--seed", "-1"), "--seed")
bad(A, "profile in_chans text", lambda c: c.cli(*_P, "--out", c.tmp / "t.json", "--space-kwargs", '{"in_chans": "three"}'), "in_chans")
bad(A, "demo dataset missing folder", lambda c: c.cli("demo", "--dataset", str(c.tmp / "no_images"), "--epochs", "1"), "no_images")


@case(A, ok=True, timeout=120)
def profile_over_malformed_out_keeps_backup(c):
    out = c.path("t.json", b'{"format": "lightning_nas.bilinear_table", "vers')
    before = out.read_bytes()
    c.cli(*_P, "--out", out)
    baks = list(c.tmp.glob("t.json.bak*"))
    if not baks or baks[0].read_bytes() != before:
        c.lost("the malformed --out file was replaced without a backup")


# == data, plots, dynamic network, space builders ==================================================
A = "data/plots/dynamic"


def _data():
    import lightning_nas.data as d

    return d


bad(A, "to_tensors channels 2", lambda c: _data().to_tensors(_data().digits_dataset(), 16, channels=2), "channels")
bad(A, "to_tensors image_size 0", lambda c: _data().to_tensors(_data().digits_dataset(), 0), "image_size")
bad(A, "to_tensors image_size bool", lambda c: _data().to_tensors(_data().digits_dataset(), True), "image_size")
bad(A, "to_tensors image_size float", lambda c: _data().to_tensors(_data().digits_dataset(), 15.5), "image_size")
bad(A, "split fractions over 1", lambda c: _data().split_dataset(loader().dataset, (0.5, 0.6)), "fractions")
bad(A, "split fractions NaN", lambda c: _data().split_dataset(loader().dataset, (NAN, 1.0)), "fractions")
bad(A, "split fractions negative", lambda c: _data().split_dataset(loader().dataset, (-0.5, 1.5)), "fractions")
bad(A, "split fractions bool", lambda c: _data().split_dataset(loader().dataset, (True,)), "fractions")
bad(A, "split fractions empty", lambda c: _data().split_dataset(loader().dataset, ()), "fractions")
bad(A, "split empty part", lambda c: _data().split_dataset(loader(4).dataset, (0.9, 0.1)), "fractions|empty")
bad(A, "split seed string", lambda c: _data().split_dataset(loader().dataset, (0.5, 0.5), seed="a"), "seed")
bad(A, "gratings n negative", lambda c: _data().gratings_dataset(-1), "n")
bad(A, "gratings n bool", lambda c: _data().gratings_dataset(True), "n")
bad(A, "gratings num_classes 0", lambda c: _data().gratings_dataset(8, num_classes=0), "num_classes")
bad(A, "gratings noise NaN", lambda c: _data().gratings_dataset(8, noise=NAN), "noise")
bad(A, "gratings noise negative", lambda c: _data().gratings_dataset(8, noise=-1.0), "noise")
bad(A, "gratings image_size 0", lambda c: _data().gratings_dataset(8, image_size=0), "image_size")
bad(A, "load_image_dataset missing path", lambda c: _data().load_image_dataset(str(c.tmp / "no_such_dir") + os.sep), "no_such_dir")
bad(A, "load_image_dataset empty dir", lambda c: (c.path("emptyimgs").mkdir(), _data().load_image_dataset(str(c.tmp / "emptyimgs"))),
    "emptyimgs")
bad(A, "load_image_dataset a plain file", lambda c: _data().load_image_dataset(str(c.path("notes.txt", "hello"))), "notes.txt")


def _plots():
    import lightning_nas.plots as p

    return p


_PT = {"predicted_x": 1.0, "predicted_y": 0.5}
bad(A, "plot_pareto NaN point", lambda c: _plots().plot_pareto(None, [_PT, {"predicted_x": NAN, "predicted_y": 0.6}], c.tmp / "p.png"),
    "predicted_x")
bad(A, "plot_pareto point without y", lambda c: _plots().plot_pareto(None, [{"predicted_x": 1.0}], c.tmp / "p.png"), "predicted_y")
bad(A, "plot_pareto ragged cloud", lambda c: _plots().plot_pareto(([1.0, 2.0], [0.5]), [_PT], c.tmp / "p.png"), "cloud")
bad(A, "plot_pareto path is a directory", lambda c: _plots().plot_pareto(None, [_PT], c.tmp), "directory")
bad(A, "plot_alpha empty history", lambda c: _plots().plot_alpha_trajectories([], c.tmp / "a.png"), "history")
bad(A, "plot_skip_gap empty history", lambda c: _plots().plot_skip_gap([], c.tmp / "s.png"), "history")
bad(A, "plot_contributions not a table", lambda c: _plots().plot_contributions({"a": 1}, c.tmp / "c.png"), "table")
bad(A, "plot_contributions NaN scale", lambda c: _plots().plot_contributions(tables()[0], c.tmp / "c.png", scale=NAN), "scale")


@case(A, ok=True)
def plot_contributions_writes(c):
    path = _plots().plot_contributions(tables()[0], c.tmp / "c.png")
    if not Path(path).read_bytes().startswith(b"\x89PNG"):
        c.wrong("not a PNG")


def _dynamic(budget=None, **kw):
    from lightning_nas import DynamicNetwork

    net = fixture("staged_net", staged_net)
    acc, lat, _ = tables(net)
    kw.setdefault("blocks_per_node", 2)
    return DynamicNetwork(net, acc, lat, budget, **kw)


bad(A, "dynamic blocks_per_node 0", lambda c: _dynamic(blocks_per_node=0), "blocks_per_node")
bad(A, "dynamic blocks_per_node bool", lambda c: _dynamic(blocks_per_node=True), "blocks_per_node")
bad(A, "dynamic budget NaN", lambda c: _dynamic({"latency": NAN}), "latency")
bad(A, "dynamic budget unknown resource", lambda c: _dynamic({"energy": 1.0}), "energy")
bad(A, "dynamic budget string", lambda c: _dynamic({"latency": "fast"}), "latency")
bad(A, "dynamic unreachable budget", lambda c: _dynamic({"latency": 0.001}), "latency")
bad(A, "dynamic set_budget NaN", lambda c: _dynamic({"latency": 5.0}).set_budget({"latency": NAN}), "latency")
bad(A, "dynamic set_budget negative", lambda c: _dynamic({"latency": 5.0}).set_budget({"latency": -1.0}), "latency")
bad(A, "dynamic resources of another space", lambda c: __import__("lightning_nas").DynamicNetwork(
    fixture("staged_net", staged_net), tables()[0], tables(fixture("tiny_net", tiny_net))[1]), "space|structure")
bad(A, "dynamic method unknown", lambda c: _dynamic(method="simplex"), "method")
bad(A, "dynamic solver unknown", lambda c: _dynamic(solver="nope_solver"), "nope_solver")


@case(A, ok=True)
def dynamic_switch_equals_export(c):
    import torch

    dyn = _dynamic({"latency": 5.0})
    report = dyn.set_budget({"latency": 3.0})
    net = fixture("staged_net", staged_net)
    x = torch.randn(2, 3, 8, 8)
    ref = net.export(report.arch if hasattr(report, "arch") else dyn.solve({"latency": 3.0}).arch).eval()
    with torch.no_grad():
        if not torch.allclose(dyn.eval()(x), ref(x), atol=1e-5):
            c.wrong("running network differs from export(new arch)")


A = "space builders"


def _spaces():
    import lightning_nas.spaces as s

    return s


def _nb():
    import lightning_nas.spaces.nb201 as m

    return m


bad(A, "nb201_from_string garbage", lambda c: _nb().nb201_from_string("|conv~0|+|"), "|conv~0|+|")
bad(A, "nb201_from_string wrong input index", lambda c: _nb().nb201_from_string(
    "|skip_connect~5|+|none~0|none~1|+|none~0|none~1|none~2|"), "skip_connect~5|~5")
bad(A, "nb201_from_op_code too long", lambda c: _nb().nb201_from_op_code("1234567"), "1234567")
bad(A, "nb201_from_op_code digit 9", lambda c: _nb().nb201_from_op_code("999999"), "999999")
bad(A, "nb201_from_op_code negative int", lambda c: _nb().nb201_from_op_code(-5), "-5")
bad(A, "nb201_string invalid arch", lambda c: _nb().nb201_string({"edge_1_0": "conv"}), "edge")
bad(A, "nb201_from_genotype malformed", lambda c: _nb().nb201_from_genotype([[("conv", 0)]]), "genotype")
bad(A, "nb201_supernet channels 0", lambda c: _nb().nb201_supernet(channels=0), "channels")
bad(A, "nb201_supernet cells bool", lambda c: _nb().nb201_supernet(cells_per_stage=True), "cells_per_stage")
bad(A, "nb201_supernet num_classes negative", lambda c: _nb().nb201_supernet(num_classes=-1), "num_classes")
bad(A, "darts_supernet channels 0", lambda c: _spaces().darts_supernet(channels=0), "channels")
bad(A, "darts_supernet layers 1", lambda c: _spaces().darts_supernet(layers=1), "layers")
bad(A, "darts_supernet unknown op", lambda c: _spaces().darts_supernet(ops=("sep_conv_3x3", "conv_9x9")), "conv_9x9")
bad(A, "darts_arch bad genotype", lambda c: __import__("lightning_nas.spaces.darts", fromlist=["x"]).darts_arch(("x",)), "genotype")
bad(A, "DartsNetwork unknown op", lambda c: _spaces().DartsNetwork(_spaces().DARTS_V2._replace(
    normal=[("conv_9x9", 0)] + list(_spaces().DARTS_V2.normal[1:])), channels=8, layers=3), "conv_9x9")
bad(A, "robustness_supernet unknown", lambda c: _spaces().robustness_supernet("s9"), "s9")
bad(A, "robustness_supernet s1 without edge_ops", lambda c: _spaces().robustness_supernet("s1"), "edge_ops")
bad(A, "binas_supernet unknown preset", lambda c: _spaces().binas_supernet("huge"), "huge")
bad(A, "binas_supernet num_classes 0", lambda c: _spaces().binas_supernet("tiny", num_classes=0), "num_classes")
bad(A, "binas_supernet num_classes bool", lambda c: _spaces().binas_supernet("tiny", num_classes=True), "num_classes")
bad(A, "mobilenet_supernet empty stages", lambda c: _spaces().mobilenet_supernet(stages=()), "stages")
bad(A, "mobilenet_supernet expand ratio 0", lambda c: _spaces().mobilenet_supernet(expand_ratios=(0, 3)), "expand_ratios")
bad(A, "mobilenet_supernet kernel even", lambda c: _spaces().mobilenet_supernet(kernel_sizes=(2, 3)), "kernel_sizes")
bad(A, "mobilenet_supernet activation unknown", lambda c: _spaces().mobilenet_supernet(activation="swishy"), "swishy")
bad(A, "mobilenet_supernet stage with 0 blocks", lambda c: _spaces().mobilenet_supernet(stages=((24, 0, 2),)), "stages")
bad(A, "create_space unknown", lambda c: _spaces().create_space("resnet9000"), "resnet9000")
bad(A, "StagedSpace of a plain space without stages", lambda c: __import__("lightning_nas").StagedSpace.of(
    _spaces().SearchSpace([_spaces().Decision("x", (1, 2), 1)])), "stage|depth")
bad(A, "StagedSpace of a non-space", lambda c: __import__("lightning_nas").StagedSpace.of("space"), "space|supernet")
bad(A, "staged indices invalid arch", lambda c: tables()[0].staged.indices({"bogus": 1}), "bogus")
bad(A, "StagedSpace.from_space bad pattern", lambda c: __import__("lightning_nas").StagedSpace.from_space(
    _nb().nb201_search_space(), block_pattern="("), "block_pattern")


# == faults: kill -9, concurrent writers (subprocesses) ============================================
A = "faults"
_SEARCH_SCRIPT = textwrap.dedent('''
    import json, os, sys, time
    sys.path.insert(0, {tests!r})
    from synthetic import SyntheticEvaluator, synthetic_space
    from lightning_nas.strategies import Budget, RandomSearch, RegularizedEvolution, run_search

    db, budget, delay, log, kind = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4], sys.argv[5]

    class Logged(SyntheticEvaluator):
        def __call__(self, arch, fidelity):
            out = super().__call__(arch, fidelity)
            with open(log, "a") as f:
                f.write(json.dumps([os.getpid(), arch]) + "\\n")
            return out

    space = synthetic_space()
    strategy = RandomSearch(space, seed=3) if kind == "random" else RegularizedEvolution(space, seed=3, population=6, sample=3)
    run_search(strategy, Logged(delay=delay), objective="accuracy", budget=Budget(evaluations=budget), storage=db)
''')


def _script(c) -> Path:
    path = c.tmp / "search_script.py"
    path.write_text(_SEARCH_SCRIPT.format(tests=str(ROOT / "tests" / "strategies")))
    return path


def _finished(db: Path) -> list[tuple[int, str]]:
    if not db.exists():
        return []
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
        rows = con.execute("SELECT number, arch FROM trials WHERE state != 'pending' ORDER BY number").fetchall()
        con.close()
        return rows
    except sqlite3.Error:
        return []


def _popen(c, db, budget, delay, log, kind):
    return subprocess.Popen([sys.executable, str(_script(c)), str(db), str(budget), str(delay), str(log), kind],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=c.tmp, start_new_session=True)


for _kind, _after, _signal in (("random", 3, signal.SIGKILL), ("evolution", 5, signal.SIGKILL), ("random", 4, signal.SIGINT)):
    def _kill_case(c, kind=_kind, after=_after, sig=_signal):
        db, log = c.tmp / "kill.db", c.tmp / "calls.log"
        proc = _popen(c, db, 12, 0.3, log, kind)
        deadline = time.time() + 90
        while len(_finished(db)) < after and time.time() < deadline and proc.poll() is None:
            time.sleep(0.05)
        before = _finished(db)
        os.killpg(proc.pid, sig)
        proc.wait()
        before = _finished(db) if sig != signal.SIGKILL else before
        if len(before) < after:
            raise Hang(f"the search did not finish {after} trials in 90 s: {proc.stderr.read().decode()[-300:]}")
        done = subprocess.run([sys.executable, str(_script(c)), str(db), "12", "0.0", str(log), kind], capture_output=True,
                              cwd=c.tmp, timeout=120)
        if done.returncode != 0:
            raise RuntimeError(done.stderr.decode()[-500:])
        after_rows = _finished(db)
        if after_rows[: len(before)] != before:
            c.lost("trials finished before the kill changed or vanished after resume")
        if len(after_rows) != 12:
            c.lost(f"{len(after_rows)} of 12 trials after resume")
        calls = [json.dumps(json.loads(line)[1], sort_keys=True) for line in log.read_text().splitlines()]
        finished = {json.dumps(json.loads(a), sort_keys=True) for _, a in before}
        repeated = [a for a in finished if calls.count(a) > 1]
        if kind == "random" and repeated:
            c.wrong(f"{len(repeated)} finished trials evaluated again after the kill")

    CASES.append(Case(A, f"{'kill -9' if _signal == signal.SIGKILL else 'Ctrl-C'} a running {_kind} search, resume", _kill_case,
                      (), 240, True, True))


@case(A, "storage|another process|locked|in use", timeout=240, slow=True)
def two_processes_one_storage(c):
    db, log = c.tmp / "shared.db", c.tmp / "calls.log"
    procs = [_popen(c, db, 10, 0.2, log, "random") for _ in range(2)]
    outs = [p.communicate(timeout=200) for p in procs]
    codes = [p.returncode for p in procs]
    errors = [o[1].decode() for o in outs]
    calls = [json.dumps(json.loads(line)[1], sort_keys=True) for line in log.read_text().splitlines()] if log.exists() else []
    duplicated = len(calls) - len(set(calls))
    for code, err in zip(codes, errors):
        if code != 0:
            last = err.strip().splitlines()[-1] if err.strip() else ""
            if "IntegrityError" in err or "sqlite3" in last:
                raise RuntimeError(f"second writer crashed: {last}")
            raise CliError(last)
    if duplicated:
        c.wrong(f"two workers on one storage: {duplicated} evaluations done twice")
    rows = _finished(db)
    if len(rows) < 10:
        c.lost(f"{len(rows)} trials stored")
    # Both finished without duplicates: concurrent workers are supported, which is correct.
    raise _Ok()


class _Ok(Verdict):
    outcome = "ok"


# == faults: full disk, concurrent writers and kills of table writers ==============================
A = "faults"


def _disk_full(limit_bytes: int) -> None:
    # RLIMIT_FSIZE: writing past it fails with EFBIG like a full disk (SIGXFSZ ignored so it is an error).
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))


def _full_disk_case(save: Callable[[Path], Any], name: str, keyword: str):
    def run(c):
        path = c.tmp / name
        save(path)
        c.protect(path)
        _disk_full(256)
        save(path)

    return run


for _name, _save, _file in (
    ("latency table save", lambda p: tables()[1].save(p), "full_table.json"),
    ("block performance save", lambda p: _perf().save(p), "full_perf.json"),
    ("plot save", lambda p: _plots().plot_contributions(tables()[0], p), "full_plot.png"),
    ("profile table rebuild", lambda p: _load_or_build(None, p, rebuild=True), "full_lat.json"),
):
    CASES.append(Case(A, f"disk full during {_name} keeps the old file", _full_disk_case(_save, _file, _file), (_file,),
                      DEFAULT_TIMEOUT, False, False))


@case(A, "search.db|storage|disk|large", timeout=60)
def disk_full_during_search(c):
    _search(c, budget=3)
    before = _finished(c.tmp / "search.db")
    _disk_full(os.path.getsize(c.tmp / "search.db") + 4096)
    try:
        _search(c, budget=400)
    finally:
        hard = resource.getrlimit(resource.RLIMIT_FSIZE)[1]
        resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))
        after = _finished(c.tmp / "search.db")
        if after[: len(before)] != before:
            c.lost("trials stored before the disk filled up were lost")


@case(A, ok=True, timeout=60)
def concurrent_table_writers_and_reader(c):
    from lightning_nas import BilinearTable, StagedSpace

    path = c.tmp / "shared_table.json"
    acc, lat, _ = tables()
    lat.save(path)
    pids = []
    for k in range(2):
        pid = os.fork()
        if pid == 0:
            try:
                table = tables(seed=k + 1)[1]
                for _ in range(40):
                    table.save(path)
            finally:
                os._exit(0)
        pids.append(pid)
    staged = StagedSpace.of(fixture("staged_net", staged_net))
    reads, alive = 0, set(pids)
    while alive and reads < 2000:
        BilinearTable.load(path, staged)  # never a half-written file
        reads += 1
        alive = {p for p in alive if os.waitpid(p, os.WNOHANG) == (0, 0)}
    for p in alive:
        os.waitpid(p, 0)
    BilinearTable.load(path, staged)


@case(A, ok=True, timeout=60)
def kill_9_while_saving_tables(c):
    from lightning_nas import BilinearTable, StagedSpace

    path = c.tmp / "killed_table.json"
    tables()[1].save(path)
    pid = os.fork()
    if pid == 0:
        table = tables(seed=5)[1]
        table.metadata["padding"] = list(range(200_000))  # a slow, large write
        while True:
            table.save(path)
    time.sleep(1.0)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    BilinearTable.load(path, StagedSpace.of(fixture("staged_net", staged_net)))


# == runner ========================================================================================
def _table(results: list[tuple[Case, str, str, float]]) -> tuple[list[str], list[list[Any]]]:
    areas = list(dict.fromkeys(c.area for c, *_ in results))
    header = ["area", "cases", "clear", "ok", "unhelpful", "silent wrong", "hangs", "data lost", "code exec"]
    rows = []
    for area in areas + ["total"]:
        sel = [o for c, o, *_ in results if area == "total" or c.area == area]
        rows.append([area, len(sel)] + [sel.count(o) for o in OUTCOMES])
    return header, rows


def _markdown(header, rows) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        cells = [f"**{v}**" if r[0] == "total" else str(v) for v in r]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _report(results, command: str, seconds: float) -> str:
    header, rows = _table(results)
    non_clear = [(c, o, d) for c, o, d, _ in results if o not in ("clear", "ok")]
    machine = f"{platform.machine()}, {os.cpu_count()} CPU cores ({_cpu()}), Python {platform.python_version()}"
    lines = [
        "# Reliability: fuzzing and fault injection",
        "",
        f"`{command}` ({seconds / 60:.1f} min) on {machine}, {datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z},"
        f" commit {_commit()}.",
        "",
        "Each case feeds bad or hostile input to the public API or injects a fault, in its own forked process with a time "
        "and memory limit (`benchmarks/reliability.py` says how each outcome is decided). *clear*: a deliberate library "
        "error naming the argument or file; *ok*: a valid extreme input or a fault (kill -9, resume, two writers) handled "
        "correctly; *unhelpful*: an internal or unnamed error; *silent wrong*: bad input accepted or a wrong result; "
        "*hangs*: over the time or memory limit; *data lost*: a user's file changed or trials missing; *code exec*: a "
        "planted payload ran.",
        "",
        _markdown(header, rows),
        "",
    ]
    if non_clear:
        lines += ["## Cases that are not clear", "", "| area | case | outcome | detail |", "|---|---|---|---|"]
        for c, o, d in non_clear:
            lines.append(f"| {c.area} | {c.name} | {o} | {d.replace('|', '/').replace(chr(10), ' ')[:300]} |")
        lines.append("")
    return "\n".join(lines)


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "lightning_nas"], capture_output=True, text=True, cwd=ROOT).stdout
        return out + (" with uncommitted changes in lightning_nas/" if dirty.strip() else "")
    except OSError:
        return "unknown"


def _warm_fixtures(cases: list[Case]) -> None:
    # Built once in the parent: every forked case inherits them (and the imports) for free.
    import numpy  # noqa: F401
    import torch

    torch.set_num_threads(1)
    import lightning.pytorch  # noqa: F401

    import lightning_nas  # noqa: F401
    import lightning_nas.callbacks  # noqa: F401
    import lightning_nas.estimators  # noqa: F401
    import lightning_nas.evaluators  # noqa: F401
    import lightning_nas.profiling  # noqa: F401
    import lightning_nas.solvers  # noqa: F401
    import lightning_nas.strategies  # noqa: F401

    # Source lines as imported: _deliberate reads the raising line, and a file edited during the
    # run would otherwise be read at its new line numbers.
    for name, module in list(sys.modules.items()):
        if name.startswith("lightning_nas") and getattr(module, "__file__", None):
            linecache.getlines(module.__file__)
    fixture("tiny_net", tiny_net)
    fixture("staged_net", staged_net)
    if NB201_CSV.exists():
        fixture("nb201", nb201_benchmark)
        fixture("nb201_lines", lambda: NB201_CSV.read_text().splitlines())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="skip the slow subprocess cases (kill -9, two writers)")
    parser.add_argument("--only", default=None, help="run only the areas or cases whose name contains this text")
    parser.add_argument("--out", type=Path, default=ROOT / "RELIABILITY.md", help="report file (written atomically)")
    parser.add_argument("--no-write", action="store_true", help="print only")
    parser.add_argument("--verbose", action="store_true", help="print every case as it finishes")
    parser.add_argument("--list", action="store_true", help="list the cases and exit")
    args = parser.parse_args(argv)
    cases = [c for c in CASES if not (args.quick and c.slow)]
    if args.only:
        cases = [c for c in cases if args.only.lower() in c.area.lower() or args.only.lower() in c.name.lower()]
    if args.list:
        for c in cases:
            print(f"{c.area:20s} {c.name}")
        print(f"{len(cases)} cases")
        return 0
    started = time.perf_counter()
    _warm_fixtures(cases)
    results = []
    for i, c in enumerate(cases, 1):
        outcome, detail, seconds = run_case(c)
        results.append((c, outcome, detail, seconds))
        if args.verbose or outcome not in ("clear", "ok"):
            print(f"[{i:3d}/{len(cases)}] {c.area:18s} {c.name[:50]:50s} {outcome:12s} {seconds:5.1f}s  {detail[:160]}", flush=True)
    elapsed = time.perf_counter() - started
    header, rows = _table(results)
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    print()
    for r in [header] + rows:
        print("  ".join(str(v).ljust(w) if k == 0 else str(v).rjust(w) for k, (v, w) in enumerate(zip(r, widths))))
    print(f"\n{len(results)} cases in {elapsed / 60:.1f} min")
    if not args.no_write:
        from lightning_nas.io import atomic_write_text

        command = "uv run --locked python benchmarks/reliability.py" + (" --quick" if args.quick else "") + \
                  (f" --only {shlex.quote(args.only)}" if args.only else "")
        atomic_write_text(args.out, _report(results, command, elapsed))
        print(f"report written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
