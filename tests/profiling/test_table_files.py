"""A latency-table file of any content is kept as .bak and rebuilt (never a crash in the parser), a
path that cannot be written is refused before the build, and the table's metadata holds only plain
types (so a checkpoint carrying it loads with ``weights_only=True``)."""

from __future__ import annotations

import io
import json
import logging
import math
import os

import pytest
import torch

import lightning_nas.profiling.tables as tables_module
from lightning_nas.profiling import TimingResult, device_info, load_or_build
from lightning_nas.profiling.tables import PROFILER_VERSION


def fake_timer(monkeypatch):
    def instant(items, settings, *, seed=0):
        return [TimingResult.from_samples([0.1 * (i + 1)] * 3) for i, _ in enumerate(items)]

    monkeypatch.setattr(tables_module, "time_modules", instant)


def good_table(tiny, fast_settings, tmp_path, monkeypatch) -> dict:
    fake_timer(monkeypatch)
    return load_or_build(tiny, tmp_path / "good.json", fast_settings, calibration_archs=1).to_dict()


def content(kind: str, good: dict) -> bytes:
    if kind == "truncated":
        return json.dumps(good).encode()[:150]
    if kind == "nan constant":
        return json.dumps({**good, "constant": float("nan")}).encode()
    if kind == "metadata a list":
        return json.dumps({**good, "metadata": [1, 2]}).encode()
    if kind == "no metadata":
        return json.dumps({k: v for k, v in good.items() if k != "metadata"}).encode()
    if kind == "no structure":
        return json.dumps({k: v for k, v in good.items() if k != "structure"}).encode()
    if kind == "ragged block":
        return json.dumps({**good, "block": good["block"][:1]}).encode()
    return {"list": b"[1, 2]", "null": b"null", "garbage": bytes(range(256)), "empty": b"",
            "latin-1": '{"name": "lat\xe9ncy"}'.encode("latin-1")}[kind]


@pytest.mark.parametrize("kind", ["truncated", "nan constant", "metadata a list", "no metadata", "no structure",
                                  "ragged block", "list", "null", "garbage", "empty", "latin-1"])
def test_any_bad_file_is_kept_as_bak_and_rebuilt(tiny, fast_settings, tmp_path, monkeypatch, caplog, kind):
    good = good_table(tiny, fast_settings, tmp_path, monkeypatch)
    path = tmp_path / "latency.json"
    path.write_bytes(content(kind, good))
    before = path.read_bytes()
    with caplog.at_level(logging.WARNING, logger="lightning_nas.profiling"):
        table = load_or_build(tiny, path, fast_settings, calibration_archs=1)
    assert "rebuilt" in caplog.text
    assert (tmp_path / "latency.json.bak").read_bytes() == before
    assert math.isfinite(table.constant) and json.loads(path.read_text())["name"] == "latency"


def test_directory_path_is_refused_before_building(tiny, fast_settings, tmp_path, monkeypatch):
    def never(*_, **__):
        raise AssertionError("built a table that could not be saved")

    monkeypatch.setattr(tables_module, "build_latency_table", never)
    with pytest.raises(IsADirectoryError, match="is a directory") as info:
        load_or_build(tiny, tmp_path, fast_settings)
    assert str(tmp_path) in str(info.value)
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError, match="not a directory"):
        load_or_build(tiny, tmp_path / "file" / "latency.json", fast_settings)
    assert (tmp_path / "file").read_text() == "x"


def test_unwritable_directory_is_refused_before_building(tiny, fast_settings, tmp_path, monkeypatch):
    def never(*_, **__):
        raise AssertionError("built a table that could not be saved")

    monkeypatch.setattr(tables_module, "build_latency_table", never)
    real = os.access
    monkeypatch.setattr(tables_module.os, "access", lambda p, mode: False if str(p) == str(tmp_path) else real(p, mode))
    with pytest.raises(PermissionError, match="no permission to write") as info:
        load_or_build(tiny, tmp_path / "latency.json", fast_settings)
    assert str(tmp_path / "latency.json") in str(info.value)


def test_metadata_is_plain_and_loads_weights_only(fast_settings):
    info = device_info(fast_settings)
    assert type(info["torch_version"]) is str
    buffer = io.BytesIO()
    torch.save({"metadata": {"device": info, "profiler_version": PROFILER_VERSION}}, buffer)
    buffer.seek(0)
    assert torch.load(buffer, weights_only=True)["metadata"]["device"] == info


def test_a_failed_backup_names_both_files_and_keeps_the_table(tiny, fast_settings, tmp_path, monkeypatch):
    import errno
    import shutil

    fake_timer(monkeypatch)
    path = tmp_path / "latency.json"
    load_or_build(tiny, path, fast_settings, calibration_archs=1)
    before = path.read_bytes()

    def full(*_, **__):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(shutil, "copy2", full)
    with pytest.raises(OSError, match="cannot back up .*latency.json.*No space left.*is unchanged"):
        load_or_build(tiny, path, fast_settings, rebuild=True, calibration_archs=1)
    assert path.read_bytes() == before and not list(tmp_path.glob(".*.tmp"))


@pytest.mark.parametrize("seed", [True, -1, "x", 1.5])
def test_seeds_are_checked_by_name(tiny, fast_settings, seed):
    from lightning_nas.profiling import build_latency_table, check_latency

    with pytest.raises(ValueError, match="`seed` must be an int >= 0"):
        build_latency_table(tiny, fast_settings, calibration_archs=1, seed=seed)
    with pytest.raises(ValueError, match="`seed` must be an int >= 0"):
        check_latency(tiny, None, num_archs=1, seed=seed)
