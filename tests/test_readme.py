"""The README's example runs as written (the guide's examples, now in docs/, are run by tests/test_docs.py)."""

import re
from pathlib import Path

import pytest
import torch
from torch import nn

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", README.read_text(encoding="utf-8"), re.S | re.M)


def test_readme_has_only_the_tour_example():
    """Every python block of the README is run below: the 20-line example is the only one."""
    assert len(python_blocks()) == 1
    assert "pip install -q uv && uv run --locked pytest -q\n" in README.read_text(encoding="utf-8")


@pytest.mark.filterwarnings("ignore")
def test_readme_example_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    block = python_blocks()[0]
    assert len(block.strip().splitlines()) <= 23
    scope: dict = {}
    exec(compile(block, str(README), "exec"), scope)
    assert scope["arch"] == {"width": 16, "stem.kernel": 5, "op": "conv", "depth": 3}
    subnet = scope["subnet"]
    assert isinstance(subnet, nn.Sequential)
    assert subnet(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_readme_links_to_docs_pages():
    """Each docs page the README links to exists (the guide moved there)."""
    links = re.findall(r"\]\((docs/[^)#]+)", README.read_text(encoding="utf-8"))
    assert len(links) >= 10
    for link in links:
        assert (README.parent / link).is_file(), link
