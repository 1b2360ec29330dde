"""Each benchmark owns one marked section of ``benchmarks/RESULTS.md`` and replaces only that."""

from __future__ import annotations

from pathlib import Path

from lightning_nas.io import atomic_write_text

__all__ = ["write_section"]


def write_section(path: Path, section: str, begin: str, end: str) -> None:
    """Replace the ``begin``...``end`` section of ``path`` with ``section`` (or append it), atomically.

    ``section`` includes its own ``begin`` and ``end`` markers.
    """
    old = path.read_text() if path.exists() else "# Benchmark results\n"
    if begin in old and end in old:
        head, rest = old.split(begin, 1)
        tail = rest.split(end, 1)[1].lstrip("\n")
        new = head + section + ("\n" + tail if tail else "")
    else:
        new = old.rstrip("\n") + "\n\n" + section
    atomic_write_text(path, new)
