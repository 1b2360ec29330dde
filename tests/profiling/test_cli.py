"""``lightning-nas profile`` as a standalone command: main([...]) on a tiny space."""

from __future__ import annotations

import argparse
import json

import pytest

from lightning_nas.profile_cli import add_arguments, main, run

TINY = json.dumps({"stem_channels": 8, "stages": [[8, 1, 2], [16, 2, 2]], "expand_ratios": [2, 4], "kernel_sizes": [3, 5], "head_channels": 16})


def test_profile_builds_reuses_and_checks(tmp_path, capsys):
    out = tmp_path / "table.json"
    argv = ["--space", "mobilenet", "--out", str(out), "--space-kwargs", TINY, "--image-size", "16", "--repeats", "5",
            "--warmup", "1", "--calibration-archs", "2", "--check", "3"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "latency  [ms]" in text and "flops" in text and "params" in text
    assert "check on 3 random subnets: MAPE" in text and "MAPE at build speed" in text
    data = json.loads(out.read_text())
    assert data["name"] == "latency" and data["metadata"]["settings"]["input_size"] == [3, 16, 16]
    assert add_arguments(argparse.ArgumentParser()).parse_args(argv).pin_malloc  # a profiling process: pinned by default
    assert not add_arguments(argparse.ArgumentParser()).parse_args(argv + ["--no-pin-malloc"]).pin_malloc
    assert json.loads((tmp_path / "table.flops.json").read_text())["unit"] == "MFLOPs"
    assert json.loads((tmp_path / "table.params.json").read_text())["unit"] == "params"
    before = out.read_text()
    assert main(argv[:-2]) == 0  # same settings: reused, nothing rewritten
    assert out.read_text() == before and not (tmp_path / "table.json.bak").exists()
    assert main(argv[:-2] + ["--batch-size", "2"]) == 0
    assert (tmp_path / "table.json.bak").read_text() == before
    assert json.loads(out.read_text())["metadata"]["settings"]["batch_size"] == 2


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--space", "no-such-space"], "unknown space"),
        (["--space", "mobilenet", "--space-kwargs", '{"bogus": 1}'], "--space-kwargs"),
        (["--space", "mobilenet", "--space-kwargs", "[1]"], "JSON object"),
        (["--space", "mobilenet", "--threads", "0"], "positive"),
    ],
)
def test_profile_bad_arguments(tmp_path, capsys, extra, message):
    with pytest.raises(SystemExit) as exc:
        main(["--out", str(tmp_path / "t.json"), *extra])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "t.json").exists()


def test_profile_fits_the_table_to_whole_subnets(tmp_path, capsys):
    out = tmp_path / "table.json"
    argv = ["--space", "mobilenet", "--out", str(out), "--space-kwargs", TINY, "--image-size", "16", "--repeats", "3",
            "--warmup", "0", "--calibration-archs", "1", "--fit-archs", "4", "--no-pin-malloc"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    # Fitted or kept as blocks, by the measurements (real timings of a tiny space): both say so.
    assert "entries fitted to 5 whole subnets (ridge" in text or "fit to 5 whole subnets not kept" in text
    assert json.loads(out.read_text())["metadata"]["fit"]["subnets"] == 4
    with pytest.raises(SystemExit) as exc:
        main(argv[:-3] + ["--fit-archs", "2"])
    assert exc.value.code == 2 and "`fit_archs`" in capsys.readouterr().err


def test_add_arguments_and_run_plug_into_a_parent_cli(tmp_path, capsys):
    parser = argparse.ArgumentParser(prog="lightning-nas")
    commands = parser.add_subparsers(dest="command", required=True)
    add_arguments(commands.add_parser("profile"))
    args = parser.parse_args(["profile", "--space", "mobilenet", "--out", str(tmp_path / "t.json"), "--space-kwargs", TINY,
                              "--image-size", "16", "--repeats", "3", "--warmup", "0", "--calibration-archs", "1"])
    assert run(args) == 0 and (tmp_path / "t.json").exists()


MODEL_FACTORY = '''
import timm
import lightning_nas as ln


def make(name="resnet18", num_classes=4):
    return ln.mutate(timm.create_model(name, pretrained=False, num_classes=num_classes), preset="binas")
'''


def test_profile_takes_your_own_model(tmp_path, capsys, monkeypatch):
    (tmp_path / "my_models.py").write_text(MODEL_FACTORY)
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / "own.json"
    argv = ["--model", "my_models:make", "--out", str(out), "--image-size", "32", "--repeats", "2", "--warmup", "1",
            "--calibration-archs", "2", "--check", "2", "--no-pin-malloc"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "model my_models:make" in text and "check on 2 random subnets" in text
    assert json.loads(out.read_text())["name"] == "latency"
    for bad, message in ((["--model", "my_models"], "MODULE:FACTORY"), (["--model", "no_such_module:f"], "cannot import"),
                         (["--model", "my_models:nothing"], "no callable"), (["--model", "my_models:make", "--space-kwargs", '{"x": 1}'], "do not fit")):
        with pytest.raises(SystemExit):
            main(["--out", str(tmp_path / "t.json"), *bad])
        assert message in capsys.readouterr().err


@pytest.mark.parametrize("where", ["directory", "under a file"])
def test_unwritable_out_is_a_parser_error_naming_it(tmp_path, capsys, where):
    from lightning_nas import cli

    out = tmp_path if where == "directory" else tmp_path / "file" / "t.json"
    (tmp_path / "file").write_text("x")
    argv = ["--space", "mobilenet", "--out", str(out), "--space-kwargs", TINY, "--image-size", "16", "--repeats", "2"]
    for entry in (main, lambda a: cli.main(["profile", *a])):
        with pytest.raises(SystemExit) as info:
            entry(argv)
        assert info.value.code == 2
        err = capsys.readouterr().err
        assert "error:" in err and str(out) in err and "Traceback" not in err
    assert (tmp_path / "file").read_text() == "x"


@pytest.mark.parametrize(("argv", "message"), [
    (["demo", "--epochs", "ten"], "--epochs: must be a positive int, got 'ten'"),
    (["demo", "--targets", "nan"], "--targets: must be a fraction in [0, 1], got nan"),
    (["demo", "--targets", "half"], "--targets: must be a fraction in [0, 1], got 'half'"),
])
def test_demo_arguments_name_the_option(capsys, argv, message):
    from lightning_nas import cli

    with pytest.raises(SystemExit):
        cli.main(argv)
    assert message in capsys.readouterr().err


def test_search_storage_directory_is_a_parser_error(tmp_path, capsys):
    from lightning_nas import cli

    table = tmp_path / "t.csv"
    table.write_text("index,arch_str,c10_valid_200\n0,|none~0|+|none~0|none~1|+|none~0|none~1|none~2|,10.0\n")
    with pytest.raises(SystemExit) as info:
        cli.main(["search", "--table", str(table), "--strategy", "random", "--budget", "1", "--storage", str(tmp_path)])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "error:" in err and "Traceback" not in err


def test_demo_seed_and_profile_in_chans_are_named(tmp_path, capsys):
    from lightning_nas import cli

    with pytest.raises(SystemExit):
        cli.main(["demo", "--seed", "-1"])
    assert "--seed: must be a non-negative int, got -1" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--space", "mobilenet", "--out", str(tmp_path / "t.json"), "--space-kwargs", '{"in_chans": "three"}'])
    err = capsys.readouterr().err
    assert "in_chans" in err and "must be an int >= 1, got 'three'" in err and "Traceback" not in err
