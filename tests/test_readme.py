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
@pytest.mark.parametrize("heading", ["## Differentiable NAS", "## MathNAS"])
def test_readme_section_examples_run(tmp_path, monkeypatch, heading):
    monkeypatch.chdir(tmp_path)
    text = README.read_text()
    section = text[text.index(heading):]
    section = section[: section.index("\n## ", 1)]
    block = re.findall(r"```python\n(.*?)```", section, re.S)[0]
    exec(compile(block, str(README), "exec"), {})
