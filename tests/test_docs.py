"""The documentation site builds with warnings as errors, and every ```python block in docs/ runs.

Each page's python blocks run in order in one namespace (a later block may use an earlier one's names),
in a temporary working directory. The files a page reads that are not shipped (a NAS-Bench-201 table) are
written there first as synthetic tables in the same format. The README's blocks that the site includes
(the 20-line example) are run by tests/test_readme.py.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
FENCE = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def python_blocks(page: Path, text: str | None = None) -> list[str]:
    return FENCE.findall(page.read_text(encoding="utf-8") if text is None else text)


PAGES = sorted(p.name for p in DOCS.rglob("*.md") if python_blocks(p))


def write_nb201_table(path: Path, columns: dict[str, callable], seed: int = 0) -> None:
    """A synthetic table of every NB201 cell: ``columns`` maps a column name to ``f(accuracy, op_code)``."""
    from lightning_nas.spaces.nb201 import NB201_OPS, nb201_all_archs, nb201_op_code, nb201_string

    rng = np.random.default_rng(seed)
    effect = rng.normal(0, 2, (6, len(NB201_OPS)))
    lines = [",".join(["index", "arch_str", "op_code", *columns])]
    for i, arch in enumerate(nb201_all_archs()):
        code = nb201_op_code(arch)
        acc = 85 + sum(effect[e, int(c)] for e, c in enumerate(code))
        values = [f(acc, code) for f in columns.values()]
        lines.append(",".join([str(i), nb201_string(arch), code, *(f"{v:.4f}" for v in values)]))
    path.write_text("\n".join(lines) + "\n")


def nb201_cifar10(tmp_path: Path) -> None:
    from lightning_nas.evaluators.tabular import NB201_COST_COLUMNS

    columns = {"c10_valid_200": lambda a, c: a, "c10_test_200": lambda a, c: a + 0.3,
               "c10_valid_12": lambda a, c: a - 10, "c10_test_12": lambda a, c: a - 9.7}
    for k, name in enumerate(NB201_COST_COLUMNS):
        columns[name] = lambda a, c, k=k: sum(int(d) for d in c) * 0.1 + k
    write_nb201_table(tmp_path / "nb201_cifar10.csv", columns)


def my_table(tmp_path: Path) -> None:
    write_nb201_table(tmp_path / "my_table.csv", {
        "top1_val": lambda a, c: a, "top1_test": lambda a, c: a + 0.3,
        "macs": lambda a, c: sum(int(d) for d in c) * 10.0, "ms": lambda a, c: 1 + sum(int(d) for d in c) * 0.1})


# Files a page's examples read, written into the working directory first.
SETUP = {"blackbox.md": nb201_cifar10, "tabular_format.md": my_table}


def check_binas(scope: dict) -> None:
    from torch import nn

    assert scope["best"].status == "optimal"
    assert scope["best"].resources["latency"] <= scope["budget"] + 1e-9
    assert isinstance(scope["subnet"], nn.Module)


def check_blackbox(scope: dict) -> None:
    assert Path("runs/bo_nb201.db").is_file()
    assert scope["best"].metrics["lat_ms_pixel3"] <= 12.0
    assert len(scope["frame"]) >= 1 and len(scope["front"]) >= 1


def check_differentiable(scope: dict) -> None:
    assert set(scope["pt"].arch) == set(scope["model"].net.space.labels)


def check_mathnas(scope: dict) -> None:
    assert scope["best"].resources["latency"] <= 5.0 + 1e-9


def check_own_model(scope: dict) -> None:
    assert scope["best"].resources["latency"] <= scope["budget"] + 1e-9


# Smaller settings for examples whose real ones take minutes: (page, text in the page, replacement). A text
# missing from its page fails the test, so an edited example is never run at its full size unnoticed.
SMALL = [
    ("blackbox.md", "budget=Budget(evaluations=100)", "budget=Budget(evaluations=16)"),
    ("blackbox.md", "budget=Budget(equivalent_evaluations=60)", "budget=Budget(equivalent_evaluations=1.5)"),
    ("blackbox.md", "steps=20, warm_start=True", "steps=5, warm_start=True"),
    ("binas.md", "to_tensors(digits_dataset(), 16", "to_tensors(digits_dataset().select(range(600)), 16"),
    ("differentiable.md", "to_tensors(digits_dataset(), 16", "to_tensors(digits_dataset().select(range(600)), 16"),
]


def shrink(page: str, text: str) -> str:
    for name, old, new in SMALL:
        if name == page:
            assert old in text, f"{page}: {old!r} not found; update SMALL in tests/test_docs.py"
            text = text.replace(old, new)
    return text


# What each page's examples promise, checked after they ran.
CHECKS = {"binas.md": check_binas, "blackbox.md": check_blackbox, "differentiable.md": check_differentiable,
          "mathnas.md": check_mathnas, "own_model.md": check_own_model}


def test_pages_with_examples_found():
    assert {"binas.md", "blackbox.md", "callbacks.md", "differentiable.md", "mathnas.md", "own_model.md",
            "tabular_format.md"} <= set(PAGES)
    for page in DOCS.rglob("*.md"):  # a block fenced without a language would escape this test
        fences = re.findall(r"^```.*$", page.read_text(encoding="utf-8"), re.M)
        assert "```" not in fences[0::2], f"{page.name}: a code block without a language (python, bash, text, ...)"


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("page", PAGES)
def test_docs_examples_run(page, tmp_path, monkeypatch):
    import torch

    monkeypatch.chdir(tmp_path)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the examples are small: more threads only contend on a shared machine
    try:
        run_page(page, tmp_path)
    finally:
        torch.set_num_threads(threads)


def run_page(page: str, tmp_path: Path) -> None:
    if page in SETUP:
        SETUP[page](tmp_path)
    path = next(DOCS.rglob(page))
    scope: dict = {"__name__": "__docs__"}
    for block in python_blocks(path, shrink(page, path.read_text(encoding="utf-8"))):
        exec(compile(block, str(path), "exec"), scope)
    if page in CHECKS:
        CHECKS[page](scope)


def test_mkdocs_build_strict(tmp_path):
    """`mkdocs build --strict`: a broken link, a missing page or a docstring griffe cannot parse fails."""
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert (tmp_path / "site" / "api" / "nn" / "index.html").is_file()
