"""A competing job for benchmarks that measure under load: a child process multiplying matrices."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from collections.abc import Iterator

__all__ = ["SETTLE_S", "competing_load", "load_code"]

#: Pause after killing the load, before the next measurement.
SETTLE_S = 2.0


def load_code(threads: int, period_s: float | None = None) -> str:
    """The child's program: a float32 1500 × 1500 matrix product in a loop on ``threads`` torch threads;
    with ``period_s``, busy for ``period_s`` seconds then asleep for as long, in turn (a job that comes and goes)."""
    loop = ("while True:\n    a @ a\n" if period_s is None else
            f"while True:\n    t = time.monotonic()\n    while time.monotonic() - t < {period_s}:\n        a @ a\n    time.sleep({period_s})\n")
    return (f"import time\nimport torch\ntorch.set_num_threads({threads})\na = torch.randn(1500, 1500)\na @ a\n"
            "print('ready', flush=True)\n" + loop)


@contextlib.contextmanager
def competing_load(threads: int, period_s: float | None = None) -> Iterator[None]:
    """Run :func:`load_code` in a child process for the duration of the block (none when ``threads`` is 0);
    started before (its first product done), always killed after, then :data:`SETTLE_S` of pause."""
    if not threads:
        yield
        return
    child = subprocess.Popen([sys.executable, "-c", load_code(threads, period_s)], stdout=subprocess.PIPE, text=True)
    try:
        child.stdout.readline()  # "ready": torch imported and the first product done
        yield
    finally:
        child.kill()
        child.wait()
        child.stdout.close()
        time.sleep(SETTLE_S)
