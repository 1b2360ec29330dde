"""Atomic file writes (a reader never sees a half-written file, and a crash never loses the old one) and
JSON reads whose every failure names the file, what was wrong and what is expected."""

from __future__ import annotations

import errno
import json
import os
import stat
import tempfile
from pathlib import Path
from typing import Any

import torch

__all__ = ["FileFormatError", "atomic_save", "atomic_write_bytes", "atomic_write_json", "atomic_write_text",
           "check_writable", "next_version_dir", "read_json"]


class FileFormatError(ValueError):
    """A file exists but does not hold what the library expects; the message names the file."""


def _write_error(path: Path, err: OSError) -> OSError:
    reason = {
        errno.ENOSPC: "no space left on the device",
        errno.EDQUOT: "disk quota exceeded",
        errno.EFBIG: "the file would exceed the file-size limit (or the disk is full)",
        errno.EROFS: "the file system is read-only",
        errno.EACCES: f"no permission to write in {str(path.parent)!r}",
        errno.EPERM: f"no permission to write in {str(path.parent)!r}",
    }.get(err.errno, err.strerror or str(err))
    # Same class (PermissionError, ...) so callers catching OSError subclasses keep working.
    message = f"cannot write {str(path)!r}: {reason}; any previous file there is unchanged"
    return type(err)(err.errno, message) if err.errno is not None else type(err)(message)


def _atomic(path: str | os.PathLike, write) -> Path:
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(errno.EISDIR, f"cannot write {str(path)!r}: it is a directory; give a file path")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except FileExistsError:
        raise NotADirectoryError(errno.ENOTDIR, f"cannot write {str(path)!r}: a parent of it is a file, not a directory") from None
    except OSError as err:
        raise _write_error(path, err) from err
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        # mkstemp creates the file 0600: keep the replaced file's mode, else the umask default.
        os.chmod(tmp, stat.S_IMODE(path.stat().st_mode) if path.exists() else 0o666 & ~_umask())
        os.replace(tmp, path)
    except OSError as err:
        Path(tmp).unlink(missing_ok=True)
        raise _write_error(path, err) from err
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _umask() -> int:
    # Read it where the OS shows it: setting and restoring it would race with other threads.
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file and a rename."""
    return _atomic(path, lambda f: f.write(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` through a temporary file and a rename."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def atomic_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` to ``path`` atomically."""
    return _atomic(path, lambda f: torch.save(obj, f))


def check_writable(path: str | os.PathLike, what: str) -> Path:
    """Refuse, before work whose result goes to ``path``, a path that cannot take a file: a directory,
    a parent that is a file, or a directory without write permission. Returns ``Path(path)``."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(errno.EISDIR, f"{what} {str(path)!r} is a directory; give a file path")
    parent = next((p for p in path.absolute().parents if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, f"{what} {str(path)!r}: {str(parent)!r} is a file, not a directory")
    if parent is not None and not os.access(parent, os.W_OK | os.X_OK):
        raise PermissionError(errno.EACCES, f"{what} {str(path)!r}: no permission to write in {str(parent)!r}")
    return path


def read_json(path: str | os.PathLike, what: str = "JSON file", *, expect: type = dict) -> Any:
    """The JSON value in ``path``; every failure says which file, what was wrong and what ``what`` is.

    Raises:
        FileNotFoundError, IsADirectoryError, PermissionError: the file cannot be read (named).
        FileFormatError (a ``ValueError``): not UTF-8, not JSON (truncated files say so), or the top
            level is not an ``expect`` (a JSON object by default).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(errno.ENOENT, f"{what} {str(path)!r} does not exist")
    if path.is_dir():
        raise IsADirectoryError(errno.EISDIR, f"{what} {str(path)!r} is a directory, not a file")
    try:
        data = path.read_bytes()
    except OSError as err:
        raise type(err)(err.errno, f"cannot read {what} {str(path)!r}: {err.strerror or err}") from None
    if not data.strip():
        raise FileFormatError(f"{what} {str(path)!r} is empty; expected a JSON {_json_kind(expect)}")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise FileFormatError(f"{what} {str(path)!r} is not UTF-8 text (byte {err.start} is {data[err.start]:#04x}); "
                              f"expected a JSON {_json_kind(expect)} as this library writes it") from None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        # A JSON object or array written completely ends with its closing bracket.
        truncated = err.pos >= len(text.rstrip()) or not text.rstrip().endswith(("}", "]"))
        raise FileFormatError(
            f"{what} {str(path)!r} is not valid JSON ({err.msg}: line {err.lineno}, column {err.colno})"
            + ("; the file looks truncated (was it copied or written completely?)" if truncated else "")
        ) from None
    if not isinstance(value, expect):
        raise FileFormatError(f"{what} {str(path)!r} holds a JSON {_json_kind(type(value))}, expected a JSON {_json_kind(expect)}")
    return value


def _json_kind(kind: type) -> str:
    return {dict: "object", list: "array", str: "string", int: "number", float: "number", bool: "boolean",
            type(None): "null"}.get(kind, kind.__name__)


def next_version_dir(root: str | os.PathLike) -> Path:
    """``root/version_N`` for the first N not yet used (created), so earlier runs are never overwritten."""
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, f"runs directory {str(root)!r} is a file; give a directory for version_N folders")
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise type(err)(err.errno, f"cannot create the runs directory {str(root)!r}: {err.strerror}") from err
    n = 0
    while True:
        candidate = root / f"version_{n}"
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            n += 1
