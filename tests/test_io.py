"""Atomic writes keep what a user had: content until the rename, and the file's permissions."""

from __future__ import annotations

import os
import stat

from lightning_nas.io import atomic_write_json, atomic_write_text, next_version_dir


def test_new_file_gets_the_umask_default_and_a_replaced_file_keeps_its_mode(tmp_path):
    path = atomic_write_text(tmp_path / "a.txt", "one")
    mask = os.umask(0o022)
    os.umask(mask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask
    path.chmod(0o640)
    atomic_write_json(path, {"two": 2})
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert path.read_text().strip().startswith("{")
    assert not list(tmp_path.glob(".*.tmp"))


def test_version_dirs_are_never_reused(tmp_path):
    first, second = next_version_dir(tmp_path), next_version_dir(tmp_path)
    assert (first.name, second.name) == ("version_0", "version_1")


# -- reads and writes that fail say which file and why ------------------------------------------
import errno  # noqa: E402

import pytest  # noqa: E402

from lightning_nas.io import FileFormatError, atomic_write_bytes, read_json  # noqa: E402


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"", "is empty"),
        (b'{"format": "lightning_nas.bilinear_table", "block": [[1.0, 2', "looks truncated"),
        (bytes(range(256)), "not UTF-8"),
        ('{"name": "lat\xe9ncy"}'.encode("latin-1"), "not UTF-8"),
        (b"[1, 2, 3]", "holds a JSON array, expected a JSON object"),
        (b"null", "holds a JSON null"),
        (b"{'single': 'quotes'}", "not valid JSON"),
    ],
)
def test_read_json_names_the_file_and_the_problem(tmp_path, content, expected):
    path = tmp_path / "table.json"
    path.write_bytes(content)
    with pytest.raises(FileFormatError, match=expected) as info:
        read_json(path, "latency table")
    assert str(path) in str(info.value) and "latency table" in str(info.value)
    assert isinstance(info.value, ValueError)


def test_read_json_missing_file_and_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist") as info:
        read_json(tmp_path / "missing.json", "block-performance file")
    assert "missing.json" in str(info.value)
    with pytest.raises(IsADirectoryError, match="is a directory"):
        read_json(tmp_path, "block-performance file")


def test_read_json_returns_the_object(tmp_path):
    path = tmp_path / "ok.json"
    path.write_text('{"a": [1, 2]}')
    assert read_json(path) == {"a": [1, 2]}


def test_write_to_a_directory_names_it_and_leaves_it(tmp_path):
    target = tmp_path / "out.json"
    target.mkdir()
    with pytest.raises(IsADirectoryError, match="is a directory") as info:
        atomic_write_json(target, {"a": 1})
    assert str(target) in str(info.value)
    assert target.is_dir() and not list(tmp_path.glob(".*.tmp"))


def test_write_under_a_file_names_it(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError, match="not a directory"):
        atomic_write_text(tmp_path / "file" / "out.txt", "y")
    assert (tmp_path / "file").read_text() == "x"


def test_full_disk_keeps_the_old_file_and_says_why(tmp_path, monkeypatch):
    path = tmp_path / "results.json"
    path.write_text("old")

    def full(*_):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "replace", full)
    with pytest.raises(OSError, match="no space left") as info:
        atomic_write_bytes(path, b"new")
    assert str(path) in str(info.value) and "unchanged" in str(info.value)
    assert path.read_text() == "old" and not list(tmp_path.glob(".*.tmp"))


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_read_only_directory_is_named(tmp_path):
    tmp_path.chmod(0o555)
    try:
        with pytest.raises(PermissionError, match="no permission to write"):
            atomic_write_text(tmp_path / "a.txt", "x")
    finally:
        tmp_path.chmod(0o755)


def test_permission_denied_is_named_even_as_root(tmp_path, monkeypatch):
    import tempfile

    def denied(*_, **__):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(tempfile, "mkstemp", denied)
    with pytest.raises(PermissionError, match="no permission to write in") as info:
        atomic_write_text(tmp_path / "a.txt", "x")
    assert str(tmp_path / "a.txt") in str(info.value)


def test_version_dir_under_a_file_is_named(tmp_path):
    (tmp_path / "runs").write_text("not a directory")
    with pytest.raises(NotADirectoryError, match="runs directory .*runs' is a file"):
        next_version_dir(tmp_path / "runs")
    with pytest.raises(NotADirectoryError, match="cannot create the runs directory"):
        next_version_dir(tmp_path / "runs" / "demo")
