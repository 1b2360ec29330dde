"""The README's example runs as written."""

import re
from pathlib import Path

import pytest
import torch
from torch import nn

README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.mark.filterwarnings("ignore")
def test_readme_example_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    block = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)[0]
    assert len(block.strip().splitlines()) <= 23
    scope: dict = {}
    exec(compile(block, str(README), "exec"), scope)
    assert scope["arch"] == {"width": 16, "stem.kernel": 5, "op": "conv", "depth": 3}
    subnet = scope["subnet"]
    assert isinstance(subnet, nn.Sequential)
    assert subnet(torch.randn(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("heading", ["## Differentiable NAS", "## MathNAS", "## Your own model"])
def test_readme_section_examples_run(tmp_path, monkeypatch, heading):
    monkeypatch.chdir(tmp_path)
    text = README.read_text()
    section = text[text.index(heading):]
    section = section[: section.index("\n## ", 1)]
    block = re.findall(r"```python\n(.*?)```", section, re.S)[0]
    exec(compile(block, str(README), "exec"), {})


@pytest.mark.filterwarnings("ignore")
def test_readme_black_box_example_runs(tmp_path, monkeypatch):
    """The black-box example on a synthetic table in the NB201 CSV format (the real one is not shipped)."""
    import numpy as np

    from lightning_nas.evaluators.tabular import NB201_COST_COLUMNS
    from lightning_nas.spaces.nb201 import NB201_OPS, nb201_all_archs, nb201_op_code, nb201_string

    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    effect = rng.normal(0, 2, (6, len(NB201_OPS)))
    columns = ["c10_valid_200", "c10_test_200", "c10_valid_12", "c10_test_12", *NB201_COST_COLUMNS]
    lines = [",".join(["index", "arch_str", "op_code", *columns])]
    for i, arch in enumerate(nb201_all_archs()):
        code = nb201_op_code(arch)
        acc = 85 + sum(effect[e, int(c)] for e, c in enumerate(code))
        costs = [sum(int(c) for c in code) * 0.1 + k for k in range(len(NB201_COST_COLUMNS))]
        values = [acc, acc + 0.3, acc - 10, acc - 9.7, *costs]
        lines.append(",".join([str(i), nb201_string(arch), code, *(f"{v:.4f}" for v in values)]))
    (tmp_path / "nb201_cifar10.csv").write_text("\n".join(lines) + "\n")
    text = README.read_text()
    section = text[text.index("## Black-box"):]
    block = re.findall(r"```python\n(.*?)```", section[: section.index("\n## ", 1)], re.S)[0]
    scope: dict = {}
    exec(compile(block, str(README), "exec"), scope)
    assert (tmp_path / "runs" / "bo_nb201.db").is_file()
    assert scope["best"].metrics["lat_ms_pixel3"] <= 12.0
