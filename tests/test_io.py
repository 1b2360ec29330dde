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
