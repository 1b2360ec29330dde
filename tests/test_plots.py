"""The PNG figures are written (atomically) and are real images."""

from __future__ import annotations

import numpy as np
from PIL import Image

from lightning_nas.bilinear import BilinearTable
from lightning_nas.plots import plot_contributions, plot_pareto
from lightning_nas.spaces import mobilenet_supernet
from lightning_nas.spaces.staged import StagedSpace


def test_contribution_heatmaps_and_pareto(tmp_path):
    staged = StagedSpace.from_space(mobilenet_supernet().space)
    rng = np.random.default_rng(0)
    table = BilinearTable(staged, 0.5, rng.normal(0, 0.01, (3, 2, 6)), rng.normal(0, 0.01, (3, 2)), name="accuracy")
    heat = plot_contributions(table, tmp_path / "heat.png")
    linked = BilinearTable(staged, 3.0, table.block * 30, table.depth * 30, name="accuracy", link="log_error")
    heat_log = plot_contributions(linked, tmp_path / "heat_log.png")  # terms in nats, not percentage points
    points = [{"predicted_x": 1.0, "predicted_y": 0.5, "measured_x": 1.1, "measured_y": 0.48, "target": 1.0},
              {"predicted_x": 2.0, "predicted_y": 0.6, "target": 2.0}]
    pareto = plot_pareto((rng.random(20), rng.random(20)), points, tmp_path / "pareto.png")
    for path in (heat, heat_log, pareto):
        with Image.open(path) as image:
            assert image.format == "PNG" and image.size[0] > 200
    assert not list(tmp_path.glob(".*.tmp"))


def test_contribution_heatmaps_of_a_structure_with_unequal_blocks(tmp_path):
    from lightning_nas.spaces import Decision, SearchSpace

    staged = StagedSpace.from_space(SearchSpace([
        Decision("stage0.block0.k", (3, 5), 3), Decision("stage0.block1.k", (3, 5, 7), 3), Decision("stage0.depth", (1, 2), 2),
        Decision("stage1.block0.e", (2, 4, 6, 8), 2),
    ]))
    rng = np.random.default_rng(0)
    shape = (staged.num_stages, staged.max_blocks, staged.num_configs)
    table = BilinearTable(staged, 0.5, rng.normal(0, 0.01, shape), rng.normal(0, 0.01, (staged.num_stages, staged.max_depth_options)))
    with Image.open(plot_contributions(table, tmp_path / "heat.png")) as image:
        assert image.format == "PNG" and image.size[0] > 200


import pytest  # noqa: E402


def test_bad_plot_inputs_are_named_before_drawing(tmp_path):
    staged = StagedSpace.from_space(mobilenet_supernet().space)
    table = BilinearTable(staged, 0.5, np.zeros((3, 2, 6)), name="accuracy")
    with pytest.raises(ValueError, match="`table` must be a BilinearTable"):
        plot_contributions({"a": 1}, tmp_path / "c.png")
    with pytest.raises(ValueError, match="`scale` must be a finite non-zero number"):
        plot_contributions(table, tmp_path / "c.png", scale=float("nan"))
    with pytest.raises(IsADirectoryError, match="is a directory"):
        plot_contributions(table, tmp_path)
    point = {"predicted_x": 1.0, "predicted_y": 0.5}
    with pytest.raises(ValueError, match=r"`points\[1\].predicted_x` must be a finite number"):
        plot_pareto(None, [point, {"predicted_x": float("nan"), "predicted_y": 0.4}], tmp_path / "p.png")
    with pytest.raises(ValueError, match=r"`points`\[0\] lacks \['predicted_y'\]"):
        plot_pareto(None, [{"predicted_x": 1.0}], tmp_path / "p.png")
    with pytest.raises(ValueError, match="`cloud` must be"):
        plot_pareto(([1.0, 2.0], [0.5]), [point], tmp_path / "p.png")
    with pytest.raises(ValueError, match=r"`cloud y`\[0\]"):
        plot_pareto(([1.0], [float("inf")]), [point], tmp_path / "p.png")
    assert not list(tmp_path.glob("*.png"))
