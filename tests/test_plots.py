"""The PNG figures are written (atomically) and are real images."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from lightning_nas.bilinear import BilinearTable
from lightning_nas.plots import (
    _format_value,
    budget_violations,
    plot_contributions,
    plot_pareto,
    plot_ranking,
)
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


def test_values_print_at_a_precision_that_shows_them():
    assert _format_value(0.0004) == "+0.0004" and _format_value(-0.0004) == "-0.0004"
    assert _format_value(0.0) == "0" and _format_value(-0.0) == "0"
    assert _format_value(-3.14159) == "-3.1" and _format_value(123.4) == "+123" and _format_value(1.0) == "+1"
    assert _format_value(float("nan")) == ""
    for v in np.concatenate([np.geomspace(1e-9, 1e3, 200), -np.geomspace(1e-9, 1e3, 200)]):
        text = _format_value(float(v))
        assert text[0] == ("+" if v > 0 else "-") and float(text) != 0 and abs(float(text) - v) <= 0.05 * abs(v), (v, text)


def test_pareto_with_measured_random_subnets_flags_a_pick_over_budget(tmp_path):
    rng = np.random.default_rng(0)
    points = [{"predicted_x": 1.0, "predicted_y": 0.5, "measured_x": 1.1, "measured_y": 0.48, "target": 1.0, "label": "20 %"},
              {"predicted_x": 2.0, "predicted_y": 0.6, "measured_x": 1.9, "measured_y": 0.61, "target": 2.0},
              {"predicted_x": 2.5, "predicted_y": 0.7, "measured_x": 2.8, "measured_y": 0.69},  # no target: nothing to exceed
              {"predicted_x": 3.0, "predicted_y": 0.8, "target": 2.9, "label": "unmeasured"}]
    assert budget_violations(points) == [0]
    path = plot_pareto((rng.random(20), rng.random(20)), points, tmp_path / "pareto.png", x_label="latency (ms)",
                       y_label="accuracy", random=(rng.random(10), rng.random(10)))
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size[0] > 200
    with pytest.raises(ValueError, match=r"`random` must be \(xs, ys\)"):
        plot_pareto(None, points, tmp_path / "p.png", random=([1.0], [0.5, 0.6]))
    with pytest.raises(ValueError, match=r"`random y`\[1\] must be a finite number"):
        plot_pareto(None, points, tmp_path / "p.png", random=([1.0, 2.0], [0.5, float("nan")]))
    with pytest.raises(ValueError, match=r"`points`\[0\] has only one of 'measured_x' and 'measured_y'"):
        budget_violations([{"predicted_x": 1.0, "predicted_y": 0.5, "measured_x": 1.0}])
    with pytest.raises(ValueError, match=r"`points\[0\].label` must be a str"):
        plot_pareto(None, [{"predicted_x": 1.0, "predicted_y": 0.5, "label": 3}], tmp_path / "p.png")
    assert not (tmp_path / "p.png").exists()


def test_ranking_scatter_and_its_bad_inputs(tmp_path):
    rng = np.random.default_rng(0)
    predicted = rng.uniform(0.7, 0.9, 12)
    measured = predicted - 0.02 + rng.normal(0, 0.01, 12)
    for name, kwargs in [("full.png", {"error": 0.005, "line": (0.9, 0.05)}), ("bare.png", {"title": "given"})]:
        with Image.open(plot_ranking(predicted, measured, tmp_path / name, **kwargs)) as image:
            assert image.format == "PNG" and image.size[0] > 200
    target = tmp_path / "r.png"
    for args, kwargs, message in [
        ((predicted, measured[:-1]), {}, "`predicted` and `measured` must have the same length"),
        (([0.5], [0.5]), {}, "`predicted` needs at least 2"),
        ((predicted, np.where(np.arange(12) == 3, np.nan, measured)), {}, r"`measured`\[3\] must be a finite number"),
        ((predicted, measured), {"error": -0.1}, "`error` must be >= 0"),
        ((predicted, measured), {"error": float("inf")}, "`error` must be a finite number"),
        ((predicted, measured), {"line": (1.0,)}, r"`line` must be \(slope, intercept\)"),
        ((predicted, measured), {"line": (1.0, float("nan"))}, r"`line`\[1\] must be a finite number"),
    ]:
        with pytest.raises(ValueError, match=message):
            plot_ranking(*args, target, **kwargs)
    assert not target.exists()
