"""``lightning-nas fit | test ...`` (LightningCLI): the shipped configs parse and fit, TensorBoard logs, clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from lightning_nas.cli import main

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
# Overrides that make any config a seconds-long run on a CPU.
TINY_DATA = ["--data.max_examples", "60", "--data.image_size", "8", "--data.batch_size", "20"]
QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]

pytestmark = [pytest.mark.filterwarnings("ignore:.*LeafSpec.*"), pytest.mark.filterwarnings("ignore:The number of training batches")]


def print_config(capsys, *args: str) -> dict:
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", *args, "--print_config"])
    assert exit_info.value.code in (0, None)
    return yaml.safe_load(capsys.readouterr().out)


@pytest.mark.parametrize("name", sorted(p.name for p in CONFIGS.glob("*.yaml")))
def test_every_config_parses(capsys, name):
    config = print_config(capsys, "--config", str(CONFIGS / name), "--trainer.max_epochs", "2")
    assert config["trainer"]["max_epochs"] == 2  # the command line overrides the file
    classes = [c["class_path"] for c in config["trainer"]["callbacks"]]
    assert any(c.startswith("lightning_nas.callbacks.") for c in classes)
    for callback in config["trainer"]["callbacks"]:  # held-out data is named, never an object
        for key in ("held_out", "arch_data", "data"):
            if key in callback["init_args"] and callback["class_path"].startswith("lightning_nas."):
                assert callback["init_args"][key] == "held_out"
    assert config["model"]["space"] and "num_classes" not in config["model"]  # linked from the data
    assert config["data"]["dataset"] in ("augmented_digits", "digits")


def test_binas_config_fits_one_tiny_epoch(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the config writes under runs/binas_digits
    # The shipped config, with only the callbacks' measurement budgets cut (a list of callbacks cannot be
    # edited item by item from the command line); everything else is overridden on the command line.
    config = yaml.safe_load((CONFIGS / "binas_digits.yaml").read_text())
    cheaper = {"LatencyProfiler": {"repeats": 3, "warmup": 1, "calibration_archs": 2},
               "ContributionEstimation": {"passes": 1, "fit": "means", "allocation": "uniform"}}
    for callback in config["trainer"]["callbacks"]:
        callback["init_args"].update(cheaper.get(callback["class_path"].rpartition(".")[2], {}))
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(config))
    main([
        "fit", "--config", "run.yaml", "--trainer.max_epochs", "1", *QUIET, "--data.max_examples", "40", "--data.image_size", "8",
        "--data.copies", "[1, 1, 1]", "--model.space_kwargs", "{preset: tiny, max_depth: 1, min_depth: 1, expand_ratios: [2], kernel_sizes: [3]}",
    ])
    run = tmp_path / "runs" / "binas_digits"
    assert (run / "latency.json").is_file() and (run / "accuracy.json").is_file()
    import torch

    checkpoint = torch.load(run / "checkpoints" / "supernet.ckpt", weights_only=True)
    hparams = checkpoint["hyper_parameters"]
    assert hparams["num_classes"] == 10 and hparams["in_chans"] == 1 and hparams["space"] == "binas"  # linked from the data
    assert checkpoint["datamodule_hyper_parameters"]["image_size"] == 8


def test_tensorboard_logger_a_factory_model_and_the_test_subcommand(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    common = [
        "--model.model", "lightning_nas.spaces.mobilenet:mobilenet_supernet",
        "--model.space_kwargs", "{stem_channels: 8, stages: [[8, 1, 1]], expand_ratios: [1, 2], kernel_sizes: [3], head_channels: 8}",
        "--data.dataset", "digits", "--data.channels", "3", "--data.fractions", "[0.5, 0.2, 0.15, 0.15]", *TINY_DATA, *QUIET,
    ]
    main([
        "fit", *common, "--trainer.max_epochs", "1", "--trainer.log_every_n_steps", "1",
        "--trainer.logger", "lightning.pytorch.loggers.TensorBoardLogger", "--trainer.logger.save_dir", "tb",
        "--trainer.callbacks+=lightning_nas.callbacks.UniformSampling", "--trainer.callbacks.seed", "3",
    ])
    events = list((tmp_path / "tb").rglob("events.out.tfevents.*"))
    assert events, "TensorBoardLogger wrote no event file"
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags = set()
    for path in events:
        accumulator = EventAccumulator(str(path))
        accumulator.Reload()
        tags |= set(accumulator.Tags()["scalars"])
    assert {"train_loss", "train_acc", "val_acc"} <= tags
    checkpoint = next((tmp_path / "tb").rglob("*.ckpt"))
    main(["test", *common, "--trainer.logger", "false", "--ckpt_path", str(checkpoint)])


def test_a_missing_split_name_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(MisconfigurationException, match=r"`held_out='holdout'`: ImageDataModule has no split 'holdout'"):
        main([
            "fit", "--model.space", "mobilenet",
            "--model.space_kwargs", "{stem_channels: 8, stages: [[8, 1, 1]], expand_ratios: [1], kernel_sizes: [3], head_channels: 8}",
            "--data.dataset", "digits", "--data.channels", "3", *TINY_DATA, *QUIET, "--trainer.logger", "false",
            "--trainer.max_epochs", "1", "--trainer.callbacks+=lightning_nas.callbacks.ContributionEstimation",
            "--trainer.callbacks.held_out", "holdout",
        ])


def test_the_model_needs_exactly_one_network(capsys):
    with pytest.raises(ValueError, match="give exactly one of `space`"):
        main(["fit", "--data.dataset", "digits", *TINY_DATA, "--trainer.logger", "false"])


EVERY_CALLBACK = """
trainer:
  logger: false
  callbacks:
    - {class_path: lightning_nas.callbacks.UniformSampling, init_args: {seed: 1, per_sample: true, eval_arch: largest}}
    - {class_path: lightning_nas.callbacks.LatencyProfiler, init_args: {path: lat.json, input_size: [1, 8, 8], runtime: eager}}
    - class_path: lightning_nas.callbacks.ContributionEstimation
      init_args:
        held_out: held_out
        score: {class_path: lightning_nas.estimators.SmoothedTop1, init_args: {temperature: 0.3}}
    - {class_path: lightning_nas.callbacks.BlockPerformanceEstimation, init_args: {held_out: held_out, flops: [1, 8, 8], method: sampled}}
    - {class_path: lightning_nas.callbacks.DrNASSearch, init_args: {arch_data: held_out, prune_at: {3: 2}, batch_size: 8}}
    - {class_path: lightning_nas.callbacks.PerturbationSelection, init_args: {data: held_out, interval: 2}}
model: {space: nb201, space_kwargs: {channels: 4, cells_per_stage: 1}}
data: {dataset: digits, max_examples: 40, image_size: 8}
"""


def test_every_lightning_nas_callback_is_configurable_from_yaml(tmp_path, monkeypatch):
    import lightning_nas.callbacks as callbacks_module
    from lightning_nas.estimators import SmoothedTop1
    from lightning_nas.lightning_cli import run_lightning_cli

    monkeypatch.chdir(tmp_path)
    (tmp_path / "all.yaml").write_text(EVERY_CALLBACK)
    cli = run_lightning_cli(["--config", "all.yaml"], run=False)
    made = {type(c).__name__: c for c in cli.trainer.callbacks if type(c).__module__.startswith("lightning_nas.")}
    # DartsSearch is DrNASSearch's base (the two relaxations exclude each other in one Trainer).
    assert set(made) | {"DartsSearch"} == set(callbacks_module.__all__)
    assert made["ContributionEstimation"].held_out_split == "held_out" and isinstance(made["ContributionEstimation"].score, SmoothedTop1)
    assert made["DrNASSearch"].prune_at == {3: 2} and made["DrNASSearch"].arch_data_split == "held_out"
    assert made["PerturbationSelection"].search is None and made["BlockPerformanceEstimation"].flops == [1, 8, 8]
    assert cli.model.hparams.num_classes == 10 and cli.model.hparams.in_chans == 1
