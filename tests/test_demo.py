"""The demo and its command line on a tiny run: files written, exact export, reproducible."""

from __future__ import annotations

import json

import pytest

from lightning_nas.cli import main
from lightning_nas.demo import gratings_dataset, run_demo


def test_gratings_are_seeded_and_balanced():
    a, b = gratings_dataset(64, seed=3), gratings_dataset(64, seed=3)
    assert a.tensors[0].shape == (64, 3, 32, 32)
    assert all(t1.equal(t2) for t1, t2 in zip(a.tensors, b.tensors))
    assert set(a.tensors[1].tolist()) == {0, 1, 2, 3}


def test_cli_demo_writes_a_new_run_each_time(tmp_path, capsys):
    args = ["demo", "--epochs", "1", "--num-train", "128", "--out", str(tmp_path), "--no-progress"]
    assert main(args) == 0
    report = capsys.readouterr().out
    assert "exported subnet vs supernet" in report
    first = json.loads((tmp_path / "version_0" / "summary.json").read_text())
    assert first["export_max_abs_error"] < 1e-5
    assert first["best_arch"] == json.loads((tmp_path / "version_0" / "best_arch.json").read_text())
    assert (tmp_path / "version_0" / "best_subnet.pt").stat().st_size > 0
    assert 0.0 <= first["one_shot_val_acc"] <= 1.0

    # Same seed, new directory (nothing overwritten), same result.
    assert main(args) == 0
    second = json.loads((tmp_path / "version_1" / "summary.json").read_text())
    assert second["best_arch"] == first["best_arch"]
    assert second["one_shot_val_acc"] == first["one_shot_val_acc"]
    assert {k: v["val_acc"] for k, v in second["candidates"].items()} == {k: v["val_acc"] for k, v in first["candidates"].items()}


def test_cli_rejects_bad_arguments(capsys):
    with pytest.raises(SystemExit):
        main(["demo", "--epochs", "0"])
    assert "must be a positive int" in capsys.readouterr().err


def test_run_demo_small_num_candidates(tmp_path):
    summary = run_demo(epochs=1, num_train=64, num_val=64, num_candidates=1, out=tmp_path, progress=False)
    assert set(summary["candidates"]) == {"largest", "smallest", "sample0"}
