"""``lightning-nas select`` and ``export``: train → select → export from the shell, and their errors.

The end-to-end test runs the three commands through ``lightning_nas.cli.main`` exactly as a shell
would (no Python objects passed between them, only files). The other tests use synthetic tables
on a tiny space: the MILP's pick is checked against brute force over every arch.
"""

from __future__ import annotations

import itertools
import json
import re

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
import yaml

from lightning_nas.bilinear import BilinearTable
from lightning_nas.cli import main
from lightning_nas.export_cli import load_supernet_weights, supernet_from_checkpoint
from lightning_nas.select_cli import staged_from_structure
from lightning_nas.spaces import mobilenet_supernet
from lightning_nas.spaces.staged import StagedSpace

pytestmark = [pytest.mark.filterwarnings("ignore:.*LeafSpec.*"), pytest.mark.filterwarnings("ignore:The number of training batches"),
              pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")]

SPACE_KWARGS = {"stem_channels": 8, "stages": [[8, 1, 2], [8, 2, 1]], "expand_ratios": [1, 2], "kernel_sizes": [3, 5], "head_channels": 8}

RUN_YAML = f"""
trainer:
  max_epochs: 1
  accelerator: cpu
  logger: false
  enable_progress_bar: false
  enable_model_summary: false
  num_sanity_val_steps: 0
  callbacks:
    - {{class_path: lightning_nas.callbacks.UniformSampling, init_args: {{seed: 0}}}}
    - {{class_path: lightning_nas.callbacks.LatencyProfiler, init_args: {{path: latency.json, repeats: 3, warmup: 1, calibration_archs: 2}}}}
    - {{class_path: lightning_nas.callbacks.ContributionEstimation, init_args: {{held_out: held_out, passes: 1, path: accuracy.json}}}}
    - {{class_path: lightning.pytorch.callbacks.ModelCheckpoint, init_args: {{dirpath: ., filename: supernet, enable_version_counter: false}}}}
model:
  space: mobilenet
  space_kwargs: {json.dumps(SPACE_KWARGS)}
  lr: 0.05
data:
  dataset: digits
  image_size: 8
  channels: 3
  max_examples: 60
  batch_size: 20
"""


def test_train_select_export_from_the_shell(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "run.yaml").write_text(RUN_YAML)
    assert main(["fit", "--config", "run.yaml"]) == 0
    assert {"latency.json", "accuracy.json", "supernet.ckpt"} <= {p.name for p in tmp_path.iterdir()}

    latency = json.loads((tmp_path / "latency.json").read_text())
    staged = staged_from_structure(latency["structure"])
    table = BilinearTable.from_dict(latency, staged)
    low, high = table.extreme()[0], table.extreme(largest=True)[0]
    budget = round(low + 0.5 * (high - low), 4)
    capsys.readouterr()
    assert main(["select", "--accuracy", "accuracy.json", "--latency", "latency.json", "--limit", f"latency<={budget}",
                 "--out", "arch.json"]) == 0
    printed = capsys.readouterr().out
    assert "certificate: status optimal" in printed and "predicted accuracy" in printed and "predicted latency" in printed
    pick = json.loads((tmp_path / "arch.json").read_text())
    assert pick["format"] == "lightning-nas-arch" and pick["result"]["status"] == "optimal"
    assert pick["result"]["predicted"]["latency"] <= budget + 1e-9
    # The space rebuilt from the checkpoint's hyper-parameters gives the same pick as the tables' own structure.
    assert main(["select", "--accuracy", "accuracy.json", "--latency", "latency.json", "--limit", f"latency<={budget}",
                 "--out", "arch_ckpt.json", "--checkpoint", "supernet.ckpt"]) == 0
    assert json.loads((tmp_path / "arch_ckpt.json").read_text())["arch"] == pick["arch"]

    for fmt, name in (("export", "subnet.pt2"), ("torchscript", "subnet.ts"), ("onnx", "subnet.onnx")):
        assert main(["export", "--checkpoint", "supernet.ckpt", "--arch", "arch.json", "--out", name, "--format", fmt]) == 0
        assert (tmp_path / name).stat().st_size > 0
    assert "checked against the supernet: max |difference|" in capsys.readouterr().out

    # The exported program computes what the trained supernet computes under the pick.
    supernet = supernet_from_checkpoint(tmp_path / "supernet.ckpt")
    x = torch.randn(1, 3, 8, 8)
    with torch.no_grad(), supernet.activated(supernet.space.validate(pick["arch"])):
        expected = supernet(x)
    program = torch.export.load(tmp_path / "subnet.pt2").module()
    torch.testing.assert_close(program(x), expected)


# -- select on synthetic tables ----------------------------------------------------------------------
@pytest.fixture
def tables(tmp_path):
    supernet = mobilenet_supernet(num_classes=4, **SPACE_KWARGS)
    staged = StagedSpace.of(supernet)
    rng = np.random.default_rng(0)
    shape = (staged.num_stages, staged.max_blocks, staged.num_configs)
    depth_shape = (staged.num_stages, staged.max_depth_options)
    made = {
        "accuracy": BilinearTable(staged, 0.5, rng.uniform(0, 0.05, shape), rng.uniform(0, 0.05, depth_shape), name="accuracy", unit="fraction"),
        "latency": BilinearTable(staged, 1.0, rng.uniform(0.1, 1.0, shape), rng.uniform(0, 0.2, depth_shape), name="latency", unit="ms"),
        "energy": BilinearTable(staged, 2.0, rng.uniform(0.1, 1.0, shape), name="value", unit="mJ"),
    }
    for name, table in made.items():
        table.save(tmp_path / f"{name}.json")
    return supernet, made


def brute_force(supernet, made, **bounds):
    best = None
    space = supernet.space
    for values in itertools.product(*(d.values for d in space)):
        arch = dict(zip(space.labels, values))
        if all(lo <= made[name].predict(arch) <= hi for name, (lo, hi) in bounds.items()):
            value = made["accuracy"].predict(arch)
            best = value if best is None or value > best else best
    return best


def select(tmp_path, *args):
    return main(["select", "--accuracy", str(tmp_path / "accuracy.json"), "--latency", str(tmp_path / "latency.json"),
                 "--table", f"energy={tmp_path / 'energy.json'}", "--out", str(tmp_path / "arch.json"), *args])


def test_select_is_the_brute_force_optimum_with_several_limits(tmp_path, tables, capsys):
    supernet, made = tables
    low, high = made["latency"].extreme()[0], made["latency"].extreme(largest=True)[0]
    upper, lower = low + 0.4 * (high - low), low + 0.1 * (high - low)
    energy = made["energy"].extreme()[0] + 0.5 * (made["energy"].extreme(largest=True)[0] - made["energy"].extreme()[0])
    assert select(tmp_path, "--limit", f"latency<={upper}", "--limit", f"latency>={lower}", "--limit", f"energy<={energy}") == 0
    result = json.loads((tmp_path / "arch.json").read_text())["result"]
    expected = brute_force(supernet, made, latency=(lower, upper), energy=(-np.inf, energy))
    assert result["predicted"]["accuracy"] == pytest.approx(expected, abs=1e-9)
    assert lower - 1e-9 <= result["predicted"]["latency"] <= upper + 1e-9 and result["predicted"]["energy"] <= energy + 1e-9
    assert "latency >= " in capsys.readouterr().out

    # The structure stored in the tables and the space itself give the same pick.
    first = json.loads((tmp_path / "arch.json").read_text())["arch"]
    space_kwargs = json.dumps({"num_classes": 4, **SPACE_KWARGS})
    assert select(tmp_path, "--limit", f"latency<={upper}", "--limit", f"latency>={lower}", "--limit", f"energy<={energy}",
                  "--space", "mobilenet", "--space-kwargs", space_kwargs) == 0
    assert json.loads((tmp_path / "arch.json").read_text())["arch"] == first


def test_select_errors_name_the_problem(tmp_path, tables, capsys):
    _, made = tables
    smallest = made["latency"].extreme()[0]
    for args, message in (
        (["--limit", f"latency<={smallest / 2}"], f"infeasible: .*the smallest achievable latency is {repr(smallest)[:6]}"),
        (["--limit", "latency<3"], "must be NAME<=VALUE or NAME>=VALUE"),
        (["--limit", "latency<=fast"], "must be a number"),
        (["--limit", "flops<=3"], r"`--limit` on 'flops', but no table of that name was given; tables: \['energy', 'latency'\]"),
        ([], "give at least one `--limit`"),
        (["--limit", "latency<=3", "--limit", "latency<=4"], "two upper bounds on 'latency'"),
        (["--limit", "latency<=3", "--space", "mobilenet"], "was made for another space"),
    ):
        with pytest.raises(SystemExit) as exit_info:
            select(tmp_path, *args)
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert re.search(message, err), err


# -- export errors and other checkpoints -------------------------------------------------------------
class PlainModule(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = mobilenet_supernet(num_classes=4, **SPACE_KWARGS)


def test_export_other_checkpoints_and_errors(tmp_path, capsys):
    module = PlainModule()
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": {}}, tmp_path / "plain.ckpt")
    arch = module.net.space.sample(0)
    (tmp_path / "arch.json").write_text(json.dumps(arch))
    base = ["export", "--checkpoint", str(tmp_path / "plain.ckpt"), "--arch", str(tmp_path / "arch.json"), "--out", str(tmp_path / "s.pt2")]
    space = ["--space", "mobilenet", "--space-kwargs", json.dumps({"num_classes": 4, **SPACE_KWARGS})]
    for args, message in (
        (base, "does not say how to build its supernet"),
        (base + space, "`--input-size` is needed"),
        (base[:2] + [str(tmp_path / "missing.ckpt")] + base[3:] + space, "does not exist"),
        (base + ["--space", "mobilenet", "--input-size", "3", "8", "8"], "does not hold this supernet's weights"),
    ):
        with pytest.raises(SystemExit):
            main(args)
        assert message in capsys.readouterr().err, message
    (tmp_path / "partial.json").write_text(json.dumps(dict(list(arch.items())[:2])))
    with pytest.raises(SystemExit):
        main(base[:4] + [str(tmp_path / "partial.json")] + base[5:] + space + ["--input-size", "3", "8", "8"])
    assert "`--arch` is not an architecture of this supernet" in capsys.readouterr().err
    # A checkpoint of any LightningModule: the supernet's weights are found under its attribute.
    assert main(base + space + ["--input-size", "3", "8", "8", "--format", "torchscript"]) == 0
    assert load_supernet_weights(mobilenet_supernet(num_classes=4, **SPACE_KWARGS), module.state_dict()) == "net."
    loaded = torch.jit.load(tmp_path / "s.pt2")
    x = torch.randn(2, 3, 8, 8)
    module.net.eval()
    with torch.no_grad(), module.net.activated(arch):
        torch.testing.assert_close(loaded(x[:1]), module.net(x[:1]))
    assert yaml  # (imported for the config above)
