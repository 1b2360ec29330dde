"""Each benchmark owns one marked section of ``benchmarks/RESULTS.md`` and replaces only that."""

from __future__ import annotations

import os
import platform
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from lightning_nas.io import atomic_write_text

__all__ = ["command_line", "device_title", "machine", "marker_suffix", "publish", "write_section"]


def command_line(script: str, argv: Sequence[str] | None = None) -> str:
    """How this run was invoked, for the ``- Command:`` line: ``.venv/bin/python benchmarks/<script> ...``
    under the project's environment, else the interpreter's name (``python3 ...`` on a machine with its own)."""
    venv = Path(__file__).resolve().parent.parent / ".venv"
    python = ".venv/bin/python" if Path(sys.prefix).resolve() == venv.resolve() else Path(sys.executable).name
    return " ".join(shlex.quote(a) for a in [python, f"benchmarks/{script}", *(sys.argv[1:] if argv is None else argv)])


def machine(device: str = "cpu", threads: int | None = None) -> str:
    """What the ``- Machine:`` line of a section says: the host, torch, the torch threads and, for a
    CUDA ``device``, the GPU, its memory and the CUDA version torch was built with."""
    host = f"{platform.processor() or platform.machine()} ({platform.platform()}), {os.cpu_count()} CPUs visible, torch {torch.__version__}"
    if threads is not None:
        host += f", {threads} torch thread(s)"
    if torch.device(device).type != "cuda":
        return host
    props = torch.cuda.get_device_properties(torch.device(device))
    return f"{props.name} ({props.total_memory / 2**30:.0f} GiB, CUDA {torch.version.cuda}); host {host}"


def device_title(device: str = "cpu") -> str:
    """``CPU`` or the GPU's name, for section titles."""
    return torch.cuda.get_device_name(torch.device(device)) if torch.device(device).type == "cuda" else "CPU"


def marker_suffix(device: str = "cpu") -> str:
    """What a non-CPU run adds to its section markers, so GPU figures sit beside the CPU ones."""
    return "" if torch.device(device).type == "cpu" else f" --device {torch.device(device).type}"


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


def publish(script: str, argv: Sequence[str] | None, out: Path, write: bool, produce: Callable[[str], str],
            begin: str, end: str) -> None:
    """Run ``produce(command) -> section`` (``command``: how this run was invoked), print the section
    and the seconds it took, and write it into ``out`` when ``write``."""
    command = command_line(script, argv)
    started = time.perf_counter()
    section = produce(command)
    print(section)
    print(f"({time.perf_counter() - started:.0f} s)")
    if write:
        write_section(out, section, begin, end)
        print(f"wrote {out}")
